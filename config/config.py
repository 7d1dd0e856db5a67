"""The one file to edit: the training configuration, as one EasyDict ``config``.

Pick the training set with ``config.dataset`` (or ``train.py --dataset NAME``); its block in
``DATASETS`` sets the data path, class count, network and schedule. Any key can also be set
from the command line: ``train.py --set lr=0.05 --set val_targets="['lfw']"``. An experiment
kept in a file is a preset in configs/ that names a block and the keys it changes, layered on
this file by the loader (format: utils/config.py; e.g. configs/ms1mv3_r50_unimoco.py).

The defaults reproduce ContraFace on MS1MV2 (iresnet100, ArcFace s=64 m=0.5, batch 128 per GPU,
SGD lr 0.1, two-stage training switched at the first LR decay).
"""

from easydict import EasyDict as edict

config = edict()

# --- method --------------------------------------------------------------------------------
config.method = "contraface"  # contraface (two-stage) | single (margin-softmax baseline)
# head: the margin softmax over class centers (losses/heads, README "Margin heads"): arcface |
# cosface | combined | mv_am | mv_arc | curricularface | magface | adaface | elastic_arc | elastic_cos
config.head = "arcface"
# Head parameters: None = the chosen head's own default (arcface s 64 m 0.5, cosface s 64 m 0.35,
# ...); setting one the head does not take is a config error.
config.s = None  # scale (every head; 64, MV-Softmax 32)
config.m = None  # margin (arcface, cosface, mv_*, curricularface, adaface, elastic_*)
config.m1 = None  # combined: s * (cos(m1 * theta + m2) - m3), defaults 1, 0.3, 0.2
config.m2 = None
config.m3 = None
config.t = None  # mv_am / mv_arc: hard-negative shift (0.2)
config.adaptive = None  # mv_am / mv_arc: (t + 1) cos + t (True) or cos + t (False)
config.l_a = None  # magface: norm range [l_a, u_a] (10, 110) ...
config.u_a = None
config.l_m = None  # ... mapped to margins [l_m, u_m] (0.45, 0.8)
config.u_m = None
config.lambda_g = None  # magface: weight of the norm regulariser (35)
config.h = None  # adaface: margin scaler concentration (0.333)
config.t_alpha = None  # adaface: EMA rate of the norm mean / std (0.01)
config.std = None  # elastic_*: std of the per-sample margin (0.05)
config.plus = None  # elastic_*: ElasticFace+ (margins sorted by target cosine), default False

# ContraFace: stage 1 (single branch) until the first LR decay, then stage 2 (double branch).
config.dropout = 0.4  # dropout on the flattened feature map in stage 1
config.dropout2 = 0.6  # ... and in stage 2
config.weight1 = 0.5  # CE weight of view 1
config.weight2 = 0.5  # CE weight of view 2
config.weightC = 0.05  # Contra(x1, x2)
config.weightC2 = 0.0  # Contra(x2, x1); 0 = the paper's one-direction "pair coupling protocol"
config.contra_s = 64.0  # scale of the contrastive logits
config.contra_ema = 0.99  # margin update m <- contra_ema * m_batch + (1 - contra_ema) * m_prev
config.switch_epoch = None  # 0-based epoch stage 2 starts; None = shrink_epoch[0] - 1 (the first LR decay)
config.single = False  # ablation (the original's `single = True`): stage 2 switches dropout, keeps one branch

# --- UniMoCo (FaceCL) ------------------------------------------------------------------------
# method = "unimoco": query encoder = the network + a projection, momentum key encoder, a queue of
# moco_k keys with their labels, UnifiedContrastive loss (losses/unimoco.py). FaceCL's presets:
# configs/ms1mv3_r50_unimoco.py (python train_unimoco.py configs/ms1mv3_r50_unimoco). Trains
# without dropout and without the margin head; `head`, `s`, `m`, `dropout` do not apply.
config.moco_dim = 128  # projection output (the contrastive feature)
config.moco_k = 65536  # queue length; a multiple of the global batch (batch_size x processes)
config.moco_m = 0.999  # key encoder momentum: theta_k <- m theta_k + (1 - m) theta_q
config.moco_t = 0.07  # temperature of the logits q . queue / T
config.moco_mlp = None  # projection: None = Linear; "same_in" / "same_out" / int = Linear-ReLU-Linear of that width
config.unimoco_margin = 0.0  # FaceCL's loss_margin, added to the negatives' logits
config.own_key_positive = False  # UniMoCo paper's variant: own key an extra positive (for unlabelled data)
config.samples_per_label = 2  # images of one class per batch group (batch_size must be a multiple)
config.augmentation = "MoCo2_NoCrop"  # the two views: MoCo2 | MoCo2_NoCrop | ArcFace (flip only)
config.scheduler = "step"  # LR schedule: step (shrink_epoch, warm-up) | cos | poly (FaceCL's, per step)
config.dali = False  # FaceCL's DALI loader is not offered: True is refused

# --- network -------------------------------------------------------------------------------
config.embedding_size = 512
config.use_se = None  # True: squeeze-and-excitation blocks in the iresnet (None: the network's own, none)

# --- optimisation --------------------------------------------------------------------------
config.momentum = 0.9
config.weight_decay = 5e-4
config.warmup_epoch = 0  # linear warm-up over this many epochs (0: none, as the paper)
config.grad_clip = 5.0  # clip_grad_norm_ of the backbone parameters
config.amp = "none"  # none (fp32, as the paper) | bf16 | fp16 (with a grad scaler); GPU only
config.channels_last = False  # NHWC activations (faster convolutions with bf16/fp16 on GPUs)
config.compile = False  # torch.compile the training forward
config.cudnn_benchmark = True  # let cuDNN pick the fastest convolution algorithms (GPU)
config.seed = 8
# Start from weights: a checkpoint utils.checkpoint.load_weights reads (this project's, the
# original {step}model.pth, insightface's backbone.pth); the class centers too where the file has
# them and they fit; fresh optimizer. start_epoch: the LR schedule, stage switch and step counter
# begin at this epoch (the paper's run: stage 2 from stage 1's epoch-8 weights at start_epoch 8).
config.init_weights = ""
config.start_epoch = 0

# --- data, evaluation, output --------------------------------------------------------------
config.val_targets = ["lfw", "cfp_fp", "agedb_30", "calfw", "cplfw"]  # .bin files in `rec`
config.eval_step = 0  # evaluate every N steps; 0 = once per epoch
config.eval_batch_size = 128
config.save_step = 0  # checkpoint every N steps; 0 = once per epoch
config.keep_checkpoints = 2  # training checkpoints kept in the output folder (0 = all)
config.keep_backbones = 0  # backbone-<step>.pth written at each evaluation (0 = keep all)
config.frequent = 50  # log every N steps
config.output = ""  # "" = work_dirs/<dataset>_<network>_<method>

# --- datasets --------------------------------------------------------------------------------
# Every block sets the same keys (the loader checks), so --dataset can switch blocks cleanly.
# shrink_epoch is 1-based as in the paper: the LR is multiplied by 0.1 when the 0-based epoch
# index reaches shrink_epoch[i] - 1, and ContraFace switches to stage 2 at shrink_epoch[0] - 1.
# network_width: channels of the first iresnet stage (None: the network's own, 64 for the iresnets).
# batch_size is per process (per GPU); num_workers are DataLoader workers per process.
# partial_fc: shard the class centers across processes (losses/partial_fc.py; False = the replicated
# head, as the paper); sample_rate: the share of each shard's centers a step scores (positives always).
DATASETS = {
    "emore": edict(  # MS1MV2 (faces_emore)
        rec="data/faces_emore", num_classes=85742, num_image=5822653,
        network="iresnet100", network_width=None, batch_size=128, lr=0.1, num_workers=8,
        num_epoch=24, shrink_epoch=[8, 14, 20], partial_fc=False, sample_rate=1.0,
    ),
    "webface": edict(  # CASIA-WebFace
        rec="data/faces_webface_112x112", num_classes=10572, num_image=490623,
        network="iresnet50", network_width=None, batch_size=128, lr=0.1, num_workers=8,
        num_epoch=40, shrink_epoch=[22, 30], partial_fc=False, sample_rate=1.0,
    ),
    "ms1mv3": edict(  # MS1M-RetinaFace
        rec="data/ms1m-retinaface-t1", num_classes=93431, num_image=5179510,
        network="iresnet100", network_width=None, batch_size=128, lr=0.1, num_workers=8,
        num_epoch=24, shrink_epoch=[8, 14, 20], partial_fc=False, sample_rate=1.0,
    ),
    "glint360k": edict(  # not tuned by the paper: the MS1MV2 recipe, 20 epochs
        rec="data/glint360k", num_classes=360232, num_image=17091657,
        network="iresnet100", network_width=None, batch_size=128, lr=0.1, num_workers=8,
        num_epoch=20, shrink_epoch=[8, 14, 18],
        partial_fc=True, sample_rate=1.0,  # insightface configs/glint360k_r100.py: all centers, batch 128, lr 0.1
    ),
    "webface42m": edict(  # not tuned by the paper; its 2M-class head is 4 GB of fp32 weights
        rec="data/webface42m", num_classes=2059906, num_image=42474557,
        network="iresnet100", network_width=None, batch_size=128, lr=0.1, num_workers=8,
        num_epoch=20, shrink_epoch=[8, 14, 18],
        partial_fc=True, sample_rate=0.2,  # insightface configs/wf42m_pfc02_r100.py: batch 128, lr 0.1 (8 GPUs)
    ),
    "synthetic": edict(  # CPU-sized (scripts/quickstart.sh); make it with: python -m tools.make_synthetic
        rec="data/synthetic", num_classes=0, num_image=0,  # 0: read from the data
        network="iresnet18", network_width=8, batch_size=64, lr=0.1, num_workers=1,
        num_epoch=4, shrink_epoch=[4], partial_fc=False, sample_rate=1.0,
    ),
}

config.dataset = "emore"
config.update(DATASETS[config.dataset])
