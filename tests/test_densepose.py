"""DensePose wrapper, checkpoint format and loading, on synthetic checkpoints in the published layout."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import runs_after_lock_is_released
from parse_utils import DensePose
from parse_utils.base import FLOAT32_GPU_WORK
from parse_utils.densepose import DensePoseRCNNConfig, WEIGHTS_NAME, build_model
from parse_utils.densepose.checkpoint import load_detectron2_pickle, restricted_loads
from parse_utils.densepose.config_files import BASE_YAML, MODEL_YAML, check_config_folder
from parse_utils.densepose.synthetic import synthetic_state_dict, write_densepose_checkpoint

# The published checkpoint's (detectron2 model_final_162be9.pkl) exact key/shape list, copied into
# tests/data/manifests.
MANIFEST = Path(__file__).resolve().parent / "data" / "manifests" / "densepose_R_50_FPN_s1x.keys.json"


def _published_keys() -> dict:
    """Key -> shape of the published checkpoint written out by hand, independently of the model code."""
    keys = {}

    def conv_bn(prefix, out_c, in_c, k):
        keys[f"{prefix}.weight"] = (out_c, in_c, k, k)
        for s in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{prefix}.norm.{s}"] = (out_c,)

    bu = "backbone.bottom_up"
    conv_bn(f"{bu}.stem.conv1", 64, 3, 7)
    in_c = 64
    for stage, (depth, mid) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=2):
        out_c = mid * 4
        for b in range(depth):
            p = f"{bu}.res{stage}.{b}"
            if b == 0:
                conv_bn(f"{p}.shortcut", out_c, in_c, 1)
            conv_bn(f"{p}.conv1", mid, in_c if b == 0 else out_c, 1)
            conv_bn(f"{p}.conv2", mid, mid, 3)
            conv_bn(f"{p}.conv3", out_c, mid, 1)
        in_c = out_c
    for lvl, c in zip(range(2, 6), (256, 512, 1024, 2048)):
        keys[f"backbone.fpn_lateral{lvl}.weight"], keys[f"backbone.fpn_lateral{lvl}.bias"] = (256, c, 1, 1), (256,)
        keys[f"backbone.fpn_output{lvl}.weight"], keys[f"backbone.fpn_output{lvl}.bias"] = (256, 256, 3, 3), (256,)
    rpn = "proposal_generator.rpn_head"
    for name, shape in (("conv", (256, 256, 3, 3)), ("objectness_logits", (3, 256, 1, 1)),
                        ("anchor_deltas", (12, 256, 1, 1))):
        keys[f"{rpn}.{name}.weight"], keys[f"{rpn}.{name}.bias"] = shape, shape[:1]
    for name, shape in (("box_head.fc1", (1024, 12544)), ("box_head.fc2", (1024, 1024)),
                        ("box_predictor.cls_score", (2, 1024)), ("box_predictor.bbox_pred", (4, 1024))):
        keys[f"roi_heads.{name}.weight"], keys[f"roi_heads.{name}.bias"] = shape, shape[:1]
    for name in ("p2.0", "p3.0", "p4.0", "p4.2", "p5.0", "p5.2", "p5.4"):
        keys[f"roi_heads.decoder.{name}.weight"], keys[f"roi_heads.decoder.{name}.bias"] = (256, 256, 3, 3), (256,)
    keys["roi_heads.decoder.predictor.weight"], keys["roi_heads.decoder.predictor.bias"] = (256, 256, 1, 1), (256,)
    for i in range(1, 9):
        keys[f"roi_heads.densepose_head.body_conv_fcn{i}.weight"] = (512, 256 if i == 1 else 512, 3, 3)
        keys[f"roi_heads.densepose_head.body_conv_fcn{i}.bias"] = (512,)
    for name, c in (("ann_index_lowres", 2), ("index_uv_lowres", 25), ("u_lowres", 25), ("v_lowres", 25)):
        keys[f"roi_heads.densepose_predictor.{name}.weight"] = (512, c, 4, 4)
        keys[f"roi_heads.densepose_predictor.{name}.bias"] = (c,)
    return keys


# ---------------------------------------------------------------- key/shape compatibility
def test_full_network_keys_match_published_keys_and_manifest():
    model = build_model(DensePoseRCNNConfig(), "meta")
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    published = _published_keys()
    assert got == published
    assert sum(int(np.prod(s)) for s in got.values()) == 63_927_330
    manifest = {k: tuple(v) for k, v in json.loads(MANIFEST.read_text()).items()}
    assert got == manifest


def test_tiny_config_keeps_every_key_name():
    full = build_model(DensePoseRCNNConfig(), "meta").state_dict()
    tiny = build_model(DensePoseRCNNConfig.tiny(), "meta").state_dict()
    assert list(full) == list(tiny)
    shapes = {k: tuple(v.shape) for k, v in tiny.items()}
    assert DensePoseRCNNConfig.from_shapes(shapes) == DensePoseRCNNConfig.tiny()
    assert DensePoseRCNNConfig.from_shapes(_published_keys()) == DensePoseRCNNConfig()


# ---------------------------------------------------------------- restricted unpickler
class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_unpickler_rejects_callable_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"model": {"x": _Exploit(marker)}})
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load global (posix|os|nt)\.system"):
        restricted_loads(payload)
    assert not marker.exists()
    path = tmp_path / WEIGHTS_NAME
    path.write_bytes(payload)
    with pytest.raises(pickle.UnpicklingError, match="system"):
        DensePose(tmp_path)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError, match="builtins.eval"):
        restricted_loads(pickle.dumps({"f": eval}))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_unpickler_reads_numpy_arrays_and_normalises_names(tmp_path, protocol):
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(3, 4)).astype(np.float32)
    obj = {"__author__": "x", "model": {
        "module.roi_heads.a": arr, "b_momentum": arr, "pixel_mean": arr,
        "proposal_generator.anchor_generator.cell_anchors.0": arr, "c": np.arange(5, dtype=np.int64)}}
    path = tmp_path / "w.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    out = load_detectron2_pickle(path)
    assert sorted(out) == ["c", "roi_heads.a"]
    np.testing.assert_array_equal(out["roi_heads.a"], arr)
    np.testing.assert_array_equal(out["c"], np.arange(5))
    # a bare state dict (no 'model' entry) is accepted too
    path.write_bytes(pickle.dumps({"d": arr}, protocol=protocol))
    assert list(load_detectron2_pickle(path)) == ["d"]


# ---------------------------------------------------------------- synthetic checkpoints + wrapper
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("densepose_tiny")
    path = write_densepose_checkpoint(folder, tiny=True, seed=0, detectable=True)
    assert path == folder / WEIGHTS_NAME
    return folder


@pytest.fixture(scope="module")
def tiny_model(tiny_dir):
    return DensePose(tiny_dir)


def _person_image(w=96, h=128, seed=0):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    arr[h // 4: 3 * h // 4, w // 3: 2 * w // 3] = (200, 150, 120)
    return Image.fromarray(arr, "RGB")


def test_synthetic_checkpoint_files(tiny_dir):
    assert (tiny_dir / MODEL_YAML).is_file() and (tiny_dir / BASE_YAML).is_file()
    assert check_config_folder(tiny_dir) is True
    state = load_detectron2_pickle(tiny_dir / WEIGHTS_NAME)
    assert list(state) == list(_published_keys())
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in state.values())
    raw = pickle.loads((tiny_dir / WEIGHTS_NAME).read_bytes())
    assert set(raw) == {"model", "__author__"}


def test_detectable_forward_paints_top_person(tiny_model):
    img = _person_image()
    out = tiny_model(img)
    assert isinstance(out, Image.Image) and out.mode == "L" and out.size == img.size
    arr = np.asarray(out)
    assert arr.max() <= 24 and arr.max() > 0
    assert len(np.unique(arr)) > 2  # several body-part labels, not a constant fill
    # the painted pixels lie inside the top detection's truncated box
    bgr = np.ascontiguousarray(np.asarray(img)[:, :, ::-1])
    from parse_utils.densepose.model import resize_for_network
    net = resize_for_network(bgr)
    det = tiny_model.model(torch.from_numpy(net.astype(np.float32).transpose(2, 0, 1).copy()),
                           output_hw=bgr.shape[:2])
    assert det.scores[0] > 0.8 and det.chart.fine_segm.shape == (1, 25, 112, 112)
    x1, y1, x2, y2 = det.boxes[0].tolist()
    x, y, w, h = int(x1), int(y1), int(np.float32(x2) - np.float32(x1)), int(np.float32(y2) - np.float32(y1))
    ys, xs = np.nonzero(arr)
    assert ys.min() >= y and ys.max() < y + h and xs.min() >= x and xs.max() < x + w
    # deterministic
    np.testing.assert_array_equal(np.asarray(tiny_model(img)), arr)


def test_forward_waits_for_the_float32_gpu_lock_and_keeps_tf32(tiny_model, monkeypatch):
    """The lock DWPose's torch modules hold while cuDNN's TF32 is off (parse_utils/base.py):
    DensePose launches no network work inside that window, and leaves the switch alone."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    img = _person_image()
    expected = np.asarray(tiny_model(img))
    got, tf32 = runs_after_lock_is_released(FLOAT32_GPU_WORK, tiny_model.model, lambda: tiny_model(img))
    assert tf32 is True
    np.testing.assert_array_equal(np.asarray(got), expected)


def test_downscale_then_nearest_upscale(tiny_model):
    img = _person_image(w=397, h=520, seed=1)  # long side 520 > 512: cv2 downscale to 390x512
    out = tiny_model(img)
    assert out.size == (397, 520)
    import cv2
    bgr = cv2.cvtColor(np.asarray(img), cv2.COLOR_RGB2BGR)
    s = 512 / 520
    small = cv2.resize(bgr, (int(397 * s), int(520 * s)), interpolation=cv2.INTER_LINEAR)
    assert small.shape[:2] == (512, 390)  # 390.89 truncated, not rounded
    expected = Image.fromarray(tiny_model.predict_bgr(small)).resize((397, 520), Image.NEAREST)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))
    assert np.asarray(out).max() > 0
    outs = tiny_model([_person_image(w=40, h=30).convert("L")])  # non-RGB converted; list -> list
    assert isinstance(outs, list) and [o.size for o in outs] == [(40, 30)]


def test_no_detection_gives_zeros(tmp_path):
    write_densepose_checkpoint(tmp_path, tiny=True, seed=1, detectable=False)
    out = DensePose(tmp_path)(_person_image(w=80, h=60))
    assert out.mode == "L" and out.size == (80, 60)
    assert np.asarray(out).max() == 0


# ---------------------------------------------------------------- errors
def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope" / WEIGHTS_NAME)):
        DensePose(tmp_path / "nope")
    write_densepose_checkpoint(tmp_path, tiny=True)
    (tmp_path / BASE_YAML).unlink()
    with pytest.raises(FileNotFoundError, match=BASE_YAML):
        DensePose(tmp_path)


def test_yaml_disagreement_is_named(tmp_path):
    write_densepose_checkpoint(tmp_path, tiny=True)
    base = tmp_path / BASE_YAML
    base.write_text(base.read_text().replace("NUM_CLASSES: 1", "NUM_CLASSES: 2")
                    .replace('POOLER_TYPE: "ROIAlign"\n  ROI_DENSEPOSE', 'POOLER_TYPE: "ROIAlignV2"\n  ROI_DENSEPOSE'))
    with pytest.raises(ValueError, match=r"MODEL\.ROI_HEADS\.NUM_CLASSES=2.*ROI_BOX_HEAD\.POOLER_TYPE='ROIAlignV2'"):
        DensePose(tmp_path)


def _write_state(folder, state):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / WEIGHTS_NAME).write_bytes(pickle.dumps({"model": state, "__author__": "t"}))


def test_checkpoint_key_errors_name_the_keys(tmp_path):
    base = synthetic_state_dict(DensePoseRCNNConfig.tiny(), seed=0)
    missing = dict(base)
    del missing["roi_heads.box_head.fc2.bias"]
    _write_state(tmp_path / "a", missing)
    with pytest.raises(ValueError, match=r"missing keys: roi_heads\.box_head\.fc2\.bias"):
        DensePose(tmp_path / "a")
    extra = dict(base, **{"roi_heads.mask_head.x": np.zeros(1, np.float32)})
    _write_state(tmp_path / "b", extra)
    with pytest.raises(ValueError, match=r"unexpected keys: roi_heads\.mask_head\.x"):
        DensePose(tmp_path / "b")
    bad = dict(base)
    bad["roi_heads.densepose_predictor.u_lowres.bias"] = np.zeros(7, np.float32)
    _write_state(tmp_path / "c", bad)
    with pytest.raises(ValueError, match=r"u_lowres\.bias \(7,\) vs \(25,\)"):
        DensePose(tmp_path / "c")


def test_missing_bn_statistics_default_to_identity(tmp_path):
    state = synthetic_state_dict(DensePoseRCNNConfig.tiny(), seed=0)
    stem = "backbone.bottom_up.stem.conv1.norm"
    del state[f"{stem}.running_mean"], state[f"{stem}.running_var"]
    model = DensePose.from_state_dict(state).model
    norm = model.backbone.bottom_up.stem.conv1.norm
    assert float(norm.running_mean.abs().sum()) == 0 and float((norm.running_var - 1).abs().sum()) == 0
    del state["backbone.bottom_up.res2.0.conv1.norm.running_var"]  # only one of the pair: an error
    with pytest.raises(ValueError, match=r"res2\.0\.conv1\.norm\.running_var"):
        DensePose.from_state_dict(state)


def test_bad_inputs(tiny_model, tmp_path):
    with pytest.raises(TypeError, match="PIL image"):
        tiny_model(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        tiny_model(str(tmp_path / "missing.png"))
    with pytest.raises(ValueError, match="empty list"):
        tiny_model([])
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        DensePose(tmp_path, device="gpu0")
