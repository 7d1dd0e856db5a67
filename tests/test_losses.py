"""ContraFace loss, margin heads and training methods against plain reference computations."""

import math

import pytest
import torch
import torch.nn.functional as F

from losses import ArcFace, ContraFace, CosFace, get_head
from methods import ContraFaceTraining, SingleBranch
from runs import ToyBackbone


def contra_loop(f1, f2, labels, s, m_prev, ema=0.99):
    """The ContraFace loss (the authors' formula) written as plain loops: returns (loss, new margin)."""
    n = len(labels)
    def unit(rows):
        return [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in rows]

    a, b = unit(f1.tolist()), unit(f2.tolist())
    lab = labels.tolist()
    sim = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            value = min(1.0, max(-1.0, sum(x * y for x, y in zip(a[i], b[j]))))
            sim[i][j] = 0.0 if (i != j and lab[i] == lab[j]) else value
    gaps = []
    for i in range(n):
        hardest = max(0.0 if j == i else sim[i][j] for j in range(n))
        gaps.append(sim[i][i] - hardest)
    m = ema * (sum(gaps) / n) + (1 - ema) * m_prev
    loss = 0.0
    for i in range(n):
        logits = [s * (sim[i][j] - (m if j == i else 0.0)) for j in range(n)]
        top = max(logits)
        loss += -(logits[i] - top - math.log(sum(math.exp(x - top) for x in logits)))
    return loss / n, m


def test_contraface_matches_loop_over_consecutive_calls():
    torch.manual_seed(0)
    criterion = ContraFace(s=64.0)
    m_ref = 0.0
    for _ in range(4):
        f1, f2 = torch.randn(12, 8, dtype=torch.float64), torch.randn(12, 8, dtype=torch.float64)
        f2 = f1 + 0.3 * f2  # views of the same images are similar
        labels = torch.tensor([0, 1, 1, 2, 3, 3, 3, 4, 5, 6, 6, 7])
        loss = criterion(f1.float(), f2.float(), labels)
        loss_ref, m_ref = contra_loop(f1.float().double(), f2.float().double(), labels, 64.0, m_ref)
        assert criterion.m == pytest.approx(m_ref, abs=1e-6)
        assert loss.item() == pytest.approx(loss_ref, rel=1e-4, abs=1e-4)
    assert criterion.m > 0.1  # positives are much closer than negatives here


def test_contraface_margin_rule_and_configurable_ema():
    f1 = torch.eye(3)
    f2 = torch.eye(3)  # positives 1, hardest negatives 0 -> batch margin exactly 1
    labels = torch.arange(3)
    criterion = ContraFace()
    criterion(f1, f2, labels)
    assert criterion.m == pytest.approx(0.99)
    criterion(f1, f2, labels)
    assert criterion.m == pytest.approx(0.99 * 1 + 0.01 * 0.99)
    other = ContraFace(ema=0.5)
    other(f1, f2, labels)
    assert other.m == pytest.approx(0.5)


def test_contraface_same_class_entries_get_no_gradient():
    f1 = torch.randn(6, 5, requires_grad=True)
    f2 = torch.randn(6, 5, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    sim = ContraFace().similarity(f1, f2, labels)
    assert sim[0, 1] == 0 and sim[3, 5] == 0 and sim[5, 4] == 0
    assert sim[0, 0] != 0 and sim[0, 2] != 0
    # gradient w.r.t. f2[1] from row 0 only flows through the masked entry -> zero
    sim[0, 1].backward()
    assert torch.count_nonzero(f2.grad) == 0


def test_contraface_margin_is_saved_in_state_dict():
    criterion = ContraFace()
    criterion(torch.eye(4), torch.eye(4), torch.arange(4))
    restored = ContraFace()
    restored.load_state_dict(criterion.state_dict())
    assert restored.m == criterion.m


def test_arcface_and_cosface_logits():
    torch.manual_seed(1)
    emb = torch.randn(5, 4)
    labels = torch.tensor([0, 2, 1, -1, 2])
    arc = ArcFace(4, 3, s=64.0, m=0.5)
    cos = F.normalize(emb) @ F.normalize(arc.kernel, dim=0)
    logits = arc(emb, labels)
    for i, y in enumerate(labels.tolist()):
        for j in range(3):
            expected = math.cos(math.acos(cos[i, j].item()) + (0.5 if j == y else 0.0)) * 64
            assert logits[i, j].item() == pytest.approx(expected, abs=1e-3)
    cosface = CosFace(4, 3, s=30.0, m=0.35)
    cos = F.normalize(emb) @ F.normalize(cosface.kernel, dim=0)
    expected = (cos - 0.35 * F.one_hot(labels.clamp(min=0), 3) * (labels != -1)[:, None]) * 30
    assert torch.allclose(cosface(emb, labels), expected, atol=1e-5)


def test_arcface_gradient_is_finite_for_perfectly_aligned_sample():
    head = ArcFace(3, 2)
    emb = head.kernel.detach()[:, 0:1].t().clone().requires_grad_(True)
    loss = F.cross_entropy(head(emb, torch.tensor([0])), torch.tensor([0]))
    loss.backward()
    assert torch.isfinite(emb.grad).all() and torch.isfinite(head.kernel.grad).all()


def test_get_head_errors():
    assert get_head("ArcFace", 4, 3).m == 0.5
    assert get_head("cosface", 4, 3).m == 0.35
    with pytest.raises(ValueError, match="did you mean 'arcface'"):
        get_head("arcfase", 4, 3)


def test_contraface_training_switches_stage_at_first_shrink_epoch():
    method = ContraFaceTraining(ToyBackbone(6, 10, 4), ArcFace(4, 3), switch_epoch=7, dropout=0.4, dropout2=0.6)
    for epoch in range(7):
        method.set_epoch(epoch)
        assert not method.double and method.backbone.dropout_p == 0.4
    method.set_epoch(7)
    assert method.double and method.backbone.dropout_p == 0.6
    out = method(torch.randn(8, 6), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))
    assert set(out["logs"]) == {"L1", "L2", "LC"}
    out["loss"].backward()
    assert method.head.kernel.grad is not None and method.backbone.trunk.weight.grad is not None


def test_double_branch_loss_is_the_weighted_sum():
    torch.manual_seed(3)
    backbone = ToyBackbone(6, 10, 4)
    method = ContraFaceTraining(backbone, ArcFace(4, 3), switch_epoch=0, weights=(0.5, 0.5, 0.05, 0.0))
    method.set_epoch(0)
    x, y = torch.randn(8, 6), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    torch.manual_seed(5)
    out = method(x, y)
    torch.manual_seed(5)
    x1, x2 = backbone.double_forward(x)
    reference = ContraFace()
    expected = (
        0.5 * F.cross_entropy(method.head(x1, y), y)
        + 0.5 * F.cross_entropy(method.head(x2, y), y)
        + 0.05 * reference(x1, x2, y)
    )
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert method.contra.m == pytest.approx(reference.m)


def test_single_branch_is_plain_margin_softmax():
    torch.manual_seed(4)
    method = SingleBranch(ToyBackbone(6, 10, 4), CosFace(4, 3), dropout=0.0)
    x, y = torch.randn(5, 6), torch.tensor([0, 1, 2, 1, 0])
    expected = F.cross_entropy(method.head(method.backbone(x), y), y)
    assert method(x, y)["loss"].item() == pytest.approx(expected.item())
