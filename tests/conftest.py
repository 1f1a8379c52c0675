"""Shared fixtures: ONE tiny synthetic Models tree and one CPU engine for all end-to-end tests.

The weights are random, written in the published formats and read by the real loaders: the
images are meaningless, the plumbing is real.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import TEST_RESOLUTION, make_garment, make_person, single_thread as _single_thread, tiny_model_dir


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    from fastfit_engine.synthetic import write_fastfit_model
    from parse_utils.synthetic import write_human_toolkit

    root = tmp_path_factory.mktemp("Models")
    write_fastfit_model(root / "FastFit-MR-1024", tiny=True, seed=0)
    write_human_toolkit(root / "Human-Toolkit", tiny=True, seed=0)
    return root


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """One tiny synthetic FastFit-MR-1024 folder (seed 0) for the UNet and pipeline tests."""
    return tiny_model_dir(tmp_path_factory.mktemp("ff"))


@pytest.fixture(scope="session")
def engine(models_dir):
    from fastfit_engine.runtime.engine import FastFitEngine

    return FastFitEngine.from_models_dir(models_dir, device="cpu", resolution=TEST_RESOLUTION, download=False)


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


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """One intra-op torch thread for a whole module (see helpers.single_thread); a module opts in with
    ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    yield from _single_thread()


@pytest.fixture(autouse=True)
def _engine_caches_per_test(request):
    """The shared engine's caches never carry a test's values (some patch a parser) into another."""
    if "engine" in request.fixturenames:
        request.getfixturevalue("engine").clear_caches()
    yield
    if "engine" in request.fixturenames:
        request.getfixturevalue("engine").clear_caches()
