"""Devkit-free MegaFace challenge 1 (FaceScrub probes): identification CMC and verification TAR@FAR.

Scores. ``score(a, b) = -||a - b||^2``, the negative squared Euclidean distance. On L2-normalised
features it is ``2 cos(a, b) - 2``, so it ranks pairs exactly as cosine similarity does; unlike
cosine it also honours insightface's noise rule (eval.megaface.noises: a noisy distractor gets an
extra coordinate of 100 and so lies far from every probe), which relies on distance-based scores
as the devkit's are.

Identification (the MegaFace definition, as the devkit's ``FuseResults``): for every FaceScrub
identity and every ordered pair (p, g) of two different images of it, image g is added to the
gallery of N distractors and image p is the probe. The rank of the pair is 1 + the number of
distractors scoring strictly higher than g against p (ties go to the true match); the CMC at rank r
is the fraction of all such pairs with rank <= r, and rank-1 identification is CMC(1). Other
FaceScrub images are never in the gallery. The pass over distractors is chunked: only each probe's
``max_rank`` best distractor scores are kept, so 1M distractors need memory for one chunk of
scores plus (probes x max_rank) values.

Verification: positives are all unordered same-identity FaceScrub pairs; negatives are all
(FaceScrub probe, distractor) pairs, n_probes x N of them. TAR at FAR f accepts a pair when its
score is strictly above the (k+1)-th highest negative score, k = floor(f * n_negatives): at most
k negatives (a fraction <= f) are accepted. Only the highest ``max k + 1`` negative scores are kept
during the chunked pass.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

DEFAULT_FARS = (1e-6, 1e-5, 1e-4, 1e-3)
DEFAULT_MAX_RANK = 100
DEFAULT_CHUNK = 16384


def pair_scores(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(len(a), len(b)) matrix of ``-||a_i - b_j||^2``."""
    sq_a = (a * a).sum(1, keepdim=True)
    sq_b = (b * b).sum(1, keepdim=True).T
    # in place: the (probes x chunk) matrix is the largest allocation of a MegaFace run
    return (a @ b.T).mul_(2.0).sub_(sq_a).sub_(sq_b)


def _groups(ids: Sequence[str]) -> list[np.ndarray]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, ident in enumerate(ids):
        groups[ident].append(i)
    return [np.asarray(m, dtype=np.int64) for m in groups.values()]


def genuine_pairs(ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """All ordered pairs (probe index, gallery index) of two different images of one identity."""
    probe, gallery = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for m in _groups(ids):
        pi, gi = np.meshgrid(m, m, indexing="ij")
        off = pi != gi
        probe.append(pi[off])
        gallery.append(gi[off])
    return np.concatenate(probe), np.concatenate(gallery)


def genuine_pair_scores(
    features: np.ndarray, ids: Sequence[str], device: torch.device | str = "cpu"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """genuine_pairs(ids) and their scores, from one small score block per identity."""
    feats = torch.as_tensor(np.asarray(features, dtype=np.float32)).to(device)
    probe, gallery = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    scores = [np.zeros(0, np.float32)]
    for m in _groups(ids):
        pi, gi = np.meshgrid(m, m, indexing="ij")
        off = pi != gi
        rows = feats[torch.as_tensor(m, device=feats.device)]
        block = pair_scores(rows, rows).cpu().numpy()
        probe.append(pi[off])
        gallery.append(gi[off])
        scores.append(block[off])
    return np.concatenate(probe), np.concatenate(gallery), np.concatenate(scores)


class TopValues:
    """The ``k`` largest values seen in a stream of 1-D tensors, sorted descending."""

    def __init__(self, k: int, device: torch.device | str = "cpu"):
        self.k = int(k)
        self.values = torch.empty(0, device=device)

    def update(self, values: torch.Tensor) -> None:
        """Merge ``values`` into the running top-k."""
        if self.k <= 0:
            return
        values = values.reshape(-1)
        if self.values.numel() >= self.k:
            # Anything not above the current k-th value cannot enter: filtering first keeps the
            # merge small after the first chunks.
            values = values[values > self.values[-1]]
            if values.numel() == 0:
                return
        merged = torch.cat([self.values, values.to(self.values.dtype)])
        if merged.numel() > self.k:
            self.values = torch.topk(merged, self.k, sorted=True).values
        else:
            self.values = torch.sort(merged, descending=True).values


@dataclass
class DistractorScan:
    """What identification and verification need from the probe x distractor scores."""

    probe_topk: np.ndarray  # (n_probes, max_rank) best distractor scores per probe, descending
    top_negatives: np.ndarray  # highest probe x distractor scores overall, descending
    n_negatives: int


def negatives_to_keep(fars: Sequence[float], n_negatives: int) -> int:
    """How many of the highest negative scores TAR at the largest of ``fars`` needs."""
    if not fars:
        return 0
    return min(n_negatives, _allowed_negatives(max(fars), n_negatives) + 1)


def _allowed_negatives(far: float, n_negatives: int) -> int:
    # the (1 + 1e-9) guards against 1e-3 * 1000 = 0.9999999 flooring to 0
    return int(math.floor(far * n_negatives * (1 + 1e-9)))


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float32)) if isinstance(x, np.ndarray) else x


def scan_distractors(
    probes: np.ndarray | torch.Tensor,
    distractors: np.ndarray | torch.Tensor,
    max_rank: int = DEFAULT_MAX_RANK,
    keep_negatives: int = 0,
    chunk_size: int = DEFAULT_CHUNK,
    device: torch.device | str = "cpu",
    desc: str = "distractors",
) -> DistractorScan:
    """One chunked pass over the distractors: per-probe top ``max_rank`` and the top negatives."""
    device = torch.device(device)
    p = _as_tensor(probes).to(device=device, dtype=torch.float32)
    n_dist = len(distractors)
    # -inf pads the top-k while fewer than max_rank distractors are seen: it never outranks a match
    best = torch.full((len(p), max_rank), -math.inf, device=device)
    negatives = TopValues(keep_negatives, device)
    for start in tqdm(range(0, n_dist, chunk_size), desc=desc, unit="chunk", leave=False):
        chunk = distractors[start:start + chunk_size]
        scores = pair_scores(p, _as_tensor(chunk).to(device=device, dtype=torch.float32))
        # top-k of the chunk first, then merge: no copy of the whole chunk of scores
        chunk_best = torch.topk(scores, min(max_rank, scores.shape[1]), dim=1, sorted=False).values
        best = torch.topk(torch.cat([best, chunk_best], dim=1), max_rank, dim=1, sorted=True).values
        negatives.update(scores)
    return DistractorScan(
        probe_topk=best.cpu().numpy(),
        top_negatives=negatives.values.cpu().numpy(),
        n_negatives=len(p) * n_dist,
    )


def identification_ranks(
    genuine_scores: np.ndarray,
    probe_index: np.ndarray,
    probe_topk: np.ndarray,
    pair_chunk: int = 65536,
) -> np.ndarray:
    """Rank of each genuine pair: 1 + distractors strictly above it (max_rank + 1: beyond)."""
    max_rank = probe_topk.shape[1]
    ranks = np.empty(len(genuine_scores), dtype=np.int64)
    for s in range(0, len(genuine_scores), pair_chunk):
        g = genuine_scores[s:s + pair_chunk, None]
        above = (probe_topk[probe_index[s:s + pair_chunk]] > g).sum(1)
        ranks[s:s + pair_chunk] = np.minimum(above, max_rank) + 1
    return ranks


def cmc_curve(ranks: np.ndarray, max_rank: int) -> np.ndarray:
    """CMC rates at ranks 1..max_rank: the fraction of genuine pairs with rank <= r."""
    if len(ranks) == 0:
        return np.zeros(max_rank)
    counts = np.bincount(np.minimum(ranks, max_rank + 1), minlength=max_rank + 2)[1:max_rank + 1]
    return np.cumsum(counts) / len(ranks)


def tar_at_far(
    positive_scores: np.ndarray, top_negatives: np.ndarray, n_negatives: int, fars: Sequence[float]
) -> dict[str, list[float]]:
    """TAR, score threshold (accept above it) and achieved FAR at each FAR (module docstring)."""
    pos = np.sort(np.asarray(positive_scores, dtype=np.float64))
    neg = np.asarray(top_negatives, dtype=np.float64)
    out: dict[str, list] = {"far": [], "tar": [], "threshold": [], "achieved_far": []}
    for far in fars:
        k = _allowed_negatives(far, n_negatives)
        if k >= n_negatives:
            # everything accepted: no threshold (None, as JSON has no -inf)
            thr, tar, achieved = None, 1.0, 1.0
        else:
            if k >= len(neg):
                raise ValueError(
                    f"TAR at FAR {far} needs the {k + 1} highest negatives, only {len(neg)} "
                    "were kept"
                )
            thr = float(neg[k])
            tar = float(len(pos) - np.searchsorted(pos, thr, side="right")) / max(len(pos), 1)
            achieved = float((neg[:k] > thr).sum()) / n_negatives
        out["far"].append(float(far))
        out["tar"].append(tar)
        out["threshold"].append(thr)
        out["achieved_far"].append(achieved)
    return out


def _roc_grid(n_negatives: int, max_far: float, points: int = 50) -> list[float]:
    lo = 1.0 / max(n_negatives, 1)
    if max_far <= lo:
        return [max_far]
    return np.logspace(math.log10(lo), math.log10(max_far), points).tolist()


def summarize(
    ranks: np.ndarray,
    positive_scores: np.ndarray,
    scan: DistractorScan,
    n_distractors: int,
    ids: Sequence[str],
    max_rank: int,
    fars: Sequence[float],
) -> dict:
    """The JSON-ready result for one distractor-set size."""
    cmc = cmc_curve(ranks, max_rank)
    verification = tar_at_far(positive_scores, scan.top_negatives, scan.n_negatives, fars)
    roc_fars = _roc_grid(scan.n_negatives, max(fars)) if fars else []
    roc = tar_at_far(positive_scores, scan.top_negatives, scan.n_negatives, roc_fars)
    return {
        "distractors": int(n_distractors),
        "probes": len(ids),
        "identities": len(set(ids)),
        "genuine_pairs": int(len(ranks)),
        "rank1": float(cmc[0]) if len(cmc) else 0.0,
        "cmc": {"ranks": list(range(1, max_rank + 1)), "rates": cmc.tolist()},
        "verification": {
            "positives": int(len(positive_scores)),
            "negatives": int(scan.n_negatives),
            **verification,
        },
        "roc": {"far": roc["far"], "tar": roc["tar"]},
    }


def evaluate(
    probe_features: np.ndarray,
    probe_ids: Sequence[str],
    distractor_features: np.ndarray,
    max_rank: int = DEFAULT_MAX_RANK,
    fars: Sequence[float] = DEFAULT_FARS,
    chunk_size: int = DEFAULT_CHUNK,
    device: torch.device | str = "cpu",
    desc: str = "distractors",
) -> dict:
    """Challenge-1 identification (CMC) and verification (TAR@FAR) for one distractor set."""
    n_neg = len(probe_features) * len(distractor_features)
    scan = scan_distractors(
        probe_features, distractor_features, max_rank, negatives_to_keep(fars, n_neg),
        chunk_size, device, desc,
    )
    probe_index, gallery_index, genuine = genuine_pair_scores(probe_features, probe_ids, device)
    ranks = identification_ranks(genuine, probe_index, scan.probe_topk)
    positives = genuine[probe_index < gallery_index]
    return summarize(ranks, positives, scan, len(distractor_features), probe_ids, max_rank, fars)


def evaluate_from_scores(
    probe_scores: np.ndarray,
    distractor_scores: np.ndarray,
    probe_ids: Sequence[str],
    max_rank: int = DEFAULT_MAX_RANK,
    fars: Sequence[float] = DEFAULT_FARS,
) -> dict:
    """The same protocol from full score matrices (probe x probe, probe x distractor)."""
    probe_scores = np.asarray(probe_scores, dtype=np.float32)
    distractor_scores = np.asarray(distractor_scores, dtype=np.float32)
    n_probe, n_dist = distractor_scores.shape
    padded = np.full((n_probe, max_rank), -np.inf, dtype=np.float32)
    top = -np.sort(-distractor_scores, axis=1)[:, :max_rank]
    padded[:, :top.shape[1]] = top
    scan = DistractorScan(
        probe_topk=padded,
        top_negatives=-np.sort(-distractor_scores.reshape(-1)),
        n_negatives=n_probe * n_dist,
    )
    probe_index, gallery_index = genuine_pairs(probe_ids)
    genuine = probe_scores[probe_index, gallery_index]
    ranks = identification_ranks(genuine, probe_index, scan.probe_topk)
    positives = genuine[probe_index < gallery_index]
    return summarize(ranks, positives, scan, n_dist, probe_ids, max_rank, fars)
