"""Tests for backbones/: registry, insightface state-dict layout, double_forward, complexity."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import backbones
from backbones import BACKBONES, get_backbone, list_backbones
from backbones.complexity import REFERENCE_GMACS, count_flops, count_parameters, main
from backbones.iresnet import IResNet
from backbones.mobilefacenet import MobileFaceNet
from utils.errors import UnknownNameError

STAGES = {
    "iresnet18": [2, 2, 2, 2],
    "iresnet34": [3, 4, 6, 3],
    "iresnet50": [3, 4, 14, 3],
    "iresnet100": [3, 13, 30, 3],
    "iresnet200": [6, 26, 60, 6],
}
BN = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]


def tiny(name: str = "iresnet18", **kw) -> nn.Module:
    """A small iresnet (width 8) for fast CPU tests."""
    kw.setdefault("width", 8)
    kw.setdefault("num_features", 32)
    return get_backbone(name, **kw)


def small(kind: str, **kw) -> nn.Module:
    """A fast model of either family: iresnet18 at width 8, or a one-block-per-stage mbf."""
    if kind == "iresnet":
        return tiny("iresnet18", **kw)
    return MobileFaceNet(blocks=(1, 1, 1, 1), scale=1, **kw)


def on_meta(name: str, **kw) -> nn.Module:
    """Full-size model without allocating weights (keys, shapes and FLOPs only)."""
    with torch.device("meta"):
        return get_backbone(name, **kw)


def insightface_iresnet_keys(layers: list[int], use_se: bool = False) -> list[str]:
    """State-dict keys of insightface arcface_torch's iresnet, in order (+ ContraFace SE keys)."""
    keys = ["conv1.weight", *(f"bn1.{k}" for k in BN), "prelu.weight"]
    for stage, n_blocks in enumerate(layers, start=1):
        for i in range(n_blocks):
            p = f"layer{stage}.{i}."
            keys += [p + f"bn1.{k}" for k in BN] + [p + "conv1.weight"]
            keys += [p + f"bn2.{k}" for k in BN] + [p + "prelu.weight", p + "conv2.weight"]
            keys += [p + f"bn3.{k}" for k in BN]
            if i == 0:
                keys += [p + "downsample.0.weight"] + [p + f"downsample.1.{k}" for k in BN]
            if use_se:
                keys += [p + "se_block.fc1.weight", p + "se_block.fc2.weight"]
    keys += [f"bn2.{k}" for k in BN] + ["fc.weight", "fc.bias"] + [f"features.{k}" for k in BN]
    return keys


# ---------------------------------------------------------------- registry


def test_registry_names_and_aliases():
    names = list_backbones()
    for n in [*STAGES, "mobilefacenet", "mbf", "mobilefacenet_large", "mbf_large"]:
        assert n in names
    for depth in [18, 34, 50, 100, 200]:
        assert BACKBONES[f"r{depth}"] is BACKBONES[f"iresnet{depth}"]
    assert BACKBONES["mbf"] is BACKBONES["mobilefacenet"]
    assert BACKBONES["mbf_large"] is BACKBONES["mobilefacenet_large"]
    assert names == sorted(BACKBONES)
    assert backbones.iresnet50 is BACKBONES["iresnet50"]


def test_get_backbone_unknown_name_lists_known_and_suggests():
    with pytest.raises(UnknownNameError) as e:
        get_backbone("iresnt50")
    assert isinstance(e.value, ValueError)
    msg = str(e.value)
    assert msg.startswith("unknown backbone 'iresnt50'; did you mean 'iresnet50'? (known: iresnet18, r18, ")
    assert "r100" in msg and "mobilefacenet" in msg
    with pytest.raises(ValueError, match=r"unknown backbone 'zzz' \(known: .*r50"):
        get_backbone("zzz")
    assert isinstance(get_backbone("MBF"), MobileFaceNet)  # any case


def test_get_backbone_drops_none_arguments():
    # one call for every backbone: the options a backbone lacks are passed as None
    torch.manual_seed(0)
    mbf = get_backbone("mbf", num_features=16, use_se=None, width=None)
    assert isinstance(mbf, MobileFaceNet) and mbf.features.layers[3].num_features == 16
    r18 = tiny("r18", use_se=None, dropout=None)
    assert not r18.use_se and r18.width == 8 and r18.dropout_p == 0.0
    assert tiny("r18", use_se=True).use_se


def test_get_backbone_rejects_unknown_keyword():
    # One way to do AMP (in the training loop): no fp16 argument on the network.
    with pytest.raises(TypeError, match="fp16"):
        get_backbone("iresnet18", fp16=True)
    with pytest.raises(TypeError):
        get_backbone("mbf", use_se=True)


def test_builder_argument_validation():
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.0"):
        tiny(dropout=1.0)
    with pytest.raises(ValueError, match="width"):
        tiny(width=0)


# ---------------------------------------------------------------- shapes


# One name per builder (aliases share builders; checked in test_registry_names_and_aliases).
CANONICAL = [n for n, builder in BACKBONES.items() if n == builder.__name__]


@pytest.mark.parametrize("name", CANONICAL)
def test_every_backbone_output_shape(name):
    torch.manual_seed(0)
    builder = BACKBONES[name]
    is_mbf = isinstance(on_meta(name), MobileFaceNet)
    model = builder(num_features=24) if is_mbf else builder(num_features=24, width=8)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():  # one trunk pass; forward() == forward_head(dropout(forward_trunk()))
        flat = model.forward_trunk(x)
        emb = model.forward_head(model.dropout(flat))
    assert flat.shape == (2, 512 if is_mbf else 8 * 8 * 49)
    assert emb.shape == (2, 24)
    assert torch.isfinite(emb).all()


def test_wrong_input_size_is_a_clear_error():
    with pytest.raises(ValueError, match="IResNet: input of size 96x64 gives a 6x4 final .*112"):
        tiny()(torch.randn(2, 3, 96, 64))
    with pytest.raises(ValueError, match="MobileFaceNet: input of size 64x64 gives a 4x4 final"):
        small("mbf")(torch.randn(2, 3, 64, 64))


# ---------------------------------------------------------------- state-dict layout


@pytest.mark.parametrize("name", list(STAGES))
def test_iresnet_state_dict_keys_match_insightface(name):
    sd = on_meta(name).state_dict()
    assert list(sd) == insightface_iresnet_keys(STAGES[name])
    # Also under the insightface short alias.
    assert list(on_meta("r" + name[len("iresnet"):]).state_dict()) == list(sd)


def test_iresnet50_exact_shapes():
    sd = on_meta("iresnet50").state_dict()
    expected = {
        "conv1.weight": (64, 3, 3, 3),
        "prelu.weight": (64,),
        "layer1.0.conv1.weight": (64, 64, 3, 3),
        "layer1.0.downsample.0.weight": (64, 64, 1, 1),
        "layer2.0.conv1.weight": (128, 64, 3, 3),
        "layer2.0.conv2.weight": (128, 128, 3, 3),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "layer3.13.prelu.weight": (256,),
        "layer4.0.conv1.weight": (512, 256, 3, 3),
        "layer4.2.bn3.running_var": (512,),
        "bn2.weight": (512,),
        "fc.weight": (512, 25088),
        "fc.bias": (512,),
        "features.weight": (512,),
        "features.running_mean": (512,),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    # Parameter count of insightface r50 (43.59M, 512 of them the frozen features.weight).
    model = on_meta("iresnet50")
    assert count_parameters(model) == 43_590_848
    assert count_parameters(model, trainable_only=True) == 43_590_848 - 512


def test_width_scales_channels_and_fc():
    model = tiny("iresnet34", width=16, num_features=64)
    sd = model.state_dict()
    assert list(sd) == insightface_iresnet_keys(STAGES["iresnet34"])
    assert sd["conv1.weight"].shape == (16, 3, 3, 3)
    assert sd["layer4.0.conv2.weight"].shape == (128, 128, 3, 3)
    assert sd["fc.weight"].shape == (64, 128 * 49)


def test_se_variant_keys_as_contraface():
    sd = on_meta("iresnet50", use_se=True).state_dict()
    assert list(sd) == insightface_iresnet_keys(STAGES["iresnet50"], use_se=True)
    assert sum(".se_block." in k for k in sd) == 2 * sum(STAGES["iresnet50"])
    # Reduction 16, no bias (ContraFace's SEModule).
    assert sd["layer1.0.se_block.fc1.weight"].shape == (4, 64, 1, 1)
    assert sd["layer1.0.se_block.fc2.weight"].shape == (64, 4, 1, 1)
    assert sd["layer4.2.se_block.fc1.weight"].shape == (32, 512, 1, 1)
    assert not any("se_block" in k for k in on_meta("iresnet50").state_dict())


def test_se_changes_the_output():
    torch.manual_seed(0)
    plain = tiny(width=16)
    se = tiny(width=16, use_se=True)
    se.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(4, 3, 112, 112)
    assert not torch.allclose(plain(x), se(x))


def test_insightface_style_checkpoint_round_trip(tmp_path):
    src = tiny("iresnet18", width=8)
    path = tmp_path / "backbone.pth"
    torch.save(src.state_dict(), path)
    dst = tiny("r18", width=8)
    dst.load_state_dict(torch.load(path, weights_only=True), strict=True)
    src.eval(), dst.eval()
    x = torch.randn(2, 3, 112, 112)
    assert torch.equal(src(x), dst(x))


def test_mobilefacenet_keys_and_shapes_as_insightface():
    sd = on_meta("mbf").state_dict()
    assert len(sd) == 333
    assert sd["layers.0.layers.0.weight"].shape == (128, 3, 3, 3)
    assert sd["layers.1.layers.0.weight"].shape == (128, 2, 3, 3)  # groups=64
    assert sd["layers.2.layers.1.layers.0.weight"].shape == (128, 1, 3, 3)  # depthwise
    assert sd["layers.3.layers.3.layers.2.layers.0.weight"].shape == (128, 128, 1, 1)
    assert sd["conv_sep.layers.0.weight"].shape == (512, 256, 1, 1)
    assert sd["features.layers.0.layers.0.weight"].shape == (512, 1, 7, 7)
    assert sd["features.layers.2.weight"].shape == (512, 512)
    assert "features.layers.2.bias" not in sd
    assert sd["features.layers.3.running_var"].shape == (512,)
    large = on_meta("mbf_large").state_dict()
    assert len(large) == 606
    assert large["layers.1.layers.1.layers.0.layers.0.weight"].shape == (128, 256, 1, 1)
    assert large["conv_sep.layers.0.weight"].shape == (512, 512, 1, 1)


# ---------------------------------------------------------------- head and init


def test_features_bn_weight_fixed_at_one():
    torch.manual_seed(0)
    model = tiny(dropout=0.4)
    assert not model.features.weight.requires_grad
    assert torch.equal(model.features.weight, torch.ones(32))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5, momentum=0.9)
    for _ in range(2):
        a, b = model.double_forward(torch.randn(4, 3, 112, 112))
        loss = (a[:, 0] - 3).pow(2).sum() + (b[:, 1] + 2).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model.features.weight.grad is None
    assert torch.equal(model.features.weight, torch.ones(32))
    assert model.features.bias.abs().sum() > 0  # the bias does train


def test_weight_init_as_insightface():
    torch.manual_seed(0)
    model = get_backbone("iresnet18")
    w = model.layer3[0].conv1.weight
    assert abs(w.std().item() - 0.1) < 0.002
    assert abs(w.mean().item()) < 0.002
    assert torch.equal(model.layer3[0].bn2.weight, torch.ones(256))
    assert torch.equal(model.layer3[0].bn2.bias, torch.zeros(256))
    zero = tiny(zero_init_residual=True)
    assert all(torch.all(m.bn2.weight == 0) for m in zero.modules() if hasattr(m, "bn3"))


def test_dropout_p_property():
    model = tiny(dropout=0.4)
    assert model.dropout_p == pytest.approx(0.4) and model.dropout.p == pytest.approx(0.4)
    model.dropout_p = 0.6  # the stage switch
    assert model.dropout.p == pytest.approx(0.6)
    with pytest.raises(ValueError, match="dropout"):
        model.dropout_p = -0.1
    mbf = get_backbone("mbf", dropout=0.2)
    assert mbf.dropout_p == pytest.approx(0.2)
    mbf.dropout_p = 0.5
    assert mbf.dropout.p == pytest.approx(0.5)


# ---------------------------------------------------------------- double_forward


@pytest.mark.parametrize("kind", ["iresnet", "mbf"])
def test_double_forward_p0_equals_forward(kind):
    torch.manual_seed(0)
    model = small(kind, num_features=32)
    x = torch.randn(4, 3, 112, 112)
    with torch.no_grad():
        a, b = model.double_forward(x)
        single = model(x)
    torch.testing.assert_close(a, single, rtol=0, atol=1e-6)
    torch.testing.assert_close(b, single, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["iresnet", "mbf"])
def test_double_forward_eval_gives_identical_embeddings(kind):
    torch.manual_seed(0)
    model = small(kind, dropout=0.6)
    with torch.no_grad():
        model(torch.randn(4, 3, 112, 112))  # non-trivial running stats
        model.eval()
        x = torch.randn(3, 3, 112, 112)
        a, b = model.double_forward(x)
        single = model(x)
    assert torch.equal(a, b)
    torch.testing.assert_close(a, single, rtol=0, atol=1e-6)


def capture_views(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run double_forward with an identity head; return the trunk output and the two views."""
    flat = model.forward_trunk(x).detach()
    views: list[torch.Tensor] = []
    model.forward_head = lambda f: views.append(f.detach()) or f  # instance override
    model.double_forward(x)
    del model.forward_head
    return flat, views


@pytest.mark.parametrize("kind", ["iresnet", "mbf"])
@torch.no_grad()
def test_double_forward_masks_are_independent_inverted_dropout(kind):
    torch.manual_seed(0)
    p = 0.6
    model = small(kind, dropout=p)
    x = torch.randn(4, 3, 112, 112)
    model.eval()  # freeze BN so the trunk gives the same map on both calls
    model.dropout.train()  # ... while dropout stays active
    trunk_calls = []
    first = model.layers[0] if kind == "mbf" else model.conv1
    handle = first.register_forward_hook(lambda *a: trunk_calls.append(1))
    flat, (v1, v2) = capture_views(model, x)
    handle.remove()
    assert len(trunk_calls) == 2  # one for the reference flat, ONE for double_forward
    assert (flat != 0).all()
    keep1, keep2 = v1 != 0, v2 != 0
    n = flat.numel()
    assert n >= 2048
    # Each mask drops ~p of the units ...
    assert abs((~keep1).float().mean().item() - p) < 0.05
    assert abs((~keep2).float().mean().item() - p) < 0.05
    # ... independently: both dropped with probability p^2, and the masks differ.
    assert abs((~keep1 & ~keep2).float().mean().item() - p * p) < 0.05
    assert (keep1 != keep2).float().mean().item() > 0.3
    # Inverted dropout: kept units scaled by 1/(1-p).
    torch.testing.assert_close(v1[keep1], flat[keep1] / (1 - p))
    torch.testing.assert_close(v2[keep2], flat[keep2] / (1 - p))


def test_double_forward_train_outputs_differ_and_gradients_flow_through_both():
    # float64 so that grad(a + b) == grad(a) + grad(b) holds to rounding.
    model = tiny(dropout=0.5).double()
    x = torch.randn(4, 3, 112, 112, dtype=torch.float64)
    target = torch.randn(4, 32, dtype=torch.float64)

    def grads(use_a: bool, use_b: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(123)  # same masks on every call
        model.zero_grad(set_to_none=True)
        a, b = model.double_forward(x)
        loss = use_a * (a - target).pow(2).sum() + use_b * (b - target).pow(2).sum()
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    torch.manual_seed(123)
    a, b = model.double_forward(x)
    assert (a - b).abs().max() > 1e-2
    ga, gb, gab = grads(True, False), grads(False, True), grads(True, True)
    for name in ["conv1.weight", "layer1.0.conv1.weight", "fc.weight", "features.bias"]:
        assert ga[name].abs().sum() > 0 and gb[name].abs().sum() > 0, name
        if name != "features.bias":  # its gradient only sees batch sums, equal for both views
            assert not torch.allclose(ga[name], gb[name]), name
        torch.testing.assert_close(gab[name], ga[name] + gb[name], rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------- complexity


def test_count_flops_small_model_by_hand():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.PReLU(4),
        nn.Flatten(), nn.Linear(4 * 8 * 8, 10),
    )
    # conv 8*8*4 outputs x 27 MACs; BN 2 per element; PReLU 1; linear 256*10 + bias 10.
    expected = 256 * 27 + 256 * 2 + 256 + 256 * 10 + 10
    assert count_flops(model, (1, 3, 8, 8)) == expected
    assert count_flops(model, (2, 3, 8, 8)) == 2 * expected
    assert model.training  # mode restored
    assert count_parameters(model) == 108 + 8 + 4 + 2570


@pytest.mark.parametrize("name", ["iresnet50", "iresnet100"])
def test_flops_match_published_numbers(name):
    gmacs = count_flops(on_meta(name)) / 1e9
    assert abs(gmacs / REFERENCE_GMACS[name] - 1) < 0.02
    assert REFERENCE_GMACS["iresnet50"] == 6.3


def test_flops_mobilefacenet_and_width():
    # insightface lists mbf at 0.45 GFLOPs (MACs).
    assert abs(count_flops(on_meta("mbf")) / 1e9 - 0.45) < 0.01
    # Convolution cost scales with width^2.
    r18, r18_half = count_flops(on_meta("iresnet18")), count_flops(on_meta("iresnet18", width=32))
    assert 3.5 < r18 / r18_half < 4.1


def test_complexity_cli(capsys):
    assert main(["iresnet18", "--width", "8"]) == 0
    assert main(["mbf", "r50"]) == 0
    out = capsys.readouterr().out
    assert "GMACs" in out
    rows = {ln.split()[0]: ln.split() for ln in out.splitlines()}
    expected = count_flops(on_meta("iresnet18", width=8)) / 1e9
    assert float(rows["iresnet18"][2]) == pytest.approx(expected, abs=1e-3)
    assert rows["mbf"][2] == "0.449"
    # r50 is compared with its published 6.3 GMACs.
    assert rows["r50"][2:] == ["6.330", "12.660", "6.3", "(1.005x)"]
    with pytest.raises(SystemExit):
        main(["mbf", "--width", "8"])
    with pytest.raises(SystemExit) as e:
        main(["iresnet5"])
    assert e.value.code == 2
    assert "did you mean 'iresnet50'" in capsys.readouterr().err


def test_is_iresnet_instance():
    assert isinstance(tiny(), IResNet)
