"""Margin-softmax heads by name: ``get_head(name, in_features, out_features, **params)``.

Every head takes raw embeddings, normalises them and its class centers ``kernel``
(in_features, num_classes: the ElasticFace/ContraFace ``header.kernel`` layout) and returns
scaled logits; ``head.loss(embeddings, labels)`` is its training loss. See ``base.MarginHead``.
"""

from __future__ import annotations

from typing import Any

from losses.heads.adaface import AdaFace
from losses.heads.base import MarginHead
from losses.heads.curricularface import CurricularFace
from losses.heads.elasticface import ElasticArcFace, ElasticCosFace
from losses.heads.magface import MagFace
from losses.heads.margin import ArcFace, CombinedMargin, CosFace
from losses.heads.mv_softmax import MVSoftmaxAM, MVSoftmaxArc
from utils.errors import ConfigError
from utils.registry import Registry, suggest

HEADS: Registry[type[MarginHead]] = Registry("head")
for _name, _cls in {
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
}.items():
    HEADS.add(_name, _cls)

# every parameter some head takes, in a stable order: the config keys of the method section
HEAD_PARAMS: tuple[str, ...] = tuple(dict.fromkeys(name for head in HEADS.values() for name in head.param_names))


def get_head(name: str, in_features: int, out_features: int, **params: Any) -> MarginHead:
    """Build the head ``name`` (any case); a parameter given as None takes the head's own default."""
    key = HEADS.canonical(name)
    cls = HEADS[key]
    given = {k: v for k, v in params.items() if v is not None}
    unknown = sorted(set(given) - set(cls.param_names))
    if unknown:
        raise ValueError(
            f"head {key!r} takes no parameter {', '.join(map(repr, unknown))} "
            f"(its parameters: {', '.join(cls.param_names)})"
        )
    return cls(in_features, out_features, **given)


def head_params(cfg: Any) -> dict[str, Any]:
    """The head parameters set in ``cfg`` (a None or missing key: the head's own default)."""
    return {key: cfg[key] for key in HEAD_PARAMS if cfg.get(key) is not None}


def check_head_config(cfg: Any) -> None:
    """``cfg.head`` is a head (its registered name is written back) and only its parameters are set.

    Every parameter is typed like the head's default (None: the default); a parameter of another
    head that is set is a ConfigError naming it.
    """
    if cfg.head not in HEADS:
        raise ConfigError(
            f"head {cfg.head!r} is not a known head{suggest(str(cfg.head), HEADS)} (known: {', '.join(HEADS)})"
        )
    cfg.head = HEADS.canonical(cfg.head)
    head = HEADS[cfg.head]
    defaults = head.defaults()
    for key in HEAD_PARAMS:
        value = cfg.get(key)
        if value is None:
            continue
        if key not in defaults:
            raise ConfigError(
                f"{key}={value!r}: head {cfg.head!r} takes no parameter {key!r} "
                f"(its parameters: {', '.join(head.param_names)}; unset it or set it to None)"
            )
        if isinstance(defaults[key], bool):
            # --set of a key whose current value is None keeps the literal: accept true/false too
            if isinstance(value, str) and value.lower() in ("true", "false"):
                value = value.lower() == "true"
            if not isinstance(value, bool):
                raise ConfigError(f"{key}={value!r}: head {cfg.head!r} expects True or False")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
        else:
            raise ConfigError(f"{key}={value!r}: head {cfg.head!r} expects a number (default {defaults[key]!r})")
        cfg[key] = value


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
    "check_head_config",
    "get_head",
    "head_params",
]
