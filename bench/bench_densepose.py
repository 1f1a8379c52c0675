"""Benchmark DensePose R-CNN R_50_FPN_s1x (parse_utils.DensePose) at 768 x 1024.

Times the full ``DensePose(image)`` call (wrapper downscale to 384x512, network input 800x1067,
backbone, RPN, box head, DensePose head on the top person, part-map painting) plus each network
stage, on CUDA when available, else CPU. Without --models the weights are full-size random ones
built in memory, nudged so a person is always detected (so every stage runs); with --models DIR
the real model_final_162be9.pkl in DIR is loaded; ``--quick`` takes the tiny layout (same keys,
narrow layers) and a 96x128 image to check the script itself. Prints one JSON object.

    python -m bench.bench_densepose [--models Models/Human-Toolkit/DensePose] [--device cuda]
                                    [--repeats 20] [--tf32] [--quick]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from bench._common import person_image, sync, time_ms
from parse_utils.densepose import DensePose
from parse_utils.densepose.model import DensePoseRCNNConfig, resize_for_network
from parse_utils.densepose.synthetic import synthetic_state_dict


def _median_ms(fn, device: torch.device, warmup: int, repeats: int) -> tuple[float, list[float]]:
    times = time_ms(fn, device, warmup, repeats)
    return statistics.median(times), times


@torch.no_grad()
def stage_times(dp: DensePose, image: Image.Image, device: torch.device) -> dict[str, float]:
    """One pass through the network stages the wrapper runs, each synchronised and timed (ms)."""
    model = dp.model
    t: dict[str, float] = {}

    def timed(name, fn, *args):
        sync(device)
        start = time.perf_counter()
        out = fn(*args)
        sync(device)
        t[name] = (time.perf_counter() - start) * 1000.0
        return out

    bgr = cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR)
    small = timed("wrapper_downscale", cv2.resize, bgr, (bgr.shape[1] // 2, bgr.shape[0] // 2))
    net = timed("network_resize", resize_for_network, small)
    x = torch.from_numpy(net.astype(np.float32).transpose(2, 0, 1).copy()).to(device)
    hw = (x.shape[1], x.shape[2])
    feats = timed("backbone_fpn", lambda: model.backbone(model.normalize_and_pad(x)))
    proposals, _ = timed("rpn", model.proposal_generator, feats, hw)
    boxes, scores = timed("box_head_nms", model.roi_heads.detect, feats, proposals, hw)
    if boxes.shape[0]:
        timed("densepose_decoder_head", model.roi_heads.densepose, feats, boxes[:1])
    t["num_detections"] = int(boxes.shape[0])
    return t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=None, help="folder with model_final_162be9.pkl")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--tf32", action="store_true",
                        help="allow TF32 matmuls, as FastFit's app does globally")
    parser.add_argument("--quick", action="store_true",
                        help="tiny random weights, 96x128 image, one warm-up and two timed runs (script check)")
    args = parser.parse_args()

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    repeats = args.repeats if args.repeats is not None else (2 if args.quick else
                                                            (20 if device.type == "cuda" else 5))

    start = time.perf_counter()
    if args.models is not None:
        dp = DensePose(args.models, device=device)
        weights = str(args.models)
    else:
        config = DensePoseRCNNConfig.tiny() if args.quick else DensePoseRCNNConfig()
        dp = DensePose.from_state_dict(synthetic_state_dict(config, seed=0), device=device)
        weights = f"synthetic {'tiny' if args.quick else 'full-size'} random (detectable)"
    load_s = time.perf_counter() - start

    size = (96, 128) if args.quick else (768, 1024)
    image = person_image(*size)
    result = dp(image)
    labels = np.asarray(result)
    median, times = _median_ms(lambda: dp(image), device, warmup, repeats)
    report = {
        "benchmark": "densepose_R_50_FPN_s1x",
        "weights": weights,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "input_wh": list(size),
        "load_s": round(load_s, 3),
        "warmup": warmup,
        "repeats": repeats,
        "call_median_ms": round(median, 2),
        "call_min_ms": round(min(times), 2),
        "stages_ms": {k: (round(v, 2) if isinstance(v, float) else v)
                      for k, v in stage_times(dp, image, device).items()},
        "output_size": list(result.size),
        "output_labels_present": sorted(int(v) for v in np.unique(labels)),
    }
    if device.type == "cuda":
        report["peak_memory_mib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
