"""Improved ResNet (iResNet) for 112x112 face crops, with the ContraFace double-dropout head.

The module layout and parameter names follow insightface's arcface_torch iresnet, so a
released insightface ``backbone.pth`` loads with ``strict=True`` (width 64, no SE). The SE
variant names its parameters like the ContraFace repository (``se_block.fc1`` / ``fc2``).

Forward path::

    112x112 -> conv1/bn1/prelu -> layer1..4 (stride 2 each) -> 7x7x(8*width) -> bn2 -> flatten
            -> dropout -> fc -> features (BatchNorm1d, weight fixed at 1) -> embedding

``forward_trunk`` stops at the flattened map, ``forward_head`` runs fc + features, and
``double_forward`` runs the trunk once and the head twice under two independent dropout masks.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .base import BACKBONES, FEATURE_MAP_SIZE, FaceBackbone, check_feature_map

__all__ = [
    "SEModule",
    "IBasicBlock",
    "IResNet",
    "iresnet18",
    "iresnet34",
    "iresnet50",
    "iresnet100",
    "iresnet200",
]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution, no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class SEModule(nn.Module):
    """Squeeze-and-excitation: channel gates from global average pooling."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        # max(1, .) keeps tiny test widths (e.g. 8 channels) valid; width 64 matches ContraFace.
        hidden = max(1, channels // reduction)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scale each channel of x by its learned gate."""
        gate = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))
        return x * gate


class IBasicBlock(nn.Module):
    """Pre-activation-style residual block: bn1-conv1-bn2-prelu-conv2-bn3 (+SE) + shortcut."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        use_se: bool = False,
        bn_eps: float = 1e-05,
    ):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=bn_eps)
        self.conv1 = conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=bn_eps)
        self.prelu = nn.PReLU(planes)
        # The stride sits on the second conv, as in insightface's iresnet.
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=bn_eps)
        self.downsample = downsample
        self.stride = stride
        self.use_se = use_se
        if use_se:
            self.se_block = SEModule(planes, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual branch plus (possibly downsampled) identity."""
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        if self.use_se:
            out = self.se_block(out)
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(FaceBackbone):
    """iResNet trunk + fc/BN embedding head; see the module docstring for the layout."""

    fc_scale = FEATURE_MAP_SIZE * FEATURE_MAP_SIZE

    def __init__(
        self,
        layers: Sequence[int],
        dropout: float = 0.0,
        num_features: int = 512,
        use_se: bool = False,
        width: int = 64,
        zero_init_residual: bool = False,
        bn_eps: float = 1e-05,
    ):
        super().__init__()
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise ValueError(f"IResNet: layers must be 4 positive block counts, got {list(layers)}")
        if width < 1:
            raise ValueError(f"IResNet: width must be >= 1, got {width}")
        if num_features < 1:
            raise ValueError(f"IResNet: num_features must be >= 1, got {num_features}")
        if not 0.0 < bn_eps < 1.0:
            raise ValueError(f"IResNet: bn_eps must be in (0, 1), got {bn_eps}")
        self.width = width
        self.use_se = use_se
        self.bn_eps = bn_eps  # insightface 1e-5; MagFace's iresnet 2e-5 (its released weights need it)
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width, eps=bn_eps)
        self.prelu = nn.PReLU(width)
        self.layer1 = self._make_layer(width, layers[0], stride=2)
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        self.bn2 = nn.BatchNorm2d(width * 8, eps=bn_eps)
        # Not in-place: forward_trunk's output may be reused (double_forward, callers).
        self.dropout = nn.Dropout(p=0.0)
        self.dropout_p = dropout
        self.fc = nn.Linear(width * 8 * self.fc_scale, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=bn_eps)
        self._init_weights(zero_init_residual)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        """One stage: a (downsampling) first block then blocks-1 identity blocks."""
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes, stride),
                nn.BatchNorm2d(planes, eps=self.bn_eps),
            )
        options = {"use_se": self.use_se, "bn_eps": self.bn_eps}
        stage = [IBasicBlock(self.inplanes, planes, stride, downsample, **options)]
        self.inplanes = planes
        stage += [IBasicBlock(planes, planes, **options) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def _init_weights(self, zero_init_residual: bool) -> None:
        """Initialise as insightface/ContraFace: conv N(0, 0.1), BN (1, 0), features.weight 1."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        # The embedding BN only shifts and normalises; its scale stays 1 (as the original).
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False
        if zero_init_residual:
            # insightface zeroes bn2 (the middle BN) of every block; kept for fidelity. In
            # training mode this makes each residual branch start at zero.
            for m in self.modules():
                if isinstance(m, IBasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

    def forward_trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Image batch (N,3,112,112) -> flattened BN'd last feature map (N, 49*8*width)."""
        in_hw = tuple(x.shape[-2:])
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.bn2(x)
        check_feature_map(self, in_hw, x)
        return torch.flatten(x, 1)

    def forward_head(self, flat: torch.Tensor) -> torch.Tensor:
        """Flattened feature map -> fc -> features BN -> embedding (no dropout here)."""
        return self.features(self.fc(flat))


def _iresnet(layers: Sequence[int], **kwargs: Any) -> IResNet:
    # Keyword arguments only (dropout, num_features, use_se, width, zero_init_residual, bn_eps): the
    # insightface positional `pretrained` flag and `fp16` are deliberately not accepted.
    return IResNet(layers, **kwargs)


@BACKBONES.register("iresnet18", "r18")
def iresnet18(**kwargs: Any) -> IResNet:
    """iResNet-18: blocks [2, 2, 2, 2]."""
    return _iresnet([2, 2, 2, 2], **kwargs)


@BACKBONES.register("iresnet34", "r34")
def iresnet34(**kwargs: Any) -> IResNet:
    """iResNet-34: blocks [3, 4, 6, 3]."""
    return _iresnet([3, 4, 6, 3], **kwargs)


@BACKBONES.register("iresnet50", "r50")
def iresnet50(**kwargs: Any) -> IResNet:
    """iResNet-50: blocks [3, 4, 14, 3]."""
    return _iresnet([3, 4, 14, 3], **kwargs)


@BACKBONES.register("iresnet100", "r100")
def iresnet100(**kwargs: Any) -> IResNet:
    """iResNet-100: blocks [3, 13, 30, 3]."""
    return _iresnet([3, 13, 30, 3], **kwargs)


@BACKBONES.register("iresnet200", "r200")
def iresnet200(**kwargs: Any) -> IResNet:
    """iResNet-200: blocks [6, 26, 60, 6]."""
    return _iresnet([6, 26, 60, 6], **kwargs)
