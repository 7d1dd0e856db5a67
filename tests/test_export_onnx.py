"""tools.export_onnx: ONNX matches PyTorch, has a dynamic batch axis, runs in the Embedder."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from backbones import get_backbone
from eval import evaluation
from eval.embedder import Embedder
from tools import export_onnx
from utils.checkpoint import export_backbone

TINY = {"width": 8, "num_features": 16}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One tiny iresnet18 checkpoint and its ONNX export (shared: exporting takes a few seconds)."""
    root = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(7)
    model = get_backbone("iresnet18", **TINY).eval()
    with torch.no_grad():  # non-trivial BN statistics, so folding them is checked too
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    export_backbone(model, root / "model.pt", "iresnet18", TINY)
    out = root / "model.onnx"
    info = export_onnx.main(["--weights", str(root / "model.pt"), "--output", str(out)])
    return model, root, out, info


def test_export_reports_small_difference(exported):
    model, root, out, info = exported
    assert out.is_file() and info["network"] == "iresnet18"
    assert info["rel_diff"] <= 1e-4 and info["max_abs_diff"] < 1e-3
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert props["network"] == "iresnet18" and props["input"].startswith("RGB 112x112")
    assert [p.name for p in root.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("batch", [1, 3])
def test_dynamic_batch(exported, batch):
    model, _, out, _ = exported
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"
    x = torch.rand(batch, 3, 112, 112, generator=torch.Generator().manual_seed(batch)) * 2 - 1
    got = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        expected = model(x).numpy()
    assert got.shape == (batch, 16)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_embedder_torch_and_onnx_agree(exported):
    model, _, out, _ = exported
    imgs = np.random.default_rng(0).integers(0, 256, size=(5, 112, 112, 3), dtype=np.uint8)
    onnx_embedder = Embedder.load(str(out), batch_size=2)  # batches of 2, 2, 1
    torch_embedder = Embedder.from_module(model, batch_size=4)
    assert onnx_embedder.device == torch.device("cpu") and onnx_embedder.embedding_size == 16
    a, b = onnx_embedder(imgs), torch_embedder(imgs)
    assert a.dtype == np.float32 and a.shape == (5, 16)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())
    cos = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99999


def test_refuses_overwrite_and_failed_check_writes_nothing(exported, tmp_path):
    _, root, out, _ = exported
    before = out.read_bytes()
    with pytest.raises(FileExistsError, match="--force"):
        export_onnx.main(["--weights", str(root / "model.pt"), "--output", str(out)])
    assert out.read_bytes() == before
    # An impossible tolerance makes the check fail: no file (and no temp file) is left.
    target = tmp_path / "never.onnx"
    with pytest.raises(SystemExit, match="nothing written"):
        export_onnx.main(
            ["--weights", str(root / "model.pt"), "--output", str(target), "--rtol", "-1"]
        )
    assert list(tmp_path.iterdir()) == []


def test_evaluation_of_onnx_matches_torch(exported, tmp_path):
    from test_evaluation import write_bin  # the synthetic .bin writer

    model, root, out, _ = exported
    data = tmp_path / "data"
    data.mkdir()
    write_bin(data / "lfw.bin", seed=3)
    result = evaluation.main(["--weights", str(root), "--data-dir", str(data), "--targets", "lfw",
                              "--batch-size", "40", "--device", "cpu"])
    by_name = {r["name"]: r for r in result["checkpoints"]}
    assert set(by_name) == {"model.pt", "model.onnx"}
    assert by_name["model.onnx"]["network"] == "onnx"
    onnx_res = by_name["model.onnx"]["results"]["lfw"]
    torch_res = by_name["model.pt"]["results"]["lfw"]
    # Embeddings agree to ~1e-5, so the thresholded accuracies agree on these well-separated pairs.
    assert onnx_res["acc2"] == pytest.approx(torch_res["acc2"], abs=1e-9)
    assert onnx_res["xnorm"] == pytest.approx(torch_res["xnorm"], rel=1e-4)


# -- --mfr: what the MFR challenge server's onnxruntime 1.6-1.8 reads -------------------------------


@pytest.fixture(scope="module")
def mfr_exported(exported):
    """The same checkpoint exported with --mfr."""
    model, root, _, _ = exported
    out = root / "mfr" / "model.onnx"
    info = export_onnx.main(["--weights", str(root / "model.pt"), "--output", str(out), "--mfr"])
    return model, out, info


def test_default_export_is_unchanged(exported):
    proto = onnx.load(str(exported[2]))
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 17)]
    assert exported[3]["opset"] == 17


def test_mfr_export_format(mfr_exported):
    _, out, info = mfr_exported
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    assert info["opset"] == 11 and [(o.domain, o.version) for o in proto.opset_import] == [("", 11)]
    assert proto.ir_version <= 7 and not proto.functions
    assert {i.data_type for i in proto.graph.initializer} == {onnx.TensorProto.FLOAT}
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("input", ["batch", 3, 112, 112])]
    assert [(o.name, o.shape) for o in session.get_outputs()] == [("embedding", ["batch", 16])]


def test_mfr_export_embeds_like_pytorch(mfr_exported):
    model, out, info = mfr_exported
    assert info["rel_diff"] <= 1e-4
    imgs = np.random.default_rng(1).integers(0, 256, size=(3, 112, 112, 3), dtype=np.uint8)
    onnx_embedder = Embedder.from_onnx(str(out), batch_size=2, device="cpu")
    a, b = onnx_embedder(imgs), Embedder.from_module(model, batch_size=3)(imgs)
    assert onnx_embedder.embedding_size == 16 and onnx_embedder.fixed_batch is None
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())


def test_mfr_export_of_a_half_checkpoint_has_fp32_weights(tmp_path):
    torch.manual_seed(5)
    export_backbone(get_backbone("iresnet18", **TINY).half(), tmp_path / "half.pt", "iresnet18", TINY)
    out = tmp_path / "half.onnx"
    export_onnx.main(["--weights", str(tmp_path / "half.pt"), "--output", str(out), "--mfr", "--opset", "13"])
    proto = onnx.load(str(out))
    assert proto.opset_import[0].version == 13 and proto.ir_version == 7
    assert {i.data_type for i in proto.graph.initializer} == {onnx.TensorProto.FLOAT}


def test_mfr_refuses_a_newer_opset(exported, tmp_path, user_error):
    _, root, _, _ = exported
    line = user_error(export_onnx.main, ["--weights", root / "model.pt", "--output", tmp_path / "x.onnx",
                                         "--mfr", "--opset", "14"])
    assert line == ("error: UsageError: --opset 14 with --mfr: the MFR server's onnxruntime 1.6 "
                    "implements opset <= 13")
    assert list(tmp_path.iterdir()) == []


def test_make_mfr_ready_lowers_the_ir_version_and_refuses_opset_17(exported, mfr_exported, tmp_path):
    proto = onnx.load(str(mfr_exported[1]))
    proto.ir_version = 10  # what a newer torch/onnx would stamp
    onnx.save(proto, str(tmp_path / "ir10.onnx"))
    export_onnx.make_mfr_ready(str(tmp_path / "ir10.onnx"))
    assert onnx.load(str(tmp_path / "ir10.onnx")).ir_version == 7
    ort.InferenceSession(str(tmp_path / "ir10.onnx"), providers=["CPUExecutionProvider"])
    before = exported[2].read_bytes()
    with pytest.raises(RuntimeError, match=r"breaks MFR rules: opset 17 \(limit <= 13"):
        export_onnx.make_mfr_ready(str(exported[2]))
    assert exported[2].read_bytes() == before  # refused before anything is written
