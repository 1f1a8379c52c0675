"""A failed torch.compile degrades to the eager path (one log line, one metric), never a failed request."""
from __future__ import annotations

import io
import logging

import numpy as np
import pytest
import torch
import torch._dynamo
from PIL import Image

from fastfit_engine.model.compile_fallback import EagerFallback
from helpers import TEST_RESOLUTION
from server import create_app


def test_guard_runs_eager_after_a_compile_failure(caplog):
    calls = []

    def broken_backend(gm, example_inputs):
        calls.append("compile")
        raise RuntimeError("Failed to find C compiler. Please specify via CC environment variable")

    def double(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    torch._dynamo.reset()
    fallback = EagerFallback()
    guarded = fallback.guard("test step", torch.compile(double, backend=broken_backend), double)
    with caplog.at_level(logging.WARNING, logger="fastfit.compile"):
        out = guarded(torch.ones(3))
        again = guarded(torch.full((3,), 2.0))
    torch._dynamo.reset()
    assert torch.equal(out, torch.full((3,), 2.0)) and torch.equal(again, torch.full((3,), 4.0))
    assert calls == ["compile"]  # the second call went straight to eager
    assert fallback.failures == 1 and fallback.eager
    assert "Failed to find C compiler" in fallback.reason
    lines = [r.getMessage() for r in caplog.records if r.name == "fastfit.compile"]
    assert len(lines) == 1 and "torch.compile failed while compiling the test step" in lines[0]
    assert "running eager from now on" in lines[0]


def test_guard_passes_other_errors_through():
    fallback = EagerFallback()

    def failing(x):
        raise ValueError("not a compile error")

    guarded = fallback.guard("step", failing, lambda x: x)
    with pytest.raises(ValueError, match="not a compile error"):
        guarded(1)
    assert fallback.failures == 0 and not fallback.eager


def test_engine_without_a_compiler_serves_eager_images(models_dir, engine, sample_files, monkeypatch, caplog):
    """The real engine with compiling on and no working C++ compiler (Inductor's CPU backend needs
    one, as Triton's driver stub does on CUDA): the request succeeds with the eager engine's image,
    one WARNING says why, /metrics counts the fallback."""
    import torch._inductor.config as inductor_config

    from fastfit_engine.runtime.engine import FastFitEngine

    monkeypatch.setattr(inductor_config.cpp, "cxx", ("/nonexistent/c++",))
    monkeypatch.setenv("FASTFIT_COMPILE_CACHE", "off")  # leave the libraries' cache settings alone
    torch._dynamo.reset()
    compiled = FastFitEngine.from_models_dir(models_dir, device="cpu", resolution=TEST_RESOLUTION, download=False, compile=True)
    assert compiled.compiled and compiled.compile_fallbacks == 0
    app = create_app(compiled, {"WARMUP": False})
    client = app.test_client()
    assert "fastfit_compile_fallbacks_total 0.0" in client.get("/metrics").get_data(as_text=True)
    person, upper = sample_files["person"].read_bytes(), sample_files["upper"].read_bytes()
    form = {"person": (io.BytesIO(person), "p.png"), "upper": (io.BytesIO(upper), "u.png"), "steps": "1", "seed": "7", "guidance_scale": "1.0"}
    try:
        with caplog.at_level(logging.WARNING, logger="fastfit.compile"):
            resp = client.post("/prompt", data=form, content_type="multipart/form-data")
    finally:
        torch._dynamo.reset()
    assert resp.status_code == 200, resp.get_data(as_text=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "fastfit.compile"]
    assert len(lines) == 1 and "C++ compiler" in lines[0] and "running eager from now on" in lines[0], lines
    assert compiled.compile_fallbacks == 1
    assert "fastfit_compile_fallbacks_total 1.0" in client.get("/metrics").get_data(as_text=True)
    expected = engine.process(sample_files["person"], {"upper": sample_files["upper"]}, steps=1, seed=7, guidance_scale=1.0).image
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(resp.data)).convert("RGB")), np.asarray(expected))
