"""All-to-all 1:1 verification (ICCV21-MFR style): TAR at FAR over every pair of a set, exactly.

    python -m eval.all_to_all --features F.npy --labels L.npy [--output DIR]
    python -m eval.all_to_all --weights W.pth|W.onnx|RUN_FOLDER --data D --output DIR \\
        [--groups FILE] [--fars 1e-1 ... 1e-6] [--block-size 2048] [--device cuda] [--no-flip]
    python -m eval.all_to_all --weights W --probe P --gallery G --output DIR   # cross pairs only

The protocol (SPEC "All-to-all evaluation"): the pairs are every unordered pair i < j (or, in the
probe-vs-gallery mode, every (probe, gallery) pair); positives share a label. For a target FAR f
over N_neg negatives, k = floor(f * N_neg), the threshold is the (k+1)-th largest negative score,
a pair is accepted when its score is strictly above it, and TAR = accepted positives / N_pos.

How it stays exact with no N x N matrix (memory: see :func:`all_to_all_table`):

1. **Exact scores.** The L2-normalised features are rounded to the grid 2^-26 (``quantise_features``,
   in NumPy on the CPU whatever the device). A score is then a sum of products m1 * m2 * 2^-52 of
   integers |m| <= 2^26 whose partial sums are bounded by |a||b| < 2 (Cauchy-Schwarz): every one is
   a float64 number, so a float64 matmul computes each score exactly, in any summation order.
   Blocks of any shape, any image order, CPU or GPU give the same bits. The rounding moves a
   cosine by at most ~sqrt(d) * 2^-27 (2e-7 for d = 512; 1e-8 typically): below float32's own
   rounding of the embeddings, so nothing the features can tell apart is lost.
2. **Pass 1**: every block's scores go into a histogram of 2^20 bins of width 2^-19 over [-1, 1]
   (exact bin edges: the bin is floor(score * 2^19), a power-of-two scaling); the positive scores
   are computed directly (per label, few: 4.7M for MFR), kept, and their histogram subtracted, so
   the negatives' histogram is exact. It locates the bin holding the (k+1)-th largest negative
   for every FAR.
3. **Pass 2** rescores and keeps only the scores inside those bins; the positives are removed from
   them as a multiset (exact equal values) and the threshold is selected exactly. A bin holding
   more than ``max_candidates`` scores is split into 2^20 sub-bins by an extra pass first (at most
   two: then a bin holds a single value).

The per-group tables (``group_tables``, MFR's per-race tables) are the pairs with both images in
the group; ``cross_table`` scores a probe set against a gallery (MFR's mask-to-non-mask).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from eval.steps import ResultCache, evaluate_steps, file_stamp, optional_settings, report_steps, settings_key
from utils.checkpoint import add_channel_order_argument
from utils.cli import run_cli
from utils.errors import UsageError, UserError
from utils.fileio import atomic_path, atomic_write_bytes, refuse_overwrite
from utils.run_files import require_step_weights

__all__ = [
    "AllToAllError",
    "AllToAllTable",
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_FARS",
    "FarRow",
    "all_to_all_table",
    "count_pairs",
    "cross_table",
    "group_tables",
    "main",
    "quantise_features",
    "reachable_fars",
    "tar_at_far",
]

log = logging.getLogger(__name__)

DEFAULT_FARS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
DEFAULT_BLOCK_SIZE = 2048
DEFAULT_MAX_CANDIDATES = 1 << 24  # scores pass 2 may hold per bin (8 bytes each)

QUANT_BITS = 26  # features on the grid 2^-26: scores are exact multiples of 2^-52 (module docstring)
_ULP = 2.0 ** (-2 * QUANT_BITS)  # the scores' spacing: a window this narrow holds one value
_BIN_BITS = 19  # pass-1 bins of width 2^-19 (1.9e-6) in cosine
_GUARD = 64  # bins past +-1: a quantised norm exceeds 1 by up to sqrt(d) * 2^-27
_OFFSET = (1 << _BIN_BITS) + _GUARD
_NBINS = (1 << (_BIN_BITS + 1)) + 2 * _GUARD
_SUB_BINS = 1 << 20  # bins of a refining pass
_QUANT_CHUNK = 1 << 16  # rows quantised at a time
_PAIR_CHUNK = 4096  # positive pairs scored per gather (2 x chunk x d floats)


class AllToAllError(UserError, ValueError):
    """Inputs the all-to-all protocol cannot use (shapes, NaN, a FAR out of range or unreachable)."""


# -- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FarRow:
    """One target FAR: the TAR, the threshold (a pair is accepted strictly above it), the FAR reached."""

    far: float
    tar: float
    threshold: float
    far_reached: float
    true_accepts: int
    false_accepts: int


@dataclass
class AllToAllTable:
    """TAR at FAR of one set of pairs, its pair counts and an ROC sampled from the pass-1 histogram."""

    rows: list[FarRow]
    n_pos: int
    n_neg: int
    sizes: tuple[int, ...]  # (N,) for all pairs of one set, (N_probe, N_gallery) for cross pairs
    skipped: list[float] = field(default_factory=list)  # FARs below 1 / n_neg, left out on request
    roc: dict[str, list[float]] = field(default_factory=dict)  # {"far", "tar", "threshold"}

    def tar_at_far(self) -> dict[float, tuple[float, float]]:
        """The SPEC's shape: ``{far: (tar, threshold)}``."""
        return {row.far: (row.tar, row.threshold) for row in self.rows}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (rows as dicts)."""
        return {
            "sizes": list(self.sizes), "n_pos": self.n_pos, "n_neg": self.n_neg,
            "rows": [vars(row) for row in self.rows], "skipped_fars": list(self.skipped), "roc": self.roc,
        }


# -- inputs --------------------------------------------------------------------------------------


def quantise_features(features: np.ndarray | torch.Tensor, what: str = "features") -> np.ndarray:
    """(N, d) features -> float64 (N, d): each row L2-normalised, then rounded to the grid 2^-26.

    The scores of these rows are exact in float64 whatever the summation order (module
    docstring). Computed row by row in NumPy on the CPU, so a row's value does not depend on the
    other rows, their order or the device. NaN/inf or all-zero rows are an :class:`AllToAllError`.
    """
    x = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
        raise AllToAllError(f"{what}: expected a numeric (N, d) array, got {x.dtype} of shape {x.shape}")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise AllToAllError(f"{what}: {len(rows)} row(s) hold NaN or inf, the first row {rows[0]}")
    q = np.empty(x.shape, np.float64)
    for start in range(0, len(x), _QUANT_CHUNK):  # chunks: the float64 temporaries stay small
        rows = x[start : start + _QUANT_CHUNK].astype(np.float64)
        norms = np.sqrt((rows * rows).sum(axis=1))
        if (norms == 0).any():
            raise AllToAllError(f"{what}: row {start + int(np.flatnonzero(norms == 0)[0])} is all zeros "
                                "(no direction)")
        q[start : start + len(rows)] = np.rint(rows / norms[:, None] * 2.0**QUANT_BITS) * 2.0**-QUANT_BITS
    # the bins past +-1 (_GUARD) must hold every score: |score| <= max |q|^2
    if len(q) and float((q * q).sum(axis=1).max()) >= 1 + _GUARD * 2.0**-_BIN_BITS:
        raise AllToAllError(f"{what}: dimension {x.shape[1]} too large for the exact score grid")
    return q


def _codes(*label_sets: np.ndarray) -> list[np.ndarray]:
    """Labels of any type (ints, strings) -> int64 codes shared by all the sets."""
    sizes = [len(s) for s in label_sets]
    _, inverse = np.unique(np.concatenate([np.asarray(s).reshape(-1) for s in label_sets]), return_inverse=True)
    return list(np.split(inverse.astype(np.int64).reshape(-1), np.cumsum(sizes)[:-1]))


def _check_lengths(features: Any, labels: Any, what: str) -> None:
    n_feat, n_lab = len(features), len(labels)
    if n_feat != n_lab:
        raise AllToAllError(f"{what}: {n_feat} feature rows but {n_lab} labels")


def count_pairs(labels: np.ndarray, gallery_labels: np.ndarray | None = None) -> tuple[int, int]:
    """(N_pos, N_neg): of all unordered pairs of ``labels``, or of the cross pairs with the gallery's."""
    if gallery_labels is None:
        (codes,) = _codes(np.asarray(labels))
        counts = np.bincount(codes).astype(object)  # Python ints: no overflow
        n = len(codes)
        n_pos = int((counts * (counts - 1) // 2).sum()) if n else 0
        return n_pos, n * (n - 1) // 2 - n_pos
    a, b = _codes(np.asarray(labels), np.asarray(gallery_labels))
    size = int(max(a.max(initial=-1), b.max(initial=-1))) + 1
    n_pos = int((np.bincount(a, minlength=size).astype(object) * np.bincount(b, minlength=size)).sum())
    return n_pos, len(a) * len(b) - n_pos


def _check_far(far: Any) -> float:
    try:
        value = float(far)
    except (TypeError, ValueError):
        raise AllToAllError(f"FAR {far!r} is not a number") from None
    if not 0 < value < 1:  # also NaN
        raise AllToAllError(f"FAR {far!r} is outside (0, 1)")
    return value


def _k(far: float, n_neg: int) -> int:
    """floor(far * n_neg) with the FAR's decimal value (1e-6 * 10^6 is 1, not 0.999...)."""
    return math.floor(Fraction(repr(float(far))) * n_neg)


def reachable_fars(fars: Sequence[float], n_neg: int) -> tuple[list[float], list[float]]:
    """(the FARs >= 1 / n_neg, the others): a FAR below one negative in N_neg cannot be reached."""
    fars = [_check_far(f) for f in fars]
    return [f for f in fars if _k(f, n_neg) >= 1], [f for f in fars if _k(f, n_neg) < 1]


# -- scores, blockwise ---------------------------------------------------------------------------


@dataclass
class _Pairs:
    """One set of pairs: all i < j of ``a`` (``b`` None) or every (a_i, b_j); its positive scores."""

    a: torch.Tensor
    b: torch.Tensor | None
    block: int
    pos: np.ndarray  # the positive scores, sorted
    n_neg: int
    desc: str | None = None
    _buffers: dict = field(default_factory=dict)

    def n_blocks(self) -> int:
        na = -(-len(self.a) // self.block)
        if self.b is None:
            return na * (na + 1) // 2
        return na * -(-len(self.b) // self.block)

    def _mm(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        # one buffer per block shape: the CPU allocator would page-fault a new one in every time
        shape = (len(rows), len(cols))
        if shape not in self._buffers:
            self._buffers[shape] = torch.empty(shape, dtype=torch.float64, device=rows.device)
        return torch.mm(rows, cols.T, out=self._buffers[shape])

    def blocks(self, what: str) -> Iterator[torch.Tensor]:
        """Every pair's score once, block by block (2-D blocks, or 1-D on the diagonal)."""
        block, a = self.block, self.a
        bar = tqdm(total=self.n_blocks(), desc=f"{self.desc} {what}" if self.desc else None,
                   unit="block", leave=False, disable=self.desc is None)
        with bar:
            for i0 in range(0, len(a), block):
                rows = a[i0 : i0 + block]
                if self.b is None:
                    for j0 in range(i0, len(a), block):
                        scores = self._mm(rows, a[j0 : j0 + block])
                        # the diagonal block: i < j only (its square shape: the grid is shared)
                        yield _upper(scores) if j0 == i0 else scores
                        bar.update()
                else:
                    for j0 in range(0, len(self.b), block):
                        yield self._mm(rows, self.b[j0 : j0 + block])
                        bar.update()


def _upper(scores: torch.Tensor) -> torch.Tensor:
    """The strictly upper triangle of a square block, flattened."""
    n = scores.shape[0]
    mask = torch.ones(n, n, dtype=torch.bool, device=scores.device).triu_(1)
    return scores[mask]


def _bins(scores: torch.Tensor) -> torch.Tensor:
    """Pass-1 bin of each score (in place on ``scores``): floor(score * 2^19) + offset, exact."""
    return scores.mul_(2.0**_BIN_BITS).floor_().add_(_OFFSET).to(torch.int32).reshape(-1)


def _within_pairs(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j) of every same-code unordered pair, vectorised (no loop over labels)."""
    order = np.argsort(codes, kind="stable")
    ends = np.repeat(*_group_ends(codes[order]))
    pos = np.arange(len(order))
    after = ends - pos - 1  # partners after each image in its label's run
    firsts = np.repeat(pos, after)
    offsets = np.repeat(np.cumsum(after) - after, after)
    seconds = firsts + 1 + (np.arange(len(firsts)) - offsets)
    return order[firsts], order[seconds]


def _group_ends(sorted_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if not len(sorted_codes):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    counts = np.diff(np.r_[starts, len(sorted_codes)])
    return starts + counts, counts


def _cross_pairs(codes_a: np.ndarray, codes_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j) of every (a_i, b_j) with the same code."""
    size = int(max(codes_a.max(initial=-1), codes_b.max(initial=-1))) + 1
    order_b = np.argsort(codes_b, kind="stable")
    count_b = np.bincount(codes_b, minlength=size)
    start_b = np.cumsum(count_b) - count_b
    n = count_b[codes_a]
    firsts = np.repeat(np.arange(len(codes_a)), n)
    offsets = np.repeat(np.cumsum(n) - n, n)
    seconds = order_b[np.repeat(start_b[codes_a], n) + np.arange(len(firsts)) - offsets]
    return firsts, seconds


def _pair_scores(a: torch.Tensor, b: torch.Tensor, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """Scores of the given index pairs: the same exact values as the matmul's (integer sums)."""
    out = np.empty(len(ia), np.float64)
    for s in range(0, len(ia), _PAIR_CHUNK):
        i = torch.from_numpy(ia[s : s + _PAIR_CHUNK]).to(a.device)
        j = torch.from_numpy(ib[s : s + _PAIR_CHUNK]).to(a.device)
        out[s : s + len(i)] = (a[i] * b[j]).sum(dim=1).cpu().numpy()
    return out


# -- the exact selection -------------------------------------------------------------------------


@dataclass
class _Target:
    """A FAR being resolved: the rank of its threshold among the negatives, the window holding it."""

    far: float
    rank: int  # k + 1: the threshold is the rank-th largest negative
    above: int = 0  # negatives at or above the window's top (so strictly above the threshold)
    lo: float = 0.0  # the window [lo, lo + width) holding the threshold
    width: float = 0.0
    count: int = 0  # pairs (positives too) in the window
    threshold: float | None = None
    in_window_above: int = 0  # negatives in the window strictly above the threshold


def _locate(target: _Target, neg_hist: np.ndarray, all_hist: np.ndarray, lo: float, width: float) -> None:
    """Narrow ``target``'s window to the bin of ``neg_hist`` (bins of ``width`` from ``lo``) holding its rank."""
    rank = target.rank - target.above
    above_each = np.cumsum(neg_hist[::-1])[::-1] - neg_hist  # negatives in the bins above each bin
    b = int(np.flatnonzero((above_each < rank) & (above_each + neg_hist >= rank))[-1])
    target.above += int(above_each[b])
    target.lo, target.width, target.count = lo + b * width, width, int(all_hist[b])


def _positives_in(pos: np.ndarray, lo: float, width: float) -> np.ndarray:
    return pos[np.searchsorted(pos, lo, "left") : np.searchsorted(pos, lo + width, "left")]


def _select(target: _Target, candidates: np.ndarray, pos: np.ndarray) -> None:
    """The exact threshold from every score in the target's window, positives removed as a multiset."""
    values, counts = np.unique(candidates, return_counts=True)
    pvals, pcounts = np.unique(_positives_in(pos, target.lo, target.width), return_counts=True)
    where = np.searchsorted(values, pvals)
    if len(candidates) != target.count or (len(pvals) and not np.array_equal(values[where], pvals)):
        raise RuntimeError("all_to_all: pass 2 found other scores than pass 1 counted (a bug)")
    counts[where] -= pcounts
    down = np.cumsum(counts[::-1])  # negatives at or above each value, from the top
    i = int(np.searchsorted(down, target.rank - target.above, "left"))
    target.threshold = float(values[::-1][i])
    target.in_window_above = int(down[i - 1]) if i else 0


def _scan(pairs: _Pairs, windows: list[tuple[float, float, bool]], what: str) -> list[Any]:
    """One pass over every score: per window [lo, lo + width), its scores (collect) or a sub-histogram."""
    lo_min = min(lo for lo, _, _ in windows)
    device = pairs.a.device
    found: list[Any] = [[] if collect else torch.zeros(_SUB_BINS, dtype=torch.int64, device=device)
                        for _, _, collect in windows]
    for scores in pairs.blocks(what):
        high = scores[scores >= lo_min]  # the windows are in the top tail: a small part of the block
        for w, (lo, width, collect) in enumerate(windows):
            inside = high[(high >= lo) & (high < lo + width)]
            if not len(inside):
                continue
            if collect:
                found[w].append(inside)
            else:  # exact: inside - lo is a multiple of 2^-52 below width; the factor a power of two
                sub = (inside - lo).mul_(_SUB_BINS / width).floor_().to(torch.int64)
                first = int(sub.min())
                counts = torch.bincount(sub - first)
                found[w][first : first + len(counts)] += counts
    return [(torch.cat(f).cpu().numpy() if f else np.zeros(0)) if collect else f.cpu().numpy()
            for f, (_, _, collect) in zip(found, windows)]


def _sub_hist(values: np.ndarray, lo: float, width: float) -> np.ndarray:
    sub = np.floor((values - lo) * (_SUB_BINS / width)).astype(np.int64)
    return np.bincount(sub, minlength=_SUB_BINS)


def _resolve(pairs: _Pairs, targets: list[_Target], max_candidates: int) -> None:
    """Passes 2.. until every target has its exact threshold."""
    level = 2
    while True:
        for t in targets:
            if t.threshold is None and t.width <= _ULP:  # one value in the window: it is the threshold
                t.threshold, t.in_window_above = t.lo, 0
        open_targets = [t for t in targets if t.threshold is None]
        if not open_targets:
            return
        keys = sorted({(t.lo, t.width, t.count <= max_candidates) for t in open_targets})
        results = dict(zip(keys, _scan(pairs, keys, f"pass {level}")))
        level += 1
        for t in open_targets:
            key = (t.lo, t.width, t.count <= max_candidates)
            if key[2]:
                _select(t, results[key], pairs.pos)
            else:
                all_hist = results[key]
                neg_hist = all_hist - _sub_hist(_positives_in(pairs.pos, t.lo, t.width), t.lo, t.width)
                _locate(t, neg_hist, all_hist, t.lo, t.width / _SUB_BINS)


def _roc(neg_hist: np.ndarray, pos_hist: np.ndarray, n_pos: int, n_neg: int, points: int = 200) -> dict:
    """ROC at the pass-1 bin edges (accept score >= edge), about ``points`` of them log-spaced in FAR."""
    neg_up = np.cumsum(neg_hist[::-1])[::-1]
    pos_up = np.cumsum(pos_hist[::-1])[::-1]
    keep = np.flatnonzero(neg_up > 0)
    if not len(keep) or not n_pos:
        return {"far": [], "tar": [], "threshold": []}
    far = neg_up[keep] / n_neg
    grid = np.logspace(np.log10(far.min()), 0, points)
    pick = np.unique(np.clip(np.searchsorted(-far, -grid), 0, len(keep) - 1))
    bins = keep[pick]
    return {"far": (neg_up[bins] / n_neg).tolist(), "tar": (pos_up[bins] / n_pos).tolist(),
            "threshold": ((bins - _OFFSET) * 2.0**-_BIN_BITS).tolist()}


def _table(
    qa: np.ndarray, codes_a: np.ndarray, qb: np.ndarray | None, codes_b: np.ndarray | None,
    fars: Sequence[float], block_size: int, device: str | torch.device | None,
    unreachable: str, max_candidates: int, desc: str | None,
) -> AllToAllTable:
    """The table of quantised features (``qb`` None: pairs within ``qa``)."""
    if block_size < 1:
        raise AllToAllError(f"block_size must be >= 1, got {block_size}")
    if unreachable not in ("error", "skip"):
        raise ValueError(f"unreachable must be 'error' or 'skip', got {unreachable!r}")
    fars = list(dict.fromkeys(_check_far(f) for f in fars))
    n_pos, n_neg = count_pairs(codes_a, codes_b)
    sizes = (len(qa),) if qb is None else (len(qa), len(qb))
    if n_pos == 0 or n_neg == 0:
        kind = "positive (same-label)" if n_pos == 0 else "negative (different-label)"
        raise AllToAllError(f"no {kind} pairs among {' x '.join(map(str, sizes))} images: no TAR at FAR")
    keep, skipped = reachable_fars(fars, n_neg)
    if skipped and unreachable == "error":
        raise AllToAllError(
            f"FAR {skipped[0]:g} cannot be reached with {n_neg} negative pairs: the smallest reachable "
            f"FAR is 1/{n_neg} = {1 / n_neg:.3g}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    a = torch.from_numpy(qa).to(device)
    b = None if qb is None else torch.from_numpy(qb).to(device)
    ia, ib = _within_pairs(codes_a) if qb is None else _cross_pairs(codes_a, codes_b)
    pos = np.sort(_pair_scores(a, a if b is None else b, ia, ib))
    pairs = _Pairs(a, b, block_size, pos, n_neg, desc)

    hist = torch.zeros(_NBINS, dtype=torch.int64, device=device)
    for scores in pairs.blocks("pass 1"):
        bins = _bins(scores)
        if len(bins):  # counted from the block's lowest bin: a block spans a small part of [-1, 1]
            first = int(bins.min())
            counts = torch.bincount(bins - first)
            hist[first : first + len(counts)] += counts
    all_hist = hist.cpu().numpy()
    pos_hist = np.bincount(_bins(torch.from_numpy(pos.copy())).numpy(), minlength=_NBINS)
    neg_hist = all_hist - pos_hist
    if int(neg_hist.sum()) != n_neg or (neg_hist < 0).any():
        raise RuntimeError("all_to_all: the pass-1 histogram does not add up to the pair counts (a bug)")
    targets = [_Target(far, _k(far, n_neg) + 1) for far in keep]
    for t in targets:
        _locate(t, neg_hist, all_hist, (0 - _OFFSET) * 2.0**-_BIN_BITS, 2.0**-_BIN_BITS)
    _resolve(pairs, targets, max_candidates)
    rows = []
    for t in targets:
        accepts = len(pos) - int(np.searchsorted(pos, t.threshold, "right"))
        false = t.above + t.in_window_above
        rows.append(FarRow(t.far, accepts / n_pos, t.threshold, false / n_neg, accepts, false))
    return AllToAllTable(rows, n_pos, n_neg, sizes, skipped, _roc(neg_hist, pos_hist, n_pos, n_neg))


# -- public functions ----------------------------------------------------------------------------


def all_to_all_table(
    features: np.ndarray | torch.Tensor,
    labels: np.ndarray,
    fars: Sequence[float] = DEFAULT_FARS,
    block_size: int = DEFAULT_BLOCK_SIZE,
    device: str | torch.device | None = None,
    unreachable: str = "error",
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
    desc: str | None = None,
) -> AllToAllTable:
    """TAR at each FAR over all unordered pairs i < j, exact (module docstring), with the FAR reached.

    Memory besides the inputs: the quantised features (8 N d bytes, on ``device``: default cuda
    when available), the positive scores (8 N_pos bytes, plus their index pairs while they are
    scored), two 8 MB histograms, and per block about 20 * block_size^2 bytes (a float64 score
    block, its int32 bins and their offsets; the diagonal blocks a mask and a copy more). Never N x N.
    ``unreachable``: "error" (a FAR below 1 / N_neg raises :class:`AllToAllError`) or "skip" (it is
    left out and listed in ``skipped``). ``desc`` shows progress bars.
    """
    _check_lengths(features, labels, "features/labels")
    (codes,) = _codes(np.asarray(labels))
    return _table(quantise_features(features), codes, None, None, fars, block_size, device,
                  unreachable, max_candidates, desc)


def cross_table(
    probe_features: np.ndarray | torch.Tensor,
    probe_labels: np.ndarray,
    gallery_features: np.ndarray | torch.Tensor,
    gallery_labels: np.ndarray,
    fars: Sequence[float] = DEFAULT_FARS,
    block_size: int = DEFAULT_BLOCK_SIZE,
    device: str | torch.device | None = None,
    unreachable: str = "error",
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
    desc: str | None = None,
) -> AllToAllTable:
    """TAR at FAR over every (probe i, gallery j) pair, exact; as :func:`all_to_all_table` otherwise."""
    _check_lengths(probe_features, probe_labels, "probe features/labels")
    _check_lengths(gallery_features, gallery_labels, "gallery features/labels")
    qa = quantise_features(probe_features, "probe features")
    qb = quantise_features(gallery_features, "gallery features")
    if qa.shape[1] != qb.shape[1]:
        raise AllToAllError(f"probe features are {qa.shape[1]}-d, gallery features {qb.shape[1]}-d")
    ca, cb = _codes(np.asarray(probe_labels), np.asarray(gallery_labels))
    return _table(qa, ca, qb, cb, fars, block_size, device, unreachable, max_candidates, desc)


def group_tables(
    features: np.ndarray | torch.Tensor,
    labels: np.ndarray,
    groups: Sequence[str | None],
    fars: Sequence[float] = DEFAULT_FARS,
    block_size: int = DEFAULT_BLOCK_SIZE,
    device: str | torch.device | None = None,
    unreachable: str = "error",
    gallery: tuple[Any, Any, Sequence[str | None]] | None = None,
    desc: str | None = None,
    skip_empty: bool = False,
) -> dict[str, AllToAllTable]:
    """One table per group (sorted by name): the pairs with both images in the group.

    ``groups``: a group name per image; None or "" is in no group. ``gallery`` (features, labels,
    groups): cross pairs (probe in the group, gallery image in the group) instead. ``skip_empty``:
    a group without positive or without negative pairs is left out (logged), not an error.
    """
    _check_lengths(features, groups, "features/groups")
    names = _group_names(groups, None if gallery is None else gallery[2])
    tables = {}
    for name in names:
        rows = np.asarray([g == name for g in groups], dtype=bool)
        sub = desc and f"{desc} [{name}]"
        if skip_empty:
            cols = None if gallery is None else np.asarray([g == name for g in gallery[2]], dtype=bool)
            g_labels = None if gallery is None else np.asarray(gallery[1])[cols]
            if 0 in count_pairs(np.asarray(labels)[rows], g_labels):
                log.warning("group %r: no positive or no negative pairs; no table", name)
                continue
        try:
            if gallery is None:
                tables[name] = all_to_all_table(np.asarray(features)[rows], np.asarray(labels)[rows], fars,
                                                block_size, device, unreachable, desc=sub)
            else:
                g_feats, g_labels, g_groups = gallery
                cols = np.asarray([g == name for g in g_groups], dtype=bool)
                tables[name] = cross_table(np.asarray(features)[rows], np.asarray(labels)[rows],
                                           np.asarray(g_feats)[cols], np.asarray(g_labels)[cols], fars,
                                           block_size, device, unreachable, desc=sub)
        except AllToAllError as exc:
            raise AllToAllError(f"group {name!r}: {exc}") from None
    return tables


def _group_names(*group_lists: Sequence[str | None] | None) -> list[str]:
    names = {g for groups in group_lists if groups is not None for g in groups if g}
    return sorted(names)


def tar_at_far(
    features: np.ndarray | torch.Tensor,
    labels: np.ndarray,
    fars: Sequence[float] = DEFAULT_FARS,
    block_size: int = DEFAULT_BLOCK_SIZE,
    device: str | torch.device | None = None,
) -> dict[float, tuple[float, float]]:
    """The SPEC's function: ``{far: (tar, threshold)}`` over all pairs i < j (see :func:`all_to_all_table`)."""
    return all_to_all_table(features, labels, fars, block_size, device).tar_at_far()


# -- the command line ----------------------------------------------------------------------------


@dataclass
class _Set:
    """One evaluated set: features (flip test combined), identities, names (for the groups file)."""

    features: np.ndarray
    labels: np.ndarray
    names: list[str]


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m eval.all_to_all",
        description="All-to-all 1:1 verification (ICCV21-MFR style): exact TAR at FAR over every pair "
        "of a set (or every probe x gallery pair), blockwise, per group too.")
    g = p.add_argument_group("input: features, or a model and face sets")
    g.add_argument("--features", help="(N, D) .npy (with --labels) or .npz holding 'features', 'labels' "
                   "(and optionally 'names', for --groups)")
    g.add_argument("--labels", help=".npy of N labels, for a --features .npy")
    g.add_argument("--weights", help="checkpoint (.pt/.pth) or .onnx, or a run folder (every per-step "
                   "weight file in it)")
    g.add_argument("--data", help="face set: a .rec folder (train.rec/train.idx) or an image folder "
                   "(one sub-folder per identity)")
    g.add_argument("--probe", help="probe face set (or .npz features): cross pairs with --gallery only")
    g.add_argument("--gallery", help="gallery face set (or .npz features)")
    g.add_argument("--groups", help="lines '<relative path> <group>' (paths as under the data folder; "
                   "for feature files the 'names' or the row numbers): a table per group")
    g.add_argument("--network", help="backbone name (read from our checkpoints when omitted)")
    add_channel_order_argument(g)
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--workers", type=int, default=2, help="processes reading the faces")
    g.add_argument("--no-amp", action="store_true", help="fp32 on GPU (AMP is the default there)")
    g.add_argument("--no-flip", action="store_true",
                   help="no flip test (default: the L2-normalised sum of image and mirror embeddings)")
    g = p.add_argument_group("protocol and output")
    g.add_argument("--fars", type=float, nargs="+",
                   help="target FARs (default 1e-1 ... 1e-6, those the negatives reach; given ones must be)")
    g.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE,
                   help="images per score block (memory about 20 x block^2 bytes)")
    g.add_argument("--device", help="cuda / cpu for the scores and the embedder (default: cuda when available)")
    g.add_argument("--output", help="folder for the JSON, the ROC PNG and the feature cache (needed with --weights)")
    g.add_argument("--name", help="name in the output files (default: the weights' or features' stem)")
    g.add_argument("--force", action="store_true", help="overwrite results and re-extract features")
    return p


def _check_args(args: argparse.Namespace) -> None:
    modes = [bool(args.features), bool(args.data), bool(args.probe or args.gallery)]
    if sum(modes) != 1:
        raise UsageError("give one of --features, --data, or --probe with --gallery")
    if bool(args.probe) != bool(args.gallery):
        raise UsageError("--probe and --gallery go together (cross pairs)")
    if args.features and args.weights:
        raise UsageError("--features are already embeddings: drop --weights (or give --data)")
    folders = [p for p in (args.data, args.probe, args.gallery) if p and not p.endswith(".npz")]
    if folders and not args.weights:
        raise UsageError(f"{folders[0]}: a face set needs --weights to embed it")
    if args.weights and not args.output:
        raise UsageError("--weights needs --output (the feature cache and the results go there)")
    if args.block_size < 1:
        raise UsageError(f"--block-size {args.block_size}: must be >= 1")
    for far in args.fars or ():
        if not 0 < far < 1:
            raise UsageError(f"--fars {far:g}: a FAR is in (0, 1)")


def _load_feature_file(path: str, labels_path: str | None) -> _Set:
    """A .npz ('features', 'labels', optional 'names') or a .npy with a labels .npy."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: feature file not found")
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            if "features" not in z or "labels" not in z:
                raise AllToAllError(f"{path}: expected arrays 'features' and 'labels', found {sorted(z.files)}")
            feats, labels = z["features"], z["labels"]
            names = [str(n) for n in z["names"]] if "names" in z else None
    else:
        if not labels_path:
            raise AllToAllError(f"{path}: a .npy of features needs --labels (or give a .npz with both)")
        feats, labels, names = np.load(path, allow_pickle=False), np.load(labels_path, allow_pickle=False), None
    _check_lengths(feats, labels, path)
    return _Set(feats, labels, names or [str(i) for i in range(len(feats))])


def _identities(source: Any) -> np.ndarray:
    """Identity names for an image folder (its sub-folders: comparable across folders), else labels."""
    if source.names and all("/" in n for n in source.names):
        return np.asarray([n.split("/", 1)[0] for n in source.names])
    return np.asarray(source.labels)


def _combine(embs: np.ndarray, embs_flip: np.ndarray | None) -> np.ndarray:
    """The flip test as MegaFace does it: the float32 sum of both embeddings, L2-normalised."""
    feats = embs if embs_flip is None else embs + embs_flip
    return feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)


def _extract_set(args: argparse.Namespace, path: str, embedder: dict, env: Any, what: str) -> _Set:
    """The faces at ``path`` embedded by ``args.weights``, cached in the output folder (shared stamps)."""
    from eval.extract import extract_features, open_face_source
    from utils.distributed import broadcast_object

    if path.endswith(".npz"):
        return _load_feature_file(path, None)
    source = open_face_source(path)
    weights = os.path.abspath(args.weights)
    key = settings_key({
        "weights": weights, "weights_stamp": file_stamp(weights), "data": os.path.abspath(path),
        "data_stamp": settings_key({"stamps": [file_stamp(p) for p in source.stamp_paths]}),
        "network": args.network, "flip": not args.no_flip, "amp": not args.no_amp,
        **optional_settings(channel_order=args.channel_order),
    })
    cache = os.path.join(args.output, f"features_{what}_{key}.npz")
    main_rank = env is None or env.is_main
    hit = os.path.isfile(cache) and not args.force if main_rank else None
    if env is not None:
        hit = broadcast_object(env, hit)  # every rank embeds, or none does
    if hit:
        log.info("%s features: from %s", what, cache)
        return _load_feature_file(cache, None)
    if "embed" not in embedder:
        from eval.embedder import Embedder

        embedder["embed"] = Embedder.load(args.weights, network=args.network, device=args.device,
                                          batch_size=args.batch_size, amp=False if args.no_amp else None,
                                          channel_order=args.channel_order)
    embs, embs_flip = extract_features(embedder["embed"], source, batch_size=args.batch_size,
                                       flip=not args.no_flip, env=env, workers=args.workers,
                                       desc=f"{what} features")
    result = _Set(_combine(embs, embs_flip), _identities(source), list(source.names))
    if main_rank:
        os.makedirs(args.output, exist_ok=True)
        with atomic_path(cache) as tmp, open(tmp, "wb") as f:
            np.savez(f, features=result.features, labels=result.labels, names=np.asarray(result.names))
    return result


def read_groups(path: str, names: Sequence[str]) -> list[str | None]:
    """The group of each name from lines '<relative path> <group>' (None: not listed)."""
    listed: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = line.strip().rsplit(None, 1)
            if len(parts) != 2:
                raise AllToAllError(f"{path}:{number}: expected '<relative path> <group>', got {line.strip()!r}")
            name, group = parts[0].replace(os.sep, "/"), parts[1]
            if listed.get(name, group) != group:
                raise AllToAllError(f"{path}:{number}: {name} is in group {listed[name]} and {group}")
            listed[name] = group
    groups = [listed.get(n) for n in names]
    if listed and not any(groups):
        raise AllToAllError(f"{path}: none of its {len(listed)} paths is an image of the set "
                            f"(e.g. {next(iter(listed))!r} vs {names[0]!r} in the set)")
    return groups


def _tables(args: argparse.Namespace, sets: list[_Set]) -> dict[str, AllToAllTable]:
    """The table of every pair ("all") and one per group of ``--groups``."""
    fars = args.fars or DEFAULT_FARS
    opts = {"block_size": args.block_size, "device": args.device,
            "unreachable": "error" if args.fars else "skip", "desc": "scores"}
    if len(sets) == 1:
        (one,) = sets
        tables = {"all": all_to_all_table(one.features, one.labels, fars, **opts)}
        if args.groups:
            groups = read_groups(args.groups, one.names)
            tables.update(group_tables(one.features, one.labels, groups, fars, skip_empty=True, **opts))
        return tables
    probe, gallery = sets
    tables = {"all": cross_table(probe.features, probe.labels, gallery.features, gallery.labels, fars, **opts)}
    if args.groups:
        gallery_groups = read_groups(args.groups, gallery.names)
        tables.update(group_tables(probe.features, probe.labels, read_groups(args.groups, probe.names), fars,
                                   gallery=(gallery.features, gallery.labels, gallery_groups), skip_empty=True,
                                   **opts))
    return tables


def format_tables(tables: dict[str, AllToAllTable]) -> str:
    """One block of rows per table: FAR, TAR (%), threshold, FAR reached, pair counts."""
    lines = [f"{'table':>12}  {'FAR':>8}  {'TAR %':>8}  {'threshold':>10}  {'FAR reached':>11}  pairs (pos/neg)"]
    for name, table in tables.items():
        for row in table.rows:
            lines.append(f"{name:>12}  {row.far:>8.0e}  {100 * row.tar:>8.3f}  {row.threshold:>10.6f}  "
                         f"{row.far_reached:>11.3e}  {table.n_pos}/{table.n_neg}")
        if table.skipped:
            left = ", ".join(f"{f:g}" for f in table.skipped)
            lines.append(f"{name:>12}  (FARs {left} below 1/{table.n_neg}: left out)")
    return "\n".join(lines)


def plot_roc(tables: dict[str, AllToAllTable], path: str, title: str) -> None:
    """TAR against FAR (log axis), one curve per table, the table's FARs marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, table in tables.items():
        keep = [(f, t) for f, t in zip(table.roc.get("far", []), table.roc.get("tar", [])) if f > 0]
        line = ax.plot([f for f, _ in keep], [100 * t for _, t in keep], label=name)[0]
        ax.plot([r.far_reached for r in table.rows if r.far_reached > 0],
                [100 * r.tar for r in table.rows if r.far_reached > 0], "o", color=line.get_color(), ms=3)
    ax.set_xscale("log")
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def _name(args: argparse.Namespace) -> str:
    source = args.weights or args.features or args.probe
    return args.name or os.path.splitext(os.path.basename(os.path.normpath(source)))[0]


def evaluate_file(args: argparse.Namespace, env: Any = None) -> dict:
    """Evaluate one weights file or feature file; returns the results written to the JSON file."""
    name = _name(args)
    outputs = [os.path.join(args.output, f"all_to_all_{name}.json"),
               os.path.join(args.output, f"roc_{name}.png")] if args.output else []
    refuse_overwrite(outputs, args.force)  # before the extraction, not after
    embedder: dict = {}
    if args.features:
        sets = [_load_feature_file(args.features, args.labels)]
    elif args.data:
        sets = [_extract_set(args, args.data, embedder, env, "data")]
    else:
        sets = [_load_feature_file(p, None) if not args.weights else _extract_set(args, p, embedder, env, what)
                for p, what in ((args.probe, "probe"), (args.gallery, "gallery"))]
    if env is not None and not env.is_main:
        return {}  # rank 0 scores and writes
    tables = _tables(args, sets)
    results = {
        "name": name, "mode": "all pairs" if len(sets) == 1 else "probe x gallery",
        "weights": args.weights and os.path.abspath(args.weights),
        "inputs": [os.path.abspath(p) for p in (args.features, args.data, args.probe, args.gallery) if p],
        "flip": not args.no_flip, "block_size": args.block_size,
        "tables": {k: t.to_dict() for k, t in tables.items()},
    }
    print(f"\nall-to-all TAR at FAR, {name} ({results['mode']})")
    print(format_tables(tables))
    if outputs:
        atomic_write_bytes(outputs[0], json.dumps(results, indent=2).encode())
        plot_roc(tables, outputs[1], f"all-to-all ROC, {name}")
        print(f"results: {outputs[0]}; ROC: {outputs[1]}")
    return results


def step_scores(results: dict) -> dict[str, float]:
    """The numbers compared across steps: TAR at each FAR of the table of every pair."""
    return {f"TAR@{row['far']:g}": row["tar"] for row in results["tables"]["all"]["rows"]}


def evaluate_run_folder(args: argparse.Namespace, env: Any = None) -> dict:
    """Every per-step weight file of a run folder (results cached per file), each step and the best."""
    from eval import extract

    steps = require_step_weights(args.weights)
    data = [p for p in (args.data, args.probe, args.gallery, args.groups) if p]
    settings = settings_key({
        "data": [{"path": os.path.abspath(p), **(file_stamp(p) if os.path.isfile(p) else {})} for p in data],
        "fars": args.fars, "flip": not args.no_flip, "network": args.network, "amp": not args.no_amp,
        **optional_settings(channel_order=args.channel_order),
    })
    os.makedirs(args.output, exist_ok=True)
    cache = ResultCache(os.path.join(args.output, "all_to_all_steps_cache.json"))

    def evaluate(path: str) -> dict[str, float]:
        one = copy.copy(args)
        one.weights, one.name, one.force = path, None, True  # the per-step files follow the weights
        results = evaluate_file(one, env)
        return step_scores(results) if results else {}

    rows = extract.steps_on_ranks(env, evaluate, lambda ev: evaluate_steps(steps, cache, settings, ev,
                                                                           refresh=args.force))
    if rows is None:  # a rank other than 0
        return {}
    return report_steps(f"all-to-all per step (%), {args.weights}", rows,
                        os.path.join(args.output, "all_to_all_steps.json"), digits=3,
                        run_folder=os.path.abspath(args.weights))


def main(argv: list[str] | None = None) -> dict:
    """Entry point of ``python -m eval.all_to_all``; returns the results (rank 0)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", stream=sys.stdout)
    args = build_parser().parse_args(argv)
    _check_args(args)
    env = None
    if args.weights:
        from eval import extract

        env = extract.launch_env()
    try:
        if args.weights and os.path.isdir(args.weights):
            return evaluate_run_folder(args, env)
        if args.weights and not os.path.isfile(args.weights):
            raise FileNotFoundError(f"--weights {args.weights}: no such file or folder")
        return evaluate_file(args, env)
    finally:
        if env is not None:
            extract.finish_distributed(env)


if __name__ == "__main__":
    run_cli(main)
