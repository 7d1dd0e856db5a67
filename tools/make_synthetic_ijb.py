"""Write a small IJB-B/IJB-C-format tree of synthetic faces, for tests and demos.

    python -m tools.make_synthetic_ijb --output data/ijb_synth [--targets IJBC,IJBB]

Per target (``OUT/IJBC`` with ``ijbc_`` files and galleries G1/G2, ``OUT/IJBB`` with ``ijbb_``
and S1/S2): ``loose_crop/<k>.jpg`` (faces of tools.synthetic_faces, placed by a random
similarity in a larger canvas, with the 5 points that map them back), ``meta/`` in the formats
of the release (see eval/ijb/data.py) and ``synthetic_manifest.json`` (subject, template, media
and frame of every image; the generation parameters).

Structure: every subject has ``--templates`` templates; each template has 1..``--max-medias``
media, each media 1..``--max-frames`` frames (a "video": the same rendering, placed anew).
Template 0 of a subject is its 1:N gallery template (first half of the subjects in G1/S1,
the rest in G2/S2); the others are mixed probes. 1:1 pairs: every same-subject template pair
(label 1) and ``--impostor-ratio`` times as many random different-subject pairs (label 0).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import tempfile

import cv2
import numpy as np
from tqdm import tqdm

from eval.alignment import ARCFACE_TEMPLATE
from eval.ijb.data import GALLERIES, TARGETS
from tools import synthetic_faces as sf
from utils.cli import run_cli
from utils.fileio import refuse_overwrite

# SeedSequence word keeping IJB subjects and images apart from the training-set streams
STREAM_IJB = 0x1B
CSV_HEADER = ["TEMPLATE_ID", "SUBJECT_ID", "FILENAME", "SIGHTING_ID",
              "FACE_X", "FACE_Y", "FACE_WIDTH", "FACE_HEIGHT"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(
        prog="python -m tools.make_synthetic_ijb",
        description="Generate a small synthetic IJB-B/IJB-C tree (loose crops + meta files).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--output", required=True, help="folder that will hold IJBC/ and/or IJBB/")
    p.add_argument("--targets", default="IJBC", help="comma list of IJBC, IJBB")
    p.add_argument("--subjects", type=int, default=40)
    p.add_argument("--templates", type=int, default=4, help="templates per subject (>= 2)")
    p.add_argument("--max-medias", type=int, default=3, help="media per template: 1..this")
    p.add_argument("--max-frames", type=int, default=3, help="frames per media: 1..this")
    p.add_argument("--impostor-ratio", type=int, default=5, help="impostor pairs per genuine pair")
    p.add_argument("--profile", default="train", help="tools.synthetic_faces nuisance profile")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace existing target folders")
    args = p.parse_args(argv)
    args.targets = [t.strip().upper() for t in args.targets.split(",") if t.strip()]
    for t in args.targets:
        if t not in TARGETS:
            p.error(f"unknown target {t!r}; known: {', '.join(TARGETS)}")
    if args.subjects < 2 or args.templates < 2 or args.max_medias < 1 or args.max_frames < 1:
        p.error("need --subjects >= 2, --templates >= 2, --max-medias >= 1, --max-frames >= 1")
    sf.get_profile(args.profile)  # unknown names fail here, listing the known ones
    return args


def place_face(face: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Put a 112x112 aligned face into a larger loose crop -> (image, 2x3 face-to-crop matrix)."""
    scale = rng.uniform(0.8, 2.2)
    angle = np.deg2rad(rng.normal(0, 10))
    side = int(np.ceil(112 * scale * rng.uniform(1.25, 1.6)))
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    # face centre (56, 56) lands near the canvas centre, a little off
    centre = np.array([side / 2, side / 2]) + rng.normal(0, 0.05 * side, 2)
    mat = np.hstack([rot, (centre - rot @ np.array([56.0, 56.0]))[:, None]])
    # surroundings: a smooth random colour field, as the rest of a photo
    tint = rng.uniform(60, 200, 3)
    small = (tint + rng.normal(0, 25, (4, 4, 3))).astype(np.float32)
    canvas = cv2.resize(small, (side, side), interpolation=cv2.INTER_CUBIC)
    canvas = canvas.clip(0, 255).astype(np.uint8)
    cv2.warpAffine(face, mat, (side, side), dst=canvas, flags=cv2.INTER_LINEAR,
                   borderMode=cv2.BORDER_TRANSPARENT)
    return canvas, mat


def faceness(nz: dict, rng: np.random.Generator) -> float:
    """A detector-like confidence: lower for turned, blurred or occluded faces."""
    score = 0.995 - 0.004 * abs(nz["yaw"]) - 0.15 * nz["blur"] - (0.3 if nz["occluder"] else 0.0)
    return float(np.clip(score + rng.normal(0, 0.01), 0.05, 0.999))


def plan(args: argparse.Namespace, target: str) -> dict:
    """Subjects, templates, media and frames (ids as in the release: positive integers)."""
    rng = np.random.default_rng([args.seed, STREAM_IJB, TARGETS.index(target), 0])
    images, templates = [], []
    template_id, media_id = 1, 1
    for subject in range(1, args.subjects + 1):
        for k in range(args.templates):
            templates.append({"template": template_id, "subject": subject, "gallery": k == 0})
            for _ in range(int(rng.integers(1, args.max_medias + 1))):
                for frame in range(int(rng.integers(1, args.max_frames + 1))):
                    images.append({"name": f"{len(images) + 1}.jpg", "subject": subject,
                                   "template": template_id, "media": media_id, "frame": frame})
                media_id += 1
            template_id += 1
    gal = GALLERIES[target]
    half = args.subjects // 2
    for t in templates:
        t["gallery_set"] = (gal[0] if t["subject"] <= half else gal[1]) if t["gallery"] else None
    pairs = make_pairs(templates, args.impostor_ratio, rng)
    return {"images": images, "templates": templates, "pairs": pairs}


def make_pairs(
    templates: list[dict], ratio: int, rng: np.random.Generator
) -> list[tuple[int, int, int]]:
    """All genuine template pairs and ``ratio`` times as many distinct random impostor pairs."""
    by_subject: dict[int, list[int]] = {}
    for t in templates:
        by_subject.setdefault(t["subject"], []).append(t["template"])
    genuine = [(a, b, 1) for ts in by_subject.values()
               for i, a in enumerate(ts) for b in ts[i + 1 :]]
    subject_of = {t["template"]: t["subject"] for t in templates}
    ids = np.array([t["template"] for t in templates])
    max_impostors = len(ids) * (len(ids) - 1) // 2 - len(genuine)
    want = min(ratio * len(genuine), max_impostors)
    impostor: set[tuple[int, int]] = set()
    while len(impostor) < want:
        a, b = (int(x) for x in rng.choice(ids, 2, replace=False))
        if subject_of[a] != subject_of[b]:
            impostor.add((min(a, b), max(a, b)))
    pairs = genuine + [(a, b, 0) for a, b in sorted(impostor)]
    order = rng.permutation(len(pairs))
    return [pairs[i] for i in order]


def render_images(args: argparse.Namespace, target: str, layout: dict, root: str) -> list[dict]:
    """Render every image of ``layout`` into ``root/loose_crop``; returns per-image records."""
    profile = sf.get_profile(args.profile)
    tid = TARGETS.index(target)
    identities = {}
    media_render: dict[int, tuple[np.ndarray, dict]] = {}
    os.makedirs(os.path.join(root, "loose_crop"))
    records = []
    for i, im in enumerate(tqdm(layout["images"], desc=f"{target} images", unit="img")):
        subject = im["subject"]
        if subject not in identities:
            rng = np.random.default_rng([args.seed, STREAM_IJB, 100 + tid, subject])
            identities[subject] = sf.sample_identity(rng)
        if im["media"] not in media_render:
            # one rendering per media (a "video"); in-plane geometry is applied by place_face so
            # that the written 5 points are exact
            rng = np.random.default_rng([args.seed, STREAM_IJB, 200 + tid, im["media"]])
            nz = sf.sample_nuisance(rng, profile, roll=0.0, scale=1.0, shift=np.zeros(2))
            media_render[im["media"]] = (sf.render(identities[subject], nz, rng), nz)
        face, nz = media_render[im["media"]]
        rng = np.random.default_rng([args.seed, STREAM_IJB, 300 + tid, i])
        img, mat = place_face(face, rng)
        lmk = ARCFACE_TEMPLATE.astype(np.float64) @ mat[:, :2].T + mat[:, 2]
        lmk += rng.normal(0, 0.3, lmk.shape)  # detector noise
        with open(os.path.join(root, "loose_crop", im["name"]), "wb") as f:
            f.write(sf.encode_jpeg(img, quality=92))
        corners = np.array([[0, 0], [112, 0], [0, 112], [112, 112]], np.float64)
        corners = corners @ mat[:, :2].T + mat[:, 2]
        x0, y0 = np.maximum(np.floor(corners.min(0)), 0).astype(int)
        x1, y1 = np.minimum(np.ceil(corners.max(0)), img.shape[1::-1]).astype(int)
        records.append({
            **im,
            "landmarks": lmk.round(3).tolist(),
            "score": round(faceness(nz, rng), 3),
            "bbox": [int(x0), int(y0), int(x1 - x0), int(y1 - y0)],
            "yaw": round(float(nz["yaw"]), 1),
        })
    return records


def write_meta(root: str, target: str, records: list[dict], layout: dict) -> None:
    """The meta/ files in the release formats."""
    meta = os.path.join(root, "meta")
    os.makedirs(meta)
    p = target.lower()
    with open(os.path.join(meta, f"{p}_face_tid_mid.txt"), "w") as f:
        f.writelines(f"{r['name']} {r['template']} {r['media']}\n" for r in records)
    with open(os.path.join(meta, f"{p}_name_5pts_score.txt"), "w") as f:
        for r in records:
            pts = " ".join(f"{v:.3f}" for xy in r["landmarks"] for v in xy)
            f.write(f"{r['name']} {pts} {r['score']:.3f}\n")
    with open(os.path.join(meta, f"{p}_template_pair_label.txt"), "w") as f:
        f.writelines(f"{a} {b} {label}\n" for a, b, label in layout["pairs"])
    gallery_of = {t["template"]: t["gallery_set"] for t in layout["templates"]}
    lists = {g: [] for g in GALLERIES[target]} | {"probe": []}
    for r in records:
        key = gallery_of[r["template"]] or "probe"
        lists[key].append([r["template"], r["subject"], f"img/{r['name']}", r["media"], *r["bbox"]])
    for key, rows in lists.items():
        name = f"{p}_1N_probe_mixed.csv" if key == "probe" else f"{p}_1N_gallery_{key}.csv"
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(CSV_HEADER)
        w.writerows(rows)
        with open(os.path.join(meta, name), "w") as f:
            f.write(buf.getvalue())


def make_target(args: argparse.Namespace, target: str) -> str:
    """Build one target in a temporary folder, then move it into place."""
    final = os.path.join(args.output, target)
    os.makedirs(args.output, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{target}.", dir=args.output)
    try:
        layout = plan(args, target)
        records = render_images(args, target, layout, tmp)
        write_meta(tmp, target, records, layout)
        manifest = {
            "generator": "tools.make_synthetic_ijb",
            "target": target,
            "args": {k: v for k, v in vars(args).items() if k not in ("output", "force")},
            "num_images": len(records),
            "num_templates": len(layout["templates"]),
            "num_pairs": len(layout["pairs"]),
            "num_genuine": sum(label for _, _, label in layout["pairs"]),
            "galleries": {
                g: sorted({t["subject"] for t in layout["templates"] if t["gallery_set"] == g})
                for g in GALLERIES[target]
            },
            "images": [{k: r[k] for k in ("name", "subject", "template", "media", "frame", "yaw")}
                       for r in records],
        }
        with open(os.path.join(tmp, "synthetic_manifest.json"), "w") as f:
            json.dump(manifest, f, indent=1)
        if os.path.exists(final):  # only reached with --force (checked up front)
            old = tempfile.mkdtemp(prefix=f".{target}.old.", dir=args.output)
            os.replace(final, os.path.join(old, target))
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return final


def main(argv: list[str] | None = None) -> list[str]:
    """Generate the requested targets; returns their folders."""
    args = parse_args(argv)
    finals = [os.path.join(args.output, t) for t in args.targets]
    refuse_overwrite(finals, args.force)
    out = []
    for target in args.targets:
        out.append(make_target(args, target))
        print(f"wrote {out[-1]}")
    return out


if __name__ == "__main__":
    run_cli(main)
