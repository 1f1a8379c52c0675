"""Feature pyramid over res2..res5 plus the stride-64 P6 level that only the RPN reads."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import ResNet


class ResNetFPN(nn.Module):
    """``backbone`` of the checkpoint: ``bottom_up`` ResNet, ``fpn_lateral{2..5}``, ``fpn_output{2..5}``.

    Top-down uses nearest x2 upsampling and a plain sum; P6 is a kernel-1 stride-2 max-pool of P5
    (the output after its 3x3 conv), as in detectron2's LastLevelMaxPool.
    """

    size_divisibility = 32

    def __init__(self, bottom_up: ResNet, out_channels: int = 256) -> None:
        super().__init__()
        self.bottom_up = bottom_up
        for level, stage in zip(range(2, 6), ResNet.stage_names):
            in_ch = bottom_up.out_channels[stage]
            self.add_module(f"fpn_lateral{level}", nn.Conv2d(in_ch, out_channels, 1))
            self.add_module(f"fpn_output{level}", nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        c = self.bottom_up(x)
        lateral = self.fpn_lateral5(c["res5"])
        outputs = {"p5": self.fpn_output5(lateral)}
        for level in (4, 3, 2):
            top_down = F.interpolate(lateral, scale_factor=2.0, mode="nearest")
            lateral = getattr(self, f"fpn_lateral{level}")(c[f"res{level}"]) + top_down
            outputs[f"p{level}"] = getattr(self, f"fpn_output{level}")(lateral)
        outputs["p6"] = F.max_pool2d(outputs["p5"], kernel_size=1, stride=2, padding=0)
        return {k: outputs[k] for k in ("p2", "p3", "p4", "p5", "p6")}
