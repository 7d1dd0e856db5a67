"""Backbone weights: load any known checkpoint layout into a backbone, export a backbone file.

Every file is read with ``torch.load(weights_only=True)``, so a downloaded file can never run
code; utils/layouts.py finds the backbone in it (this project's files, the original ContraFace's,
insightface / arcface_torch / ElasticFace, AdaFace's Lightning ``.ckpt``, MagFace, CurricularFace,
TFace, SCF, FaceCL) and names its network from the keys.
"""

from __future__ import annotations

import os
import pickle
from typing import Any, Mapping

import torch
from torch import nn

from utils.errors import CheckpointError, UnsafeCheckpointError
from utils.fileio import atomic_path
from utils.layouts import BACKBONE_FORMAT, TRAINING_FORMAT, extract_backbone_state, infer_network, layer_blocks
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
    "CHANNEL_ORDERS",
    "add_channel_order_argument",
    "check_channel_order",
    "accept_rgb",
    "export_backbone",
]

FORMAT_VERSION = 1

# How many offending keys an error message lists.
_MAX_LISTED = 5

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
        blocks_c, blocks_m = layer_blocks(state), layer_blocks(own)
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
            "  hint: the checkpoint's keys are not those of a known backbone (iresnet, IR / IR-SE, "
            "mobilefacenet)"
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


CHANNEL_ORDERS = ("RGB", "BGR")


def check_channel_order(order: str, source: str = "channel_order") -> str:
    """``order`` upper-cased, or a CheckpointError naming ``source`` and the allowed values."""
    if str(order).upper() not in CHANNEL_ORDERS:
        raise CheckpointError(f"{source}: unknown channel order {order!r}; expected one of {list(CHANNEL_ORDERS)}")
    return str(order).upper()


def add_channel_order_argument(parser: Any) -> None:
    """The evaluators' ``--channel-order``: the colour order a checkpoint's network was trained on."""
    parser.add_argument(
        "--channel-order", type=str.upper, choices=CHANNEL_ORDERS, default=None,
        help="colour order the weights were trained on (default: the file's layout says: BGR for AdaFace's "
             ".ckpt, else RGB); a BGR network is converted to take the RGB crops every evaluator feeds")


def accept_rgb(module: nn.Module, channel_order: str, path: str = "<checkpoint>") -> None:
    """Make a network trained on ``channel_order`` images take RGB ones, as every pipeline here feeds.

    For BGR the input channels of the stem (the first 3-channel convolution) are reversed, which is
    exact: a convolution is linear in its channels and the usual normalisation, (x - 127.5) / 127.5,
    is the same for each. Training, evaluation and ONNX export then need no per-model conversion.
    """
    if check_channel_order(channel_order) == "RGB":
        return
    stem = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
    if stem is None or stem.in_channels != 3 or stem.groups != 1:
        raise CheckpointError(f"{path}: cannot convert a BGR network to RGB input: no 3-channel stem convolution")
    with torch.no_grad():
        stem.weight.copy_(stem.weight.flip(1))


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

