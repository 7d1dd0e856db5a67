"""training/step.py: TrainStep is the plain SGD step, with LR scales and clipping; the NaN guard."""

import pytest
import torch
from torch import nn

from training.step import NonFiniteGuard, TrainStep, autocast_dtype, check_channels_last
from utils.distributed import DistEnv
from utils.errors import ConfigError

CPU = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Linear(4, 3)

    def forward(self, images, labels):
        loss = nn.functional.cross_entropy(self.backbone(images) * 10, labels)
        return {"loss": loss, "logs": {}}


def data():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(8, 4, generator=gen), torch.randint(0, 3, (8,), generator=gen)


@pytest.mark.parametrize("clip", [0.0, 0.1])
def test_train_step_equals_the_hand_written_step(clip):
    images, labels = data()
    ours, ref = Toy(), Toy()
    opt = torch.optim.SGD([{"params": ours.parameters(), "lr_scale": 0.5}], lr=1.0, momentum=0.9)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    step = TrainStep(ours, opt, device=CPU.device, grad_clip=clip, clip_parameters=ours.backbone.parameters())
    for _ in range(3):
        out = step(images, labels, lr=0.1)
        ref_opt.zero_grad()
        loss = ref(images, labels)["loss"]
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(ref.parameters(), clip)
        ref_opt.step()
        torch.testing.assert_close(out["loss"], loss, rtol=0, atol=0)
    assert opt.param_groups[0]["lr"] == 0.05
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_mixed_precision_needs_a_gpu_and_a_known_mode():
    assert autocast_dtype("none", CPU.device) is None
    with pytest.raises(ConfigError, match="amp=bf16 needs a CUDA GPU"):
        autocast_dtype("bf16", CPU.device)
    with pytest.raises(ConfigError, match="amp 'fp8' is not one of none, bf16, fp16"):
        autocast_dtype("fp8", CPU.device)


def test_guard_names_the_last_good_checkpoint(tmp_path):
    (tmp_path / "checkpoint-4.pt").write_bytes(b"")
    guard = NonFiniteGuard(CPU, str(tmp_path))
    guard.update(torch.tensor(1.0), 4)
    guard.check(5)
    guard.update(torch.tensor(float("nan")), 5)
    with pytest.raises(FloatingPointError, match=r"step 6 \(noticed at step 8\).*checkpoint-4.pt"):
        guard.check(8)


def test_channels_last_below_width_16_is_refused_on_the_cpu():
    # oneDNN's channels-last backward crashes the process there (bench/README.md): a clear error instead
    with pytest.raises(ConfigError, match="channels_last=True with network_width=8 crashes on the CPU"):
        check_channels_last(True, CPU.device, 8)
    check_channels_last(True, CPU.device, 16)
    check_channels_last(True, CPU.device, None)  # the network's own width (64)
    check_channels_last(False, CPU.device, 8)
    check_channels_last(True, torch.device("cuda"), 8)  # a GPU runs it
