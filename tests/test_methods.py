"""The training-method hooks the trainer relies on, the stage switch, the logging window, the guard."""

import logging

import pytest
import torch
from easydict import EasyDict as edict

import train
from backbones import get_backbone
from losses import METHODS, ContraFaceTraining, build_method, get_head
from losses.methods import switch_epoch
from utils.callbacks import CallBackLogging
from utils.distributed import DistEnv

CPU = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def contraface(**kw):
    torch.manual_seed(0)
    backbone = get_backbone("iresnet18", width=4, num_features=16)
    return ContraFaceTraining(backbone, get_head("arcface", 16, 5), switch_epoch=1, **kw)


def test_switch_epoch_defaults_to_the_first_decay():
    assert switch_epoch(edict(shrink_epoch=[8, 14, 20], switch_epoch=None)) == 7
    assert switch_epoch(edict(shrink_epoch=[8, 14, 20], switch_epoch=3)) == 3


def test_single_branch_ablation_switches_only_the_dropout():
    x, y = torch.randn(6, 3, 112, 112), torch.tensor([0, 1, 2, 3, 4, 0])
    method = contraface(single=True)
    method.set_epoch(1)
    assert method.backbone.dropout_p == 0.6
    torch.manual_seed(1)
    out = method(x, y)
    assert set(out["logs"]) == {"L1"}
    torch.manual_seed(1)
    expected = method.head.loss(method.backbone(x), y)  # one view at p = 0.6
    torch.testing.assert_close(out["loss"], expected, rtol=0, atol=0)
    both = contraface()
    both.set_epoch(1)
    assert set(both(x, y)["logs"]) == {"L1", "L2", "LC"}


def test_build_method_names_an_unknown_method():
    with pytest.raises(ValueError, match=r"unknown method 'contrafce'; did you mean 'contraface'\?"):
        build_method(edict(method="contrafce"), None)


def test_param_groups_hold_every_trainable_parameter_once():
    method = contraface()
    (group,) = method.param_groups()
    assert {id(p) for p in group["params"]} == {id(p) for p in method.parameters() if p.requires_grad}


def test_every_registered_method_offers_the_hooks():
    for cls in METHODS.values():
        for hook in ("from_config", "train_data", "param_groups", "set_epoch", "extra_state", "backbone_loaded"):
            assert callable(getattr(cls, hook)), (cls, hook)


def test_logging_window_means_losses_and_takes_the_latest_state(caplog):
    callback = CallBackLogging(frequent=2, total_step=4, start_step=0, global_batch=8)
    with caplog.at_level(logging.INFO, logger="utils.callbacks"):
        callback(1, 0, {"Loss": torch.tensor(1.0), "L1": torch.tensor(3.0)}, {"margin": torch.tensor(0.1)}, 0.1)
        assert not caplog.records  # nothing read from the device between log steps
        callback(2, 0, {"Loss": torch.tensor(2.0), "L1": torch.tensor(5.0)}, {"margin": torch.tensor(0.2)}, 0.1)
    (line,) = [r.getMessage() for r in caplog.records]
    assert "-Loss 1.5000 -L1 4.0000 -margin 0.2000 -LR 0.100000" in line


def test_non_finite_guard_reports_the_first_bad_step(tmp_path):
    guard = train.NonFiniteGuard(CPU, str(tmp_path))
    guard.update(torch.tensor(1.0), 0)
    guard.check(1)
    guard.update(torch.tensor(float("nan")), 3)
    guard.update(torch.tensor(float("inf")), 4)
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 4 \(noticed at step 6\).*none yet"):
        guard.check(6)


def test_logging_window_averages_a_part_over_its_own_steps(caplog):
    """Stage 2 starting mid-window: L2 is the mean of the steps that had it, not diluted."""
    callback = CallBackLogging(frequent=2, total_step=4, start_step=0, global_batch=8)
    with caplog.at_level(logging.INFO, logger="utils.callbacks"):
        callback(1, 0, {"Loss": torch.tensor(1.0), "L1": torch.tensor(1.0)}, {}, 0.1)
        callback(2, 1, {"Loss": torch.tensor(3.0), "L1": torch.tensor(2.0), "L2": torch.tensor(4.0)}, {}, 0.1)
    (line,) = [r.getMessage() for r in caplog.records]
    assert "-Loss 2.0000 -L1 1.5000 -L2 4.0000 -LR" in line
