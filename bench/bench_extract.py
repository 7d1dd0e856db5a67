"""Feature-extraction throughput (images/s) through the Embedder: torch vs onnxruntime, fp32 vs AMP.

    python bench/bench_extract.py --network iresnet50 --batch-size 32 --seconds 3

Every row runs the full Embedder path (uint8 NHWC numpy -> normalise -> network -> float32 numpy),
so it measures what the evaluation scripts see. Baseline: torch fp32 on CPU at batch size 1.
Rows: CPU torch fp32 batch 1 / batch B, onnxruntime CPU batch B; with CUDA also GPU fp32 and
AMP (bf16 where supported, else fp16) at batch B, and onnxruntime CUDA when that provider exists.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Callable, Sequence

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

from backbones import get_backbone  # noqa: E402
from bench.machine import describe_machine  # noqa: E402
from eval.embedder import Embedder, default_amp_dtype  # noqa: E402
from utils.cli import run_cli  # noqa: E402
from utils.errors import UsageError  # noqa: E402


def throughput(
    fn: Callable[[np.ndarray], np.ndarray], images: np.ndarray, seconds: float, warmup: int
) -> float:
    """Images per second of ``fn`` on ``images``, repeated for >= ``seconds`` after warm-up."""
    for _ in range(warmup):
        fn(images)
    done, start = 0, time.perf_counter()
    while True:
        fn(images)  # returns a numpy array: any GPU work has finished
        done += len(images)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def main(argv: Sequence[str] | None = None) -> list[tuple[str, int, float]]:
    """Run the benchmark; print and return (row, batch, images/s)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--network", default="iresnet50")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--gpu-batch-size", type=int, default=None,
                   help="batch size for GPU rows (default: --batch-size)")
    p.add_argument("--seconds", type=float, default=3.0, help="minimum timed duration per row")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch and onnxruntime (default: their own defaults)")
    p.add_argument("--no-onnx", action="store_true")
    p.add_argument("--no-cpu", action="store_true", help="skip the CPU rows (GPU only)")
    args = p.parse_args(argv)
    if args.no_cpu and not torch.cuda.is_available():
        raise UsageError("no row to measure: --no-cpu leaves the GPU rows, and there is no CUDA GPU")

    if args.threads:
        torch.set_num_threads(args.threads)
    is_iresnet = args.network.startswith(("iresnet", "r"))
    kwargs = {"width": args.width} if is_iresnet and args.width != 64 else {}
    torch.manual_seed(0)
    backbone = get_backbone(args.network, **kwargs).eval()
    rng = np.random.default_rng(0)
    gpu_batch = args.gpu_batch_size or args.batch_size
    n_images = max(args.batch_size, gpu_batch)
    images = rng.integers(0, 256, size=(n_images, 112, 112, 3), dtype=np.uint8)
    rows: list[tuple[str, int, float]] = []

    def run(name: str, embedder: Embedder, batch: int) -> None:
        rate = throughput(embedder, images[:batch], args.seconds, args.warmup)
        rows.append((name, batch, rate))
        print(f"  {name:<28} batch {batch:>4}: {rate:9.1f} img/s", file=sys.stderr, flush=True)

    if not args.no_cpu:
        cpu = Embedder.from_module(backbone, device="cpu", batch_size=args.batch_size, amp=False)
        run("torch cpu fp32", cpu, 1)
        run("torch cpu fp32", cpu, args.batch_size)
    onnx_path = None
    if not args.no_onnx:
        from tools.export_onnx import export_onnx

        tmpdir = tempfile.mkdtemp(prefix="bench_extract_")
        onnx_path = os.path.join(tmpdir, f"{args.network}.onnx")
        export_onnx(backbone.cpu(), onnx_path)
        if not args.no_cpu:
            ort_cpu = Embedder.from_onnx(onnx_path, args.batch_size, "cpu", args.threads)
            run("onnxruntime cpu", ort_cpu, args.batch_size)
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        fp32 = Embedder.from_module(backbone, device=gpu, batch_size=gpu_batch, amp=False)
        run("torch cuda fp32", fp32, gpu_batch)
        dtype = str(default_amp_dtype(gpu)).replace("torch.", "")
        amp = Embedder.from_module(backbone, device=gpu, batch_size=gpu_batch, amp=True)
        run(f"torch cuda amp ({dtype})", amp, gpu_batch)
        if onnx_path is not None:
            import onnxruntime as ort

            if "CUDAExecutionProvider" in ort.get_available_providers():
                ort_gpu = Embedder.from_onnx(onnx_path, gpu_batch, device="cuda")
                run("onnxruntime cuda", ort_gpu, gpu_batch)
    if onnx_path is not None:
        os.remove(onnx_path)
        os.rmdir(os.path.dirname(onnx_path))

    print(f"machine: {describe_machine()}")
    width = f" width {args.width}" if kwargs else ""
    print(f"network: {args.network}{width}, 112x112 uint8 input, {args.seconds:g} s per row")
    baseline = rows[0]
    print(f"baseline: {baseline[0]} batch {baseline[1]} ({baseline[2]:.1f} img/s)")
    print(f"{'row':<28} {'batch':>5} {'img/s':>10} {'ratio':>7}")
    for name, batch, rate in rows:
        print(f"{name:<28} {batch:>5} {rate:>10.1f} {rate / baseline[2]:>6.2f}x")
    return rows


if __name__ == "__main__":
    run_cli(main)
