"""Training curves from training logs: loss parts, ContraFace margin, LR, speed, verification accuracy.

    python -m tools.plot_log work_dirs/run_a/training.log work_dirs/run_b/training.log --output curves.png
    python -m tools.plot_log ContraFace.log ArcFaceDropout.log --labels ContraFace,ArcFace --output cmp.png

Reads three log dialects, line by line (timestamps and other lines are ignored):

* this project's ``training.log``:
  ``[600][E 3][ 116/s] -Loss 23.63 -L1 23.55 -L2 23.63 -LC 2.97 -margin 0.33 -LR 0.010000 -ETA: 0.02 H``
  and ``[748][lfw]Accuracy-Flip: 0.94417+-0.01710``, ``[748][mean]Accuracy-Flip: 0.94417``;
* the original ContraFace's: ``[91050][E 8][1058/s] -Loss 3.48 -Loss1 3.00 -Loss2 3.02 -LossC 1.26
  -Time: 40.0 H`` (Loss1/Loss2/LossC are drawn as L1/L2/LC) and ``[272928][2][lfw]Accuracy-Flip: ...``
  (the middle number is the rank that evaluated the set);
* insightface arcface_torch's: ``Speed 1834.21 samples/sec   Loss 12.3456   LearningRate 0.100000
  Epoch: 0   Global Step: 100   ...`` and ``[lfw][2000]Accuracy-Flip: 0.99500+-0.00300``.

A step logged twice (a resumed run repeats the steps after its checkpoint) keeps its last value.
Each run is one colour, labelled with its run folder's name (the log's stem when it is not called
``training.log``) or ``--labels``; a panel is drawn only when some log has its quantity. Where a
log has no ``[mean]`` accuracy line, the mean is taken over its targets at the steps that have all.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from utils.cli import UsageError, run_cli
from utils.errors import UserError
from utils.fileio import atomic_path, refuse_overwrite

__all__ = ["LogFormatError", "RunCurves", "parse_log", "read_log", "plot_runs", "main"]


class LogFormatError(UserError, ValueError):
    """A log file with no line this tool understands (the message names the file)."""


# this project's and the original ContraFace's training line: [step][E epoch][speed/s] -Name value ...
_BRACKET_TRAIN = re.compile(r"\[(\d+)\]\[E\s*(\d+)\]\[\s*([\d.]+|inf)/s\]((?:\s+-\w+:?\s+[-+\w.]+(?:\s+H)?)*)")
_DASH_ITEM = re.compile(r"-(\w+):?\s+([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|inf|nan))")
# insightface: Speed 1834.21 samples/sec   Loss 12.3456   LearningRate 0.100000   Epoch: 0   Global Step: 100
_INSIGHTFACE_TRAIN = re.compile(
    r"Speed\s+([\d.]+|inf)\s+samples/sec\s+Loss\s+([-\d.naif]+)(?:\s+LearningRate\s+([\d.eE+-]+))?"
    r"\s+Epoch:\s*(\d+)\s+Global Step:\s*(\d+)"
)
# [step][name]Accuracy-Flip (ours), [step][rank][name] (original), [name][step] (insightface)
_ACCURACY = re.compile(r"\[([\w.-]+)\](?:\[(\w+)\])?\[([\w.-]+)\](Accuracy-Flip|Accuracy-Highest):\s*([\d.]+)")
# the original's names for the loss parts -> this project's
_ALIASES = {"Loss1": "L1", "Loss2": "L2", "LossC": "LC", "LossC2": "LC2", "LearningRate": "LR"}
_NOT_PLOTTED = {"ETA", "Time", "Required"}  # hours left: not a training quantity


@dataclass
class RunCurves:
    """The series of one log: ``train[name]`` and ``accuracy[target]`` map step -> value."""

    label: str
    train: dict[str, dict[int, float]] = field(default_factory=lambda: defaultdict(dict))
    accuracy: dict[str, dict[int, float]] = field(default_factory=lambda: defaultdict(dict))
    highest: dict[str, dict[int, float]] = field(default_factory=lambda: defaultdict(dict))

    def series(self, table: dict[str, dict[int, float]], name: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one quantity in step order."""
        points = sorted(table.get(name, {}).items())
        return [s for s, _ in points], [v for _, v in points]


def _parse_accuracy(match: re.Match, run: RunCurves) -> None:
    first, middle, last, kind, value = match.groups()
    if first.isdigit() and not last.isdigit():
        step, target = int(first), last  # ours [step][name] or the original's [step][rank][name]
    elif last.isdigit() and not first.isdigit() and middle is None:
        step, target = int(last), first  # insightface [name][step]
    else:
        return
    table = run.accuracy if kind == "Accuracy-Flip" else run.highest
    table[target][step] = float(value)


def parse_log(lines: Iterable[str], label: str = "run") -> RunCurves:
    """Every training and verification value in ``lines`` (any of the three dialects)."""
    run = RunCurves(label)
    for line in lines:
        match = _BRACKET_TRAIN.search(line)
        if match:
            step = int(match.group(1))
            run.train["epoch"][step] = float(match.group(2))
            run.train["speed"][step] = float(match.group(3))
            for name, value in _DASH_ITEM.findall(match.group(4)):
                if name not in _NOT_PLOTTED:
                    run.train[_ALIASES.get(name, name)][step] = float(value)
            continue
        match = _INSIGHTFACE_TRAIN.search(line)
        if match:
            speed, loss, lr, epoch, step_text = match.groups()
            step = int(step_text)
            run.train["speed"][step] = float(speed)
            run.train["Loss"][step] = float(loss)
            run.train["epoch"][step] = float(epoch)
            if lr is not None:
                run.train["LR"][step] = float(lr)
            continue
        match = _ACCURACY.search(line)
        if match:
            _parse_accuracy(match, run)
    _add_mean(run)
    return run


def _add_mean(run: RunCurves) -> None:
    """The mean accuracy over the targets at the steps where every target has one (if not logged)."""
    targets = [t for t in run.accuracy if t != "mean"]
    if "mean" in run.accuracy or len(targets) < 2:
        return
    steps = set.intersection(*(set(run.accuracy[t]) for t in targets))
    for step in sorted(steps):
        run.accuracy["mean"][step] = sum(run.accuracy[t][step] for t in targets) / len(targets)


def default_label(path: str) -> str:
    """The run folder's name for a ``training.log``, else the log file's stem."""
    path = os.path.abspath(path)
    if os.path.basename(path) == "training.log":
        return os.path.basename(os.path.dirname(path))
    return os.path.splitext(os.path.basename(path))[0]


def read_log(path: str, label: str | None = None) -> RunCurves:
    """Parse the log file at ``path``; a file with nothing to plot is an error naming it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such log file")
    with open(path, encoding="utf-8", errors="replace") as f:
        run = parse_log(f, label or default_label(path))
    if not run.train and not run.accuracy:
        raise LogFormatError(
            f"{path}: no training or verification line found (expected this project's, the original "
            f"ContraFace's or insightface's log format)")
    return run


def _loss_names(runs: Sequence[RunCurves]) -> list[str]:
    skip = {"epoch", "speed", "LR", "margin"}
    names: list[str] = []
    for run in runs:
        names += [n for n in run.train if n not in skip and n not in names]
    return names


def _targets(runs: Sequence[RunCurves]) -> list[str]:
    targets: list[str] = []
    for run in runs:
        targets += [t for t in run.accuracy if t != "mean" and t not in targets]
    # a mean over one target is that target again
    if any("mean" in run.accuracy and len(run.accuracy) > 2 for run in runs):
        targets.append("mean")
    return targets


def plot_runs(runs: Sequence[RunCurves], output: str, title: str | None = None) -> list[str]:
    """Draw the panels of every run into a PNG at ``output`` (atomically); returns the panel titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = _loss_names(runs)
    panels: list[tuple[str, str, list[str]]] = []  # (title, table, names)
    if losses:
        panels.append(("loss", "train", losses))
    for name, title_ in (("margin", "ContraFace margin"), ("LR", "learning rate"), ("speed", "speed (images/s)")):
        if any(name in run.train for run in runs):
            panels.append((title_, "train", [name]))
    panels += [(f"{t} accuracy (flip)", "accuracy", [t]) for t in _targets(runs)]
    if not panels:
        raise LogFormatError("nothing to plot")
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    for ax, (panel, table, names) in zip(axes.flat, panels):
        for r, run in enumerate(runs):
            for n, name in enumerate(names):
                steps, values = run.series(getattr(run, table), name)
                if not steps:
                    continue
                label = run.label if len(names) == 1 else f"{run.label} {name}"
                marker = "o" if table == "accuracy" and len(steps) < 40 else None
                ax.plot(steps, values, styles[n % len(styles)], color=colors[r % len(colors)],
                        label=label, marker=marker, markersize=3, linewidth=1.2)
        ax.set_title(panel)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        if table == "accuracy":
            ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0, decimals=1))
        if panel == "learning rate":
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(output) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return [p for p, _, _ in panels]


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m tools.plot_log", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("logs", nargs="+", metavar="LOG", help="training logs (several runs are overlaid)")
    p.add_argument("--output", required=True, help="the PNG to write")
    p.add_argument("--labels", default=None, help="comma-separated legend labels, one per LOG")
    p.add_argument("--title", default=None, help="figure title")
    p.add_argument("--force", action="store_true", help="overwrite --output")
    return p


def main(argv: Sequence[str] | None = None) -> list[str]:
    """Entry point of ``python -m tools.plot_log``; returns the panel titles."""
    args = build_parser().parse_args(argv)
    labels = [s.strip() for s in args.labels.split(",")] if args.labels else [None] * len(args.logs)
    if len(labels) != len(args.logs):
        raise UsageError(f"--labels has {len(labels)} labels for {len(args.logs)} logs")
    refuse_overwrite([args.output], args.force)
    runs = [read_log(path, label) for path, label in zip(args.logs, labels)]
    panels = plot_runs(runs, args.output, args.title)
    print(f"wrote {args.output}: {', '.join(panels)}")
    return panels


if __name__ == "__main__":
    run_cli(main)
