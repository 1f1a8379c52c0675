"""Benchmark DWPose (detector + whole-body pose + OpenPose rendering) at 768 x 1024.

Times the full DWposeDetector call and each stage on CPU and, when onnxruntime offers the
CUDA execution provider, on GPU. Pass --models DIR (the folder holding yolox_l.onnx and
dw-ll_ucoco_384.onnx) to time the real networks; without it the tiny synthetic models are
written to a temporary folder, so the numbers cover pre/post-processing and rendering only.
The JSON says which models were used.

    python -m bench.bench_dwpose [--models Models/Human-Toolkit/DWPose] [--quick]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from bench._common import person_image
from parse_utils.dwpose import DWposeDetector
from parse_utils.dwpose.detector import decode_yolox, letterbox, select_people
from parse_utils.dwpose.openpose import build_pose_result, coco_wholebody_to_openpose
from parse_utils.dwpose.pose import crop_person, crop_to_image, decode_simcc
from parse_utils.dwpose.render import render_openpose
from parse_utils.dwpose.wholebody import resize_to_detect_canvas

SYNTHETIC_PRODUCER = "fastfit-synthetic"


def _timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, (time.perf_counter() - start) * 1000.0


def stage_times(model: DWposeDetector, image: Image.Image) -> dict[str, float]:
    """One pass through the same steps DWposeDetector runs, each timed (ms)."""
    t = {}
    rgb = np.asarray(image.convert("RGB"))
    canvas, t["detect_canvas_resize"] = _timed(resize_to_detect_canvas, rgb)
    height, width = canvas.shape[:2]
    (batch, ratio), t["letterbox"] = _timed(letterbox, canvas)
    det = model.detector
    raw, t["detector_session"] = _timed(lambda: det.session.run(None, {det.input_name: batch})[0])
    start = time.perf_counter()
    boxes, class_scores = decode_yolox(raw, ratio)
    boxes, _ = select_people(boxes, class_scores)
    t["decode_nms"] = (time.perf_counter() - start) * 1000.0
    if len(boxes) == 0:
        boxes = np.array([[0, 0, width, height]], dtype=np.float32)
    pose = model.pose
    t["pose_crop"] = t["pose_session"] = t["simcc_decode"] = 0.0
    points, scores = [], []
    for box in boxes:
        (crop, center, scale), ms = _timed(crop_person, canvas, box, pose.input_size)
        t["pose_crop"] += ms
        outs, ms = _timed(lambda: pose.session.run(None, {pose.input_name: crop}))
        t["pose_session"] += ms
        start = time.perf_counter()
        locs, s = decode_simcc(outs[0], outs[1])
        points.append(crop_to_image(locs.astype(np.float64), center, scale, pose.input_size))
        scores.append(s)
        t["simcc_decode"] += (time.perf_counter() - start) * 1000.0
    start = time.perf_counter()
    op_points, op_scores = coco_wholebody_to_openpose(np.stack(points), np.stack(scores))
    result = build_pose_result(op_points, op_scores, width, height)
    t["openpose_convert"] = (time.perf_counter() - start) * 1000.0
    drawing, t["render"] = _timed(render_openpose, result, width, height)
    _, t["final_resize"] = _timed(cv2.resize, drawing, rgb.shape[1::-1], None, 0, 0, cv2.INTER_LINEAR)
    t["people"] = float(len(boxes))
    return t


def bench_device(model_dir: Path, device: str, image: Image.Image, warmup: int, repeats: int) -> dict:
    model = DWposeDetector(model_dir, device=device)
    for _ in range(warmup):
        model(image)
    totals = []
    for _ in range(repeats):
        _, ms = _timed(model, image)
        totals.append(ms)
    stages = [stage_times(model, image) for _ in range(repeats)]
    per_stage = {k: round(statistics.median(s[k] for s in stages), 3) for k in stages[0]}
    pre_post = sum(v for k, v in per_stage.items() if k not in ("detector_session", "pose_session", "people"))
    return {
        "device": device,
        "providers": model.detector.session.get_providers(),
        "total_ms_median": round(statistics.median(totals), 3),
        "total_ms_min": round(min(totals), 3),
        "stages_ms_median": per_stage,
        "pre_post_processing_and_render_ms": round(pre_post, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=None, help="folder with yolox_l.onnx and dw-ll_ucoco_384.onnx")
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--devices", default="auto", help="comma list of cpu,cuda; auto = cpu plus cuda when available")
    parser.add_argument("--quick", action="store_true", help="2 repeats, 1 warm-up (smoke test)")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.warmup = 2, 1

    import onnxruntime as ort

    available = ort.get_available_providers()
    if args.devices == "auto":
        devices = ["cpu"] + (["cuda"] if "CUDAExecutionProvider" in available else [])
    else:
        devices = [d.strip() for d in args.devices.split(",") if d.strip()]

    tmp = None
    if args.models is None:
        try:
            from parse_utils.dwpose.synthetic import write_dwpose_models
        except ImportError as exc:
            raise SystemExit(f"the 'onnx' package is needed to build the synthetic models ({exc}); pass --models DIR instead")
        tmp = tempfile.TemporaryDirectory()
        model_dir = write_dwpose_models(Path(tmp.name) / "DWPose", seed=0)
    else:
        model_dir = args.models
    producer = ort.InferenceSession(str(model_dir / "yolox_l.onnx"), providers=["CPUExecutionProvider"]).get_modelmeta().producer_name
    synthetic = producer == SYNTHETIC_PRODUCER

    image = person_image(args.width, args.height)
    results = [bench_device(model_dir, d, image, args.warmup, args.repeats) for d in devices]
    report = {
        "benchmark": "dwpose",
        "models": "synthetic" if synthetic else "user-supplied",
        "models_dir": None if synthetic and args.models is None else str(model_dir),
        "note": (
            "tiny synthetic ONNX models: times cover pre/post-processing, rendering and session overhead, "
            "not the YOLOX-L / DWPose-L network cost" if synthetic else "real model files from --models"
        ),
        "image_size_wh": [args.width, args.height],
        "repeats": args.repeats,
        "warmup": args.warmup,
        "onnxruntime": ort.__version__,
        "opencv": cv2.__version__,
        "available_providers": available,
        "cpu_threads_cv2": cv2.getNumThreads(),
        "machine": platform.machine(),
        "results": results,
    }
    print(json.dumps(report, indent=2))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
