"""Shared fixtures: ONE tiny synthetic Models tree and one CPU engine for all end-to-end tests.

The weights are random, written in the published formats and read by the real loaders: the
images are meaningless, the plumbing is real.
"""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Small but valid: multiples of 64, 3:4 like the product size.
TEST_RESOLUTION = (192, 256)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    from fastfit_engine.synthetic import write_fastfit_model
    from parse_utils.synthetic import write_human_toolkit

    root = tmp_path_factory.mktemp("Models")
    write_fastfit_model(root / "FastFit-MR-1024", tiny=True, seed=0)
    write_human_toolkit(root / "Human-Toolkit", tiny=True, seed=0)
    return root


@pytest.fixture(scope="session")
def engine(models_dir):
    from fastfit_engine.engine import FastFitEngine

    return FastFitEngine(models_dir, device="cpu", resolution=TEST_RESOLUTION, download=False)


def make_person(w: int = 300, h: int = 400, seed: int = 0) -> Image.Image:
    """A smooth synthetic 'photo': a light background with a darker upright figure."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([200 + 30 * x / w, 190 + 30 * y / h, np.full_like(x, 180)], -1)
    body = ((x - w / 2) / (w * 0.18)) ** 2 + ((y - h * 0.55) / (h * 0.4)) ** 2 < 1
    head = ((x - w / 2) / (w * 0.08)) ** 2 + ((y - h * 0.13) / (h * 0.08)) ** 2 < 1
    img[body] = (60, 70, 140)
    img[head] = (220, 170, 140)
    img += rng.normal(0, 3, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def make_garment(colour=(200, 30, 40), w: int = 120, h: int = 160) -> Image.Image:
    img = Image.new("RGB", (w, h), (255, 255, 255))
    img.paste(Image.new("RGB", (w // 2, h // 2), colour), (w // 4, h // 4))
    return img


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def sample_files(tmp_path_factory) -> dict[str, Path]:
    """Person and garment files on disk (PNG)."""
    root = tmp_path_factory.mktemp("inputs")
    files = {
        "person": make_person(),
        "upper": make_garment((200, 30, 40)),
        "lower": make_garment((30, 40, 160)),
        "dress": make_garment((30, 150, 60)),
        "shoe": make_garment((90, 50, 30), 60, 80),
        "bag": make_garment((170, 110, 60), 60, 80),
    }
    out = {}
    for name, img in files.items():
        out[name] = root / f"{name}.png"
        img.save(out[name])
    return out


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (the pixel data is not even there)."""
    data = bytearray(png_bytes(Image.new("L", (1, 1))))
    ihdr = bytearray(data[16:29])
    ihdr[0:8] = struct.pack(">II", width, height)
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)
