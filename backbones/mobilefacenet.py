"""MobileFaceNet ("mbf") as in insightface arcface_torch, with the ContraFace head interface.

Module names and Sequential indices match insightface's mobilefacenet, so its checkpoints
load with ``strict=True``. The final block (GDC) is ``features.layers``:
``[0]`` 7x7 depthwise conv + BN, ``[1]`` flatten, ``[2]`` Linear(512, num_features, no bias),
``[3]`` BatchNorm1d. Dropout is applied between ``[1]`` and ``[2]`` (held outside the
Sequential so the indices, and thus the state-dict keys, stay those of insightface).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .base import BACKBONES, FaceBackbone, check_feature_map

Pair = tuple[int, int]

__all__ = ["MobileFaceNet", "mobilefacenet", "mobilefacenet_large"]

# Channels of conv_sep / the GDC input, fixed at 512 whatever the scale (as insightface).
GDC_CHANNELS = 512


class ConvBlock(nn.Module):
    """Conv (no bias) + BN + PReLU."""

    def __init__(
        self, in_c: int, out_c: int, kernel: Pair = (1, 1), stride: Pair = (1, 1),
        padding: Pair = (0, 0), groups: int = 1,
    ):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_c, out_c, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_c),
            nn.PReLU(out_c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Conv-BN-PReLU."""
        return self.layers(x)


class LinearBlock(nn.Module):
    """Conv (no bias) + BN, no activation."""

    def __init__(
        self, in_c: int, out_c: int, kernel: Pair = (1, 1), stride: Pair = (1, 1),
        padding: Pair = (0, 0), groups: int = 1,
    ):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_c, out_c, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Conv-BN."""
        return self.layers(x)


class DepthWise(nn.Module):
    """Inverted bottleneck: 1x1 expand to `groups` channels, depthwise kxk, 1x1 project."""

    def __init__(
        self, in_c: int, out_c: int, residual: bool = False, kernel: Pair = (3, 3),
        stride: Pair = (2, 2), padding: Pair = (1, 1), groups: int = 1,
    ):
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(in_c, groups, kernel=(1, 1), padding=(0, 0), stride=(1, 1)),
            ConvBlock(groups, groups, groups=groups, kernel=kernel, padding=padding, stride=stride),
            LinearBlock(groups, out_c, kernel=(1, 1), padding=(0, 0), stride=(1, 1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Bottleneck, plus the input when residual."""
        out = self.layers(x)
        return x + out if self.residual else out


class Residual(nn.Module):
    """A stack of residual DepthWise blocks at constant resolution."""

    def __init__(
        self, c: int, num_block: int, groups: int, kernel: Pair = (3, 3),
        stride: Pair = (1, 1), padding: Pair = (1, 1),
    ):
        super().__init__()
        self.layers = nn.Sequential(
            *[DepthWise(c, c, True, kernel, stride, padding, groups) for _ in range(num_block)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the stack."""
        return self.layers(x)


class GDC(nn.Module):
    """Global depthwise conv head: 7x7 depthwise + BN, flatten, Linear, BatchNorm1d."""

    def __init__(self, embedding_size: int):
        super().__init__()
        self.layers = nn.Sequential(
            LinearBlock(GDC_CHANNELS, GDC_CHANNELS, groups=GDC_CHANNELS, kernel=(7, 7)),
            nn.Flatten(),
            nn.Linear(GDC_CHANNELS, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size),
        )

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 512, 7, 7) -> (N, 512): depthwise conv, BN, flatten."""
        return self.layers[1](self.layers[0](x))

    def head(self, flat: torch.Tensor) -> torch.Tensor:
        """(N, 512) -> embedding: Linear + BatchNorm1d."""
        return self.layers[3](self.layers[2](flat))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Full GDC (no dropout)."""
        return self.head(self.trunk(x))


class MobileFaceNet(FaceBackbone):
    """MobileFaceNet trunk + GDC head with the forward_trunk/forward_head/double_forward API."""

    def __init__(
        self,
        num_features: int = 512,
        blocks: Sequence[int] = (1, 4, 6, 2),
        scale: int = 2,
        dropout: float = 0.0,
    ):
        super().__init__()
        if len(blocks) != 4 or any(int(n) < 1 for n in blocks):
            raise ValueError(f"MobileFaceNet: blocks must be 4 positive counts, got {list(blocks)}")
        c1, c2 = 64 * scale, 128 * scale
        self.scale = scale
        self.layers = nn.ModuleList()
        self.layers.append(ConvBlock(3, c1, kernel=(3, 3), stride=(2, 2), padding=(1, 1)))
        if blocks[0] == 1:
            # groups=64 (not c1) as insightface: grouped, not depthwise, when scale > 1.
            self.layers.append(ConvBlock(c1, c1, kernel=(3, 3), padding=(1, 1), groups=64))
        else:
            self.layers.append(Residual(c1, num_block=blocks[0], groups=128))
        self.layers.extend([
            DepthWise(c1, c1, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=128),
            Residual(c1, num_block=blocks[1], groups=128),
            DepthWise(c1, c2, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=256),
            Residual(c2, num_block=blocks[2], groups=256),
            DepthWise(c2, c2, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=512),
            Residual(c2, num_block=blocks[3], groups=256),
        ])
        self.conv_sep = ConvBlock(c2, GDC_CHANNELS, kernel=(1, 1))
        self.features = GDC(num_features)
        self.dropout = nn.Dropout(p=0.0)
        self.dropout_p = dropout
        self._init_weights()

    def _init_weights(self) -> None:
        """Initialise as insightface: Kaiming-normal (fan_out) conv/linear, BN (1, 0)."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Image batch (N,3,112,112) -> flattened GDC output (N, 512)."""
        in_hw = tuple(x.shape[-2:])
        for layer in self.layers:
            x = layer(x)
        x = self.conv_sep(x)
        check_feature_map(self, in_hw, x)  # the GDC's 7x7 depthwise kernel needs a 7x7 map
        return self.features.trunk(x)

    def forward_head(self, flat: torch.Tensor) -> torch.Tensor:
        """(N, 512) -> Linear -> BatchNorm1d -> embedding (no dropout here)."""
        return self.features.head(flat)


@BACKBONES.register("mobilefacenet", "mbf")
def mobilefacenet(num_features: int = 512, dropout: float = 0.0) -> MobileFaceNet:
    """insightface "mbf": blocks (1, 4, 6, 2), scale 2."""
    return MobileFaceNet(num_features, blocks=(1, 4, 6, 2), scale=2, dropout=dropout)


@BACKBONES.register("mobilefacenet_large", "mbf_large")
def mobilefacenet_large(num_features: int = 512, dropout: float = 0.0) -> MobileFaceNet:
    """insightface "mbf_large": blocks (2, 8, 12, 4), scale 4."""
    return MobileFaceNet(num_features, blocks=(2, 8, 12, 4), scale=4, dropout=dropout)
