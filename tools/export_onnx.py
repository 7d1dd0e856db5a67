"""Export a backbone checkpoint to ONNX (dynamic batch axis), checked against PyTorch.

    python -m tools.export_onnx --weights work_dirs/ms1mv2_r100/model.pt --output r100.onnx

The model takes ``input`` (N, 3, 112, 112) float32 RGB normalised as ``(x / 255 - 0.5) / 0.5``
and returns ``embedding`` (N, D), not L2-normalised; ``eval.embedder.Embedder.load("x.onnx")``
runs it. The export is compared with PyTorch on a random batch through onnxruntime; if they differ
by more than ``--rtol`` (relative to the largest output magnitude) nothing is written.

``--mfr`` writes what the ICCV21-MFR / MFR-Ongoing server (onnxruntime 1.6-1.8) accepts: opset 11
(insightface's own torch2onnx.py exports at 11, so the baseline submissions did; onnxruntime 1.6
implements up to 13), IR version <= 7, fp32 weights; it runs ``tools.check_onnx``'s format rules
before the file is written. ``python -m tools.check_onnx`` then checks a track's feature size and
latency.
"""

from __future__ import annotations

import argparse
import logging
import os
import warnings
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from eval.embedder import IMAGE_SIZE, load_backbone
from tools import check_onnx as mfr_rules
from utils.checkpoint import add_channel_order_argument
from utils.cli import run_cli
from utils.errors import UsageError
from utils.fileio import atomic_path, refuse_overwrite

__all__ = ["export_onnx", "check_onnx", "make_mfr_ready", "main"]

log = logging.getLogger("tools.export_onnx")

INPUT_NAME, OUTPUT_NAME = "input", "embedding"
DEFAULT_OPSET = 17
# insightface's recognition/arcface_torch/torch2onnx.py default: what the MFR baselines used.
MFR_OPSET = 11


class _SingleInput(nn.Module):
    """forward(x) only: a backbone's extra arguments (e.g. ``double``) stay out of the trace."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)


def export_onnx(
    backbone: nn.Module, path: str, opset: int = 17, metadata: dict[str, str] | None = None
) -> None:
    """Write ``backbone`` (eval mode, CPU) as ONNX with a dynamic batch axis (not atomic)."""
    import onnx

    backbone = backbone.cpu().eval()
    dummy = torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with warnings.catch_warnings():
        # dynamo=False: the torch.export-based exporter needs onnxscript, which we do not depend on;
        # the TorchScript exporter warns that it is deprecated but handles these CNNs exactly.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            _SingleInput(backbone),
            (dummy,),
            path,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,
        )
    if metadata:
        model = onnx.load(path)
        for key, value in metadata.items():
            model.metadata_props.add(key=key, value=str(value))
        onnx.save(model, path)
    onnx.checker.check_model(path)


def make_mfr_ready(path: str) -> list[mfr_rules.Check]:
    """Lower ``path``'s IR version to what onnxruntime 1.6 reads; raise if an MFR format rule fails."""
    import onnx

    model = onnx.load(path)
    lowered = model.ir_version > mfr_rules.MAX_IR_VERSION
    if lowered:
        # torch stamps the IR version of its onnx library's era (opset 11 -> IR 6 today); a newer
        # stamp alone makes onnxruntime 1.6 refuse a model whose ops it implements.
        model.ir_version = mfr_rules.MAX_IR_VERSION
    checks = mfr_rules.format_checks(model, path)
    failed = [f"{c.name} {c.value} (limit {c.limit})" for c in checks if c.ok is False]
    if failed:
        raise RuntimeError(f"{path}: the export breaks MFR rules: {'; '.join(failed)}")
    if lowered:
        onnx.save(model, path)
    onnx.checker.check_model(path)
    return checks


def check_onnx(
    backbone: nn.Module, path: str, batch: int = 4, seed: int = 0
) -> tuple[float, float]:
    """Run ``path`` (onnxruntime) and ``backbone`` on a random batch: (max abs diff, relative)."""
    import onnxruntime as ort

    generator = torch.Generator().manual_seed(seed)
    # Uniform in [-1, 1]: the range of normalised pixels.
    x = torch.rand(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator) * 2 - 1
    with torch.inference_mode():
        expected = backbone.cpu().eval()(x).numpy()
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    if got.shape != expected.shape:
        raise RuntimeError(
            f"{path}: onnxruntime output shape {got.shape} != PyTorch {expected.shape}"
        )
    max_abs = float(np.max(np.abs(got - expected)))
    return max_abs, max_abs / max(float(np.max(np.abs(expected))), 1e-12)


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface."""
    p = argparse.ArgumentParser(
        prog="python -m tools.export_onnx", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--weights", required=True, help="checkpoint (.pt/.pth, any layout load_weights reads)"
    )
    p.add_argument("--output", required=True, help="the .onnx file to write")
    p.add_argument("--network", default=None,
                   help="backbone name (e.g. iresnet50); default: from our checkpoint or "
                        "inferred from the weights")
    p.add_argument("--width", type=int, default=None, help="iresnet width (default 64)")
    p.add_argument("--num-features", type=int, default=None, help="embedding size (default 512)")
    p.add_argument("--use-se", action="store_true", help="iresnet with squeeze-and-excitation")
    add_channel_order_argument(p)
    p.add_argument("--opset", type=int, default=None,
                   help=f"ONNX opset (default {DEFAULT_OPSET}; {MFR_OPSET} with --mfr, at most "
                        f"{mfr_rules.MAX_OPSET})")
    p.add_argument("--mfr", action="store_true",
                   help="for the MFR challenge server (onnxruntime 1.6-1.8): opset <= 13, IR <= 7, "
                        "fp32 weights; checked before writing")
    p.add_argument("--check-batch", type=int, default=4, help="random batch compared with PyTorch")
    p.add_argument("--rtol", type=float, default=1e-3,
                   help="largest allowed |onnx - torch| / max|torch| (default 1e-3)")
    p.add_argument("--force", action="store_true", help="overwrite --output")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the CLI; return {'output', 'network', 'opset', 'max_abs_diff', 'rel_diff'}."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    opset = _opset(args)
    refuse_overwrite([args.output], args.force)
    kwargs: dict[str, Any] = {"width": args.width, "num_features": args.num_features}
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if args.use_se:
        kwargs["use_se"] = True
    backbone, meta = load_backbone(args.weights, args.network, args.channel_order, **kwargs)  # RGB input
    if args.mfr:
        backbone = backbone.float()  # fp16 weights are against the MFR rules
    metadata = {
        "network": meta["network"],
        "network_kwargs": repr(meta["network_kwargs"]),
        "source": os.path.basename(args.weights),
        "input": "RGB 112x112, (x / 255 - 0.5) / 0.5",
    }
    with atomic_path(args.output) as tmp:
        # Exported and checked under a temporary name: a failed check leaves no .onnx behind.
        export_onnx(backbone, tmp, opset, metadata)
        if args.mfr:
            make_mfr_ready(tmp)
        max_abs, rel = check_onnx(backbone, tmp, args.check_batch)
        print(f"onnxruntime vs PyTorch on a random batch of {args.check_batch}: "
              f"max abs diff {max_abs:.3g}, relative {rel:.3g} (limit {args.rtol:g})")
        if not rel <= args.rtol:  # also catches NaN
            raise SystemExit(
                f"{args.output}: ONNX output differs from PyTorch by {rel:.3g} relative "
                f"(> {args.rtol:g}); nothing written"
            )
    log.info("wrote %s (%s, opset %d, dynamic batch)", args.output, meta["network"], opset)
    if args.mfr:
        print(f"MFR format rules pass; check a track's limits with: python -m tools.check_onnx "
              f"{args.output} --weights {args.weights} --track ms1m")
    return {
        "output": args.output, "network": meta["network"], "opset": opset, "max_abs_diff": max_abs,
        "rel_diff": rel,
    }


def _opset(args: argparse.Namespace) -> int:
    """The opset to export: --opset, else the default of the mode; --mfr caps it."""
    if args.opset is None:
        return MFR_OPSET if args.mfr else DEFAULT_OPSET
    if args.mfr and args.opset > mfr_rules.MAX_OPSET:
        raise UsageError(
            f"--opset {args.opset} with --mfr: the MFR server's onnxruntime 1.6 implements opset "
            f"<= {mfr_rules.MAX_OPSET}"
        )
    return args.opset


if __name__ == "__main__":
    run_cli(main)
