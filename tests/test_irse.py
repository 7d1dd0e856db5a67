"""Tests for backbones/irse.py: the authors' key layouts and embeddings, the ContraFace interface.

The reference files in tests/data/released_layouts/ were written by the authors' own code (AdaFace
``net.py``, CurricularFace ``backbone/model_irse.py``), run outside this repository; their README
says how. The embeddings there were computed with the weights of :func:`fill_state` on the inputs
of :func:`seeded_inputs`, so both functions must stay as they are.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import backbones
from backbones import BACKBONES, get_backbone
from backbones.complexity import count_flops, count_parameters
from backbones.irse import IRNet

LAYOUTS = Path(__file__).parent / "data" / "released_layouts"

# Canonical name -> the authors' network (its layout file, and our builder's name).
AUTHORS = {
    "ir_18": "adaface_ir_18",
    "ir_34": "adaface_ir_34",
    "ir_50": "adaface_ir_50",
    "ir_101": "adaface_ir_101",
    "ir_152": "adaface_ir_152",
    "ir_200": "adaface_ir_200",
    "ir_se_18": "adaface_ir_se_18",
    "ir_se_34": "adaface_ir_se_34",
    "ir_se_50": "adaface_ir_se_50",
    "ir_se_101": "adaface_ir_se_101",
    "ir_se_152": "adaface_ir_se_152",
    "ir_se_200": "adaface_ir_se_200",
    "ir_evolve_50": "evolve_ir_50",
    "ir_evolve_101": "evolve_ir_101",
    "ir_evolve_152": "evolve_ir_152",
    "ir_se_evolve_50": "evolve_ir_se_50",
    "ir_se_evolve_101": "evolve_ir_se_101",
    "ir_se_evolve_152": "evolve_ir_se_152",
}
ALIASES = {
    "ir_100": "ir_101",
    "ir_se_100": "ir_se_101",
    "ir_evolve_100": "ir_evolve_101",
    "ir_se_evolve_100": "ir_se_evolve_101",
}
# The networks whose authors' embeddings are stored (the fastest of each form, with and without SE).
EMBEDDED = ["adaface_ir_18", "adaface_ir_se_50", "evolve_ir_50", "evolve_ir_se_50"]
# One tiny network of each block kind and form, for the interface tests.
TINY = ["ir_18", "ir_se_18", "ir_152", "ir_se_evolve_50"]


def fill_state(model: nn.Module, seed: int = 0) -> nn.Module:
    """Overwrite every state-dict tensor from one seeded generator, keys in sorted order.

    Weights are scaled by 0.5 / sqrt(fan-in) so activations stay moderate through 50 blocks;
    BN running variances lie in [0.5, 1.5], so the eval-mode division is well conditioned.
    """
    rng = np.random.default_rng(seed)
    state = model.state_dict()
    with torch.no_grad():
        for key in sorted(state):
            tensor = state[key]
            tensor.copy_(torch.from_numpy(_fill_value(key, tuple(tensor.shape), rng)))
    return model


def _fill_value(key: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """The value fill_state gives one state-dict entry (chosen by its name and shape)."""
    if key.endswith("num_batches_tracked"):
        return np.zeros(shape, dtype=np.int64)
    if key.endswith("running_var"):
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if key.endswith(("running_mean", "bias")):
        return 0.1 * rng.standard_normal(shape, dtype=np.float32)
    if len(shape) >= 2:  # conv and Linear weights
        return np.float32(0.5 / math.sqrt(math.prod(shape[1:]))) * rng.standard_normal(shape, dtype=np.float32)
    return rng.uniform(0.5, 1.5, shape).astype(np.float32)  # BN scales, PReLU slopes


def seeded_inputs(seed: int = 1) -> torch.Tensor:
    """The two deterministic 112x112 images the stored embeddings were computed on."""
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((2, 3, 112, 112), dtype=np.float32))


def on_meta(name: str, **kw) -> nn.Module:
    """Full-size model without allocating weights (keys and shapes only)."""
    with torch.device("meta"):
        return get_backbone(name, **kw)


def tiny(name: str, **kw) -> IRNet:
    """A width-8 network with 32-d embeddings, fast on a CPU."""
    kw.setdefault("width", 8)
    kw.setdefault("num_features", 32)
    return get_backbone(name, **kw)


def layout(authors_name: str) -> dict:
    """The stored layout file of one authors' network."""
    return json.loads((LAYOUTS / f"{authors_name}.json").read_text())


# ---------------------------------------------------------------- registry and layouts


def test_every_ir_builder_has_a_name_a_layout_and_aliases():
    ir_names = [n for n, b in BACKBONES.items() if b.__module__ == "backbones.irse"]
    assert ir_names == _registration_order()
    for name, authors_name in AUTHORS.items():
        assert BACKBONES[name] is getattr(backbones, authors_name)
        assert (LAYOUTS / f"{authors_name}.json").is_file()
    for alias, name in ALIASES.items():
        assert BACKBONES[alias] is BACKBONES[name]
    assert backbones.IRNet is IRNet


def _registration_order() -> list[str]:
    """Canonical names first, each alias right after its canonical name (as registered)."""
    order: list[str] = []
    for name in AUTHORS:
        order.append(name)
        order += [a for a, n in ALIASES.items() if n == name]
    return order


@pytest.mark.parametrize("name", list(AUTHORS))
def test_state_dict_keys_and_shapes_are_the_authors(name):
    spec = layout(AUTHORS[name])
    assert spec["ours"] == name
    expected = spec["keys"]
    ours = {k: list(v.shape) for k, v in on_meta(name).state_dict().items()}
    # Same keys in the same order, and the same shapes.
    assert list(ours) == list(expected)
    assert ours == expected


@pytest.mark.parametrize("authors_name", EMBEDDED)
def test_seeded_weights_give_the_authors_embeddings(authors_name):
    with torch.device("meta"):
        model = getattr(backbones, authors_name)()
    model = fill_state(model.to_empty(device="cpu")).eval()
    expected = torch.from_numpy(np.load(LAYOUTS / f"{authors_name}.npy"))
    with torch.no_grad():
        ours = model(seeded_inputs())
    assert ours.shape == expected.shape == (2, 512)
    scale = expected.abs().max().item()
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5 * scale)


def test_fill_state_is_deterministic_and_sane():
    a, b = fill_state(tiny("ir_se_18")), fill_state(tiny("ir_se_18"))
    for (key, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), key
    assert all((v > 0).all() for k, v in a.state_dict().items() if k.endswith("running_var"))


# ---------------------------------------------------------------- structure


def test_forms_differ_where_the_authors_do():
    adaface = on_meta("ir_se_50").state_dict()
    evolve = on_meta("ir_se_evolve_50").state_dict()
    # AdaFace/TFace: a BN after the first conv (index 2), SE by name; face.evoLVe: PReLU at 2, SE at 5.
    assert "body.0.res_layer.2.running_var" in adaface and "body.0.res_layer.se_block.fc1.weight" in adaface
    assert "body.0.res_layer.2.weight" in evolve and "body.0.res_layer.2.running_var" not in evolve
    assert evolve["body.0.res_layer.5.fc1.weight"].shape == (4, 64, 1, 1)
    # The first block keeps 64 channels: a weightless max-pool shortcut; the second stage's a conv.
    assert not any(k.startswith("body.0.shortcut_layer") for k in adaface)
    assert adaface["body.3.shortcut_layer.0.weight"].shape == (128, 64, 1, 1)
    # No duplicate dropout keys: the dropout is output_layer[1], which has none.
    assert not any("dropout" in k for k in adaface)


def test_the_two_ir_152_are_different_networks():
    adaface, evolve = on_meta("ir_152"), on_meta("ir_evolve_152")
    assert adaface.output_layer[3].in_features == 2048 * 49
    assert evolve.output_layer[3].in_features == 512 * 49
    assert "body.0.res_layer.7.weight" in adaface.state_dict()
    assert len(adaface.body) == len(evolve.body) == 3 + 8 + 36 + 3


def test_width_scales_channels():
    basic, bottleneck = tiny("ir_50", width=16).state_dict(), tiny("ir_200", width=4).state_dict()
    assert basic["input_layer.0.weight"].shape == (16, 3, 3, 3)
    assert basic["output_layer.3.weight"].shape == (32, 128 * 49)
    assert bottleneck["body.0.res_layer.1.weight"].shape == (4, 4, 1, 1)  # 1x1 down to channels/4
    assert bottleneck["output_layer.3.weight"].shape == (32, 128 * 49)  # 32 x width


def _kaiming_fan_out_std(weight: torch.Tensor) -> float:
    """The std of kaiming_normal_(mode="fan_out", nonlinearity="relu") for this weight's shape."""
    return math.sqrt(2 / (weight.shape[0] * math.prod(weight.shape[2:])))


def test_default_initialisation_is_the_authors():
    torch.manual_seed(0)
    model = tiny("ir_se_50", width=16)
    conv = model.body[5].res_layer[4].weight  # a 32 -> 32 3x3 conv of the second stage
    assert conv.std().item() == pytest.approx(_kaiming_fan_out_std(conv), rel=0.05)
    # The SE convs are kaiming too: the authors' xavier for fc1 is overwritten by their init loop.
    fc1 = model.body[-1].res_layer.se_block.fc1.weight  # (8, 128, 1, 1)
    assert fc1.std().item() == pytest.approx(_kaiming_fan_out_std(fc1), rel=0.1)
    linear = model.output_layer[3]
    assert linear.weight.std().item() == pytest.approx(math.sqrt(2 / 32), rel=0.05) and not linear.bias.any()
    bn = model.output_layer[0]
    assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and not bn.bias.any()
    assert model.dropout_p == 0.4 and not model.output_layer[4].affine


@pytest.mark.parametrize("name", ["ir_50", "ir_se_200", "ir_evolve_101"])
def test_parameter_count_is_the_authors(name):
    shapes = layout(AUTHORS[name])["keys"]
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    expected = sum(math.prod(s) for k, s in shapes.items() if not k.endswith(buffers))
    assert count_parameters(on_meta(name)) == expected


def test_flops_of_ir_evolve_101():
    # iresnet100's 12.12 G less its stage-1 1x1 downsample conv and each block's BN after conv 1.
    assert count_flops(on_meta("ir_evolve_101")) / 1e9 == pytest.approx(12.10, abs=0.01)


# ---------------------------------------------------------------- the ContraFace interface


@pytest.mark.parametrize("name", TINY)
def test_trunk_head_and_dropout_views(name):
    torch.manual_seed(0)
    model = tiny(name, dropout=0.5)
    x = torch.randn(2, 3, 112, 112)
    channels = model.output_layer[0].num_features
    model.eval()
    with torch.no_grad():
        flat = model.forward_trunk(x)
        emb = model(x)
        a, b = model.double_forward(x)
    assert flat.shape == (2, channels * 49) and emb.shape == (2, 32)
    torch.testing.assert_close(model.forward_head(flat), emb)
    assert torch.equal(a, b) and torch.equal(a, emb)
    model.train()
    with torch.no_grad():
        a, b = model.double_forward(x)
    assert (a - b).abs().max() > 1e-3


def test_dropout_p_is_the_authors_dropout_layer():
    model = tiny("ir_18")
    assert model.dropout is model.output_layer[1]
    model.dropout_p = 0.2
    assert model.output_layer[1].p == 0.2
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.0"):
        model.dropout_p = 1.0
    assert tiny("ir_18", dropout=0.0).dropout_p == 0.0


@pytest.mark.parametrize("name", TINY)
def test_one_sgd_step_trains(name):
    torch.manual_seed(0)
    model = tiny(name)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, target = torch.randn(4, 3, 112, 112), torch.randn(4, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = (model(x) - target).pow(2).mean()
    loss.backward()
    for key in ["input_layer.0.weight", "body.0.res_layer.1.weight", "output_layer.3.weight"]:
        assert model.get_parameter(key).grad.abs().sum() > 0, key
    opt.step()
    after = model.state_dict()
    assert torch.isfinite(loss)
    assert not torch.equal(before["input_layer.0.weight"], after["input_layer.0.weight"])
    # Train mode updated the BN statistics.
    assert not torch.equal(before["output_layer.4.running_mean"], after["output_layer.4.running_mean"])


# ---------------------------------------------------------------- errors


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="IRNet: width must be >= 1, got 0"):
        tiny("ir_18", width=0)
    with pytest.raises(ValueError, match="IRNet: num_features must be >= 1, got 0"):
        tiny("ir_18", num_features=0)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.5"):
        tiny("ir_18", dropout=1.5)
    with pytest.raises(ValueError, match=r"IRNet: layers must be 4 positive block counts, got \[2, 2, 2\]"):
        IRNet([2, 2, 2])
    with pytest.raises(ValueError, match="evoLVe.*no bottleneck"):
        IRNet([1, 1, 1, 1], bottleneck=True, evolve=True, width=4)
    with pytest.raises(TypeError, match="IR-50: use_se is fixed by the network's name"):
        get_backbone("ir_50", use_se=True)
    with pytest.raises(TypeError, match="fp16"):
        get_backbone("ir_evolve_50", fp16=True)


def test_wrong_input_size_is_a_clear_error():
    with pytest.raises(ValueError, match="IRNet: input of size 96x96 gives a 6x6 final .*112"):
        tiny("ir_18")(torch.randn(2, 3, 96, 96))
