"""Random-weight stand-ins for yolox_l.onnx and dw-ll_ucoco_384.onnx with the real networks' cost.

The published DWPose files cannot be fetched here, and the tiny synthetic test models say
nothing about how long the two networks take. This script builds the same layer structure
(YOLOX-L: CSPDarknet-53 depth/width 1.0 + SPP + PAFPN + decoupled head; DWPose-L, i.e.
RTMPose-L for 384x288 whole-body: CSPNeXt-L + RTMCC SimCC head), fills it with seeded
random weights, calibrates the batch norms on one deterministic input so activations stay
in range, and exports both with the TorchScript ONNX exporter. Outputs are meaningless but
the graphs have the published input/output shapes and (within a few percent) the published
parameter and FLOP counts, so bench.bench_dwpose can time them:

    python -m bench.proxies.dwpose /tmp/dwpose_proxy
    python -m bench.bench_dwpose --models /tmp/dwpose_proxy
    python -m bench.proxies.dwpose /tmp/unused --no-export --torch-bench cuda   # eager torch timing

With random weights the detector's objectness/class logits sit at the YOLOX prior
(sigmoid ~ 0.01), so it finds no person and the pose model runs once on the whole image,
which costs the same as the usual one-person photo.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

DETECTOR_FILE = "yolox_l.onnx"
POSE_FILE = "dw-ll_ucoco_384.onnx"
OPSET = 17
PREDICTION_WEIGHT_STD = 1e-4
POSE_NORMALISE = ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))  # RGB mean, std
PUBLISHED = {
    # YOLOX model zoo (FLOPs there are 2 x multiply-accumulates, thop-based).
    "yolox_l": {"params_m": 54.2, "gflops": 155.6, "flops_convention": "2*MACs"},
    # mmpose RTMPose benchmark table, wholebody 384x288 (mmengine counts MACs as FLOPs).
    "rtmpose_l_wholebody_384x288": {"gflops": 10.07, "flops_convention": "MACs"},
}


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


def init_random(model: nn.Module, generator: torch.Generator) -> None:
    """Seeded He-normal convs/linears; detector prediction convs tiny with the YOLOX prior bias (p = 0.01)."""
    prior_bias = -math.log((1 - 0.01) / 0.01)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                std = math.sqrt(2.0 / fan_in) if name.endswith(".conv") else 1.0 / math.sqrt(fan_in)
                if name.endswith(("cls_pred", "obj_pred", "box_pred")):
                    # Random features off the calibration input grow large; tiny prediction
                    # weights keep scores at the prior for any input, so the box count (and
                    # with it the number of pose runs) does not depend on the test image.
                    std = PREDICTION_WEIGHT_STD
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
                if module.bias is not None:
                    module.bias.fill_(prior_bias if name.endswith(("cls_pred", "obj_pred")) else 0.0)
            elif isinstance(module, GatedAttentionUnit):
                module.qk_scale.copy_(torch.rand(module.qk_scale.shape, generator=generator))


def photo_like(shape: tuple[int, ...], generator: torch.Generator, letterbox: bool) -> torch.Tensor:
    """Smooth colour blobs plus mild noise in 0..255 (optionally with a grey 114 band on the right).

    BN statistics taken from white noise do not transfer to photos (the detector then
    saturates and "finds" dozens of people), so calibration uses image-like input.
    """
    batch, channels, height, width = shape
    coarse = torch.rand((batch, channels, max(2, height // 40), max(2, width // 40)), generator=generator) * 255.0
    image = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    image = image + (torch.rand(shape, generator=generator) - 0.5) * 30.0
    if letterbox:
        image[..., :, width * 3 // 4 :] = 114.0
    return image.clamp(0.0, 255.0).round()


def calibrate_batchnorm(model: nn.Module, sample: torch.Tensor) -> None:
    """Set every BN's running stats from one deterministic input so eval activations stay ~unit scale."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(sample)
    model.eval()


def count_macs(model: nn.Module, sample: torch.Tensor) -> int:
    """Multiply-accumulates of convs, linears and the GAU's two token matmuls (what dominates)."""
    total = [0]

    def conv_hook(mod: nn.Conv2d, _inp, out: torch.Tensor) -> None:
        total[0] += out.numel() * mod.weight[0].numel()

    def linear_hook(mod: nn.Linear, _inp, out: torch.Tensor) -> None:
        total[0] += out.numel() * mod.in_features

    def gau_hook(mod: GatedAttentionUnit, inp, _out) -> None:
        batch, tokens = inp[0].shape[:2]
        total[0] += batch * tokens * tokens * (mod.qk_dim + mod.hidden)

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
        elif isinstance(module, GatedAttentionUnit):
            handles.append(module.register_forward_hook(gau_hook))
    with torch.no_grad():
        model(sample)
    for handle in handles:
        handle.remove()
    return total[0]


def export(model: nn.Module, sample: torch.Tensor, path: Path, input_name: str, output_names: list[str], note: str) -> None:
    """TorchScript-based export (single file, static shapes), then tag the file as a proxy."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (sample,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[input_name],
            output_names=output_names,
            do_constant_folding=True,
        )
    try:
        import onnx
    except ImportError:  # the tag is a courtesy; the exported file is complete without it
        return
    proto = onnx.load(str(path))
    proto.doc_string = note
    entry = proto.metadata_props.add()
    entry.key, entry.value = "fastfit_proxy", note
    onnx.save(proto, str(path))


def check_with_onnxruntime(path: Path, sample: torch.Tensor, expected: list[torch.Tensor]) -> dict:
    """Run the exported file once; shapes, finiteness and agreement with torch."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = session.run(None, {session.get_inputs()[0].name: sample.numpy()})
    diffs = []
    for got, ref in zip(outs, expected):
        if got.shape != tuple(ref.shape):
            raise RuntimeError(f"{path.name}: onnxruntime output shape {got.shape} != torch {tuple(ref.shape)}")
        if not np.isfinite(got).all():
            raise RuntimeError(f"{path.name}: onnxruntime output has non-finite values")
        diffs.append(float(np.abs(got - ref.numpy()).max()))
    return {"output_shapes": [list(o.shape) for o in outs], "max_abs_diff_vs_torch": max(diffs),
            "output_abs_max": max(float(np.abs(o).max()) for o in outs)}


def time_torch(model: nn.Module, sample: torch.Tensor, device: str, half: bool, warmup: int, repeats: int) -> dict:
    """Median/min forward time of the eager torch module (cuDNN on CUDA), batch 1."""
    dtype = torch.float16 if half else torch.float32
    model = model.to(device=device, dtype=dtype).eval()
    x = sample.to(device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(warmup):
        model(x)
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        sync()
        times.append((time.perf_counter() - start) * 1000.0)
    model.to(device="cpu", dtype=torch.float32)
    times.sort()
    return {"median_ms": round(times[len(times) // 2], 3), "min_ms": round(times[0], 3)}


def build(out_dir: Path, seed: int, export_files: bool = True, torch_devices: tuple[str, ...] = (), repeats: int = 20) -> dict:
    if export_files:
        out_dir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    report: dict = {"seed": seed, "opset": OPSET, "torch": torch.__version__, "out_dir": str(out_dir)}

    specs = [
        ("yolox_l", YoloxL(), DETECTOR_FILE, (1, 3, 640, 640), None, "images", ["output"]),
        ("dwpose_l", DWPoseL(), POSE_FILE, (1, 3, 384, 288), POSE_NORMALISE, "input", ["simcc_x", "simcc_y"]),
    ]
    for key, model, file_name, shape, normalise, input_name, output_names in specs:
        start = time.perf_counter()
        init_random(model, generator)
        sample = photo_like(shape, generator, letterbox=normalise is None)
        if normalise is not None:  # pose input is mean/std normalised RGB
            mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in normalise)
            sample = (sample - mean) / std
        calibrate_batchnorm(model, sample)
        with torch.no_grad():
            expected = model(sample)
        expected = list(expected) if isinstance(expected, tuple) else [expected]
        macs = count_macs(model, sample)
        entry: dict = {
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
            "gmacs": round(macs / 1e9, 3),
            "gflops_2x_macs": round(2 * macs / 1e9, 3),
        }
        if export_files:
            path = out_dir / file_name
            note = f"random-weight {key} proxy from bench/proxies/dwpose.py (seed {seed}); outputs are meaningless"
            export(model, sample, path, input_name, output_names, note)
            entry.update(file=str(path), bytes=path.stat().st_size, build_s=round(time.perf_counter() - start, 1))
            entry.update(check_with_onnxruntime(path, sample, expected))
        for device in torch_devices:
            entry[f"torch_{device}_fp32"] = time_torch(model, sample, device, False, 3, repeats)
            if device.startswith("cuda"):
                entry[f"torch_{device}_fp16"] = time_torch(model, sample, device, True, 3, repeats)
        report[key] = entry
    report["published"] = PUBLISHED
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path, help="folder to write yolox_l.onnx and dw-ll_ucoco_384.onnx into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--torch-bench",
        default="",
        help="comma list of torch devices (cpu, cuda) to also time the eager modules on, e.g. where "
        "onnxruntime has no CUDA provider; CUDA adds an fp16 run",
    )
    parser.add_argument("--repeats", type=int, default=20, help="timed forwards per model and device for --torch-bench")
    parser.add_argument("--no-export", action="store_true", help="only count (and with --torch-bench, time); write no files")
    args = parser.parse_args()
    if args.out_dir.exists() and not args.out_dir.is_dir():
        raise SystemExit(f"output path exists and is not a folder: {args.out_dir}")
    devices = tuple(d.strip() for d in args.torch_bench.split(",") if d.strip())
    for device in devices:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise SystemExit(f"--torch-bench asked for {device!r} but torch sees no CUDA device")
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be at least 1, got {args.repeats}")
    if devices and any(d.startswith("cuda") for d in devices):
        torch.backends.cudnn.benchmark = True
    torch.set_grad_enabled(False)
    print(json.dumps(build(args.out_dir, args.seed, not args.no_export, devices, args.repeats)))


if __name__ == "__main__":
    sys.exit(main())
