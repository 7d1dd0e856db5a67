"""Write a tiny MegaFace-format tree of synthetic faces, for tests and demos.

    python -m tools.make_synthetic_megaface --output data/megaface_synth \\
        [--identities 8 --distractors 100]

Layout (insightface's MegaFace package, so eval.megaface.megaface_eval's defaults find everything):

    OUT/facescrub_images/<Name>/<Name>_<id>.png      FaceScrub-like probes: --identities people with
                                                     --images-per-id images each
    OUT/megaface_images/<a1>/<user>/<photo>_<n>.jpg  distractors, one synthetic person each
    OUT/devkit/templatelists/facescrub_features_list.json            {"id": [...], "path": [...]}
    OUT/devkit/templatelists/megaface_features_list.json_<size>_1    {"path": [...]} (nested sets)
    OUT/facescrub_noises.txt, OUT/megaface_noises.txt            insightface's noise-list formats
    OUT/facescrub_lst, OUT/megaface_lst                          plain path lists (as the package)
    OUT/manifest.json                                                parameters and what is where

Images are 112x112 aligned crops rendered by tools.synthetic_faces, except ``--unaligned`` probes
and distractors: those are placed by a random similarity in a larger picture, with MegaFace's
per-image landmark file ``<image>.json`` (``{"bounding_box": ..., "landmarks": {"0": {"x", "y"},
...}}``, the five ArcFace points) so the evaluation has to align them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile

import cv2
import numpy as np
from tqdm import tqdm

from eval.alignment import ARCFACE_TEMPLATE
from eval.megaface.lists import STANDARD_SIZES, write_distractor_list, write_probe_list
from tools import synthetic_faces as sf
from utils.cli import run_cli
from utils.fileio import refuse_overwrite

# SeedSequence words keeping these faces apart from the other synthetic sets' streams
STREAM_MEGAFACE = 0x3F
KIND_PROBE_ID, KIND_PROBE_IMG, KIND_DISTRACTOR, KIND_PLACE, KIND_PLAN = 1, 2, 3, 4, 5
ENTRIES = (
    "facescrub_images", "megaface_images", "devkit/templatelists", "facescrub_noises.txt",
    "megaface_noises.txt", "facescrub_lst", "megaface_lst", "manifest.json",
)
NOISE_HEADER = "#synthetic noise list (insightface's format: one entry a line, '#': comment)\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(
        prog="python -m tools.make_synthetic_megaface",
        description="Generate a tiny MegaFace/FaceScrub-format tree of synthetic faces.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--output", required=True)
    p.add_argument("--identities", type=int, default=8, help="FaceScrub-like probe identities")
    p.add_argument("--images-per-id", type=int, default=5)
    p.add_argument("--distractors", type=int, default=100)
    p.add_argument("--sizes", type=int, nargs="+",
                   help="distractor-list sizes (default: 10, 100, ... up to --distractors)")
    p.add_argument("--unaligned", type=int, default=2,
                   help="probes and distractors (each) written unaligned with a landmark .json")
    p.add_argument("--facescrub-noises", type=int, default=2, help="probe images listed as noise")
    p.add_argument("--megaface-noises", type=int, default=3, help="distractors listed as noise")
    p.add_argument("--profile", default="lfw", help="tools.synthetic_faces nuisance profile")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace this tool's entries in --output")
    args = p.parse_args(argv)
    if args.identities < 1 or args.images_per_id < 2 or args.distractors < 1:
        p.error("need --identities >= 1, --images-per-id >= 2 and --distractors >= 1")
    if args.facescrub_noises > args.identities * (args.images_per_id - 1):
        p.error("--facescrub-noises: every identity must keep at least one clean image")
    if args.megaface_noises > args.distractors:
        p.error("--megaface-noises exceeds --distractors")
    standard = [s for s in STANDARD_SIZES if s <= args.distractors] or [args.distractors]
    args.sizes = sorted(set(args.sizes or standard))
    if args.sizes[-1] > args.distractors:
        p.error(f"--sizes {args.sizes[-1]} exceeds --distractors {args.distractors}")
    sf.get_profile(args.profile)  # unknown names fail here, listing the known ones
    return args


def place_face(face: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Put an aligned 112x112 face into a larger picture; returns (picture, 2x3 crop->picture)."""
    scale = rng.uniform(1.2, 2.0)
    angle = np.deg2rad(rng.uniform(-20, 20))
    h, w = int(112 * scale * rng.uniform(1.3, 1.6)), int(112 * scale * rng.uniform(1.3, 1.6))
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    centre = np.array([w / 2, h / 2]) + rng.uniform(-0.05, 0.05, 2) * (w, h)
    mat = np.hstack([rot, (centre - rot @ np.array([56.0, 56.0]))[:, None]])
    canvas = np.full((h, w, 3), rng.uniform(60, 200, 3), np.float32).astype(np.uint8)
    cv2.warpAffine(face, mat, (w, h), dst=canvas, flags=cv2.INTER_CUBIC,
                   borderMode=cv2.BORDER_TRANSPARENT)
    return canvas, mat


def landmark_json(mat: np.ndarray) -> dict:
    """MegaFace-style landmark record of a face placed by ``mat``: the template points, moved."""
    pts = ARCFACE_TEMPLATE.astype(np.float64) @ mat[:, :2].T + mat[:, 2]
    square = np.array([[0, 0], [112, 0], [0, 112], [112, 112]], np.float64)
    corners = square @ mat[:, :2].T + mat[:, 2]
    x0, y0 = corners.min(0)
    x1, y1 = corners.max(0)
    return {
        "bounding_box": {"x": round(float(x0), 3), "y": round(float(y0), 3),
                         "width": round(float(x1 - x0), 3), "height": round(float(y1 - y0), 3)},
        "landmarks": {str(i): {"x": round(float(x), 4), "y": round(float(y), 4)}
                      for i, (x, y) in enumerate(pts)},
    }


def write_image(
    root: str, rel: str, face: np.ndarray, unaligned: bool, rng: np.random.Generator
) -> None:
    """Write ``face`` at root/rel (format by extension); unaligned: placed, with a landmark file."""
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = face
    if unaligned:
        img, mat = place_face(face, rng)
        with open(path + ".json", "w", encoding="utf-8") as f:
            json.dump(landmark_json(mat), f, indent=1)
    ext = os.path.splitext(rel)[1].lower()
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, img, params)
    if not ok:
        raise RuntimeError(f"{path}: could not encode the image")
    with open(path, "wb") as f:
        f.write(buf.tobytes())


def plan(args: argparse.Namespace) -> dict:
    """Names, paths, which images are unaligned and which are listed as noise."""
    rng = np.random.default_rng([args.seed, STREAM_MEGAFACE, KIND_PLAN, 0])
    probes = []
    image_id = 100
    for i in range(args.identities):
        name = f"Synth_Person{i:03d}"
        for _ in range(args.images_per_id):
            image_id += int(rng.integers(1, 40))  # FaceScrub numbers its images globally
            probes.append({"id": name, "identity": i, "path": f"{name}/{name}_{image_id}.png"})
    distractors = []
    for j in range(args.distractors):
        user = f"{int(rng.integers(10**7, 10**8))}@N0{int(rng.integers(0, 9))}"
        photo = int(rng.integers(10**8, 10**10))
        face = int(rng.integers(0, 4))
        distractors.append({"index": j, "path": f"{user[:3]}/{user}/{photo}_{face}.jpg"})
    # noise only among non-first images of an identity, so each keeps a clean one
    candidates = [k for k, p in enumerate(probes) if k % args.images_per_id != 0]
    fs_noise = sorted(rng.choice(candidates, args.facescrub_noises, replace=False).tolist())
    mf_noise = sorted(rng.choice(len(distractors), args.megaface_noises, replace=False).tolist())
    un_p = sorted(rng.choice(len(probes), min(args.unaligned, len(probes)), replace=False).tolist())
    un_d = sorted(rng.choice(len(distractors), min(args.unaligned, len(distractors)),
                             replace=False).tolist())
    for k in un_p:
        probes[k]["unaligned"] = True
    for k in un_d:
        distractors[k]["unaligned"] = True
    return {"probes": probes, "distractors": distractors,
            "facescrub_noise": fs_noise, "megaface_noise": mf_noise}


def render_tree(args: argparse.Namespace, layout: dict, root: str) -> None:
    """Render and write every image, then the lists."""
    profile = sf.get_profile(args.profile)
    identities = {}
    for k, p in enumerate(tqdm(layout["probes"], desc="facescrub", unit="img")):
        if p["identity"] not in identities:
            identities[p["identity"]] = sf.sample_identity(
                np.random.default_rng([args.seed, STREAM_MEGAFACE, KIND_PROBE_ID, p["identity"]]))
        rng = np.random.default_rng([args.seed, STREAM_MEGAFACE, KIND_PROBE_IMG, k])
        face = sf.render(identities[p["identity"]], sf.sample_nuisance(rng, profile), rng)
        place = np.random.default_rng([args.seed, STREAM_MEGAFACE, KIND_PLACE, k])
        write_image(os.path.join(root, "facescrub_images"), p["path"], face,
                    p.get("unaligned", False), place)
    for d in tqdm(layout["distractors"], desc="megaface", unit="img"):
        rng = np.random.default_rng([args.seed, STREAM_MEGAFACE, KIND_DISTRACTOR, d["index"]])
        face = sf.render(sf.sample_identity(rng), sf.sample_nuisance(rng, profile), rng)
        place = np.random.default_rng([args.seed, STREAM_MEGAFACE, KIND_PLACE, 10**6 + d["index"]])
        write_image(os.path.join(root, "megaface_images"), d["path"], face,
                    d.get("unaligned", False), place)

    lists = os.path.join(root, "devkit", "templatelists")
    os.makedirs(lists)
    probe_paths = [p["path"] for p in layout["probes"]]
    write_probe_list(os.path.join(lists, "facescrub_features_list.json"), probe_paths,
                     [p["id"] for p in layout["probes"]])
    dist_paths = [d["path"] for d in layout["distractors"]]
    for size in args.sizes:
        write_distractor_list(lists, size, dist_paths[:size])
    with open(os.path.join(root, "facescrub_noises.txt"), "w", encoding="utf-8") as f:
        f.write(NOISE_HEADER)
        f.writelines(os.path.basename(probe_paths[k]) + "\n" for k in layout["facescrub_noise"])
    with open(os.path.join(root, "megaface_noises.txt"), "w", encoding="utf-8") as f:
        f.write(NOISE_HEADER)
        f.writelines(dist_paths[k] + "\n" for k in layout["megaface_noise"])
    with open(os.path.join(root, "facescrub_lst"), "w", encoding="utf-8") as f:
        f.writelines(p + "\n" for p in probe_paths)
    with open(os.path.join(root, "megaface_lst"), "w", encoding="utf-8") as f:
        f.writelines(p + "\n" for p in dist_paths)
    manifest = {
        "generator": "tools.make_synthetic_megaface",
        "params": {k: v for k, v in vars(args).items() if k not in ("output", "force")},
        "probes": len(probe_paths),
        "identities": args.identities,
        "distractors": len(dist_paths),
        "sizes": args.sizes,
        "facescrub_noises": [probe_paths[k] for k in layout["facescrub_noise"]],
        "megaface_noises": [dist_paths[k] for k in layout["megaface_noise"]],
        "unaligned": [p["path"] for p in layout["probes"] if p.get("unaligned")]
        + [d["path"] for d in layout["distractors"] if d.get("unaligned")],
    }
    with open(os.path.join(root, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m tools.make_synthetic_megaface``."""
    args = parse_args(argv)
    targets = [os.path.join(args.output, e) for e in ENTRIES]
    refuse_overwrite(targets, args.force)
    os.makedirs(args.output, exist_ok=True)
    # Build beside the destination, then move in: an interrupted run leaves no half tree.
    tmp = tempfile.mkdtemp(prefix=".megaface_synth.", dir=args.output)
    try:
        render_tree(args, plan(args), tmp)
        for entry, target in zip(ENTRIES, targets):
            if os.path.isdir(target):
                shutil.rmtree(target)
            elif os.path.exists(target):
                os.remove(target)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(os.path.join(tmp, entry), target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {args.identities * args.images_per_id} probes of {args.identities} identities "
          f"and {args.distractors} distractors (lists: {', '.join(map(str, args.sizes))}) "
          f"to {args.output}")
    return 0


if __name__ == "__main__":
    run_cli(main)
