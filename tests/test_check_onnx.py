"""tools.check_onnx: the MFR rules pass for a --mfr export and refuse models that break them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from backbones import get_backbone
from tools import check_onnx, export_onnx
from utils.checkpoint import export_backbone
from utils.errors import UnknownNameError

TINY = {"width": 8, "num_features": 16}
FAST = ["--latency-runs", "5"]


@pytest.fixture(scope="module")
def mfr_export(tmp_path_factory):
    """A tiny iresnet18 checkpoint and its --mfr export."""
    root = tmp_path_factory.mktemp("mfr")
    torch.manual_seed(3)
    export_backbone(get_backbone("iresnet18", **TINY).eval(), root / "model.pt", "iresnet18", TINY)
    out = root / "model.onnx"
    export_onnx.main(["--weights", str(root / "model.pt"), "--output", str(out), "--mfr"])
    return root / "model.pt", out


def toy_model(
    path,
    opset: int = 11,
    ir_version: int = 6,
    scale_type: int = TensorProto.FLOAT,
    scale: float = 1.0,
    input_shape: tuple = ("N", 3, 112, 112),
    features: int = 16,
    outputs: int = 1,
    relus: int = 3,
    names: tuple[str, str] = ("pool", "cast"),
) -> str:
    """A small valid image -> (N, features) model: pool, flatten, matmul, scale, relus."""
    rng = np.random.default_rng(0)
    weight = helper.make_tensor("W", TensorProto.FLOAT, [3, features], rng.normal(size=3 * features))
    scale_init = helper.make_tensor("s", scale_type, [1], [scale])
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["p"], name=names[0]),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "W"], ["m"], name="matmul"),
        helper.make_node("Cast", ["s"], ["s32"], to=TensorProto.FLOAT, name=names[1]),
        helper.make_node("Mul", ["m", "s32"], ["r0"], name="scale"),
    ]
    nodes += [helper.make_node("Relu", [f"r{i}"], [f"r{i + 1}"], name=f"relu{i}") for i in range(relus)]
    outs = [helper.make_tensor_value_info(f"r{relus}", TensorProto.FLOAT, ["N", features])]
    if outputs == 2:
        outs.append(helper.make_tensor_value_info("m", TensorProto.FLOAT, ["N", features]))
    graph = helper.make_graph(
        nodes, "toy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))],
        outs, [weight, scale_init],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    onnx.save(model, str(path))
    return str(path)


def by_name(checks):
    """{row name: Check}."""
    return {c.name: c for c in checks}


def failed(checks):
    """The names of the failing rows."""
    return [c.name for c in checks if c.ok is False]


def test_mfr_export_passes_every_rule(mfr_export, capsys):
    weights, out = mfr_export
    assert check_onnx.main([str(out), "--weights", str(weights), *FAST]) == 0
    text = capsys.readouterr().out
    assert "all enforced checks pass" in text and "FAIL" not in text
    rows = by_name(check_onnx.check_model(str(out), weights=str(weights), latency_runs=5))
    assert rows["opset"].value == "11" and int(rows["IR version"].value) <= 7
    assert rows["feature size"].value == "16" and rows["batch of 32"].value == "output [32, 16]"
    assert rows["vs PyTorch"].ok and "min cosine 1.0000" in rows["vs PyTorch"].value
    # on a CPU the GPU latency limit is printed, not enforced
    assert rows["latency, 1 image"].ok is None and "ms on CPU" in rows["latency, 1 image"].value
    # the Conv/Gemm count is within 5% of backbones.complexity's (which adds BN and PReLU)
    from backbones.complexity import count_flops

    macs = check_onnx.conv_gemm_macs(onnx.load(str(out)))
    expected = count_flops(get_backbone("iresnet18", **TINY))
    assert 0.95 * expected < macs <= expected


def test_other_weights_fail_the_comparison(mfr_export, tmp_path, capsys):
    _, out = mfr_export
    torch.manual_seed(4)
    export_backbone(get_backbone("iresnet18", **TINY).eval(), tmp_path / "other.pt", "iresnet18", TINY)
    assert check_onnx.main([str(out), "--weights", str(tmp_path / "other.pt"), *FAST]) == 1
    assert "FAILED: vs PyTorch" in capsys.readouterr().out


def test_toy_model_passes(tmp_path):
    checks = check_onnx.check_model(toy_model(tmp_path / "ok.onnx"), latency_runs=3)
    assert failed(checks) == []


@pytest.mark.parametrize(
    ("kwargs", "row", "value"),
    [
        ({"opset": 15, "ir_version": 7}, "opset", "15"),
        ({"ir_version": 8}, "IR version", "8"),
        ({"scale_type": TensorProto.FLOAT16}, "weight types", "1 of 2 narrower than 32 bits: s:float16"),
        ({"input_shape": ("N", 3, 224, 224)}, "input shape", "x ['N', 3, 224, 224]"),
        ({"relus": 1}, "nodes", "6"),
        ({"features": 640}, "feature size", "640"),
        ({"scale": float("nan")}, "finite output", "32 x 16"),
    ],
)
def test_broken_rules_are_refused(tmp_path, capsys, kwargs, row, value):
    path = toy_model(tmp_path / "bad.onnx", **kwargs)
    assert check_onnx.main([path, *FAST]) == 1
    text = capsys.readouterr().out
    assert f"FAILED: {row}" in text
    rows = by_name(check_onnx.check_model(path, latency_runs=2))
    assert failed(rows.values()) == [row]
    if row == "finite output":
        assert rows[row].value == f"{32 * 16} NaN/inf values"
    else:
        assert rows[row].value == value


def test_feature_size_depends_on_the_track(tmp_path):
    path = toy_model(tmp_path / "wide.onnx", features=1024)
    assert by_name(check_onnx.check_model(path, "ms1m", latency_runs=2))["feature size"].ok is False
    rows = by_name(check_onnx.check_model(path, "glint", latency_runs=2))
    assert rows["feature size"].ok and rows["latency, 1 image"].limit.startswith("<= 20 ms on a V100")
    with pytest.raises(UnknownNameError, match="did you mean 'glint'"):
        check_onnx.check_model(path, "glnt")


def test_fixed_batch_is_made_dynamic(tmp_path):
    rows = by_name(check_onnx.check_model(toy_model(tmp_path / "b1.onnx", input_shape=(1, 3, 112, 112)),
                                          latency_runs=2))
    assert rows["batch axis"].value.startswith("fixed 1") and rows["batch of 32"].ok


def test_self_normalising_names_are_reported(tmp_path):
    # onnx_helper feeds raw pixels to a model whose first nodes are named Sub... and Mul...
    rows = by_name(check_onnx.check_model(toy_model(tmp_path / "mx.onnx", names=("Sub0", "Mul0")),
                                          latency_runs=2))
    assert rows["server input"].ok is None and rows["server input"].value.startswith("raw 0-255")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_text("hello, not a model\n"), "bad.onnx: not an ONNX model"),
        (lambda p: p.write_bytes(bytes(range(256)) * 4), "bad.onnx: not an ONNX model"),
        (lambda p: toy_model(p, outputs=2), "bad.onnx: expected exactly one output (the embeddings; "
                                            "the MFR server refuses others), found 2: r3, m"),
        (lambda p: toy_model(p, input_shape=("N", 3, 112)), "bad.onnx: expected a 4-d image input"),
    ],
)
def test_bad_files_are_one_line_errors(tmp_path, user_error, make, message):
    path = tmp_path / "bad.onnx"
    make(path)
    line = user_error(check_onnx.main, [path])
    assert line.startswith("error: OnnxModelError: ") and message in line and str(path) in line


def test_missing_file_and_bad_flags(tmp_path, user_error):
    line = user_error(check_onnx.main, [tmp_path / "none.onnx"])
    assert line == f"error: FileNotFoundError: ONNX model {tmp_path / 'none.onnx'} not found"
    path = toy_model(tmp_path / "ok.onnx")
    assert user_error(check_onnx.main, [path, "--latency-runs", "0"]).endswith("got 0")


def test_format_table_aligns_rows():
    rows = [check_onnx.Check("a", True, "1", "x"), check_onnx.Check("longer", None, "22")]
    assert check_onnx.format_table(rows).splitlines() == [
        "check   status  value  limit", "a       PASS    1      x", "longer  INFO    22",
    ]


class _FakeCudaSession:
    """Answers like an onnxruntime session on CUDA, so the enforced latency branch is tested here."""

    def get_inputs(self):
        return [type("Input", (), {"name": "x"})()]

    def get_providers(self):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    def run(self, names, feed):
        return [np.zeros((len(feed["x"]), 16), np.float32)]


@pytest.mark.parametrize(("max_ms", "ok"), [(1e3, True), (0.0, False)])
def test_latency_is_enforced_on_cuda(max_ms, ok):
    image = np.zeros((3, 112, 112), np.uint8)
    row = check_onnx._latency_check(_FakeCudaSession(), image, False, check_onnx.Track(512, max_ms, "V100"), 5)
    assert row.ok is ok and " ms on CUDA" in row.value and "not enforced" not in row.limit
