"""Cloth-agnostic repaint masks from DensePose and SCHP (LIP + ATR) label maps.

Follows FastFit's masker step for step (OpenCV dilations, blurs, thresholds, convex hulls), so
that the diffusion model sees the masks it was trained with. Two deliberate differences:
- after all steps, the pixels SCHP-LIP labels Face are removed from the mask, so the face is
  always kept (the reference's convex hull and final dilation can swallow or nibble it);
- label maps whose sides are not multiples of 4 are accepted (the reference fails on them):
  the quarter-resolution round trip keeps pixels (4i, 4j) and crops back to the input size,
  which is exactly the reference's computation when the sides are multiples of 4.
Randomness (only the optional horizontal widening of the box mask) comes from an explicit
numpy Generator.

`grow_mask` is ours, not the reference's: a caller's `mask_grow` for garments that outgrow a
mask that follows the body (flared skirts, long coats), an elliptical dilation that keeps the face.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import cv2
import numpy as np
from PIL import Image

__all__ = [
    "ATR_MAPPING",
    "DEFAULT_HORIZON_DRAWS",
    "DENSE_INDEX_MAP",
    "LIP_MAPPING",
    "MASK_CLOTH_PARTS",
    "MASK_DENSE_PARTS",
    "MULTI_REF_CLOTH_PARTS",
    "PARTS",
    "PROTECT_BODY_PARTS",
    "PROTECT_CLOTH_PARTS",
    "PUBLIC_ACCESSORY_PARTS",
    "cloth_agnostic_mask",
    "grow_mask",
    "multi_ref_cloth_agnostic_mask",
]

DENSE_INDEX_MAP: dict[str, list[int]] = {
    "background": [0],
    "torso": [1, 2],
    "right hand": [3],
    "left hand": [4],
    "right foot": [5],
    "left foot": [6],
    "right thigh": [7, 9],
    "left thigh": [8, 10],
    "right leg": [11, 13],
    "left leg": [12, 14],
    "left big arm": [15, 17],
    "right big arm": [16, 18],
    "left forearm": [19, 21],
    "right forearm": [20, 22],
    "face": [23, 24],
    "thighs": [7, 8, 9, 10],
    "legs": [11, 12, 13, 14],
    "hands": [3, 4],
    "feet": [5, 6],
    "big arms": [15, 16, 17, 18],
    "forearms": [19, 20, 21, 22],
}
LIP_MAPPING: dict[str, int] = {
    "Background": 0, "Hat": 1, "Hair": 2, "Glove": 3, "Sunglasses": 4, "Upper-clothes": 5,
    "Dress": 6, "Coat": 7, "Socks": 8, "Pants": 9, "Jumpsuits": 10, "Scarf": 11, "Skirt": 12,
    "Face": 13, "Left-arm": 14, "Right-arm": 15, "Left-leg": 16, "Right-leg": 17,
    "Left-shoe": 18, "Right-shoe": 19,
}
ATR_MAPPING: dict[str, int] = {
    "Background": 0, "Hat": 1, "Hair": 2, "Sunglasses": 3, "Upper-clothes": 4, "Skirt": 5,
    "Pants": 6, "Dress": 7, "Belt": 8, "Left-shoe": 9, "Right-shoe": 10, "Face": 11,
    "Left-leg": 12, "Right-leg": 13, "Left-arm": 14, "Right-arm": 15, "Bag": 16, "Scarf": 17,
}

PARTS = ("upper", "lower", "overall", "inner", "outer")
PROTECT_BODY_PARTS: dict[str, list[str]] = {
    "upper": ["Left-leg", "Right-leg"],
    "lower": ["Right-arm", "Left-arm", "Face"],
    "overall": [],
    "inner": ["Left-leg", "Right-leg"],
    "outer": ["Left-leg", "Right-leg"],
}
PROTECT_CLOTH_PARTS: dict[str, dict[str, list[str]]] = {
    "upper": {"ATR": ["Skirt", "Pants"], "LIP": ["Skirt", "Pants"]},
    "lower": {
        "ATR": ["Upper-clothes", "Left-shoe", "Right-shoe"],
        "LIP": ["Upper-clothes", "Coat", "Left-shoe", "Right-shoe"],
    },
    "overall": {"ATR": ["Left-shoe", "Right-shoe"], "LIP": ["Left-shoe", "Right-shoe"]},
    "inner": {
        "ATR": ["Dress", "Coat", "Skirt", "Pants"],
        "LIP": ["Dress", "Coat", "Skirt", "Pants", "Jumpsuits"],
    },
    "outer": {
        "ATR": ["Dress", "Pants", "Skirt"],
        "LIP": ["Upper-clothes", "Dress", "Pants", "Skirt", "Jumpsuits"],
    },
}
PUBLIC_ACCESSORY_PARTS: list[str] = ["Hat", "Glove", "Sunglasses", "Scarf", "Bag", "Socks"]
# Garments of each part. The reference computes this area but it never reaches the output;
# kept as a table for callers that want to know what a part means.
MASK_CLOTH_PARTS: dict[str, list[str]] = {
    "upper": ["Upper-clothes", "Coat", "Dress", "Jumpsuits"],
    "lower": ["Pants", "Skirt", "Dress", "Jumpsuits"],
    "overall": ["Upper-clothes", "Dress", "Pants", "Skirt", "Coat", "Jumpsuits"],
    "inner": ["Upper-clothes"],
    "outer": ["Coat"],
}
MASK_DENSE_PARTS: dict[str, list[str]] = {
    "upper": ["torso", "big arms", "forearms"],
    "lower": ["thighs", "legs"],
    "overall": ["torso", "thighs", "legs", "big arms", "forearms"],
    "inner": ["torso"],
    "outer": ["torso", "big arms", "forearms"],
}
MULTI_REF_CLOTH_PARTS: list[str] = [
    "Upper-clothes", "Dress", "Pants", "Skirt", "Coat", "Jumpsuits",
    "Left-shoe", "Right-shoe", "Bag", "Socks", "Belt",
]
_FEET = ["right foot", "left foot"]
_LIMBS = ["Left-arm", "Right-arm", "Left-leg", "Right-leg"]

# The reference draws the two widening factors from NumPy's legacy global generator. With
# rng=None we use the draws that generator gives right after np.random.seed(0), i.e.
# 0.2 * RandomState(0).random_sample(2): FastFit's behaviour under seed 0, without global state.
DEFAULT_HORIZON_DRAWS = (0.10976270078546496, 0.1430378732744839)


def _labels(parse: np.ndarray, names: Iterable[str], mapping: Mapping[str, int | list[int]]) -> np.ndarray:
    """0/1 uint8 mask of the named labels; names the parser does not have are skipped."""
    indices: list[int] = []
    for name in names:
        value = mapping.get(name)
        if value is None:
            continue
        indices.extend(value if isinstance(value, list) else [value])
    return np.isin(parse, indices).astype(np.uint8)


def _dilate(mask: np.ndarray, k: int, iterations: int = 1) -> np.ndarray:
    if k <= 1:  # a 1x1 dilation is the identity
        return mask
    return cv2.dilate(mask, np.ones((k, k), np.uint8), iterations=iterations)


def _quarter_dilate(mask: np.ndarray, k: int) -> np.ndarray:
    """Dilate twice at quarter resolution (nearest down and up), the reference's coarse growth."""
    height, width = mask.shape
    quarter = np.ascontiguousarray(mask[::4, ::4])
    quarter = _dilate(quarter, k, iterations=2)
    return np.repeat(np.repeat(quarter, 4, axis=0), 4, axis=1)[:height, :width]


def _blur_threshold(mask: np.ndarray, g: int, threshold: int) -> np.ndarray:
    blurred = cv2.GaussianBlur(mask * np.uint8(255), (g, g), 0)
    return (blurred >= threshold).astype(np.uint8)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    count, labels = cv2.connectedComponents(mask, connectivity=8)
    if count <= 2:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return (labels == int(np.argmax(sizes))).astype(np.uint8)


def _convex_hulls(mask: np.ndarray) -> np.ndarray:
    """Each outer component replaced by its filled convex hull (holes vanish)."""
    contours, _ = cv2.findContours(mask * np.uint8(255), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(mask)
    for contour in contours:
        hull_canvas = np.zeros_like(mask)
        cv2.fillPoly(hull_canvas, [cv2.convexHull(contour)], 1)
        filled |= hull_canvas
    return filled


def _bounding_box(
    mask: np.ndarray, protect: np.ndarray, k: int, widen: tuple[float, float] | None
) -> np.ndarray:
    """Box around the mask (optionally widened left/right by fractions of its width) minus protect."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return mask
    cols = np.flatnonzero(mask.any(axis=0))
    x, y = int(cols[0]), int(rows[0])
    w, h = int(cols[-1]) - x + 1, int(rows[-1]) - y + 1
    if widen is not None:
        left, right = int(widen[0] * w), int(widen[1] * w)
        # Reference quirk kept: when the left edge clips at 0 the full widening is still
        # added to the width, pushing the right edge further.
        new_x = max(0, x - left)
        w = min(mask.shape[1] - new_x, w + left + right)
        x = new_x
    box = np.zeros_like(mask)
    box[y:y + h, x:x + w] = 1
    return _dilate(box & (1 - protect), k)


def _sizes(height: int, width: int) -> tuple[int, int]:
    """Morphology kernel k and blur size g, both odd, from the longer side."""
    longest = max(height, width)
    k, g = longest // 500, longest // 50
    return k + (k % 2 == 0), g + (g % 2 == 0)


def _check_maps(densepose, lip, atr) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    maps = []
    for name, value in (("densepose", densepose), ("lip", lip), ("atr", atr)):
        array = np.asarray(value)
        if array.ndim != 2:
            raise ValueError(f"{name} must be a 2-D label map, got shape {array.shape}")
        if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"{name} must hold integer labels, got dtype {array.dtype}")
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError(f"{name} labels must lie in 0..255, got {array.min()}..{array.max()}")
        maps.append(np.ascontiguousarray(array, dtype=np.uint8))
    if not (maps[0].shape == maps[1].shape == maps[2].shape):
        raise ValueError(
            "densepose, lip and atr must have the same size, got "
            f"{maps[0].shape}, {maps[1].shape}, {maps[2].shape}"
        )
    if 0 in maps[0].shape:
        raise ValueError(f"label maps must not be empty, got shape {maps[0].shape}")
    return maps[0], maps[1], maps[2]


def _horizon_draws(rng: np.random.Generator | None) -> tuple[float, float]:
    if rng is None:
        return DEFAULT_HORIZON_DRAWS
    return float(rng.uniform(0.0, 0.2)), float(rng.uniform(0.0, 0.2))


def _to_image(mask: np.ndarray) -> Image.Image:
    return Image.fromarray(mask * np.uint8(255))


def multi_ref_cloth_agnostic_mask(
    densepose: np.ndarray,
    lip: np.ndarray,
    atr: np.ndarray,
    square_cloth_mask: bool = False,
    horizon_expand: bool = False,
    rng: np.random.Generator | None = None,
) -> Image.Image:
    """Mask of everything worn (all garments, shoes, bag) plus the body it covers, face kept.

    Returns an 'L' image, 255 = repaint. `rng` is used only when both square_cloth_mask and
    horizon_expand are set (two uniform draws in [0, 0.2)); rng=None uses
    DEFAULT_HORIZON_DRAWS, FastFit's draws after np.random.seed(0).
    """
    densepose, lip, atr = _check_maps(densepose, lip, atr)
    k, g = _sizes(*lip.shape)
    face = _labels(lip, ["Face"], LIP_MAPPING)

    cloth = _labels(lip, MULTI_REF_CLOTH_PARTS, LIP_MAPPING) | _labels(atr, MULTI_REF_CLOTH_PARTS, ATR_MAPPING)
    cloth = _dilate(cloth, k)
    dense = _labels(densepose, MASK_DENSE_PARTS["overall"] + _FEET, DENSE_INDEX_MAP)
    dense = _quarter_dilate(dense, k)

    mask = _dilate((cloth | dense) & (1 - face), k)
    mask = _blur_threshold(mask, g, 100)
    mask = _convex_hulls(mask)
    mask = _blur_threshold(mask, g, 25)
    if square_cloth_mask:
        widen = _horizon_draws(rng) if horizon_expand else None
        mask = _bounding_box(mask, face, k, widen) & (1 - face)
    mask = _dilate(mask, k, iterations=2)
    return _to_image(mask & (1 - face))


def cloth_agnostic_mask(
    densepose: np.ndarray,
    lip: np.ndarray,
    atr: np.ndarray,
    part: str = "overall",
    square_cloth_mask: bool = False,
) -> Image.Image:
    """Mask for trying on one garment category; 'full' and 'dresses' mean 'overall'.

    Everything that is not background and not protected (hair, accessories, the other
    category's clothes and limbs, hands/feet, face) is repainted, plus the part's DensePose body
    area; the largest component is kept and made convex. Face removed at the end, as above.
    """
    if part in ("full", "dresses"):
        part = "overall"
    if part not in PARTS:
        raise ValueError(f"part must be one of {list(PARTS)} (or 'full', 'dresses'), got {part!r}")
    densepose, lip, atr = _check_maps(densepose, lip, atr)
    k, g = _sizes(*lip.shape)

    hands_feet = _dilate(_labels(densepose, ["hands", "feet"], DENSE_INDEX_MAP), k)
    limbs = _labels(atr, _LIMBS, ATR_MAPPING) | _labels(lip, _LIMBS, LIP_MAPPING)
    face = _labels(lip, ["Face"], LIP_MAPPING)
    strong = (hands_feet & limbs) | face

    def both(names: Sequence[str]) -> np.ndarray:
        return _labels(lip, names, LIP_MAPPING) | _labels(atr, names, ATR_MAPPING)

    weak = (
        both(PROTECT_BODY_PARTS[part])
        | _labels(lip, PROTECT_CLOTH_PARTS[part]["LIP"], LIP_MAPPING)
        | _labels(atr, PROTECT_CLOTH_PARTS[part]["ATR"], ATR_MAPPING)
        | both(["Hair"])
        | strong
        | both(PUBLIC_ACCESSORY_PARTS)
    )
    background = _labels(lip, ["Background"], LIP_MAPPING) & _labels(atr, ["Background"], ATR_MAPPING)
    dense = _quarter_dilate(_labels(densepose, MASK_DENSE_PARTS[part] + _FEET, DENSE_INDEX_MAP), k)

    mask = ((1 - weak) & (1 - background)) | dense
    mask = _blur_threshold(mask, g, 100)
    mask = _largest_component(mask)
    mask = _convex_hulls(mask) & (1 - weak)
    mask = _blur_threshold(mask, g, 25)
    if square_cloth_mask:
        mask = _bounding_box(mask, weak & (1 - mask), k, None) & (1 - face)
    mask = _dilate(mask, k, iterations=2)
    return _to_image(mask & (1 - face))


def grow_mask(mask: Image.Image, pixels: int, lip: np.ndarray) -> Image.Image:
    """`mask` grown by `pixels` in every direction (OpenCV dilation with an elliptical kernel of
    radius `pixels`), never into the pixels SCHP-LIP labels Face; 0 returns it unchanged."""
    if pixels <= 0:
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pixels + 1, 2 * pixels + 1))
    grown = cv2.dilate((np.asarray(mask.convert("L")) >= 128).astype(np.uint8), kernel)
    face = _labels(np.asarray(lip), ["Face"], LIP_MAPPING)
    return _to_image(grown & (1 - face))
