"""Time the SCHP parsers (LIP and ATR) on a 768x1024 person image with full-size random weights.

Weights are built in memory in the published layout and loaded by the real loader; no files.
``--quick`` uses the tiny layout (same key names, narrow layers) to check the script itself.
Reports, per dataset, the end-to-end call (preprocess, forward, upsample, inverse warps,
argmax, 'P' image) and the network forward alone, as medians over timed runs after warm-up.

    python -m bench.bench_schp            # cuda if available, else cpu
    python -m bench.bench_schp --quick    # tiny weights, small image, 1 warm-up + 1 timed run (script check)
    python -m bench.bench_schp --postprocess --device cuda   # post-processing only: OpenCV vs device
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch
from PIL import Image

from bench._common import person_image
from bench._common import time_ms as _time
from parse_utils.schp import SCHP
from parse_utils.schp.synthetic import random_schp_state_dict


def _summary(times: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(times), 2),
        "min_ms": round(min(times), 2),
        "max_ms": round(max(times), 2),
    }


def bench(dataset: str, device: torch.device, image: Image.Image, warmup: int, iters: int, tiny: bool = False) -> dict:
    started = time.perf_counter()
    payload = random_schp_state_dict(dataset, tiny=tiny, seed=0)
    parser = SCHP.from_state_dict(payload["state_dict"], dataset, device=device)
    del payload
    build_s = time.perf_counter() - started

    end_to_end = _time(lambda: parser(image), device, warmup, iters)

    batch = parser.preprocess(image)[0][None].to(device)

    def forward() -> None:
        with torch.inference_mode():
            parser.network(batch)

    forward_times = _time(forward, device, warmup, iters)
    labels = np.asarray(parser(image))
    return {
        "input_size": list(parser.dataset.input_size),
        "classes": parser.dataset.num_classes,
        "build_s": round(build_s, 2),
        "end_to_end": _summary(end_to_end),
        "forward": _summary(forward_times),
        "output_size": [labels.shape[1], labels.shape[0]],
        "labels_present": int(len(np.unique(labels))),
    }


def bench_postprocess(dataset: str, device: torch.device, size: tuple[int, int], warmup: int, iters: int) -> dict:
    """Post-processing alone (upsample, inverse warps, argmax) on random logits: OpenCV on the
    host (after a transfer of the upsampled logits) against the warp on the logits' device."""
    parser = SCHP.from_state_dict(random_schp_state_dict(dataset, tiny=True, seed=0)["state_dict"], dataset, device=device)
    image = person_image(*size)
    batch, inverse, image_size = parser.preprocess(image)
    with torch.inference_mode():
        side = parser.network(batch[None].to(device)).shape[-1]  # tiny weights: only the shape is used
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(parser.dataset.num_classes, side, side, generator=generator) * 4).to(device)
    results, labels = {}, {}
    for name, on_device in (("opencv", False), ("device", True)):
        parser.device_postprocess = on_device
        results[name] = _summary(_time(lambda: parser.postprocess(logits, inverse, image_size), device, warmup, iters))
        labels[name] = parser.postprocess(logits, inverse, image_size)
    results["labels_equal"] = bool(np.array_equal(labels["opencv"], labels["device"]))
    results["classes"] = parser.dataset.num_classes
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny weights, 96x128 image, 1 warm-up and 1 timed run (script check)")
    parser.add_argument("--datasets", default="lip,atr")
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--postprocess", action="store_true",
                        help="time only the post-processing, OpenCV vs on the device, on random logits")
    args = parser.parse_args()

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_gpu = device.type == "cuda"
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else (3 if on_gpu else 1))
    iters = args.iters if args.iters is not None else (1 if args.quick else (10 if on_gpu else 3))
    if args.quick:
        args.width, args.height = 96, 128
    image = person_image(args.width, args.height)

    report = {
        "benchmark": "schp",
        "device": torch.cuda.get_device_name(device) if on_gpu else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "dtype": "float32",
        "weights": "synthetic tiny" if args.quick else "synthetic full-size random",
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32) if on_gpu else None,
        "image_size": [args.width, args.height],
        "warmup": warmup,
        "iters": iters,
        "results": {},
    }
    total = time.perf_counter()
    for dataset in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        if args.postprocess:
            report["results"][dataset] = bench_postprocess(dataset, device, (args.width, args.height), warmup, iters)
        else:
            report["results"][dataset] = bench(dataset, device, image, warmup, iters, tiny=args.quick)
    report["total_s"] = round(time.perf_counter() - total, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
