"""Export a backbone checkpoint to ONNX (dynamic batch axis), checked against PyTorch.

    python -m tools.export_onnx --weights work_dirs/ms1mv2_r100/model.pt --output r100.onnx

The model takes ``input`` (N, 3, 112, 112) float32 RGB normalised as ``(x / 255 - 0.5) / 0.5``
and returns ``embedding`` (N, D), not L2-normalised; ``eval.embedder.Embedder.load("x.onnx")``
runs it. The export is compared with PyTorch on a random batch through onnxruntime; if they differ
by more than ``--rtol`` (relative to the largest output magnitude) nothing is written.
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
from utils.cli import run_cli
from utils.fileio import atomic_path, refuse_overwrite

__all__ = ["export_onnx", "check_onnx", "main"]

log = logging.getLogger("tools.export_onnx")

INPUT_NAME, OUTPUT_NAME = "input", "embedding"


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
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--check-batch", type=int, default=4, help="random batch compared with PyTorch")
    p.add_argument("--rtol", type=float, default=1e-3,
                   help="largest allowed |onnx - torch| / max|torch| (default 1e-3)")
    p.add_argument("--force", action="store_true", help="overwrite --output")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the CLI; return {'output', 'network', 'max_abs_diff', 'rel_diff'}."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    refuse_overwrite([args.output], args.force)
    kwargs: dict[str, Any] = {"width": args.width, "num_features": args.num_features}
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if args.use_se:
        kwargs["use_se"] = True
    backbone, meta = load_backbone(args.weights, args.network, **kwargs)
    metadata = {
        "network": meta["network"],
        "network_kwargs": repr(meta["network_kwargs"]),
        "source": os.path.basename(args.weights),
        "input": "RGB 112x112, (x / 255 - 0.5) / 0.5",
    }
    with atomic_path(args.output) as tmp:
        # Exported and checked under a temporary name: a failed check leaves no .onnx behind.
        export_onnx(backbone, tmp, args.opset, metadata)
        max_abs, rel = check_onnx(backbone, tmp, args.check_batch)
        print(f"onnxruntime vs PyTorch on a random batch of {args.check_batch}: "
              f"max abs diff {max_abs:.3g}, relative {rel:.3g} (limit {args.rtol:g})")
        if not rel <= args.rtol:  # also catches NaN
            raise SystemExit(
                f"{args.output}: ONNX output differs from PyTorch by {rel:.3g} relative "
                f"(> {args.rtol:g}); nothing written"
            )
    log.info("wrote %s (%s, opset %d, dynamic batch)", args.output, meta["network"], args.opset)
    return {
        "output": args.output, "network": meta["network"], "max_abs_diff": max_abs, "rel_diff": rel
    }


if __name__ == "__main__":
    run_cli(main)
