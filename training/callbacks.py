"""Training callbacks: progress logging, verification on the .bin sets, checkpointing."""

from __future__ import annotations

import logging
import os
import time
from typing import Callable

import torch
from torch import nn

from eval import verification
from eval.embedder import Embedder
from utils.distributed import DistEnv, all_gather_objects

log = logging.getLogger(__name__)


def _due(step: int, frequent: int, total_step: int) -> bool:
    """Every ``frequent`` steps, and always at the last step."""
    return step % frequent == 0 or step == total_step


class CallBackLogging:
    """Every ``frequent`` steps: step, epoch, img/s, losses, margin, LR and ETA (rank 0).

    Values arrive as device tensors: the losses are summed on the device and logged as means
    over the window, the states (the ContraFace margin) as their latest value. They are read
    from the device (one host synchronisation) only when a line is written.
    """

    def __init__(self, frequent: int, total_step: int, start_step: int, global_batch: int, writer=None):
        self.frequent = frequent
        self.total_step = total_step
        self.start_step = start_step
        self.global_batch = global_batch
        self.writer = writer
        self.time_start = time.time()
        self.tic = time.time()
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def __call__(
        self, step: int, epoch: int, losses: dict[str, torch.Tensor], states: dict[str, torch.Tensor], lr: float
    ) -> None:
        """``losses`` must hold "Loss" (the total) and may hold its parts."""
        for name, value in losses.items():
            value = value.detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value.clone()
            # per name: a part that starts mid-window (stage 2's L2, LC) is averaged over its own steps
            self.counts[name] = self.counts.get(name, 0) + 1
        if step % self.frequent != 0:
            return
        names = [*self.sums, *states]
        means = (total / self.counts[name] for name, total in self.sums.items())
        tensors = [*means, *(v.detach().float() for v in states.values())]
        values = dict(zip(names, torch.stack(tensors).tolist()))  # the one host synchronisation
        now = time.time()
        speed = self.frequent * self.global_batch / max(now - self.tic, 1e-9)
        done = max(step - self.start_step, 1)
        eta_hours = (now - self.time_start) / done * (self.total_step - step) / 3600
        total = values.pop("Loss")
        items = "".join(f" -{name} {value:.4f}" for name, value in values.items())
        log.info(f"[{step}][E{epoch:2d}][{speed:4.0f}/s] -Loss {total:.4f}{items} -LR {lr:.6f} -ETA: {eta_hours:.2f} H")
        if self.writer is not None:
            for name, value in {"loss": total, "speed": speed, "lr": lr, **values}.items():
                self.writer.add_scalar(f"train/{name}", value, step)
        self.sums, self.counts = {}, {}
        self.tic = now


class CallBackVerification:
    """Accuracy with flip (10-fold) on the .bin targets found in ``data_dir``, spread over ranks.

    Each rank loads and evaluates only its share of the targets (target i on rank i % world);
    rank 0 gathers, logs ``Accuracy-Flip`` and ``Accuracy-Highest`` per target and the mean.
    """

    def __init__(
        self,
        env: DistEnv,
        frequent: int,
        total_step: int,
        val_targets: list[str],
        data_dir: str,
        batch_size: int = 128,
        writer=None,
    ):
        self.env = env
        self.frequent, self.total_step = frequent, total_step
        self.batch_size = batch_size
        self.writer = writer
        present = [t for t in val_targets if os.path.exists(os.path.join(data_dir, f"{t}.bin"))]
        missing = sorted(set(val_targets) - set(present))
        if missing and env.is_main:
            log.warning(f"verification: no {', '.join(m + '.bin' for m in missing)} in {data_dir}; skipped")
        self.targets = present
        self.highest: dict[str, float] = {}
        # without the mirrored copies (half the memory): the embedder mirrors batch by batch
        self.sets = {
            name: verification.load_pairs(os.path.join(data_dir, f"{name}.bin"), (112, 112))
            for i, name in enumerate(present)
            if i % env.world_size == env.rank
        }

    def __call__(self, step: int, backbone: nn.Module) -> dict[str, float] | None:
        """When due, evaluate ``backbone``; returns {target: accuracy-flip} on every rank."""
        if not self.targets or not _due(step, self.frequent, self.total_step):
            return None
        mine = {}
        # the evaluators' embedder (fp32): runs the backbone in eval mode, gives it back as it came
        embedder = Embedder.from_module(backbone, device=self.env.device, batch_size=self.batch_size, amp=False)
        for name, (images, issame) in self.sets.items():
            metrics, _ = verification.verify(embedder, images, issame, nfolds=10, batch_size=self.batch_size)
            mine[name] = (metrics["acc2"], metrics["std2"], metrics["xnorm"])
        results = {k: v for part in all_gather_objects(self.env, mine) for k, v in part.items()}
        if self.env.is_main:
            self._report(step, results)
        return {name: results[name][0] for name in self.targets if name in results}

    def _report(self, step: int, results: dict[str, tuple[float, float, float]]) -> None:
        for name in self.targets:
            acc, std, xnorm = results[name]
            self.highest[name] = max(self.highest.get(name, 0.0), acc)
            log.info(f"[{step}][{name}]XNorm: {xnorm:f}")
            log.info(f"[{step}][{name}]Accuracy-Flip: {acc:1.5f}+-{std:1.5f}")
            log.info(f"[{step}][{name}]Accuracy-Highest: {self.highest[name]:1.5f}")
            if self.writer is not None:
                self.writer.add_scalar(f"verification/{name}", acc, step)
        if results:
            # the paper's number is the mean of each target's best over evaluations
            mean = sum(r[0] for r in results.values()) / len(results)
            mean_highest = sum(self.highest[name] for name in results) / len(results)
            log.info(f"[{step}][mean]Accuracy-Flip: {mean:1.5f}")
            log.info(f"[{step}][mean]Accuracy-Highest: {mean_highest:1.5f}")
            if self.writer is not None:
                self.writer.add_scalar("verification/mean", mean, step)
                self.writer.add_scalar("verification/mean_highest", mean_highest, step)

    def state_dict(self) -> dict[str, float]:
        return dict(self.highest)

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.highest = dict(state)


class CallBackModelCheckpoint:
    """Every ``frequent`` steps (and at the end), call ``save(step)`` on every rank."""

    def __init__(self, frequent: int, total_step: int, save: Callable[[int], None]):
        self.frequent = frequent
        self.total_step = total_step
        self.save = save

    def __call__(self, step: int) -> None:
        if _due(step, self.frequent, self.total_step):
            self.save(step)

