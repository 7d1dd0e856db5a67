"""Batches of face images on the training device: ``DataLoaderX``, ``collate_faces``, ``normalize_batch``.

:class:`DataLoaderX` is a DataLoader whose batches arrive on the device, read ahead by a
background thread that also starts each host-to-device copy on a side stream.
:func:`collate_faces` (its default ``collate_fn``) stacks the datasets' uint8 CHW views of HWC
pixels (``utils/dataset.py``) without a CHW copy. The trainer turns a batch into float32 in
[-1, 1] with :func:`normalize_batch` after the copy: a quarter of the bytes cross PCIe and the
workers do no float work. Its numbers are those ``ToTensor`` + ``Normalize(0.5, 0.5)`` gave on
the CPU, bit for bit, on any device.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import threading
from typing import Any, Callable, Iterator

import cv2
import torch
from torch.utils.data import DataLoader, default_collate

from utils.dataset import FaceBatch

__all__ = ["DataLoaderX", "NORMALIZE_TABLE", "collate_faces", "normalize_batch"]

# insightface's (x / 255 - 0.5) / 0.5 in float32, for the 256 possible pixel values. A table,
# not the arithmetic on the device: CUDA divides by a scalar as a multiplication by its
# reciprocal, which gives 111 of the 256 values 1 ulp away from the CPU's true division.
_PIXELS = torch.arange(256, dtype=torch.float32)
NORMALIZE_TABLE = _PIXELS.div(255.0).sub(0.5).div(0.5)
_tables: dict[torch.device, torch.Tensor] = {}


def normalize_batch(images: torch.Tensor) -> torch.Tensor:
    """uint8 images of any shape -> float32 ``(x / 255 - 0.5) / 0.5``, on the images' device.

    Floating-point input is taken as already normalised and returned as it is.
    """
    if images.is_floating_point():
        return images
    if images.dtype != torch.uint8:
        raise TypeError(f"normalize_batch: expected uint8 images, got {images.dtype}")
    table = _tables.get(images.device)
    if table is None:
        table = _tables[images.device] = NORMALIZE_TABLE.to(images.device)
    return torch.take(table, images.long())


def collate_faces(samples: list) -> Any:
    """``default_collate``, but a batch of the datasets' CHW views of HWC pixels is stacked as HWC.

    The result is a (N, 3, H, W) uint8 tensor laid out channels-last: one contiguous copy per
    image (a CHW copy costs 3x more and was the largest cost after decoding), in the shared
    memory that worker processes hand batches over in. Pinning and ``.to(device)`` keep the
    layout, and :func:`normalize_batch` returns a contiguous NCHW float tensor.
    """
    if isinstance(samples, FaceBatch):
        return samples.images, samples.labels
    first = samples[0]
    if isinstance(first, (tuple, list)) and len(first) == 2 and _is_hwc_view(first[0]):
        if all(_is_hwc_view(image) and image.shape == first[0].shape for image, _ in samples):
            images = default_collate([image.permute(1, 2, 0) for image, _ in samples])
            return images.permute(0, 3, 1, 2), default_collate([label for _, label in samples])
    return default_collate(samples)


def _is_hwc_view(image: Any) -> bool:
    return (isinstance(image, torch.Tensor) and image.dim() == 3 and image.shape[0] == 3
            and image.permute(1, 2, 0).is_contiguous())


_BATCH, _END, _ERROR = 0, 1, 2


def _as_device(device: torch.device | str | int) -> torch.device:
    dev = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"DataLoaderX: device {dev} asked for, but CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def _move(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(_move(o, device) for o in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_move(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _move(v, device) for k, v in obj.items()}
    return obj


def _record_stream(obj: Any, stream) -> None:
    if isinstance(obj, torch.Tensor):
        obj.record_stream(stream)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            _record_stream(o, stream)
    elif isinstance(obj, dict):
        for o in obj.values():
            _record_stream(o, stream)


def _cuda_stage(batch: Any, device: torch.device, stream) -> tuple[Any, Any]:
    """Start the host->device copy of ``batch`` on the side stream; return it and its event."""
    with torch.cuda.device(device), torch.cuda.stream(stream):
        moved = _move(batch, device)
        event = torch.cuda.Event()
        event.record(stream)
    return moved, event


def _put(q: queue.Queue, item: tuple, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            pass
    return False


def _produce(base: Iterator, q: queue.Queue, stop: threading.Event, stage) -> None:
    # a module-level function holding no reference to the _Prefetcher, so that dropping the
    # prefetcher (a `break` out of the loop) lets its __del__ stop this thread
    try:
        for batch in base:
            if not _put(q, (_BATCH, stage(batch) if stage else batch), stop):
                return
        _put(q, (_END, None), stop)
    except BaseException as e:  # noqa: BLE001 - re-raised in the consumer's thread
        _put(q, (_ERROR, e), stop)


class _Prefetcher:
    """Iterator over a DataLoader iterator, read ahead by a background thread."""

    def __init__(self, base: Iterator, device: torch.device, depth: int):
        self._base_len = len(base) if hasattr(base, "__len__") else None
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._cuda = device.type == "cuda"
        self._device = device
        stage = None
        if self._cuda:
            stream = torch.cuda.Stream(device)
            stage = lambda b: _cuda_stage(b, device, stream)  # noqa: E731
        # The first batch is fetched here, in the caller's thread: a sampler draws its seed from
        # the global RNG at its first next(), and that draw must not race the training thread.
        try:
            first = (_BATCH, stage(next(base)) if stage else next(base))
        except StopIteration:
            first = (_END, None)
        except Exception as e:  # noqa: BLE001 - re-raised by __next__, like any later error
            first = (_ERROR, e)
        self._queue.put(first)
        self._done = False
        self._thread = None
        if first[0] == _BATCH:
            self._thread = threading.Thread(
                target=_produce, args=(base, self._queue, self._stop, stage), daemon=True,
                name="DataLoaderX-prefetch",
            )
            self._thread.start()

    def __iter__(self) -> "_Prefetcher":
        return self

    def __len__(self) -> int:
        if self._base_len is None:
            raise TypeError("the underlying loader iterator has no length")
        return self._base_len

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        kind, value = self._queue.get()
        if kind == _END:
            self._done = True
            raise StopIteration
        if kind == _ERROR:
            self._done = True
            raise value
        if self._cuda:
            batch, event = value
            current = torch.cuda.current_stream(self._device)
            current.wait_event(event)
            # the tensors were allocated on the side stream: tell the caching allocator they are
            # used on the current stream, or it may hand their memory out again too early
            _record_stream(batch, current)
            return batch
        return value

    def close(self) -> None:
        """Stop the background thread (it also stops when the iterator is garbage-collected)."""
        self._stop.set()

    def __del__(self):
        self._stop.set()


@contextlib.contextmanager
def _opencv_serial() -> Iterator[None]:
    """OpenCV without its thread pool while DataLoader workers are forked, restored afterwards.

    A pool the parent has used (an earlier evaluation's warpAffine, say) is inherited by a
    forked worker without its threads, and the worker's ``cv2.setNumThreads(1)`` then waits on
    them for ever; with the parent at one thread while forking, the workers inherit no pool.
    """
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


def _worker_init(user_init: Callable[[int], None] | None, worker_id: int) -> None:
    # the workers are the parallelism: OpenCV's own thread pool would only oversubscribe the
    # cores (and a pool inherited through fork can deadlock)
    cv2.setNumThreads(1)
    if user_init is not None:
        user_init(worker_id)


class DataLoaderX(DataLoader):
    """A DataLoader whose batches arrive on ``device``, prefetched by a background thread.

    On CUDA the thread copies each batch host->device on a side stream (``pin_memory`` defaults
    to True) and the consumer's stream waits for it. On CPU it is a plain DataLoader unless
    ``background=True``. Workers run OpenCV single-threaded. Batches come in the sampler's
    order and worker exceptions are raised in the caller; data sets that draw from the global
    RNG in ``__getitem__`` with ``num_workers=0`` lose determinism in the background thread (the
    face datasets do not). The epoch is set on the sampler and the dataset (their ``set_epoch``)
    before ``iter(loader)``, not on the loader.
    """

    def __init__(
        self,
        device: torch.device | str | int,
        *args,
        prefetch: int = 2,
        background: bool | None = None,
        **dataloader_kwargs,
    ):
        device = _as_device(device)
        if device.type == "cuda":
            dataloader_kwargs.setdefault("pin_memory", True)
        if dataloader_kwargs.get("batch_size", 1) is not None or dataloader_kwargs.get("batch_sampler"):
            dataloader_kwargs.setdefault("collate_fn", collate_faces)
        user_init = dataloader_kwargs.pop("worker_init_fn", None)
        dataloader_kwargs["worker_init_fn"] = functools.partial(_worker_init, user_init)
        super().__init__(*args, **dataloader_kwargs)
        if prefetch < 1:
            raise ValueError(f"DataLoaderX: prefetch={prefetch} must be >= 1")
        self.device = device
        self.prefetch = prefetch
        self.background = device.type == "cuda" if background is None else bool(background)
        self._producer: tuple[threading.Thread, threading.Event] | None = None

    def __iter__(self) -> Iterator:
        if self._producer is not None:
            # a loop that stopped early leaves its thread reading; with persistent workers the
            # next iter() resets that same worker iterator, so the thread must be gone first
            thread, stop = self._producer
            stop.set()
            thread.join()
            self._producer = None
        with _opencv_serial():  # the workers start (fork) here
            base = super().__iter__()
        if not self.background:
            return base
        it = _Prefetcher(base, self.device, self.prefetch)
        if it._thread is not None:
            self._producer = (it._thread, it._stop)
        return it
