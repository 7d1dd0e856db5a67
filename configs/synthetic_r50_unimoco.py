"""FaceCL's synthetic_r50_unimoco on this project's synthetic faces (data/synthetic), iresnet50.

    python -m tools.make_synthetic --output data/synthetic
    torchrun --nproc_per_node=8 train_unimoco.py configs/synthetic_r50_unimoco

FaceCL's own "synthetic" set was one random image repeated (nothing to learn); this preset keeps
FaceCL's recipe on the learnable synthetic set instead. A preset (format: utils/config.py):
configs/ms1mv3_r50_unimoco.py on config/config.py's ``synthetic`` block, whose data keys (rec,
class and image counts, num_workers 1) apply; the recipe's own keys (network iresnet50, batch 8,
lr 0.2, 25 epochs, ...) stay, as a preset's keys beat any dataset block. For a CPU, see
configs/synthetic_unimoco_cpu.py.
"""

from easydict import EasyDict as edict

base = "configs/ms1mv3_r50_unimoco.py"
dataset = "synthetic"

config = edict()
config.network_width = None  # the standard iresnet50's 64 (the synthetic block's is 8)
config.val_targets = ["lfw", "cfp_fp", "agedb_30", "calfw", "cplfw"]
config.output = "work_dirs/synthetic_r50_unimoco"
