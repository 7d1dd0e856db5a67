"""IJB result presentation: a plain-text table and matplotlib figures (Agg, files only)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A PrettyTable-like box table of strings."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(r):
        # first column (names) left-aligned, numbers right-aligned
        padded = [c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        return "| " + " | ".join(padded) + " |"

    return "\n".join([rule, line(cells[0]), rule, *[line(r) for r in cells[1:]], rule])


def pct(x: float | None) -> str:
    """A fraction as a percentage with 2 decimals (insightface's table), '-' when undefined."""
    return "-" if x is None else f"{100 * x:.2f}"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


def plot_roc(
    curves: dict[str, tuple[np.ndarray, np.ndarray, float]], title: str, path: str
) -> None:
    """ROC curves {name: (fpr, tpr, auc)} on a log FPR axis from 1e-6 to 1e-1, saved to ``path``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    low = 1.0
    for name, (fpr, tpr, area) in curves.items():
        ax.plot(fpr, tpr, lw=1, label=f"{name} (AUC = {100 * area:.4f}%)")
        visible = tpr[(fpr >= 1e-6) & (fpr <= 1e-1)]
        if len(visible):
            low = min(low, float(visible.min()))
    ax.set_xlim(1e-6, 1e-1)
    ax.set_xscale("log")
    ax.set_xticks([10.0**-k for k in range(6, 0, -1)])
    # insightface plots from 0.3; weaker models would be off the chart
    ax.set_ylim(min(0.3, np.floor(low * 10) / 10), 1.0)
    ax.set_xlabel("False Positive Rate")
    ax.set_ylabel("True Positive Rate")
    ax.grid(linestyle="--", linewidth=1)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize="x-small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_1vn(
    cmc: dict[str, Sequence[float]],
    tpir_curves: dict[str, tuple[Sequence[float], Sequence[float | None]]],
    title: str,
    path: str,
) -> None:
    """CMC curves {name: [rank-1, rank-2, ...]} and TPIR-vs-FPIR curves {name: (fpirs, tpirs)}."""
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, values in cmc.items():
        a1.plot(np.arange(1, len(values) + 1), values, marker=".", lw=1, label=name)
    a1.set_xlabel("Rank")
    a1.set_ylabel("Identification rate")
    a1.set_ylim(0, 1)
    a1.grid(linestyle="--", linewidth=1)
    a1.set_title(f"{title}: CMC")
    a1.legend(fontsize="x-small")
    for name, (fpirs, tpirs) in tpir_curves.items():
        pts = [(f, t) for f, t in zip(fpirs, tpirs) if t is not None]
        if pts:
            a2.plot(*zip(*pts), lw=1, label=name)
    a2.set_xscale("log")
    a2.set_xlim(1e-4, 1)
    a2.set_ylim(0, 1)
    a2.set_xlabel("False Positive Identification Rate")
    a2.set_ylabel("True Positive Identification Rate")
    a2.grid(linestyle="--", linewidth=1)
    a2.set_title(f"{title}: TPIR vs FPIR")
    a2.legend(fontsize="x-small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
