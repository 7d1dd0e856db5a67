"""utils/layouts.py: the released checkpoints of AdaFace, MagFace, CurricularFace, SCF, ElasticFace load.

The files are written here in each project's layout (the key names of the authors' networks are
checked against their definitions in tests/test_irse.py and tests/data/released_layouts/).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from backbones import get_backbone
from eval.embedder import load_backbone
from utils.checkpoint import CheckpointError, accept_rgb, load_weights, read_checkpoint_meta
from utils.layouts import extract_backbone_state, infer_network

LAYOUTS = Path(__file__).parent / "data" / "released_layouts"


def tiny(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    net = get_backbone(name, width=8, **kwargs).eval()
    with torch.no_grad():  # non-trivial BN statistics, so that an eps or a channel order shows
        for module in net.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return net


def faces(n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, 112, 112, generator=torch.Generator().manual_seed(1))


def lightning_ckpt(net: torch.nn.Module, classes: int = 10) -> dict:
    """AdaFace's .ckpt: Lightning's keys, the network as model.*, AdaFace's head (kernel (512, C), t, ...)."""
    state = {f"model.{k}": v for k, v in net.state_dict().items()}
    state.update({"head.kernel": torch.randn(512, classes), "head.t": torch.zeros(1),
                  "head.batch_mean": torch.ones(1) * 20, "head.batch_std": torch.ones(1) * 100})
    return {"epoch": 25, "global_step": 100, "pytorch-lightning_version": "1.4.4", "state_dict": state,
            "callbacks": {}, "optimizer_states": [], "lr_schedulers": [],
            "hyper_parameters": {"arch": "ir_18", "head": "adaface", "m": 0.4, "h": 0.333}}


# -- AdaFace ----------------------------------------------------------------------------------


def test_adaface_lightning_ckpt_loads_as_its_network_taking_rgb(tmp_path):
    net = tiny("ir_18")
    path = tmp_path / "adaface_ir18_webface4m.ckpt"
    torch.save(lightning_ckpt(net), path)
    loaded, meta = load_backbone(str(path))
    assert meta["format"] == "adaface-lightning" and meta["channel_order"] == "BGR"
    assert meta["network"] == "ir_18" and meta["network_kwargs"] == {"width": 8}
    x = faces()
    with torch.no_grad():  # AdaFace's network fed BGR == ours fed RGB
        assert torch.allclose(loaded(x), net(x.flip(1)), rtol=1e-4, atol=1e-3)
        assert not torch.allclose(loaded(x), net(x), rtol=1e-3, atol=1e-3)


def test_channel_order_override(tmp_path):
    net = tiny("ir_18")
    torch.save(lightning_ckpt(net), tmp_path / "a.ckpt")
    loaded, meta = load_backbone(str(tmp_path / "a.ckpt"), channel_order="rgb")
    assert meta["channel_order"] == "RGB"
    with torch.no_grad():
        assert torch.equal(loaded(faces()), net(faces()))
    with pytest.raises(CheckpointError, match=r"--channel-order: unknown channel order 'GBR'"):
        load_backbone(str(tmp_path / "a.ckpt"), channel_order="GBR")


def test_accept_rgb_is_exact_on_the_stem():
    net = tiny("iresnet18")
    converted = tiny("iresnet18")
    accept_rgb(converted, "BGR")
    assert torch.equal(converted.conv1.weight, net.conv1.weight.flip(1))
    with torch.no_grad():
        assert torch.allclose(converted(faces()), net(faces().flip(1)), rtol=1e-4, atol=1e-3)


def test_lightning_file_without_model_weights_names_the_keys(tmp_path):
    ckpt = lightning_ckpt(tiny("ir_18"))
    ckpt["state_dict"] = {k.replace("model.", "net."): v for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match=r"other\.ckpt: a PyTorch Lightning checkpoint without model\.\* "
                                              r"weights .*'net\.input_layer\.0\.weight'"):
        load_weights(tiny("ir_18"), tmp_path / "other.ckpt")


def test_init_weights_takes_adaface_backbone_and_class_centers(tmp_path, caplog):
    from losses import get_head
    from methods.contraface import SingleBranch

    net = tiny("ir_18")
    ckpt = lightning_ckpt(net, classes=10)
    torch.save(ckpt, tmp_path / "adaface.ckpt")
    method = SingleBranch(tiny("ir_18"), get_head("arcface", 512, 10), dropout=0.0)
    with caplog.at_level(logging.INFO):
        method.load_init_weights(str(tmp_path / "adaface.ckpt"))
    assert torch.equal(method.head.kernel, ckpt["state_dict"]["head.kernel"])
    assert torch.equal(method.backbone.input_layer[0].weight, net.input_layer[0].weight.flip(1))
    assert "backbone and class centers from" in caplog.text and "BGR input converted to RGB" in caplog.text
    fewer = SingleBranch(tiny("ir_18"), get_head("arcface", 512, 7), dropout=0.0)
    with caplog.at_level(logging.INFO):
        fewer.load_init_weights(str(tmp_path / "adaface.ckpt"))  # 10 centers do not fit 7 classes
    assert "class centers start fresh" in caplog.text


# -- MagFace ----------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["module.features.", "features.module."])
def test_magface_checkpoint_is_an_iresnet_with_its_bn_eps(tmp_path, prefix):
    net = tiny("iresnet18", bn_eps=2e-5)
    fc = torch.randn(512, 12)
    state = {f"{prefix}{k}": v for k, v in net.state_dict().items()}
    state[("module." if prefix.startswith("module.") else "") + "fc.weight"] = fc
    torch.save({"epoch": 20, "arch": "iresnet18", "state_dict": state, "optimizer": {}}, tmp_path / "magface.pth")
    loaded, meta = load_backbone(str(tmp_path / "magface.pth"))
    assert meta["format"] == "magface" and meta["network"] == "iresnet18"
    assert meta["network_kwargs"] == {"width": 8, "bn_eps": 2e-5}
    assert {m.eps for m in loaded.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)} == {2e-5}
    with torch.no_grad():
        assert torch.equal(loaded(faces()), net(faces()))
    state_, meta_ = extract_backbone_state(torch.load(tmp_path / "magface.pth"), "m")
    assert torch.equal(meta_["header"]["kernel"], fc)


# -- CurricularFace, TFace, SCF, ElasticFace -------------------------------------------------------


@pytest.mark.parametrize("name", ["ir_evolve_50", "ir_se_evolve_50", "ir_50", "ir_se_50", "ir_152"])
def test_ir_backbones_are_recognised_with_a_ddp_prefix(tmp_path, name):
    net = tiny(name)
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, tmp_path / "Backbone_IR.pth")
    loaded, meta = load_backbone(str(tmp_path / "Backbone_IR.pth"))
    assert meta["network"] == name and meta["channel_order"] == "RGB"
    with torch.no_grad():
        assert torch.equal(loaded(faces()), net(faces()))


def test_scf_checkpoint_with_and_without_its_backbone(tmp_path):
    net = tiny("ir_evolve_50")
    kappa_head = {"fc1.weight": torch.randn(4, 8), "fc1.bias": torch.zeros(4)}
    torch.save({"epoch": 3, "global_step": 9, "uncer_net_state_dict": kappa_head, "opt_state": {},
                "backbone_state_dict": net.state_dict()}, tmp_path / "ckpt_e4.pt")
    assert read_checkpoint_meta(tmp_path / "ckpt_e4.pt")["network"] == "ir_evolve_50"
    torch.save({"epoch": 3, "uncer_net_state_dict": kappa_head, "opt_state": {}}, tmp_path / "ckpt_e5.pt")
    with pytest.raises(CheckpointError, match=r"ckpt_e5\.pt: an SCF checkpoint with only the confidence head"):
        load_backbone(str(tmp_path / "ckpt_e5.pt"))


def test_elasticface_backbone_pth_is_insightface_layout(tmp_path):
    net = tiny("iresnet18")
    torch.save(net.state_dict(), tmp_path / "295672backbone.pth")
    meta = read_checkpoint_meta(tmp_path / "295672backbone.pth")
    assert (meta["format"], meta["network"], meta["step"]) == ("state_dict", "iresnet18", 295672)


# -- errors -------------------------------------------------------------------------------------


def test_unknown_layout_lists_the_known_ones_and_the_first_keys(tmp_path):
    torch.save({"encoder.stem.weight": torch.zeros(8, 3, 3, 3), "encoder.blocks.0.w": torch.zeros(8)},
               tmp_path / "x.pth")
    with pytest.raises(CheckpointError) as err:
        load_backbone(str(tmp_path / "x.pth"))
    text = str(err.value)
    assert "x.pth" in text and "'encoder.stem.weight'" in text
    assert "AdaFace's Lightning .ckpt" in text and "MagFace" in text and "CurricularFace" in text


def test_another_depth_names_the_file_and_the_keys(tmp_path):
    torch.save(tiny("ir_50").state_dict(), tmp_path / "ir50.pth")
    with pytest.raises(CheckpointError) as err:
        load_weights(tiny("ir_18"), tmp_path / "ir50.pth")
    assert "ir50.pth" in str(err.value) and "body.2." in str(err.value) and "ir_50" in str(err.value)


# -- every layout of the authors' networks is named -----------------------------------------------


@pytest.mark.parametrize("layout", sorted(p.name for p in LAYOUTS.glob("*.json")))
def test_infer_network_names_every_authors_network(layout):
    spec = json.loads((LAYOUTS / layout).read_text())
    state = {key: torch.empty(shape, device="meta") for key, shape in spec["keys"].items()}
    backbone, _ = extract_backbone_state({"state_dict": state}, layout)
    name, kwargs, _ = infer_network(backbone)
    assert name == spec["ours"] and kwargs == {}


def test_magface_file_gives_the_embeddings_of_magface_network(tmp_path):
    # magface_iresnet18.npy: MagFace's own iresnet18 (eps 2e-5) with tests/test_irse.fill_state's
    # weights on seeded_inputs(); the file is written as their DDP trainer saves it
    from test_irse import fill_state, seeded_inputs

    spec = json.loads((LAYOUTS / "magface_iresnet18.json").read_text())
    weights = fill_state(get_backbone("iresnet18")).state_dict()
    state = {f"features.module.{k}": v for k, v in weights.items()}
    state["fc.weight"] = torch.randn(spec["keys"]["fc.weight"])
    assert {k.replace("features.module.", "features."): list(v.shape) for k, v in state.items()} == spec["keys"]
    torch.save({"epoch": 25, "arch": "iresnet18", "state_dict": state}, tmp_path / "magface_epoch_00025.pth")
    loaded, _ = load_backbone(str(tmp_path / "magface_epoch_00025.pth"))
    with torch.no_grad():
        ours = loaded(seeded_inputs()).numpy()
    expected = np.load(LAYOUTS / "magface_iresnet18.npy")
    scale = np.abs(expected).max()
    assert np.abs(ours - expected).max() < 1e-6 * scale
    with torch.no_grad():  # bit-identical with eps 2e-5; built with insightface's 1e-5 it is 2.5e-5 off
        other = fill_state(get_backbone("iresnet18")).eval()(seeded_inputs()).numpy()
    assert np.abs(other - expected).max() > 1e-5 * scale


def test_adaface_ckpt_gives_adaface_network_embeddings_of_the_same_faces(tmp_path):
    # adaface_ir_18.npy: AdaFace's own IR-18 on seeded_inputs() taken as BGR; we feed the RGB image
    from test_irse import fill_state, seeded_inputs

    torch.save(lightning_ckpt(fill_state(get_backbone("ir_18"))), tmp_path / "adaface_ir18_casia.ckpt")
    loaded, meta = load_backbone(str(tmp_path / "adaface_ir18_casia.ckpt"))
    with torch.no_grad():
        ours = loaded(seeded_inputs().flip(1)).numpy()
    expected = np.load(LAYOUTS / "adaface_ir_18.npy")
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
