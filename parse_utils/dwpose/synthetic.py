"""Small synthetic stand-ins for the published DWPose ONNX files, for tests and benchmarks.

The graphs have the real tensor shapes and are run by the real loading and decoding code.
The detector reports exactly one confident person, centred on the centroid of the
pixels that differ both from the image's top-left (background) colour and from the
letterbox fill 114 (summed row by row and rounded to 1/16 pixel, so onnxruntime and the torch
modules of ``torch_session.py`` find the same box); the pose model puts all 133 keypoints
in a fixed human-like layout inside that person's crop, shifted by the crop's mean value
(likewise reduced axis by axis and rounded to 1/16 bin).
So outputs depend on the input, and the whole pipeline runs end to end.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .detector import DETECTOR_INPUT_SIZE, DETECTOR_STRIDES, LETTERBOX_FILL
from .wholebody import DETECTOR_FILE, POSE_FILE

OPSET = 17
IR_VERSION = 8
NUM_CLASSES = 80
NUM_KEYPOINTS = 133
POSE_INPUT_HW = (384, 288)
SIMCC_BINS = (576, 768)  # (x, y) at split ratio 2
PERSON_OBJECTNESS = 0.9
PERSON_CLASS_PROB = 0.95
OTHER_CLASS_PROB = 0.01
KEYPOINT_PEAK = 0.9
SIMCC_SIGMA = 2.0
CENTRE_STEPS_PER_PIXEL = 16


def _const(name: str, value) -> onnx.NodeProto:
    array = np.asarray(value)
    if array.dtype.kind == "f":
        array = array.astype(np.float32)
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name))


def _model(nodes, inputs, outputs, name: str) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fastfit-synthetic")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def _sum_rows_then_columns(value: str, out: str) -> list[onnx.NodeProto]:
    """Sum of a [1, 1, H, W] map, each row first: short float32 sums, so that runtimes that order
    their additions differently (onnxruntime, PyTorch) agree to about 1e-6 instead of 1e-4."""
    return [
        helper.make_node("ReduceSum", [value, "row_axis"], [f"{out}_rows"], keepdims=1),
        helper.make_node("ReduceSum", [f"{out}_rows", "column_axis"], [out], keepdims=1),
    ]


def _snap(value: str, out: str) -> list[onnx.NodeProto]:
    """Round a position to 1/CENTRE_STEPS_PER_PIXEL pixel (or SimCC bin), so that the last-bit
    differences of two float32 runtimes rarely move a box or a keypoint."""
    return [
        helper.make_node("Mul", [value, "snap_steps"], [f"{out}_steps"]),
        helper.make_node("Round", [f"{out}_steps"], [f"{out}_rounded"]),
        helper.make_node("Div", [f"{out}_rounded", "snap_steps"], [out]),
    ]


def build_detector_model(rng: np.random.Generator) -> onnx.ModelProto:
    """[1, 3, 640, 640] -> [1, 8400, 85] with one non-zero anchor row (a person)."""
    size = DETECTOR_INPUT_SIZE[0]
    counts = [(size // s) ** 2 for s in DETECTOR_STRIDES]
    anchors = sum(counts)
    stride = DETECTOR_STRIDES[-1]
    cells = size // stride
    gx, gy = cells // 2, cells // 2
    anchor_index = sum(counts[:-1]) + gy * cells + gx
    box_w = size * (0.35 + 0.02 * rng.random())
    box_h = size * (0.60 + 0.02 * rng.random())
    base = np.zeros(5 + NUM_CLASSES, dtype=np.float32)
    base[:4] = [-gx, -gy, np.log(box_w / stride), np.log(box_h / stride)]
    base[4] = PERSON_OBJECTNESS
    base[5] = PERSON_CLASS_PROB
    base[6:] = OTHER_CLASS_PROB
    unit_x = np.zeros_like(base)
    unit_x[0] = 1.0 / stride
    unit_y = np.zeros_like(base)
    unit_y[1] = 1.0 / stride
    ramp = np.arange(size, dtype=np.float32) + 0.5
    nodes = [
        _const("fill", np.float32(LETTERBOX_FILL)),
        _const("eps", np.float32(1e-3)),
        _const("corner_start", np.array([0, 0, 0, 0], dtype=np.int64)),
        _const("corner_end", np.array([1, 1, 1, 1], dtype=np.int64)),
        _const("ramp_x", ramp.reshape(1, 1, 1, size)),
        _const("ramp_y", ramp.reshape(1, 1, size, 1)),
        _const("base_row", base.reshape(1, 1, -1)),
        _const("unit_x", unit_x.reshape(1, 1, -1)),
        _const("unit_y", unit_y.reshape(1, 1, -1)),
        _const("scalar_shape", np.array([1, 1, 1], dtype=np.int64)),
        _const("mask_shape", np.array([1, anchors, 1], dtype=np.int64)),
        _const("range_start", np.float32(0)),
        _const("range_limit", np.float32(anchors)),
        _const("range_delta", np.float32(1)),
        _const("anchor_index", np.float32(anchor_index)),
        _const("row_axis", np.array([3], dtype=np.int64)),
        _const("column_axis", np.array([2], dtype=np.int64)),
        _const("snap_steps", np.float32(CENTRE_STEPS_PER_PIXEL)),
        helper.make_node("ReduceMean", ["images"], ["gray"], axes=[1], keepdims=1),
        helper.make_node("Slice", ["gray", "corner_start", "corner_end"], ["corner"]),
        helper.make_node("Sub", ["gray", "fill"], ["off_fill_signed"]),
        helper.make_node("Abs", ["off_fill_signed"], ["off_fill"]),
        helper.make_node("Sub", ["gray", "corner"], ["off_corner_signed"]),
        helper.make_node("Abs", ["off_corner_signed"], ["off_corner"]),
        helper.make_node("Mul", ["off_fill", "off_corner"], ["contrast"]),
        helper.make_node("Add", ["contrast", "eps"], ["weight"]),
        *_sum_rows_then_columns("weight", "total"),
        helper.make_node("Mul", ["weight", "ramp_x"], ["wx"]),
        *_sum_rows_then_columns("wx", "sum_x"),
        helper.make_node("Div", ["sum_x", "total"], ["cx_exact"]),
        *_snap("cx_exact", "cx4"),
        helper.make_node("Reshape", ["cx4", "scalar_shape"], ["cx"]),
        helper.make_node("Mul", ["weight", "ramp_y"], ["wy"]),
        *_sum_rows_then_columns("wy", "sum_y"),
        helper.make_node("Div", ["sum_y", "total"], ["cy_exact"]),
        *_snap("cy_exact", "cy4"),
        helper.make_node("Reshape", ["cy4", "scalar_shape"], ["cy"]),
        helper.make_node("Mul", ["cx", "unit_x"], ["row_x"]),
        helper.make_node("Mul", ["cy", "unit_y"], ["row_y"]),
        helper.make_node("Add", ["base_row", "row_x"], ["row_a"]),
        helper.make_node("Add", ["row_a", "row_y"], ["row"]),
        helper.make_node("Range", ["range_start", "range_limit", "range_delta"], ["anchor_ids"]),
        helper.make_node("Equal", ["anchor_ids", "anchor_index"], ["is_person"]),
        helper.make_node("Cast", ["is_person"], ["mask_flat"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["mask_flat", "mask_shape"], ["mask"]),
        helper.make_node("Mul", ["mask", "row"], ["output"]),
    ]
    inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, anchors, 5 + NUM_CLASSES])]
    return _model(nodes, inputs, outputs, "synthetic_yolox")


def keypoint_layout(rng: np.random.Generator) -> np.ndarray:
    """(133, 2) crop-pixel positions (288 x 384 crop) of a standing, front-facing person."""
    body = np.array([
        [144, 90], [152, 82], [136, 82], [162, 88], [126, 88],  # nose, eyes, ears (left = image right)
        [180, 130], [108, 130], [196, 180], [92, 180], [204, 225], [84, 225],  # shoulders, elbows, wrists
        [166, 230], [122, 230], [168, 280], [120, 280], [170, 320], [118, 320],  # hips, knees, ankles
    ], dtype=np.float64)
    feet = np.array([[178, 330], [184, 328], [168, 332], [110, 330], [104, 328], [120, 332]], dtype=np.float64)
    jaw = np.linspace(0.05 * np.pi, 0.95 * np.pi, 17)  # lower arc (image y points down)
    inner = np.linspace(0.0, 2.0 * np.pi, 51, endpoint=False)
    face = np.concatenate([
        np.stack([144 + 16 * np.cos(jaw), 86 + 22 * np.sin(jaw)], axis=1),
        np.stack([144 + 9 * np.cos(inner), 92 + 10 * np.sin(inner)], axis=1),
    ])
    fingers = []
    for finger in range(5):
        spread = (finger - 2) * 6.0
        fingers.extend([[spread * (j + 1) / 4, 8.0 * (j + 1)] for j in range(4)])
    hand_shape = np.array([[0.0, 0.0]] + fingers)
    left_hand = body[9] + hand_shape
    right_hand = body[10] + hand_shape * np.array([-1.0, 1.0])
    layout = np.concatenate([body, feet, face, left_hand, right_hand])
    layout += rng.uniform(-1.0, 1.0, size=layout.shape)
    assert layout.shape == (NUM_KEYPOINTS, 2)
    return layout


def build_pose_model(rng: np.random.Generator) -> onnx.ModelProto:
    """[1, 3, 384, 288] -> simcc_x [1, 133, 576], simcc_y [1, 133, 768]: one Gaussian peak per keypoint."""
    height, width = POSE_INPUT_HW
    bins_x, bins_y = SIMCC_BINS
    centres = keypoint_layout(rng) * 2.0  # crop pixels -> SimCC bins
    nodes = [
        _const("bins_x", np.arange(bins_x, dtype=np.float32).reshape(1, 1, bins_x)),
        _const("bins_y", np.arange(bins_y, dtype=np.float32).reshape(1, 1, bins_y)),
        _const("mu_x", centres[:, 0].reshape(1, NUM_KEYPOINTS, 1)),
        _const("mu_y", centres[:, 1].reshape(1, NUM_KEYPOINTS, 1)),
        _const("peak", np.float32(KEYPOINT_PEAK)),
        _const("neg_inv_two_sigma2", np.float32(-1.0 / (2.0 * SIMCC_SIGMA**2))),
        _const("shift_gain", np.float32(4.0)),
        _const("shift_min", np.float32(-8.0)),
        _const("shift_max", np.float32(8.0)),
        _const("scalar_shape", np.array([1, 1, 1], dtype=np.int64)),
        _const("snap_steps", np.float32(CENTRE_STEPS_PER_PIXEL)),
        # the mean one axis at a time (short float32 sums, see _sum_rows_then_columns)
        helper.make_node("ReduceMean", ["input"], ["mean_rows"], axes=[3], keepdims=1),
        helper.make_node("ReduceMean", ["mean_rows"], ["mean_planes"], axes=[2], keepdims=1),
        helper.make_node("ReduceMean", ["mean_planes"], ["mean4"], axes=[1], keepdims=1),
        helper.make_node("Reshape", ["mean4", "scalar_shape"], ["mean"]),
        helper.make_node("Mul", ["mean", "shift_gain"], ["shift_raw"]),
        helper.make_node("Clip", ["shift_raw", "shift_min", "shift_max"], ["shift_exact"]),
        *_snap("shift_exact", "shift"),
    ]
    for axis in ("x", "y"):
        nodes += [
            helper.make_node("Add", [f"mu_{axis}", "shift"], [f"centre_{axis}"]),
            helper.make_node("Sub", [f"bins_{axis}", f"centre_{axis}"], [f"d_{axis}"]),
            helper.make_node("Mul", [f"d_{axis}", f"d_{axis}"], [f"d2_{axis}"]),
            helper.make_node("Mul", [f"d2_{axis}", "neg_inv_two_sigma2"], [f"logit_{axis}"]),
            helper.make_node("Exp", [f"logit_{axis}"], [f"gauss_{axis}"]),
            helper.make_node("Mul", [f"gauss_{axis}", "peak"], [f"simcc_{axis}"]),
        ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, height, width])]
    outputs = [
        helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, [1, NUM_KEYPOINTS, bins_x]),
        helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, [1, NUM_KEYPOINTS, bins_y]),
    ]
    return _model(nodes, inputs, outputs, "synthetic_dwpose")


def write_dwpose_models(folder: str | Path, *, seed: int = 0) -> Path:
    """Write yolox_l.onnx and dw-ll_ucoco_384.onnx into `folder` (created) and return it.

    The folder is what DWposeDetector takes as model_dir (Human-Toolkit/DWPose layout).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    onnx.save(build_detector_model(rng), str(folder / DETECTOR_FILE))
    onnx.save(build_pose_model(rng), str(folder / POSE_FILE))
    return folder


if __name__ == "__main__":  # python -m parse_utils.dwpose.synthetic DIR [SEED]
    import sys

    if len(sys.argv) not in (2, 3):
        raise SystemExit("usage: python -m parse_utils.dwpose.synthetic DIR [SEED]")
    print(write_dwpose_models(sys.argv[1], seed=int(sys.argv[2]) if len(sys.argv) == 3 else 0))
