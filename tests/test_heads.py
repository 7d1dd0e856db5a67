"""losses/heads: every margin head against its formula, gradients, Partial FC's column blocks, training."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from losses import HEADS, get_head
from losses.heads import HEAD_PARAMS, head_params
from methods import ContraFaceTraining, SingleBranch
from runs import ToyBackbone
from train import load_training_config as load_config
from utils.errors import ConfigError

S = 64.0


def logits_of(name, cosine, labels, norms=None, target=None, seed=None, **params):
    """margin_logits of a fresh head on a hand-made cosine block (target cosine read from it)."""
    head = get_head(name, 2, cosine.shape[1], **params)
    if seed is not None:  # after building: the kernel's init draws from the global RNG too
        torch.manual_seed(seed)
    labels = torch.tensor(labels)
    if target is None:
        picked = cosine.gather(1, labels.clamp(min=0)[:, None]).squeeze(1)
        target = torch.where(labels >= 0, picked, torch.full_like(picked, float("nan")))
    norms = torch.ones(len(labels), 1) if norms is None else norms
    return head.margin_logits(cosine, labels, target, norms), head


def arc(c, m):
    return math.cos(math.acos(c) + m)


# --------------------------------------------------------------------------------------------
# formulas on hand-made cosines
def test_arcface_target_logit_and_no_switch_past_pi():
    cosine = torch.tensor([[0.5, 0.2, -0.1], [-0.95, 0.3, 0.1], [0.4, 0.6, 0.2]])
    out, _ = logits_of("arcface", cosine, [0, 0, -1])
    assert out[0, 0].item() == pytest.approx(S * arc(0.5, 0.5), abs=1e-4)
    # theta = 2.82 rad, theta + m > pi: still cos(theta + m) (the ElasticFace form), here -0.9834
    assert out[1, 0].item() == pytest.approx(S * arc(-0.95, 0.5), abs=1e-4)
    assert out[1, 0].item() == pytest.approx(S * -0.98341, abs=1e-3)
    assert torch.allclose(out[0, 1:], S * cosine[0, 1:]) and torch.allclose(out[2], S * cosine[2])


def test_cosface_and_combined_targets():
    cosine = torch.tensor([[0.5, 0.2], [0.1, -0.7]])
    out, _ = logits_of("cosface", cosine, [0, 1])
    assert torch.allclose(out, S * torch.tensor([[0.15, 0.2], [0.1, -1.05]]))
    out, _ = logits_of("combined", cosine, [0, -1], m1=0.9, m2=0.3, m3=0.2, s=10.0)
    assert out[0, 0].item() == pytest.approx(10 * (math.cos(0.9 * math.acos(0.5) + 0.3) - 0.2), abs=1e-5)
    assert torch.allclose(out[0, 1:], 10 * cosine[0, 1:]) and torch.allclose(out[1], 10 * cosine[1])
    out, _ = logits_of("combined", cosine[:1], [0])  # defaults m1 1, m2 0.3, m3 0.2, s 64
    assert out[0, 0].item() == pytest.approx(S * (arc(0.5, 0.3) - 0.2), abs=1e-4)


def test_mv_am_hard_negatives_adaptive_fixed_and_easy_margin():
    cosine = torch.tensor([[0.6, 0.5, 0.1, -0.3], [-0.2, -0.5, -0.6, 0.0]])
    out, _ = logits_of("mv_am", cosine, [0, 0])
    # row 0: hard iff cos > 0.6 - 0.35 = 0.25 -> column 1: 1.2 * 0.5 + 0.2 = 0.8; target 0.25
    assert torch.allclose(out[0], 32 * torch.tensor([0.25, 0.8, 0.1, -0.3]))
    # row 1: cos_y = -0.2 <= 0 keeps no margin (easy margin); hard iff cos > -0.55
    assert torch.allclose(out[1], 32 * torch.tensor([-0.2, 1.2 * -0.5 + 0.2, -0.6, 0.2]))
    fixed, _ = logits_of("mv_am", cosine, [0, 0], adaptive=False)
    assert torch.allclose(fixed[0], 32 * torch.tensor([0.25, 0.7, 0.1, -0.3]))


def test_mv_arc_rule_uses_cos_theta_plus_m():
    cosine = torch.tensor([[0.6, 0.3, 0.2, -0.3]])
    threshold = arc(0.6, 0.35)  # 0.2818: column 1 is hard, column 2 is not
    assert 0.2 < threshold < 0.3
    out, _ = logits_of("mv_arc", cosine, [0], t=0.1)
    expected = [arc(0.6, 0.35), 1.1 * 0.3 + 0.1, 0.2, -0.3]
    assert out[0].tolist() == pytest.approx([32 * e for e in expected], abs=1e-4)


def test_curricularface_formula_branch_and_state_after_two_calls():
    head = get_head("curricularface", 2, 3)
    cosine = torch.tensor([[0.6, 0.5, 0.1], [-0.95, 0.2, -0.99]])
    labels = torch.tensor([0, 0])
    target = cosine[:, 0].clone()
    out = head.margin_logits(cosine, labels, target, torch.ones(2, 1))
    t1 = 0.01 * (0.6 - 0.95) / 2
    assert head.t.item() == pytest.approx(t1, abs=1e-9)
    # row 0: hard iff cos > cos(acos 0.6 + 0.5) = 0.1049 -> column 1 only, cos * (t + cos)
    assert out[0].tolist() == pytest.approx([S * arc(0.6, 0.5), S * 0.5 * (t1 + 0.5), S * 0.1], abs=1e-4)
    # row 1: theta + m > pi -> cos - m sin m; every column above cos(theta + m) = -0.98 is hard
    assert out[1, 0].item() == pytest.approx(S * (-0.95 - 0.5 * math.sin(0.5)), abs=1e-4)
    assert out[1, 1].item() == pytest.approx(S * 0.2 * (t1 + 0.2), abs=1e-4)
    assert out[1, 2].item() == pytest.approx(S * -0.99, abs=1e-4)
    # second call: t from ALL rows given, also those whose class lives elsewhere (label -1)
    head.margin_logits(cosine, torch.tensor([-1, 0]), torch.tensor([0.3, 0.1]), torch.ones(2, 1))
    assert head.t.item() == pytest.approx(0.01 * 0.2 + 0.99 * t1, abs=1e-9)


def test_magface_margin_from_the_norm_and_easy_margin():
    cosine = torch.tensor([[0.5, 0.1], [0.5, 0.1], [0.5, 0.1], [-0.2, 0.1]])
    norms = torch.tensor([[20.0], [150.0], [5.0], [60.0]])
    out, _ = logits_of("magface", cosine, [0, 0, 0, 0], norms=norms)
    for row, margin in enumerate([0.45 + 0.35 * 10 / 100, 0.8, 0.45]):  # a = 20, 110 (clamped), 10
        assert out[row, 0].item() == pytest.approx(S * arc(0.5, margin), abs=1e-4)
    assert out[3, 0].item() == pytest.approx(S * -0.2)  # cos_y <= 0: no margin
    assert torch.allclose(out[:, 1], S * cosine[:, 1])


def test_magface_regularizer_value_and_gradient():
    head = get_head("magface", 2, 2)
    norms = torch.tensor([[20.0], [150.0], [5.0], [50.0]], requires_grad=True)
    reg = head.regularizer(norms)
    a = [20.0, 110.0, 10.0, 50.0]
    assert reg.item() == pytest.approx(35 * sum(x / 110**2 + 1 / x for x in a) / 4, rel=1e-6)
    reg.backward()
    # d/da of lambda_g * mean(a / u_a^2 + 1 / a) inside [l_a, u_a]; clamped rows get none
    expected = [35 / 4 * (1 / 110**2 - 1 / 400), 0.0, 0.0, 35 / 4 * (1 / 110**2 - 1 / 2500)]
    assert norms.grad.squeeze(1).tolist() == pytest.approx(expected, rel=1e-5, abs=1e-9)
    assert get_head("arcface", 2, 2).regularizer(norms).item() == 0.0


def test_adaface_clipping_at_plus_minus_one_and_state():
    head = get_head("adaface", 2, 3, h=100.0)  # a large h drives every z to the +-1 clip
    cosine = torch.tensor([[0.5, 1.0, 0.2], [0.5, -1.0, 0.2], [0.999, 0.0, 0.0]])
    labels = torch.tensor([0, 0, 0])
    norms = torch.tensor([[90.0], [1e-6], [500.0]])
    out = head.margin_logits(cosine, labels, cosine[:, 0].clone(), norms)
    safe = torch.tensor([90.0, 0.001, 100.0])
    mu1 = 0.01 * safe.mean().item() + 0.99 * 20
    sigma1 = 0.01 * safe.std().item() + 0.99 * 100
    assert (head.batch_mean.item(), head.batch_std.item()) == pytest.approx((mu1, sigma1), rel=1e-6)
    m = 0.4
    # z = +1 (large norm): cos(theta - m) - 2m; z = -1 (small norm): cos(theta + m) - 0
    assert out[0, 0].item() == pytest.approx(S * (math.cos(math.acos(0.5) - m) - 2 * m), abs=1e-3)
    assert out[1, 0].item() == pytest.approx(S * arc(0.5, m), abs=1e-3)
    # theta - m < eps is clipped to eps; cos 0.999 stays (the clamp is at 1 - 1e-3)
    assert out[2, 0].item() == pytest.approx(S * (math.cos(1e-3) - 2 * m), abs=1e-3)
    # every cosine is clamped to +-(1 - 1e-3) first
    assert (out[0, 1].item(), out[1, 1].item()) == pytest.approx((S * 0.999, -S * 0.999), abs=1e-4)
    head.margin_logits(cosine, labels, cosine[:, 0].clone(), torch.tensor([[10.0], [20.0], [30.0]]))
    assert head.batch_mean.item() == pytest.approx(0.01 * 20 + 0.99 * mu1, rel=1e-6)
    assert head.batch_std.item() == pytest.approx(0.01 * 10 + 0.99 * sigma1, rel=1e-6)


def test_adaface_scaler_inside_the_clip():
    head = get_head("adaface", 2, 2)
    norms = torch.tensor([[30.0], [10.0]])
    cosine = torch.tensor([[0.5, 0.1], [0.5, 0.1]])
    out = head.margin_logits(cosine, torch.tensor([0, 0]), cosine[:, 0], norms)
    mu = 0.01 * 20 + 0.99 * 20
    sigma = 0.01 * math.sqrt(200) + 0.99 * 100
    for row, n in enumerate([30.0, 10.0]):
        z = (n - mu) / (sigma + 1e-3) * 0.333
        expected = math.cos(math.acos(0.5) - 0.4 * z) - (0.4 + 0.4 * z)
        assert out[row, 0].item() == pytest.approx(S * expected, abs=1e-4)


def test_elastic_margins_come_from_the_global_rng():
    cosine = torch.tensor([[0.5, 0.1], [0.2, 0.3], [0.7, -0.1]])
    out, _ = logits_of("elastic_arc", cosine, [0, 1, 0], seed=7)
    torch.manual_seed(7)
    margins = torch.normal(0.5, 0.05, size=(3,)).tolist()
    for row, (col, m) in enumerate(zip([0, 1, 0], margins)):
        assert out[row, col].item() == pytest.approx(S * arc(cosine[row, col].item(), m), abs=1e-4)
    out, _ = logits_of("elastic_cos", cosine, [0, 1, -1], std=0.1, seed=7)
    torch.manual_seed(7)
    margins = torch.normal(0.35, 0.1, size=(3,)).tolist()
    assert out[:, 0].tolist() == pytest.approx([S * (0.5 - margins[0]), S * 0.2, S * 0.7], abs=1e-4)
    assert out[1, 1].item() == pytest.approx(S * (0.3 - margins[1]), abs=1e-4)


def test_elastic_plus_assigns_sorted_margins_by_the_authors_indexing():
    # target cosines 0.2, 0.9, 0.5, 0.1: descending order = rows [1, 2, 0, 3]; ElasticFace's code
    # gives row k the sorted margin at position order[k]
    cosine = torch.tensor([[0.2], [0.9], [0.5], [0.1]])
    out, _ = logits_of("elastic_cos", cosine, [0, 0, 0, 0], plus=True, std=0.2, seed=3)
    torch.manual_seed(3)
    ranked = sorted(torch.normal(0.35, 0.2, size=(4,)).tolist())
    for row, position in enumerate([1, 2, 0, 3]):
        assert out[row, 0].item() == pytest.approx(S * (cosine[row, 0].item() - ranked[position]), abs=1e-4)


# --------------------------------------------------------------------------------------------
# the composition: forward, loss, -1 rows, Partial FC's column blocks, state, dtypes
def full_cosine_labels(name, n=6, c=5, d=4, seed=0):
    torch.manual_seed(seed)
    head = get_head(name, d, c)
    emb = torch.randn(n, d) * 30  # norms inside MagFace's [10, 110]
    labels = torch.randint(0, c, (n,))
    return head, emb, labels


@pytest.mark.parametrize("name", list(HEADS))
def test_column_block_with_minus_one_labels_matches_the_full_head(name):
    head, emb, labels = full_cosine_labels(name)
    state = copy.deepcopy(head.state_dict())
    torch.manual_seed(11)
    full = head(emb, labels)
    full_state = copy.deepcopy(head.state_dict())
    head.load_state_dict(state)
    cols = torch.tensor([1, 3, 4])
    cosine = head.cosine(emb)
    where = (labels[:, None] == cols[None]).long()
    block_labels = torch.where(where.any(1), where.argmax(1), torch.full_like(labels, -1))
    target = cosine.gather(1, labels[:, None]).squeeze(1).detach()
    norms = emb.norm(dim=1, keepdim=True)
    torch.manual_seed(11)
    block = head.margin_logits(cosine[:, cols], block_labels, target, norms)
    assert (block_labels == -1).any() and (block_labels >= 0).any()
    assert torch.allclose(block, full[:, cols], atol=1e-5)
    for key, value in head.state_dict().items():
        assert torch.allclose(value, full_state[key]), key


@pytest.mark.parametrize("name", list(HEADS))
def test_unlabelled_rows_get_plain_scaled_cosines(name):
    head, emb, labels = full_cosine_labels(name)
    labels[2] = -1
    logits = head(emb, labels)
    cosine = head.cosine(emb)
    if name == "adaface":
        cosine = cosine.clamp(-1 + 1e-3, 1 - 1e-3)
    assert torch.allclose(logits[2], head.s * cosine[2], atol=1e-5)
    loss = head.loss(emb, labels)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("name", list(HEADS))
def test_loss_is_cross_entropy_plus_regularizer(name):
    head, emb, labels = full_cosine_labels(name)
    state = copy.deepcopy(head.state_dict())
    torch.manual_seed(5)
    loss = head.loss(emb, labels)
    head.load_state_dict(state)
    torch.manual_seed(5)
    expected = F.cross_entropy(head(emb, labels), labels) + head.regularizer(emb.norm(dim=1, keepdim=True))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


class _Loss(nn.Module):
    """head.loss as a module call, so functional_call can swap in the class centers."""

    def __init__(self, head):
        super().__init__()
        self.head = head

    def forward(self, embeddings, labels):
        return self.head.loss(embeddings, labels)


@pytest.mark.parametrize("name", list(HEADS))
def test_gradcheck_float64(name):
    torch.manual_seed(0)
    head = get_head(name, 4, 3, **({"std": 0.1} if name.startswith("elastic") else {})).double()
    emb = (torch.randn(5, 4, dtype=torch.float64) * 30).requires_grad_(True)
    kernel = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 1, 0])
    if hasattr(head, "update_state"):
        # the backward treats t / mu / sigma as constants (no_grad in the authors' code too):
        # hold them fixed so the finite differences see the same function
        head.update_state = lambda *args: None
    if name == "adaface":
        # AdaFace detaches the norms (its margin carries no gradient): hold z at its value too
        z = head.margin_scaler(emb.detach().norm(dim=1, keepdim=True))
        head.margin_scaler = lambda norms: z

    def run(module, e, k):
        torch.manual_seed(1)  # the same elastic margins at every evaluation
        return functional_call(module, {"head.kernel" if module is not head else "kernel": k}, (e, labels))

    assert head(emb, labels).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda e, k: run(head, e, k), (emb, kernel), eps=1e-6, atol=1e-5, fast_mode=True)
    loss = _Loss(head)
    assert torch.autograd.gradcheck(lambda e, k: run(loss, e, k), (emb, kernel), eps=1e-6, atol=1e-5)


def test_state_is_saved_and_restored_exactly():
    for name, keys in (("curricularface", ["t"]), ("adaface", ["batch_mean", "batch_std"])):
        head, emb, labels = full_cosine_labels(name)
        head(emb, labels)
        head(emb * 0.5, labels)
        restored = get_head(name, 4, 5)
        restored.load_state_dict(head.state_dict())
        assert sorted(k for k in head.state_dict() if k != "kernel") == sorted(keys)
        assert torch.equal(restored(emb, labels), head(emb, labels))
        for key in keys:
            assert torch.equal(restored.state_dict()[key], head.state_dict()[key])


def test_methods_log_the_head_state():
    head = get_head("curricularface", 8, 6)
    head.t.fill_(0.25)
    assert SingleBranch(ToyBackbone(), head).extra_state() == {"t": 0.25}
    method = ContraFaceTraining(ToyBackbone(), get_head("adaface", 8, 6), switch_epoch=0)
    state = method.extra_state()
    assert set(state) == {"margin", "norm_mean", "norm_std"} and all(v.dim() == 0 for v in state.values())
    assert (state["norm_mean"].item(), state["norm_std"].item()) == (20.0, 100.0)
    assert SingleBranch(ToyBackbone(), get_head("arcface", 8, 6)).extra_state() == {}


@pytest.mark.parametrize("name", ["arcface", "curricularface", "adaface", "magface"])
def test_fp32_under_autocast(name):
    head, emb, labels = full_cosine_labels(name)
    state = copy.deepcopy(head.state_dict())
    reference = head(emb, labels)
    head.load_state_dict(state)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(emb, labels)
        loss = head.loss(emb, labels)
    assert logits.dtype == torch.float32 and loss.dtype == torch.float32
    assert torch.equal(logits, reference)


# --------------------------------------------------------------------------------------------
# the registry and the config
def test_registry_defaults_and_errors():
    assert get_head("ArcFace", 4, 3).m == 0.5 and get_head("cosface", 4, 3, m=None).m == 0.35
    assert get_head("mv_arc", 4, 3).s == 32.0 and get_head("elastic_cos", 4, 3).std == 0.05
    assert get_head("mv_am", 4, 3, adaptive=False).adaptive is False
    with pytest.raises(ValueError, match=r"unknown head 'adafase'; did you mean 'adaface'.*known: arcface"):
        get_head("adafase", 4, 3)
    with pytest.raises(ValueError, match=r"head 'cosface' takes no parameter 'h' \(its parameters: s, m\)"):
        get_head("cosface", 4, 3, h=0.3)
    assert set(HEAD_PARAMS) == {p for head in HEADS.values() for p in head.param_names}


def test_config_head_parameters_default_to_the_heads_own():
    cfg = load_config()
    assert all(cfg[key] is None for key in HEAD_PARAMS)
    cfg = load_config(overrides=["head=cosface"])
    assert cfg.m is None and get_head(cfg.head, 4, 3, **head_params(cfg)).m == 0.35  # not ArcFace's 0.5
    cfg = load_config(overrides=["head=magface", "lambda_g=20", "u_a=100"])
    head = get_head(cfg.head, 4, 3, **head_params(cfg))
    assert (head.lambda_g, head.u_a, head.l_a, head.s) == (20.0, 100.0, 10.0, 64.0)
    cfg = load_config(overrides=["head=mv_am", "m=0.4", "adaptive=False", "s=30"])
    assert (cfg.m, cfg.adaptive, cfg.s) == (0.4, False, 30.0) and isinstance(cfg.s, float)
    cfg = load_config(overrides=["head=elastic_arc", "plus=True"])
    assert cfg.plus is True
    cfg = load_config(overrides=["head=elastic_arc", "plus=true"])
    assert cfg.plus is True


def test_config_rejects_unknown_heads_and_foreign_parameters():
    with pytest.raises(ConfigError, match=r"head 'arcfce' .*did you mean 'arcface'.*known: arcface, cosface"):
        load_config(overrides=["head=arcfce"])
    params = r"\(its parameters: s, l_a, u_a, l_m, u_m, lambda_g;"
    with pytest.raises(ConfigError, match=r"h=0.5: head 'magface' takes no parameter 'h' " + params):
        load_config(overrides=["head=magface", "h=0.5"])
    with pytest.raises(ConfigError, match=r"m='big': head 'arcface' expects a number \(default 0.5\)"):
        load_config(overrides=["m=big"])


# --------------------------------------------------------------------------------------------
# every head trains in both methods
@pytest.mark.parametrize("method", ["single", "contraface"])
@pytest.mark.parametrize("name", list(HEADS))
def test_every_head_trains_in_both_methods(name, method):
    torch.manual_seed(0)
    centers = torch.randn(6, 16) * 2
    labels = torch.arange(6).repeat(8)
    images = centers[labels] + torch.randn(48, 16)
    backbone = ToyBackbone()
    head = get_head(name, 8, 6)
    if method == "single":
        model = SingleBranch(backbone, head, dropout=0.1)
    else:
        model = ContraFaceTraining(backbone, head, switch_epoch=0, dropout=0.1, dropout2=0.1)
        model.set_epoch(0)  # stage 2: head.loss once per view
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(20):
        out = model(images, labels)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(out["logs"]["L1"].item())
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses  # MagFace 0.75 (its regulariser), others < 0.4


def test_config_names_are_case_insensitive():
    cfg = load_config(overrides=["head=ArcFace", "method=ContraFace"])
    assert (cfg.head, cfg.method) == ("arcface", "contraface")  # the registered spelling is kept
