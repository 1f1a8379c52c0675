"""Cloth-agnostic masks on hand-built label maps: geometry, face rule, sizes, randomness."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

import parse_utils
from parse_utils import automasker
from parse_utils.automasker import (
    ATR_MAPPING,
    DEFAULT_HORIZON_DRAWS,
    LIP_MAPPING,
    cloth_agnostic_mask,
    multi_ref_cloth_agnostic_mask,
)

H, W = 1024, 768  # product size: kernel k = 3, blur g = 21


def _maps(h: int = H, w: int = W):
    return (np.zeros((h, w), np.uint8) for _ in range(3))


def _array(mask: Image.Image) -> np.ndarray:
    assert isinstance(mask, Image.Image) and mask.mode == "L"
    values = np.asarray(mask)
    assert set(np.unique(values)) <= {0, 255}
    return values


def _edge_growth(edge_last: int, thresholds=(100, 25)) -> int:
    """Where a 0/1 step ending at `edge_last` ends after each blur+threshold (1-D Gaussian, float)."""
    kernel = cv2.getGaussianKernel(21, 0).ravel()  # sigma 3.5, as OpenCV derives it
    x = np.arange(1200)
    for threshold in thresholds:
        values = np.convolve((x <= edge_last).astype(float), kernel, mode="same") * 255
        edge_last = int(np.flatnonzero(values >= threshold)[-1])
    return edge_last


def test_public_names_are_exported():
    assert parse_utils.multi_ref_cloth_agnostic_mask is multi_ref_cloth_agnostic_mask
    assert parse_utils.cloth_agnostic_mask is cloth_agnostic_mask
    assert LIP_MAPPING["Face"] == 13 and ATR_MAPPING["Face"] == 11
    assert len(LIP_MAPPING) == 20 and len(ATR_MAPPING) == 18


def test_rectangle_grows_as_the_blur_and_dilation_steps_predict():
    densepose, lip, atr = _maps()
    lip[300:700, 200:500] = LIP_MAPPING["Upper-clothes"]
    mask = _array(multi_ref_cloth_agnostic_mask(densepose, lip, atr))
    assert mask.shape == (H, W)
    # Two 3x3 dilations (cloth, then mask) move the edge by 2, the blurs by what the Gaussian
    # profile says, the final double dilation by 2 more. OpenCV's fixed-point blur may round
    # one pixel either way at a threshold.
    grow = _edge_growth(499 + 2) - (499 + 2)
    cols = np.flatnonzero(mask[500])
    rows = np.flatnonzero(mask[:, 350])
    assert abs(cols[-1] - (499 + 2 + grow + 2)) <= 1
    assert abs(cols[0] - (200 - 2 - grow - 2)) <= 1
    assert abs(rows[0] - (300 - 2 - grow - 2)) <= 1
    assert abs(rows[-1] - (699 + 2 + grow + 2)) <= 1
    assert mask[300:700, 200:500].all()
    # ATR garments count too (ATR 4 = Upper-clothes); ATR's Face is not a protected label.
    densepose, lip2, atr2 = _maps()
    atr2[300:700, 200:500] = ATR_MAPPING["Upper-clothes"]
    assert np.array_equal(_array(multi_ref_cloth_agnostic_mask(densepose, lip2, atr2)), mask)


def test_face_is_always_kept_even_inside_the_convex_hull():
    densepose, lip, atr = _maps()
    cloth = LIP_MAPPING["Upper-clothes"]
    lip[100:700, 200:260] = cloth  # a U of cloth around the face
    lip[100:700, 500:560] = cloth
    lip[640:700, 200:560] = cloth
    lip[150:350, 330:430] = LIP_MAPPING["Face"]
    mask = _array(multi_ref_cloth_agnostic_mask(densepose, lip, atr))
    face = lip == LIP_MAPPING["Face"]
    assert not mask[face].any()
    # The hull did fill the pocket around the face: only the face itself was given back.
    assert mask[400:600, 300:460].all()
    assert mask[140:150, 330:430].all() and mask[150:350, 320:330].all()
    # Same rule with the square option and in the per-part variant.
    square = _array(multi_ref_cloth_agnostic_mask(densepose, lip, atr, square_cloth_mask=True))
    assert not square[face].any() and square[120:640, 270:490][~face[120:640, 270:490]].all()
    part = _array(cloth_agnostic_mask(densepose, lip, atr, part="upper"))
    assert not part[face].any()


def test_densepose_is_sampled_at_quarter_resolution():
    densepose, lip, atr = _maps()
    densepose[400:403, 300:303] = 1  # torso, contains the sampled pixel (400, 300)
    hit = _array(multi_ref_cloth_agnostic_mask(densepose, lip, atr))
    assert hit[400, 300] == 255
    densepose[:] = 0
    densepose[401:404, 301:304] = 1  # misses every (4i, 4j) pixel
    assert not _array(multi_ref_cloth_agnostic_mask(densepose, lip, atr)).any()
    # Hands (3, 4) and the DensePose head (23, 24) are not masked; feet (5, 6) are.
    for label, masked in ((3, False), (24, False), (5, True), (22, True)):
        densepose[:] = 0
        densepose[400:440, 300:340] = label
        assert _array(multi_ref_cloth_agnostic_mask(densepose, lip, atr)).any() == masked, label


@pytest.mark.parametrize("shape", [(64, 48), (1024, 768)])
def test_quarter_round_trip_equals_opencv_nearest_resize(shape):
    rng = np.random.default_rng(0)
    mask = (rng.random(shape) < 0.02).astype(np.uint8)
    kernel = np.ones((3, 3), np.uint8)
    quarter = cv2.resize(mask, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_NEAREST)
    quarter = cv2.dilate(quarter, kernel, iterations=2)
    expected = cv2.resize(quarter, None, fx=4, fy=4, interpolation=cv2.INTER_NEAREST)
    assert np.array_equal(automasker._quarter_dilate(mask, 3), expected)


@pytest.mark.parametrize("shape", [(1023, 767), (101, 77), (30, 22)])
def test_sizes_not_multiple_of_four(shape):
    h, w = shape
    densepose, lip, atr = _maps(h, w)
    densepose[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 1
    lip[h // 3: h // 2, w // 3: 2 * w // 3] = LIP_MAPPING["Pants"]
    for function in (multi_ref_cloth_agnostic_mask, cloth_agnostic_mask):
        image = function(densepose, lip, atr)
        mask = _array(image)
        assert image.size == (w, h)
        assert mask[h // 2 - 2: h // 2 + 2, w // 2 - 2: w // 2 + 2].all()
        assert not mask[:, 0].any() and not mask[0].any()


@pytest.mark.parametrize("square", [False, True])
@pytest.mark.parametrize("horizon", [False, True])
def test_empty_parses_give_an_empty_mask(square, horizon):
    densepose, lip, atr = _maps(256, 192)
    mask = _array(multi_ref_cloth_agnostic_mask(densepose, lip, atr, square, horizon, rng=np.random.default_rng(0)))
    assert mask.shape == (256, 192) and not mask.any()
    for part in ("upper", "lower", "overall", "inner", "outer", "full", "dresses"):
        assert not _array(cloth_agnostic_mask(densepose, lip, atr, part=part, square_cloth_mask=square)).any()


def test_default_horizon_draws_are_fastfit_under_seed_zero():
    legacy = np.random.RandomState(0)
    assert DEFAULT_HORIZON_DRAWS == (legacy.uniform(0.0, 0.2), legacy.uniform(0.0, 0.2))


def _box_columns(mask: np.ndarray) -> tuple[int, int]:
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(cols[-1])


def test_square_mask_and_horizontal_widening():
    densepose, lip, atr = _maps()
    lip[300:700, 250:450] = LIP_MAPPING["Dress"]
    lip[500:520, 440:520] = LIP_MAPPING["Left-shoe"]  # makes the hull non-rectangular
    plain = _array(multi_ref_cloth_agnostic_mask(densepose, lip, atr, square_cloth_mask=True))
    left, right = _box_columns(plain)
    rows = np.flatnonzero(plain.any(axis=1))
    assert plain[rows[0]:rows[-1] + 1, left:right + 1].all()  # a filled rectangle
    # Box width before its own dilation (1 px) and the final one (2 px) on each side.
    width = right - left + 1 - 6

    def widened(rng):
        return _box_columns(_array(multi_ref_cloth_agnostic_mask(
            densepose, lip, atr, square_cloth_mask=True, horizon_expand=True, rng=rng)))

    u1, u2 = DEFAULT_HORIZON_DRAWS
    assert widened(None) == (left - int(u1 * width), right + int(u2 * width))
    draws = np.random.default_rng(7).uniform(0.0, 0.2, 2)
    assert widened(np.random.default_rng(7)) == (left - int(draws[0] * width), right + int(draws[1] * width))
    assert widened(np.random.default_rng(7)) == widened(np.random.default_rng(7))
    # No square option: the generator is not touched and the result does not depend on it.
    rng = np.random.default_rng(3)
    before = rng.bit_generator.state
    a = _array(multi_ref_cloth_agnostic_mask(densepose, lip, atr, horizon_expand=True, rng=rng))
    assert rng.bit_generator.state == before
    assert np.array_equal(a, _array(multi_ref_cloth_agnostic_mask(densepose, lip, atr)))


def test_widening_clipped_at_the_left_edge_keeps_reference_quirk():
    densepose, lip, atr = _maps()
    lip[300:700, 0:300] = LIP_MAPPING["Coat"]
    plain = _array(multi_ref_cloth_agnostic_mask(densepose, lip, atr, square_cloth_mask=True))
    left, right = _box_columns(plain)
    assert left == 0
    width = right + 1 - 3  # box starts at column 0: only right-side dilations (1 + 2)
    wide = _array(multi_ref_cloth_agnostic_mask(densepose, lip, atr, square_cloth_mask=True, horizon_expand=True))
    u1, u2 = DEFAULT_HORIZON_DRAWS
    # The clipped left widening is still added on the right.
    assert _box_columns(wide) == (0, right + int(u1 * width) + int(u2 * width))


def test_part_masks_follow_the_protect_tables():
    densepose, lip, atr = _maps()
    lip[200:500, 250:520] = LIP_MAPPING["Upper-clothes"]
    lip[500:900, 280:490] = LIP_MAPPING["Pants"]
    atr[200:500, 250:520] = ATR_MAPPING["Upper-clothes"]
    atr[500:900, 280:490] = ATR_MAPPING["Pants"]
    lip[100:200, 330:440] = LIP_MAPPING["Hair"]
    upper = _array(cloth_agnostic_mask(densepose, lip, atr, part="upper"))
    lower = _array(cloth_agnostic_mask(densepose, lip, atr, part="lower"))
    overall = _array(cloth_agnostic_mask(densepose, lip, atr, part="overall"))
    assert upper[350, 385] and not upper[700, 385]
    assert lower[700, 385] and not lower[350, 385]
    assert overall[350, 385] and overall[700, 385]
    assert not overall[150, 385]  # hair is protected
    assert np.array_equal(_array(cloth_agnostic_mask(densepose, lip, atr, part="full")), overall)
    # The DensePose body of the part is masked even where the parsers see background.
    densepose[600:800, 200:300] = 7  # right thigh, touching the pants
    lower_dp = _array(cloth_agnostic_mask(densepose, lip, atr, part="lower"))
    upper_dp = _array(cloth_agnostic_mask(densepose, lip, atr, part="upper"))
    assert lower_dp[700, 220] and not lower[700, 220] and not upper_dp[700, 220]
    # Only the largest component survives: a detached patch of DensePose thigh is dropped.
    densepose[:] = 0
    densepose[600:700, 40:120] = 7
    assert not _array(cloth_agnostic_mask(densepose, lip, atr, part="lower"))[650, 80]


def test_small_images_use_unit_kernels():
    densepose, lip, atr = _maps(200, 150)
    lip[50:150, 40:110] = LIP_MAPPING["Skirt"]
    mask = _array(multi_ref_cloth_agnostic_mask(densepose, lip, atr))
    # k = 1 (no dilation), g = 5: the blurs move a straight edge by at most one pixel.
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    assert abs(rows[0] - 50) <= 1 and abs(rows[-1] - 149) <= 1
    assert abs(cols[0] - 40) <= 1 and abs(cols[-1] - 109) <= 1


def test_bad_inputs_are_rejected():
    densepose, lip, atr = _maps(64, 48)
    with pytest.raises(ValueError, match="same size"):
        multi_ref_cloth_agnostic_mask(densepose, lip[:60], atr)
    with pytest.raises(ValueError, match="2-D label map"):
        multi_ref_cloth_agnostic_mask(densepose[..., None], lip, atr)
    with pytest.raises(ValueError, match="integer labels"):
        multi_ref_cloth_agnostic_mask(densepose.astype(np.float32), lip, atr)
    with pytest.raises(ValueError, match="0..255"):
        multi_ref_cloth_agnostic_mask(densepose.astype(np.int32) - 1, lip, atr)
    with pytest.raises(ValueError, match="part must be one of"):
        cloth_agnostic_mask(densepose, lip, atr, part="hat")
    # int64 maps (e.g. from np.array of a PIL image after arithmetic) are accepted.
    assert not _array(multi_ref_cloth_agnostic_mask(densepose.astype(np.int64), lip, atr)).any()
