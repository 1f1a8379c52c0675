"""ResNet-50 bottom-up network in the MSRA/Caffe2 layout used by the DensePose checkpoint.

Module names mirror the checkpoint keys (``stem.conv1.norm.weight``, ``res3.0.shortcut``...), so
loading needs no renaming. The stride of each stage's first block sits on the 1x1 ``conv1`` (not on
the 3x3 as in torchvision), and every norm is a frozen batch norm with eps 1e-5.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FrozenBatchNorm2d


class ConvFrozenBN(nn.Conv2d):
    """Bias-free convolution followed by a frozen batch norm stored as its ``norm`` child."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         bias=False)
        self.norm = FrozenBatchNorm2d(out_channels, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(super().forward(x))


class Stem(nn.Module):
    """7x7/2 conv + BN + ReLU, then a 3x3/2 max-pool with padding 1 (total stride 4)."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.conv1 = ConvFrozenBN(3, out_channels, 7, stride=2, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu(self.conv1(x)), kernel_size=3, stride=2, padding=1)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 residual block; stride on the first 1x1 (STRIDE_IN_1X1)."""

    def __init__(self, in_channels: int, bottleneck_channels: int, out_channels: int,
                 stride: int) -> None:
        super().__init__()
        self.shortcut = (ConvFrozenBN(in_channels, out_channels, 1, stride=stride)
                         if in_channels != out_channels or stride != 1 else None)
        self.conv1 = ConvFrozenBN(in_channels, bottleneck_channels, 1, stride=stride)
        self.conv2 = ConvFrozenBN(bottleneck_channels, bottleneck_channels, 3, padding=1)
        self.conv3 = ConvFrozenBN(bottleneck_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = F.relu(self.conv1(x))
        out = F.relu(self.conv2(out))
        out = self.conv3(out)
        return F.relu(out + identity)


class ResNet(nn.Module):
    """Stem plus stages res2..res5, returning every stage output (strides 4, 8, 16, 32)."""

    stage_names = ("res2", "res3", "res4", "res5")

    def __init__(self, stem_channels: int = 64, res2_bottleneck_channels: int = 64,
                 res2_out_channels: int = 256, depths: Sequence[int] = (3, 4, 6, 3)) -> None:
        super().__init__()
        if len(depths) != 4:
            raise ValueError(f"ResNet needs 4 stage depths, got {tuple(depths)}")
        self.stem = Stem(stem_channels)
        in_ch, mid, out = stem_channels, res2_bottleneck_channels, res2_out_channels
        self.out_channels: dict[str, int] = {}
        for idx, (name, depth) in enumerate(zip(self.stage_names, depths)):
            blocks = []
            for b in range(depth):
                stride = 2 if (b == 0 and idx > 0) else 1
                blocks.append(Bottleneck(in_ch, mid, out, stride))
                in_ch = out
            self.add_module(name, nn.Sequential(*blocks))
            self.out_channels[name] = out
            mid, out = mid * 2, out * 2

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        outputs = {}
        for name in self.stage_names:
            x = getattr(self, name)(x)
            outputs[name] = x
        return outputs
