"""Write a synthetic ICCV21-MFR-style all-to-all set, so the whole protocol runs on a CPU.

    python -m tools.make_synthetic_mfr --output data/mfr_synth [--identities 2000 --images-per-id 5]

Layout (what ``eval.all_to_all`` reads: ``--data OUT/all --groups OUT/groups_race.txt`` for every
pair of the set, ``--probe OUT/mask_probe --gallery OUT/mask_gallery`` for MFR's mask protocol):

    OUT/all/<identity>/<k>.jpg           --identities x --images-per-id aligned 112x112 faces
    OUT/groups_race.txt                  "<identity>/<k>.jpg <group>", one line per image of all/:
                                         the renderer's skin tone in four equal bins, tone_1
                                         (lightest) .. tone_4 (darkest)
    OUT/groups_age.txt                   the same images: "children" (identities rendered as
                                         children, --children of them) or "adults"
    OUT/mask_probe/<identity>/0.jpg      one image with a face mask over nose and mouth for each
                                         of the first --mask-identities identities
    OUT/mask_gallery/<identity>/<k>.jpg  two unmasked images of each of them (MFR's 1 : 2 ratio)
    OUT/manifest.json, OUT/README.md     parameters, counts, seed; how to evaluate

Identities are held out from every training set: they are drawn from their own random stream
(as tools.make_synthetic_ijb's subjects), so no ``--num-ids`` of tools.make_synthetic can reach
them. Every image is a pure function of (seed, kind, identity, index): the same seed gives
byte-identical files whatever ``--workers`` is, and the first N identities are the same for any
``--identities`` >= N. Group paths are relative to the image folder given to the evaluator
(``OUT/all``), with "/" separators, as eval.extract names the images of a folder.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from dataclasses import asdict, replace
from typing import Any, Iterator, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from tools import synthetic_faces as sf
from utils.cli import run_cli
from utils.errors import UsageError
from utils.fileio import refuse_overwrite

# SeedSequence words keeping these faces apart from the other synthetic sets' streams
STREAM_MFR = 0x4D
KIND_IDENTITY, KIND_PLAN, KIND_ALL, KIND_PROBE, KIND_GALLERY = 1, 2, 3, 4, 5
ENTRIES = ("all", "mask_probe", "mask_gallery", "groups_race.txt", "groups_age.txt",
           "manifest.json", "README.md")
TONE_GROUPS = ("tone_1", "tone_2", "tone_3", "tone_4")  # light to dark skin (skin_t quarters)
AGE_GROUPS = ("children", "adults")
GALLERY_PER_ID = 2  # MFR's mask set: 6,964 masked and 13,928 non-masked images of 6,964 people


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options; a value that cannot work is a UsageError naming the flag."""
    p = argparse.ArgumentParser(
        prog="python -m tools.make_synthetic_mfr",
        description="Render a synthetic ICCV21-MFR-style all-to-all set (image folder, groups, masks).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--identities", type=int, default=2000, help="identities of all/")
    p.add_argument("--images-per-id", type=int, default=5, help="images per identity in all/")
    p.add_argument("--children", type=float, default=0.15,
                   help="fraction of identities rendered as children (ages 4-14)")
    p.add_argument("--mask-identities", type=int, default=1000,
                   help="identities (the first of all/) in mask_probe/ and mask_gallery/")
    p.add_argument("--profile", default="lfw",
                   help="tools.synthetic_faces nuisance profile (its mask occluder is left out)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quality", type=int, default=95, help="JPEG quality")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="render processes; does not change the output")
    p.add_argument("--force", action="store_true", help="replace this tool's entries in --output")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    for flag, value, low in (("--identities", args.identities, 2), ("--images-per-id", args.images_per_id, 2),
                             ("--mask-identities", args.mask_identities, 2), ("--workers", args.workers, 1),
                             ("--seed", args.seed, 0)):
        if value < low:  # fewer than 2 leaves no positive or no negative pair
            raise UsageError(f"{flag} must be >= {low}, got {value}")
    if args.mask_identities > args.identities:
        raise UsageError(f"--mask-identities {args.mask_identities} exceeds --identities {args.identities}")
    if not 0.0 <= args.children <= 1.0:
        raise UsageError(f"--children must be a fraction in 0..1, got {args.children:g}")
    if not 1 <= args.quality <= 100:
        raise UsageError(f"--quality must be in 1..100, got {args.quality}")
    sf.get_profile(args.profile)  # unknown names fail here, listing the known ones
    return args


# --------------------------------------------------------------------------------------------
# plan: who is who, decided up front in the main process
def tone_group(skin_t: float) -> str:
    """The skin-tone group of a renderer skin tone in [0, 1]: four equal-width bins, light to dark."""
    return TONE_GROUPS[min(int(skin_t * len(TONE_GROUPS)), len(TONE_GROUPS) - 1)]


def identity_plan(seed: int, index: int, children: float) -> dict[str, Any]:
    """One identity: folder-independent facts (child age or None, skin tone group)."""
    # one generator per identity: the first N identities do not depend on --identities
    rng = np.random.default_rng([seed, STREAM_MFR, KIND_PLAN, index])
    child = bool(rng.random() < children)
    age = float(rng.uniform(*sf.CHILD_AGES))  # drawn either way: --children moves no other age
    ident = sf.sample_identity(np.random.default_rng([seed, STREAM_MFR, KIND_IDENTITY, index]))
    return {"index": index, "age": age if child else None, "tone": tone_group(ident["skin_t"])}


def folder_names(count: int, prefix: str = "id_") -> list[str]:
    """Zero-padded names, so sorted order (eval.extract's labels) is index order."""
    width = max(4, len(str(count - 1)))
    return [f"{prefix}{i:0{width}d}" for i in range(count)]


def image_names(count: int) -> list[str]:
    """``<k>.jpg``, zero-padded as folder_names for the same reason."""
    width = len(str(count - 1))
    return [f"{k:0{width}d}.jpg" for k in range(count)]


def without_masks(prof: sf.NuisanceProfile) -> sf.NuisanceProfile:
    """``prof`` without its mask occluder: masks belong to mask_probe/ only."""
    occluders = tuple(o for o in prof.occluders if o != "mask")
    return replace(prof, occluders=occluders, occlusion_p=prof.occlusion_p if occluders else 0.0)


def mfr_profile(name: str) -> sf.NuisanceProfile:
    """The nuisance profile of every image of the set: the registered ``name``, without masks."""
    return without_masks(sf.get_profile(name))


# --------------------------------------------------------------------------------------------
# rendering (in worker processes)
_WORKER: dict[str, Any] = {}


def _init_worker(seed: int, quality: int, profile: str) -> None:
    cv2.setNumThreads(1)  # one process per core already
    _WORKER.update(seed=seed, quality=quality, profile=mfr_profile(profile))


def render_face(seed: int, plan: dict, kind: int, k: int, profile: sf.NuisanceProfile,
                masked: bool = False) -> np.ndarray:
    """Image ``k`` of kind ``kind`` (KIND_ALL, KIND_PROBE, KIND_GALLERY) of one identity (BGR)."""
    ident = sf.sample_identity(np.random.default_rng([seed, STREAM_MFR, KIND_IDENTITY, plan["index"]]))
    if plan["age"] is not None:
        ident = sf.child_identity(ident, plan["age"])
    rng = np.random.default_rng([seed, STREAM_MFR, kind, plan["index"], k])
    # the renderer's own mask: drawn on the head (it turns with yaw), lit and blurred with the face
    nz = sf.sample_nuisance(rng, profile, **({"occluder": "mask"} if masked else {}))
    return sf.render(ident, nz, rng)


def _render_identity(job: tuple[dict, list[tuple[str, int, int, bool]]]) -> list[bytes]:
    plan, images = job
    seed, quality, prof = _WORKER["seed"], _WORKER["quality"], _WORKER["profile"]
    return [sf.encode_jpeg(render_face(seed, plan, kind, k, prof, masked), quality)
            for _, kind, k, masked in images]


def _ordered_map(workers: int, seed: int, quality: int, profile: str, jobs: list) -> Iterator[list[bytes]]:
    """The jobs' results in job order, rendered by ``workers`` processes (in-process for 1)."""
    if workers == 1:
        _init_worker(seed, quality, profile)
        yield from map(_render_identity, jobs)
        return
    # spawn, not fork: forking a process that already runs threads (torch, tqdm) can deadlock
    with mp.get_context("spawn").Pool(workers, _init_worker, (seed, quality, profile)) as pool:
        yield from pool.imap(_render_identity, jobs, chunksize=4)


# --------------------------------------------------------------------------------------------
# writers
def plan_set(args: argparse.Namespace) -> tuple[list[dict], list[tuple[dict, list]]]:
    """Identity plans and render jobs: per identity, (relative path, kind, index, masked) of each image."""
    plans = [identity_plan(args.seed, i, args.children) for i in range(args.identities)]
    names = folder_names(args.identities)
    jobs = []
    for plan, name in zip(plans, names):
        plan["name"] = name
        images = [(f"all/{name}/{f}", KIND_ALL, k, False)
                  for k, f in enumerate(image_names(args.images_per_id))]
        if plan["index"] < args.mask_identities:
            images.append((f"mask_probe/{name}/0.jpg", KIND_PROBE, 0, True))
            images += [(f"mask_gallery/{name}/{f}", KIND_GALLERY, k, False)
                       for k, f in enumerate(image_names(GALLERY_PER_ID))]
        jobs.append((plan, images))
    return plans, jobs


def write_images(args: argparse.Namespace, jobs: list, root: str) -> int:
    """Render and write every image of ``jobs`` under ``root``; returns the count."""
    total = sum(len(images) for _, images in jobs)
    bar = tqdm(total=total, desc="mfr", unit="img", disable=args.no_progress)
    made = set()
    for (_, images), jpegs in zip(jobs, _ordered_map(args.workers, args.seed, args.quality,
                                                      args.profile, jobs)):
        for (rel, *_), jpeg in zip(images, jpegs):
            folder = os.path.dirname(rel)
            if folder not in made:
                os.makedirs(os.path.join(root, folder))
                made.add(folder)
            with open(os.path.join(root, rel), "wb") as f:
                f.write(jpeg)
        bar.update(len(images))
    bar.close()
    return total


def write_groups(root: str, plans: list[dict], images_per_id: int) -> dict[str, dict[str, int]]:
    """groups_race.txt and groups_age.txt over all/; returns identities per group of each."""
    files = {"groups_race.txt": lambda p: p["tone"],
             "groups_age.txt": lambda p: AGE_GROUPS[0] if p["age"] is not None else AGE_GROUPS[1]}
    counts: dict[str, dict[str, int]] = {}
    for filename, group_of in files.items():
        lines, tally = [], {}
        for plan in plans:
            group = group_of(plan)
            tally[group] = tally.get(group, 0) + 1
            lines += [f"{plan['name']}/{f} {group}\n" for f in image_names(images_per_id)]
        with open(os.path.join(root, filename), "w", encoding="utf-8") as f:
            f.writelines(lines)
        order = TONE_GROUPS if filename == "groups_race.txt" else AGE_GROUPS
        counts[filename] = {g: tally.get(g, 0) for g in order}
    return counts


def _command(args: argparse.Namespace) -> str:
    # the output folder and --workers are left out: the files depend on neither
    return (f"python -m tools.make_synthetic_mfr --output DIR --identities {args.identities} "
            f"--images-per-id {args.images_per_id} --children {args.children:g} "
            f"--mask-identities {args.mask_identities} --profile {args.profile} "
            f"--seed {args.seed} --quality {args.quality}")


def build_manifest(args: argparse.Namespace, plans: list[dict], groups: dict) -> dict:
    """Parameters, counts, group definitions and the child ages."""
    n_mask = args.mask_identities
    return {
        "generator": "tools.make_synthetic_mfr",
        "command": _command(args),
        "seed": args.seed,
        "image_size": [sf.IMAGE_SIZE, sf.IMAGE_SIZE],
        "jpeg_quality": args.quality,
        "identities": args.identities,
        "images_per_id": args.images_per_id,
        "num_images": args.identities * args.images_per_id,
        "identity_stream": [STREAM_MFR, KIND_IDENTITY],
        "groups": {
            "groups_race.txt": {"definition": "renderer skin tone skin_t in [0,1] in four equal "
                                "bins: tone_1 < 0.25 <= tone_2 < 0.5 <= tone_3 < 0.75 <= tone_4 "
                                "(light to dark)", "identities": groups["groups_race.txt"]},
            "groups_age.txt": {"definition": f"children: identities rendered by "
                               f"synthetic_faces.child_identity at {sf.CHILD_AGES[0]:g}-"
                               f"{sf.CHILD_AGES[1]:g} years; adults: the rest (18-72)",
                               "identities": groups["groups_age.txt"]},
        },
        "child_ages": {p["name"]: round(p["age"], 2) for p in plans if p["age"] is not None},
        "mask": {"identities": n_mask, "probe_images": n_mask, "gallery_images": n_mask * GALLERY_PER_ID,
                 "occluder": "synthetic_faces 'mask' (nose and mouth)"},
        "profile": {"name": args.profile, **asdict(mfr_profile(args.profile))},
    }


def _readme(manifest: dict) -> str:
    m = manifest["mask"]
    tones = manifest["groups"]["groups_race.txt"]["identities"]
    ages = manifest["groups"]["groups_age.txt"]["identities"]
    return "\n".join([
        "# Synthetic ICCV21-MFR-style all-to-all set",
        "",
        "Procedurally rendered faces (tools/synthetic_faces.py), written by `python -m "
        "tools.make_synthetic_mfr`. Regenerate byte-identically with:",
        "",
        f"    {manifest['command']}",
        "",
        f"- all/: {manifest['num_images']} aligned 112x112 images of {manifest['identities']} "
        f"held-out identities, {manifest['images_per_id']} each (one folder per identity).",
        "- groups_race.txt: identities per skin tone group, light to dark (the renderer has a "
        "skin tone, no ethnicity): " + ", ".join(f"{g} {n}" for g, n in tones.items()) + ".",
        "- groups_age.txt: identities per age group: " + ", ".join(f"{g} {n}" for g, n in ages.items()) + ".",
        f"- mask_probe/: {m['probe_images']} masked images of the first {m['identities']} "
        f"identities; mask_gallery/: {m['gallery_images']} unmasked images of them.",
        "",
        "Evaluate (every pair of all/ per group, then masked probes against the gallery):",
        "",
        "    python -m eval.all_to_all --weights W --data DIR/all --groups DIR/groups_race.txt --output OUT",
        "    python -m eval.all_to_all --weights W --probe DIR/mask_probe --gallery DIR/mask_gallery --output OUT",
        "",
        "Parameters, group definitions, child ages and counts: manifest.json.",
        "",
    ])


# --------------------------------------------------------------------------------------------
# command line
def main(argv: Sequence[str] | None = None) -> dict:
    """Generate the set; returns the manifest."""
    args = parse_args(argv)
    targets = [os.path.join(args.output, e) for e in ENTRIES]
    refuse_overwrite(targets, args.force)
    os.makedirs(args.output, exist_ok=True)
    start = time.perf_counter()
    # Build beside the destination, then move in: an interrupted run leaves no half set.
    tmp = tempfile.mkdtemp(prefix=".mfr_synth.", dir=args.output)
    try:
        plans, jobs = plan_set(args)
        n = write_images(args, jobs, tmp)
        manifest = build_manifest(args, plans, write_groups(tmp, plans, args.images_per_id))
        with open(os.path.join(tmp, "manifest.json"), "w", encoding="utf-8") as f:
            f.write(json.dumps(manifest, indent=1) + "\n")
        with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
            f.write(_readme(manifest))
        for entry, target in zip(ENTRIES, targets):
            if os.path.isdir(target):  # only reached with --force (checked up front)
                shutil.rmtree(target)
            elif os.path.exists(target):
                os.remove(target)
            os.replace(os.path.join(tmp, entry), target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - start
    print(f"wrote {args.output}: {n} images in {seconds:.1f} s ({n / max(seconds, 1e-9):.0f} images/s, "
          f"{args.workers} workers)")
    return manifest


if __name__ == "__main__":
    run_cli(main)
