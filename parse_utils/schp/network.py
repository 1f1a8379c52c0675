"""AugmentCE2P, the SCHP parsing network: dilated ResNet-101, PSP context, edge and decoder branches.

Module names follow the published checkpoints (including the original spelling 'fushion' and
the Sequential indices of the InPlaceABN era), so a stripped checkpoint loads with no renaming.
Only the fusion head is computed: the auxiliary parsing and edge logits never reach the output.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AugmentCE2P", "SCHPNetworkConfig", "RESNET101_LAYERS"]

RESNET101_LAYERS = (3, 4, 23, 3)
_EXPANSION = 4


@dataclass(frozen=True)
class SCHPNetworkConfig:
    """Architecture sizes. Defaults are the published ResNet-101 network (LIP class count).

    Every width is a field so that tests can build a tiny network with the same topology and
    key names; the loader derives all of them from a checkpoint's shapes.
    """

    num_classes: int = 20
    layers: tuple[int, int, int, int] = RESNET101_LAYERS
    stem_channels: tuple[int, int, int] = (64, 64, 128)
    planes: tuple[int, int, int, int] = (64, 128, 256, 512)
    context_channels: int = 512
    pyramid_bins: tuple[int, ...] = (1, 2, 3, 6)
    decoder_channels: int = 256
    skip_channels: int = 48
    edge_channels: int = 256
    fusion_channels: int = 256
    leaky_slope: float = 0.01

    def with_classes(self, num_classes: int) -> SCHPNetworkConfig:
        return replace(self, num_classes=num_classes)

    @property
    def stage_channels(self) -> tuple[int, int, int, int]:
        return tuple(p * _EXPANSION for p in self.planes)  # type: ignore[return-value]


class BatchNormLeakyReLU(nn.BatchNorm2d):
    """The original InPlaceABN position split back into plain BatchNorm (gamma = stored weight) + LeakyReLU.

    Kept as one module so that its parameters sit at the checkpoint's index.
    """

    def __init__(self, num_features: int, negative_slope: float = 0.01) -> None:
        super().__init__(num_features)
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(super().forward(x), self.negative_slope, inplace=True)


def _conv_bn_act(cin: int, cout: int, slope: float, kernel_size: int = 1) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2, bias=False)
    return nn.Sequential(conv, BatchNormLeakyReLU(cout, slope))


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class Bottleneck(nn.Module):
    """ResNet bottleneck; the 3x3 conv carries stride and dilation."""

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        cout = planes * _EXPANSION
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        return F.relu(out + shortcut, inplace=True)


class PyramidPooling(nn.Module):
    """PSP context: pooled summaries at several grid sizes, concatenated with the input."""

    def __init__(self, cin: int, cout: int, bins: tuple[int, ...], slope: float) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(b), nn.Conv2d(cin, cout, 1, bias=False), BatchNormLeakyReLU(cout, slope)
            )
            for b in bins
        )
        self.bottleneck = _conv_bn_act(cin + len(bins) * cout, cout, slope, kernel_size=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[2], x.shape[3])
        pooled = [_resize(stage(x), size) for stage in self.stages]
        return self.bottleneck(torch.cat(pooled + [x], dim=1))


class EdgeBranch(nn.Module):
    """Edge features from three backbone stages at the finest stage's resolution."""

    def __init__(self, in_channels: tuple[int, int, int], channels: int, slope: float) -> None:
        super().__init__()
        self.conv1 = _conv_bn_act(in_channels[0], channels, slope)
        self.conv2 = _conv_bn_act(in_channels[1], channels, slope)
        self.conv3 = _conv_bn_act(in_channels[2], channels, slope)
        # Edge logits head: stored in the checkpoints, not needed for parsing.
        self.conv4 = nn.Conv2d(channels, 2, 3, padding=1, bias=True)

    def forward(self, x2: torch.Tensor, x3: torch.Tensor, x4: torch.Tensor) -> torch.Tensor:
        size = (x2.shape[2], x2.shape[3])
        return torch.cat(
            [self.conv1(x2), _resize(self.conv2(x3), size), _resize(self.conv3(x4), size)], dim=1
        )


class ParsingDecoder(nn.Module):
    """Upsampled context joined with a thin low-level skip from layer1."""

    def __init__(
        self, context_channels: int, low_channels: int, channels: int, skip: int, slope: float
    ) -> None:
        super().__init__()
        self.conv1 = _conv_bn_act(context_channels, channels, slope)
        self.conv2 = _conv_bn_act(low_channels, skip, slope)
        self.conv3 = nn.Sequential(
            nn.Conv2d(channels + skip, channels, 1, bias=False),
            BatchNormLeakyReLU(channels, slope),
            nn.Conv2d(channels, channels, 1, bias=False),
            BatchNormLeakyReLU(channels, slope),
        )

    def forward(self, context: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        size = (low.shape[2], low.shape[3])
        x = torch.cat([_resize(self.conv1(context), size), self.conv2(low)], dim=1)
        return self.conv3(x)


class AugmentCE2P(nn.Module):
    """SCHP network; forward returns the fusion logits at 1/4 of the input resolution."""

    def __init__(self, config: SCHPNetworkConfig = SCHPNetworkConfig()) -> None:
        super().__init__()
        self.config = config
        c = config
        s1, s2, s3 = c.stem_channels
        self.conv1 = nn.Conv2d(3, s1, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(s1)
        self.conv2 = nn.Conv2d(s1, s2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(s2)
        self.conv3 = nn.Conv2d(s2, s3, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(s3)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)

        strides, dilations = (1, 2, 2, 1), (1, 1, 1, 2)
        cin = s3
        for index, (planes, blocks) in enumerate(zip(c.planes, c.layers)):
            layer = []
            for block in range(blocks):
                stride = strides[index] if block == 0 else 1
                layer.append(Bottleneck(cin, planes, stride, dilations[index]))
                cin = planes * _EXPANSION
            self.add_module(f"layer{index + 1}", nn.Sequential(*layer))

        x2c, x3c, x4c, x5c = c.stage_channels
        slope = c.leaky_slope
        self.context_encoding = PyramidPooling(x5c, c.context_channels, c.pyramid_bins, slope)
        self.edge = EdgeBranch((x2c, x3c, x4c), c.edge_channels, slope)
        self.decoder = ParsingDecoder(c.context_channels, x2c, c.decoder_channels, c.skip_channels, slope)
        self.fushion = nn.Sequential(
            nn.Conv2d(c.decoder_channels + 3 * c.edge_channels, c.fusion_channels, 1, bias=False),
            BatchNormLeakyReLU(c.fusion_channels, slope),
            nn.Dropout2d(0.1),
            nn.Conv2d(c.fusion_channels, c.num_classes, 1, bias=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = F.relu(self.bn2(self.conv2(x)), inplace=True)
        x = F.relu(self.bn3(self.conv3(x)), inplace=True)
        x = self.maxpool(x)
        x2 = self.layer1(x)
        x3 = self.layer2(x2)
        x4 = self.layer3(x3)
        x5 = self.layer4(x4)
        parsing = self.decoder(self.context_encoding(x5), x2)
        edges = self.edge(x2, x3, x4)
        return self.fushion(torch.cat([parsing, edges], dim=1))
