"""Backbone registry: ``get_backbone(name, **kw)`` builds a face-embedding network by name.

Every backbone maps a (N, 3, 112, 112) batch to (N, num_features) embeddings and offers
``forward_trunk`` / ``forward_head`` / ``double_forward`` and a ``dropout_p`` property
(backbones/base.py). The builders register themselves in ``BACKBONES`` (a
``utils.registry.Registry``) where they are defined: iresnet.py, irse.py (the IR networks of
face.evoLVe / CurricularFace / SCF and of AdaFace / TFace, under the authors' key names) and
mobilefacenet.py.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import BACKBONES
from .iresnet import IResNet, iresnet18, iresnet34, iresnet50, iresnet100, iresnet200
from .irse import (
    IRNet,
    adaface_ir_18,
    adaface_ir_34,
    adaface_ir_50,
    adaface_ir_101,
    adaface_ir_152,
    adaface_ir_200,
    adaface_ir_se_18,
    adaface_ir_se_34,
    adaface_ir_se_50,
    adaface_ir_se_101,
    adaface_ir_se_152,
    adaface_ir_se_200,
    evolve_ir_50,
    evolve_ir_101,
    evolve_ir_152,
    evolve_ir_se_50,
    evolve_ir_se_101,
    evolve_ir_se_152,
)
from .mobilefacenet import MobileFaceNet, mobilefacenet, mobilefacenet_large

__all__ = [
    "BACKBONES",
    "IResNet",
    "IRNet",
    "MobileFaceNet",
    "get_backbone",
    "list_backbones",
    "iresnet18",
    "iresnet34",
    "iresnet50",
    "iresnet100",
    "iresnet200",
    "mobilefacenet",
    "mobilefacenet_large",
    "adaface_ir_18",
    "adaface_ir_34",
    "adaface_ir_50",
    "adaface_ir_101",
    "adaface_ir_152",
    "adaface_ir_200",
    "adaface_ir_se_18",
    "adaface_ir_se_34",
    "adaface_ir_se_50",
    "adaface_ir_se_101",
    "adaface_ir_se_152",
    "adaface_ir_se_200",
    "evolve_ir_50",
    "evolve_ir_101",
    "evolve_ir_152",
    "evolve_ir_se_50",
    "evolve_ir_se_101",
    "evolve_ir_se_152",
]


def list_backbones() -> list[str]:
    """All registered backbone names, aliases included, sorted."""
    return sorted(BACKBONES)


def get_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Build the backbone registered as ``name`` (any case) with the builder's keyword arguments.

    Arguments whose value is None are left out, so that a caller can pass an option (``use_se``,
    ``width``) that only some backbones have and let the others use their defaults. An unknown
    name raises ``UnknownNameError`` (a ``ValueError``) listing the known ones.
    """
    builder = BACKBONES.get(name)
    return builder(**{key: value for key, value in kwargs.items() if value is not None})
