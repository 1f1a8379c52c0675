"""SCHP post-processing on the logits' device: torch warp vs cv2.warpAffine, labels vs the cv2 path.

The torch warp reproduces OpenCV's float32 arithmetic, so on an x86 CPU with FMA (where the
installed OpenCV runs its AVX2 kernels) the warped logits must be bit-identical; elsewhere they
must agree to 1e-5 relative. Label maps must be identical in both cases, including logits built
so that classes nearly tie, where any arithmetic difference moves labels.
"""
from __future__ import annotations

import platform

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import parse_utils
from parse_utils.schp import parser as parser_module
from parse_utils.schp.device_warp import (
    opencv_float_kernels,
    opencv_inverse_affine,
    warp_affine_linear,
    warp_argmax_labels,
)
from parse_utils.schp.synthetic import write_schp_checkpoint
from parse_utils.schp.transforms import affine_matrix, person_center_scale, warp_logits_to_image

CV_CPU_FMA3 = 12  # OpenCV's CPU feature id (cv2 does not export the constant)
BIT_EXACT = platform.machine().lower() in ("x86_64", "amd64") and cv2.checkHardwareSupport(CV_CPU_FMA3)

pytestmark = pytest.mark.skipif(
    not opencv_float_kernels(), reason="the torch warp reproduces OpenCV >= 4.11 arithmetic"
)


def _schp_inverse(width: int, height: int, side: int) -> np.ndarray:
    center, scale = person_center_scale(width, height, 1.0)
    return affine_matrix(center, scale, (side, side), inverse=True)


def _logits(channels: int, side: int, seed: int, near_ties: bool = False) -> np.ndarray:
    """Smooth class fields plus noise, like upsampled SCHP logits; with near_ties every class is
    one shared field plus a 1e-5 perturbation, so argmax hinges on the last bits."""
    rng = np.random.default_rng(seed)
    low = rng.standard_normal((channels, side // 8 + 2, side // 8 + 2)).astype(np.float32) * 6
    smooth = torch.nn.functional.interpolate(
        torch.from_numpy(low)[None], size=(side, side), mode="bilinear", align_corners=True
    )[0].numpy()
    if near_ties:
        smooth = smooth[:1] + rng.standard_normal((channels, side, side)).astype(np.float32) * 1e-5
    return (smooth + rng.standard_normal(smooth.shape).astype(np.float32) * 0.05).astype(np.float32)


def _assert_same_warp(ours: np.ndarray, reference: np.ndarray) -> None:
    assert ours.shape == reference.shape and ours.dtype == np.float32
    if BIT_EXACT:
        assert np.array_equal(ours, reference), f"max abs diff {np.abs(ours - reference).max()}"
    else:
        np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)


# (image width, image height, network side, channels): portrait and landscape photos at the
# test and production working sizes, scale-down (small photos) and scale-up (large ones).
SCHP_CASES = [
    (192, 256, 473, 20),
    (256, 192, 512, 18),
    (768, 1024, 473, 3),
    (1024, 768, 512, 3),
    (61, 83, 473, 20),
    (1200, 1600, 512, 2),
]


@pytest.mark.parametrize("width,height,side,channels", SCHP_CASES)
def test_warp_matches_cv2_on_schp_matrices(width, height, side, channels):
    logits = _logits(channels, side, seed=width + height)
    inverse = _schp_inverse(width, height, side)
    reference = warp_logits_to_image(logits, inverse, width, height)
    ours = warp_affine_linear(torch.from_numpy(logits), inverse, (width, height)).numpy()
    _assert_same_warp(ours, reference)
    assert np.array_equal(ours.argmax(0), reference.argmax(0))


@pytest.mark.parametrize("width,height,side", [(192, 256, 473), (256, 192, 512), (333, 517, 473)])
def test_near_tie_labels_match_cv2(width, height, side):
    logits = _logits(20, side, seed=7, near_ties=True)
    inverse = _schp_inverse(width, height, side)
    reference = np.argmax(warp_logits_to_image(logits, inverse, width, height), axis=0).astype(np.uint8)
    ours = warp_argmax_labels(torch.from_numpy(logits), inverse, (width, height))
    assert ours.dtype == np.uint8 and ours.shape == (height, width)
    assert len(np.unique(reference)) == 20  # the ties are real: every class wins somewhere
    assert np.array_equal(ours, reference)


def test_warp_matches_cv2_on_general_affine_maps_and_borders():
    """Rotation, shear, translation pushing the source partly out of view, odd widths (the
    columns past OpenCV's last SIMD block take its scalar path)."""
    rng = np.random.default_rng(3)
    src = rng.standard_normal((2, 97, 131)).astype(np.float32) * 3
    matrices = [
        cv2.getRotationMatrix2D((60.0, 40.0), 23.0, 1.3),
        np.array([[0.8, 0.3, -20.5], [-0.2, 1.1, 33.25]]),
        np.array([[2.0, 0.0, -0.5], [0.0, 2.0, -0.5]]),  # half-pixel taps at the border
        np.array([[1.0, 0.0, 50.0], [0.0, 1.0, -60.0]]),  # mostly outside
    ]
    for matrix in matrices:
        outside = 0
        for width, height in [(200, 150), (173, 211)]:
            reference = np.stack([
                cv2.warpAffine(p, matrix, (width, height), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                for p in src
            ])
            ours = warp_affine_linear(torch.from_numpy(src), matrix, (width, height)).numpy()
            _assert_same_warp(ours, reference)
            outside += int((reference == 0).sum())
        assert outside > 0  # the border is exercised: some outputs have all taps outside


def test_chunking_and_inverse_map_give_the_same_result():
    logits = torch.from_numpy(_logits(5, 64, seed=1))
    matrix = _schp_inverse(40, 50, 64)
    whole = warp_affine_linear(logits, matrix, (40, 50))
    assert torch.equal(warp_affine_linear(logits, matrix, (40, 50), chunk_elements=1), whole)
    direct = warp_affine_linear(logits, np.reshape(opencv_inverse_affine(matrix), (2, 3)), (40, 50),
                                inverse_map=True)
    assert torch.equal(direct, whole)
    assert torch.equal(warp_affine_linear(logits[2], matrix, (40, 50)), whole[2])
    np.testing.assert_allclose(
        np.reshape(opencv_inverse_affine(matrix), (2, 3)), cv2.invertAffineTransform(matrix), rtol=1e-12
    )


def test_bad_inputs_are_rejected():
    with pytest.raises(TypeError, match="float32"):
        warp_affine_linear(torch.zeros(2, 4, 4, dtype=torch.float64), np.eye(2, 3), (4, 4))
    with pytest.raises(ValueError, match="NxHxW"):
        warp_affine_linear(torch.zeros(1, 2, 4, 4), np.eye(2, 3), (4, 4))


# ---------------------------------------------------------------- end to end through SCHP


@pytest.fixture(scope="module")
def lip_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("SCHP") / "schp-lip.pth"
    write_schp_checkpoint(path, tiny=True, seed=0)
    return path


def _photo(width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    rgb = np.stack([40 + 180 * x / width, 30 + 200 * y / height, 120 + 60 * np.sin(x / 7.0 + y / 11.0)], -1)
    return Image.fromarray(np.round(rgb).astype(np.uint8), "RGB")


def test_schp_device_postprocess_equals_cv2_postprocess(lip_checkpoint, monkeypatch):
    schp = parse_utils.SCHP(lip_checkpoint, device="cpu")
    images = [_photo(192, 256), _photo(256, 192)]
    # Default on the CPU: the OpenCV path, the torch warp is not called.
    calls = []
    monkeypatch.setattr(parser_module, "warp_argmax_labels",
                        lambda *a: calls.append(1) or warp_argmax_labels(*a))
    with_cv2 = schp(images)
    assert calls == []
    schp.device_postprocess = True
    on_device = schp(images)
    assert len(calls) == 2
    for a, b in zip(with_cv2, on_device):
        assert a.mode == b.mode == "P" and a.size == b.size
        assert a.getpalette() == b.getpalette()
        labels = np.asarray(a)
        assert len(np.unique(labels)) > 1
        assert np.array_equal(labels, np.asarray(b))
