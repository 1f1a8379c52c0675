"""SCHP parser: checkpoint format and strict loading, reference geometry, label maps.

Weights are random (tiny networks written in the published .pth layout); geometry and
normalisation are checked against numpy computations written here from the reference's rules
(github GoGoDuck912/Self-Correction-Human-Parsing).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import parse_utils
from helpers import runs_after_lock_is_released
from parse_utils.base import FLOAT32_GPU_WORK
from parse_utils.schp import LIP_LABELS, ATR_LABELS, dataset_from_filename, label_palette
from parse_utils.schp.checkpoint import build_network, config_from_state_dict, expected_state_shapes
from parse_utils.schp.network import AugmentCE2P, SCHPNetworkConfig
from parse_utils.schp.synthetic import random_schp_state_dict, write_schp_checkpoint
from parse_utils.schp.transforms import (
    affine_matrix,
    person_center_scale,
    warp_logits_to_image,
)

# The published checkpoints' exact key/shape lists, copied into tests/data/manifests.
MANIFESTS = Path(__file__).resolve().parent / "data" / "manifests"


def _manifest(dataset: str) -> dict[str, list[int]]:
    return json.loads((MANIFESTS / f"schp-{dataset}.keys.json").read_text())


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("SCHP")
    write_schp_checkpoint(root / "schp-lip.pth", tiny=True, seed=0)
    write_schp_checkpoint(root / "schp-atr.pth", tiny=True, seed=1)
    return root


@pytest.fixture(scope="module")
def lip_parser(tiny_dir):
    return parse_utils.SCHP(tiny_dir / "schp-lip.pth", device="cpu")


@pytest.fixture(scope="module")
def atr_parser(tiny_dir):
    return parse_utils.SCHP(tiny_dir / "schp-atr.pth")


def _smooth_image(w: int, h: int) -> Image.Image:
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    rgb = np.stack([40 + 180 * x / w, 30 + 200 * y / h, 120 + 60 * np.sin(x / 9.0 + y / 13.0)], -1)
    return Image.fromarray(np.round(rgb).astype(np.uint8), "RGB")


# ---------------------------------------------------------------- full-size compatibility


@pytest.mark.parametrize("dataset,classes", [("lip", 20), ("atr", 18)])
def test_full_network_matches_manifest_exactly(dataset, classes):
    manifest = _manifest(dataset)
    with torch.device("meta"):
        network = AugmentCE2P(SCHPNetworkConfig(num_classes=classes))
    ours = {f"module.{k}": list(v) for k, v in expected_state_shapes(network).items()}
    assert list(ours) == list(manifest)  # same names, same order
    assert ours == manifest
    # Parameter count of the published checkpoint (tensors loaded, BN counters excluded).
    assert sum(int(np.prod(s)) for s in manifest.values()) == {"lip": 66_833_302, "atr": 66_832_788}[dataset]


@pytest.mark.parametrize("classes,params", [(20, 66_833_302), (18, 66_832_788)])
def test_full_network_size_without_manifest(classes, params):
    """Runs even where the manifests are not checked out: counts and spot shapes of the published checkpoints."""
    with torch.device("meta"):
        shapes = expected_state_shapes(AugmentCE2P(SCHPNetworkConfig(num_classes=classes)))
    assert len(shapes) == 599
    assert sum(int(np.prod(s)) for s in shapes.values()) == params
    assert shapes["fushion.3.weight"] == (classes, 256, 1, 1)
    assert shapes["decoder.conv3.2.weight"] == (256, 256, 1, 1)
    assert shapes["decoder.conv3.3.running_var"] == (256,)
    assert shapes["context_encoding.bottleneck.0.weight"] == (512, 4096, 3, 3)
    assert shapes["layer3.22.conv3.weight"] == (1024, 256, 1, 1)
    assert "layer3.23.conv1.weight" not in shapes
    assert shapes["layer4.0.downsample.0.weight"] == (2048, 1024, 1, 1)
    assert shapes["edge.conv4.weight"] == (2, 256, 3, 3)


@pytest.mark.parametrize("dataset", ["lip", "atr"])
def test_loader_accepts_full_size_manifest_layout(dataset):
    state = {k[len("module."):]: torch.empty(s, device="meta") for k, s in _manifest(dataset).items()}
    config = config_from_state_dict(state)
    assert config == SCHPNetworkConfig(num_classes=len(state["fushion.3.bias"]))
    network = build_network(state, num_classes=20 if dataset == "lip" else 18, device="meta")
    assert network.config.layers == (3, 4, 23, 3)
    assert not network.training


def test_full_size_synthetic_checkpoint_reproduces_manifest():
    payload = random_schp_state_dict("atr", tiny=False, seed=0)
    manifest = _manifest("atr")
    state = payload["state_dict"]
    assert list(state) == list(manifest)
    assert {k: list(v.shape) for k, v in state.items()} == manifest
    assert all(v.dtype == torch.float32 for v in state.values())


def test_truncated_full_width_checkpoint_is_rejected():
    state = {k[len("module."):]: torch.empty(s, device="meta") for k, s in _manifest("lip").items()}
    state = {k: v for k, v in state.items() if not k.startswith("layer3.22.")}
    with pytest.raises(ValueError, match=r"block counts \(3, 4, 22, 3\)"):
        config_from_state_dict(state)


# ---------------------------------------------------------------- checkpoint file format


def test_synthetic_checkpoint_is_original_format(tiny_dir):
    payload = torch.load(tiny_dir / "schp-lip.pth", map_location="cpu", weights_only=True)
    assert set(payload) == {"state_dict"}
    keys = list(payload["state_dict"])
    assert all(k.startswith("module.") for k in keys)
    assert "module.fushion.3.weight" in keys and "module.decoder.conv3.2.weight" in keys
    assert payload["state_dict"]["module.fushion.3.bias"].shape == (20,)
    other = torch.load(tiny_dir / "schp-atr.pth", map_location="cpu", weights_only=True)
    assert other["state_dict"]["module.fushion.3.bias"].shape == (18,)


def test_synthetic_checkpoint_is_deterministic(tmp_path):
    a = write_schp_checkpoint(tmp_path / "a" / "schp-lip.pth", tiny=True, seed=3)
    b = write_schp_checkpoint(tmp_path / "b" / "schp-lip.pth", tiny=True, seed=3)
    sa = torch.load(a, weights_only=True)["state_dict"]
    sb = torch.load(b, weights_only=True)["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    sc = random_schp_state_dict("lip", tiny=True, seed=4)["state_dict"]
    assert not torch.equal(sa["module.conv1.weight"], sc["module.conv1.weight"])


def test_missing_file_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="schp-lip.pth"):
        parse_utils.SCHP(tmp_path / "schp-lip.pth")


def test_dataset_from_file_name():
    assert dataset_from_filename("Models/Human-Toolkit/SCHP/schp-lip.pth") == "lip"
    assert dataset_from_filename("Models/Human-Toolkit/SCHP/schp-atr.pth") == "atr"
    assert dataset_from_filename("exp-schp-201908270938-pascal-person-part.pth") == "pascal"
    # Only the file name counts: a parent folder containing 'lip' does not force LIP.
    assert dataset_from_filename("/home/philip/SCHP/schp-atr.pth") == "atr"
    with pytest.raises(ValueError, match="cannot tell the SCHP dataset"):
        dataset_from_filename("SCHP/parser.pth")


def _save_state(path: Path, state: dict) -> Path:
    torch.save({"state_dict": state}, path)
    return path


def test_missing_and_unexpected_keys_are_named(tmp_path):
    state = random_schp_state_dict("lip", tiny=True)["state_dict"]
    del state["module.layer2.0.bn2.running_var"]
    state["module.decoder.extra.weight"] = torch.zeros(3)
    path = _save_state(tmp_path / "schp-lip.pth", state)
    with pytest.raises(ValueError) as error:
        parse_utils.SCHP(path)
    message = str(error.value)
    assert "missing keys: module.layer2.0.bn2.running_var" in message
    assert "unexpected keys: module.decoder.extra.weight" in message


def test_shape_mismatch_is_named(tmp_path):
    state = random_schp_state_dict("lip", tiny=True)["state_dict"]
    state["module.edge.conv4.weight"] = torch.zeros(2, 8, 1, 1)
    with pytest.raises(ValueError, match=r"module\.edge\.conv4\.weight \(2, 8, 1, 1\) != \(2, 8, 3, 3\)"):
        parse_utils.SCHP(_save_state(tmp_path / "schp-lip.pth", state))


def test_prefix_and_container_are_required(tmp_path):
    state = random_schp_state_dict("lip", tiny=True)["state_dict"]
    bare = {k[len("module."):]: v for k, v in state.items()}
    with pytest.raises(ValueError, match="without the 'module.' prefix: bn1.bias"):
        parse_utils.SCHP(_save_state(tmp_path / "schp-lip.pth", bare))
    torch.save(state, tmp_path / "flat-schp-lip.pth")
    with pytest.raises(ValueError, match="no 'state_dict' entry"):
        parse_utils.SCHP(tmp_path / "flat-schp-lip.pth")


class _NotAllowed:
    pass


def test_arbitrary_pickles_are_refused(tmp_path):
    state = random_schp_state_dict("lip", tiny=True)["state_dict"]
    torch.save({"state_dict": state, "extra": _NotAllowed()}, tmp_path / "schp-lip.pth")
    with pytest.raises(ValueError, match="cannot read SCHP checkpoint"):
        parse_utils.SCHP(tmp_path / "schp-lip.pth")


def test_class_count_must_match_dataset(tmp_path):
    state = random_schp_state_dict("atr", tiny=True)["state_dict"]
    with pytest.raises(ValueError, match="18 classes .* dataset has 20"):
        parse_utils.SCHP(_save_state(tmp_path / "schp-lip.pth", state))


def test_auxiliary_heads_are_tolerated(tmp_path):
    state = random_schp_state_dict("lip", tiny=True)["state_dict"]
    state["module.decoder.conv4.weight"] = torch.zeros(20, 16, 1, 1)
    state["module.decoder.conv4.bias"] = torch.zeros(20)
    state["module.edge.conv5.weight"] = torch.zeros(2, 6, 1, 1)
    state["module.edge.conv5.bias"] = torch.zeros(2)
    parser = parse_utils.SCHP(_save_state(tmp_path / "schp-lip.pth", state))
    assert torch.equal(parser.network.fushion[3].weight, state["module.fushion.3.weight"])


def test_weights_are_loaded_not_initialised(lip_parser, tiny_dir):
    state = torch.load(tiny_dir / "schp-lip.pth", weights_only=True)["state_dict"]
    loaded = lip_parser.network.state_dict()
    for key, value in state.items():
        assert torch.equal(loaded[key[len("module."):]], value), key
    assert not lip_parser.network.training


# ---------------------------------------------------------------- geometry and normalisation


def _numpy_forward_matrix(w: int, h: int, side: int) -> np.ndarray:
    """The reference's similarity: s = max(W-1, H-1), k = (S-1)/s, box centre -> input centre."""
    s = max(w - 1, h - 1)
    k = (side - 1) / s
    cx, cy = (w - 1) / 2, (h - 1) / 2
    return np.array([[k, 0, (side - 1) / 2 - k * cx], [0, k, (side - 1) / 2 - k * cy]])


@pytest.mark.parametrize("w,h,side", [(768, 1024, 473), (768, 1024, 512), (57, 41, 473), (30, 30, 512)])
def test_affine_matrices_match_closed_form(w, h, side):
    center, scale = person_center_scale(w, h)
    forward = affine_matrix(center, scale, (side, side))
    inverse = affine_matrix(center, scale, (side, side), inverse=True)
    expected = _numpy_forward_matrix(w, h, side)
    np.testing.assert_allclose(forward, expected, rtol=1e-6, atol=1e-4)
    square = np.vstack([expected, [0, 0, 1]])
    np.testing.assert_allclose(inverse, np.linalg.inv(square)[:2], rtol=1e-6, atol=1e-4)


def test_affine_matrices_match_reference_vectors():
    center, scale = person_center_scale(768, 1024)
    np.testing.assert_allclose(
        affine_matrix(center, scale, (473, 473)), [[0.46138807, 0, 59.05767351], [0, 0.46138807, 0]], atol=1e-7
    )
    np.testing.assert_allclose(
        affine_matrix(center, scale, (473, 473), inverse=True), [[2.16737288, 0, -128], [0, 2.16737288, 0]], atol=1e-7
    )
    np.testing.assert_allclose(
        affine_matrix(center, scale, (512, 512)), [[0.49951124, 0, 63.93743891], [0, 0.49951124, 0]], atol=1e-7
    )
    np.testing.assert_allclose(
        affine_matrix(center, scale, (512, 512), inverse=True), [[2.00195695, 0, -128], [0, 2.00195695, 0]], atol=1e-7
    )


def _bilinear(image: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Bilinear sampling with a zero border (float positions, float result)."""
    h, w = image.shape[:2]
    padded = np.zeros((h + 2, w + 2) + image.shape[2:], dtype=np.float64)
    padded[1:-1, 1:-1] = image
    x0, y0 = np.floor(xs), np.floor(ys)
    fx, fy = xs - x0, ys - y0
    if image.ndim == 3:
        fx, fy = fx[..., None], fy[..., None]
    xi = np.clip(x0.astype(int) + 1, 0, w)
    yi = np.clip(y0.astype(int) + 1, 0, h)
    xi1, yi1 = np.clip(xi + 1, 0, w + 1), np.clip(yi + 1, 0, h + 1)
    outside = (xs < -1) | (xs > w) | (ys < -1) | (ys > h)
    value = (
        padded[yi, xi] * (1 - fx) * (1 - fy) + padded[yi, xi1] * fx * (1 - fy)
        + padded[yi1, xi] * (1 - fx) * fy + padded[yi1, xi1] * fx * fy
    )
    value[outside] = 0
    return value


@pytest.mark.parametrize("size", [(57, 41), (40, 64)])
def test_preprocess_matches_numpy(lip_parser, size):
    w, h = size
    image = _smooth_image(w, h)
    tensor, inverse, got_size = lip_parser.preprocess(image)
    side = 473
    assert tensor.shape == (3, side, side) and tensor.dtype == torch.float32
    assert got_size == (w, h)

    forward = np.vstack([_numpy_forward_matrix(w, h, side), [0, 0, 1]])
    back = np.linalg.inv(forward)
    v, u = np.mgrid[0:side, 0:side].astype(np.float64)
    xs = back[0, 0] * u + back[0, 2]
    ys = back[1, 1] * v + back[1, 2]
    warped = _bilinear(np.asarray(image, dtype=np.float64), xs, ys)
    # Reference normalisation in ARRAY order: channel 0 (R here) gets the blue statistics.
    mean = np.array([0.406, 0.456, 0.485])
    std = np.array([0.225, 0.224, 0.229])
    expected = ((warped / 255.0 - mean) / std).transpose(2, 0, 1)
    # OpenCV samples at 1/32 px and rounds to uint8: allow ~1.5 grey levels.
    inside = (xs > 0.5) & (xs < w - 1.5) & (ys > 0.5) & (ys < h - 1.5)
    diff = np.abs(tensor.numpy() - expected)[:, inside]
    assert diff.max() < 1.6 / 255 / 0.224
    # Black bars beyond the image are exactly -mean/std per channel.
    far = (xs < -1.5) | (xs > w + 0.5) | (ys < -1.5) | (ys > h + 0.5)
    assert far.any()
    for c in range(3):
        np.testing.assert_allclose(tensor[c].numpy()[far], -mean[c] / std[c], rtol=1e-6)


def test_channel_order_quirk_red_uses_blue_statistics(lip_parser):
    red = Image.new("RGB", (20, 20), (255, 0, 0))
    tensor, _, _ = lip_parser.preprocess(red)
    centre = tensor[:, 236, 236].numpy()
    np.testing.assert_allclose(centre, [(1 - 0.406) / 0.225, -0.456 / 0.224, -0.485 / 0.229], rtol=1e-6)
    # A PIL image and its RGB array are the same input (no swap anywhere).
    same, _, _ = lip_parser.preprocess(np.asarray(red))
    assert torch.equal(same, tensor)


def test_inverse_warp_of_linear_logits_matches_numpy():
    w, h, side = 61, 83, 473
    center, scale = person_center_scale(w, h)
    inverse = affine_matrix(center, scale, (side, side), inverse=True)
    v, u = np.mgrid[0:side, 0:side].astype(np.float64)
    slopes = [(0.5, 0.0, 1.0), (0.0, -0.25, 3.0), (0.1, 0.2, -2.0)]
    logits = np.stack([a * u + b * v + c for a, b, c in slopes]).astype(np.float32)
    warped = warp_logits_to_image(logits, inverse, w, h)
    assert warped.shape == (3, h, w) and warped.dtype == np.float32
    forward = _numpy_forward_matrix(w, h, side)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    uu = forward[0, 0] * x + forward[0, 2]
    vv = forward[1, 1] * y + forward[1, 2]
    for channel, (a, b, c) in enumerate(slopes):
        expected = a * uu + b * vv + c
        # Sample positions are quantised to 1/32 px.
        np.testing.assert_allclose(warped[channel], expected, atol=(abs(a) + abs(b)) / 32 + 1e-3)


def test_postprocess_upsamples_warps_and_takes_argmax(lip_parser):
    w, h = 50, 70
    _, inverse, size = lip_parser.preprocess(_smooth_image(w, h))
    low = 119
    grid = torch.arange(low, dtype=torch.float32) * (472 / (low - 1))  # align_corners positions
    u = grid.view(1, low).expand(low, low)
    logits = torch.zeros(20, low, low)
    logits[7] = u  # wins right of the centre column
    logits[12] = 472 - u  # wins left of it
    labels = lip_parser.postprocess(logits, inverse, size)
    assert labels.shape == (h, w) and labels.dtype == np.uint8
    x = np.arange(w)
    cx = (w - 1) / 2
    assert (labels[:, x > cx + 1] == 7).all()
    assert (labels[:, x < cx - 1] == 12).all()
    # Ties resolve to the first channel.
    assert (lip_parser.postprocess(torch.zeros(20, low, low), inverse, size) == 0).all()


# ---------------------------------------------------------------- end-to-end label maps


def test_lip_label_map(lip_parser):
    image = _smooth_image(53, 77)
    result = lip_parser(image)
    assert isinstance(result, Image.Image)
    assert result.mode == "P" and result.size == (53, 77)
    labels = np.asarray(result)
    assert labels.dtype == np.uint8 and labels.max() < 20
    assert len(np.unique(labels)) > 1  # input-dependent, not a constant map
    assert result.getpalette()[:3 * 20] == label_palette(20)
    again = np.asarray(lip_parser(image))
    assert np.array_equal(labels, again)
    other = np.asarray(lip_parser(image.transpose(Image.Transpose.ROTATE_180)))
    assert not np.array_equal(labels, other)


def test_atr_label_map_and_batches(atr_parser):
    a, b = _smooth_image(64, 48), _smooth_image(31, 90)
    results = atr_parser([a, b])
    assert isinstance(results, list) and [r.size for r in results] == [(64, 48), (31, 90)]
    assert all(r.mode == "P" and np.asarray(r).max() < 18 for r in results)
    single = atr_parser([a])  # a list of one is still a list, as for every parser (parse_utils.base)
    assert isinstance(single, list) and [r.size for r in single] == [(64, 48)]
    assert isinstance(atr_parser(a), Image.Image)
    assert atr_parser.labels == ATR_LABELS and len(LIP_LABELS) == 20


def test_bad_images_are_rejected(lip_parser):
    with pytest.raises(TypeError, match="PIL image or an ndarray"):
        lip_parser("person.jpg")
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        lip_parser(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="at least one image"):
        lip_parser([])


def test_palette_is_voc():
    palette = label_palette(20)
    colours = [tuple(palette[i:i + 3]) for i in range(0, 60, 3)]
    assert colours[:8] == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128),
                           (128, 0, 128), (0, 128, 128), (128, 128, 128)]
    assert colours[8:10] == [(64, 0, 0), (192, 0, 0)]
    assert colours[16:] == [(0, 64, 0), (128, 64, 0), (0, 192, 0), (128, 192, 0)]


def test_logits_are_at_quarter_resolution(lip_parser, atr_parser):
    # Stem /4 with a floor-mode max-pool, layer4 dilated instead of strided.
    with torch.inference_mode():
        assert lip_parser.network(torch.zeros(1, 3, 473, 473)).shape == (1, 20, 119, 119)
        assert atr_parser.network(torch.zeros(2, 3, 512, 512)).shape == (2, 18, 128, 128)
    layer4 = lip_parser.network.layer4[0]
    assert layer4.conv2.stride == (1, 1) and layer4.conv2.dilation == (2, 2) and layer4.conv2.padding == (2, 2)


def test_forward_waits_for_the_float32_gpu_lock_and_keeps_tf32(lip_parser, monkeypatch):
    """The lock DWPose's torch modules hold while cuDNN's TF32 is off (parse_utils/base.py):
    SCHP launches no network work inside that window, and leaves the switch alone."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    image = _smooth_image(96, 128)
    expected = np.asarray(lip_parser(image))
    got, tf32 = runs_after_lock_is_released(FLOAT32_GPU_WORK, lip_parser.network, lambda: lip_parser(image))
    assert tf32 is True
    np.testing.assert_array_equal(np.asarray(got), expected)
