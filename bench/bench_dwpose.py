"""Benchmark DWPose (detector + whole-body pose + OpenPose rendering) at 768 x 1024.

Times the full DWposeDetector call and each stage for each runtime of the two graphs:
onnxruntime on the CPU, and the torch modules of parse_utils/dwpose/torch_session.py on a GPU in
float32, float16 and bfloat16; each later runtime's outputs are compared with the first's
(keypoints, drawing, raw network outputs). The torch modules run their float32 convolutions
without TF32 whatever the process's setting (``parse_utils.base.float32_gpu_work``); the TF32
numbers in the README (36.5 ms, 94 % of the keypoints) were taken before they did, with the
process-wide switch on. Pass --models DIR (the folder holding yolox_l.onnx and
dw-ll_ucoco_384.onnx, or the cost-equivalent random graphs of bench/proxies/dwpose.py) to time
real-size networks; without it the tiny synthetic models are written to a temporary folder, so
the numbers cover pre/post-processing and rendering only. The JSON says which models were used.

    python -m bench.proxies.dwpose /tmp/dwpose_proxy
    python -m bench.bench_dwpose --models /tmp/dwpose_proxy [--runtimes onnxruntime:cpu,torch:cuda:float16]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
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


@dataclass(frozen=True)
class Runtime:
    """One way of running the two graphs: ``BACKEND:DEVICE[:DTYPE]``."""

    backend: str
    device: str
    dtype: str = "float32"

    @classmethod
    def parse(cls, spec: str) -> Runtime:
        parts = [p.strip() for p in spec.split(":") if p.strip()]
        if len(parts) < 2 or parts[0] not in ("onnxruntime", "torch"):
            raise ValueError(f"runtime {spec!r}: want BACKEND:DEVICE[:DTYPE], BACKEND onnxruntime or torch")
        backend, device, rest = parts[0], parts[1], parts[2:]
        if len(rest) and rest[0].isdigit():  # cuda:1
            device, rest = f"{device}:{rest[0]}", rest[1:]
        dtype = next((r for r in rest if r in DTYPES), "float32")
        unknown = [r for r in rest if r not in DTYPES]
        if unknown:
            raise ValueError(f"runtime {spec!r}: unknown options {unknown}")
        if backend == "onnxruntime" and dtype != "float32":
            raise ValueError(f"runtime {spec!r}: dtype applies to the torch backend only")
        return cls(backend, device, dtype)

    def __str__(self) -> str:
        extra = [self.dtype] if self.backend == "torch" else []
        return ":".join([self.backend, self.device, *extra])


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load(model_dir: Path, runtime: Runtime) -> DWposeDetector:
    return DWposeDetector(model_dir, device=runtime.device, backend=runtime.backend, dtype=DTYPES[runtime.dtype])


def outputs(model: DWposeDetector, image: Image.Image) -> dict:
    """What parity is judged on: the pose, the drawing, and both networks' raw outputs on fixed inputs."""
    rgb = np.asarray(image.convert("RGB"))
    canvas = resize_to_detect_canvas(rgb)
    height, width = canvas.shape[:2]
    pose, _ = model.estimate(rgb)
    batch, _ = letterbox(canvas)
    det = model.detector
    crop, _, _ = crop_person(canvas, [0, 0, width, height], model.pose.input_size)
    pose_session = model.pose
    simcc = pose_session.session.run(None, {pose_session.input_name: crop})
    return {
        "points_px": np.concatenate([pose.bodies, pose.faces.reshape(-1, 2), pose.hands.reshape(-1, 2)]) * (width, height),
        "body_visible": pose.body_scores.ravel() >= 0,
        "scores": np.concatenate([pose.faces_scores.ravel(), pose.hands_scores.ravel()]),
        "drawing": np.asarray(model(image, output_type="np")),
        "detector_raw": det.session.run(None, {det.input_name: batch})[0],
        "simcc": simcc[:2],
    }


def parity(ref: dict, got: dict) -> dict:
    """How far a runtime's outputs are from the reference runtime's (the first one given)."""
    point_diff = np.abs(ref["points_px"] - got["points_px"])
    det_scale = float(np.abs(ref["detector_raw"]).max()) or 1.0
    argmax_same = [float((r.argmax(-1) == g.argmax(-1)).mean()) for r, g in zip(ref["simcc"], got["simcc"])]
    return {
        "keypoints_max_abs_px": round(float(point_diff.max()), 4),
        "keypoints_identical_fraction": round(float((point_diff.max(axis=1) == 0).mean()), 4),
        "keypoints_within_1px_fraction": round(float((point_diff.max(axis=1) <= 1.0).mean()), 4),
        "body_visibility_same": bool(np.array_equal(ref["body_visible"], got["body_visible"])),
        "face_hand_scores_max_abs": float(np.abs(ref["scores"] - got["scores"]).max()),
        "drawing_pixels_differing": int((ref["drawing"] != got["drawing"]).any(axis=2).sum()),
        "detector_raw_max_abs": float(np.abs(ref["detector_raw"] - got["detector_raw"]).max()),
        "detector_raw_max_abs_relative_to_range": float(np.abs(ref["detector_raw"] - got["detector_raw"]).max()) / det_scale,
        "simcc_max_abs": max(float(np.abs(r - g).max()) for r, g in zip(ref["simcc"], got["simcc"])),
        "simcc_argmax_same_fraction_xy": [round(a, 4) for a in argmax_same],
    }


def bench_runtime(model_dir: Path, runtime: Runtime, image: Image.Image, warmup: int, repeats: int) -> tuple[dict, dict]:
    """Timings and GPU memory of one runtime, and its outputs for the parity check."""
    on_gpu = runtime.device.startswith("cuda")
    gc.collect()  # the previous runtime's modules, so that this one's memory is its own
    if on_gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    model = load(model_dir, runtime)
    row: dict = {"runtime": str(runtime), "providers": model.detector.session.get_providers(),
                 "load_s": round(time.perf_counter() - start, 2)}
    if on_gpu:
        row["weights_mib"] = round((torch.cuda.memory_allocated() - base) / 2**20, 1)
    _, first_ms = _timed(model, image)
    row["first_call_s"] = round(first_ms / 1000.0, 2)  # includes cuDNN's start-up on a GPU
    for _ in range(warmup):
        model(image)
    totals = [_timed(model, image)[1] for _ in range(repeats)]
    stages = [stage_times(model, image) for _ in range(repeats)]
    per_stage = {k: round(statistics.median(s[k] for s in stages), 3) for k in stages[0]}
    pre_post = sum(v for k, v in per_stage.items() if k not in ("detector_session", "pose_session", "people"))
    row.update(
        total_ms_median=round(statistics.median(totals), 3),
        total_ms_min=round(min(totals), 3),
        networks_ms_median=round(per_stage["detector_session"] + per_stage["pose_session"], 3),
        stages_ms_median=per_stage,
        pre_post_processing_and_render_ms=round(pre_post, 3),
    )
    if on_gpu:
        row["peak_mib"] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
    result = outputs(model, image)
    del model
    return row, result


def default_runtimes() -> list[str]:
    specs = ["onnxruntime:cpu"]
    if torch.cuda.is_available():
        specs += ["torch:cuda", "torch:cuda:float16", "torch:cuda:bfloat16"]
    return specs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=None, help="folder with yolox_l.onnx and dw-ll_ucoco_384.onnx")
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--runtimes", default="",
        help="comma list of BACKEND:DEVICE[:DTYPE], e.g. onnxruntime:cpu,torch:cuda:float16; "
        "the first is the parity reference; default: onnxruntime:cpu, plus the torch variants on CUDA",
    )
    parser.add_argument("--quick", action="store_true", help="2 repeats, 1 warm-up (smoke test)")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.warmup = 2, 1
    try:
        runtimes = [Runtime.parse(spec) for spec in (args.runtimes.split(",") if args.runtimes else default_runtimes())]
    except ValueError as exc:
        parser.error(str(exc))

    import onnxruntime as ort

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
    results, reference = [], None
    for runtime in runtimes:
        try:
            row, out = bench_runtime(model_dir, runtime, image, args.warmup, args.repeats)
        except Exception as exc:  # a runtime that fails is reported, the others still run
            results.append({"runtime": str(runtime), "error": f"{type(exc).__name__}: {exc}"[:2000]})
            continue
        if reference is None:
            reference = out
            row["parity_reference"] = True
        else:
            row["parity_vs_first"] = parity(reference, out)
        results.append(row)
    report = {
        "benchmark": "dwpose",
        "models": "synthetic" if synthetic else "user-supplied",
        "models_dir": None if synthetic and args.models is None else str(model_dir),
        "note": (
            "tiny synthetic ONNX models: times cover pre/post-processing, rendering and session overhead, "
            "not the YOLOX-L / DWPose-L network cost" if synthetic else "model files from --models"
        ),
        "image_size_wh": [args.width, args.height],
        "repeats": args.repeats,
        "warmup": args.warmup,
        "onnxruntime": ort.__version__,
        "torch": torch.__version__,
        "opencv": cv2.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "cpu_count": os.cpu_count(),
        "cpu_threads_cv2": cv2.getNumThreads(),
        "machine": platform.machine(),
        "results": results,
    }
    print(json.dumps(report, indent=2))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
