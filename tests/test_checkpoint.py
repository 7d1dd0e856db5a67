"""utils.checkpoint: every supported layout loads, mismatches and unsafe files fail clearly."""

from __future__ import annotations

import pickle

import pytest
import torch

from backbones import get_backbone
from utils.checkpoint import (
    BACKBONE_FORMAT,
    CheckpointError,
    UnsafeCheckpointError,
    export_backbone,
    infer_network,
    load_weights,
    read_checkpoint_meta,
)

TINY = {"width": 8, "num_features": 16}


def tiny(name: str = "iresnet18", seed: int = 0, **kw) -> torch.nn.Module:
    """A tiny backbone with randomised BN statistics, so loading is visible in every tensor."""
    torch.manual_seed(seed)
    model = get_backbone(name, **{**TINY, **kw})
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_fresh_models_differ():
    # Guards the other tests: two seeds really give different weights.
    with pytest.raises(AssertionError):
        assert_same_weights(tiny(seed=1), tiny(seed=2))


def test_our_training_checkpoint(tmp_path):
    src = tiny(seed=1)
    path = tmp_path / "checkpoint-300.pt"
    torch.save(
        {
            "format": "contraface", "version": 1, "network": "iresnet18", "network_kwargs": TINY,
            "backbone": src.state_dict(), "head": {"kernel": torch.randn(16, 5)},
            "optimizer": {"state": {}, "param_groups": []}, "step": 300, "epoch": 2,
        },
        path,
    )
    dst = tiny(seed=2)
    meta = load_weights(dst, str(path))
    assert_same_weights(src, dst)
    assert meta["format"] == "contraface"
    got = (meta["network"], meta["network_kwargs"], meta["step"], meta["epoch"])
    assert got == ("iresnet18", TINY, 300, 2)


def test_export_backbone_roundtrip(tmp_path):
    src = tiny(seed=1)
    path = tmp_path / "sub" / "model.pt"
    export_backbone(src, path, "iresnet18", TINY)
    raw = torch.load(path, weights_only=True)
    assert (raw["format"], raw["version"], raw["network"]) == (BACKBONE_FORMAT, 1, "iresnet18")
    dst = tiny(seed=2)
    meta = load_weights(dst, path)
    assert_same_weights(src, dst)
    assert meta["format"] == BACKBONE_FORMAT
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temp file left behind


def test_contraface_original_model_pth(tmp_path):
    src = tiny(seed=1)
    kernel = torch.randn(16, 7)
    flat = {f"backbone.{k}": v for k, v in src.state_dict().items()}
    flat["header.kernel"] = kernel
    path = tmp_path / "24000model.pth"
    torch.save(flat, path)
    dst = tiny(seed=2)
    meta = load_weights(dst, path)
    assert_same_weights(src, dst)
    assert meta["format"] == "contraface-original"
    assert torch.equal(meta["header"]["kernel"], kernel)
    info = read_checkpoint_meta(path)
    assert (info["network"], info["network_kwargs"]) == ("iresnet18", TINY)
    assert info["network_inferred"]
    assert info["step"] == 24000 and "header" not in info


def test_insightface_plain_keys(tmp_path):
    src = tiny(seed=1)
    path = tmp_path / "backbone.pth"
    torch.save(src.state_dict(), path)
    dst = tiny(seed=2)
    assert load_weights(dst, path)["format"] == "state_dict"
    assert_same_weights(src, dst)


def test_insightface_without_num_batches_tracked(tmp_path):
    # Older insightface files lack the BN counters; they are not weights, so this loads.
    src = tiny(seed=1)
    path = tmp_path / "backbone.pth"
    torch.save({k: v for k, v in src.state_dict().items() if "num_batches_tracked" not in k}, path)
    dst = tiny(seed=2)
    load_weights(dst, path)
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        if "num_batches_tracked" not in k:
            assert torch.equal(a, b), k


@pytest.mark.parametrize(
    "layout", ["module", "module_contraface", "state_dict_wrapper", "model_wrapper"]
)
def test_wrapped_layouts(tmp_path, layout):
    src = tiny(seed=1)
    sd = src.state_dict()
    obj = {
        "module": {f"module.{k}": v for k, v in sd.items()},
        # DDP-wrapped backbone inside the ContraFace model: backbone.module.*
        "module_contraface": {
            **{f"backbone.module.{k}": v for k, v in sd.items()},
            "header.kernel": torch.ones(16, 3),
        },
        "state_dict_wrapper": {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3},
        "model_wrapper": {"model": sd, "optimizer": {}},
    }[layout]
    path = tmp_path / "w.pth"
    torch.save(obj, path)
    dst = tiny(seed=2)
    load_weights(dst, path)
    assert_same_weights(src, dst)


def test_mobilefacenet_loads_and_is_inferred(tmp_path):
    torch.manual_seed(0)
    src = get_backbone("mobilefacenet", num_features=32)
    path = tmp_path / "mbf.pth"
    torch.save(src.state_dict(), path)
    dst = get_backbone("mobilefacenet", num_features=32)
    load_weights(dst, path)
    assert_same_weights(src, dst)
    assert infer_network(src.state_dict())[:2] == ("mobilefacenet", {"num_features": 32})


def test_infer_network_depths():
    for name in ("iresnet18", "iresnet34", "iresnet50"):
        guess = infer_network(get_backbone(name, width=4, num_features=8).state_dict())
        assert guess[:2] == (name, {"width": 4, "num_features": 8})
    se = infer_network(get_backbone("iresnet18", width=16, use_se=True).state_dict())
    assert se[:2] == ("iresnet18", {"width": 16, "use_se": True})


def test_depth_mismatch_message(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(tiny("iresnet18").state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        load_weights(tiny("iresnet34"), path)
    msg = str(info.value)
    assert str(path) in msg and "IResNet" in msg
    assert "missing" in msg and "layer1.2.bn1.weight" in msg  # first block iresnet18 lacks
    assert "looks like an iresnet18" in msg and "the model is iresnet34" in msg
    assert "layer3 has 2 blocks in the checkpoint, 6 in the model" in msg
    assert "--network iresnet18 --width 8 --num-features 16" in msg


def test_width_mismatch_lists_both_shapes(tmp_path):
    path = tmp_path / "w.pt"
    export_backbone(tiny("iresnet18", width=8), path, "iresnet18", TINY)
    model = tiny("iresnet18", width=16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_weights(model, path)
    msg = str(info.value)
    assert "network 'iresnet18'" in msg and "shape mismatches" in msg
    assert "conv1.weight: checkpoint [8, 3, 3, 3] vs model [16, 3, 3, 3]" in msg
    # A failed load leaves the model untouched.
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_non_strict_reports_extra_and_missing(tmp_path):
    src = tiny(seed=1)
    sd = dict(src.state_dict())
    sd.pop("fc.bias")
    sd["extra.weight"] = torch.zeros(2)
    path = tmp_path / "w.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="fc.bias"):
        load_weights(tiny(seed=2), path)
    dst = tiny(seed=2)
    meta = load_weights(dst, path, strict=False)
    assert meta["missing_keys"] == ["fc.bias"] and meta["unexpected_keys"] == ["extra.weight"]
    assert torch.equal(dst.conv1.weight, src.conv1.weight)


class _Evil:
    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_malicious_pickle_refused_without_side_effects(tmp_path, writer):
    victim = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pth"
    payload = {"conv1.weight": torch.zeros(1), "x": _Evil(str(victim))}
    if writer == "torch":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    assert not victim.exists()
    with pytest.raises(UnsafeCheckpointError, match="refused to load") as info:
        load_weights(tiny(), path)
    assert str(path) in str(info.value)
    assert not victim.exists()


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_weights(tiny(), tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(CheckpointError, match="bad.pth: not a readable"):
        load_weights(tiny(), bad)
    notsd = tmp_path / "list.pth"
    torch.save([1, 2, 3], notsd)
    with pytest.raises(CheckpointError, match="no backbone state dict"):
        load_weights(tiny(), notsd)


def test_files_that_are_no_checkpoint_at_all(tmp_path):
    # not "unsafe": nothing in them is a pickle that would run code; they are not torch.save output
    cases = {
        "train.idx": b"0\t0\n1\t3152\n2\t6304\n",  # a RecordIO index passed by mistake
        "noise.pth": bytes(range(7, 256)) * 2,  # random-looking bytes
        "empty.pth": b"",
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(CheckpointError, match=f"{name}: not a PyTorch checkpoint") as info:
            load_weights(tiny(), path)
        assert not isinstance(info.value, UnsafeCheckpointError)
    damaged = tmp_path / "damaged.pth"  # a pickle header, then bytes no pickle writer emits
    damaged.write_bytes(b"\x80\x02" + bytes([0xF0]) * 64)
    with pytest.raises(CheckpointError, match="damaged.pth: not a PyTorch checkpoint") as info:
        load_weights(tiny(), damaged)
    assert not isinstance(info.value, UnsafeCheckpointError)

