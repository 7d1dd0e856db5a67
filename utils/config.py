"""The config loader: ``config/config.py`` (the one file users edit), presets layered on it, ``--set``.

A **root** config is a file that defines ``DATASETS`` (``config/config.py`` or a copy of it): an
EasyDict ``config`` holding every key, and one block of keys per training set.

A **preset** (``configs/*.py``) is any other config file. It states only what differs from its
base, in at most three module-level names (``_``-prefixed helpers and imports are ignored;
anything else is refused, so that a misspelt ``datset`` cannot be silently ignored):

    # configs/my_experiment.py: a docstring (why, and where the values come from), then
    from easydict import EasyDict as edict

    base = "configs/other_preset.py"  # optional; default "config/config.py"; relative to the repo root
    dataset = "synthetic"             # optional; a block of the root's DATASETS; default: the base's
    config = edict()                  # optional; the keys this preset changes, nothing else
    config.lr = 0.02
    config.num_epoch = 2

Loading a preset resolves its chain of bases down to the root (a cycle is an error), then:

1. the root's ``config``;
2. the dataset block named by the nearest preset of the chain that names one, if any;
3. each preset's ``config`` keys, from the root's child up to the preset itself: a key set by a
   preset beats every dataset block and every preset below it. A key the root does not define
   is an error naming the preset and the key, with a suggestion;

and then, for any config, the command line: ``--dataset NAME`` switches the whole block (over
preset values too, as before presets were layered) and ``--set key=value`` sets one key, typed
like its current value. ``output`` left empty becomes ``work_dirs/<dataset>_<network>_<method>``.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import runpy
import types
from typing import Any, Iterable

from easydict import EasyDict as edict

from utils.errors import ConfigError
from utils.lr_schedule import SCHEDULES
from utils.registry import suggest

__all__ = [
    "AMP_MODES", "ConfigError", "DEFAULT_CONFIG", "PRESET_NAMES", "apply_overrides", "config_to_json",
    "load_config", "to_plain", "validate",
]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "config", "config.py")

AMP_MODES = ("none", "bf16", "fp16")

PRESET_NAMES = ("base", "dataset", "config")  # the module-level names a preset may set


def _parse_value(key: str, text: str, current: Any) -> Any:
    """Parse ``text`` as a Python literal (falling back to a plain string) of ``current``'s type."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if current is None and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"  # a key whose default is None ("the network's own") may be a flag
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
            raise ConfigError(f"unknown key {key!r}{suggest(key, cfg.keys())}")
        cfg[key] = _parse_value(key, text.strip(), cfg[key])
    return cfg


def _switch_dataset(cfg: edict, datasets: dict, name: str, root: str, where: str = "") -> edict:
    if name not in datasets:
        raise ConfigError(
            f"{where}unknown dataset {name!r} in {_shown(root)}{suggest(name, datasets)} "
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


def validate(cfg: edict) -> edict:
    """Check values that would otherwise fail hours into training."""
    if cfg.amp not in AMP_MODES:
        raise ConfigError(f"amp {cfg.amp!r} is not one of {', '.join(AMP_MODES)}")
    if list(cfg.shrink_epoch) != sorted(cfg.shrink_epoch) or not cfg.shrink_epoch:
        raise ConfigError(f"shrink_epoch {cfg.shrink_epoch} must be a non-empty increasing list")
    if cfg.shrink_epoch[0] < 1:
        raise ConfigError(f"shrink_epoch {cfg.shrink_epoch}: epochs are 1-based")
    for key in ("batch_size", "num_epoch", "embedding_size", "network_width"):
        if cfg[key] is not None and int(cfg[key]) <= 0:
            raise ConfigError(f"{key} must be positive, got {cfg[key]!r}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {cfg.dropout!r}")
    for key in ("start_epoch", "keep_checkpoints", "keep_backbones"):
        if int(cfg[key]) < 0:
            raise ConfigError(f"{key} must be >= 0, got {cfg[key]!r}")
    if cfg.start_epoch >= cfg.num_epoch:
        raise ConfigError(f"start_epoch {cfg.start_epoch} leaves nothing to train (num_epoch {cfg.num_epoch})")
    if cfg.init_weights and not os.path.isfile(cfg.init_weights):
        raise ConfigError(f"init_weights {cfg.init_weights!r}: file not found")
    scheduler = cfg.get("scheduler", "step")
    if scheduler not in SCHEDULES:
        raise ConfigError(f"scheduler {scheduler!r} is not one of {', '.join(SCHEDULES)}")
    return cfg


def _shown(path: str) -> str:
    """``path`` as an error names it: relative to the repo root when inside it (configs/x.py)."""
    relative = os.path.relpath(os.path.abspath(path), REPO_ROOT)
    return path if relative.startswith(os.pardir) else relative


def _run(path: str, referrer: str | None = None) -> dict:
    if not os.path.isfile(path):
        if referrer is None:
            raise ConfigError(f"config file {path} not found")
        raise ConfigError(
            f"{_shown(referrer)}: base {_shown(path)} not found (a relative base is read from the repository root)"
        )
    return runpy.run_path(path)


def _check_preset_names(path: str, namespace: dict) -> None:
    """Refuse module-level names a preset does not have: a typo there would otherwise change nothing."""
    for name, value in namespace.items():
        if name.startswith("_") or name in PRESET_NAMES:
            continue
        if isinstance(value, (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType)):
            continue  # imports (edict, copy, ...) and helpers
        raise ConfigError(
            f"{_shown(path)}: unknown name {name!r}{suggest(name, PRESET_NAMES)} "
            f"(a preset sets only {', '.join(PRESET_NAMES)}; prefix helpers with _)"
        )
    for name in ("base", "dataset"):
        if name in namespace and not isinstance(namespace[name], str):
            raise ConfigError(f"{_shown(path)}: {name} must be a string, got {namespace[name]!r}")
    if not isinstance(namespace.get("config", {}), dict):
        raise ConfigError(f"{_shown(path)}: config must be an EasyDict of the keys it changes")


def _chain(path: str) -> list[tuple[str, dict]]:
    """``[(path, namespace)]`` from ``path`` down its bases to the root (the file defining DATASETS)."""
    chain: list[tuple[str, dict]] = []
    seen: list[str] = []
    referrer = None
    while True:
        real = os.path.realpath(path)
        if real in seen:
            cycle = " -> ".join(_shown(p) for p, _ in chain[seen.index(real):])
            raise ConfigError(f"{_shown(chain[-1][0])}: base cycle {cycle} -> {_shown(path)}")
        seen.append(real)
        namespace = _run(path, referrer)
        chain.append((path, namespace))
        if "DATASETS" in namespace:
            if "base" in namespace:
                raise ConfigError(f"{_shown(path)} defines DATASETS (a root config) and base: a root has no base")
            return chain
        _check_preset_names(path, namespace)
        referrer = path
        path = os.path.join(REPO_ROOT, namespace.get("base", DEFAULT_CONFIG))  # an absolute base stays as it is


def _apply_preset(cfg: edict, keys: dict, path: str, root: str) -> None:
    for key, value in keys.items():
        if key == "dataset":
            raise ConfigError(
                f"{_shown(path)}: choose the block with a module-level dataset = {value!r}, not config.dataset "
                "(the block also sets rec, num_classes, ...)"
            )
        if key not in cfg:
            raise ConfigError(
                f"{_shown(path)}: unknown key {key!r}{suggest(key, cfg.keys())} "
                f"(a preset changes keys of {_shown(root)}, it adds none)"
            )
        cfg[key] = copy.deepcopy(value)


def _resolve(path: str) -> tuple[edict, dict, str]:
    """The layered config of ``path`` (module docstring, steps 1-3), its root's DATASETS, the root's path."""
    chain = _chain(path)
    root, namespace = chain[-1]
    if "config" not in namespace:
        raise ConfigError(f"{_shown(root)} defines no `config`")
    cfg = copy.deepcopy(edict(namespace["config"]))
    datasets = namespace["DATASETS"]
    if datasets:
        _check_blocks(datasets, root)
    presets = chain[:-1]
    # the nearest preset naming a block wins, and the block goes beneath every preset's keys, so a
    # preset built on another keeps its base's recipe (network, lr, ...) on the new data
    named = next(((p, ns["dataset"]) for p, ns in presets if "dataset" in ns), None)
    if named is not None:
        _switch_dataset(cfg, datasets, named[1], root, where=f"{_shown(named[0])}: ")
    for preset, ns in reversed(presets):
        _apply_preset(cfg, ns.get("config", {}), preset, root)
    return cfg, datasets, root


def load_config(
    path: str | None = None, dataset: str | None = None, overrides: Iterable[str] = ()
) -> edict:
    """Resolve the config or preset ``path``, switch to ``dataset``, apply ``key=value`` overrides, validate."""
    cfg, datasets, root = _resolve(path or DEFAULT_CONFIG)
    if dataset is not None:
        _switch_dataset(cfg, datasets, dataset, root)
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
