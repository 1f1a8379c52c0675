"""OpenCV's bilinear warpAffine for float32 planes, in torch, on the tensor's device.

SCHP's post-processing warps every class plane of the upsampled logits back to the photo
(`cv2.warpAffine`, INTER_LINEAR, constant border 0) and takes the argmax. On a GPU host that
work ran on the CPU after a transfer of all the logits; here it runs where the logits are and
only the final uint8 label map crosses to the host.

Label boundaries are decided by tiny logit differences, so this reproduces OpenCV's own float
arithmetic rather than a generic bilinear sampler (`grid_sample` differs by ~1e-4 and moves
boundary pixels). OpenCV >= 4.11 (checked bit for bit against opencv-python-headless 5.0.0,
AVX2, 2026-12-01) samples float32 images as follows, for an output pixel (x, y):

- the 2x3 matrix is inverted in double precision (unless WARP_INVERSE_MAP) and rounded to
  float32: m0..m5;
- row term: r = fl(fl(y * m1) + m2) (two float32 roundings); source x = fma(m0, x, r) (one
  rounding), likewise for y with m3, m4, m5. Columns past the last full SIMD block
  (`width % vector_lanes`, 16 lanes on AVX2 builds) take a scalar path:
  fl(fma(x, m0, fl(y * m1)) + m2);
- ix = floor(sx), ax = sx - ix (exact); the four taps around (ix, iy) are read, a tap outside
  the image reads the border value 0 (for a 2x2 neighbourhood partly outside), and a pixel
  whose whole neighbourhood is outside (ix < -1, ix >= width, likewise y) is exactly 0;
- v0 = fma(ax, p01 - p00, p00), v1 = fma(ax, p11 - p10, p10), v = fma(ay, v1 - v0, v0).

OpenCV <= 4.10 used fixed-point coordinates quantised to 1/32 px and a weight table instead;
`opencv_float_kernels()` says which one the installed OpenCV has, and the parser only uses
this module where it is the float one.

A fused multiply-add is emulated in float64: the product of two float32 values is exact there
and the sum is rounded twice (to float64, then float32), which differs from one rounding only
when the float64 sum lands exactly on a float32 half-way point. Every op is a separate eager
kernel on purpose: a fusing compiler could contract a*b+c and change the last bit.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "opencv_float_kernels",
    "opencv_inverse_affine",
    "warp_affine_linear",
    "warp_argmax_labels",
]

# Columns per SIMD block of OpenCV's warp kernels: 2 registers of float32 lanes (AVX2: 2x8).
OPENCV_VECTOR_LANES = 16


def opencv_float_kernels() -> bool:
    """Whether the installed OpenCV warps float32 images with float coordinates (>= 4.11)."""
    major, minor = (int(part) for part in cv2.__version__.split(".")[:2])
    return (major, minor) >= (4, 11)


def opencv_inverse_affine(matrix: np.ndarray | Sequence[Sequence[float]]) -> tuple[float, ...]:
    """The destination -> source map that cv2.warpAffine derives from a source -> destination
    matrix, with OpenCV's order of double-precision operations (a singular matrix gives 0s)."""
    m = [float(v) for v in np.asarray(matrix, dtype=np.float64).reshape(6)]
    det = m[0] * m[4] - m[1] * m[3]
    det = 1.0 / det if det != 0 else 0.0
    a00, a11 = m[4] * det, m[0] * det
    a01, a10 = m[1] * -det, m[3] * -det
    b0 = -a00 * m[2] - a01 * m[5]
    b1 = -a10 * m[2] - a11 * m[5]
    return (a00, a01, b0, a10, a11, b1)


def _fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """float32 a*b + c with (nearly always) one rounding, via float64."""
    return torch.addcmul(c.double(), a.double(), b.double()).float()


def _source_coords(
    coeffs: tuple[float, float, float], width: int, height: int, lanes: int, device: torch.device
) -> torch.Tensor:
    """HxW float32 source coordinate along one axis for destination pixels (x, y)."""
    m0, m1, m2 = (torch.tensor(v, dtype=torch.float32, device=device) for v in coeffs)
    ys = torch.arange(height, dtype=torch.float32, device=device)[:, None]
    xs = torch.arange(width, dtype=torch.float32, device=device)[None, :]
    row_mul = ys * m1  # float32, rounded
    coords = _fma(m0, xs, row_mul + m2)  # SIMD blocks
    tail = width - width % lanes if lanes > 0 else width
    if tail < width:
        coords[:, tail:] = _fma(xs[:, tail:], m0, row_mul) + m2  # scalar remainder
    return coords


def warp_affine_linear(
    planes: torch.Tensor,
    matrix: np.ndarray | Sequence[Sequence[float]],
    size: tuple[int, int],
    *,
    inverse_map: bool = False,
    vector_lanes: int = OPENCV_VECTOR_LANES,
    chunk_elements: int = 1 << 22,
) -> torch.Tensor:
    """cv2.warpAffine(plane, matrix, size, INTER_LINEAR, BORDER_CONSTANT, 0) for each plane.

    planes: NxHxW (or HxW) float32 on any device; matrix: 2x3, source -> destination unless
    inverse_map; size: (width, height) of the output. Returns N x height x width float32.
    Planes are processed in groups of about `chunk_elements` output values, which bounds the
    float64 temporaries (about 100 MB at the default).
    """
    if planes.dtype != torch.float32:
        raise TypeError(f"warp_affine_linear expects float32 planes, got {planes.dtype}")
    squeeze = planes.dim() == 2
    if squeeze:
        planes = planes[None]
    if planes.dim() != 3:
        raise ValueError(f"warp_affine_linear expects NxHxW or HxW planes, got {tuple(planes.shape)}")
    width, height = int(size[0]), int(size[1])
    if inverse_map:
        m = tuple(float(v) for v in np.asarray(matrix, dtype=np.float64).reshape(6))
    else:
        m = opencv_inverse_affine(matrix)
    m32 = tuple(float(v) for v in np.asarray(m, dtype=np.float32))
    device = planes.device
    sx = _source_coords(m32[0:3], width, height, vector_lanes, device).view(-1)
    sy = _source_coords(m32[3:6], width, height, vector_lanes, device).view(-1)
    fx, fy = torch.floor(sx), torch.floor(sy)
    ax, ay = sx - fx, sy - fy  # exact in float32
    ix, iy = fx.long(), fy.long()

    count, src_h, src_w = planes.shape
    outside = (ix < -1) | (ix >= src_w) | (iy < -1) | (iy >= src_h)
    # One zero pixel around the source stands for the border value of partly outside taps.
    stride = src_w + 2
    top_left = (iy.clamp(-1, src_h - 1) + 1) * stride + (ix.clamp(-1, src_w - 1) + 1)
    ax64, ay64 = ax.double(), ay.double()
    out = torch.empty((count, height * width), dtype=torch.float32, device=device)
    step = max(1, chunk_elements // max(1, height * width))
    for start in range(0, count, step):
        flat = F.pad(planes[start:start + step], (1, 1, 1, 1)).reshape(min(step, count - start), -1)
        p00, p01 = flat.index_select(1, top_left), flat.index_select(1, top_left + 1)
        v0 = _fma(ax64, p01 - p00, p00)
        p10, p11 = flat.index_select(1, top_left + stride), flat.index_select(1, top_left + stride + 1)
        v1 = _fma(ax64, p11 - p10, p10)
        del p00, p01, p10, p11
        out[start:start + step] = _fma(ay64, v1 - v0, v0)
    out = out.masked_fill_(outside, 0.0).view(count, height, width)
    return out[0] if squeeze else out


def warp_argmax_labels(
    logits: torch.Tensor, matrix: np.ndarray, size: tuple[int, int]
) -> np.ndarray:
    """NxSxS float32 logits -> HxW uint8 argmax of their warps, computed on their device.

    Ties go to the lowest class, as numpy's argmax. Only the label map leaves the device.
    """
    warped = warp_affine_linear(logits, matrix, size)
    return warped.argmax(dim=0).to(torch.uint8).cpu().numpy()
