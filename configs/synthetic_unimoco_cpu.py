"""UniMoCo sized for a CPU in minutes (scripts/quickstart_unimoco.sh): the synthetic faces, iresnet18 at width 8.

    python train_unimoco.py configs/synthetic_unimoco_cpu

A preset (format: utils/config.py): FaceCL's recipe (configs/ms1mv3_r50_unimoco.py) on
config/config.py's ``synthetic`` block (data/synthetic, width 8, num_workers 1), with what a
2-core CPU can do: one process with the global batch of FaceCL's 8 GPUs (64 = 8 x 8), a queue of
4096 keys (a third of an epoch of the 12,000-image quickstart set instead of 65536, so that it is
refreshed within the short run), 2 epochs, and lr 0.02: at FaceCL's 0.2 this tiny network from
scratch does not learn (the loss stayed at its chance level, log(1 + 4081 x 15) = 11, for 140
steps; at 0.02 a 32-image overfit check drops it from 8 to 2 in 40 steps, at 0.05 and 0.2 it
oscillates).
"""

from easydict import EasyDict as edict

base = "configs/ms1mv3_r50_unimoco.py"
dataset = "synthetic"

config = edict()
config.network = "iresnet18"  # the synthetic block's (the recipe's iresnet50 would beat it)
config.batch_size = 64
config.lr = 0.02
config.num_epoch = 2
config.moco_k = 4096
config.frequent = 20
config.eval_step = 0  # once per epoch
config.eval_batch_size = 64
config.val_targets = ["lfw", "cfp_fp", "agedb_30", "calfw", "cplfw"]
config.output = "work_dirs/synthetic_unimoco_cpu"
