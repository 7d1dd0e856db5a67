"""IJB-B / IJB-C metrics with insightface's semantics (NumPy / SciPy / scikit-learn only).

1:1 verification follows insightface ``recognition/_evaluation_/ijb/ijb_11.py``; 1:N
identification follows its ``ijb_1n.py`` (closed set over G1+G2) and, for the per-gallery
open-set numbers, the ``ijb_evals.py -N`` script ContraFace ships.
"""

from __future__ import annotations

import itertools
import math
from typing import Iterable, Sequence

import numpy as np
import scipy.sparse
from sklearn.metrics import auc, roc_curve
from sklearn.preprocessing import normalize

# TAR is reported at these FARs (insightface's table columns)
FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
FPIRS = (0.01, 0.1)
RANKS = (1, 5, 10)


# ---------------------------------------------------------------- image -> template features


def image_input_features(
    embs: np.ndarray,
    embs_flip: np.ndarray | None,
    faceness: np.ndarray | None,
    use_norm_score: bool = True,
    use_detector_score: bool = True,
    use_flip_test: bool = True,
) -> np.ndarray:
    """Per-image features for template pooling, as insightface's TestMode switches.

    F1: add the mirrored image's embedding; N0: L2-normalise each image (N1 keeps the norm,
    which then acts as a quality weight); D1: multiply by the detector (faceness) score.
    Order as insightface: flip, then norm, then detector score.
    """
    feats = np.asarray(embs, np.float32)
    if use_flip_test:
        if embs_flip is None:
            raise ValueError("flip test (F1) requested but no mirrored-image features were given")
        feats = feats + np.asarray(embs_flip, np.float32)
    if not use_norm_score:
        feats = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    if use_detector_score:
        if faceness is None:
            raise ValueError("detector score (D1) requested but no faceness scores were given")
        feats = feats * np.asarray(faceness, np.float32)[:, None]
    return feats


def image2template_feature(
    img_feats: np.ndarray, templates: np.ndarray, medias: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(template_norm_feats, unique_templates): mean within a media, sum over medias, L2-normalise.

    Same result as insightface's per-template loop, as one sparse matrix product: image i of
    template t gets weight 1 / (number of images of its media within t). Rows follow the sorted
    unique template ids; float64, like insightface.
    """
    img_feats = np.asarray(img_feats)
    templates = np.asarray(templates).reshape(-1)
    medias = np.asarray(medias).reshape(-1)
    n = len(img_feats)
    if len(templates) != n or len(medias) != n:
        raise ValueError(
            f"{n} image features but {len(templates)} template ids and {len(medias)} media ids"
        )
    unique_templates, t_idx = np.unique(templates, return_inverse=True)
    t_idx = t_idx.reshape(-1)
    # A media can in principle appear in several templates: group by the (template, media) pair.
    _, tm_idx, tm_count = np.unique(
        np.stack([t_idx, medias], 1), axis=0, return_inverse=True, return_counts=True
    )
    weights = 1.0 / tm_count[tm_idx.reshape(-1)]
    pool = scipy.sparse.csr_matrix(
        (weights, (t_idx, np.arange(n))), shape=(len(unique_templates), n)
    )
    template_feats = np.asarray(pool @ img_feats.astype(np.float64))
    return normalize(template_feats), unique_templates


def template_rows(
    unique_templates: np.ndarray, wanted: np.ndarray, what: str = "pair list"
) -> np.ndarray:
    """Row of each id of ``wanted`` in ``unique_templates``; ValueError naming unknown ids."""
    unique_templates = np.asarray(unique_templates)
    wanted = np.asarray(wanted)
    small_ints = unique_templates.dtype.kind in "iu" and len(unique_templates) > 0
    if small_ints and unique_templates.min() >= 0 and unique_templates.max() < 1 << 26:
        # ids are small non-negative integers (IJB): a lookup table, O(1) per id
        table = np.full(int(unique_templates.max()) + 2, -1, np.int64)
        table[unique_templates] = np.arange(len(unique_templates))
        # negative and too-large ids land on the last slot, which is -1
        rows = table[np.clip(wanted, -1, len(table) - 1)]
        missing = rows < 0
    else:
        order = np.argsort(unique_templates, kind="stable")
        srt = unique_templates[order]
        pos = np.clip(np.searchsorted(srt, wanted), 0, len(srt) - 1)
        missing = srt[pos] != wanted
        rows = order[pos]
    if missing.any():
        ids = np.unique(wanted[missing])
        raise ValueError(
            f"{len(ids)} template id(s) of the {what} have no images in face_tid_mid: "
            f"{ids[:10].tolist()}{' ...' if len(ids) > 10 else ''}"
        )
    return rows


def _compact(rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values of ``rows`` sorted, index of each row among them); values in [0, n)."""
    present = np.zeros(n, bool)
    present[rows] = True
    distinct = np.flatnonzero(present)
    slot = np.cumsum(present) - 1
    return distinct, slot[rows]


def verification(
    template_norm_feats: np.ndarray,
    unique_templates: np.ndarray,
    p1: np.ndarray,
    p2: np.ndarray,
    batch_size: int = 100_000,
) -> np.ndarray:
    """Cosine score of each template pair (p1[k], p2[k]), computed in batches of pairs."""
    r1 = template_rows(unique_templates, p1)
    r2 = template_rows(unique_templates, p2)
    score = np.empty(len(r1), np.float64)
    u1, inv1 = _compact(r1, len(template_norm_feats))
    u2, inv2 = _compact(r2, len(template_norm_feats))
    if len(u1) * len(u2) <= 16 * len(r1):
        # IJB pairs reuse few templates (IJB-B: 1,845 distinct p1 for 8M pairs): a matrix
        # product per block of p1 templates, then picking the pairs, runs at BLAS speed
        # instead of gathering two 512-d rows per pair (several times faster on IJB-C).
        block = max(1, (1 << 25) // len(u2))  # ~256 MB of float64 similarities per block
        f2 = template_norm_feats[u2].T
        for start in range(0, len(u1), block):
            sims = template_norm_feats[u1[start : start + block]] @ f2
            sel = np.flatnonzero((inv1 >= start) & (inv1 < start + block))
            score[sel] = sims[inv1[sel] - start, inv2[sel]]
        return score
    for start in range(0, len(r1), batch_size):
        s = slice(start, start + batch_size)
        score[s] = np.einsum("ij,ij->i", template_norm_feats[r1[s]], template_norm_feats[r2[s]])
    return score


# ---------------------------------------------------------------- 1:1 verification


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, targets: Iterable[float] = FARS) -> list[float]:
    """insightface's pick: flip the ROC, take the first point whose FPR is closest to each target.

    Flipping makes the first of equally close points the one with the largest TPR.
    """
    fpr, tpr = np.flipud(np.asarray(fpr)), np.flipud(np.asarray(tpr))
    return [float(tpr[np.argmin(np.abs(fpr - x))]) for x in targets]


def evaluate_1v1(label: np.ndarray, score: np.ndarray, fars: Sequence[float] = FARS) -> dict:
    """TAR at each FAR (sklearn ROC + insightface pick), AUC and the ROC itself."""
    fpr, tpr, _ = roc_curve(label, score)
    return {
        "tar_at_far": dict(zip([f"{x:g}" for x in fars], tpr_at_fpr(fpr, tpr, fars))),
        "auc": float(auc(fpr, tpr)),
        "fpr": fpr,
        "tpr": tpr,
    }


# insightface's "bunch" order: N, D, F each True then False
TEST_MODES = tuple(
    f"N{n:d}D{d:d}F{f:d}" for n, d, f in itertools.product([1, 0], [1, 0], [1, 0])
)


def parse_test_mode(name: str) -> dict[str, bool]:
    """``"N1D1F1"`` -> keyword switches for :func:`image_input_features`."""
    key = name.strip().upper()
    if key not in TEST_MODES:
        raise ValueError(f"unknown IJB test mode '{name}'; known: {', '.join(TEST_MODES)}")
    return {
        "use_norm_score": key[1] == "1",
        "use_detector_score": key[3] == "1",
        "use_flip_test": key[5] == "1",
    }


# ---------------------------------------------------------------- 1:N identification


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _cmc(ranks: np.ndarray, max_rank: int) -> list[float]:
    return [float(np.mean(ranks <= r)) for r in range(1, max_rank + 1)]


def identification_closed(
    probe_feats: np.ndarray,
    probe_ids: np.ndarray,
    gallery_feats: np.ndarray,
    gallery_ids: np.ndarray,
    fpirs: Sequence[float] = FPIRS,
    ranks: Sequence[int] = RANKS,
    max_rank: int = 20,
    chunk: int = 2048,
) -> dict:
    """insightface ``ijb_1n.py``: closed-set search of every probe in one gallery (G1 + G2).

    Each probe subject must have exactly one gallery template (else ValueError, as its
    ``gen_mask``). With Q probes and cosine similarities S (Q x G):
    - rank-k = fraction of probes whose mated gallery template is among the k most similar;
      a probe's rank is 1 + the number of gallery templates scoring strictly higher than the
      mate (ties in the mate's favour; insightface's argsort leaves tie order unspecified);
    - TPIR at "FPIR" f: the threshold is the k-th largest of all Q*(G-1) non-mated
      similarities, k = ceil(Q*f); TPIR = fraction of probes whose mated similarity is
      strictly above it. The mate need not be rank 1, and f counts non-mated *pairs* per
      probe (not non-mated searches): this is insightface's definition, not NIST's.
    """
    probe_feats, gallery_feats = np.asarray(probe_feats), np.asarray(gallery_feats)
    probe_ids, gallery_ids = np.asarray(probe_ids), np.asarray(gallery_ids)
    q, g = len(probe_feats), len(gallery_feats)
    uniq, counts = np.unique(gallery_ids, return_counts=True)
    dup = uniq[counts > 1]
    if len(dup):
        raise ValueError(f"gallery has several templates for subject(s) {dup[:10].tolist()}")
    mate = template_rows(gallery_ids, probe_ids, what="probe subjects (not in the gallery)")
    needed = [math.ceil(q * f) for f in fpirs]
    keep = min(max(needed, default=1), q * (g - 1))
    top_neg = np.empty(0)
    rank = np.empty(q, np.int64)
    pos = np.empty(q, np.float64)
    for s in _chunks(q, chunk):
        sim = probe_feats[s] @ gallery_feats.T
        rows = np.arange(sim.shape[0])
        pos[s] = sim[rows, mate[s]]
        rank[s] = 1 + (sim > pos[s][:, None]).sum(1)
        sim[rows, mate[s]] = -np.inf
        neg = np.concatenate([top_neg, sim.ravel()])
        neg = neg[np.isfinite(neg)]
        if keep and len(neg) > keep:
            neg = np.partition(neg, len(neg) - keep)[len(neg) - keep :]
        top_neg = neg
    top_neg = np.sort(top_neg)[::-1]
    tpir, thresh = {}, {}
    for f, k in zip(fpirs, needed):
        if k < 1 or k > len(top_neg):
            tpir[f"{f:g}"], thresh[f"{f:g}"] = None, None
            continue
        th = float(top_neg[k - 1])
        thresh[f"{f:g}"] = th
        tpir[f"{f:g}"] = float(np.mean(pos > th))
    return {
        "num_probes": q,
        "num_gallery": g,
        "rank": {str(r): float(np.mean(rank <= r)) for r in ranks},
        "cmc": _cmc(rank, min(max_rank, g)),
        "tpir_at_fpir": tpir,
        "threshold": thresh,
    }


def identification_open(
    probe_feats: np.ndarray,
    probe_ids: np.ndarray,
    gallery_feats: np.ndarray,
    gallery_ids: np.ndarray,
    fpirs: Sequence[float] = FPIRS,
    ranks: Sequence[int] = RANKS,
    max_rank: int = 20,
    chunk: int = 2048,
) -> dict:
    """Open-set search in one gallery (G1 or G2), as ContraFace's ``ijb_evals.py -N``.

    Probes whose subject is in the gallery are mated searches, the others non-mated.
    - rank-k: fraction of mated searches whose mate is among the k most similar (rank = 1 +
      number of gallery templates scoring strictly higher); ``count`` holds the numbers of
      such searches so two galleries can be combined;
    - FPIR f: threshold t = the n_f-th largest top-1 similarity of the non-mated searches,
      n_f = max(int(n_nonmated * f), 1); TPIR = fraction of mated searches whose mate is
      strictly more similar than every other gallery template (rank 1) and than t.
    """
    probe_feats, gallery_feats = np.asarray(probe_feats), np.asarray(gallery_feats)
    probe_ids, gallery_ids = np.asarray(probe_ids), np.asarray(gallery_ids)
    uniq, counts = np.unique(gallery_ids, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1][:10].tolist()
        raise ValueError(f"gallery has several templates for subject(s) {dup}")
    mated = np.isin(probe_ids, gallery_ids)
    m_idx, n_idx = np.flatnonzero(mated), np.flatnonzero(~mated)
    mate = template_rows(gallery_ids, probe_ids[m_idx], what="mated probes")
    pos = np.empty(len(m_idx))
    best_other = np.empty(len(m_idx))
    rank = np.empty(len(m_idx), np.int64)
    for s in _chunks(len(m_idx), chunk):
        sim = probe_feats[m_idx[s]] @ gallery_feats.T
        rows = np.arange(sim.shape[0])
        pos[s] = sim[rows, mate[s]]
        rank[s] = 1 + (sim > pos[s][:, None]).sum(1)
        sim[rows, mate[s]] = -np.inf
        best_other[s] = sim.max(1)
    nonmated_top = np.empty(len(n_idx))
    for s in _chunks(len(n_idx), chunk):
        nonmated_top[s] = (probe_feats[n_idx[s]] @ gallery_feats.T).max(1)
    nonmated_top = np.sort(nonmated_top)[::-1]
    correct = pos > best_other
    tpir, thresh = {}, {}
    for f in fpirs:
        if len(nonmated_top) == 0 or len(m_idx) == 0:
            tpir[f"{f:g}"], thresh[f"{f:g}"] = None, None
            continue
        th = float(nonmated_top[max(int(len(nonmated_top) * f) - 1, 0)])
        thresh[f"{f:g}"] = th
        tpir[f"{f:g}"] = float(np.mean(correct & (pos > th)))
    n_m = max(len(m_idx), 1)
    return {
        "num_mated": int(len(m_idx)),
        "num_nonmated": int(len(n_idx)),
        "num_gallery": int(len(gallery_ids)),
        "rank": {str(r): float(np.sum(rank <= r) / n_m) for r in ranks},
        "count": {str(r): int(np.sum(rank <= r)) for r in ranks},
        "cmc": _cmc(rank, min(max_rank, len(gallery_ids))) if len(m_idx) else [],
        "tpir_at_fpir": tpir,
        "threshold": thresh,
    }


def combine_open(results: dict[str, dict], num_probes: int) -> dict:
    """ContraFace's "Mean" row: top-k = summed counts / all probes; TPIR = mean over galleries."""
    first = next(iter(results.values()))
    rank = {r: sum(res["count"][r] for res in results.values()) / num_probes
            for r in first["count"]}
    tpir = {}
    for f in first["tpir_at_fpir"]:
        vals = [res["tpir_at_fpir"][f] for res in results.values()]
        tpir[f] = None if any(v is None for v in vals) else float(np.mean(vals))
    return {"rank": rank, "tpir_at_fpir": tpir}


def select_templates(
    template_norm_feats: np.ndarray,
    unique_templates: np.ndarray,
    list_templates: np.ndarray,
    list_subjects: np.ndarray,
    what: str = "1:N list",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, template ids and subject ids of the templates named in a 1:N list (one row per
    image, as the CSVs): unique templates in sorted order, subject of each from its first row."""
    templates, first = np.unique(np.asarray(list_templates), return_index=True)
    subjects = np.asarray(list_subjects)[first]
    rows = template_rows(unique_templates, templates, what=what)
    return template_norm_feats[rows], templates, subjects
