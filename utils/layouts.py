"""Released checkpoint layouts: where a file keeps its backbone, its class centers, its input convention.

:func:`extract_backbone_state` takes what ``torch.load`` returned and finds the backbone state
dict in it, whoever wrote the file; :func:`infer_network` names the network from the keys.

=====================  ===========================================  =================  =========
format                 file (after wrapper keys and ``module.``)    class centers      input
=====================  ===========================================  =================  =========
contraface             ours: ``{"format": ..., "backbone", ...}``   ``head``           RGB
contraface-original    ContraFace / ElasticFace ``{step}model.pth``  ``header.kernel``  RGB
                       (``backbone.*`` + ``header.*``)
adaface-lightning      AdaFace ``.ckpt`` (Lightning ``state_dict``   ``head.kernel``    **BGR**
                       with ``model.*``)
magface                MagFace ``state_dict`` with ``features.*``    ``fc.weight``      RGB
                       (or ``features.module.*``); BN eps 2e-5
facecl-unimoco         FaceCL ``model_{epoch}.pt`` (``encoder_q.*``)  –                 RGB
state_dict             a plain backbone: insightface / arcface_torch –                  RGB
                       / ElasticFace ``backbone.pth``, CurricularFace
                       and TFace ``Backbone_*.pth`` (IR keys), SCF
                       ``ckpt_e*.pt`` (``backbone_state_dict``)
=====================  ===========================================  =================  =========

Class centers are returned as ``meta["header"]["kernel"]`` (in_features, num_classes), the
layout of this project's heads. ``meta["channel_order"]`` is the colour order the file's network
was trained on; ``meta["layout_kwargs"]`` what the keys cannot tell (MagFace's BN epsilon).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import torch

from utils.errors import CheckpointError

__all__ = [
    "TRAINING_FORMAT",
    "BACKBONE_FORMAT",
    "KNOWN_LAYOUTS",
    "extract_backbone_state",
    "infer_network",
    "layer_blocks",
]

TRAINING_FORMAT = "contraface"
BACKBONE_FORMAT = "contraface-backbone"

# One line per layout, for the error a file of none of them gets.
KNOWN_LAYOUTS = (
    "this project's checkpoints and backbone files",
    "ContraFace / ElasticFace {step}model.pth (backbone.* + header.kernel)",
    "insightface / arcface_torch / ElasticFace backbone.pth (conv1.weight, layer1.0..., fc, features)",
    "AdaFace's Lightning .ckpt (state_dict with model.* and head.kernel)",
    "MagFace's checkpoint (state_dict with features.* or features.module.*, fc.weight)",
    "CurricularFace / TFace / SCF / face.evoLVe IR and IR-SE backbones (input_layer, body, output_layer)",
    "SCF's ckpt_e*.pt with backbone_state_dict",
    "FaceCL's model_{epoch}.pt (encoder_q.*)",
    "MobileFaceNet (conv_sep, layers)",
    "any of these in {'state_dict': ...} / {'model': ...} or with a DDP module. prefix",
)

# Keys that hold the model in common wrappers, most specific first.
_WRAPPER_KEYS = ("state_dict_backbone", "backbone_state_dict", "state_dict", "model_state_dict", "model", "net")
# Prefixes added by wrappers around the backbone (DDP, torch.compile).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_LIGHTNING_MARKERS = ("pytorch-lightning_version", "optimizer_states", "hparams_name")
MAGFACE_BN_EPS = 2e-5  # MagFace's iresnet.py builds every BatchNorm with eps=2e-05

IRESNET_DEPTHS = {
    (2, 2, 2, 2): "iresnet18",
    (3, 4, 6, 3): "iresnet34",
    (3, 4, 14, 3): "iresnet50",
    (3, 13, 30, 3): "iresnet100",
    (6, 26, 60, 6): "iresnet200",
}
MOBILEFACENET_SCALES = {2: "mobilefacenet", 4: "mobilefacenet_large"}
# IR depths from the blocks per stage, for each form and block the authors' code builds:
# AdaFace/TFace (a BN after the first conv) 18..101 basic and 152/200 bottleneck; face.evoLVe
# (CurricularFace, SCF) 50..152 basic, its 152 a different network from AdaFace's.
IR_DEPTHS = {
    ("adaface", "basic"): {(2, 2, 2, 2): "18", (3, 4, 6, 3): "34", (3, 4, 14, 3): "50", (3, 13, 30, 3): "101"},
    ("adaface", "bottleneck"): {(3, 8, 36, 3): "152", (3, 24, 36, 3): "200"},
    ("evolve", "basic"): {(3, 4, 14, 3): "50", (3, 13, 30, 3): "101", (3, 8, 36, 3): "152"},
}
_LAYER_KEY = re.compile(r"^layer([1-4])\.(\d+)\.")
_BODY_KEY = re.compile(r"^body\.(\d+)\.res_layer\.(\d+)\.weight$")


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


def strip_wrappers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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


def _split(state: Mapping[str, torch.Tensor], prefix: str) -> tuple[dict, dict]:
    """(the keys under ``prefix`` without it, wrappers stripped; every other key)."""
    inside = strip_wrappers({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    return inside, {k: v for k, v in state.items() if not k.startswith(prefix)}


def _first_keys(obj: Any, count: int = 8) -> str:
    return str(list(map(str, obj))[:count]) if isinstance(obj, Mapping) else f"a {type(obj).__name__}"


def _unknown_layout(path: str, obj: Any, what: str) -> CheckpointError:
    known = "".join(f"\n  - {line}" for line in KNOWN_LAYOUTS)
    return CheckpointError(f"{path}: {what}; its first keys: {_first_keys(obj)}. Known layouts:{known}")


def _ours(obj: Mapping, path: str) -> tuple[dict[str, torch.Tensor], dict]:
    meta: dict[str, Any] = {"path": path, "format": obj["format"], "channel_order": "RGB"}
    for key in ("version", "network", "network_kwargs", "step", "epoch"):
        if key in obj:
            meta[key] = obj[key]
    if not _is_state_dict(obj.get("backbone")):
        raise CheckpointError(f"{path}: {obj['format']!r} checkpoint has no 'backbone' state dict")
    return strip_wrappers(obj["backbone"]), meta


def _unwrap(obj: Any, path: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The state dict inside ``{"state_dict": ...}`` and similar wrappers, and the keys passed."""
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
        if isinstance(obj, Mapping) and "uncer_net_state_dict" in obj:
            raise CheckpointError(
                f"{path}: an SCF checkpoint with only the confidence head (uncer_net_state_dict): SCF "
                f"trains it on a frozen backbone kept in a separate file (their --saved_bkb); load that one"
            )
        raise _unknown_layout(path, obj, f"no backbone state dict found (top level is a {type(obj).__name__})")
    return strip_wrappers(obj), wrappers


def extract_backbone_state(obj: Any, path: str = "<checkpoint>") -> tuple[dict[str, torch.Tensor], dict]:
    """Find the backbone state dict in a loaded checkpoint object; return (state, metadata).

    Metadata: ``path``, ``format``, ``channel_order``; ``header`` (the file's other tensors,
    ``kernel`` = class centers (in, C) where it has them), ``layout_kwargs``, ``wrapper``, and what
    our checkpoints store (``network``, ``network_kwargs``, ``step``, ``epoch``).
    """
    if isinstance(obj, Mapping) and obj.get("format") in (TRAINING_FORMAT, BACKBONE_FORMAT):
        return _ours(obj, path)
    lightning = isinstance(obj, Mapping) and any(k in obj for k in _LIGHTNING_MARKERS)
    state, wrappers = _unwrap(obj, path)
    meta: dict[str, Any] = {"path": path, "format": "state_dict", "channel_order": "RGB"}
    if wrappers:
        meta["wrapper"] = ".".join(wrappers)
    if lightning or any(k.startswith("model.input_layer.") for k in state):
        return _adaface(state, meta, path)
    if any(k.startswith("encoder_q.") for k in state):
        # FaceCL's model_{epoch}.pt: the whole UniMoCo state dict; the query encoder is the network
        meta["format"] = "facecl-unimoco"
        return _split(state, "encoder_q.")[0], meta
    if any(k.startswith(("features.conv1.", "features.module.")) for k in state):
        backbone, rest = _split(state, "features.")
        meta.update(format="magface", layout_kwargs={"bn_eps": MAGFACE_BN_EPS})
        if "fc.weight" in rest:
            meta["header"] = {"kernel": rest["fc.weight"]}  # MagLinear: (in_features, classes)
        return backbone, meta
    if any(k.startswith("backbone.") for k in state):
        # ContraFace/ElasticFace {step}model.pth: backbone.* plus header.kernel (class centers).
        backbone, rest = _split(state, "backbone.")
        meta["format"] = "contraface-original"
        if rest:
            meta["header"] = {k.removeprefix("header."): v for k, v in rest.items()}
        return backbone, meta
    return state, meta


def _adaface(state: dict[str, torch.Tensor], meta: dict, path: str) -> tuple[dict[str, torch.Tensor], dict]:
    """AdaFace's Lightning module: the network as ``model``, its head (``kernel`` (512, C)) as ``head``."""
    backbone, rest = _split(state, "model.")
    if not backbone:
        raise CheckpointError(
            f"{path}: a PyTorch Lightning checkpoint without model.* weights (AdaFace's module keeps its "
            f"network as `model`); its state_dict keys begin {_first_keys(state)}"
        )
    # AdaFace's README and inference.py feed BGR images: (x / 255 - 0.5) / 0.5 of cv2's order.
    meta.update(format="adaface-lightning", channel_order="BGR")
    header = {k.removeprefix("head."): v for k, v in rest.items() if k.startswith("head.")}
    if header:
        meta["header"] = header
    return backbone, meta


def layer_blocks(keys) -> tuple[int, ...] | None:
    """Block counts of layer1..4 from iresnet-style keys (``layer3.13.conv1.weight``)."""
    counts = [0, 0, 0, 0]
    for key in keys:
        match = _LAYER_KEY.match(key)
        if match:
            stage, block = int(match.group(1)) - 1, int(match.group(2))
            counts[stage] = max(counts[stage], block + 1)
    return tuple(counts) if any(counts) else None


def _described(name: str | None, family: str, detail: str, kwargs: dict) -> tuple[str | None, dict, str]:
    extras = "".join(f", {k}={v}" for k, v in kwargs.items())
    return name, kwargs, f"{name or family} ({detail}{extras})"


def _infer_iresnet(state: Mapping[str, torch.Tensor], blocks: tuple[int, ...]) -> tuple[str | None, dict, str]:
    kwargs: dict[str, Any] = {}
    width = int(state["conv1.weight"].shape[0])
    if width != 64:
        kwargs["width"] = width
    if "features.weight" in state and int(state["features.weight"].shape[0]) != 512:
        kwargs["num_features"] = int(state["features.weight"].shape[0])
    if any(".se_block." in k for k in state):
        kwargs["use_se"] = True
    return _described(IRESNET_DEPTHS.get(blocks), "iresnet", f"blocks {list(blocks)}", kwargs)


def _ir_stages(state: Mapping[str, torch.Tensor], last_conv: int) -> tuple[int, ...]:
    """Blocks per stage of an IR body: consecutive blocks with the same output channels."""
    channels: dict[int, int] = {}
    for key in state:
        match = _BODY_KEY.match(key)
        if match and int(match.group(2)) == last_conv:
            channels[int(match.group(1))] = int(state[key].shape[0])
    counts: list[int] = []
    previous = None
    for block in sorted(channels):
        if channels[block] != previous:
            counts.append(0)
            previous = channels[block]
        counts[-1] += 1
    return tuple(counts)


def _infer_ir(state: Mapping[str, torch.Tensor]) -> tuple[str | None, dict, str]:
    """face.evoLVe (PReLU right after the first conv) or AdaFace/TFace (a BN between) IR networks."""
    bottleneck = "body.0.res_layer.7.weight" in state
    adaface_form = "body.0.res_layer.2.running_mean" in state
    se = any(".se_block." in k or re.match(r"^body\.\d+\.res_layer\.5\.fc1\.", k) for k in state)
    last_conv = 7 if bottleneck else (4 if adaface_form else 3)
    stages = _ir_stages(state, last_conv)
    kind = "bottleneck" if bottleneck else "basic"
    depth = IR_DEPTHS.get(("adaface" if adaface_form else "evolve", kind), {}).get(stages)
    family = f"ir{'_se' if se else ''}{'' if adaface_form else '_evolve'}"
    kwargs: dict[str, Any] = {}
    width = int(state["input_layer.0.weight"].shape[0])
    if width != 64:
        kwargs["width"] = width
    if "output_layer.3.weight" in state and int(state["output_layer.3.weight"].shape[0]) != 512:
        kwargs["num_features"] = int(state["output_layer.3.weight"].shape[0])
    return _described(f"{family}_{depth}" if depth else None, family, f"{kind} blocks {list(stages)}", kwargs)


def infer_network(state: Mapping[str, torch.Tensor]) -> tuple[str | None, dict[str, Any], str] | None:
    """Guess (network name or None, builder kwargs, description) from a backbone state dict."""
    blocks = layer_blocks(state)
    if blocks is not None and "conv1.weight" in state:
        return _infer_iresnet(state, blocks)
    if "input_layer.0.weight" in state and "body.0.res_layer.0.weight" in state:
        return _infer_ir(state)
    if "conv_sep.layers.0.weight" in state and "layers.0.layers.0.weight" in state:
        scale = int(state["layers.0.layers.0.weight"].shape[0]) // 64
        kwargs = {}
        linear = state.get("features.layers.2.weight")  # GDC's Linear(512, num_features)
        if linear is not None and int(linear.shape[0]) != 512:
            kwargs["num_features"] = int(linear.shape[0])
        return _described(MOBILEFACENET_SCALES.get(scale), "mobilefacenet", f"scale {scale}", kwargs)
    return None
