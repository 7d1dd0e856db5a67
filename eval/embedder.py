"""Embedder: aligned 112x112 RGB uint8 face crops -> embeddings, from a torch backbone or ONNX.

The one embedding path of every evaluation (the training callback's verification, eval.evaluation,
IJB, MegaFace), so preprocessing, precision and the flip test are defined once:

* pixels are normalised as ``(x / 255 - 0.5) / 0.5`` (the insightface convention) on the device;
* one AMP policy (:func:`default_amp_dtype`): bf16 on CUDA where supported, else fp16; fp32 on
  the CPU. AMP is on by default on CUDA for :meth:`Embedder.load` / :meth:`Embedder.from_module`;
* embeddings are returned raw (float32, not L2-normalised);
* the flip test (:func:`embed_faces`, :func:`embed_batches`): every batch is embedded as it is
  and horizontally mirrored (:func:`mirror`); both embeddings are returned. How a protocol
  combines them is its own rule: verification sums them in float64 and L2-normalises
  (insightface's verification.py), MegaFace sums them in float32 and L2-normalises
  (gen_megaface.py), IJB keeps both for its F0/F1 test modes (ijb_11.py).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from backbones import get_backbone
from utils.checkpoint import (
    CheckpointError,
    accept_rgb,
    apply_state,
    check_channel_order,
    extract_backbone_state,
    infer_network,
    load_state,
)
from utils.cpu_memory import keep_freed_memory
from utils.layouts import KNOWN_LAYOUTS
from utils.loader import normalize_batch

__all__ = [
    "EmbedFn",
    "Embedder",
    "IMAGE_SIZE",
    "load_backbone",
    "default_device",
    "default_amp_dtype",
    "embed_batches",
    "embed_faces",
    "mirror",
    "to_nchw_uint8",
]

log = logging.getLogger(__name__)

IMAGE_SIZE = 112

# (N, 3, 112, 112) uint8 RGB crops -> (N, D) float32 embeddings; an Embedder is one.
EmbedFn = Callable[[torch.Tensor], np.ndarray]


def default_device() -> torch.device:
    """cuda if available, else cpu."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_amp_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 on CUDA devices that support it, fp16 on other CUDA devices, None (fp32) on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def to_nchw_uint8(
    images: np.ndarray | torch.Tensor, image_size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE)
) -> torch.Tensor:
    """Check a uint8 image batch (NHWC numpy or NCHW tensor, either accepted) -> NCHW uint8 tensor.

    ``image_size`` (H, W) the crops must have. The result may be a non-contiguous view; batches
    are made contiguous when they are sliced.
    """
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise TypeError(
                f"Embedder: expected uint8 images (raw 0-255 pixels; the Embedder normalises), "
                f"got a numpy array of {images.dtype}"
            )
        # torch.from_numpy refuses negative strides (a view such as images[:, :, ::-1]).
        if any(s < 0 for s in images.strides):
            images = np.ascontiguousarray(images)
        tensor = torch.from_numpy(images)
    elif isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8:
            raise TypeError(
                f"Embedder: expected uint8 images (raw 0-255 pixels; the Embedder normalises), "
                f"got a tensor of {images.dtype}"
            )
        tensor = images
    else:
        raise TypeError(
            f"Embedder: expected a numpy array or torch tensor, got {type(images).__name__}"
        )
    if tensor.ndim != 4:
        raise ValueError(
            f"Embedder: expected a batch (N, 112, 112, 3) or (N, 3, 112, 112), got shape "
            f"{tuple(tensor.shape)} (add a batch axis for a single image)"
        )
    if tensor.shape[-1] == 3 and tensor.shape[1] != 3:
        tensor = tensor.permute(0, 3, 1, 2)
    height, width = image_size
    if tuple(tensor.shape[1:]) != (3, height, width):
        raise ValueError(
            f"Embedder: expected aligned {width}x{height} RGB crops, (N, {height}, {width}, 3) "
            f"numpy or (N, 3, {height}, {width}) tensor, got shape {tuple(images.shape)}"
        )
    return tensor


class Embedder:
    """Aligned 112x112 RGB uint8 face crops -> embeddings (not L2-normalised).

    ``image_size`` (H, W): the crops' size, 112x112 unless a network was made for others.
    """

    def __init__(
        self,
        run_batch: Callable[[torch.Tensor], np.ndarray],
        device: torch.device,
        batch_size: int,
        source: str,
        embedding_size: int | None = None,
        fixed_batch: int | None = None,
        image_size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE),
    ):
        if batch_size < 1:
            raise ValueError(f"Embedder: batch_size must be >= 1, got {batch_size}")
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self._run_batch = run_batch
        self.device = device
        self.batch_size = fixed_batch or batch_size
        self.fixed_batch = fixed_batch  # ONNX models exported with a fixed batch axis
        self.source = source
        self._embedding_size = embedding_size

    # -- constructors ------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        weights: str,
        network: str | None = None,
        device: str | None = None,
        batch_size: int = 128,
        amp: bool | None = None,
        channel_order: str | None = None,
        **backbone_kwargs: Any,
    ) -> "Embedder":
        """Build from a checkpoint (any layout utils.checkpoint reads) or an ``.onnx`` file.

        ``channel_order``: the colour order the checkpoint's network was trained on (None: the
        layout's); see :func:`load_backbone`. An ONNX model takes what it was exported for.
        """
        weights = os.fspath(weights)
        if weights.lower().endswith(".onnx"):
            return cls.from_onnx(weights, batch_size=batch_size, device=device)
        backbone, meta = load_backbone(weights, network, channel_order, **backbone_kwargs)
        embedder = cls.from_module(
            backbone, device=device or default_device(), batch_size=batch_size, amp=amp
        )
        embedder.source = f"{weights} ({meta['network']})"
        return embedder

    @classmethod
    def from_module(
        cls,
        module: nn.Module,
        device: str | torch.device | None = None,
        batch_size: int = 128,
        amp: bool | None = None,
        image_size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE),
    ) -> "Embedder":
        """Wrap a backbone; device default: where its parameters are; amp default: on for CUDA."""
        if device is None:
            param = next(module.parameters(), None)
            device = param.device if param is not None else default_device()
        device = torch.device(device)
        module.to(device)
        if amp is None:
            amp = device.type == "cuda"
        amp_dtype = default_amp_dtype(device) if amp else None
        if amp and amp_dtype is None:
            # CPU autocast (bf16) is slow on most CPUs and changes results: keep fp32.
            log.warning("Embedder: AMP requested on %s; running fp32 (AMP is for CUDA)", device)
        if device.type == "cpu":
            keep_freed_memory()  # else every batch page-faults its activations in again

        @torch.inference_mode()
        def run_batch(batch: torch.Tensor) -> np.ndarray:
            # the training path's table: the CPU's float32 numbers on any device (CUDA's scalar
            # division is a multiplication by 1/255, 1 ulp off for some pixel values)
            x = normalize_batch(batch.to(device, non_blocking=True))
            was_training = module.training
            module.eval()
            try:
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    out = module(x)
            finally:
                module.train(was_training)  # a callback may embed mid-training
            return out.float().cpu().numpy()

        return cls(run_batch, device, batch_size, source=type(module).__name__, image_size=image_size)

    @classmethod
    def from_onnx(
        cls,
        path: str,
        batch_size: int = 128,
        device: str | None = None,
        intra_op_threads: int | None = None,
    ) -> "Embedder":
        """onnxruntime session; CUDAExecutionProvider when available and device is not 'cpu'.

        The crop size is the model input's (112x112 where the export leaves it dynamic).
        """
        import onnxruntime as ort  # imported lazily: torch-only users do not need it loaded

        if not os.path.isfile(path):
            raise FileNotFoundError(f"ONNX model {path} not found")
        providers = ["CPUExecutionProvider"]
        if (device is None or str(device).startswith("cuda")) and (
            "CUDAExecutionProvider" in ort.get_available_providers()
        ):
            providers.insert(0, "CUDAExecutionProvider")
        try:
            options = ort.SessionOptions()
            if intra_op_threads:
                options.intra_op_num_threads = intra_op_threads
            session = ort.InferenceSession(path, options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise CheckpointError(f"{path}: onnxruntime cannot load this model ({exc})") from exc
        inp, out = session.get_inputs()[0], session.get_outputs()[0]
        if len(inp.shape) != 4:
            raise CheckpointError(
                f"{path}: expected a 4-d image input, got {inp.name} with shape {inp.shape}"
            )
        fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
        emb = out.shape[1] if len(out.shape) == 2 and isinstance(out.shape[1], int) else None
        # the crops the model takes: its input's height and width when the export fixes them
        size = tuple(d if isinstance(d, int) and d > 0 else IMAGE_SIZE for d in inp.shape[2:])

        def run_batch(batch: torch.Tensor) -> np.ndarray:
            n = batch.shape[0]
            x = normalize_batch(batch).numpy()
            if fixed is not None and n < fixed:
                # A fixed-batch export: pad the last batch, drop the padding afterwards.
                x = np.concatenate([x, np.zeros((fixed - n, *x.shape[1:]), np.float32)])
            return np.asarray(session.run([out.name], {inp.name: x})[0], dtype=np.float32)[:n]

        return cls(
            run_batch, torch.device("cpu"), batch_size, path, embedding_size=emb, fixed_batch=fixed,
            image_size=size,
        )

    # -- inference ---------------------------------------------------------------------------

    @property
    def embedding_size(self) -> int:
        """Embedding dimension D (found with one dummy batch the first time it is asked)."""
        if self._embedding_size is None:
            dummy = torch.zeros((1, 3, *self.image_size), dtype=torch.uint8)
            self._embedding_size = int(self._run_batch(dummy).shape[1])
        return self._embedding_size

    def __call__(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """(N,112,112,3) uint8 numpy or (N,3,112,112) uint8 tensor -> float32 (N, D) numpy."""
        batch = to_nchw_uint8(images, self.image_size)
        n = batch.shape[0]
        if n == 0:
            return np.zeros((0, self.embedding_size), np.float32)
        chunks = []
        for start in range(0, n, self.batch_size):
            chunk = batch[start : start + self.batch_size].contiguous()
            chunks.append(self._run_batch(chunk))
        out = np.concatenate(chunks, axis=0).astype(np.float32, copy=False)
        if self._embedding_size is None:
            self._embedding_size = int(out.shape[1])
        return out

    def __repr__(self) -> str:
        return f"Embedder({self.source}, device={self.device}, batch_size={self.batch_size})"


# -- the flip test -------------------------------------------------------------------------------


def mirror(batch: torch.Tensor) -> torch.Tensor:
    """The horizontal mirror of an NCHW batch: the flip test's second view of every face."""
    return torch.flip(batch, dims=[3])


def embed_batches(
    embed: EmbedFn, batches: Iterable[torch.Tensor], flip: bool = True
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Per (B, 3, 112, 112) uint8 batch: (its embeddings, its mirror's or None), float32 (B, D).

    The mirror is embedded as a batch of its own, right after the batch: the same batch shapes
    as embedding the images and then their mirrors, so the same numbers.
    """
    for batch in batches:
        embeddings = np.asarray(embed(batch), dtype=np.float32)
        yield embeddings, np.asarray(embed(mirror(batch)), dtype=np.float32) if flip else None


def embed_faces(
    embed: EmbedFn,
    batches: Iterable[torch.Tensor],
    count: int,
    flip: bool = True,
    desc: str | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Embeddings of ``count`` faces given in uint8 NCHW batches, and of their mirrors (or None).

    float32 (count, D) each, in the order of the batches; ``desc`` shows a progress bar.
    """
    embs = embs_flip = None
    start = 0
    with tqdm(total=count, desc=desc, unit="face", leave=False, disable=desc is None) as bar:
        for emb, emb_flip in embed_batches(embed, batches, flip):
            if embs is None:
                embs = np.empty((count, emb.shape[1]), np.float32)
                embs_flip = np.empty_like(embs) if flip else None
            if start + len(emb) > count:
                raise ValueError(f"embed_faces: the batches hold more than the {count} faces announced")
            embs[start : start + len(emb)] = emb
            if flip:
                embs_flip[start : start + len(emb)] = emb_flip
            start += len(emb)
            bar.update(len(emb))
    if start != count:
        raise ValueError(f"embed_faces: the batches held {start} faces, {count} were announced")
    if embs is None:  # no faces at all
        size = getattr(embed, "embedding_size", 0)
        embs = np.zeros((0, size), np.float32)
        embs_flip = embs.copy() if flip else None
    return embs, embs_flip


def load_backbone(
    weights: str, network: str | None = None, channel_order: str | None = None, **backbone_kwargs: Any
) -> tuple[nn.Module, dict]:
    """Build the backbone for a checkpoint and load it (CPU, eval mode); return (module, metadata).

    ``network=None`` takes the name and kwargs stored in our checkpoints or infers them from the
    key layout of foreign ones; explicit ``backbone_kwargs`` override stored ones. The module takes
    RGB crops whatever the file's network was trained on: ``channel_order`` (the file's order,
    "RGB" or "BGR"; None = the layout's, e.g. BGR for AdaFace's) is converted in the weights
    (utils.checkpoint.accept_rgb). The metadata is utils.checkpoint's plus ``network`` /
    ``network_kwargs`` as built and ``channel_order`` as used.
    """
    weights = os.fspath(weights)
    # Read the file once: it gives both the weights and (ours) the network to build.
    state, meta = extract_backbone_state(load_state(weights), weights)
    if network is None:
        network, saved_kwargs = _network_from_checkpoint(weights, state, meta)
        backbone_kwargs = {**saved_kwargs, **backbone_kwargs}
    backbone = get_backbone(network, **backbone_kwargs)
    apply_state(backbone, state, meta)
    order = check_channel_order(channel_order, "--channel-order") if channel_order else meta["channel_order"]
    accept_rgb(backbone, order, weights)
    if order != "RGB":
        log.info("%s: a network trained on %s images; its stem now takes RGB", weights, order)
    meta.pop("header", None)  # class centers: large and useless for embedding
    meta.update(network=network, network_kwargs=backbone_kwargs, channel_order=order)
    return backbone.eval(), meta


def _network_from_checkpoint(path: str, state: dict, meta: dict) -> tuple[str, dict[str, Any]]:
    """Network name + kwargs from our checkpoints' metadata, else inferred from the key layout."""
    if meta.get("network"):
        return meta["network"], dict(meta.get("network_kwargs") or {})
    guess = infer_network(state)
    if guess is None or guess[0] is None:
        known = "".join(f"\n  - {line}" for line in KNOWN_LAYOUTS)
        raise CheckpointError(
            f"{path}: no network name stored in this checkpoint and its layout is not a known "
            f"one{f' ({guess[2]})' if guess else ''}; its first keys: {list(state)[:8]}; pass "
            f"--network (e.g. iresnet50). Known layouts:{known}"
        )
    kwargs = {**guess[1], **meta.get("layout_kwargs", {})}
    log.info("%s: network inferred from the weights (%s layout): %s", path, meta["format"], guess[2])
    return guess[0], kwargs
