"""Load ``config/config.py``, switch its dataset block, apply typed ``--set key=value`` overrides."""

from __future__ import annotations

import ast
import copy
import difflib
import json
import os
import runpy
from typing import Any, Iterable

from easydict import EasyDict as edict

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config", "config.py")

AMP_MODES = ("none", "bf16", "fp16")


class ConfigError(ValueError):
    """A configuration file, key or value is wrong; the message says which."""


def _suggest(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _parse_value(key: str, text: str, current: Any) -> Any:
    """Parse ``text`` as a Python literal (falling back to a plain string) of ``current``'s type."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if current is None or value is None:
        return value
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif isinstance(current, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif isinstance(current, (list, tuple)) and isinstance(value, (list, tuple)):
        return list(value)
    elif isinstance(current, str):
        return str(text) if not isinstance(value, str) else value
    elif type(value) is type(current):
        return value
    raise ConfigError(
        f"--set {key}={text}: expected a {type(current).__name__} like {current!r}, "
        f"got {type(value).__name__} {value!r}"
    )


def apply_overrides(cfg: edict, overrides: Iterable[str]) -> edict:
    """Apply ``key=value`` strings to ``cfg`` (existing keys only, values typed like the current)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        if key not in cfg:
            raise ConfigError(f"unknown key {key!r}{_suggest(key, cfg.keys())}")
        cfg[key] = _parse_value(key, text.strip(), cfg[key])
    return cfg


def _switch_dataset(cfg: edict, datasets: dict, name: str, path: str) -> edict:
    if name not in datasets:
        raise ConfigError(
            f"unknown dataset {name!r} in {path}{_suggest(name, datasets)} "
            f"(known: {', '.join(datasets)})"
        )
    cfg.update(copy.deepcopy(datasets[name]))
    cfg.dataset = name
    return cfg


def _check_blocks(datasets: dict, path: str) -> None:
    keysets = {name: set(block) for name, block in datasets.items()}
    union = set().union(*keysets.values())
    for name, keys in keysets.items():
        if keys != union:
            raise ConfigError(
                f"{path}: dataset block {name!r} lacks {sorted(union - keys)}; every block must "
                "set the same keys so that --dataset can switch between them"
            )


def _check_head(cfg: edict) -> None:
    """A known head, and only parameters it takes, typed like its defaults (None = its default)."""
    from losses.heads import HEAD_PARAMS, HEADS

    if cfg.head not in HEADS:
        raise ConfigError(
            f"head {cfg.head!r} is not a known head{_suggest(str(cfg.head), HEADS)} (known: {', '.join(HEADS)})"
        )
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


def validate(cfg: edict) -> edict:
    """Check values that would otherwise fail hours into training."""
    from losses import METHODS

    if cfg.method not in METHODS:
        raise ConfigError(f"method {cfg.method!r} is not one of {', '.join(METHODS)}")
    _check_head(cfg)
    if cfg.amp not in AMP_MODES:
        raise ConfigError(f"amp {cfg.amp!r} is not one of {', '.join(AMP_MODES)}")
    if list(cfg.shrink_epoch) != sorted(cfg.shrink_epoch) or not cfg.shrink_epoch:
        raise ConfigError(f"shrink_epoch {cfg.shrink_epoch} must be a non-empty increasing list")
    if cfg.shrink_epoch[0] < 1:
        raise ConfigError(f"shrink_epoch {cfg.shrink_epoch}: epochs are 1-based")
    for key in ("batch_size", "num_epoch", "embedding_size", "network_width"):
        if int(cfg[key]) <= 0:
            raise ConfigError(f"{key} must be positive, got {cfg[key]!r}")
    for key in ("dropout", "dropout2"):
        if not 0.0 <= cfg[key] < 1.0:
            raise ConfigError(f"{key} must be in [0, 1), got {cfg[key]!r}")
    if not 0.0 <= cfg.contra_ema <= 1.0:
        raise ConfigError(f"contra_ema must be in [0, 1], got {cfg.contra_ema!r}")
    if "sample_rate" in cfg and not 0.0 < cfg.sample_rate <= 1.0:
        raise ConfigError(f"sample_rate must be in (0, 1], got {cfg.sample_rate!r} (dataset {cfg.dataset!r})")
    if cfg.get("sample_rate", 1.0) < 1.0 and not cfg.get("partial_fc", False):
        raise ConfigError(f"sample_rate {cfg.sample_rate!r} needs partial_fc = True (the replicated head scores all)")
    for key in ("start_epoch", "keep_checkpoints", "keep_backbones"):
        if int(cfg[key]) < 0:
            raise ConfigError(f"{key} must be >= 0, got {cfg[key]!r}")
    if cfg.start_epoch >= cfg.num_epoch:
        raise ConfigError(f"start_epoch {cfg.start_epoch} leaves nothing to train (num_epoch {cfg.num_epoch})")
    if cfg.switch_epoch is not None and (not isinstance(cfg.switch_epoch, int) or cfg.switch_epoch < 0):
        raise ConfigError(f"switch_epoch must be a 0-based epoch index or None, got {cfg.switch_epoch!r}")
    if cfg.init_weights and not os.path.isfile(cfg.init_weights):
        raise ConfigError(f"init_weights {cfg.init_weights!r}: file not found")
    _check_unimoco(cfg)
    return cfg


UNIMOCO_KEYS = (
    "moco_dim", "moco_k", "moco_m", "moco_t", "moco_mlp", "unimoco_margin", "own_key_positive",
    "samples_per_label", "augmentation",
)


def _check_unimoco(cfg: edict) -> None:
    """The UniMoCo (FaceCL) keys; K against the global batch is checked where the world size is known."""
    from utils.lr_schedule import SCHEDULES
    from utils.views import AUGMENTATIONS

    scheduler = cfg.get("scheduler", "step")
    if scheduler not in SCHEDULES:
        raise ConfigError(f"scheduler {scheduler!r} is not one of {', '.join(SCHEDULES)}")
    if cfg.get("dali"):
        raise ConfigError(
            "dali = True: FaceCL's DALI loader is not offered (it gave one view and no class groups, "
            "so UniMoCo never trained with it); set dali = False"
        )
    if isinstance(cfg.get("moco_mlp"), bool):
        raise ConfigError(
            f"moco_mlp = {cfg.moco_mlp}: use None (one linear layer), 'same_in', 'same_out' or a hidden width"
        )
    if cfg.method != "unimoco":
        return
    missing = [key for key in UNIMOCO_KEYS if key not in cfg]
    if missing:
        raise ConfigError(f"method 'unimoco' needs the keys {', '.join(missing)} (see config/config.py, UniMoCo)")
    mlp = cfg.moco_mlp
    if not (mlp in (None, "same_in", "same_out") or (isinstance(mlp, int) and mlp > 0)):
        raise ConfigError(f"moco_mlp {mlp!r}: use None, 'same_in', 'same_out' or a positive hidden width")
    if cfg.augmentation not in AUGMENTATIONS:
        raise ConfigError(f"augmentation {cfg.augmentation!r} is not one of {', '.join(AUGMENTATIONS)}")
    for key in ("moco_dim", "moco_k", "samples_per_label"):
        if not isinstance(cfg[key], int) or cfg[key] <= 0:
            raise ConfigError(f"{key} must be a positive integer, got {cfg[key]!r}")
    if cfg.batch_size % cfg.samples_per_label:
        raise ConfigError(
            f"batch_size {cfg.batch_size} is not a multiple of samples_per_label {cfg.samples_per_label}: "
            "a UniMoCo batch holds whole groups of one class"
        )
    if not 0.0 <= cfg.moco_m <= 1.0:
        raise ConfigError(f"moco_m must be in [0, 1], got {cfg.moco_m!r}")
    if not cfg.moco_t > 0:
        raise ConfigError(f"moco_t must be positive, got {cfg.moco_t!r}")


def load_config(
    path: str | None = None, dataset: str | None = None, overrides: Iterable[str] = ()
) -> edict:
    """Read the EasyDict ``config`` of ``path``, switch to ``dataset``, apply overrides, validate."""
    path = path or DEFAULT_CONFIG
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} not found")
    namespace = runpy.run_path(path)
    if "config" not in namespace:
        raise ConfigError(f"{path} defines no `config`")
    cfg = copy.deepcopy(edict(namespace["config"]))
    datasets = namespace.get("DATASETS", {})
    if datasets:
        _check_blocks(datasets, path)
    if dataset is not None:
        _switch_dataset(cfg, datasets, dataset, path)
    apply_overrides(cfg, overrides)
    if not cfg.output:
        cfg.output = os.path.join("work_dirs", f"{cfg.dataset}_{cfg.network}_{cfg.method}")
    return validate(cfg)


def config_to_json(cfg: edict) -> str:
    """The resolved config as JSON (saved beside the checkpoints)."""
    return json.dumps(to_plain(cfg), indent=2, sort_keys=True)


def to_plain(value: Any) -> Any:
    """EasyDict/tuple tree -> plain dict/list (checkpoint-safe, JSON-safe)."""
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value
