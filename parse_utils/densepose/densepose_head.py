"""DensePose branch: Panoptic-FPN style decoder over P2-P5, the V1ConvX head and the chart predictor."""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align


class ConvReLU(nn.Conv2d):
    """3x3 conv with bias, ReLU applied inside so Sequential indices match the checkpoint."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(super().forward(x))


class Decoder(nn.Module):
    """Brings P2..P5 to stride 4 (conv+ReLU, bilinear x2 per octave), sums them, 1x1 predictor.

    Checkpoint names: ``p2.0``, ``p3.0``, ``p4.{0,2}``, ``p5.{0,2,4}``, ``predictor``; the odd indices
    are parameter-free upsamplers.
    """

    levels = ("p2", "p3", "p4", "p5")

    def __init__(self, in_channels: int, conv_dims: int = 256, num_classes: int = 256) -> None:
        super().__init__()
        for octave, name in enumerate(self.levels):
            ops: list[nn.Module] = []
            for k in range(max(1, octave)):
                ops.append(ConvReLU(in_channels if k == 0 else conv_dims, conv_dims, 3, padding=1))
                if octave > 0:
                    ops.append(nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False))
            self.add_module(name, nn.Sequential(*ops))
        self.predictor = nn.Conv2d(conv_dims, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        x = None
        for name, feat in zip(self.levels, features):
            y = getattr(self, name)(feat)
            x = y if x is None else x + y
        return self.predictor(x)


class DensePoseV1ConvXHead(nn.Module):
    """``densepose_head``: ``body_conv_fcn1..N`` 3x3 convs, each followed by ReLU."""

    def __init__(self, in_channels: int, hidden_dim: int = 512, num_convs: int = 8) -> None:
        super().__init__()
        self.num_convs = num_convs
        for i in range(num_convs):
            self.add_module(f"body_conv_fcn{i + 1}",
                            nn.Conv2d(in_channels if i == 0 else hidden_dim, hidden_dim, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.num_convs):
            x = F.relu(getattr(self, f"body_conv_fcn{i + 1}")(x))
        return x


class ChartOutput(NamedTuple):
    """Per-instance logits at 4x the pooled resolution: S (coarse fg/bg), I (fine parts), U, V."""

    coarse_segm: torch.Tensor
    fine_segm: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor


class DensePoseChartPredictor(nn.Module):
    """``densepose_predictor``: four stride-2 transposed convs, each then bilinear x2."""

    def __init__(self, in_channels: int, num_patches: int = 24, num_coarse: int = 2,
                 kernel: int = 4) -> None:
        super().__init__()
        pad = kernel // 2 - 1
        self.ann_index_lowres = nn.ConvTranspose2d(in_channels, num_coarse, kernel, stride=2, padding=pad)
        self.index_uv_lowres = nn.ConvTranspose2d(in_channels, num_patches + 1, kernel, stride=2, padding=pad)
        self.u_lowres = nn.ConvTranspose2d(in_channels, num_patches + 1, kernel, stride=2, padding=pad)
        self.v_lowres = nn.ConvTranspose2d(in_channels, num_patches + 1, kernel, stride=2, padding=pad)

    @staticmethod
    def _up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> ChartOutput:
        return ChartOutput(self._up(self.ann_index_lowres(x)), self._up(self.index_uv_lowres(x)),
                           self._up(self.u_lowres(x)), self._up(self.v_lowres(x)))


def pool_densepose_features(decoded: torch.Tensor, boxes: torch.Tensor, resolution: int = 28,
                            sampling_ratio: int = 2) -> torch.Tensor:
    """ROIAlign of detection boxes (network-input pixels) on the stride-4 decoder output."""
    rois = torch.cat([boxes.new_zeros(boxes.shape[0], 1), boxes], dim=1).to(decoded.dtype)
    return roi_align(decoded, rois, resolution, spatial_scale=0.25, sampling_ratio=sampling_ratio,
                     aligned=False)
