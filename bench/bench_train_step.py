"""Benchmark: training images/s and peak memory of one step, ours vs the original ContraFace's step.

    python bench/bench_train_step.py --network iresnet18 --width 32 --batch-size 32      # CPU
    python bench/bench_train_step.py --network iresnet100 --batch-size 128 \\
        --precisions fp32,bf16,fp16 --layouts nchw,channels_last --compile no,yes       # a GPU

Ours: the project's method objects (``methods.build_method`` from the default config:
``SingleBranch`` or ``ContraFaceTraining`` in stage 2) and train.py's step
(``training.step.TrainStep``): uint8 batches copied and normalised on the device
(``normalize_batch``), autocast at the chosen precision, optional channels_last and
``torch.compile``, SGD (fused on CUDA, foreach on CPU), gradient clipping at 5,
the losses summed on the device and never read back during the timed steps.

Baseline, in the same run, written the way the original ContraFace's train.py writes a step:
fp32, contiguous NCHW, images normalised on the host (a float32 batch, 4x the bytes, copied each
step), the contrastive mask built by a Python loop over the batch's repeated classes, both
contrastive directions computed (the reference does, whatever weightC2), the margin read with
``.item()`` inside the loss, ``.item()`` of every loss for the logger and the head's gradient
mean for TensorBoard every step, SGD and clipping with torch's defaults.

On the CPU each row runs in a fresh process (peak RSS is per row); on CUDA peak memory is
``torch.cuda.max_memory_allocated``. Rows the device cannot run are printed with the reason.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import resource
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.utils import clip_grad_norm_

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.machine import describe_machine  # noqa: E402
from utils.cli import run_cli  # noqa: E402


@dataclass(frozen=True)
class Row:
    """One measured configuration."""

    method: str  # "single" or "contraface" (stage 2)
    style: str  # "baseline" or "ours"
    precision: str = "fp32"
    layout: str = "nchw"
    compile: bool = False

    def label(self) -> str:
        if self.style == "baseline":
            return f"{self.method}: original-style step (baseline)"
        return f"{self.method}: ours {self.precision} {self.layout}{' compiled' if self.compile else ''}"


def skip_reason(row: Row, device: torch.device, width: int | None = None) -> str | None:
    """Why ``row`` cannot run on ``device`` with an iresnet of ``width`` (None: it can)."""
    from training.step import CPU_CHANNELS_LAST_MIN_WIDTH

    if row.precision != "fp32" and device.type != "cuda":
        return f"{row.precision} needs a CUDA GPU (train.py offers AMP only there)"
    if row.precision == "bf16" and not torch.cuda.is_bf16_supported():
        return "this GPU has no bf16"
    if row.layout == "channels_last" and device.type == "cpu" and width is not None \
            and width < CPU_CHANNELS_LAST_MIN_WIDTH:
        return f"channels_last below width {CPU_CHANNELS_LAST_MIN_WIDTH} crashes on the CPU (oneDNN)"
    if row.compile and not hasattr(torch, "compile"):
        return "torch.compile is not available in this torch"
    return None


# ------------------------------------------------------------------------------------------
# the reference's contrastive loss, as its utils/losses.py computes it (re-written here)
# ------------------------------------------------------------------------------------------
class LoopContraFace(torch.nn.Module):
    """The original ContraFace loss: same-class mask by a loop over repeated labels, margin via .item()."""

    def __init__(self, s: float = 64.0):
        super().__init__()
        self.s = s
        self.m = 0.0

    def forward(self, feature1: torch.Tensor, feature2: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        feature1 = F.normalize(feature1, dim=1)
        feature2 = F.normalize(feature2, dim=1)
        diag = torch.arange(feature1.shape[0], device=feature1.device)
        cos = torch.mm(feature1, feature2.t()).clamp(-1, 1)
        items, count = label.unique(return_counts=True)  # a host sync: the loop needs the count
        for item in items[count > 1]:
            idx = torch.where(label == item)[0]
            n = idx.shape[0]
            cols = idx.repeat(n, 1)
            # row k keeps its own column: its entry k is replaced by the next same-class index
            cols[torch.arange(n, device=idx.device), torch.arange(n, device=idx.device)] = torch.cat(
                [idx, idx[:1]])[1:]
            cos[idx.view(-1, 1), cols] = 0
        detached = cos.clone().detach()
        positive = detached[diag, diag].clone()
        detached[diag, diag] = 0
        hardest = detached.sort(1, True)[0][:, 0]
        m = (positive - hardest).mean().item()
        self.m = 0.99 * m + 0.01 * self.m
        m_hot = torch.zeros_like(cos).scatter_(1, diag.view(-1, 1), self.m)
        return F.cross_entropy((cos - m_hot) * self.s, diag)


# ------------------------------------------------------------------------------------------
# building and stepping
# ------------------------------------------------------------------------------------------
def build(args, row: Row, device: torch.device):
    """(method module, its backbone, head) for ``row``, the same initial weights for every row."""
    from backbones import get_backbone
    from methods import build_method
    from train import load_training_config

    cfg = load_training_config(None, "synthetic", [f"method={row.method}", f"network={args.network}",
                                                   f"num_classes={args.num_classes}", f"batch_size={args.batch_size}"])
    width = args.width if args.network.startswith("iresnet") else None
    torch.manual_seed(0)
    method = build_method(cfg, get_backbone(args.network, dropout=cfg.dropout, num_features=cfg.embedding_size,
                                            width=width))
    if row.method == "contraface":
        method.set_epoch(method.switch_epoch)  # stage 2: the double branch
    method.to(device)
    return method, cfg


def batch(args, num_classes: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A uint8 NCHW batch (pinned on CUDA) and labels with repeated classes (the mask has work)."""
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (args.batch_size, 3, 112, 112), dtype=torch.uint8, generator=gen)
    # classes of 1-4 images each, as a shuffled face data set gives them
    labels = torch.randint(0, min(num_classes, max(1, args.batch_size // 2)), (args.batch_size,), generator=gen)
    if device.type == "cuda":
        images, labels = images.pin_memory(), labels.pin_memory()
    return images, labels


def ours_step_fn(args, row: Row, device: torch.device):
    """A closure running train.py's step (``training.step.TrainStep``) once; losses summed on the device."""
    from training.step import TrainStep
    from utils.loader import normalize_batch

    method, cfg = build(args, row, device)
    if row.layout == "channels_last":
        method.to(memory_format=torch.channels_last)
    model = torch.compile(method) if row.compile else method
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    optimizer = torch.optim.SGD(method.param_groups(), lr=0.01, momentum=0.9, weight_decay=5e-4, **fast)
    amp = {"fp32": "none", "bf16": "bf16", "fp16": "fp16"}[row.precision]
    train_step = TrainStep(model, optimizer, amp=amp, device=device, grad_clip=5.0,
                           clip_parameters=method.backbone.parameters(), channels_last=row.layout == "channels_last")
    images_u8, labels_host = batch(args, cfg.num_classes, device)
    total = torch.zeros((), device=device)

    def step() -> None:
        images = normalize_batch(images_u8.to(device, non_blocking=True))
        labels = labels_host.to(device, non_blocking=True)
        out = train_step(images, labels, lr=0.01)
        total.add_(out["loss"].detach())

    return step


def baseline_step_fn(args, row: Row, device: torch.device):
    """A closure running the original ContraFace's step once (see the module docstring)."""
    method, cfg = build(args, row, device)
    backbone, head = method.backbone, method.head
    contra = LoopContraFace(s=cfg.contra_s)
    params = [p for p in method.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
    images_u8, labels_host = batch(args, cfg.num_classes, device)
    # the original's workers hand out float32 images normalised as ToTensor + Normalize(0.5, 0.5)
    images_host = images_u8.float().div_(255).sub_(0.5).div_(0.5)
    if device.type == "cuda":
        images_host = images_host.pin_memory()
    w1, w2, wc, wc2 = cfg.weight1, cfg.weight2, cfg.weightC, cfg.weightC2
    logged: list[float] = []

    def step() -> None:
        img = images_host.to(device, non_blocking=True)
        label = labels_host.to(device, non_blocking=True)
        if row.method == "contraface":
            x1, x2 = backbone.double_forward(img)
            loss_1 = F.cross_entropy(head(x1, label), label)
            loss_2 = F.cross_entropy(head(x2, label), label)
            loss_c = contra(x1, x2, label)
            loss_c2 = contra(x2, x1, label)
            loss = w1 * loss_1 + w2 * loss_2 + wc * loss_c + wc2 * loss_c2
            parts = (loss_1, loss_2, loss_c)
        else:
            loss = F.cross_entropy(head(backbone(img), label), label)
            parts = (loss,)
        optimizer.zero_grad()
        loss.backward()
        logged.append(float(head.kernel.grad.detach().mean()))  # writer.add_scalar("grad_B", ...)
        clip_grad_norm_(backbone.parameters(), max_norm=5, norm_type=2)
        optimizer.step()
        logged.append(loss.item())  # AverageMeter.update(loss_v.item())
        logged.extend(p.item() for p in parts)  # CallBackLogging formats every loss

    return step


def measure(args, row: Row, device_name: str) -> dict:
    """images/s and peak memory of ``row`` (run where it is called: a fresh process on the CPU)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(device_name)
    step = (baseline_step_fn if row.style == "baseline" else ours_step_fn)(args, row, device)
    for _ in range(args.warmup):  # compilation, cuDNN autotuning, allocator warm-up
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    images = args.steps * args.batch_size
    return {"images_s": images / seconds, "images_cpu_s": images / cpu, "peak_mib": peak}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", default="iresnet18")
    parser.add_argument("--width", type=int, default=32, help="iresnet width (64 is the real network)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--methods", default="single,contraface")
    parser.add_argument("--precisions", default="fp32,bf16,fp16")
    parser.add_argument("--layouts", default="nchw,channels_last")
    parser.add_argument("--compile", default=None, help="no, yes or no,yes (default: no on CPU, no,yes on CUDA)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default on the CPU: 1, so that CPU time measures the work "
                        "on a shared machine; 0: torch's default)")
    args = parser.parse_args(argv)

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads is None:
        args.threads = 1 if device == "cpu" else 0
    compiles = args.compile or ("no,yes" if device.startswith("cuda") else "no")
    rows = []
    for method in args.methods.split(","):
        rows.append(Row(method, "baseline"))
        for precision in args.precisions.split(","):
            for layout in args.layouts.split(","):
                for comp in compiles.split(","):
                    rows.append(Row(method, "ours", precision, layout, comp.strip() == "yes"))

    print(f"machine: {describe_machine()}")
    print(f"{args.network} width {args.width}, batch {args.batch_size}, {args.num_classes} classes, {device}, "
          f"{args.threads or 'default'} torch threads; "
          f"{args.warmup} warm-up + {args.steps} timed steps per row"
          f"{'; each CPU row in a fresh process' if device == 'cpu' else ''}")
    header = f"{'row':<48}{'images/s':>10}{'ratio':>7}{'img/CPU-s':>11}{'ratio':>7}{'peak MiB':>10}"
    print(header)
    print("-" * len(header))
    spawn = multiprocessing.get_context("spawn")
    base = None
    for row in rows:
        reason = skip_reason(row, torch.device(device), args.width if args.network.startswith("iresnet") else None)
        if reason:
            print(f"{row.label():<48}  skipped: {reason}")
            continue
        if device == "cpu":  # a fresh process per row: its peak RSS is this row's
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
                result = pool.submit(measure, args, row, device).result()
        else:
            result = measure(args, row, device)
            torch.cuda.empty_cache()
        if row.style == "baseline":
            base = result
        wall, cpu = result["images_s"], result["images_cpu_s"]
        print(f"{row.label():<48}{wall:>10.1f}{wall / base['images_s']:>7.2f}{cpu:>11.1f}"
              f"{cpu / base['images_cpu_s']:>7.2f}{result['peak_mib']:>10.0f}", flush=True)
    print(f"ratio: over the baseline row of the same method; img/CPU-s: images per CPU-second of the "
          f"process (with one thread, the measure a shared CPU keeps); load average after the run "
          f"{os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    run_cli(main)
