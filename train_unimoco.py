"""FaceCL's entry point: UniMoCo training with a preset of configs/, through train.py's one training loop.

    python -m torch.distributed.launch --nproc_per_node=8 train_unimoco.py configs/ms1mv3_r50_unimoco
    torchrun --nproc_per_node=8 train_unimoco.py configs/ms1mv3_r50_unimoco
    python train_unimoco.py configs/synthetic_unimoco_cpu --set num_epoch=1      # one process (GPU or CPU)
    python train_unimoco.py configs/ms1mv3_r50_unimoco --resume auto

CONFIG is ``configs/NAME`` (FaceCL's form), a bare preset name, or the path of any config file,
with or without ``.py``; utils/config.py layers a preset on its base. Everything else (data,
logging, verification, checkpoints, exact resume) is train.py's: this script only turns FaceCL's
command line into ``train.py --config PATH``.
"""

from __future__ import annotations

import argparse
import os

import train
from utils.cli import run_cli
from utils.errors import ConfigError

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def resolve_config(name: str) -> str:
    """The config file ``name`` means: a path (``.py`` optional), else a preset in configs/."""
    stem = name.removesuffix(".py")
    candidates = [stem + ".py", os.path.join(CONFIGS, os.path.basename(stem) + ".py")]
    for path in candidates:
        if os.path.isfile(path):
            return path
    presets = sorted(f[:-3] for f in os.listdir(CONFIGS) if f.endswith(".py") and not f.startswith("_"))
    raise ConfigError(f"config {name!r} not found (tried {', '.join(candidates)}; presets: {', '.join(presets)})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """FaceCL's command line: CONFIG, --set, --resume, --local-rank."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="configs/NAME, a preset name or a config file path")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    parser.add_argument("--resume", metavar="auto|PATH",
                        help="continue from the newest checkpoint in the output folder, or from PATH")
    # torch.distributed.launch passes --local-rank (FaceCL's era: --local_rank); torchrun sets LOCAL_RANK
    parser.add_argument("--local-rank", "--local_rank", dest="local_rank", type=int, default=None)
    return parser.parse_args(argv)


def train_argv(args: argparse.Namespace) -> list[str]:
    """train.py's command line for these arguments."""
    argv = ["--config", resolve_config(args.config)]
    for item in args.set:
        argv += ["--set", item]
    if args.resume:
        argv += ["--resume", args.resume]
    if args.local_rank is not None:
        argv += ["--local-rank", str(args.local_rank)]
    return argv


def main(argv: list[str] | None = None) -> int:
    """Run train.py's main on the resolved config."""
    return train.main(train_argv(parse_args(argv)))


if __name__ == "__main__":
    run_cli(main, extra=(FloatingPointError,))
