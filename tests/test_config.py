"""config/config.py, the presets of configs/ and their loader: blocks, layering, overrides, clear errors."""

import json
import re
from pathlib import Path

import pytest

from utils.config import ConfigError, config_to_json, load_config, to_plain
from utils.lr_schedule import lr_factor

ROOT = Path(__file__).resolve().parents[1]
# every key of config/config.py and of each preset as the loader resolved them before presets were
# layered (each preset then ran config/config.py itself and switched DATASETS by hand)
PINNED = json.loads((ROOT / "tests" / "data" / "config_presets.json").read_text())


def test_default_config_reproduces_the_paper_on_ms1mv2():
    cfg = load_config()
    assert cfg.dataset == "emore" and cfg.network == "iresnet100"
    assert (cfg.num_classes, cfg.num_image) == (85742, 5822653)
    assert cfg.shrink_epoch == [8, 14, 20] and cfg.batch_size == 128 and cfg.lr == 0.1
    assert (cfg.dropout, cfg.dropout2) == (0.4, 0.6)
    assert (cfg.weight1, cfg.weight2, cfg.weightC, cfg.weightC2) == (0.5, 0.5, 0.05, 0.0)
    assert (cfg.head, cfg.s, cfg.m, cfg.contra_s, cfg.contra_ema) == ("arcface", None, None, 64.0, 0.99)  # s 64, m 0.5
    assert cfg.grad_clip == 5.0 and cfg.weight_decay == 5e-4 and cfg.momentum == 0.9
    assert cfg.output == "work_dirs/emore_iresnet100_contraface"


@pytest.mark.parametrize(
    "name, classes, images, network",
    [
        ("webface", 10572, 490623, "iresnet50"),
        ("ms1mv3", 93431, 5179510, "iresnet100"),
        ("glint360k", 360232, 17091657, "iresnet100"),
        ("webface42m", 2059906, 42474557, "iresnet100"),
    ],
)
def test_dataset_blocks(name, classes, images, network):
    cfg = load_config(dataset=name)
    assert (cfg.dataset, cfg.num_classes, cfg.num_image, cfg.network) == (name, classes, images, network)


def test_webface_schedule_and_synthetic_block():
    cfg = load_config(dataset="webface")
    assert cfg.shrink_epoch == [22, 30] and cfg.num_epoch == 40
    synthetic = load_config(dataset="synthetic")
    assert synthetic.network_width < 64 and synthetic.rec == "data/synthetic"


def test_typed_overrides():
    cfg = load_config(
        overrides=["lr=0.05", "batch_size=64", "val_targets=['lfw']", "use_se=true", "rec=/data/x", "grad_clip=1"]
    )
    assert cfg.lr == 0.05 and cfg.batch_size == 64 and cfg.val_targets == ["lfw"]
    assert cfg.use_se is True and cfg.rec == "/data/x" and cfg.grad_clip == 1.0 and isinstance(cfg.grad_clip, float)


def test_unknown_key_suggests_near_match():
    with pytest.raises(ConfigError, match=r"unknown key 'shrink_epochs'; did you mean 'shrink_epoch'"):
        load_config(overrides=["shrink_epochs=[1,2]"])


def test_unknown_key_suggests_by_words():
    # lr_rate shares the word "lr" with lr only; spelling alone would rank sample_rate first
    with pytest.raises(ConfigError, match=r"unknown key 'lr_rate'; did you mean 'lr'\?$"):
        load_config(overrides=["lr_rate=0.1"])


def test_bad_values_are_rejected():
    with pytest.raises(ConfigError, match="batch_size=abc: expected a int"):
        load_config(overrides=["batch_size=abc"])
    with pytest.raises(ConfigError, match="unknown dataset 'emor'.*did you mean 'emore'"):
        load_config(dataset="emor")
    with pytest.raises(ConfigError, match="expects key=value"):
        load_config(overrides=["lr"])
    with pytest.raises(ConfigError, match="increasing"):
        load_config(overrides=["shrink_epoch=[14, 8]"])


def test_config_file_with_incomplete_block_is_rejected(tmp_path):
    path = tmp_path / "config.py"
    path.write_text(
        "from easydict import EasyDict as edict\n"
        "config = edict(method='single', head='arcface')\n"
        "DATASETS = {'a': edict(rec='x', lr=0.1), 'b': edict(rec='y')}\n"
    )
    with pytest.raises(ConfigError, match="block 'b' lacks \\['lr'\\]"):
        load_config(str(path))


@pytest.mark.parametrize("path", sorted(PINNED))
def test_presets_resolve_to_the_pinned_values(path, monkeypatch):
    monkeypatch.chdir(ROOT / "tests")  # a preset's base is read from the repo root, not the cwd
    got, expected = to_plain(load_config(str(ROOT / path))), PINNED[path]
    assert sorted(got) == sorted(expected)
    # JSON text, so that 0 and 0.0 (or 1 and True) count as different
    differ = {k: (got[k], expected[k]) for k in expected if json.dumps(got[k]) != json.dumps(expected[k])}
    assert differ == {}


def write(path, text):
    path.write_text("from easydict import EasyDict as edict\n" + text)
    return str(path)


def test_preset_layers_base_block_keys_then_command_line(tmp_path):
    # default base config/config.py; a relative base is read from the repo root
    recipe = write(tmp_path / "recipe.py", "dataset = 'webface'\nconfig = edict(lr=0.3, network='iresnet18')\n")
    cfg = load_config(recipe)
    assert (cfg.dataset, cfg.rec, cfg.num_epoch, cfg.lr, cfg.network) == (
        "webface", "data/faces_webface_112x112", 40, 0.3, "iresnet18"
    )
    # a preset's keys beat the block a preset above it names; its dataset is inherited unless renamed
    child = write(tmp_path / "child.py", f"base = {recipe!r}\ndataset = 'ms1mv3'\nconfig = edict(num_epoch=3)\n")
    cfg = load_config(child)
    assert (cfg.dataset, cfg.num_classes, cfg.lr, cfg.network, cfg.num_epoch) == ("ms1mv3", 93431, 0.3, "iresnet18", 3)
    same_block = write(tmp_path / "same.py", f"base = {recipe!r}\n")
    assert load_config(same_block).dataset == "webface"
    on_a_preset = write(tmp_path / "on_preset.py", "base = 'configs/ms1mv3_r50_unimoco.py'\nconfig = edict(lr=0.1)\n")
    assert to_plain(load_config(on_a_preset)) == {**PINNED["configs/ms1mv3_r50_unimoco.py"], "lr": 0.1}
    # then --dataset switches the whole block (over the preset's keys too) and --set one key
    cfg = load_config(child, "emore", ["num_epoch=5"])
    assert (cfg.dataset, cfg.num_classes, cfg.lr, cfg.network, cfg.num_epoch) == ("emore", 85742, 0.1, "iresnet100", 5)


@pytest.mark.parametrize(
    "text, message",
    [
        ("config = edict(lr_rate=0.1)",
         "bad.py: unknown key 'lr_rate'; did you mean 'lr'? (a preset changes keys of config/config.py, it adds none)"),
        ("datset = 'synthetic'",
         "bad.py: unknown name 'datset'; did you mean 'dataset'? (a preset sets only base, dataset, config;"),
        ("dataset = 'syntetic'", "bad.py: unknown dataset 'syntetic' in config/config.py; did you mean 'synthetic'?"),
        ("config = edict(dataset='webface')", "bad.py: choose the block with a module-level dataset = 'webface'"),
        ("base = 'configs/nope.py'",
         "bad.py: base configs/nope.py not found (a relative base is read from the repository root)"),
        ("dataset = ['emore']", "bad.py: dataset must be a string"),
        ("config = 3", "bad.py: config must be an EasyDict"),
    ],
)
def test_bad_preset_names_file_and_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(write(tmp_path / "bad.py", text + "\n"))


def test_base_cycle_is_an_error(tmp_path):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    write(a, f"base = {str(b)!r}\n")
    write(b, f"base = {str(a)!r}\n")
    with pytest.raises(ConfigError, match=r"b\.py: base cycle .*a\.py -> .*b\.py -> .*a\.py$"):
        load_config(str(a))
    write(a, f"base = {str(a)!r}\n")
    with pytest.raises(ConfigError, match=r"a\.py: base cycle .*a\.py -> .*a\.py$"):
        load_config(str(a))


def test_a_root_config_has_no_base(tmp_path):
    root = write(tmp_path / "root.py", "base = 'config/config.py'\nconfig = edict()\nDATASETS = {}\n")
    with pytest.raises(ConfigError, match="root.py defines DATASETS .* a root has no base"):
        load_config(root)


def test_resolved_config_is_json():
    cfg = load_config(dataset="synthetic")
    assert json.loads(config_to_json(cfg))["dataset"] == "synthetic"


def test_lr_schedule_matches_the_reference_epoch_rule():
    steps = 10
    # shrink_epoch [8, 14, 20]: LR x0.1 from epoch index 7, 13 and 19 on
    assert lr_factor(0, steps, [8, 14, 20]) == 1.0
    assert lr_factor(7 * steps - 1, steps, [8, 14, 20]) == 1.0
    assert lr_factor(7 * steps, steps, [8, 14, 20]) == pytest.approx(0.1)
    assert lr_factor(13 * steps, steps, [8, 14, 20]) == pytest.approx(0.01)
    assert lr_factor(19 * steps + 5, steps, [8, 14, 20]) == pytest.approx(0.001)
    assert lr_factor(0, steps, [8], warmup_epoch=1) == pytest.approx(0.1)
    assert lr_factor(9, steps, [8], warmup_epoch=1) == pytest.approx(1.0)
