"""FaceCL's ms1mv3_r50_unimoco: UniMoCo on MS1MV3 (93,431 classes, 5,179,510 images), iresnet50.

    python -m torch.distributed.launch --nproc_per_node=8 train_unimoco.py configs/ms1mv3_r50_unimoco
    torchrun --nproc_per_node=8 train_unimoco.py configs/ms1mv3_r50_unimoco

The rest of config/config.py applies (its keys and dataset blocks are loaded first); this file
only overrides, with FaceCL's values: 8 images per GPU in groups of 2 per class, SGD lr 0.2 (not
scaled by the number of GPUs), momentum 0.9, weight decay 5e-4, no gradient clipping, cosine LR
per step over 25 epochs, queue 65536 x 128, T 0.07, key momentum 0.999.
"""

import copy
import os
import runpy

_BASE = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "config", "config.py"))
DATASETS = _BASE["DATASETS"]
config = copy.deepcopy(_BASE["config"])
config.update(copy.deepcopy(DATASETS["ms1mv3"]))
config.dataset = "ms1mv3"

config.method = "unimoco"
config.network = "iresnet50"  # FaceCL's "r50"
config.embedding_size = 512
config.dropout = 0.0  # FaceCL's encoders have no dropout
config.batch_size = 8  # per GPU; a multiple of samples_per_label; 64 global on 8 GPUs
config.samples_per_label = 2
config.lr = 0.2
config.momentum = 0.9
config.weight_decay = 5e-4
config.grad_clip = 0.0
config.num_epoch = 25
config.scheduler = "cos"  # cos: cosine per step, no warm-up | poly: power 2 after warmup_epoch
config.warmup_epoch = 0
config.augmentation = "MoCo2_NoCrop"
config.unimoco_margin = 0.0
config.moco_dim = 128
config.moco_k = 65536  # a multiple of the global batch
config.moco_m = 0.999
config.moco_t = 0.07
config.moco_mlp = None
config.amp = "none"  # FaceCL's fp16 = False
config.val_targets = ["lfw", "cfp_fp", "agedb_30"]
config.eval_step = 2000  # FaceCL's verbose
config.frequent = 10
config.output = "work_dirs/ms1mv3_r50_unimoco"
