"""The layer structure of the two DWPose networks, for the random-weight stand-ins of dwpose.py.

YOLOX-L (CSPDarknet-53 depth/width 1.0 + SPP + PAFPN + decoupled head) and DWPose-L, i.e.
RTMPose-L for 384x288 whole-body (CSPNeXt-L + RTMCC SimCC head), written from their published
architecture descriptions so that parameter and FLOP counts match the published ones within a
few percent. Only the structure is here; dwpose.py fills, calibrates, exports and times them.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


# --------------------------------------------------------------------------------------
# Shared building blocks
# --------------------------------------------------------------------------------------


class ConvBnAct(nn.Module):
    """Conv without bias + BatchNorm + SiLU: the unit both YOLOX and CSPNeXt are made of."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


# --------------------------------------------------------------------------------------
# YOLOX-L
# --------------------------------------------------------------------------------------


class SpaceToDepthStem(nn.Module):
    """YOLOX "Focus" stem: 2x2 pixel blocks folded into channels, then a 3x3 conv."""

    def __init__(self, cout: int) -> None:
        super().__init__()
        self.conv = ConvBnAct(12, cout, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tl, bl = x[..., ::2, ::2], x[..., 1::2, ::2]
        tr, br = x[..., ::2, 1::2], x[..., 1::2, 1::2]
        return self.conv(torch.cat([tl, bl, tr, br], dim=1))


class DarknetBottleneck(nn.Module):
    """1x1 then 3x3 conv at constant width, optional residual."""

    def __init__(self, channels: int, shortcut: bool) -> None:
        super().__init__()
        self.reduce = ConvBnAct(channels, channels, 1)
        self.spatial = ConvBnAct(channels, channels, 3)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.spatial(self.reduce(x))
        return x + y if self.shortcut else y


class YoloxCSPLayer(nn.Module):
    """Cross-stage partial block: half the width through n bottlenecks, half straight across."""

    def __init__(self, cin: int, cout: int, n: int, shortcut: bool = True) -> None:
        super().__init__()
        hidden = cout // 2
        self.main_in = ConvBnAct(cin, hidden, 1)
        self.skip_in = ConvBnAct(cin, hidden, 1)
        self.blocks = nn.Sequential(*[DarknetBottleneck(hidden, shortcut) for _ in range(n)])
        self.fuse = ConvBnAct(2 * hidden, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.blocks(self.main_in(x)), self.skip_in(x)], dim=1))


class SpatialPyramidPooling(nn.Module):
    """YOLOX SPP: parallel stride-1 max pools of 5, 9 and 13 around a channel bottleneck."""

    def __init__(self, channels: int, kernels: tuple[int, ...] = (5, 9, 13)) -> None:
        super().__init__()
        hidden = channels // 2
        self.reduce = ConvBnAct(channels, hidden, 1)
        self.pools = nn.ModuleList(nn.MaxPool2d(k, 1, k // 2) for k in kernels)
        self.expand = ConvBnAct(hidden * (len(kernels) + 1), channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        return self.expand(torch.cat([x] + [pool(x) for pool in self.pools], dim=1))


class CSPDarknet(nn.Module):
    """YOLOX backbone at depth 1.0 / width 1.0: C3 (256), C4 (512), C5 (1024) at strides 8/16/32."""

    def __init__(self, width: int = 64, depth: int = 3) -> None:
        super().__init__()
        w, d = width, depth
        self.stem = SpaceToDepthStem(w)
        self.dark2 = nn.Sequential(ConvBnAct(w, 2 * w, 3, 2), YoloxCSPLayer(2 * w, 2 * w, d))
        self.dark3 = nn.Sequential(ConvBnAct(2 * w, 4 * w, 3, 2), YoloxCSPLayer(4 * w, 4 * w, 3 * d))
        self.dark4 = nn.Sequential(ConvBnAct(4 * w, 8 * w, 3, 2), YoloxCSPLayer(8 * w, 8 * w, 3 * d))
        self.dark5 = nn.Sequential(
            ConvBnAct(8 * w, 16 * w, 3, 2),
            SpatialPyramidPooling(16 * w),
            YoloxCSPLayer(16 * w, 16 * w, d, shortcut=False),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c3 = self.dark3(self.dark2(self.stem(x)))
        c4 = self.dark4(c3)
        return c3, c4, self.dark5(c4)


class PAFPN(nn.Module):
    """Top-down then bottom-up fusion of C3/C4/C5; outputs 256/512/1024 channels."""

    def __init__(self, channels: tuple[int, int, int] = (256, 512, 1024), depth: int = 3) -> None:
        super().__init__()
        c3, c4, c5 = channels
        self.lateral5 = ConvBnAct(c5, c4, 1)
        self.top_down4 = YoloxCSPLayer(2 * c4, c4, depth, shortcut=False)
        self.lateral4 = ConvBnAct(c4, c3, 1)
        self.top_down3 = YoloxCSPLayer(2 * c3, c3, depth, shortcut=False)
        self.down3 = ConvBnAct(c3, c3, 3, 2)
        self.bottom_up4 = YoloxCSPLayer(2 * c3, c4, depth, shortcut=False)
        self.down4 = ConvBnAct(c4, c4, 3, 2)
        self.bottom_up5 = YoloxCSPLayer(2 * c4, c5, depth, shortcut=False)

    def forward(self, feats: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c3, c4, c5 = feats
        p5 = self.lateral5(c5)
        t4 = self.top_down4(torch.cat([F.interpolate(p5, scale_factor=2.0, mode="nearest"), c4], dim=1))
        p4 = self.lateral4(t4)
        n3 = self.top_down3(torch.cat([F.interpolate(p4, scale_factor=2.0, mode="nearest"), c3], dim=1))
        n4 = self.bottom_up4(torch.cat([self.down3(n3), p4], dim=1))
        n5 = self.bottom_up5(torch.cat([self.down4(n4), p5], dim=1))
        return n3, n4, n5


class DecoupledHeadLevel(nn.Module):
    """One pyramid level of the YOLOX head: shared 1x1 stem, separate 2-conv cls and reg towers."""

    def __init__(self, cin: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.stem = ConvBnAct(cin, hidden, 1)
        self.cls_tower = nn.Sequential(ConvBnAct(hidden, hidden, 3), ConvBnAct(hidden, hidden, 3))
        self.reg_tower = nn.Sequential(ConvBnAct(hidden, hidden, 3), ConvBnAct(hidden, hidden, 3))
        self.cls_pred = nn.Conv2d(hidden, num_classes, 1)
        self.box_pred = nn.Conv2d(hidden, 4, 1)
        self.obj_pred = nn.Conv2d(hidden, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        cls_feat = self.cls_tower(x)
        reg_feat = self.reg_tower(x)
        # Exported layout: raw box (dx, dy, log w, log h), then probabilities.
        out = torch.cat(
            [self.box_pred(reg_feat), torch.sigmoid(self.obj_pred(reg_feat)), torch.sigmoid(self.cls_pred(cls_feat))],
            dim=1,
        )
        return out.flatten(2)


class YoloxL(nn.Module):
    """[1, 3, 640, 640] raw 0..255 RGB -> [1, 8400, 85] like the DWPose yolox_l.onnx export."""

    def __init__(self, num_classes: int = 80) -> None:
        super().__init__()
        self.backbone = CSPDarknet()
        self.neck = PAFPN()
        self.head = nn.ModuleList(DecoupledHeadLevel(c, 256, num_classes) for c in (256, 512, 1024))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.neck(self.backbone(images))
        return torch.cat([level(f) for level, f in zip(self.head, feats)], dim=2).permute(0, 2, 1)


# --------------------------------------------------------------------------------------
# DWPose-L (RTMPose-L, 384x288 whole-body)
# --------------------------------------------------------------------------------------


class DepthwiseSeparable(nn.Module):
    """Depthwise k x k conv + BN + SiLU, then pointwise conv + BN + SiLU."""

    def __init__(self, cin: int, cout: int, kernel: int) -> None:
        super().__init__()
        self.depthwise = ConvBnAct(cin, cin, kernel, groups=cin)
        self.pointwise = ConvBnAct(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class CSPNeXtBlock(nn.Module):
    """3x3 conv then a 5x5 depthwise-separable conv, with optional identity."""

    def __init__(self, channels: int, add_identity: bool) -> None:
        super().__init__()
        self.conv = ConvBnAct(channels, channels, 3)
        self.large_kernel = DepthwiseSeparable(channels, channels, 5)
        self.add_identity = add_identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.large_kernel(self.conv(x))
        return x + y if self.add_identity else y


class ChannelGate(nn.Module):
    """Global-average-pool -> 1x1 conv -> hard sigmoid, multiplied back onto the features."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc(x.mean(dim=(2, 3), keepdim=True)))


class CSPNeXtLayer(nn.Module):
    """CSP layer of CSPNeXt blocks (expand ratio 0.5) with channel attention before the fuse conv."""

    def __init__(self, cin: int, cout: int, n: int, add_identity: bool) -> None:
        super().__init__()
        hidden = cout // 2
        self.main_in = ConvBnAct(cin, hidden, 1)
        self.skip_in = ConvBnAct(cin, hidden, 1)
        self.blocks = nn.Sequential(*[CSPNeXtBlock(hidden, add_identity) for _ in range(n)])
        self.attention = ChannelGate(2 * hidden)
        self.fuse = ConvBnAct(2 * hidden, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.blocks(self.main_in(x)), self.skip_in(x)], dim=1)
        return self.fuse(self.attention(y))


class SequentialPooling(nn.Module):
    """SPPF: one 5x5 max pool applied three times in a row (receptive fields 5/9/13)."""

    def __init__(self, channels: int, kernel: int = 5) -> None:
        super().__init__()
        hidden = channels // 2
        self.reduce = ConvBnAct(channels, hidden, 1)
        self.pool = nn.MaxPool2d(kernel, 1, kernel // 2)
        self.expand = ConvBnAct(4 * hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        p1 = self.pool(x)
        p2 = self.pool(p1)
        return self.expand(torch.cat([x, p1, p2, self.pool(p2)], dim=1))


class CSPNeXt(nn.Module):
    """CSPNeXt-L (P5, deepen 1.0, widen 1.0); returns only the stride-32, 1024-channel map."""

    STAGES = ((64, 128, 3, True, False), (128, 256, 6, True, False), (256, 512, 6, True, False), (512, 1024, 3, False, True))

    def __init__(self) -> None:
        super().__init__()
        first = self.STAGES[0][0]
        self.stem = nn.Sequential(
            ConvBnAct(3, first // 2, 3, 2), ConvBnAct(first // 2, first // 2, 3), ConvBnAct(first // 2, first, 3)
        )
        stages = []
        for cin, cout, n, add_identity, use_pool in self.STAGES:
            layers = [ConvBnAct(cin, cout, 3, 2)]
            if use_pool:
                layers.append(SequentialPooling(cout))
            layers.append(CSPNeXtLayer(cout, cout, n, add_identity))
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


class ScaleNorm(nn.Module):
    """Divide by the RMS of the last axis, times one learned scalar."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.inv_sqrt_dim = dim ** -0.5
        self.eps = eps
        self.gain = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rms = torch.linalg.vector_norm(x, dim=-1, keepdim=True) * self.inv_sqrt_dim
        return x / rms.clamp(min=self.eps) * self.gain


class GatedAttentionUnit(nn.Module):
    """RTMCC GAU over keypoint tokens: single-head relu^2 attention gated by u, residual scaled."""

    def __init__(self, dim: int = 256, expansion: int = 2, qk_dim: int = 128) -> None:
        super().__init__()
        self.hidden = dim * expansion
        self.qk_dim = qk_dim
        self.norm = ScaleNorm(dim)
        self.to_uv_base = nn.Linear(dim, 2 * self.hidden + qk_dim, bias=False)
        self.qk_scale = nn.Parameter(torch.ones(2, qk_dim))
        self.qk_offset = nn.Parameter(torch.zeros(2, qk_dim))
        self.out = nn.Linear(self.hidden, dim, bias=False)
        self.residual_scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        uvb = F.silu(self.to_uv_base(self.norm(x)))
        u, v, base = torch.split(uvb, [self.hidden, self.hidden, self.qk_dim], dim=-1)
        q = base * self.qk_scale[0] + self.qk_offset[0]
        k = base * self.qk_scale[1] + self.qk_offset[1]
        attn = torch.square(F.relu(q @ k.transpose(1, 2) / math.sqrt(self.qk_dim)))
        return x * self.residual_scale + self.out(u * (attn @ v))


class RTMCCHead(nn.Module):
    """7x7 conv to keypoint maps, flatten, ScaleNorm + linear to tokens, GAU, two SimCC classifiers."""

    def __init__(
        self,
        in_channels: int = 1024,
        num_keypoints: int = 133,
        feature_hw: tuple[int, int] = (12, 9),
        input_hw: tuple[int, int] = (384, 288),
        split_ratio: float = 2.0,
        token_dim: int = 256,
    ) -> None:
        super().__init__()
        flat = feature_hw[0] * feature_hw[1]
        self.to_keypoints = nn.Conv2d(in_channels, num_keypoints, 7, 1, 3)
        self.to_tokens = nn.Sequential(ScaleNorm(flat), nn.Linear(flat, token_dim, bias=False))
        self.gau = GatedAttentionUnit(token_dim)
        self.cls_x = nn.Linear(token_dim, int(input_hw[1] * split_ratio), bias=False)
        self.cls_y = nn.Linear(token_dim, int(input_hw[0] * split_ratio), bias=False)

    def forward(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.gau(self.to_tokens(self.to_keypoints(feat).flatten(2)))
        return self.cls_x(tokens), self.cls_y(tokens)


class DWPoseL(nn.Module):
    """[1, 3, 384, 288] normalised RGB -> simcc_x [1, 133, 576], simcc_y [1, 133, 768]."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = CSPNeXt()
        self.head = RTMCCHead()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.backbone(x))


# --------------------------------------------------------------------------------------
# Weights, counting, export
# --------------------------------------------------------------------------------------
