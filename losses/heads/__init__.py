"""Margin-softmax heads by name: ``get_head(name, in_features, out_features, **params)``.

Every head takes raw embeddings, normalises them and its class centers ``kernel``
(in_features, num_classes: the ElasticFace/ContraFace ``header.kernel`` layout) and returns
scaled logits; ``head.loss(embeddings, labels)`` is its training loss. See ``base.MarginHead``.
"""

from __future__ import annotations

import difflib
from typing import Any

from losses.heads.adaface import AdaFace
from losses.heads.base import MarginHead
from losses.heads.curricularface import CurricularFace
from losses.heads.elasticface import ElasticArcFace, ElasticCosFace
from losses.heads.magface import MagFace
from losses.heads.margin import ArcFace, CombinedMargin, CosFace
from losses.heads.mv_softmax import MVSoftmaxAM, MVSoftmaxArc

HEADS: dict[str, type[MarginHead]] = {
    "arcface": ArcFace,
    "cosface": CosFace,
    "combined": CombinedMargin,
    "mv_am": MVSoftmaxAM,
    "mv_arc": MVSoftmaxArc,
    "curricularface": CurricularFace,
    "magface": MagFace,
    "adaface": AdaFace,
    "elastic_arc": ElasticArcFace,
    "elastic_cos": ElasticCosFace,
}

# every parameter some head takes, in a stable order: the config keys of the method section
HEAD_PARAMS: tuple[str, ...] = tuple(dict.fromkeys(name for head in HEADS.values() for name in head.param_names))


def get_head(name: str, in_features: int, out_features: int, **params: Any) -> MarginHead:
    """Build the head ``name``; a parameter given as None takes the head's own default."""
    key = name.lower()
    if key not in HEADS:
        close = difflib.get_close_matches(key, HEADS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown head {name!r}{hint} (known: {', '.join(HEADS)})")
    cls = HEADS[key]
    given = {k: v for k, v in params.items() if v is not None}
    unknown = sorted(set(given) - set(cls.param_names))
    if unknown:
        raise ValueError(
            f"head {key!r} takes no parameter {', '.join(map(repr, unknown))} "
            f"(its parameters: {', '.join(cls.param_names)})"
        )
    return cls(in_features, out_features, **given)


__all__ = [
    "HEADS",
    "HEAD_PARAMS",
    "AdaFace",
    "ArcFace",
    "CombinedMargin",
    "CosFace",
    "CurricularFace",
    "ElasticArcFace",
    "ElasticCosFace",
    "MVSoftmaxAM",
    "MVSoftmaxArc",
    "MagFace",
    "MarginHead",
    "get_head",
]
