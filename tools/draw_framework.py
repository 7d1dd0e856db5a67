"""Draw the two-stage ContraFace framework figure (images/framework.png) with matplotlib.

    python -m tools.draw_framework [--output images/framework.png]
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

from utils.cli import run_cli  # noqa: E402

COLORS = {
    "data": "#dbe9f6",
    "trunk": "#c6dbef",
    "drop": "#fdd0a2",
    "fc": "#c7e9c0",
    "head": "#dadaeb",
    "loss": "#fcbba1",
}


def box(ax: Axes, x: float, y: float, w: float, h: float, text: str, kind: str) -> tuple[float, float, float, float]:
    """A rounded labelled box; returns its (x, y, w, h)."""
    ax.add_patch(
        FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08", fc=COLORS[kind], ec="#444", lw=1)
    )
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=8.5)
    return x, y, w, h


def arrow(ax: Axes, start: tuple[float, float], end: tuple[float, float], text: str = "") -> None:
    """An arrow from ``start`` to ``end``, labelled with ``text`` above its middle."""
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=10, lw=1, color="#333"))
    if text:
        ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.12, text, ha="center", fontsize=7.5)


def right(b: tuple[float, float, float, float]) -> tuple[float, float]:
    """The middle of the right edge of box ``b`` (x, y, w, h)."""
    return b[0] + b[2], b[1] + b[3] / 2


def left(b: tuple[float, float, float, float]) -> tuple[float, float]:
    """The middle of the left edge of box ``b`` (x, y, w, h)."""
    return b[0], b[1] + b[3] / 2


def draw_stage1(ax: Axes) -> None:
    """Stage 1: one trunk pass, dropout, FC + BN, the margin head, cross-entropy."""
    ax.set_title("Stage 1 (epochs before the first LR decay): single branch", fontsize=10, loc="left")
    y, h = 1.0, 0.8
    chain = [
        box(ax, 0.1, y, 1.0, h, "face\n112x112", "data"),
        box(ax, 1.5, y, 1.5, h, "iResNet trunk\n+ BN", "trunk"),
        box(ax, 3.4, y, 1.3, h, "flatten\n7x7x512", "trunk"),
        box(ax, 5.1, y, 1.3, h, "dropout\np = 0.4", "drop"),
        box(ax, 6.8, y, 1.4, h, "FC + BN\n(features)", "fc"),
        box(ax, 8.6, y, 1.4, h, "ArcFace\ns=64, m=0.5", "head"),
        box(ax, 10.4, y, 1.4, h, "CE(head(x), y)", "loss"),
    ]
    for a, b in zip(chain, chain[1:]):
        arrow(ax, right(a), left(b))


def draw_stage2(ax: Axes) -> None:
    """Stage 2: one trunk pass, two dropout masks through the shared head, the contrastive loss."""
    ax.set_title("Stage 2 (from the first LR decay on): two dropout views of one trunk pass", fontsize=10, loc="left")
    h = 0.7
    image = box(ax, 0.1, 1.55, 1.0, h, "face\n112x112", "data")
    trunk = box(ax, 1.5, 1.55, 1.5, h, "iResNet trunk\n(run once)", "trunk")
    flat = box(ax, 3.4, 1.55, 1.3, h, "flatten\n7x7x512", "trunk")
    arrow(ax, right(image), left(trunk))
    arrow(ax, right(trunk), left(flat))
    contra = box(ax, 8.6, 1.55, 1.4, h, "Contra(x1, x2, y)\nadaptive m", "loss")
    total = box(ax, 10.4, 1.55, 1.4, h, "loss = 0.5 CE1\n+ 0.5 CE2 + 0.05 LC", "loss")
    for row, name in ((2.6, "1"), (0.5, "2")):
        drop = box(ax, 5.1, row, 1.3, h, f"mask {name}\np = 0.6", "drop")
        fc = box(ax, 6.8, row, 1.4, h, "FC + BN\n(shared)", "fc")
        head = box(ax, 8.6, row, 1.4, h, "ArcFace\n(shared)", "head")
        ce = box(ax, 10.4, row, 1.4, h, f"CE{name}  w=0.5", "loss")
        arrow(ax, right(flat), left(drop))
        arrow(ax, right(drop), left(fc))
        arrow(ax, right(fc), left(head), f"x{name}")
        arrow(ax, right(head), left(ce))
        upper = name == "1"
        arrow(ax, (fc[0] + fc[2] / 2, row + (0 if upper else h)), (contra[0] + 0.3, 1.55 + (h if upper else 0)))
        arrow(ax, (ce[0] + ce[2] / 2, row + (0 if upper else h)), (ce[0] + ce[2] / 2, 1.55 + (h if upper else 0)))
    arrow(ax, right(contra), left(total), "wC")
    ax.text(
        0.1,
        0.05,
        "S = cos(x1_i, x2_j); same-class pairs i != j masked to 0;  m <- 0.99 mean(S_ii - max_j!=i S_ij) + 0.01 m;  "
        "LC = CE(64 (S - m I), i)",
        fontsize=7.5,
    )


def main(argv: list[str] | None = None) -> None:
    """Draw both stages into ``--output``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="images/framework.png")
    args = parser.parse_args(argv)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 6.2), gridspec_kw={"height_ratios": [1, 1.7]})
    for ax, limit in ((top, 2.2), (bottom, 3.5)):
        ax.set_xlim(0, 12)
        ax.set_ylim(0, limit)
        ax.axis("off")
    draw_stage1(top)
    draw_stage2(bottom)
    fig.tight_layout()
    fig.savefig(args.output, dpi=150)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    run_cli(main)
