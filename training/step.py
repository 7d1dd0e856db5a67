"""One optimisation step: autocast, loss scaling, clipping, the optimizer; and the NaN/inf guard.

``TrainStep`` is what the trainer and ``bench/bench_train_step.py`` run, so that the benchmark
times exactly the training step::

    step = TrainStep(model, optimizer, amp="bf16", device=device, grad_clip=5.0,
                     clip_parameters=method.backbone.parameters(), channels_last=True)
    out = step(images, labels, lr)          # {"loss", "logs"} of the method's forward
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn
from torch.nn.utils import clip_grad_norm_

from utils.distributed import DistEnv
from utils.errors import ConfigError
from utils.run_files import list_checkpoints

__all__ = ["AMP_DTYPES", "CPU_CHANNELS_LAST_MIN_WIDTH", "NonFiniteGuard", "TrainStep", "autocast_dtype",
           "check_channels_last"]

AMP_DTYPES: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``cfg.amp`` (None: fp32); mixed precision needs a CUDA GPU."""
    if amp not in AMP_DTYPES:
        raise ConfigError(f"amp {amp!r} is not one of {', '.join(AMP_DTYPES)}")
    if amp != "none" and device.type != "cuda":
        raise ConfigError(f"amp={amp} needs a CUDA GPU; use --set amp=none on {device.type}")
    return AMP_DTYPES[amp]


# oneDNN's channels-last backward of the strided 1x1 shortcut convolutions crashes the process
# (segfault, "double free or corruption") on the CPU for layers this narrow (torch 2.14.1; an
# iresnet at width 8: 3 -> 8 and 8 -> 16 channels at 56 x 56); widths 16, 32 and 64 run.
CPU_CHANNELS_LAST_MIN_WIDTH = 16


def check_channels_last(channels_last: bool, device: torch.device, network_width: int | None) -> None:
    """Refuse, with a ConfigError, the one layout known to crash: channels_last on the CPU below width 16."""
    narrow = network_width is not None and network_width < CPU_CHANNELS_LAST_MIN_WIDTH
    if channels_last and device.type == "cpu" and narrow:
        raise ConfigError(
            f"channels_last=True with network_width={network_width} crashes on the CPU (oneDNN's channels-last "
            f"backward of strided 1x1 convolutions below {CPU_CHANNELS_LAST_MIN_WIDTH} channels); set "
            f"channels_last=False, or network_width >= {CPU_CHANNELS_LAST_MIN_WIDTH}"
        )


class TrainStep:
    """forward under autocast -> (scaled) backward -> optional unscale + clip -> optimizer step.

    ``model`` is the method, possibly wrapped by DDP and ``torch.compile``; ``lr`` is written into
    every parameter group (times the group's ``lr_scale``) before the step. fp16 uses a
    GradScaler; bf16 and fp32 do not need one. ``channels_last`` converts 4-D image batches.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        amp: str = "none",
        device: torch.device,
        grad_clip: float = 0.0,
        clip_parameters: Iterable[nn.Parameter] = (),
        channels_last: bool = False,
    ):
        self.model, self.optimizer = model, optimizer
        self.device = device
        self.amp_dtype = autocast_dtype(amp, device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
        self.grad_clip = float(grad_clip or 0.0)
        self.clip_parameters = list(clip_parameters)
        self.channels_last = channels_last

    def set_lr(self, lr: float) -> None:
        """Write ``lr`` into every parameter group (scaled by the group's ``lr_scale``)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, lr: float) -> dict[str, Any]:
        """One step on a normalised batch already on the device; the method's output."""
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        self.set_lr(lr)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            out = self.model(images, labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out["loss"]).backward()
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)
            clip_grad_norm_(self.clip_parameters, max_norm=self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return out


class NonFiniteGuard:
    """Remembers on the device the first step whose loss was NaN or inf; ``check`` reads it.

    ``update`` runs every step without waiting for the host; ``check`` (every ``frequent``
    steps, and before every evaluation and checkpoint) agrees across ranks and stops all of
    them with the same message, so a non-finite step never reaches a saved file.
    The message names the newest checkpoint in ``output``, where the user can continue from.
    """

    _NONE = torch.iinfo(torch.int64).max

    def __init__(self, env: DistEnv, output: str):
        self.env, self.output = env, output
        self.first_bad = torch.full((), self._NONE, dtype=torch.int64, device=env.device)

    def update(self, loss: torch.Tensor, step: int) -> None:
        """Record ``step`` (0-based) if its loss is not finite and none was before."""
        bad = ~torch.isfinite(loss.detach()) & (self.first_bad == self._NONE)
        self.first_bad.masked_fill_(bad, step)

    def check(self, step: int) -> None:
        """Raise FloatingPointError on every rank when any rank saw a non-finite loss."""
        first_bad = self.first_bad.clone()
        if self.env.distributed:
            torch.distributed.all_reduce(first_bad, op=torch.distributed.ReduceOp.MIN)
        bad = int(first_bad)
        if bad == self._NONE:
            return
        found = list_checkpoints(self.output)
        last = found[-1][1] if found else "none yet"
        raise FloatingPointError(
            f"non-finite loss at step {bad + 1} (noticed at step {step}); stopped without saving. "
            f"Last good checkpoint: {last} (continue with --resume auto, e.g. with a lower lr or "
            "--set amp=none)"
        )
