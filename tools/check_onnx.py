"""Check an ONNX embedding model against the ICCV21-MFR submission rules; print a pass/fail table.

    python -m tools.check_onnx r100.onnx [--weights model.pt] [--track ms1m]

The checks are those of insightface's ``challenges/iccv21-mfr/onnx_helper.py`` (the script the
challenge asks submitters to run) and of the rules in that folder's README and in
``challenges/mfr/README.md`` (MFR-Ongoing), written anew:

* the server's runtime: onnxruntime-gpu 1.6 (ICCV21-MFR) or 1.8 (MFR-Ongoing). onnxruntime 1.6
  and 1.7 implement ONNX opset <= 13 and IR version <= 7, 1.8 opset <= 14 (onnxruntime's
  docs/Versioning.md version matrix): opset <= 13 and IR <= 7 load on both;
* exactly one input, 4-d, 3 x 112 x 112 RGB; a fixed batch size is accepted (onnx_helper makes
  it dynamic before it runs a batch of 32), and exactly one output, (N, D);
* at least 8 nodes ("too small onnx graph"); file size <= 1 GB; no initialiser with elements of
  fewer than 4 bytes (fp16 weights are prohibited: they halve the size the server measures);
* D and the latency of one image per track (:data:`TRACKS`); no NaN/inf on a batch of 32 faces.

The latency limits are for the server's GPU (V100 / RTX 3090): they are enforced only when the
model runs on CUDA here; on a CPU the time is printed as information. The multiply-accumulate
count of the Conv/Gemm layers is printed too, as a hardware-independent size (no rule limits it).
With ``--weights`` the embeddings are also compared with PyTorch's.

A file that is not an ONNX model, or a model without one image input and one output, is an
:class:`OnnxModelError` (one line naming the file, exit status 2); a model that loads but breaks a
rule gives a table with FAIL rows and exit status 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from utils.cli import run_cli
from utils.errors import UsageError, UserError
from utils.registry import Registry

if TYPE_CHECKING:  # onnx is imported lazily: --help and errors need none of it
    from onnx import ModelProto, ValueInfoProto

__all__ = [
    "MAX_IR_VERSION",
    "MAX_OPSET",
    "TRACKS",
    "Check",
    "OnnxModelError",
    "Track",
    "check_model",
    "conv_gemm_macs",
    "face_batch",
    "feeds_raw_pixels",
    "format_table",
    "format_checks",
    "graph_io",
    "load_model",
    "main",
]

log = logging.getLogger("tools.check_onnx")

# onnxruntime 1.6/1.7 (the ICCV21-MFR server's 1.6): opset 13, IR 7 (onnxruntime docs/Versioning.md).
MAX_OPSET = 13
MAX_IR_VERSION = 7
MIN_NODES = 8  # onnx_helper.py refuses smaller graphs ("too small onnx graph")
INPUT_CHW = (3, 112, 112)  # iccv21-mfr README rule 8, mfr README rule 4
MIN_WEIGHT_BYTES = 4  # onnx_helper.py refuses initialisers whose dtype itemsize is < 4
SERVER_BATCH = 32  # onnx_helper.py's check_batch runs 32 images at once
MEAN = STD = 127.5  # what onnx_helper feeds a model that does not normalise itself


class OnnxModelError(UserError, ValueError):
    """A file that is not an ONNX model, or not one with one image input and one output."""


@dataclass(frozen=True)
class Track:
    """One MFR track's limits: embedding size, latency of one image on the server's GPU, size."""

    max_features: int
    max_ms: float
    gpu: str
    max_mb: float = 1024.0


# onnx_helper.py ArcFaceORT.check (its default track is 'cfat'); the sub-tracks A (ms1m) and
# B (glint) are also stated in challenges/iccv21-mfr/README.md, rule 1.
TRACKS: Registry[Track] = Registry("MFR track")
TRACKS.add("ms1m", Track(512, 10.0, "V100"))
TRACKS.add("glint", Track(1024, 20.0, "V100"))
TRACKS.add("cfat", Track(512, 15.0, "V100"))
TRACKS.add("unconstrained", Track(1024, 30.0, "RTX 3090"))


@dataclass
class Check:
    """One row of the table: ``ok`` None for a measurement that is printed but not enforced."""

    name: str
    ok: bool | None
    value: str
    limit: str = ""

    @property
    def status(self) -> str:
        """PASS, FAIL or INFO."""
        return "INFO" if self.ok is None else ("PASS" if self.ok else "FAIL")


# -- reading the model --------------------------------------------------------------------------


def load_model(path: str) -> ModelProto:
    """Read ``path`` as an ONNX model; FileNotFoundError or OnnxModelError naming the file."""
    import onnx

    if not os.path.isfile(path):
        raise FileNotFoundError(f"ONNX model {path} not found")
    try:
        model = onnx.load(path)
    except Exception as exc:  # protobuf's DecodeError and friends: not an ONNX file
        raise OnnxModelError(f"{path}: not an ONNX model ({type(exc).__name__}: {exc})") from exc
    if not model.graph.node and not model.graph.output:
        # protobuf parses many non-ONNX files (e.g. text) as an empty message
        raise OnnxModelError(f"{path}: not an ONNX model (no graph nodes and no outputs)")
    return model


def dims(value_info: ValueInfoProto) -> list[int | str]:
    """The declared shape of a graph input/output: ints, dim_param names, or '?' if unnamed."""
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in shape.dim]


def graph_io(model: ModelProto, path: str) -> tuple[ValueInfoProto, ValueInfoProto]:
    """(the one image input, the one output) of ``model``; OnnxModelError otherwise."""
    weights = {init.name for init in model.graph.initializer}
    # older exporters list the initialisers among the inputs too; onnxruntime does not count them
    inputs = [i for i in model.graph.input if i.name not in weights]
    outputs = list(model.graph.output)
    if len(inputs) != 1:
        raise OnnxModelError(
            f"{path}: expected exactly one input (a batch of images), found {len(inputs)}: "
            f"{', '.join(i.name for i in inputs) or 'none'}"
        )
    if len(outputs) != 1:
        raise OnnxModelError(
            f"{path}: expected exactly one output (the embeddings; the MFR server refuses "
            f"others), found {len(outputs)}: {', '.join(o.name for o in outputs) or 'none'}"
        )
    shape = dims(inputs[0])
    if len(shape) != 4:
        raise OnnxModelError(
            f"{path}: expected a 4-d image input (N, 3, 112, 112), got {inputs[0].name} with "
            f"shape {shape}"
        )
    return inputs[0], outputs[0]


# -- the format rules (no onnxruntime needed) ---------------------------------------------------


def format_checks(model: ModelProto, path: str) -> list[Check]:
    """The rules readable from the file: opset, IR, node count, weight types, shapes, size."""
    inp, out = graph_io(model, path)
    return [
        _opset_check(model),
        Check("IR version", model.ir_version <= MAX_IR_VERSION, str(model.ir_version),
              f"<= {MAX_IR_VERSION} (onnxruntime 1.6-1.8)"),
        Check("local functions", not model.functions, str(len(model.functions)),
              "none (IR 8+, unknown to onnxruntime 1.6)"),
        Check("nodes", len(model.graph.node) >= MIN_NODES, str(len(model.graph.node)),
              f">= {MIN_NODES} (onnx_helper)"),
        _weights_check(model),
        _input_check(inp),
        _batch_check(inp),
        _output_check(out),
        _normalisation_check(model),
    ]


def _opset_check(model) -> Check:
    """The default-domain opset, and no other domain (onnxruntime 1.6 knows few of them)."""
    versions = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    opset = versions.pop("ai.onnx", None)
    value = f"{opset}" + (f" (+ {versions})" if versions else "")
    ok = opset is not None and opset <= MAX_OPSET and not versions
    return Check("opset", ok, value, f"<= {MAX_OPSET}, ai.onnx domain only (onnxruntime 1.6)")


def _weights_check(model) -> Check:
    """Every initialiser's elements have >= 4 bytes: fp16 (and int8, bool) weights are refused."""
    import onnx

    small = []
    for init in model.graph.initializer:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
        if dtype.itemsize < MIN_WEIGHT_BYTES:
            small.append(f"{init.name}:{dtype.name}")
    count = len(model.graph.initializer)
    value = f"{count} initialisers, all >= 32-bit" if not small else (
        f"{len(small)} of {count} narrower than 32 bits: {', '.join(small[:3])}"
        + (", ..." if len(small) > 3 else ""))
    return Check("weight types", not small, value, "no fp16 (rule 10)")


def _input_check(inp) -> Check:
    """Channels, height and width fixed at 3 x 112 x 112."""
    shape = dims(inp)
    ok = tuple(shape[1:]) == INPUT_CHW
    return Check("input shape", ok, f"{inp.name} {shape}", "[N, 3, 112, 112] RGB")


def _batch_check(inp) -> Check:
    """A dynamic batch axis; a fixed one is accepted (the server makes it dynamic)."""
    batch = dims(inp)[0]
    if isinstance(batch, str):
        return Check("batch axis", True, f"dynamic ({batch!r})", "dynamic, or fixed (made dynamic)")
    return Check("batch axis", True, f"fixed {batch} (the server makes it dynamic)",
                 "dynamic, or fixed (made dynamic)")


def _output_check(out) -> Check:
    """A 2-d output (N, D)."""
    shape = dims(out)
    return Check("output shape", len(shape) == 2, f"{out.name} {shape}", "[N, D]")


def feeds_raw_pixels(model: ModelProto) -> bool:
    """onnx_helper's guess: a model whose first 8 nodes hold a Sub and a Mul/Div normalises itself."""
    # MXNet models normalise inside and name those nodes so; torch names nodes "/backbone/..."
    names = [n.name for n in model.graph.node[:8]]
    sub = any(n.startswith(("Sub", "_minus")) for n in names)
    mul = any(n.startswith(("Mul", "_mul", "Div")) for n in names)
    return sub and mul


def _normalisation_check(model) -> Check:
    """Which pixels the server would feed: raw ones are fine only if the model normalises itself."""
    if feeds_raw_pixels(model):
        return Check("server input", None, "raw 0-255 pixels (the first nodes are named Sub and "
                     "Mul/Div: taken to normalise inside)", "(x - 127.5) / 127.5 for our models")
    return Check("server input", True, "(x - 127.5) / 127.5", "(x - 127.5) / 127.5 (RGB)")


def _size_check(path: str, track: Track) -> Check:
    """The file's size, as the server measures it."""
    mb = os.path.getsize(path) / 2**20
    return Check("model size", mb <= track.max_mb, f"{mb:.1f} MB", f"<= {track.max_mb:g} MB")


# -- running it -------------------------------------------------------------------------------


def _providers(device: str) -> list[str]:
    """onnxruntime providers for ``device`` (auto: CUDA when this onnxruntime has it)."""
    import onnxruntime as ort

    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if device == "cuda" and not has_cuda:
        raise UsageError("--device cuda: this onnxruntime has no CUDAExecutionProvider")
    if device != "cpu" and has_cuda:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _session(model, providers: list[str]):
    """An onnxruntime session on a copy of ``model`` whose batch axis is dynamic, as the server's."""
    import onnxruntime as ort

    model_copy = type(model)()
    model_copy.CopyFrom(model)
    graph_input = graph_io(model_copy, "model")[0]
    batch = graph_input.type.tensor_type.shape.dim[0]
    if not batch.dim_param:
        batch.dim_param = "N"  # a fixed batch size: onnx_helper sets it to a name the same way
    return ort.InferenceSession(model_copy.SerializeToString(), providers=providers)


def face_batch(count: int = SERVER_BATCH) -> np.ndarray:
    """``count`` aligned synthetic faces, (N, 3, 112, 112) uint8 RGB: real pixels, not noise."""
    from tools.synthetic_faces import render_identity_image

    faces = [render_identity_image(0, i, 0, "lfw")[:, :, ::-1] for i in range(count)]  # BGR->RGB
    return np.ascontiguousarray(np.stack(faces).transpose(0, 3, 1, 2))


def _server_pixels(images: np.ndarray, raw: bool) -> np.ndarray:
    """The float32 input the server would build from uint8 RGB ``images``."""
    x = images.astype(np.float32)
    return x if raw else (x - MEAN) / STD


def _batch_checks(session, images: np.ndarray, raw: bool, track: Track) -> list[Check]:
    """A batch of 32 faces: it runs, gives (32, D) finite numbers, and D fits the track."""
    name = session.get_inputs()[0].name
    try:
        out = np.asarray(session.run(None, {name: _server_pixels(images, raw)})[0])
    except Exception as exc:  # onnxruntime's own exception types
        return [Check(f"batch of {len(images)}", False, f"onnxruntime failed: {exc}"[:200],
                      "runs (the server embeds batches)")]
    shape_ok = out.ndim == 2 and out.shape[0] == len(images)
    finite = bool(np.isfinite(out).all())
    size = out.shape[1] if out.ndim == 2 else -1
    return [
        Check(f"batch of {len(images)}", shape_ok, f"output {list(out.shape)}", f"[{len(images)}, D]"),
        Check("finite output", finite, "no NaN/inf" if finite else
              f"{int((~np.isfinite(out)).sum())} NaN/inf values", "no NaN/inf (onnx_helper)"),
        Check("feature size", 0 < size <= track.max_features, str(size), f"<= {track.max_features}"),
    ]


def _latency_check(session, image: np.ndarray, raw: bool, track: Track, runs: int) -> Check:
    """Time one image ``runs`` times; onnx_helper reports the 6th fastest of 50 (~10th percentile)."""
    name = session.get_inputs()[0].name
    x = _server_pixels(image[None], raw)
    try:
        session.run(None, {name: x})  # the first run allocates and picks kernels
    except Exception as exc:  # onnxruntime's own exception types
        return Check("latency, 1 image", False, f"onnxruntime failed: {exc}"[:200], "runs one image")
    costs = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {name: x})
        costs.append((time.perf_counter() - start) * 1000)
    costs.sort()
    ms, median = costs[len(costs) // 10], costs[len(costs) // 2]
    on_gpu = session.get_providers()[0] == "CUDAExecutionProvider"
    where = "CUDA" if on_gpu else "CPU"
    limit = f"<= {track.max_ms:g} ms on a {track.gpu}"
    if not on_gpu:
        limit += " (not comparable on a CPU: not enforced)"
    return Check("latency, 1 image", (ms <= track.max_ms) if on_gpu else None,
                 f"{ms:.2f} ms on {where} (median {median:.2f})", limit)


def conv_gemm_macs(model: ModelProto) -> float:
    """Multiply-accumulates of one image in the Conv, Gemm and MatMul nodes (weights x outputs)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(_with_batch_one(model))
    shapes = {v.name: dims(v) for v in [*inferred.graph.value_info, *inferred.graph.output]}
    weights = {i.name: list(i.dims) for i in inferred.graph.initializer}
    total = 0.0
    for node in inferred.graph.node:
        out, w = shapes.get(node.output[0]), weights.get(node.input[1]) if len(node.input) > 1 else None
        if not out or not w or not all(isinstance(d, int) for d in out):
            continue
        if node.op_type == "Conv":  # out (1, Co, H, W) x weight (Co, Ci/g, kh, kw) / Co
            total += float(np.prod(out)) * float(np.prod(w[1:]))
        elif node.op_type in ("Gemm", "MatMul"):  # out (1, Nout) x K
            total += float(np.prod(out)) * float(np.prod(w)) / max(out[-1], 1)
    return total


def _macs_check(model) -> Check:
    """The Conv/Gemm multiply-accumulates, as information (no MFR rule limits them)."""
    try:
        value = f"{conv_gemm_macs(model) / 1e9:.3g} G per image"
    except Exception as exc:  # onnx shape inference refuses some graphs; the count is optional
        value = f"not counted ({type(exc).__name__})"
    return Check("Conv/Gemm MACs", None, value, "no MFR limit (the rules limit latency)")


def _with_batch_one(model):
    """A copy of ``model`` with its batch axis fixed at 1 (for shape inference)."""
    model_copy = type(model)()
    model_copy.CopyFrom(model)
    dim = graph_io(model_copy, "model")[0].type.tensor_type.shape.dim[0]
    dim.dim_value = 1
    return model_copy


def _compare_check(session, images: np.ndarray, weights: str, network: str | None,
                   rtol: float) -> Check:
    """ONNX embeddings vs PyTorch's (eval.embedder.load_backbone) on the same faces, fp32 CPU."""
    import torch

    from eval.embedder import load_backbone
    from utils.loader import normalize_batch

    backbone, meta = load_backbone(weights, network)
    x = normalize_batch(torch.from_numpy(images))  # the embedder's normalisation
    with torch.inference_mode():
        expected = backbone.float().eval()(x).numpy()
    got = np.asarray(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    if got.shape != expected.shape:
        return Check("vs PyTorch", False, f"shape {list(got.shape)} != {list(expected.shape)}",
                     f"{meta['network']} from {os.path.basename(weights)}")
    rel = float(np.max(np.abs(got - expected))) / max(float(np.max(np.abs(expected))), 1e-12)
    cos = np.sum(got * expected, 1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))
    return Check("vs PyTorch", bool(rel <= rtol),  # NaN fails
                 f"rel diff {rel:.2g}, min cosine {float(np.min(cos)):.6f}",
                 f"rel <= {rtol:g} ({meta['network']}, {os.path.basename(weights)})")


def check_model(
    path: str,
    track: str = "ms1m",
    weights: str | None = None,
    network: str | None = None,
    device: str = "auto",
    latency_runs: int = 50,
    rtol: float = 1e-3,
) -> list[Check]:
    """Every check of ``path`` for ``track`` (and vs ``weights`` if given): the table's rows."""
    limits = TRACKS.get(track)
    providers = _providers(device)
    model = load_model(path)
    checks = [*format_checks(model, path), _size_check(path, limits)]
    try:
        session = _session(model, providers)
    except Exception as exc:  # onnxruntime's own exception types
        return [*checks, Check("loads in onnxruntime", False, str(exc).splitlines()[0][:200])]
    checks.append(Check("loads in onnxruntime", True, session.get_providers()[0]))
    if not next(c for c in checks if c.name == "input shape").ok:
        # onnx_helper stops here too: 112x112 faces cannot be fed to it
        return [*checks, Check("runs on faces", None, "skipped: the input is not 3 x 112 x 112")]
    raw = feeds_raw_pixels(model)
    images = face_batch()
    checks += _batch_checks(session, images, raw, limits)
    checks.append(_latency_check(session, images[0], raw, limits, latency_runs))
    checks.append(_macs_check(model))
    if weights is not None:
        checks.append(_compare_check(session, images, weights, network, rtol))
    return checks


def format_table(checks: Sequence[Check]) -> str:
    """The checks as an aligned text table."""
    rows = [("check", "status", "value", "limit"), *((c.name, c.status, c.value, c.limit) for c in checks)]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(
        f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip() for r in rows
    )


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface."""
    p = argparse.ArgumentParser(prog="python -m tools.check_onnx", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="the .onnx file to check")
    p.add_argument("--track", default="ms1m",
                   help=f"MFR track whose limits apply: {', '.join(TRACKS.names())} (default ms1m)")
    p.add_argument("--weights", default=None, help="checkpoint to compare the embeddings with")
    p.add_argument("--network", default=None, help="backbone of --weights (default: inferred)")
    p.add_argument("--rtol", type=float, default=1e-3,
                   help="largest allowed |onnx - torch| / max|torch| with --weights (default 1e-3)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="onnxruntime provider (auto: CUDA when available)")
    p.add_argument("--latency-runs", type=int, default=50, help="timed runs of one image")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI: print the table; return 0 if every enforced check passes, else 1."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.latency_runs < 1:
        raise UsageError(f"--latency-runs must be >= 1, got {args.latency_runs}")
    checks = check_model(args.model, args.track, args.weights, args.network, args.device,
                         args.latency_runs, args.rtol)
    print(f"{args.model} against the MFR rules, track {args.track}:")
    print(format_table(checks))
    failed = [c.name for c in checks if c.ok is False]
    print(f"FAILED: {', '.join(failed)}" if failed else "all enforced checks pass")
    return 1 if failed else 0


if __name__ == "__main__":
    run_cli(main)
