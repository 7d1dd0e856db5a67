"""Evaluating a run folder step by step: a result cache per weight file, the best step, a table.

The three evaluators (``eval.evaluation``, ``eval.ijb.ijb_eval``, ``eval.megaface.megaface_eval``)
accept a run folder as ``--weights``: each per-step weight file (``utils.run_files.
list_step_weights``) is evaluated once; its results are cached in a JSON file keyed by the file's
name and :func:`file_stamp` and by the evaluation's settings, so a re-run evaluates only the
files that are new or changed. The report is one row per step and the best step per metric and
by the mean of the metrics (the paper's tables are each benchmark's best over epochs).

:func:`file_stamp` is also what every evaluator puts in its cache keys for its input files
(verification .bin files, IJB lists, MegaFace lists, the weights of a feature cache).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Callable, Mapping, Sequence

from utils.fileio import atomic_write_bytes

__all__ = [
    "settings_key", "optional_settings", "file_stamp", "ResultCache", "evaluate_steps", "best_steps",
    "format_steps", "report_steps",
]

log = logging.getLogger(__name__)


def settings_key(settings: Mapping[str, Any]) -> str:
    """A short stable hash of what, besides the weights, determines a result."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def optional_settings(**values: Any) -> dict[str, Any]:
    """The options that were given (not None): a new option keeps the keys of runs made without it."""
    return {key: value for key, value in values.items() if value is not None}


def file_stamp(path: str | os.PathLike) -> dict[str, int]:
    """What tells one version of a file from another: ``{"size", "mtime_ns"}`` (nanoseconds).

    The location is not in it: a key that depends on where the file is adds its path.
    """
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


class ResultCache:
    """Results per (weight file, settings) in one JSON file; an entry is valid while the file is unchanged."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self.entries: dict[str, dict] = {}
        if os.path.isfile(self.path):
            try:
                with open(self.path, encoding="utf-8") as f:
                    self.entries = json.load(f)["entries"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                # a cache is only a shortcut: a broken one means evaluating again, not failing
                log.warning("%s: unreadable result cache (%s); starting a new one", self.path, exc)

    @staticmethod
    def _key(weights: str, settings: str) -> str:
        return f"{os.path.basename(weights)}|{settings}"

    def get(self, weights: str, settings: str) -> Any | None:
        """The cached result of ``weights`` under ``settings``, or None (absent or file changed)."""
        entry = self.entries.get(self._key(weights, settings))
        if entry is None or entry.get("stamp") != file_stamp(weights):
            return None
        return entry["result"]

    def put(self, weights: str, settings: str, result: Any) -> None:
        """Remember ``result`` and write the cache file at once (a crash keeps what was done)."""
        self.entries[self._key(weights, settings)] = {"stamp": file_stamp(weights), "result": result}
        try:
            data = json.dumps({"entries": self.entries}, indent=1, sort_keys=True).encode()
            atomic_write_bytes(self.path, data)
        except OSError as exc:  # e.g. a read-only run folder: the results are still reported
            log.warning("%s: cannot write the result cache (%s)", self.path, exc)


def evaluate_steps(
    steps: Sequence[tuple[int | None, str]],
    cache: ResultCache,
    settings: str | Mapping[str, str],
    evaluate: Callable[..., dict[str, Any]],
    refresh: bool = False,
    skip: tuple[type[BaseException], ...] = (),
) -> list[dict]:
    """One row per (step, weight file): its scores from ``cache``, else evaluated (then cached).

    ``settings`` one key: ``evaluate(path)`` gives the file's scores, cached as one entry.
    ``settings`` a key per part (e.g. per verification set): ``evaluate(path, parts)`` gives
    ``{part: result}`` for the parts the cache lacks, each cached on its own, so a new part costs
    only itself; the row's scores are ``{part: result}`` in the order of ``settings``.
    ``refresh`` evaluates everything again. A file whose evaluation raises one of ``skip`` gets a
    row with ``"error"`` (the message) and no scores, and nothing is cached for it.
    Rows: ``{"step", "name", "weights", "scores"}`` (or ``"error"``).
    """
    rows = []
    for step, path in steps:
        row: dict[str, Any] = {"step": step, "name": os.path.basename(path), "weights": os.path.abspath(path)}
        try:
            if isinstance(settings, str):
                row["scores"] = _evaluate_whole(path, cache, settings, evaluate, refresh)
            else:
                row["scores"] = _evaluate_parts(path, cache, settings, evaluate, refresh)
        except skip as exc:
            log.warning("skipping %s: %s", path, exc)
            row["error"] = str(exc)
        rows.append(row)
    return rows


def _evaluate_whole(path: str, cache: ResultCache, settings: str, evaluate: Callable, refresh: bool) -> Any:
    scores = None if refresh else cache.get(path, settings)
    if scores is None:
        scores = evaluate(path)
        cache.put(path, settings, scores)
    else:
        log.info("%s: results from %s", os.path.basename(path), cache.path)
    return scores


def _evaluate_parts(
    path: str, cache: ResultCache, settings: Mapping[str, str], evaluate: Callable, refresh: bool
) -> dict[str, Any]:
    found = {} if refresh else {part: cache.get(path, key) for part, key in settings.items()}
    found = {part: result for part, result in found.items() if result is not None}
    missing = [part for part in settings if part not in found]
    if missing:
        new = evaluate(path, missing)
        for part in missing:
            cache.put(path, settings[part], new[part])
        found.update(new)
    else:
        log.info("%s: results from %s", os.path.basename(path), cache.path)
    return {part: found[part] for part in settings}


def best_steps(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> dict[str, dict]:
    """The best row per metric (highest value) and by the mean of ``metrics``.

    ``rows``: ``{"step", "name", "scores": {metric: value}}``; a row missing a metric does not
    compete for it, nor for the mean. Returns ``{metric or "mean": {"step", "name", "value"}}``;
    ties go to the earlier step.
    """
    best: dict[str, dict] = {}

    def offer(key: str, row: Mapping[str, Any], value: float) -> None:
        if key not in best or value > best[key]["value"]:
            best[key] = {"step": row.get("step"), "name": row["name"], "value": value}

    for row in rows:
        scores = row.get("scores") or {}
        for metric in metrics:
            if scores.get(metric) is not None:
                offer(metric, row, float(scores[metric]))
        if metrics and all(scores.get(m) is not None for m in metrics):
            offer("mean", row, sum(float(scores[m]) for m in metrics) / len(metrics))
    return best


def format_steps(
    rows: Sequence[Mapping[str, Any]], metrics: Sequence[str], scale: float = 100.0, digits: int = 2
) -> str:
    """A step x metric table (values x ``scale``) with the mean, then the best step per column."""
    best = best_steps(rows, metrics)
    header = ["step", "file", *metrics, "mean"]
    cells = []
    for row in rows:
        scores = row.get("scores") or {}
        values = [scores.get(m) for m in metrics]
        mean = sum(values) / len(values) if values and None not in values else None
        cells.append([
            "-" if row.get("step") is None else str(row["step"]), row["name"],
            *("-" if v is None else f"{v * scale:.{digits}f}" for v in [*values, mean]),
        ])
    best_row = ["best", ""]
    for key in [*metrics, "mean"]:
        b = best.get(key)
        best_row.append("-" if b is None else f"{b['value'] * scale:.{digits}f} @{b['step']}")
    table = [header, *cells, best_row]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 1 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    rule = line(["-" * w for w in widths])
    return "\n".join([line(header), rule, *map(line, cells), rule, line(best_row)])


def report_steps(
    title: str,
    rows: Sequence[Mapping[str, Any]],
    path: str | None,
    digits: int = 2,
    metrics: Sequence[str] | None = None,
    **fields: Any,
) -> dict:
    """Print ``title`` and the step table; write the summary (``fields``, metrics, steps, best) to ``path``.

    ``metrics`` default: the first row's score names. ``path`` None: the summary is only returned.
    """
    metrics = list(metrics if metrics is not None else rows[0]["scores"])
    print(f"\n{title}")
    print(format_steps(rows, metrics, digits=digits))
    summary = {**fields, "metrics": metrics, "steps": list(rows), "best": best_steps(rows, metrics)}
    if path is not None:
        atomic_write_bytes(path, json.dumps(summary, indent=2).encode())
        print(f"\nper-step results: {path}")
    return summary
