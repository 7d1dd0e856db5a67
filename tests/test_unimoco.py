"""UniMoCo (losses/unimoco.py): the unified loss against its formula, queues, momentum, shuffle, DDP."""

import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from backbones import get_backbone
from losses import UnifiedContrastive
from methods import build_method
from methods.unimoco import UniMoCo, batch_shuffle, batch_unshuffle, make_projection
from train import load_training_config as load_config
from utils.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def facecl_loss(logits, targets, margin=0.0):
    """FaceCL's formula as written (direct sums of exponentials), per row."""
    sum_neg = ((1 - targets) * torch.exp(logits + margin)).sum(1)
    sum_pos = (targets * torch.exp(-logits)).sum(1)
    return torch.log(1 + sum_neg * sum_pos)


# --------------------------------------------------------------------------------------------
# the loss
# --------------------------------------------------------------------------------------------
def test_spec_example():
    logits = torch.tensor([[1.0, 0.0, -1.0, 2.0], [0.5, 0.5, -0.5, 0.0]])
    targets = torch.tensor([[1.0, 0, 0, 1], [0, 0, 0, 0]])
    loss = UnifiedContrastive(0.0)(logits, targets)
    assert loss.item() == pytest.approx(0.261872033, abs=1e-8)
    # row 0 by hand: log(1 + (e^0 + e^-1)(e^-1 + e^-2)); row 1 has no positive: 0
    row0 = math.log(1 + (1 + math.exp(-1)) * (math.exp(-1) + math.exp(-2)))
    assert loss.item() == pytest.approx(row0 / 2, abs=1e-7)


def test_margin_in_logit_units_and_bool_targets():
    logits = torch.tensor([[0.0, 1.0, 2.0]])
    targets = torch.tensor([[True, False, False]])
    expected = math.log(1 + (math.exp(1.5) + math.exp(2.5)) * math.exp(0.0))
    assert UnifiedContrastive(0.5)(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_matches_facecl_formula_on_random_rows():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 40, generator=generator, dtype=torch.float64) * 3
    targets = (torch.rand(16, 40, generator=generator, dtype=torch.float64) < 0.2).double()
    targets[:, 0] = 1  # every row has a positive and a negative
    targets[:, 1] = 0
    ours = UnifiedContrastive(0.3).per_row(logits, targets)
    torch.testing.assert_close(ours, facecl_loss(logits, targets, 0.3), rtol=1e-12, atol=1e-12)


def test_rows_without_positive_or_negative_give_zero_and_no_nan():
    logits = torch.tensor([[3.0, -2.0, 1.0], [0.1, 0.2, 0.3], [1.0, 2.0, 3.0]], requires_grad=True)
    targets = torch.tensor([[0.0, 0, 0], [1, 1, 1], [0, 1, 0]])
    per_row = UnifiedContrastive(0.0).per_row(logits, targets)
    assert per_row[0].item() == 0.0 and per_row[1].item() == 0.0
    row2 = math.log(1 + (math.exp(1) + math.exp(3)) * math.exp(-2))
    assert per_row[2].item() == pytest.approx(row2, rel=1e-6)
    per_row.mean().backward()
    assert torch.isfinite(logits.grad).all()
    assert torch.equal(logits.grad[:2], torch.zeros(2, 3))
    # d/dl of log(1 + S_neg S_pos) / 3: negatives get p * e^l / S_neg, the positive -p
    s = (math.exp(1) + math.exp(3)) * math.exp(-2)
    p = s / (1 + s) / 3
    expected = [p * math.exp(1) / (math.exp(1) + math.exp(3)), -p, p * math.exp(3) / (math.exp(1) + math.exp(3))]
    torch.testing.assert_close(logits.grad[2], torch.tensor(expected), rtol=1e-5, atol=1e-7)


def test_no_overflow_where_facecl_sums_overflow():
    # exp(100) overflows fp32; log(1 + e^(100 + 0) * e^(-50)) = 50 + log(1 + e^-50)
    logits = torch.tensor([[50.0, 100.0]])
    targets = torch.tensor([[1.0, 0.0]])
    assert UnifiedContrastive(0.0)(logits, targets).item() == pytest.approx(50.0, rel=1e-7)
    assert not torch.isfinite(facecl_loss(logits, targets)).all()


def test_gradcheck_float64():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 7, dtype=torch.float64, generator=generator, requires_grad=True)
    targets = (torch.rand(5, 7, generator=generator) < 0.3).double()
    targets[0] = 0  # a row with no positive
    targets[1, :3] = 1
    assert torch.autograd.gradcheck(lambda x: UnifiedContrastive(0.2)(x, targets), (logits,))


def test_fp32_under_autocast():
    logits = torch.randn(4, 9).bfloat16()
    targets = torch.zeros(4, 9)
    targets[:, 0] = 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = UnifiedContrastive(0.0)(logits, targets)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, facecl_loss(logits.float(), targets).mean(), rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------
def tiny_model(K=16, dim=8, **kw):
    torch.manual_seed(0)
    backbone = get_backbone("iresnet18", width=4, num_features=16)
    return UniMoCo(backbone, embedding_size=16, dim=dim, K=K, **kw)


def test_projection_heads():
    assert isinstance(make_projection(512, 128), torch.nn.Linear)
    assert [m.out_features for m in make_projection(512, 128, "same_in")[::2]] == [512, 128]
    assert [m.out_features for m in make_projection(512, 128, "same_out")[::2]] == [128, 128]
    assert [m.out_features for m in make_projection(512, 128, 256)[::2]] == [256, 128]
    with pytest.raises(ValueError, match="moco_mlp=True"):
        make_projection(512, 128, True)
    with pytest.raises(ValueError, match="moco_mlp='wide'"):
        make_projection(512, 128, "wide")


def test_initial_state():
    model = tiny_model(K=16, dim=8)
    assert model.queue.shape == (8, 16) and model.label_queue.shape == (16,)
    torch.testing.assert_close(model.queue.norm(dim=0), torch.ones(16))
    assert (model.label_queue == -1).all() and model.queue_ptr.item() == 0
    for (nq, q), (nk, k) in zip(model.backbone.named_parameters(), model.encoder_k.named_parameters()):
        assert nq == nk and torch.equal(q, k) and not k.requires_grad
    assert all(not p.requires_grad for p in model.projection_k.parameters())
    trainable = {id(p) for group in model.param_groups() for p in group["params"]}
    query = [*model.backbone.parameters(), *model.projection_q.parameters()]
    assert trainable == {id(p) for p in query if p.requires_grad}  # iresnet's `features` BN weight is frozen


def test_init_weights_restarts_the_key_encoder_from_the_query():
    model = tiny_model()
    other = get_backbone("iresnet18", width=4, num_features=16)
    model.backbone.load_state_dict(other.state_dict())  # what train.py's init_weights does
    model.backbone_loaded()
    for q, k in zip(model.backbone.state_dict().values(), model.encoder_k.state_dict().values()):
        assert torch.equal(q, k)


def test_momentum_update():
    model = tiny_model(m=0.9)
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(1.0)
        for p in model.projection_q.parameters():
            p.mul_(3.0)
    k_before = [p.clone() for p in model._key_params()]
    q = [p.clone() for p in model._query_params()]
    model.momentum_update()
    for before, after, query in zip(k_before, model._key_params(), q):
        torch.testing.assert_close(after, 0.9 * before + 0.1 * query, rtol=1e-6, atol=1e-6)
    # BN buffers of the key encoder are its own (not averaged)
    model.backbone.bn2.running_mean.fill_(5.0)
    model.momentum_update()
    assert model.encoder_k.bn2.running_mean.abs().max() < 5.0


def test_enqueue_order_and_pointer_wrap():
    model = tiny_model(K=8, dim=3)
    first = F.normalize(torch.arange(12.0).view(4, 3) + 1, dim=1)
    model.enqueue(first, torch.tensor([5, 6, 7, -1]))
    assert model.queue_ptr.item() == 4
    torch.testing.assert_close(model.queue[:, :4], first.T)
    assert model.label_queue.tolist() == [5, 6, 7, -1, -1, -1, -1, -1]
    second = -first
    model.enqueue(second, torch.tensor([1, 2, 3, 4]))
    assert model.queue_ptr.item() == 0  # (4 + 4) mod 8
    model.enqueue(first * 0 + F.normalize(torch.ones(4, 3), dim=1), torch.tensor([9, 9, 9, 9]))
    assert model.queue_ptr.item() == 4
    assert model.label_queue.tolist() == [9, 9, 9, 9, 1, 2, 3, 4]
    torch.testing.assert_close(model.queue[:, 4:], second.T)
    with pytest.raises(ValueError, match="moco_k=8 is not a multiple of the global batch 3"):
        model.enqueue(first[:3], torch.tensor([0, 0, 0]))


def test_targets_from_the_label_queue_after_the_enqueue():
    model = tiny_model(K=8, dim=3)
    model.enqueue(F.normalize(torch.ones(4, 3), dim=1), torch.tensor([2, 3, 3, -1]))
    q = F.normalize(torch.randn(4, 3), dim=1)
    k = F.normalize(torch.randn(4, 3), dim=1)
    logits, targets = model.logits_and_targets(q, k, torch.tensor([3, 3, 9, -1]))
    # the new keys sit in columns 4..7 (labels 3, 3, 9, -1) before the logits are taken
    assert targets.tolist() == [
        [0, 1, 1, 0, 1, 1, 0, 0],
        [0, 1, 1, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 0, 0, 1, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],  # unlabelled: no positive, loss 0 (FaceCL)
    ]
    torch.testing.assert_close(logits, q @ model.queue / 0.07)
    torch.testing.assert_close(model.queue[:, 4:], k.T)
    assert logits.dtype == torch.float32


def test_own_key_positive_variant():
    model = tiny_model(K=8, dim=3, own_key_positive=True)
    queue_before = model.queue.clone()
    q = F.normalize(torch.randn(4, 3), dim=1)
    k = F.normalize(torch.randn(4, 3), dim=1)
    logits, targets = model.logits_and_targets(q, k, torch.tensor([3, 3, -1, 1]))
    assert logits.shape == (4, 9)
    torch.testing.assert_close(logits[:, 0], (q * k).sum(1) / 0.07)
    torch.testing.assert_close(logits[:, 1:], q @ queue_before / 0.07)  # enqueue after the logits
    assert targets[:, 0].tolist() == [1, 1, 1, 1] and targets[:, 1:].sum() == 0
    assert model.label_queue[:4].tolist() == [3, 3, -1, 1]


def test_shuffle_unshuffle_identity_one_process():
    torch.manual_seed(5)
    x = torch.randn(6, 4)
    shuffled, idx_unshuffle = batch_shuffle(x)
    assert not torch.equal(shuffled, x) and sorted(shuffled[:, 0].tolist()) == sorted(x[:, 0].tolist())
    assert torch.equal(batch_unshuffle(shuffled, idx_unshuffle), x)


def test_forward_step():
    model = tiny_model(K=16, dim=8)
    images = torch.randn(4, 2, 3, 112, 112)
    labels = torch.tensor([0, 0, 1, 1])
    out = model(images, labels)
    assert out["loss"].requires_grad and out["loss"].item() > 0
    assert out["logs"]["AvgPos"].item() == 2.0  # own key and the group-mate
    assert model.queue_ptr.item() == 4 and model.label_queue[:4].tolist() == [0, 0, 1, 1]
    out["loss"].backward()
    assert model.backbone.conv1.weight.grad.abs().sum() > 0
    assert model.encoder_k.conv1.weight.grad is None
    stats = model.extra_state()
    assert stats["Q_items"].item() == 4 and stats["Q_labelled"].item() == 0.25
    with pytest.raises(ValueError, match=r"\(N, 2, C, H, W\)"):
        model(images[:, 0], labels)


def test_queue_stats_with_classes():
    model = tiny_model(K=8, dim=3, num_classes=3)
    model.enqueue(F.normalize(torch.ones(4, 3), dim=1), torch.tensor([0, 0, 0, 1]))
    stats = model.queue_stats()
    assert stats["Q_items"].item() == 4 and stats["Q_zeros"].item() == 1
    assert stats["Q_min"].item() == 0 and stats["Q_max"].item() == 3
    assert stats["Q_mean"].item() == pytest.approx(4 / 3)
    ce = -(math.log(3 / 4) + math.log(1 / 4) + math.log(1e-20)) / 3
    assert stats["Q_balance"].item() == pytest.approx(math.log(3) / ce, rel=1e-5)


# --------------------------------------------------------------------------------------------
# two gloo processes against a single-process reference
# --------------------------------------------------------------------------------------------
def make_batch():
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(8, 2, 3, 112, 112, generator=generator)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, -1])
    return images, labels


def ddp_worker(rank, init_file, result_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    backbone = get_backbone("iresnet18", width=4, num_features=16)
    torch.manual_seed(rank)  # each rank draws its own queue: rank 0's must win
    model = UniMoCo(backbone, embedding_size=16, dim=8, K=16, m=0.99, rank=rank, world_size=2)
    with warnings.catch_warnings():  # as train.py: rank-local buffers need broadcast_buffers=False
        warnings.filterwarnings("ignore", message=".*broadcast_buffers", category=FutureWarning)
        ddp = DistributedDataParallel(model, broadcast_buffers=False)
    images, labels = make_batch()
    torch.manual_seed(100)  # the shuffle's randperm
    out = ddp(images[4 * rank : 4 * rank + 4], labels[4 * rank : 4 * rank + 4])
    out["loss"].backward()
    result = {
        "loss": out["loss"].detach(),
        "queue": model.queue.clone(),
        "label_queue": model.label_queue.clone(),
        "ptr": model.queue_ptr.clone(),
        "grads": {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
    }
    torch.save(result, f"{result_file}.{rank}")
    dist.barrier()  # leave together: gloo can abort a rank whose peer tears the group down first
    dist.destroy_process_group()


def reference():
    """One process doing by hand what two ranks of 4 do: per-rank BN batches, rank 0's shuffle."""
    torch.manual_seed(0)
    backbone = get_backbone("iresnet18", width=4, num_features=16)
    torch.manual_seed(0)
    model = UniMoCo(backbone, embedding_size=16, dim=8, K=16, m=0.99)
    queue0 = model.queue.clone()
    images, labels = make_batch()
    q = [F.normalize(model.projection_q(model.backbone(images[4 * r : 4 * r + 4, 0])), dim=1) for r in (0, 1)]
    torch.manual_seed(100)
    with torch.no_grad():
        model.momentum_update()
        perm = torch.randperm(8)
        shuffled = images[:, 1][perm]
        halves = [shuffled[4 * r : 4 * r + 4] for r in (0, 1)]  # each rank's BN batch
        k = torch.cat([F.normalize(model.projection_k(model.encoder_k(half)), dim=1) for half in halves])
        k = k[torch.argsort(perm)]
        model.enqueue(k, labels)
    losses = []
    for r in (0, 1):
        logits = q[r] @ model.queue / model.T
        mine = labels[4 * r : 4 * r + 4, None]
        targets = ((mine == model.label_queue[None]) & (mine != -1)).float()
        losses.append(UnifiedContrastive(0.0)(logits, targets))
    ((losses[0] + losses[1]) / 2).backward()  # DDP averages the ranks' gradients
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return model, queue0, k, losses, grads


def test_two_gloo_processes_match_single_process_reference(tmp_path):
    result_file = tmp_path / "ddp.pt"
    mp.spawn(ddp_worker, args=(str(tmp_path / "init"), str(result_file)), nprocs=2, join=True)
    ranks = [torch.load(f"{result_file}.{r}", weights_only=True) for r in (0, 1)]
    model, queue0, k, losses, grads = reference()
    for r, result in enumerate(ranks):
        # the queues: rank 0's initial ones, then all 8 keys in rank order, on both ranks
        torch.testing.assert_close(result["queue"][:, 8:], queue0[:, 8:], rtol=0, atol=0)
        torch.testing.assert_close(result["queue"][:, :8], k.T, rtol=1e-5, atol=1e-6)
        assert result["label_queue"].tolist() == [0, 0, 1, 1, 2, 2, 3, -1] + [-1] * 8
        assert result["ptr"].item() == 8
        torch.testing.assert_close(result["loss"], losses[r].detach(), rtol=1e-5, atol=1e-6)
    assert ranks[0]["grads"].keys() == grads.keys()
    # DDP's bucketed all-reduce sums in another order (and some gradients are zero up to
    # rounding, e.g. of biases followed by BN): compare at the scale of the largest gradient
    atol = 1e-4 * max(g.abs().max().item() for g in grads.values())
    for name in grads:
        torch.testing.assert_close(ranks[0]["grads"][name], grads[name], rtol=1e-3, atol=atol)
        torch.testing.assert_close(ranks[1]["grads"][name], ranks[0]["grads"][name], rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# config: presets and bad input
# --------------------------------------------------------------------------------------------
PRESETS = ROOT / "configs"


def test_presets_load_with_facecl_values():
    cfg = load_config(str(PRESETS / "ms1mv3_r50_unimoco.py"))
    assert (cfg.method, cfg.network, cfg.dataset, cfg.num_classes, cfg.num_image) == (
        "unimoco", "iresnet50", "ms1mv3", 93431, 5179510
    )
    assert (cfg.batch_size, cfg.samples_per_label, cfg.lr, cfg.momentum, cfg.weight_decay) == (8, 2, 0.2, 0.9, 5e-4)
    assert (cfg.grad_clip, cfg.scheduler, cfg.num_epoch, cfg.moco_dim, cfg.moco_k) == (0.0, "cos", 25, 128, 65536)
    assert (cfg.moco_t, cfg.moco_m, cfg.moco_mlp, cfg.augmentation) == (0.07, 0.999, None, "MoCo2_NoCrop")
    assert cfg.val_targets == ["lfw", "cfp_fp", "agedb_30"] and cfg.output == "work_dirs/ms1mv3_r50_unimoco"
    synthetic = load_config(str(PRESETS / "synthetic_r50_unimoco.py"))
    assert (synthetic.rec, synthetic.network, synthetic.network_width, synthetic.batch_size) == (
        "data/synthetic", "iresnet50", None, 8  # None: the network's own 64
    )
    cpu = load_config(str(PRESETS / "synthetic_unimoco_cpu.py"))
    assert (cpu.network, cpu.network_width, cpu.moco_k % cpu.batch_size) == ("iresnet18", 8, 0)
    # every key of config/config.py exists in a preset
    assert set(load_config()) == set(cfg) == set(cpu)


@pytest.mark.parametrize(
    "override, message",
    [
        ("samples_per_label=3", "batch_size 8 is not a multiple of samples_per_label 3"),
        ("moco_mlp=True", "moco_mlp = True: use None"),
        ("moco_mlp=wide", "moco_mlp 'wide': use None, 'same_in', 'same_out'"),
        ("dali=True", "dali = True: FaceCL's DALI loader is not offered"),
        ("augmentation=MoCo3", "augmentation 'MoCo3' is not one of MoCo2, MoCo2_NoCrop, ArcFace"),
        ("scheduler=cosine", "scheduler 'cosine' is not one of step, cos, poly"),
        ("moco_t=0.0", "moco_t must be positive"),
    ],
)
def test_bad_config_values(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(str(PRESETS / "ms1mv3_r50_unimoco.py"), overrides=[override])


def test_queue_not_a_multiple_of_the_global_batch():
    cfg = load_config(str(PRESETS / "synthetic_unimoco_cpu.py"), overrides=["moco_k=1000", "num_classes=10"])
    with pytest.raises(ConfigError, match="moco_k 1000 is not a multiple of the global batch 64 \\(batch_size 64 x 1"):
        build_method(cfg, get_backbone("iresnet18", width=4, num_features=16))


def test_build_method_from_a_preset():
    cfg = load_config(
        str(PRESETS / "synthetic_unimoco_cpu.py"),
        overrides=["embedding_size=16", "moco_mlp=same_out", "num_classes=10"],
    )
    method = build_method(cfg, get_backbone("iresnet18", width=4, num_features=16, dropout=0.4))
    assert isinstance(method, UniMoCo) and method.backbone.dropout_p == 0.0  # FaceCL: no dropout
    assert method.queue.shape == (128, 4096) and method.T == 0.07 and method.m == 0.999
    assert [m.out_features for m in method.projection_q[::2]] == [128, 128]
