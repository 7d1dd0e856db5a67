"""tools/make_synthetic_mfr.py: layout, groups, mask probes, determinism, errors."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace

import cv2
import numpy as np
import pytest

from eval.extract import open_face_source
from tools import make_synthetic_mfr as mm
from tools import synthetic_faces as sf
from utils.errors import UnknownNameError, UsageError

TINY = ["--identities", "6", "--images-per-id", "3", "--mask-identities", "3", "--children", "0.5",
        "--no-progress"]


def digests(root) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path."""
    out = {}
    for folder, _, files in os.walk(root):
        for f in files:
            path = os.path.join(folder, f)
            out[os.path.relpath(path, root)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def read_groups(path) -> list[tuple[str, str]]:
    return [tuple(line.split(" ")) for line in open(path, encoding="utf-8").read().splitlines()]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("mfr") / "set"
    manifest = mm.main(["--output", str(out), "--workers", "1", *TINY])
    return out, manifest


def test_same_seed_same_bytes_whatever_the_workers(tiny, tmp_path):
    out, _ = tiny
    mm.main(["--output", str(tmp_path / "w2"), "--workers", "2", *TINY])
    assert digests(tmp_path / "w2") == digests(out)
    assert len(digests(out)) == 6 * 3 + 3 * 3 + 4  # images, groups x2, manifest, README


def test_another_seed_gives_other_images(tiny, tmp_path):
    out, _ = tiny
    mm.main(["--output", str(tmp_path / "s1"), "--workers", "1", "--seed", "1", *TINY])
    a, b = digests(out), digests(tmp_path / "s1")
    assert all(a[p] != b[p] for p in a if p.endswith(".jpg"))


def test_the_first_identities_do_not_depend_on_the_set_size(tiny, tmp_path):
    out, _ = tiny
    mm.main(["--output", str(tmp_path / "n4"), "--workers", "1", *TINY, "--identities", "4"])
    a, b = digests(out), digests(tmp_path / "n4")
    assert {p: h for p, h in b.items() if p.endswith(".jpg")} == \
        {p: h for p, h in a.items() if p.endswith(".jpg") and p.split(os.sep)[1] < "id_0004"}


def test_folder_layout_reads_as_identity_folders(tiny):
    out, _ = tiny
    assert sorted(os.listdir(out)) == sorted(mm.ENTRIES)
    src = open_face_source(str(out / "all"))
    assert len(src) == 18 and src.labels.tolist() == [i for i in range(6) for _ in range(3)]
    assert src.names[:4] == ["id_0000/0.jpg", "id_0000/1.jpg", "id_0000/2.jpg", "id_0001/0.jpg"]
    assert tuple(src[0].shape) == (3, 112, 112)
    probe, gallery = open_face_source(str(out / "mask_probe")), open_face_source(str(out / "mask_gallery"))
    assert probe.names == ["id_0000/0.jpg", "id_0001/0.jpg", "id_0002/0.jpg"]
    assert gallery.names == [f"id_000{i}/{k}.jpg" for i in range(3) for k in range(2)]
    # the same identities in both, so the evaluator's labels (sorted folder index) agree
    assert probe.labels.tolist() == [0, 1, 2] and gallery.labels.tolist() == [0, 0, 1, 1, 2, 2]
    image = cv2.imread(str(out / "mask_probe" / "id_0002" / "0.jpg"))
    assert image.shape == (112, 112, 3)


def test_groups_cover_exactly_the_images(tiny):
    out, manifest = tiny
    names = open_face_source(str(out / "all")).names
    race, age = read_groups(out / "groups_race.txt"), read_groups(out / "groups_age.txt")
    assert [p for p, _ in race] == names and [p for p, _ in age] == names
    assert all((out / "all" / p).is_file() for p in names)
    assert {g for _, g in race} <= set(mm.TONE_GROUPS) and {g for _, g in age} <= set(mm.AGE_GROUPS)
    for i in range(6):  # a group is a property of the identity, so every image of it agrees
        ident = sf.sample_identity(np.random.default_rng([0, mm.STREAM_MFR, mm.KIND_IDENTITY, i]))
        assert {g for p, g in race if p.startswith(f"id_000{i}/")} == {mm.tone_group(ident["skin_t"])}
    children = {p.split("/")[0] for p, g in age if g == "children"}
    assert children == set(manifest["child_ages"]) and 0 < len(children) < 6
    assert sum(manifest["groups"]["groups_age.txt"]["identities"].values()) == 6
    assert json.loads((out / "manifest.json").read_text())["child_ages"] == manifest["child_ages"]


def test_tone_groups_are_quarters_of_the_skin_tone():
    assert [mm.tone_group(t) for t in (0.0, 0.249, 0.25, 0.6, 0.75, 1.0)] == \
        ["tone_1", "tone_1", "tone_2", "tone_3", "tone_4", "tone_4"]


@pytest.mark.parametrize("fraction, expected", [("0", 0), ("1", 6)])
def test_children_fraction(tmp_path, fraction, expected):
    manifest = mm.main(["--output", str(tmp_path / "c"), "--workers", "1", *TINY, "--children", fraction])
    assert len(manifest["child_ages"]) == expected
    assert all(sf.CHILD_AGES[0] <= a <= sf.CHILD_AGES[1] for a in manifest["child_ages"].values())


def test_mask_probe_differs_from_its_unmasked_rendering_in_the_lower_face(tmp_path):
    # with the clean profile nothing but the mask differs, so the comparison can be exact
    out = tmp_path / "clean"
    mm.main(["--output", str(out), "--workers", "1", *TINY, "--profile", "clean", "--children", "1"])
    prof = mm.mfr_profile("clean")
    for i in range(3):
        plan = mm.identity_plan(0, i, 1.0)
        masked = mm.render_face(0, plan, mm.KIND_PROBE, 0, prof, masked=True)
        assert (out / "mask_probe" / f"id_000{i}" / "0.jpg").read_bytes() == sf.encode_jpeg(masked)
        plain = mm.render_face(0, plan, mm.KIND_PROBE, 0, prof, masked=False)
        diff = np.abs(masked.astype(int) - plain).max(2)
        assert diff[:50].max() == 0  # down to the eye line (row 52): untouched, even for children
        assert diff[64:100, 36:76].mean() > 20  # mouth and chin: covered


def test_mask_probe_roughly_matches_its_unmasked_rendering_above_the_mask(tiny):
    out, _ = tiny
    prof = mm.mfr_profile("lfw")
    upper, lower = [], []
    for i in range(3):
        plan = mm.identity_plan(0, i, 0.5)
        probe = cv2.imread(str(out / "mask_probe" / f"id_000{i}" / "0.jpg")).astype(int)
        diff = np.abs(probe - mm.render_face(0, plan, mm.KIND_PROBE, 0, prof, masked=False)).max(2)
        upper.append(diff[:45].mean())
        lower.append(diff[64:100, 36:76].mean())
    # above the mask only the sensor noise differs (it is drawn after the mask's colour)
    assert max(upper) < 12 and min(lower) > 2 * max(upper)


def test_gallery_and_all_hold_no_masks():
    prof = mm.mfr_profile("cplfw")  # occludes half of its images
    assert "mask" not in prof.occluders and prof.occlusion_p == sf.get_profile("cplfw").occlusion_p
    masks_only = replace(sf.get_profile("clean"), occlusion_p=0.5, occluders=("mask",))
    assert mm.without_masks(masks_only).occlusion_p == 0.0
    nz = [sf.sample_nuisance(sf.image_rng(0, 99, k, 0), prof)["occluder"] for k in range(200)]
    assert "mask" not in nz and len([o for o in nz if o]) > 50


def test_child_identity_keeps_the_adult_but_shortens_the_lower_face():
    adult = sf.sample_identity(sf.identity_rng(0, 3))
    child = sf.child_identity(adult, 6.0)
    assert child["age"] == 6.0 and child["beard"] == 0 and child["wrinkle"] == 0.0
    assert child["nose_len"] < adult["nose_len"] and child["mouth_y"] < adult["mouth_y"]
    assert child["eye_h"] > adult["eye_h"] and child["skin_t"] == adult["skin_t"]
    assert adult["age"] >= 18.0  # the adult is not changed
    rng = sf.image_rng(0, 99, 3, 0)
    nz = sf.sample_nuisance(rng, sf.get_profile("clean"))
    a, c = sf.render(adult, nz, sf.image_rng(0, 99, 3, 0)), sf.render(child, nz, sf.image_rng(0, 99, 3, 0))
    assert np.abs(a.astype(int) - c).mean() > 1
    with pytest.raises(ValueError, match="child age must be in 4..14 years, got 16"):
        sf.child_identity(adult, 16.0)


def test_refuses_to_overwrite_without_force(tmp_path):
    out = tmp_path / "d"
    mm.main(["--output", str(out), "--workers", "1", *TINY])
    before = digests(out)
    with pytest.raises(FileExistsError, match="--force"):
        mm.main(["--output", str(out), "--workers", "1", *TINY, "--seed", "3"])
    assert digests(out) == before
    mm.main(["--output", str(out), "--workers", "1", *TINY, "--seed", "3", "--force"])
    after = digests(out)
    assert set(after) == set(before) and after["all/id_0000/0.jpg"] != before["all/id_0000/0.jpg"]
    assert not [e for e in os.listdir(out) if e.startswith(".")]  # no temporary folder left


@pytest.mark.parametrize("args, message", [
    (["--identities", "1"], "--identities must be >= 2, got 1"),
    (["--images-per-id", "1"], "--images-per-id must be >= 2"),
    (["--mask-identities", "7"], "--mask-identities 7 exceeds --identities 6"),
    (["--mask-identities", "1"], "--mask-identities must be >= 2"),
    (["--children", "1.5"], "--children must be a fraction in 0..1"),
    (["--quality", "0"], "--quality must be in 1..100"),
    (["--workers", "0"], "--workers must be >= 1"),
])
def test_bad_arguments_are_named(tmp_path, user_error, args, message):
    with pytest.raises(UsageError, match=message):
        mm.main(["--output", str(tmp_path / "x"), *TINY, *args])
    line = user_error(mm.main, ["--output", tmp_path / "x", *TINY, *args])
    assert message in line
    assert not (tmp_path / "x").exists()


def test_unknown_profile_is_named(tmp_path):
    with pytest.raises(UnknownNameError, match="did you mean 'lfw'"):
        mm.main(["--output", str(tmp_path / "x"), *TINY, "--profile", "lwf"])
