"""config/config.py and its loader: dataset blocks, typed overrides, clear errors."""

import json

import pytest

from utils.config import ConfigError, config_to_json, load_config
from utils.lr_schedule import lr_factor


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
        overrides=["lr=0.05", "batch_size=64", "val_targets=['lfw']", "use_se=true", "rec=/data/x", "m=1"]
    )
    assert cfg.lr == 0.05 and cfg.batch_size == 64 and cfg.val_targets == ["lfw"]
    assert cfg.use_se is True and cfg.rec == "/data/x" and cfg.m == 1.0 and isinstance(cfg.m, float)


def test_unknown_key_suggests_near_match():
    with pytest.raises(ConfigError, match=r"unknown key 'shrink_epochs'; did you mean 'shrink_epoch'"):
        load_config(overrides=["shrink_epochs=[1,2]"])


def test_bad_values_are_rejected():
    with pytest.raises(ConfigError, match="batch_size=abc: expected a int"):
        load_config(overrides=["batch_size=abc"])
    with pytest.raises(ConfigError, match="method 'contra'"):
        load_config(overrides=["method=contra"])
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
