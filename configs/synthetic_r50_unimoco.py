"""FaceCL's synthetic_r50_unimoco on this project's synthetic faces (data/synthetic), iresnet50.

    python -m tools.make_synthetic --output data/synthetic
    torchrun --nproc_per_node=8 train_unimoco.py configs/synthetic_r50_unimoco

FaceCL's own "synthetic" set was one random image repeated (nothing to learn); this preset keeps
FaceCL's recipe (ms1mv3_r50_unimoco's values) on the learnable synthetic set instead. For a CPU,
see configs/synthetic_unimoco_cpu.py.
"""

import copy
import os
import runpy

_HERE = os.path.dirname(os.path.abspath(__file__))
_BASE = runpy.run_path(os.path.join(_HERE, os.pardir, "config", "config.py"))
_RECIPE = runpy.run_path(os.path.join(_HERE, "ms1mv3_r50_unimoco.py"))["config"]
DATASETS = _BASE["DATASETS"]
config = copy.deepcopy(_RECIPE)
config.update(copy.deepcopy(DATASETS["synthetic"]))
config.dataset = "synthetic"
for key in ("network", "network_width", "batch_size", "lr", "num_epoch"):  # FaceCL's, not the block's
    config[key] = _RECIPE[key]
config.network_width = 64
config.val_targets = ["lfw", "cfp_fp", "agedb_30", "calfw", "cplfw"]
config.output = "work_dirs/synthetic_r50_unimoco"
