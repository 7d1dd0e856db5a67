"""Two gloo processes on CPU agree with one process that computes the same two local batches.

What DDP changes, as in the reference: each rank's BatchNorm statistics and its ContraFace
similarity matrix (and margin) cover only its local batch; gradients are averaged over ranks.
The single-process reference therefore runs one copy of the method per local batch and
averages their gradients; the DDP run must match it.
"""

import copy
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from easydict import EasyDict as edict
from torch.nn.parallel import DistributedDataParallel

from backbones import get_backbone
from methods import build_method
from utils.distributed import warn_if_restarts_share_store

CFG = edict(
    method="contraface", head="arcface", embedding_size=16, num_classes=5, s=64.0, m=0.5,
    shrink_epoch=[1], dropout=0.4, dropout2=0.6, weight1=0.5, weight2=0.5, weightC=0.05, weightC2=0.0,
    contra_s=64.0, contra_ema=0.99, switch_epoch=None, single=False,
)


def make_method():
    torch.manual_seed(0)
    method = build_method(CFG, get_backbone("iresnet18", width=4, num_features=16))
    method.set_epoch(1)  # the double-branch stage
    return method


def make_batch():
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(8, 3, 112, 112, generator=generator)
    labels = torch.tensor([0, 1, 1, 2, 3, 3, 4, 0])
    return images, labels


def worker(rank, init_file, result_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    method = make_method()
    model = DistributedDataParallel(method, broadcast_buffers=False)  # rank-local buffers, as train.py
    images, labels = make_batch()
    torch.manual_seed(100 + rank)  # each rank's own dropout masks
    out = model(images[4 * rank : 4 * rank + 4], labels[4 * rank : 4 * rank + 4])
    out["loss"].backward()
    if rank == 0:
        grads = {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}
        torch.save({"grads": grads, "margin": method.contra.m}, result_file)
    dist.barrier()  # leave together: gloo can abort a rank whose peer tears the group down first
    dist.destroy_process_group()


def test_two_gloo_processes_match_per_rank_reference(tmp_path):
    result_file = tmp_path / "ddp.pt"
    mp.spawn(worker, args=(str(tmp_path / "init"), str(result_file)), nprocs=2, join=True)
    ddp = torch.load(result_file, weights_only=True)

    images, labels = make_batch()
    base = make_method()
    copies = [copy.deepcopy(base) for _ in range(2)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same kernels as the workers, for a tight tolerance
    try:
        for rank, method in enumerate(copies):
            torch.manual_seed(100 + rank)
            method(images[4 * rank : 4 * rank + 4], labels[4 * rank : 4 * rank + 4])["loss"].backward()
    finally:
        torch.set_num_threads(threads)
    for name, grad in ddp["grads"].items():
        expected = sum(dict(m.named_parameters())[name].grad for m in copies) / 2
        torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-7, msg=lambda m, name=name: f"{name}: {m}")
    assert ddp["margin"] == pytest.approx(copies[0].contra.m)
    assert copies[0].contra.m != pytest.approx(copies[1].contra.m)  # the margin is per rank


@pytest.mark.parametrize("restarts, shared, warned", [("3", "True", True), ("3", "False", False), ("0", "True", False)])
def test_warns_where_torchrun_restarts_share_one_store(restarts, shared, warned):
    environ = {"TORCHELASTIC_MAX_RESTARTS": restarts, "TORCHELASTIC_USE_AGENT_STORE": shared}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_if_restarts_share_store(environ)
    messages = [str(w.message) for w in caught]
    assert any("TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in m and "--max-restarts 3" in m for m in messages) == warned
