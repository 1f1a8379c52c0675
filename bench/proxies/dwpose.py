"""Random-weight stand-ins for yolox_l.onnx and dw-ll_ucoco_384.onnx with the real networks' cost.

The published DWPose files cannot be fetched here, and the tiny synthetic test models say
nothing about how long the two networks take. This script builds the same layer structure (networks.py)
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

from bench.proxies.networks import DWPoseL, GatedAttentionUnit, YoloxL

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
