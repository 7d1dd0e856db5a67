"""FaceCL's ms1mv3_r50_unimoco: UniMoCo on MS1MV3 (93,431 classes, 5,179,510 images), iresnet50.

    python -m torch.distributed.launch --nproc_per_node=8 train_unimoco.py configs/ms1mv3_r50_unimoco
    torchrun --nproc_per_node=8 train_unimoco.py configs/ms1mv3_r50_unimoco

A preset (format: utils/config.py): config/config.py with its ``ms1mv3`` block, then the keys
below, FaceCL's values where they differ: UniMoCo, 8 images per GPU, SGD lr 0.2 (not scaled by
the number of GPUs), no gradient clipping, cosine LR per step over 25 epochs. FaceCL's other
values are config/config.py's own: groups of 2 images per class, momentum 0.9, weight decay 5e-4,
no warm-up, fp32, embedding 512, MoCo2_NoCrop views, queue 65536 x 128, T 0.07, key momentum
0.999, a linear projection, no loss margin.
"""

from easydict import EasyDict as edict

base = "config/config.py"
dataset = "ms1mv3"

config = edict()
config.method = "unimoco"
config.network = "iresnet50"  # FaceCL's "r50" (the block's is iresnet100)
config.dropout = 0.0  # FaceCL's encoders have no dropout
config.batch_size = 8  # per GPU; a multiple of samples_per_label (2); 64 global on 8 GPUs
config.lr = 0.2
config.grad_clip = 0.0
config.num_epoch = 25
config.scheduler = "cos"  # cos: cosine per step, no warm-up | poly: power 2 after warmup_epoch
config.val_targets = ["lfw", "cfp_fp", "agedb_30"]
config.eval_step = 2000  # FaceCL's verbose
config.frequent = 10
config.output = "work_dirs/ms1mv3_r50_unimoco"
