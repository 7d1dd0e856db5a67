"""Benchmark: the replicated margin head vs Partial FC at sample rates 1.0, 0.3, 0.1, by class count.

    python bench/bench_partial_fc.py [--classes 1e4,3e4,1e5,3e5,1e6,2e6] [--embedding 64]
        [--batch 128] [--head arcface] [--repeat 5] [--threads 1] [--memory-gb 16] [--max-run-gb 4] [--device cpu]

One process holds every class (world size 1), so a row is what one rank pays for a shard of that
many classes; with W processes a rank holds C / W of them and scores W times the batch.

Measured per (head, class count), each in a fresh forked child so that one peak cannot hide another:
* step time: the fastest of ``--repeat`` forward + backward passes of the head alone, given
  embeddings (after one warm-up step; the fastest, not the median, because on a shared machine
  the other processes only ever add time);
* peak memory: on the CPU, the peak resident set (Linux VmHWM, reset through
  /proc/self/clear_refs) over building the head, the warm-up step with an SGD-momentum update
  and the timed passes, minus the resident set before (after a 100-class run in the same child
  has paged in the libraries): weights, their gradient and momentum, and every activation;
  on a GPU, torch.cuda.max_memory_allocated above the memory allocated before.
A run whose memory a linear fit of the smaller runs predicts above ``--max-run-gb`` is skipped
(the machine may be shared and has no swap). "largest C" is the class count at which that fit
reaches ``--memory-gb``: an extrapolation, not a measurement.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.machine import describe_machine  # noqa: E402
from losses import PartialFC, get_head  # noqa: E402
from utils.cli import run_cli  # noqa: E402

VARIANTS = [("replicated", None), ("pfc 1.0", 1.0), ("pfc 0.3", 0.3), ("pfc 0.1", 0.1)]


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set (Linux >= 4.0)


def measure(head_name: str, rate: float | None, classes: int, dim: int, batch: int, repeat: int, device: str):
    """(fastest seconds of forward + backward, peak bytes) of one head configuration."""
    torch.manual_seed(0)
    dev = torch.device(device)
    if dev.type == "cpu":
        _reset_peak()
        before = _status_kib("VmRSS")
    else:
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
    head = (get_head(head_name, dim, classes) if rate is None else PartialFC(head_name, dim, classes, rate)).to(dev)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    embeddings = torch.randn(batch, dim, device=dev, requires_grad=True)
    labels = torch.randint(0, classes, (batch,), device=dev)

    def step():
        head.loss(embeddings, labels).backward()

    step()
    optimizer.step()  # the momentum buffer exists from here on: part of what must fit
    optimizer.zero_grad(set_to_none=False)
    times = []
    for _ in range(repeat):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        start = time.perf_counter()
        step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - start)
        optimizer.zero_grad(set_to_none=False)
    if dev.type == "cpu":
        peak = (_status_kib("VmHWM") - before) * 1024
    else:
        peak = torch.cuda.max_memory_allocated(dev) - before
    return min(times), peak


def _child(queue, head_name, rate, classes, dim, batch, repeat, device) -> None:
    try:
        # a tiny run first: library pages, allocator arenas and autograd set-up would otherwise
        # count as the first configuration's memory
        measure(head_name, rate, 100, dim, batch, 1, device)
        queue.put(measure(head_name, rate, classes, dim, batch, repeat, device))
    except Exception as exc:  # a failed run (e.g. out of memory) becomes a table cell
        queue.put(f"{type(exc).__name__}")


def run_isolated(*args):
    """``measure`` in a forked child (fresh peak memory); its result or an error string."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=_child, args=(queue, *args))
    process.start()
    process.join()
    if process.exitcode != 0:
        return f"died (exit {process.exitcode})"
    return queue.get()


def linear_fit(points: list[tuple[int, int]]) -> tuple[float, float] | None:
    """(intercept, bytes per class) through the two largest measured points."""
    if len(points) < 2:
        return None
    (c1, m1), (c2, m2) = sorted(points)[-2:]
    slope = (m2 - m1) / (c2 - c1)
    return m2 - slope * c2, slope


def parse_counts(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=parse_counts, default=parse_counts("1e4,3e4,1e5,3e5,1e6,2e6"))
    parser.add_argument("--embedding", type=int, default=64)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--head", default="arcface")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--memory-gb", type=float, default=16.0, help="the budget for the 'largest C' row")
    parser.add_argument("--max-run-gb", type=float, default=4.0, help="skip runs predicted above this")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    # one thread: on a loaded machine two threads wait for each other at every op's barrier
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    print(f"machine: {describe_machine()}")
    print(
        f"head {args.head}, embedding {args.embedding}, batch {args.batch}, one process, device {args.device}; "
        f"time: fastest of {args.repeat} forward+backward; memory: "
        + ("peak resident set above the start (VmHWM)" if args.device == "cpu" else "max_memory_allocated")
        + ", incl. weights, gradient, SGD momentum"
    )
    results: dict[str, dict[int, object]] = {name: {} for name, _ in VARIANTS}
    for classes in args.classes:
        for name, rate in VARIANTS:
            measured = [(c, r[1]) for c, r in results[name].items() if isinstance(r, tuple)]
            fit = linear_fit(measured)
            if fit and fit[0] + fit[1] * classes > args.max_run_gb * 2**30:
                results[name][classes] = f"> {args.max_run_gb:g} GB, skipped"
                continue
            results[name][classes] = run_isolated(
                args.head, rate, classes, args.embedding, args.batch, args.repeat, args.device
            )
            print(f"  {name:10s} C={classes:>8d}: {results[name][classes]}", file=sys.stderr, flush=True)

    header = ["classes"] + [name for name, _ in VARIANTS]
    rows = []
    for classes in args.classes:
        base = results["replicated"][classes]
        row = [f"{classes:,}"]
        for name, _ in VARIANTS:
            got = results[name][classes]
            if not isinstance(got, tuple):
                row.append(str(got))
                continue
            cell = f"{got[0] * 1e3:.1f} ms, {got[1] / 2**20:.0f} MB"
            if name != "replicated" and isinstance(base, tuple):
                cell += f" ({got[0] / base[0]:.2f}x, {got[1] / base[1]:.2f}x)"
            row.append(cell)
        rows.append(row)
    largest = [f"largest C in {args.memory_gb:g} GB (linear fit)"]
    for name, _ in VARIANTS:
        fit = linear_fit([(c, r[1]) for c, r in results[name].items() if isinstance(r, tuple)])
        largest.append(f"{(args.memory_gb * 2**30 - fit[0]) / fit[1]:,.0f}" if fit and fit[1] > 0 else "n/a")
    rows.append(largest)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
    print("(ratios: time, memory vs the replicated head in the same run)")
    if hasattr(os, "getloadavg"):
        print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    run_cli(main)
