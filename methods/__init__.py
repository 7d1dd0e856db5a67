"""The training methods ``train.py`` drives, by name: ``cfg.method`` in ``METHODS``.

A method owns the backbone and its loss modules and implements ``methods.base.TrainingMethod``;
a new method is one file here plus one line below.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from methods.base import TrainingMethod
from methods.contraface import ContraFaceTraining, SingleBranch
from methods.unimoco import UniMoCo
from utils.distributed import DistEnv
from utils.errors import ConfigError
from utils.registry import Registry, suggest

__all__ = [
    "METHODS",
    "ContraFaceTraining",
    "SingleBranch",
    "TrainingMethod",
    "UniMoCo",
    "build_method",
    "check_method_config",
    "get_method",
]

METHODS: Registry[type[TrainingMethod]] = Registry("method")
METHODS.add("contraface", ContraFaceTraining)
METHODS.add("single", SingleBranch)
METHODS.add("unimoco", UniMoCo)  # FaceCL's contrastive training (no margin head)


def get_method(cfg: Any) -> type[TrainingMethod]:
    """The method class of ``cfg.method`` (any case; the registered name is written back)."""
    if cfg.method not in METHODS:
        raise ConfigError(
            f"method {cfg.method!r} is not a known method{suggest(str(cfg.method), METHODS)} "
            f"(known: {', '.join(METHODS)})"
        )
    cfg.method = METHODS.canonical(cfg.method)
    return METHODS[cfg.method]


def check_method_config(cfg: Any) -> type[TrainingMethod]:
    """Check ``cfg``'s method-specific keys (its method's ``check_config``); returns the method class."""
    method = get_method(cfg)
    method.check_config(cfg)
    return method


def build_method(cfg: Any, backbone: nn.Module, env: DistEnv | None = None) -> TrainingMethod:
    """The method named by ``cfg.method`` with its loss modules, for ``env`` (default: the process group)."""
    return get_method(cfg).from_config(cfg, backbone, env or DistEnv.from_process_group())
