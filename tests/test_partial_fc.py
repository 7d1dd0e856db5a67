"""Partial FC: 2 gloo processes equal the single-process full head; sampling; class split; errors.

One spawn of 2 CPU processes runs every check that needs a process group (every head of the
registry at sample_rate 1.0, a sampled step, the world-size error) and saves what each rank
saw; the tests compare it with the single-process head on the whole batch. The slow test runs
train.py as 2 "nodes" x 1 process on loopback (static master and c10d rendezvous) against 1 x 2.
"""

import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from losses import HEADS, PartialFC, get_head
from losses.partial_fc import class_split
from methods import SingleBranch
from methods.sharded_state import checkpoint_centers, sharded_parameter_names
from runs import ROOT
from training import checkpoints

D, C, N_LOCAL, WORLD = 8, 5, 4, 2  # 5 classes on 2 ranks: [0, 3) and [3, 5)
SEED = 1234
SAMPLED_C, SAMPLE_RATE = 20, 0.5  # 10 classes a rank, 5 sampled
RESUME_C, RESUME_N, SAVED_AT = 7, 12, 2  # checkpoint test: 7 classes, global batch 12, saved after step 2


def full_kernel(num_classes=C):
    # unit-scale centers (the heads' std 0.01 init makes kernel gradients ~1e2, blurring a 1e-5 check)
    return torch.randn(D, num_classes, generator=torch.Generator().manual_seed(3))


def global_batch():
    generator = torch.Generator().manual_seed(4)
    embeddings = torch.randn(WORLD * N_LOCAL, D, generator=generator) * 5
    # rank 0's rows are of classes on both ranks, rank 1's too
    labels = torch.tensor([0, 4, 2, 3, 3, 1, 4, 0])
    return embeddings, labels


# ContraFace stage 2 calls the head once per dropout view: the stateful heads update twice
TWO_VIEW_HEADS = [name for name in ("curricularface", "adaface", "magface") if name in HEADS]


def two_views(embeddings):
    return embeddings, embeddings * 0.7 + 0.3


def sampled_batch():
    embeddings = torch.randn(WORLD * N_LOCAL, D, generator=torch.Generator().manual_seed(5)) * 5
    # rank 0's block [0, 10) has positives {1, 7}; rank 1's block [10, 20) has 6 > 5 positives
    labels = torch.tensor([1, 11, 12, 7, 13, 14, 15, 16])
    return embeddings, labels


def worker(rank, init_file, result_file):
    torch.set_num_threads(1)  # first: a forked child must not use the parent's OpenMP pool
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    rows = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
    results = {"heads": {}}
    embeddings, labels = global_batch()
    for name in HEADS:
        pfc = PartialFC(name, D, C)
        start, stop = pfc.class_range
        with torch.no_grad():
            pfc.kernel.copy_(full_kernel()[:, start:stop])
        local = embeddings[rows].clone().requires_grad_()
        torch.manual_seed(SEED)  # ElasticFace draws its margins from the global RNG
        loss = pfc(local, labels[rows])
        loss.backward()
        results["heads"][name] = {
            "range": [start, stop],
            "loss": loss.detach(),
            "embedding_grad": local.grad,
            "kernel_grad": pfc.kernel.grad,
            "buffers": {k: v.clone() for k, v in pfc.head.named_buffers()},
        }

    results["two_views"] = {}
    for name in TWO_VIEW_HEADS:
        pfc = PartialFC(name, D, C)
        start, stop = pfc.class_range
        with torch.no_grad():
            pfc.kernel.copy_(full_kernel()[:, start:stop])
        view1, view2 = (v[rows].clone().requires_grad_() for v in two_views(embeddings))
        loss = 0.5 * pfc.loss(view1, labels[rows]) + 0.5 * pfc.loss(view2, labels[rows])
        loss.backward()
        results["two_views"][name] = {
            "loss": loss.detach(), "grads": [view1.grad, view2.grad], "kernel_grad": pfc.kernel.grad,
            "buffers": {k: v.clone() for k, v in pfc.head.named_buffers()},
        }

    pfc = PartialFC("arcface", D, SAMPLED_C, sample_rate=SAMPLE_RATE)
    start, stop = pfc.class_range
    with torch.no_grad():
        pfc.kernel.copy_(full_kernel(SAMPLED_C)[:, start:stop])
    embeddings, labels = sampled_batch()
    local = embeddings[rows].clone().requires_grad_()
    torch.manual_seed(SEED + rank)
    owned = labels[(labels >= start) & (labels < stop)] - start
    index, _ = pfc.sample(torch.where((labels >= start) & (labels < stop), labels - start, -1))
    torch.manual_seed(SEED + rank)  # the forward draws the same sample again
    loss = pfc(local, labels[rows])
    loss.backward()
    results["sampled"] = {
        "range": [start, stop],
        "index": index + start,
        "positives": torch.unique(owned) + start,
        "loss": loss.detach(),
        "embedding_grad": local.grad,
        "kernel_grad": pfc.kernel.grad,
    }

    try:
        PartialFC("arcface", D, 1)
    except ValueError as exc:
        results["too_few_classes"] = str(exc)

    method, optimizer, model = resume_setup(rank, WORLD)
    for step in range(SAVED_AT):
        train_step(model, optimizer, step, rank, WORLD)
    save(method, optimizer, f"{result_file}.checkpoint", rank)
    results["next_losses"] = [train_step(model, optimizer, step, rank, WORLD) for step in (SAVED_AT, SAVED_AT + 1)]
    torch.save(results, f"{result_file}.{rank}")
    dist.barrier()  # leave together: gloo can abort a rank whose peer tears the group down first
    dist.destroy_process_group()


def resume_setup(rank, world, num_classes=RESUME_C, seed=0):
    """A linear 'backbone' and a Partial FC head in a method, SGD with momentum, DDP on > 1 rank."""
    torch.manual_seed(seed + rank)  # every rank's shard starts differently, as in train.py
    method = SingleBranch(nn.Linear(6, D), PartialFC("cosface", D, num_classes), dropout=0.0)
    optimizer = torch.optim.SGD(method.param_groups(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    model = method
    if world > 1:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(method, sharded_parameter_names(method))
        model = DistributedDataParallel(method)
    return method, optimizer, model


def train_step(model, optimizer, step, rank, world):
    """One SGD step on this rank's rows of global batch ``step``; the loss before the step."""
    generator = torch.Generator().manual_seed(100 + step)
    inputs = torch.randn(RESUME_N, 6, generator=generator)
    labels = torch.randint(0, RESUME_C, (RESUME_N,), generator=generator)
    rows = slice(rank * RESUME_N // world, (rank + 1) * RESUME_N // world)
    loss = model(inputs[rows], labels[rows])["loss"]
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def save(method, optimizer, path, rank):
    """What train.py's save() does, for a method without a real backbone."""
    state = checkpoints.rank_state(method, torch.device("cpu"))
    ranks = [None] * dist.get_world_size()
    dist.all_gather_object(ranks, state)
    method_state = method.checkpoint_state(optimizer)
    if rank == 0:
        checkpoints.save_checkpoint(
            path, method_state=method_state, scaler=None, step=SAVED_AT, epoch=0, ranks=ranks,
            network="linear", network_kwargs={}, callbacks={}, config={},
        )
    dist.barrier()


def resume(rank, world, path):
    """Load the checkpoint on ``world`` ranks; the losses of the next two batches."""
    method, optimizer, model = resume_setup(rank, world, seed=99)
    checkpoint = checkpoints.read_checkpoint(path)
    checkpoints.load_checkpoint(
        checkpoint, method=method, optimizer=optimizer, scaler=None, rank=rank, device=torch.device("cpu"), path=path
    )
    return [train_step(model, optimizer, step, rank, world) for step in (SAVED_AT, SAVED_AT + 1)]


def resume_worker(rank, world, init_file, path, result_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.save(resume(rank, world, path), f"{result_file}.{rank}")
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pfc")
    # fork, not spawn: a spawned child spends seconds importing torch again
    mp.start_processes(worker, args=(str(tmp / "init"), str(tmp / "result")), nprocs=WORLD, start_method="fork")
    results = [torch.load(tmp / f"result.{rank}", weights_only=True) for rank in range(WORLD)]
    results[0]["checkpoint"] = str(tmp / "result.checkpoint")
    return results


def reference(name):
    """The single-process full head on the whole global batch: loss, gradients, buffers."""
    head = get_head(name, D, C)
    with torch.no_grad():
        head.kernel.copy_(full_kernel())
    embeddings, labels = global_batch()
    embeddings.requires_grad_()
    torch.manual_seed(SEED)
    loss = head.loss(embeddings, labels)
    loss.backward()
    return loss.detach(), embeddings.grad, head.kernel.grad, dict(head.named_buffers())


@pytest.mark.parametrize("name", list(HEADS))
def test_two_ranks_equal_the_full_head(ranks, name):
    loss, embedding_grad, kernel_grad, buffers = reference(name)
    for rank, result in enumerate(ranks):
        got = result["heads"][name]
        start, stop = got["range"]
        torch.testing.assert_close(got["loss"], loss, rtol=1e-5, atol=1e-5)
        # the gradient convention: W x d loss / d local embeddings (DDP divides by W again)
        rows = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
        torch.testing.assert_close(got["embedding_grad"] / WORLD, embedding_grad[rows], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got["kernel_grad"], kernel_grad[:, start:stop], rtol=1e-5, atol=1e-5)
        assert got["buffers"].keys() == buffers.keys()
        for key, value in buffers.items():
            torch.testing.assert_close(got["buffers"][key], value, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("name", TWO_VIEW_HEADS)
def test_two_calls_per_step_equal_the_full_head_twice(ranks, name):
    head = get_head(name, D, C)
    with torch.no_grad():
        head.kernel.copy_(full_kernel())
    embeddings, labels = global_batch()
    views = [v.detach().requires_grad_() for v in two_views(embeddings)]
    loss = 0.5 * head.loss(views[0], labels) + 0.5 * head.loss(views[1], labels)
    loss.backward()
    for rank, result in enumerate(ranks):
        got = result["two_views"][name]
        rows = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
        start, stop = result["heads"][name]["range"]
        torch.testing.assert_close(got["loss"], loss.detach(), rtol=1e-5, atol=1e-5)
        for grad, view in zip(got["grads"], views):
            torch.testing.assert_close(grad / WORLD, view.grad[rows], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got["kernel_grad"], head.kernel.grad[:, start:stop], rtol=1e-5, atol=1e-5)
        for key, value in head.named_buffers():
            torch.testing.assert_close(got["buffers"][key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_class_ranges_of_two_ranks(ranks):
    assert [r["heads"]["arcface"]["range"] for r in ranks] == [[0, 3], [3, 5]]
    assert [r["sampled"]["range"] for r in ranks] == [[0, 10], [10, 20]]


def test_sampled_step_keeps_positives_and_matches_the_head_on_the_sample(ranks):
    rank0, rank1 = ranks[0]["sampled"], ranks[1]["sampled"]
    assert rank0["positives"].tolist() == [1, 7]
    assert len(rank0["index"]) == int(SAMPLE_RATE * 10) == 5  # positives plus 3 random others
    assert set(rank0["positives"].tolist()) <= set(rank0["index"].tolist())
    assert rank1["index"].tolist() == [11, 12, 13, 14, 15, 16]  # more positives than 5: only they
    for result in (rank0, rank1):
        start, stop = result["range"]
        sampled = torch.zeros(stop - start, dtype=torch.bool)
        sampled[result["index"] - start] = True
        assert torch.all(result["kernel_grad"][:, ~sampled] == 0)
        assert torch.all(result["kernel_grad"][:, sampled].abs().sum(0) > 0)

    # the same loss as the full head restricted to the union of both samples
    columns = torch.cat([rank0["index"], rank1["index"]])
    head = get_head("arcface", D, len(columns))
    with torch.no_grad():
        head.kernel.copy_(full_kernel(SAMPLED_C)[:, columns])
    embeddings, labels = sampled_batch()
    embeddings.requires_grad_()
    remapped = torch.searchsorted(columns, labels)
    loss = head.loss(embeddings, remapped)
    loss.backward()
    assert rank0["loss"].item() == pytest.approx(loss.item(), rel=1e-6)
    assert rank1["loss"].item() == pytest.approx(loss.item(), rel=1e-6)
    torch.testing.assert_close(rank0["embedding_grad"] / WORLD, embeddings.grad[:N_LOCAL], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rank1["embedding_grad"] / WORLD, embeddings.grad[N_LOCAL:], rtol=1e-5, atol=1e-5)


def test_checkpoint_holds_every_shard_with_its_class_range(ranks):
    checkpoint = torch.load(ranks[0]["checkpoint"], weights_only=True)
    entry = checkpoint["partial_fc"]["head.head.kernel"]
    assert entry["num_classes"] == RESUME_C and entry["class_ranges"] == [[0, 4], [4, 7]]
    assert [tuple(t.shape) for t in entry["kernel"]] == [(D, 4), (D, 3)]
    assert [tuple(t.shape) for t in entry["optimizer"]["momentum_buffer"]] == [(D, 4), (D, 3)]
    assert "head.head.kernel" not in checkpoint["head"]  # not rank 0's block a second time
    # the backbone's weight and bias keep their momentum in the optimizer state; the centers' moved out
    assert sorted(checkpoint["optimizer"]["state"]) == [0, 1]


@pytest.mark.parametrize("world", [1, 3])
def test_resume_on_another_number_of_processes_gives_the_same_losses(ranks, world, tmp_path):
    path = ranks[0]["checkpoint"]
    expected = ranks[0]["next_losses"]
    assert ranks[1]["next_losses"] == expected  # the same loss on every rank
    if world == 1:
        got = resume(0, 1, path)  # one process, no process group
    else:
        args = (world, str(tmp_path / "init"), path, str(tmp_path / "r"))
        mp.start_processes(resume_worker, args=args, nprocs=world, start_method="fork")
        got = [torch.load(tmp_path / f"r.{rank}", weights_only=True) for rank in range(world)]
        assert all(g == got[0] for g in got)
        got = got[0]
    # the second loss follows a step that used the re-sharded momentum
    assert got == pytest.approx(expected, rel=1e-5)


def test_checkpoint_of_another_class_count_is_an_error(ranks):
    path = ranks[0]["checkpoint"]
    method = SingleBranch(nn.Linear(6, D), PartialFC("cosface", D, 8), dropout=0.0)
    optimizer = torch.optim.SGD(method.param_groups(), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=f"{path}: its class centers cover 7 classes, but num_classes is 8"):
        checkpoints.load_checkpoint(
            checkpoints.read_checkpoint(path), method=method, optimizer=optimizer, scaler=None, rank=0,
            device=torch.device("cpu"), path=path,
        )


def test_sharded_checkpoint_into_the_replicated_head_is_an_error(ranks):
    path = ranks[0]["checkpoint"]
    method = SingleBranch(nn.Linear(6, D), get_head("cosface", D, RESUME_C), dropout=0.0)
    optimizer = torch.optim.SGD(method.param_groups(), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="written with partial_fc = True"):
        checkpoints.load_checkpoint(
            checkpoints.read_checkpoint(path), method=method, optimizer=optimizer, scaler=None, rank=0,
            device=torch.device("cpu"), path=path,
        )


def test_world_size_larger_than_num_classes_is_an_error(ranks):
    for result in ranks:
        assert "world size 2 is larger than num_classes 1" in result["too_few_classes"]


def test_class_split_as_insightface():
    # 10 classes on 3 ranks: 4, 3, 3 contiguous
    assert [class_split(10, 3, r) for r in range(3)] == [(0, 4), (4, 3), (7, 3)]
    assert [class_split(2059906, 8, r)[1] for r in range(8)] == [257489] * 2 + [257488] * 6
    assert class_split(2059906, 8, 7) == (2059906 - 257488, 257488)


def test_one_process_without_a_group_is_the_full_head():
    pfc = PartialFC("cosface", D, C)
    assert (pfc.rank, pfc.world_size, pfc.class_range, pfc.num_local) == (0, 1, (0, C), C)
    head = get_head("cosface", D, C)
    head.load_state_dict(pfc.head.state_dict())
    embeddings, labels = global_batch()
    assert pfc.loss(embeddings, labels).item() == pytest.approx(head.loss(embeddings, labels).item(), rel=1e-6)


def test_sample_keeps_positives_and_counts():
    pfc = PartialFC("arcface", D, 100, sample_rate=0.1)  # one process: num_local 100, 10 sampled
    assert pfc.num_sample == 10
    local = torch.tensor([5, 99, 5, 42, -1])
    torch.manual_seed(0)
    index, remapped = pfc.sample(local)
    assert len(index) == 10 and {5, 42, 99} <= set(index.tolist())
    assert torch.equal(index, index.sort().values)
    assert torch.equal(index[remapped[:4]], local[:4]) and remapped[4] == -1
    torch.manual_seed(0)
    assert torch.equal(pfc.sample(local)[0], index)  # the global RNG decides: reproducible
    many = torch.arange(0, 100, 8)  # 13 positives > 10
    index, remapped = pfc.sample(many)
    assert torch.equal(index, many) and torch.equal(remapped, torch.arange(13))
    # never an empty block: int(0.1 * 5) = 0 becomes one column
    assert PartialFC("arcface", D, 5, sample_rate=0.1).num_sample == 1
    assert len(PartialFC("arcface", D, 5, sample_rate=0.1).sample(torch.tensor([-1, -1]))[0]) == 1


def test_unsampled_centers_get_exactly_zero_gradient():
    pfc = PartialFC("arcface", D, 100, sample_rate=0.1)
    embeddings, labels = torch.randn(6, D), torch.tensor([3, 3, 50, 51, 97, 0])
    torch.manual_seed(1)
    index, _ = pfc.sample(labels)
    torch.manual_seed(1)
    pfc(embeddings, labels).backward()
    nonzero = torch.nonzero(pfc.kernel.grad.abs().sum(0)).squeeze(1)
    assert torch.equal(nonzero, index)


def test_sharded_parameter_names():
    method = torch.nn.Module()
    method.head = PartialFC("arcface", D, C)
    assert sharded_parameter_names(method) == ["head.head.kernel"]


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.5])
def test_sample_rate_outside_unit_interval_is_an_error(rate):
    with pytest.raises(ValueError, match=f"sample_rate must be in \\(0, 1\\], got {rate}"):
        PartialFC("arcface", D, C, sample_rate=rate)


def test_label_past_num_classes_is_an_error():
    pfc = PartialFC("arcface", D, C)
    with pytest.raises(ValueError, match=r"label 5 is outside \[0, 5\) \(num_classes\)"):
        pfc(torch.randn(2, D), torch.tensor([1, 5]))


def test_unknown_head_parameter_is_an_error():
    with pytest.raises(ValueError, match="takes no parameter 'q'"):
        PartialFC("arcface", D, C, q=1.0)


# --- multi-node: 2 "nodes" x 1 process on loopback == 1 node x 2 processes (train.py, tiny) -----

TINY_RUN = [
    "network_width=8", "embedding_size=32", "batch_size=4", "num_epoch=2", "shrink_epoch=[2]", "num_workers=0",
    "frequent=2", "eval_batch_size=16", "val_targets=['lfw']", "partial_fc=True", "sample_rate=0.5",
]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(data_dir, output, *launcher_args):
    sets = [f"rec={data_dir}", f"output={output}", *TINY_RUN]
    command = [sys.executable, "-m", "torch.distributed.run", *launcher_args, "train.py", "--dataset", "synthetic"]
    command += [x for s in sets for x in ("--set", s)]
    # torchrun sets OMP_NUM_THREADS=1 only for several processes per node: the same threads everywhere
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_all(processes):
    for process in processes:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err.decode()[-3000:]


@pytest.fixture(scope="module")
def one_node_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("one_node") / "run"
    wait_all([torchrun(data_dir, out, "--nproc_per_node=2")])
    return out


@pytest.mark.slow
@pytest.mark.parametrize("rendezvous", ["master", "c10d"])
def test_two_nodes_end_with_the_weights_of_one_node(data_dir, one_node_run, tmp_path, rendezvous):
    out = tmp_path / "run"
    port = free_port()
    if rendezvous == "master":
        nodes = [["--nnodes=2", f"--node_rank={rank}", "--master_addr=127.0.0.1", f"--master_port={port}"]
                 for rank in range(2)]
    else:
        nodes = [["--nnodes=2", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=pfc"]] * 2
    wait_all([torchrun(data_dir, out, "--nproc_per_node=1", *node) for node in nodes])

    one, two = (checkpoints.read_checkpoint(str(run / "checkpoint-12.pt")) for run in (one_node_run, out))
    assert two["world_size"] == 2
    for key, value in one["backbone"].items():
        assert torch.equal(two["backbone"][key], value), key
    a, b = (c["partial_fc"]["head.head.kernel"] for c in (one, two))
    assert a["class_ranges"] == b["class_ranges"] == [[0, 4], [4, 8]]
    assert all(torch.equal(x, y) for x, y in zip(a["kernel"], b["kernel"]))
    assert all(torch.equal(x, y) for x, y in zip(a["optimizer"]["momentum_buffer"], b["optimizer"]["momentum_buffer"]))
    # the exported backbone is the plain insightface-style state dict, as without Partial FC
    exported = torch.load(out / "backbone.pth", weights_only=True)
    assert exported.keys() == one["backbone"].keys()
    assert all(torch.equal(exported[k], v) for k, v in one["backbone"].items())


def test_checkpoint_centers_of_sharded_and_replicated_checkpoints(ranks):
    checkpoint = torch.load(ranks[0]["checkpoint"], weights_only=True)
    shards = checkpoint["partial_fc"]["head.head.kernel"]["kernel"]
    full = torch.cat(shards, dim=1)  # classes [0, 4) and [4, 7)
    centers, why = checkpoint_centers(checkpoint, RESUME_C, 0, RESUME_C)  # into a replicated head
    assert torch.equal(centers, full) and why == ""
    centers, _ = checkpoint_centers(checkpoint, RESUME_C, 2, 5)  # a block across both shards
    assert torch.equal(centers, full[:, 2:5])
    assert checkpoint_centers(checkpoint, 8, 0, 4) == (None, "the file's 7 classes do not fit 8")
    replicated = {"head": {"head.kernel": full}}
    assert torch.equal(checkpoint_centers(replicated, RESUME_C, 4, 7)[0], full[:, 4:7])
    assert checkpoint_centers(replicated, 8, 0, 4) == (None, f"({D}, 7) does not fit 8 classes")
    assert checkpoint_centers({"head": {}}, RESUME_C, 0, 4) == (None, "the file has none")
