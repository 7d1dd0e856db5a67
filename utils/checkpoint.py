"""Backbone weights: load any known checkpoint layout into a backbone, export a backbone file.

Layouts :func:`load_weights` understands (all read with ``torch.load(weights_only=True)``, so a
downloaded file can never run code):

* this project's training checkpoints ``{"format": "contraface", "backbone": ..., "head": ...}``
  and exported backbone files ``{"format": "contraface-backbone", "backbone": ...}``;
* the original ContraFace/ElasticFace ``{step}model.pth``: a flat state dict with ``backbone.*``
  keys and the class centers as ``header.kernel`` (the header is returned in the metadata);
* insightface ``backbone.pth``: a flat state dict with plain keys (``conv1.weight`` ...);
* FaceCL's ``model_{epoch}.pt``: the UniMoCo state dict (``encoder_q.*``, ``encoder_k.*``,
  ``projection_*``, queues); the query encoder ``encoder_q`` is taken;
* any of these with a DDP ``module.`` (or ``torch.compile`` ``_orig_mod.``) prefix, or wrapped
  in ``{"state_dict": ...}`` / ``{"model": ...}`` / ``{"state_dict_backbone": ...}``.
"""

from __future__ import annotations

import os
import pickle
import re
from typing import Any, Mapping

import torch
from torch import nn

from utils.errors import CheckpointError, UnsafeCheckpointError
from utils.fileio import atomic_path
from utils.run_files import step_from_filename

__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "BACKBONE_FORMAT",
    "TRAINING_FORMAT",
    "load_weights",
    "load_state",
    "apply_state",
    "extract_backbone_state",
    "infer_network",
    "read_checkpoint_meta",
    "export_backbone",
]

TRAINING_FORMAT = "contraface"
BACKBONE_FORMAT = "contraface-backbone"
FORMAT_VERSION = 1

# Keys that hold the model in common wrappers, most specific first.
_WRAPPER_KEYS = ("state_dict_backbone", "state_dict", "model_state_dict", "model", "net")
# Prefixes added by wrappers around the backbone (DDP, torch.compile).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# How many offending keys an error message lists.
_MAX_LISTED = 5

IRESNET_DEPTHS = {
    (2, 2, 2, 2): "iresnet18",
    (3, 4, 6, 3): "iresnet34",
    (3, 4, 14, 3): "iresnet50",
    (3, 13, 30, 3): "iresnet100",
    (6, 26, 60, 6): "iresnet200",
}
MOBILEFACENET_SCALES = {2: "mobilefacenet", 4: "mobilefacenet_large"}
_LAYER_KEY = re.compile(r"^layer([1-4])\.(\d+)\.")


# What torch.save writes: a zip archive (torch >= 1.6), or a pickle stream (the legacy format;
# protocol 2 by default, PROTO opcode 0x80 then the protocol number).
_ZIP_MAGIC = b"PK\x03\x04"


def _is_torch_file(head: bytes) -> bool:
    """Whether a file's first bytes are a zip archive's or a pickle's (protocol 2-5)."""
    return head.startswith(_ZIP_MAGIC) or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def load_state(path: str | os.PathLike) -> Any:
    """``torch.load`` a file on CPU with ``weights_only=True``; clear errors naming the file.

    CheckpointError "not a PyTorch checkpoint" for a file that is no torch.save output at all
    (e.g. a text .idx, random bytes), UnsafeCheckpointError only for a real pickle that would
    need arbitrary code to load; both are raised before anything in the file is run.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} not found")
    with open(path, "rb") as f:
        head = f.read(8)
    if not _is_torch_file(head):
        what = f"it starts with {head!r}" if head else "it is empty"
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint (torch.save writes a zip archive or a pickle; {what})"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's weights-only unpickler stops before any object is built, so nothing ran.
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        reason = next((line for line in lines if "Unsupported" in line or "GLOBAL" in line),
                      lines[-1] if lines else type(exc).__name__)
        if "Unsupported operand" in reason:  # an opcode no pickle writer emits: a damaged stream
            raise CheckpointError(
                f"{path}: not a PyTorch checkpoint (its pickle stream is not readable: {reason})"
            ) from exc
        raise UnsafeCheckpointError(
            f"{path}: refused to load: the file holds Python objects other than tensors and plain "
            f"containers, so unpickling it could run code (torch.load weights_only=True: "
            f"{reason}). Re-save only the state_dict in a trusted environment."
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({exc})") from exc


def _is_state_dict(obj: Any) -> bool:
    """A non-empty mapping of str -> tensor."""
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Drop ``prefix`` when every key carries it (a DDP-wrapped dict), else return as is."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def _strip_wrappers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove DDP / torch.compile prefixes, however they are nested."""
    state = dict(state)
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            stripped = _strip_prefix(state, prefix)
            if stripped.keys() != state.keys():
                state, changed = stripped, True
    return state


def extract_backbone_state(
    obj: Any, path: str = "<checkpoint>"
) -> tuple[dict[str, torch.Tensor], dict]:
    """Find the backbone state dict in a loaded checkpoint object; return (state, metadata)."""
    meta: dict[str, Any] = {"path": path}
    if isinstance(obj, Mapping) and obj.get("format") in (TRAINING_FORMAT, BACKBONE_FORMAT):
        meta["format"] = obj["format"]
        for key in ("version", "network", "network_kwargs", "step", "epoch"):
            if key in obj:
                meta[key] = obj[key]
        if not _is_state_dict(obj.get("backbone")):
            raise CheckpointError(
                f"{path}: {obj['format']!r} checkpoint has no 'backbone' state dict"
            )
        return _strip_wrappers(obj["backbone"]), meta
    # Unwrap {"state_dict": {...}} and similar, possibly several levels deep.
    wrappers = []
    while isinstance(obj, Mapping) and not _is_state_dict(obj):
        key = next((k for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if key is None and "backbone" in obj and _is_state_dict(obj["backbone"]):
            key = "backbone"
        if key is None:
            break
        wrappers.append(key)
        obj = obj[key]
    if not _is_state_dict(obj):
        kind = type(obj).__name__
        keys = f" with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, Mapping) else ""
        raise CheckpointError(
            f"{path}: no backbone state dict found (top level is a {kind}{keys}); expected a "
            f"state dict, a ContraFace {{step}}model.pth, an insightface backbone.pth or a "
            f"checkpoint of this project"
        )
    if wrappers:
        meta["wrapper"] = ".".join(wrappers)
    state = _strip_wrappers(obj)
    if any(k.startswith("encoder_q.") for k in state):
        # FaceCL's model_{epoch}.pt: the whole UniMoCo state dict; the query encoder is the network
        meta["format"] = "facecl-unimoco"
        return {k[len("encoder_q."):]: v for k, v in state.items() if k.startswith("encoder_q.")}, meta
    if any(k.startswith("backbone.") for k in state):
        # ContraFace/ElasticFace {step}model.pth: backbone.* plus header.kernel (class centers).
        meta["format"] = "contraface-original"
        rest = {k: v for k, v in state.items() if not k.startswith("backbone.")}
        state = _strip_wrappers(
            {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        )
        if rest:
            meta["header"] = {_drop_prefix(k, "header."): v for k, v in rest.items()}
    else:
        meta.setdefault("format", "state_dict")
    return state, meta


def _drop_prefix(key: str, prefix: str) -> str:
    return key.removeprefix(prefix)


def _layer_blocks(keys) -> tuple[int, ...] | None:
    """Block counts of layer1..4 from iresnet-style keys (``layer3.13.conv1.weight``)."""
    counts = [0, 0, 0, 0]
    for key in keys:
        match = _LAYER_KEY.match(key)
        if match:
            stage, block = int(match.group(1)) - 1, int(match.group(2))
            counts[stage] = max(counts[stage], block + 1)
    return tuple(counts) if any(counts) else None


def infer_network(
    state: Mapping[str, torch.Tensor],
) -> tuple[str | None, dict[str, Any], str] | None:
    """Guess (network name or None, builder kwargs, description) from a backbone state dict."""
    blocks = _layer_blocks(state)
    if blocks is not None and "conv1.weight" in state:
        width = int(state["conv1.weight"].shape[0])
        kwargs: dict[str, Any] = {}
        if width != 64:
            kwargs["width"] = width
        if "features.weight" in state and int(state["features.weight"].shape[0]) != 512:
            kwargs["num_features"] = int(state["features.weight"].shape[0])
        if any(".se_block." in k for k in state):
            kwargs["use_se"] = True
        name = IRESNET_DEPTHS.get(blocks)
        extras = "".join(f", {k}={v}" for k, v in kwargs.items())
        desc = f"{name or 'iresnet'} (blocks {list(blocks)}{extras})"
        return name, kwargs, desc
    if "conv_sep.layers.0.weight" in state and "layers.0.layers.0.weight" in state:
        scale = int(state["layers.0.layers.0.weight"].shape[0]) // 64
        kwargs = {}
        linear = state.get("features.layers.2.weight")  # GDC's Linear(512, num_features)
        if linear is not None and int(linear.shape[0]) != 512:
            kwargs["num_features"] = int(linear.shape[0])
        name = MOBILEFACENET_SCALES.get(scale)
        extras = "".join(f", {k}={v}" for k, v in kwargs.items())
        return name, kwargs, f"{name or 'mobilefacenet'} (scale {scale}{extras})"
    return None


def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)


def _mismatch_message(
    module: nn.Module,
    path: str,
    meta: dict,
    missing: list[str],
    unexpected: list[str],
    shapes: list[tuple[str, list[int], list[int]]],
    own: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
) -> str:
    """One error text: what does not fit, a few keys with both shapes, and an architecture hint."""
    model_arch = infer_network(own)
    ckpt_arch = infer_network(state)
    model_desc = type(module).__name__ + (f" {model_arch[2]}" if model_arch else "")
    ckpt_desc = f"network {meta['network']!r}, " if meta.get("network") else ""
    lines = [
        f"{path}: weights ({ckpt_desc}format {meta.get('format')}) do not fit the model "
        f"{model_desc}:"
    ]
    if shapes:
        lines.append(f"  {len(shapes)} shape mismatches, e.g.:")
        lines += [f"    {k}: checkpoint {c} vs model {m}" for k, c, m in shapes[:_MAX_LISTED]]
    if missing:
        lines.append(f"  {len(missing)} keys missing from the checkpoint, e.g.:")
        lines += [f"    {k} (model {_shape(own[k])})" for k in missing[:_MAX_LISTED]]
    if unexpected:
        lines.append(f"  {len(unexpected)} unexpected keys in the checkpoint, e.g.:")
        lines += [f"    {k} (checkpoint {_shape(state[k])})" for k in unexpected[:_MAX_LISTED]]
    if ckpt_arch and model_arch and ckpt_arch[2] != model_arch[2]:
        article = "an" if ckpt_arch[2][0] in "aeiou" else "a"
        lines.append(
            f"  hint: this looks like {article} {ckpt_arch[2]} checkpoint but the model is "
            f"{model_arch[2]}"
        )
        blocks_c, blocks_m = _layer_blocks(state), _layer_blocks(own)
        if blocks_c and blocks_m and blocks_c != blocks_m:
            stages = [
                f"layer{i + 1} has {blocks_c[i]} blocks in the checkpoint, "
                f"{blocks_m[i]} in the model"
                for i in range(4)
                if blocks_c[i] != blocks_m[i]
            ]
            lines.append(f"        ({'; '.join(stages)})")
        if ckpt_arch[0]:
            kw = "".join(
                f" --{k.replace('_', '-')}" + ("" if v is True else f" {v}")
                for k, v in ckpt_arch[1].items()
            )
            lines.append(f"        build it with --network {ckpt_arch[0]}{kw}")
    elif ckpt_arch is None:
        lines.append(
            "  hint: the checkpoint does not look like an iresnet or mobilefacenet backbone"
        )
    return "\n".join(lines)


def load_weights(module: nn.Module, path: str | os.PathLike, strict: bool = True) -> dict:
    """Load backbone weights from any supported checkpoint layout into ``module``; return metadata.

    Metadata: ``format``, ``path`` and, when the file has them, ``network``, ``network_kwargs``,
    ``step``, ``epoch``; ``header`` (the dropped class centers) for ContraFace ``{step}model.pth``;
    ``missing_keys`` / ``unexpected_keys`` when ``strict=False``. Shape mismatches always raise.
    """
    path = os.fspath(path)
    state, meta = extract_backbone_state(load_state(path), path)
    return apply_state(module, state, meta, strict)


def apply_state(
    module: nn.Module, state: Mapping[str, torch.Tensor], meta: dict, strict: bool = True
) -> dict:
    """Load an extracted backbone ``state`` into ``module`` with checked keys and shapes."""
    path = meta.get("path", "<checkpoint>")
    target = getattr(module, "module", module)  # accept a DDP-wrapped backbone too
    target = getattr(target, "_orig_mod", target)
    own = target.state_dict()
    # num_batches_tracked is a counter, not a weight; old insightface files lack it.
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [
        (k, _shape(v), _shape(own[k]))
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if shapes or (strict and (missing or unexpected)):
        raise CheckpointError(
            _mismatch_message(target, path, meta, missing, unexpected, shapes, own, state)
        )
    target.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    if not strict:
        meta["missing_keys"], meta["unexpected_keys"] = missing, unexpected
    return meta


def read_checkpoint_meta(path: str | os.PathLike) -> dict:
    """Describe a checkpoint without a model: format, network, network_kwargs, step, epoch.

    For foreign files the network is inferred from the key layout (``network_inferred=True``) and
    the step from the file name (``12000model.pth``, ``checkpoint-12000.pt``) when it has one.
    """
    path = os.fspath(path)
    state, meta = extract_backbone_state(load_state(path), path)
    meta.pop("header", None)
    if "network" not in meta:
        guess = infer_network(state)
        if guess is not None and guess[0] is not None:
            meta["network"], meta["network_kwargs"] = guess[0], guess[1]
            meta["network_inferred"] = True
    meta.setdefault("network_kwargs", {})
    if "step" not in meta and step_from_filename(path) is not None:
        meta["step"] = step_from_filename(path)
    meta["num_tensors"] = len(state)
    return meta


def export_backbone(
    backbone: nn.Module,
    path: str | os.PathLike,
    network: str,
    network_kwargs: dict[str, Any] | None = None,
) -> None:
    """Write ``backbone``'s weights as a ``contraface-backbone`` file, atomically (CPU tensors)."""
    backbone = getattr(backbone, "module", backbone)  # DDP
    backbone = getattr(backbone, "_orig_mod", backbone)  # torch.compile
    payload = {
        "format": BACKBONE_FORMAT,
        "version": FORMAT_VERSION,
        "network": network,
        "network_kwargs": dict(network_kwargs or {}),
        "backbone": {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)

