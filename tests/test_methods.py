"""The training-method hooks the trainer relies on, the stage switch, the logging window, the guard."""

import inspect
import logging

import pytest
import torch
from easydict import EasyDict as edict

from backbones import get_backbone
from losses import get_head
from methods import METHODS, ContraFaceTraining, TrainingMethod, build_method
from methods.contraface import switch_epoch
from training.callbacks import CallBackLogging
from training.step import NonFiniteGuard
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
    with pytest.raises(ValueError, match=r"method 'contrafce' is not a known method; did you mean 'contraface'\?"):
        build_method(edict(method="contrafce"), None)


def test_param_groups_hold_every_trainable_parameter_once():
    method = contraface()
    (group,) = method.param_groups()
    assert {id(p) for p in group["params"]} == {id(p) for p in method.parameters() if p.requires_grad}


def test_every_registered_method_subclasses_the_interface_with_its_signatures():
    hooks = ("check_config", "train_data", "from_config", "param_groups", "set_epoch", "forward", "extra_state",
             "ddp_ignored_parameters", "load_init_weights", "backbone_loaded", "load_init_extra",
             "checkpoint_state", "load_checkpoint_state")
    for cls in METHODS.values():
        assert issubclass(cls, TrainingMethod), cls
        for hook in hooks:
            ours, base = getattr(cls, hook), getattr(TrainingMethod, hook)
            assert list(inspect.signature(ours).parameters) == list(inspect.signature(base).parameters), (cls, hook)
        assert isinstance(cls.__dict__.get("from_config"), classmethod), cls  # each builds itself
    # the trainer's hooks are the base's, not copies
    assert METHODS["unimoco"].checkpoint_state is TrainingMethod.checkpoint_state


def test_logging_window_means_losses_and_takes_the_latest_state(caplog):
    callback = CallBackLogging(frequent=2, total_step=4, start_step=0, global_batch=8)
    with caplog.at_level(logging.INFO, logger="training.callbacks"):
        callback(1, 0, {"Loss": torch.tensor(1.0), "L1": torch.tensor(3.0)}, {"margin": torch.tensor(0.1)}, 0.1)
        assert not caplog.records  # nothing read from the device between log steps
        callback(2, 0, {"Loss": torch.tensor(2.0), "L1": torch.tensor(5.0)}, {"margin": torch.tensor(0.2)}, 0.1)
    (line,) = [r.getMessage() for r in caplog.records]
    assert "-Loss 1.5000 -L1 4.0000 -margin 0.2000 -LR 0.100000" in line


def test_non_finite_guard_reports_the_first_bad_step(tmp_path):
    guard = NonFiniteGuard(CPU, str(tmp_path))
    guard.update(torch.tensor(1.0), 0)
    guard.check(1)
    guard.update(torch.tensor(float("nan")), 3)
    guard.update(torch.tensor(float("inf")), 4)
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 4 \(noticed at step 6\).*none yet"):
        guard.check(6)


def test_logging_window_averages_a_part_over_its_own_steps(caplog):
    """Stage 2 starting mid-window: L2 is the mean of the steps that had it, not diluted."""
    callback = CallBackLogging(frequent=2, total_step=4, start_step=0, global_batch=8)
    with caplog.at_level(logging.INFO, logger="training.callbacks"):
        callback(1, 0, {"Loss": torch.tensor(1.0), "L1": torch.tensor(1.0)}, {}, 0.1)
        callback(2, 1, {"Loss": torch.tensor(3.0), "L1": torch.tensor(2.0), "L2": torch.tensor(4.0)}, {}, 0.1)
    (line,) = [r.getMessage() for r in caplog.records]
    assert "-Loss 2.0000 -L1 1.5000 -L2 4.0000 -LR" in line
