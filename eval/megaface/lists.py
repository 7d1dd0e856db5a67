"""The MegaFace devkit's template lists (``devkit/templatelists/``).

* ``facescrub_features_list.json``: the FaceScrub probe set, ``{"id": [...], "path": [...]}``;
  ``path`` is relative to the FaceScrub image root (``Aaron_Eckhart/Aaron_Eckhart_136.png``) and
  ``id`` names the identity of each path.
* ``megaface_features_list.json_<size>_<set>``: the distractor set of ``size`` images for random
  set ``set`` (the devkit ships set 1 for sizes 10 ... 1000000), ``{"path": [...]}`` relative to
  the MegaFace image root (``375/37531198@N00/4174611825_0.jpg``).

The devkit's ``run_experiment.py`` reads exactly these names; we read (and, for the synthetic
tree, write) the same files.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

from utils.errors import UserError

PROBE_LIST_NAME = "facescrub_features_list.json"
DISTRACTOR_LIST_BASENAME = "megaface_features_list.json"
STANDARD_SIZES = (10, 100, 1000, 10000, 100000, 1000000)


class MegaFaceError(UserError, RuntimeError):
    """A MegaFace input (list, image, landmark or feature file) is missing or malformed."""


@dataclass
class ProbeList:
    """The FaceScrub probe list: relative image paths and the identity of each."""

    paths: list[str]
    ids: list[str]


def _load_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise MegaFaceError(f"{path}: list file not found") from None
    except json.JSONDecodeError as e:
        raise MegaFaceError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise MegaFaceError(
            f"{path}: expected a JSON object with a 'path' list, got {type(data).__name__}")
    return data


def _string_list(data: dict, key: str, path: str) -> list[str]:
    values = data.get(key)
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise MegaFaceError(f"{path}: key '{key}' must be a list of strings")
    return values


def read_probe_list(path: str) -> ProbeList:
    """Read ``facescrub_features_list.json``; ids default to each path's folder when absent."""
    data = _load_json(path)
    paths = _string_list(data, "path", path)
    if "id" in data:
        ids = _string_list(data, "id", path)
        if len(ids) != len(paths):
            raise MegaFaceError(f"{path}: 'id' has {len(ids)} entries but 'path' has {len(paths)}")
    else:
        # FaceScrub paths are <identity>/<file>; insightface's remove_noises.py uses that folder.
        parts = [p.replace("\\", "/").split("/") for p in paths]
        ids = [q[-2] if len(q) > 1 else q[0] for q in parts]
    if not paths:
        raise MegaFaceError(f"{path}: the probe list is empty")
    return ProbeList(paths=paths, ids=ids)


def distractor_list_path(templatelists: str, size: int, set_index: int = 1) -> str:
    """Path of the devkit's distractor list for ``size`` distractors, random set ``set_index``."""
    return os.path.join(templatelists, f"{DISTRACTOR_LIST_BASENAME}_{size}_{set_index}")


def available_sizes(templatelists: str, set_index: int = 1) -> list[int]:
    """Distractor-set sizes with a list file for ``set_index`` in ``templatelists``, ascending."""
    pattern = re.compile(re.escape(DISTRACTOR_LIST_BASENAME) + r"_(\d+)_" + str(set_index) + "$")
    try:
        names = os.listdir(templatelists)
    except FileNotFoundError:
        return []
    return sorted(int(m.group(1)) for m in map(pattern.match, names) if m)


def read_distractor_list(templatelists: str, size: int, set_index: int = 1) -> list[str]:
    """Relative image paths of the ``size``-distractor list (set ``set_index``)."""
    path = distractor_list_path(templatelists, size, set_index)
    if not os.path.exists(path):
        sizes = available_sizes(templatelists, set_index)
        raise MegaFaceError(
            f"{path}: distractor list for size {size} (set {set_index}) not found; "
            f"sizes available in {templatelists}: {sizes or 'none'}"
        )
    return _string_list(_load_json(path), "path", path)


def write_probe_list(path: str, paths: list[str], ids: list[str]) -> None:
    """Write a probe list in the devkit's format (used by the synthetic tree)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"id": list(ids), "path": list(paths)}, f, indent=4, sort_keys=True)


def write_distractor_list(
    templatelists: str, size: int, paths: list[str], set_index: int = 1
) -> str:
    """Write a distractor list in the devkit's format; returns its path."""
    path = distractor_list_path(templatelists, size, set_index)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"path": list(paths)}, f, indent=4, sort_keys=True)
    return path
