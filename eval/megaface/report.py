"""MegaFace results: the stdout table and the CMC / ROC figures (matplotlib, Agg backend)."""

from __future__ import annotations

import math

from utils.fileio import atomic_path

TABLE_RANKS = (1, 5, 10)


def _pct(x: float) -> str:
    return f"{100.0 * x:.3f}"


def format_table(results: dict, far: float | None = None) -> str:
    """One row per distractor-set size: rank-1/5/10 identification and TAR at ``far`` (in %)."""
    sizes = results["sizes"]
    if not sizes:
        return "(no distractor sets evaluated)"
    first = next(iter(sizes.values()))
    fars = first["verification"]["far"]
    far = fars[0] if far is None and fars else far
    ranks = [r for r in TABLE_RANKS if r <= len(first["cmc"]["rates"])]
    header = ["distractors"] + [f"rank-{r} %" for r in ranks]
    if far is not None:
        header.append(f"TAR@FAR={far:g} %")
    rows = []
    for res in sizes.values():
        row = [str(res["distractors"])] + [_pct(res["cmc"]["rates"][r - 1]) for r in ranks]
        if far is not None:
            row.append(_pct(res["verification"]["tar"][res["verification"]["far"].index(far)]))
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    out = [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]
    return "\n".join(out)


def _save(fig, path: str) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def plot_cmc(results: dict, path: str, title: str = "MegaFace challenge 1: identification") -> None:
    """CMC curves (one per distractor-set size), rank on a log axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for res in results["sizes"].values():
        ax.plot(res["cmc"]["ranks"], [100 * r for r in res["cmc"]["rates"]],
                label=f"{res['distractors']} distractors")
    ax.set_xscale("log")
    ax.set_xlabel("rank")
    ax.set_ylabel("identification rate (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)
    plt.close(fig)


def plot_roc(results: dict, path: str, title: str = "MegaFace challenge 1: verification") -> None:
    """ROC curves (TAR vs FAR, log FAR axis) from the kept highest negatives."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for res in results["sizes"].values():
        far, tar = res["roc"]["far"], res["roc"]["tar"]
        keep = [(f, t) for f, t in zip(far, tar) if f > 0 and math.isfinite(f)]
        if keep:
            ax.plot([f for f, _ in keep], [100 * t for _, t in keep],
                    label=f"{res['distractors']} distractors")
    ax.set_xscale("log")
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)
    plt.close(fig)
