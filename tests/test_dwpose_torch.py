"""DWPose's torch backend (parse_utils/dwpose/torch_session.py) against onnxruntime on the same
ONNX files, the device choice ``auto`` (CPU; the GPU side is bench/bench_dwpose.py's), and the
window in which a graph runs: cuDNN's TF32 switch off, under the lock DensePose and SCHP share.

Stated tolerance for the synthetic graphs: keypoints identical (0 px), face/hand scores within
1e-4, the same rendered pose map pixel for pixel; raw network outputs within 1e-4.
"""
from __future__ import annotations

import threading

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import parse_utils
from helpers import runs_after_lock_is_released
from parse_utils.base import FLOAT32_GPU_WORK
from parse_utils.dwpose import torch_session as ts
from parse_utils.dwpose import wholebody as wb
from parse_utils.dwpose.detector import letterbox
from parse_utils.dwpose.pose import crop_person
from parse_utils.dwpose.synthetic import write_dwpose_models
from parse_utils.dwpose.torch_session import TorchOnnxSession, prepare_for_conversion


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_dwpose_models(tmp_path_factory.mktemp("Human-Toolkit") / "DWPose", seed=3)


@pytest.fixture(scope="module")
def runtimes(model_dir):
    return (
        parse_utils.DWposeDetector(model_dir, device="cpu"),
        parse_utils.DWposeDetector(model_dir, device="cpu", backend="torch"),
    )


def _scene(w: int, h: int, box: tuple[float, float, float, float], colour=(220, 180, 150), seed: int = 0) -> np.ndarray:
    """A textured figure (box as fractions x0, y0, x1, y1) on a plain background."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 40, dtype=np.uint8)
    x0, y0, x1, y1 = int(box[0] * w), int(box[1] * h), int(box[2] * w), int(box[3] * h)
    texture = rng.integers(0, 30, size=(y1 - y0, x1 - x0, 3), dtype=np.uint8)
    img[y0:y1, x0:x1] = np.array(colour, dtype=np.uint8) + texture
    return img


PARITY_IMAGES = {
    "centred_768x1024": _scene(768, 1024, (0.33, 0.2, 0.67, 0.9)),
    "left_small_768x1024": _scene(768, 1024, (0.05, 0.4, 0.3, 0.8), seed=1),
    "wide_1024x576": _scene(1024, 576, (0.55, 0.1, 0.8, 0.95), colour=(90, 140, 200), seed=2),
    "tiny_300x257": _scene(300, 257, (0.3, 0.1, 0.6, 0.9), seed=3),
    "empty_512x704": np.full((704, 512, 3), 90, dtype=np.uint8),
}


@pytest.mark.parametrize("name", list(PARITY_IMAGES))
def test_torch_backend_equals_onnxruntime_on_the_parity_images(runtimes, name):
    reference, converted = runtimes
    image = PARITY_IMAGES[name]
    (pose_a, size_a), (pose_b, size_b) = reference.estimate(image), converted.estimate(image)
    assert size_a == size_b
    for field in ("bodies", "faces", "hands"):
        np.testing.assert_array_equal(getattr(pose_a, field), getattr(pose_b, field))
    np.testing.assert_array_equal(pose_a.body_scores, pose_b.body_scores)
    for field in ("faces_scores", "hands_scores"):
        np.testing.assert_allclose(getattr(pose_a, field), getattr(pose_b, field), rtol=0, atol=1e-4)
    drawing = reference(image, output_type="np")
    assert drawing.max() > 0
    np.testing.assert_array_equal(drawing, converted(image, output_type="np"))


def test_raw_network_outputs_agree(runtimes):
    reference, converted = runtimes
    canvas = wb.resize_to_detect_canvas(PARITY_IMAGES["centred_768x1024"])
    batch, _ = letterbox(canvas)
    det_a = reference.detector.session.run(None, {"images": batch})[0]
    det_b = converted.detector.session.run(None, {"images": batch})[0]
    assert det_b.dtype == np.float32 and det_b.shape == det_a.shape == (1, 8400, 85)
    np.testing.assert_allclose(det_b, det_a, rtol=0, atol=1e-4)
    crop, _, _ = crop_person(canvas, [100, 120, 400, 650])
    for a, b in zip(reference.pose.session.run(None, {"input": crop}), converted.pose.session.run(None, {"input": crop})):
        assert a.shape == b.shape and b.dtype == np.float32
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-4)


def test_half_precision_keeps_integer_constants_exact(model_dir, runtimes):
    """bfloat16 runs under autocast: the synthetic detector's Range(0, 8400) would lose integers
    above 256 if the whole graph were cast, and the drawing would change or fail."""
    half = parse_utils.DWposeDetector(model_dir, device="cpu", backend="torch", dtype=torch.bfloat16)
    assert half.detector.session.get_providers() == ["torch:cpu:bfloat16"]
    image = PARITY_IMAGES["centred_768x1024"]
    np.testing.assert_array_equal(half(image, output_type="np"), runtimes[0](image, output_type="np"))


def test_session_interface(model_dir):
    session = TorchOnnxSession(model_dir / "dw-ll_ucoco_384.onnx")
    assert session.get_inputs() == [ts.GraphValue("input", [1, 3, 384, 288])]
    assert [v.name for v in session.get_outputs()] == ["simcc_x", "simcc_y"]
    assert session.get_providers() == ["torch:cpu:float32"]
    crop = np.zeros((1, 3, 384, 288), dtype=np.float32)
    x, y = session.run(None, {"input": crop})
    assert x.shape == (1, 133, 576) and y.shape == (1, 133, 768)
    (only_y,) = session.run(["simcc_y"], {"input": crop})
    np.testing.assert_array_equal(only_y, y)
    with pytest.raises(ValueError, match=r"missing graph inputs: \['input'\]"):
        session.run(None, {"images": crop})
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        TorchOnnxSession(model_dir / "dw-ll_ucoco_384.onnx", dtype=torch.float64)


def _exporter_style_graph() -> onnx.ModelProto:
    """Conv whose bias is an Identity of a shared initializer, then Clip with a min and no max:
    what the TorchScript exporter writes for shared zero biases and ``clamp(min=eps)``."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.full(4, 0.25, dtype=np.float32), "shared_bias"),
        numpy_helper.from_array(np.array(0.1, dtype=np.float32), "lo"),
    ]
    nodes = [
        helper.make_node("Identity", ["shared_bias"], ["bias_alias"]),
        helper.make_node("Conv", ["x", "w", "bias_alias"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["conv", "lo", ""], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "exporter_style",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_exporter_quirks_are_rewritten_and_the_result_matches_onnxruntime(tmp_path):
    model = _exporter_style_graph()
    path = tmp_path / "quirks.onnx"
    onnx.save(model, str(path))
    rewritten = prepare_for_conversion(_exporter_style_graph())
    assert [n.op_type for n in rewritten.graph.node] == ["Conv", "Clip"]
    assert list(rewritten.graph.node[1].input) == ["conv", "lo"]
    alias = {t.name: t for t in rewritten.graph.initializer}["bias_alias"]
    np.testing.assert_array_equal(numpy_helper.to_array(alias), np.full(4, 0.25, dtype=np.float32))
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    (expected,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    (got,) = TorchOnnxSession(path).run(None, {"x": x})
    assert expected.min() == pytest.approx(0.1) and (expected > 0.1).any()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- backend and device choice
def test_backend_follows_the_device(model_dir, monkeypatch):
    assert parse_utils.DWposeDetector(model_dir, device="cpu").backend == "onnxruntime"
    torch_cpu = parse_utils.DWposeDetector(model_dir, device="cpu", backend="torch")
    assert torch_cpu.backend == "torch" and isinstance(torch_cpu.pose.session, TorchOnnxSession)
    with pytest.raises(ValueError, match="unknown DWPose backend 'tensorrt'"):
        parse_utils.DWposeDetector(model_dir, backend="tensorrt")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    # "cuda" where torch sees none: onnxruntime, which falls back to its CPU provider (as before)
    fallback = parse_utils.DWposeDetector(model_dir, device="cuda")
    assert fallback.backend == "onnxruntime" and fallback.detector.session.get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="torch backend but CUDA is not available"):
        parse_utils.DWposeDetector(model_dir, device="cuda", backend="torch")
    auto = parse_utils.DWposeDetector(model_dir, device="auto")
    assert auto.device == torch.device("cpu") and auto.backend == "onnxruntime"


@pytest.fixture
def fake_gpu(monkeypatch):
    """torch sees CUDA device 0 with a settable amount of free memory (nothing is allocated)."""
    state = {"free_gib": 100.0, "asked": []}

    def mem_get_info(device=None):
        state["asked"].append(torch.device(device))
        return int(state["free_gib"] * 2**30), 141 * 2**30

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    return state


def test_auto_takes_the_gpu_when_it_has_the_memory(fake_gpu):
    assert wb.auto_device() == torch.device("cuda", 0)
    assert wb.auto_device("cuda:1") == torch.device("cuda", 1)
    assert fake_gpu["asked"] == [torch.device("cuda", 0), torch.device("cuda", 1)]
    fake_gpu["free_gib"] = wb.AUTO_MIN_FREE_GIB
    assert wb.auto_device() == torch.device("cuda", 0)


def test_auto_keeps_the_cpu_on_a_small_or_busy_gpu_and_for_a_cpu_engine(fake_gpu, caplog):
    fake_gpu["free_gib"] = wb.AUTO_MIN_FREE_GIB - 0.5
    with caplog.at_level("INFO", logger="parse_utils.dwpose.wholebody"):
        assert wb.auto_device("cuda:0") == torch.device("cpu")
    assert "DWPose on the CPU: cuda:0 has 11.5 GiB free, auto wants 12" in caplog.text
    fake_gpu["free_gib"] = 100.0
    assert wb.auto_device("cpu") == torch.device("cpu")  # the engine runs on the CPU


def test_auto_keeps_the_cpu_beside_a_float32_engine_on_the_gpu(fake_gpu, caplog):
    """DWPose's windows turn TF32 off process-wide, which the diffusion's float32 convolutions
    would feel; in half precision they do not."""
    assert wb.auto_device("cuda:0", torch.bfloat16) == torch.device("cuda", 0)
    assert wb.auto_device("cuda:0", torch.float16) == torch.device("cuda", 0)
    with caplog.at_level("INFO", logger="parse_utils.dwpose.wholebody"):
        assert wb.auto_device("cuda:0", torch.float32) == torch.device("cpu")
    assert "DWPose on the CPU: the models on cuda:0 run in float32 and keep cuDNN's TF32" in caplog.text


def test_auto_is_the_default_setting():
    from fastfit_engine.runtime.engine import FastFitEngine
    from fastfit_service.config import EngineSettings, default_config
    import inspect

    assert EngineSettings.from_env({}).dwpose_device == "auto"
    assert EngineSettings.from_env({"FASTFIT_DWPOSE_DEVICE": "cpu"}).dwpose_device == "cpu"
    assert default_config({})["DWPOSE_DEVICE"] == "auto"
    assert inspect.signature(FastFitEngine.from_models_dir).parameters["dwpose_device"].default == "auto"


# ----------------------------------------------------------------------------- TF32 and the lock DensePose and SCHP share
def _lock_held() -> bool:
    """Whether FLOAT32_GPU_WORK is held by some thread, asked from a fresh one (it is re-entrant)."""
    acquired = []

    def probe():
        acquired.append(FLOAT32_GPU_WORK.acquire(blocking=False))
        if acquired[0]:
            FLOAT32_GPU_WORK.release()

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    return not acquired[0]


@pytest.fixture
def pose_session(model_dir):
    return TorchOnnxSession(model_dir / "dw-ll_ucoco_384.onnx")


def _crop() -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(5).standard_normal((1, 3, 384, 288)).astype(np.float32)}


@pytest.mark.parametrize("before", [True, False])
def test_tf32_is_off_while_a_graph_runs_and_restored_after(pose_session, monkeypatch, before):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", before)
    seen = []
    pose_session.module.register_forward_pre_hook(lambda _m, _a: seen.append((torch.backends.cudnn.allow_tf32, _lock_held())))
    x, y = pose_session.run(None, _crop())
    assert seen == [(False, True)]  # inside: TF32 off, under the lock
    assert torch.backends.cudnn.allow_tf32 is before and not _lock_held()
    assert x.shape == (1, 133, 576) and y.shape == (1, 133, 768)


def test_tf32_and_the_lock_are_restored_after_an_error(pose_session, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)

    def fail(_module, _args):
        assert torch.backends.cudnn.allow_tf32 is False
        raise RuntimeError("the graph failed")

    pose_session.module.register_forward_pre_hook(fail)
    with pytest.raises(RuntimeError, match="the graph failed"):
        pose_session.run(None, _crop())
    assert torch.backends.cudnn.allow_tf32 is True and not _lock_held()


def test_a_graph_waits_while_another_parser_holds_the_lock(pose_session):
    expected = pose_session.run(None, _crop())
    got, tf32 = runs_after_lock_is_released(FLOAT32_GPU_WORK, pose_session.module, lambda: pose_session.run(None, _crop()))
    assert tf32 is False
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(a, b)


def test_onnxruntime_dwpose_does_not_take_the_lock(runtimes):
    """DWPose on the CPU (onnxruntime) runs beside a parser that holds the lock."""
    reference, _ = runtimes
    release, done = threading.Event(), threading.Event()

    def hold():
        with FLOAT32_GPU_WORK:
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        worker = threading.Thread(target=lambda: (reference(PARITY_IMAGES["tiny_300x257"]), done.set()))
        worker.start()
        assert done.wait(60), "onnxruntime DWPose waited for the lock"
    finally:
        release.set()
        holder.join()
