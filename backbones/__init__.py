"""Backbone registry: ``get_backbone(name, **kw)`` builds a face-embedding network by name.

Every backbone maps a (N, 3, 112, 112) batch to (N, num_features) embeddings and offers
``forward_trunk`` / ``forward_head`` / ``double_forward`` and a ``dropout_p`` property
(backbones/base.py).
"""

from __future__ import annotations

import difflib
from typing import Callable

from torch import nn

from .iresnet import IResNet, iresnet18, iresnet34, iresnet50, iresnet100, iresnet200
from .mobilefacenet import MobileFaceNet, mobilefacenet, mobilefacenet_large

__all__ = [
    "BACKBONES",
    "IResNet",
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
]

# Canonical names first; the insightface/FaceCL short names ("r50", "mbf") are aliases of the
# same builders so configs from either ecosystem work unchanged.
BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "iresnet18": iresnet18,
    "iresnet34": iresnet34,
    "iresnet50": iresnet50,
    "iresnet100": iresnet100,
    "iresnet200": iresnet200,
    "mobilefacenet": mobilefacenet,
    "mobilefacenet_large": mobilefacenet_large,
    "r18": iresnet18,
    "r34": iresnet34,
    "r50": iresnet50,
    "r100": iresnet100,
    "r200": iresnet200,
    "mbf": mobilefacenet,
    "mbf_large": mobilefacenet_large,
}


def list_backbones() -> list[str]:
    """All registered backbone names, aliases included, sorted."""
    return sorted(BACKBONES)


def get_backbone(name: str, **kwargs) -> nn.Module:
    """Build the backbone registered as ``name`` with the builder's keyword arguments."""
    try:
        builder = BACKBONES[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), BACKBONES, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"unknown backbone {name!r}; known: {', '.join(list_backbones())}{hint}"
        ) from None
    return builder(**kwargs)
