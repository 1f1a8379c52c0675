"""Outputs unchanged: today's images, bit for bit, through the command line and the service.

The PNGs in tests/data/golden/ were written by this module's ``--write`` mode (below) with the
code before the architecture step (main at d5023ba, still in the flat layout, after the merge
of the branches that changed DWPose and the defaults), on the tiny synthetic models (seed 0) at
192x256 with 2 denoising steps and guidance 2.5 (so classifier-free guidance runs), one intra-op
thread. A refactor that changes one pixel of a try-on, a mask preview or a masked-person preview
fails here.

Floating-point results depend on the CPU's vector unit, so there is one set per unit, in a
folder named for it, and the test compares the set of the unit PyTorch's kernels use
(``torch.backends.cpu.get_cpu_capability()``); it skips only where there is no such set:

- ``AVX512/``: d5023ba's code on an AVX512 CPU (2026-12-04);
- ``AVX2/``: d5023ba's code on an AVX512 CPU (AMD EPYC, 2026-12-08) held to AVX2 with
  ``ATEN_CPU_CAPABILITY=avx2`` (PyTorch's own kernels) and ``ONEDNN_MAX_CPU_ISA=AVX2`` (oneDNN's
  convolutions; without it 17-18 values of each try-on differ by 1). Holding MKL, OpenCV or
  NumPy to AVX2 as well changed nothing. onnxruntime (DWPose) cannot be held to AVX2, so a real
  AVX2 CPU also runs its AVX2 kernels; these images assume the pose drawing does not change.

To compare the AVX2 set on an AVX512 CPU, hold both: ``ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2 pytest tests/test_golden.py``; with ATen held alone the test skips and
says why (its kernels would not be any one CPU's).

    python tests/test_golden.py --write   # regenerate this CPU's set (only for a deliberate change of output)
"""
from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

GOLDEN = Path(__file__).resolve().parent / "data" / "golden"
RESOLUTION = "192x256"
# (name, garment slots, seed): a top and a bottom, and a dress with shoes and a bag
LAYOUTS = [("upper_lower", ("upper", "lower"), 11), ("dress_shoe_bag", ("dress", "shoe", "bag"), 12)]
PREVIEWS = [("mask", "upper", 13), ("masked_person", "dress", 14)]
STEPS = "2"
GUIDANCE = "2.5"

pytestmark = pytest.mark.usefixtures("single_thread")


def _capability() -> str:
    return torch.backends.cpu.get_cpu_capability()


def _mixed_units() -> str | None:
    """Why this process's kernels are not those of any one CPU (ATen and oneDNN held to different
    vector units), or None."""
    onednn = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    if _capability() == "AVX2" and torch.cpu.get_capabilities().get("avx512_f") and onednn != "AVX2":
        return "ATen is held to AVX2 on an AVX512 CPU but oneDNN is not: set ONEDNN_MAX_CPU_ISA=AVX2 too"
    if _capability() == "AVX512" and onednn and not onednn.startswith("AVX512"):
        return f"oneDNN is held to {onednn} while ATen uses AVX512"
    return None


def _golden_set() -> Path:
    return GOLDEN / _capability()


def cli_image(models_dir: Path, files: dict[str, Path], slots: tuple[str, ...], seed: int, out: Path) -> Image.Image:
    """A try-on through inference.py's run() (in this process, its own engine)."""
    import inference

    argv = ["--person", str(files["person"]), "--models-dir", str(models_dir), "--resolution", RESOLUTION,
            "--steps", STEPS, "--seed", str(seed), "--guidance", GUIDANCE, "--output", str(out), "--no-progress"]
    for slot in slots:
        argv += [f"--{slot}", str(files[slot])]
    assert inference.run(argv) == 0
    with Image.open(out) as img:
        return img.convert("RGB")


def service_image(client, files: dict[str, Path], slots: tuple[str, ...], seed: int, preview: str = "none") -> Image.Image:
    """A try-on (or a preview) through POST /prompt, multipart."""
    data = {name: (io.BytesIO(files[name].read_bytes()), f"{name}.png") for name in ("person", *slots)}
    data.update(steps=STEPS, seed=str(seed), guidance_scale=GUIDANCE, preview=preview)
    resp = client.post("/prompt", data=data, content_type="multipart/form-data")
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.headers["X-Seed"] == str(seed)
    return Image.open(io.BytesIO(resp.data)).copy()


def _face_on_top(engine) -> None:
    """Random weights parse every pixel as clothing (an all-255 mask); relabel the top fifth of the
    real LIP map as Face so the previews show a two-valued mask (as tests/test_mask_preview.py does)."""
    from parse_utils.automasker import LIP_MAPPING

    real = engine.parsers.schp_lip

    def parse(image):
        labels = np.array(real(image))
        labels[: labels.shape[0] // 5] = LIP_MAPPING["Face"]
        return Image.fromarray(labels.astype(np.uint8), "L")

    engine.parsers.schp_lip = parse
    engine.clear_caches()


def _service_client(engine):
    from server import create_app

    return create_app(engine).test_client()


def _assert_same(img: Image.Image, name: str) -> None:
    with Image.open(_golden_set() / f"{name}.png") as ref:
        expected = np.asarray(ref)
    got = np.asarray(img)
    assert got.shape == expected.shape, (name, got.shape, expected.shape)
    diff = got.astype(np.int16) - expected
    assert np.array_equal(got, expected), f"{name}: {np.count_nonzero(diff)} values differ, max {np.abs(diff).max()}"


@pytest.fixture(scope="module")
def same_cpu() -> None:
    """Skip unless a golden set was made for the vector unit this process computes with."""
    if (why := _mixed_units()) is not None:
        pytest.skip(why)
    if not _golden_set().is_dir():
        made = sorted(p.name for p in GOLDEN.iterdir() if p.is_dir())
        pytest.skip(f"golden images were made for {', '.join(made)} CPUs, this one computes with {_capability()}")


@pytest.fixture()
def golden_engine(models_dir):
    """An engine at the golden size, like the CLI's (caches on, as in both front doors)."""
    from fastfit_engine import FastFitEngine

    return FastFitEngine.from_models_dir(models_dir, device="cpu", resolution=RESOLUTION, download=False)


@pytest.fixture()
def clean_env(monkeypatch):
    for name in ("FASTFIT_DEVICE", "FASTFIT_DWPOSE_DEVICE", "FASTFIT_RESOLUTION", "FASTFIT_MODELS_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("name,slots,seed", LAYOUTS)
def test_cli_output_unchanged(same_cpu, clean_env, models_dir, sample_files, tmp_path, name, slots, seed):
    _assert_same(cli_image(models_dir, sample_files, slots, seed, tmp_path / "out.png"), name)


def test_service_outputs_unchanged(same_cpu, golden_engine, sample_files):
    client = _service_client(golden_engine)
    for name, slots, seed in LAYOUTS:  # the same image as the command line's
        _assert_same(service_image(client, sample_files, slots, seed), name)
    _face_on_top(golden_engine)
    for preview, slot, seed in PREVIEWS:
        _assert_same(service_image(client, sample_files, (slot,), seed, preview), f"preview_{preview}")


def _write() -> None:
    """Regenerate this CPU's golden set with the code as it is (see the module docstring)."""
    import tempfile

    if (why := _mixed_units()) is not None:
        sys.exit(why)

    from helpers import make_garment, make_person, single_thread

    from fastfit_engine import FastFitEngine
    from fastfit_engine.synthetic import write_fastfit_model
    from parse_utils.synthetic import write_human_toolkit

    gen = single_thread()
    next(gen)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = tmp / "Models"
        write_fastfit_model(models / "FastFit-MR-1024", tiny=True, seed=0)
        write_human_toolkit(models / "Human-Toolkit", tiny=True, seed=0)
        images = {"person": make_person(), "upper": make_garment((200, 30, 40)), "lower": make_garment((30, 40, 160)),
                  "dress": make_garment((30, 150, 60)), "shoe": make_garment((90, 50, 30), 60, 80),
                  "bag": make_garment((170, 110, 60), 60, 80)}
        files = {}
        for n, img in images.items():
            files[n] = tmp / f"{n}.png"
            img.save(files[n])
        target = _golden_set()
        target.mkdir(parents=True, exist_ok=True)
        engine = FastFitEngine.from_models_dir(models, device="cpu", resolution=RESOLUTION, download=False)
        client = _service_client(engine)
        for name, slots, seed in LAYOUTS:
            cli = cli_image(models, files, slots, seed, tmp / "out.png")
            svc = service_image(client, files, slots, seed)
            assert np.array_equal(np.asarray(cli), np.asarray(svc)), name
            svc.save(target / f"{name}.png")
        _face_on_top(engine)
        for preview, slot, seed in PREVIEWS:
            service_image(client, files, (slot,), seed, preview).save(target / f"preview_{preview}.png")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_golden.py --write")
    here = Path(__file__).resolve().parent
    sys.path[:0] = [str(here), str(here.parent)]
    _write()
