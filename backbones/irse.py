"""The IR / IR-SE networks of face.evoLVe (CurricularFace, SCF) and of AdaFace / TFace.

Module names and Sequential indices are the authors', so their released state dicts load with
``strict=True`` and give the same embeddings::

    input_layer   0 conv3x3(3, w)  1 BN2d  2 PReLU
    body          one flat Sequential of blocks, each ``res_layer(x) + shortcut_layer(x)``
    output_layer  0 BN2d(C)  1 Dropout  2 Flatten  3 Linear(C*7*7, num_features)
                  4 BatchNorm1d(num_features, affine=False)

Two residual-branch forms (``evolve``):

* face.evoLVe ``backbone/model_irse.py`` (copied by CurricularFace and SCF), ``evolve=True``:
  BN, conv3x3, PReLU, conv3x3 (stride), BN; the SE module, if any, is ``res_layer.5``.
* AdaFace ``net.py`` / TFace ``torchkit/backbone/model_irse.py``, ``evolve=False``: a BN
  after the first conv (BN, conv3x3, BN, PReLU, conv3x3 (stride), BN); the SE module is
  ``res_layer.se_block``. Depths above 100 use bottleneck blocks (BN, 1x1 to C/4, BN, PReLU,
  3x3, BN, PReLU, 1x1 (stride) to C, BN) with 4x wider stages (C = 2048 at width 64).

Basic stages have w, 2w, 4w, 8w channels, bottleneck stages 4w, 8w, 16w, 32w (w = ``width``,
64 in the released networks). The shortcut is a 1x1 max-pool with the block's stride (a plain
subsampling, no weights) where the channels do not change, else a strided 1x1 conv + BN.

The authors' forward returns extra outputs (face.evoLVe the flattened body output, AdaFace the
embedding divided by its norm, and the norm); here ``forward`` returns the un-normalised
embedding itself, as every backbone of this project. ContraFace's two dropout views are taken
where the authors' ``output_layer[1]`` sits: on the flattened, BN'd last feature map.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .base import BACKBONES, FEATURE_MAP_SIZE, FaceBackbone, check_feature_map
from .iresnet import SEModule, conv1x1, conv3x3

__all__ = [
    "IRBlock",
    "IRNet",
    "adaface_ir_18",
    "adaface_ir_34",
    "adaface_ir_50",
    "adaface_ir_101",
    "adaface_ir_152",
    "adaface_ir_200",
    "adaface_ir_se_18",
    "adaface_ir_se_34",
    "adaface_ir_se_50",
    "adaface_ir_se_101",
    "adaface_ir_se_152",
    "adaface_ir_se_200",
    "evolve_ir_50",
    "evolve_ir_101",
    "evolve_ir_152",
    "evolve_ir_se_50",
    "evolve_ir_se_101",
    "evolve_ir_se_152",
]

# Blocks per stage of the authors' get_blocks(num_layers).
STAGES = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    101: (3, 13, 30, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}


def _shortcut(in_channels: int, channels: int, stride: int) -> nn.Module:
    """The authors' shortcut: a strided 1x1 max-pool (subsampling) or a strided 1x1 conv + BN."""
    if in_channels == channels:
        return nn.MaxPool2d(1, stride)
    return nn.Sequential(conv1x1(in_channels, channels, stride), nn.BatchNorm2d(channels))


def _basic_branch(in_channels: int, channels: int, stride: int, evolve: bool) -> nn.Sequential:
    """BN, conv3x3, [BN,] PReLU, conv3x3 with the stride, BN (the BN in brackets: AdaFace/TFace)."""
    layers: list[nn.Module] = [nn.BatchNorm2d(in_channels), conv3x3(in_channels, channels)]
    if not evolve:
        layers.append(nn.BatchNorm2d(channels))
    layers += [nn.PReLU(channels), conv3x3(channels, channels, stride), nn.BatchNorm2d(channels)]
    return nn.Sequential(*layers)


def _bottleneck_branch(in_channels: int, channels: int, stride: int) -> nn.Sequential:
    """BN, 1x1 to channels/4, BN, PReLU, 3x3, BN, PReLU, 1x1 with the stride to channels, BN."""
    mid = channels // 4
    return nn.Sequential(
        nn.BatchNorm2d(in_channels),
        conv1x1(in_channels, mid),
        nn.BatchNorm2d(mid),
        nn.PReLU(mid),
        conv3x3(mid, mid),
        nn.BatchNorm2d(mid),
        nn.PReLU(mid),
        # The stride sits on the last conv, as in the authors' BottleneckIR.
        conv1x1(mid, channels, stride),
        nn.BatchNorm2d(channels),
    )


class IRBlock(nn.Module):
    """One IR block: ``res_layer(x) + shortcut_layer(x)``, basic or bottleneck, with or without SE."""

    def __init__(
        self, in_channels: int, channels: int, stride: int, *, bottleneck: bool, evolve: bool, use_se: bool
    ):
        super().__init__()
        # Registered before res_layer so the state-dict keys come in the authors' order.
        self.shortcut_layer = _shortcut(in_channels, channels, stride)
        if bottleneck:
            self.res_layer = _bottleneck_branch(in_channels, channels, stride)
        else:
            self.res_layer = _basic_branch(in_channels, channels, stride, evolve)
        if use_se:
            # face.evoLVe lists SE as the Sequential's 6th element (res_layer.5.fc1); AdaFace/TFace
            # add it by name (res_layer.se_block.fc1). Either way it runs last in the branch.
            name = str(len(self.res_layer)) if evolve else "se_block"
            self.res_layer.add_module(name, SEModule(channels, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual branch plus shortcut."""
        return self.res_layer(x) + self.shortcut_layer(x)


class IRNet(FaceBackbone):
    """IR / IR-SE network with the authors' key names; see the module docstring for the layout."""

    def __init__(
        self,
        layers: Sequence[int],
        *,
        bottleneck: bool = False,
        evolve: bool = False,
        use_se: bool = False,
        dropout: float = 0.4,
        num_features: int = 512,
        width: int = 64,
    ):
        super().__init__()
        _check_arguments(layers, bottleneck, evolve, num_features, width)
        self.bottleneck, self.evolve, self.use_se, self.width = bottleneck, evolve, use_se, width
        stage_channels = [width * m * (4 if bottleneck else 1) for m in (1, 2, 4, 8)]
        self.input_layer = nn.Sequential(conv3x3(3, width), nn.BatchNorm2d(width), nn.PReLU(width))
        channels = stage_channels[-1]
        # output_layer before body, as the authors assign them: the state-dict keys keep their order.
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(channels),
            # Not in-place: forward_trunk's output is reused by double_forward.
            nn.Dropout(0.0),
            nn.Flatten(1),
            nn.Linear(channels * FEATURE_MAP_SIZE * FEATURE_MAP_SIZE, num_features),
            nn.BatchNorm1d(num_features, affine=False),
        )
        self.body = self._make_body(layers, stage_channels)
        self.dropout_p = dropout
        self._init_weights()

    @property
    def dropout(self) -> nn.Dropout:  # type: ignore[override]  # the base class's attribute, held in output_layer
        """The authors' ``output_layer[1]``, which the base class's forward and dropout_p use."""
        return self.output_layer[1]

    def _make_body(self, layers: Sequence[int], stage_channels: list[int]) -> nn.Sequential:
        """All blocks in one Sequential (``body.<i>``): each stage opens with a stride-2 block."""
        blocks: list[nn.Module] = []
        in_channels = self.width
        options = {"bottleneck": self.bottleneck, "evolve": self.evolve, "use_se": self.use_se}
        for n_blocks, channels in zip(layers, stage_channels):
            for i in range(int(n_blocks)):
                blocks.append(IRBlock(in_channels, channels, 2 if i == 0 else 1, **options))
                in_channels = channels
        return nn.Sequential(*blocks)

    def _init_weights(self) -> None:
        """As the authors: kaiming normal (fan_out, relu) for convs and the Linear, BN (1, 0).

        Their SEModule initialises fc1 with xavier first, but the network-wide loop overwrites
        it with kaiming like every conv, so that is what released training started from.
        """
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Image batch (N,3,112,112) -> flattened BN'd last feature map (N, 49*C)."""
        in_hw = tuple(x.shape[-2:])
        x = self.output_layer[0](self.body(self.input_layer(x)))
        check_feature_map(self, in_hw, x)
        return self.output_layer[2](x)

    def forward_head(self, flat: torch.Tensor) -> torch.Tensor:
        """Flattened feature map -> Linear -> BatchNorm1d -> embedding (no dropout here)."""
        return self.output_layer[4](self.output_layer[3](flat))


def _check_arguments(layers: Sequence[int], bottleneck: bool, evolve: bool, num_features: int, width: int) -> None:
    """Raise a ValueError naming the first bad constructor argument."""
    if len(layers) != 4 or any(int(n) < 1 for n in layers):
        raise ValueError(f"IRNet: layers must be 4 positive block counts, got {list(layers)}")
    if width < 1:
        raise ValueError(f"IRNet: width must be >= 1, got {width}")
    if num_features < 1:
        raise ValueError(f"IRNet: num_features must be >= 1, got {num_features}")
    if bottleneck and evolve:
        # No released network has it, so no key names to follow.
        raise ValueError("IRNet: face.evoLVe's form (evolve=True) has no bottleneck blocks")


# What a builder's name fixes; the builders take only dropout, num_features and width.
_FIXED_BY_NAME = ("layers", "bottleneck", "evolve", "use_se")


def _build(depth: int, se: bool, evolve: bool, kwargs: dict[str, Any]) -> IRNet:
    fixed = sorted(set(_FIXED_BY_NAME) & set(kwargs))
    if fixed:
        # A TypeError, as for any unexpected keyword, but one that says why.
        raise TypeError(f"IR-{depth}: {', '.join(fixed)} is fixed by the network's name "
                        "(e.g. ir_se_50 has SE blocks); the builders take dropout, num_features, width")
    # AdaFace/TFace switch to bottleneck blocks above depth 100 (their `num_layers <= 100`).
    bottleneck = not evolve and depth > 101
    return IRNet(STAGES[depth], bottleneck=bottleneck, evolve=evolve, use_se=se, **kwargs)


def _adaface(depth: int, se: bool, kwargs: dict[str, Any]) -> IRNet:
    return _build(depth, se, False, kwargs)


def _evolve(depth: int, se: bool, kwargs: dict[str, Any]) -> IRNet:
    return _build(depth, se, True, kwargs)


# Builders take keyword arguments only (dropout, num_features, width); the name fixes the rest.
# Each function is named after the authors' network it reproduces (the tests' layout files too).


@BACKBONES.register("ir_18")
def adaface_ir_18(**kwargs: Any) -> IRNet:
    """AdaFace/TFace IR-18: basic blocks [2, 2, 2, 2]."""
    return _adaface(18, False, kwargs)


@BACKBONES.register("ir_34")
def adaface_ir_34(**kwargs: Any) -> IRNet:
    """AdaFace/TFace IR-34: basic blocks [3, 4, 6, 3]."""
    return _adaface(34, False, kwargs)


@BACKBONES.register("ir_50")
def adaface_ir_50(**kwargs: Any) -> IRNet:
    """AdaFace/TFace IR-50: basic blocks [3, 4, 14, 3]."""
    return _adaface(50, False, kwargs)


@BACKBONES.register("ir_101", "ir_100")
def adaface_ir_101(**kwargs: Any) -> IRNet:
    """AdaFace/TFace IR-101 (their num_layers 100): basic blocks [3, 13, 30, 3]."""
    return _adaface(101, False, kwargs)


@BACKBONES.register("ir_152")
def adaface_ir_152(**kwargs: Any) -> IRNet:
    """AdaFace/TFace IR-152: bottleneck blocks [3, 8, 36, 3], 2048 channels at the end."""
    return _adaface(152, False, kwargs)


@BACKBONES.register("ir_200")
def adaface_ir_200(**kwargs: Any) -> IRNet:
    """AdaFace/TFace IR-200: bottleneck blocks [3, 24, 36, 3], 2048 channels at the end."""
    return _adaface(200, False, kwargs)


@BACKBONES.register("ir_se_18")
def adaface_ir_se_18(**kwargs: Any) -> IRNet:
    """AdaFace/TFace IR-SE-18: basic blocks [2, 2, 2, 2] with SE."""
    return _adaface(18, True, kwargs)


@BACKBONES.register("ir_se_34")
def adaface_ir_se_34(**kwargs: Any) -> IRNet:
    """AdaFace/TFace IR-SE-34: basic blocks [3, 4, 6, 3] with SE."""
    return _adaface(34, True, kwargs)


@BACKBONES.register("ir_se_50")
def adaface_ir_se_50(**kwargs: Any) -> IRNet:
    """AdaFace/TFace IR-SE-50: basic blocks [3, 4, 14, 3] with SE."""
    return _adaface(50, True, kwargs)


@BACKBONES.register("ir_se_101", "ir_se_100")
def adaface_ir_se_101(**kwargs: Any) -> IRNet:
    """AdaFace/TFace IR-SE-101: basic blocks [3, 13, 30, 3] with SE."""
    return _adaface(101, True, kwargs)


@BACKBONES.register("ir_se_152")
def adaface_ir_se_152(**kwargs: Any) -> IRNet:
    """AdaFace/TFace IR-SE-152: bottleneck blocks [3, 8, 36, 3] with SE."""
    return _adaface(152, True, kwargs)


@BACKBONES.register("ir_se_200")
def adaface_ir_se_200(**kwargs: Any) -> IRNet:
    """AdaFace/TFace IR-SE-200: bottleneck blocks [3, 24, 36, 3] with SE."""
    return _adaface(200, True, kwargs)


@BACKBONES.register("ir_evolve_50")
def evolve_ir_50(**kwargs: Any) -> IRNet:
    """face.evoLVe / CurricularFace / SCF IR-50: basic blocks [3, 4, 14, 3]."""
    return _evolve(50, False, kwargs)


@BACKBONES.register("ir_evolve_101", "ir_evolve_100")
def evolve_ir_101(**kwargs: Any) -> IRNet:
    """face.evoLVe / CurricularFace / SCF IR-101 (their num_layers 100): basic blocks [3, 13, 30, 3]."""
    return _evolve(101, False, kwargs)


@BACKBONES.register("ir_evolve_152")
def evolve_ir_152(**kwargs: Any) -> IRNet:
    """face.evoLVe / CurricularFace IR-152: basic blocks [3, 8, 36, 3] (not AdaFace's bottleneck IR-152)."""
    return _evolve(152, False, kwargs)


@BACKBONES.register("ir_se_evolve_50")
def evolve_ir_se_50(**kwargs: Any) -> IRNet:
    """face.evoLVe / CurricularFace IR-SE-50: basic blocks [3, 4, 14, 3] with SE."""
    return _evolve(50, True, kwargs)


@BACKBONES.register("ir_se_evolve_101", "ir_se_evolve_100")
def evolve_ir_se_101(**kwargs: Any) -> IRNet:
    """face.evoLVe / CurricularFace IR-SE-101: basic blocks [3, 13, 30, 3] with SE."""
    return _evolve(101, True, kwargs)


@BACKBONES.register("ir_se_evolve_152")
def evolve_ir_se_152(**kwargs: Any) -> IRNet:
    """face.evoLVe / CurricularFace IR-SE-152: basic blocks [3, 8, 36, 3] with SE."""
    return _evolve(152, True, kwargs)
