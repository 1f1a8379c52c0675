"""inference.py: the output file's extension picks the format, --quality, --save-mask."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import fastfit_engine.runtime.engine as engine_module
import inference
from helpers import TEST_RESOLUTION
from fastfit_engine.request.output import encode_image


@pytest.fixture()
def shared_engine(engine, monkeypatch):
    """The CLI builds a FastFitEngine; hand it the session's (same models, small size: the CLI
    decodes its request for that working size)."""
    monkeypatch.setattr(engine_module.FastFitEngine, "from_models_dir", lambda *a, **k: engine)
    monkeypatch.setenv("FASTFIT_RESOLUTION", "x".join(map(str, engine.resolution)))
    return engine


@pytest.mark.parametrize("name, pil, quality", [("out.jpg", "JPEG", "80"), ("out.webp", "WEBP", None),
                                                 ("out.png", "PNG", None)])
def test_extension_picks_the_format(shared_engine, sample_files, tmp_path, capsys, name, pil, quality):
    out = tmp_path / name
    argv = ["--person", sample_files["person"], "--upper", sample_files["upper"], "--steps", "1", "--seed", "3",
            "--guidance", "1", "--output", out, "--save-mask"] + (["--quality", quality] if quality else [])
    assert inference.run([str(a) for a in argv]) == 0
    stdout = capsys.readouterr().out.splitlines()
    mask_path = tmp_path / (out.stem + "_mask.png")
    assert stdout[:2] == [f"output: {out}", f"mask: {mask_path}"]
    with Image.open(out) as img:
        assert img.format == pil and img.size == TEST_RESOLUTION
    expected = shared_engine.process(sample_files["person"], {"upper": sample_files["upper"]}, steps=1, seed=3,
                                     guidance_scale=1.0)
    fmt = {"JPEG": "jpeg", "WEBP": "webp", "PNG": "png"}[pil]
    assert out.read_bytes() == encode_image(expected.image, fmt, int(quality) if quality else None)
    with Image.open(mask_path) as mask:
        assert mask.format == "PNG" and mask.mode == "L"
        assert np.array_equal(np.asarray(mask), np.asarray(expected.mask))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--output", "{t}/out.gif"], "error: --output: cannot tell the image format from 'out.gif'; use one of .png, .jpg, .jpeg, .webp"),
        (["--quality", "0"], "error: --quality must be between 1 and 100, got 0"),
        (["--quality", "high"], "error: --quality must be an integer, got 'high'"),
    ],
)
def test_output_errors(sample_files, tmp_path, capsys, extra, message):
    argv = ["--person", sample_files["person"], "--upper", sample_files["upper"]] + [e.format(t=tmp_path) for e in extra]
    assert inference.run([str(a) for a in argv]) == 2
    assert capsys.readouterr().err.strip() == message


def test_engine_output_path_follows_the_extension(engine, sample_files, tmp_path):
    result = engine.process(sample_files["person"], {"bag": sample_files["bag"]}, output_path=tmp_path / "r.webp",
                            steps=1, seed=2)
    assert Image.open(io.BytesIO(result.output_path.read_bytes())).format == "WEBP"
