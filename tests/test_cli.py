"""inference.py: a real run at the product size, one at a chosen --resolution with progress bars,
the CPU time estimate, and every error path (one line, right exit code)."""
from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import numpy as np
from PIL import Image

import inference
from fastfit_engine.runtime import cpu_estimate

ROOT = Path(__file__).resolve().parents[1]


def test_cli_writes_a_768x1024_png(models_dir, sample_files, tmp_path):
    out = tmp_path / "result.png"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FASTFIT_RESOLUTION": "768x1024"}  # a CPU's default is smaller
    cmd = [sys.executable, "inference.py", "--person", str(sample_files["person"]), "--shoe", str(sample_files["shoe"]),
           "--steps", "1", "--seed", "9", "--guidance", "1", "--models-dir", str(models_dir), "--output", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (768, 1024) and img.mode == "RGB"
    lines = proc.stdout.splitlines()
    assert lines[0] == f"output: {out}"
    assert lines[1] == "seed: 9"
    assert lines[2] == "peak VRAM: n/a (cpu)"
    assert lines[3].startswith("timings: pose ")
    assert lines[4] == "synthetic weights: no"  # conftest's tree carries no synthetic marker
    assert len(lines) == 5
    # stderr is a pipe: no progress bars; the CPU estimate once, measured at the full size itself
    assert "denoising:" not in proc.stderr and "preparing:" not in proc.stderr
    assert proc.stderr.count("running on the CPU") == 1
    assert re.search(r"\(this 768x1024 request: preparation [0-9.]+ s, first denoising step [0-9.]+ s, then "
                     r"[0-9.]+ s a step\)", proc.stderr), proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_resolution_flag_and_forced_progress(models_dir, sample_files, tmp_path):
    """--resolution beats FASTFIT_RESOLUTION and sets the output size; --progress shows the bars on a
    pipe (stage and step counts, time left) while stdout keeps its result lines."""
    out = tmp_path / "small.png"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FASTFIT_RESOLUTION": "768x1024"}
    cmd = [sys.executable, "inference.py", "--person", str(sample_files["person"]), "--upper", str(sample_files["upper"]),
           "--resolution", "192x256", "--steps", "2", "--guidance", "1", "--seed", "3", "--progress", "--models-dir", str(models_dir),
           "--output", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    with Image.open(out) as img:
        assert img.size == (192, 256)
    lines = proc.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["output", "seed", "peak VRAM", "timings", "synthetic weights"]
    assert lines[1] == "seed: 3"
    assert re.search(r"preparing: 100%\|[^|]*\| 5/5 ", proc.stderr), proc.stderr
    assert re.search(r"denoising: 100%\|[^|]*\| 2/2 \[[0-9:]+<00:00", proc.stderr), proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "running on the CPU" in line]
    assert len(warnings) == 1 and warnings[0].startswith("WARNING: running on the CPU: a full-size request (768x1024, 30 steps)")
    assert "(this 192x256 request: preparation " in warnings[0]
    assert "Traceback" not in proc.stderr


def _run(argv, capsys):
    code = inference.run([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines()


ERRORS = [
    # (argv builder(files, tmp), exit code, exact stderr or a prefix ending in '...')
    (lambda f, t: [], 2, "error: the following arguments are required: --person"),
    (lambda f, t: ["--person", f["person"], "--upper", f["upper"], "--hat", "x"], 2, "error: unrecognized arguments: --hat x"),
    (lambda f, t: ["--person", f["person"]], 2, "error: at least one garment is required: upper, lower, dress, shoe, bag"),
    (lambda f, t: ["--person", f["person"], "--upper", f["upper"], "--dress", f["dress"]], 2,
     "error: --dress cannot be combined with upper: a dress replaces both"),
    (lambda f, t: ["--person", f["person"], "--lower", f["lower"], "--dress", f["dress"]], 2,
     "error: --dress cannot be combined with lower: a dress replaces both"),
    (lambda f, t: ["--person", f["person"], "--upper", f["upper"], "--steps", "0"], 2, "error: --steps must be between 1 and 100, got 0"),
    (lambda f, t: ["--person", f["person"], "--upper", f["upper"], "--steps", "ten"], 2, "error: --steps must be an integer, got 'ten'"),
    (lambda f, t: ["--person", f["person"], "--upper", f["upper"], "--seed", "-1"], 2,
     "error: --seed must be between 0 and 4294967295, got -1"),
    (lambda f, t: ["--person", f["person"], "--upper", f["upper"], "--guidance", "12"], 2,
     "error: --guidance must be between 1.0 and 10.0, got 12.0"),
    (lambda f, t: ["--person", t / "nobody.jpg", "--upper", f["upper"]], 2, "error: --person: file not found: {t}/nobody.jpg"),
    (lambda f, t: ["--person", f["person"], "--lower", t / "none.png"], 2, "error: --lower: file not found: {t}/none.png"),
    (lambda f, t: ["--person", f["person"], "--upper", t / "garbage.png"], 2, "error: --upper is not a decodable image..."),
    (lambda f, t: ["--person", f["person"], "--upper", f["upper"], "--resolution", "100x100"], 2,
     "error: --resolution must be WIDTHxHEIGHT in positive multiples of 64, e.g. 384x512, got '100x100'"),
    (lambda f, t: ["--person", f["person"], "--upper", f["upper"], "--resolution", "big"], 2,
     "error: --resolution must be WIDTHxHEIGHT in positive multiples of 64, e.g. 384x512, got 'big'"),
    (lambda f, t: ["--person", f["person"], "--upper", f["upper"], "--mask", f["upper"], "--mask-grow", "4"], 2,
     "error: --mask-grow cannot be combined with mask: it grows the automatic mask"),
    (lambda f, t: ["--person", f["person"], "--upper", f["upper"], "--mask-grow", "200"], 2,
     "error: --mask-grow must be between 0 and 128, got 200"),
    (lambda f, t: ["--person", f["person"], "--upper", f["upper"], "--mask", t / "none.png"], 2,
     "error: --mask: file not found: {t}/none.png"),
    (lambda f, t: ["--person", f["person"], "--upper", f["upper"], "--mask", t / "garbage.png"], 2,
     "error: --mask is not a decodable image..."),
    (lambda f, t: ["--person", f["person"], "--upper", f["upper"], "--output", t], 2,
     "error: --output is a folder, give a file name: {t}"),
    (lambda f, t: ["--person", f["person"], "--upper", f["upper"], "--output", t / "no" / "dir" / "o.png"], 2,
     "error: --output: folder does not exist: {t}/no/dir"),
]


@pytest.mark.parametrize("build, code, expected", ERRORS, ids=[str(i) for i in range(len(ERRORS))])
def test_cli_errors_one_line_and_exit_code(build, code, expected, sample_files, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "garbage.png").write_bytes(b"this is not a png")
    got, err = _run(build(sample_files, tmp_path), capsys)
    assert got == code
    assert len(err) == 1, err
    expected = expected.replace("{t}", str(tmp_path))
    if expected.endswith("..."):
        assert err[0].startswith(expected[:-3])
    else:
        assert err[0] == expected


def test_cli_processing_failure_exits_1(sample_files, tmp_path, capsys, monkeypatch):
    """Models missing and no network: exit 1 and one line saying what to put where."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    got, err = _run(["--person", sample_files["person"], "--upper", sample_files["upper"],
                     "--models-dir", tmp_path / "Models", "--output", tmp_path / "o.png"], capsys)
    assert got == 1
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1 and errors == err[-1:]
    assert errors[0].startswith("error: ModelsNotFoundError: ")
    assert "HF_HUB_OFFLINE is set; place the files of https://huggingface.co/zhengchong/FastFit-MR-1024" in errors[0]
    assert not (tmp_path / "o.png").exists()


def _drive(progress: inference.Progress, steps: int) -> None:
    progress.start()
    for name in ("garments", "densepose", "schp", "pose_wait", "mask", "diffusion"):
        progress.stage(name)
    for i in range(steps):
        progress(i, steps)
    progress.close()


def test_progress_only_on_a_terminal_unless_forced():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    for enabled, stream, shown in [(None, io.StringIO(), False), (None, Terminal(), True),
                                   (True, io.StringIO(), True), (False, Terminal(), False)]:
        _drive(inference.Progress(3, enabled, stream), 3)
        text = stream.getvalue()
        assert ("denoising" in text and "preparing" in text) is shown, (enabled, text)
        if shown:  # each bar from 0, then to its end (the last stage's name beside it)
            assert "preparing:   0%" in text and "5/5" in text and "mask" in text
            assert "denoising:   0%" in text and "3/3" in text
        else:
            assert text == ""


def test_bad_fastfit_resolution_is_a_usage_error(sample_files, capsys, monkeypatch):
    monkeypatch.setenv("FASTFIT_RESOLUTION", "800x600")
    got, err = _run(["--person", sample_files["person"], "--upper", sample_files["upper"]], capsys)
    assert got == 2
    assert err == ["error: FASTFIT_RESOLUTION must be WIDTHxHEIGHT in positive multiples of 64, e.g. 384x512, got '800x600'"]


@pytest.mark.parametrize("argv, env, expected", [
    ([], {}, None),  # the engine's default for its device
    ([], {"FASTFIT_RESOLUTION": "384x512"}, "384x512"),
    (["--resolution", "192X256"], {"FASTFIT_RESOLUTION": "384x512"}, "192x256"),
    (["--resolution", "192x256"], {"FASTFIT_RESOLUTION": "bad"}, "192x256"),
])
def test_resolution_flag_overrides_the_environment(argv, env, expected):
    args = inference.build_parser().parse_args(["--person", "p.jpg", *argv])
    assert inference.engine_settings(args, env).resolution == expected


def test_cpu_estimate_logged_once_per_process(caplog, monkeypatch):
    """The estimate: preparation as measured, the denoising part scaled by pixels**STEP_EXPONENT; logged
    after the second step of the first CPU request only (the first of a 1-step one), never elsewhere."""
    monkeypatch.setattr(cpu_estimate, "_logged", threading.Event())
    scale = (768 * 1024 / (192 * 256)) ** cpu_estimate.STEP_EXPONENT  # 16**1.5 = 64
    assert cpu_estimate.full_size_seconds(20.0, 3.0, 0.5, (192, 256)) == pytest.approx(20.0 + scale * (3.0 + 29 * 0.5))
    assert scale == pytest.approx(64)
    assert cpu_estimate.full_size_seconds(20.0, 3.0, 0.5, (768, 1024)) == pytest.approx(20.0 + 3.0 + 29 * 0.5)

    seen: list[tuple[int, int]] = []

    def progress(i: int, n: int) -> None:
        seen.append((i, n))

    assert cpu_estimate.with_cpu_estimate(progress, torch.device("cuda"), (192, 256), 0.0, 0.0) is progress
    with caplog.at_level(logging.WARNING, logger="fastfit.engine"):
        for _request in range(2):
            t = cpu_estimate.time.perf_counter()
            callback = cpu_estimate.with_cpu_estimate(progress, torch.device("cpu"), (192, 256), t - 600.0, t)
            for i in range(3):
                callback(i, 3)
    assert seen == [(0, 3), (1, 3), (2, 3)] * 2
    records = [r for r in caplog.records if r.name == "fastfit.engine"]
    assert len(records) == 1
    # 600 s of preparation: 10 min (the near-instant fake steps add milliseconds)
    assert records[0].getMessage() == (
        "running on the CPU: a full-size request (768x1024, 30 steps) would take about 10 min here "
        "(this 192x256 request: preparation 600.0 s, first denoising step 0.0 s, then 0.0 s a step); "
        "a CUDA GPU takes seconds")

    monkeypatch.setattr(cpu_estimate, "_logged", threading.Event())
    with caplog.at_level(logging.WARNING, logger="fastfit.engine"):
        t = cpu_estimate.time.perf_counter()
        cpu_estimate.with_cpu_estimate(None, torch.device("cpu"), (768, 1024), t - 180.0, t - 120.0)(0, 1)
    # a 1-step request at full size: 60 s + 30 steps of 120 s = 61 min
    assert "about 61 min here (this 768x1024 request: preparation 60.0 s, first denoising step 120.0 s, then 120.0 s" \
        in caplog.records[-1].getMessage()


def test_cli_and_service_decode_large_jpegs_alike(engine, sample_files, tmp_path, capsys, monkeypatch):
    """A JPEG well over twice the working size is decoded in draft mode by the engine; the CLI
    hands the engine the file itself, so its image equals the service's (bytes in) bit for bit."""
    import io

    from helpers import make_person

    big = tmp_path / "big_person.jpg"
    make_person(900, 1200, seed=3).save(big, format="JPEG", quality=92)
    monkeypatch.setattr("fastfit_engine.runtime.engine.FastFitEngine.from_models_dir", lambda **kwargs: engine)
    out = tmp_path / "cli.png"
    code, err = _run(["--person", big, "--upper", sample_files["upper"], "--steps", "1", "--seed", "5",
                      "--resolution", "x".join(map(str, engine.resolution)), "--output", out], capsys)
    assert code == 0, err
    service = engine.process(big.read_bytes(), {"upper": sample_files["upper"].read_bytes()}, steps=1, seed=5)
    with Image.open(out) as cli_img:
        assert np.array_equal(np.asarray(cli_img.convert("RGB")), np.asarray(service.image))
    # and the draft decode really is in play: a full decode of the same file prepares differently
    with Image.open(big) as full:
        full.load()
        assert full.size == (900, 1200)
    with Image.open(io.BytesIO(big.read_bytes())) as drafted:
        drafted.draft("RGB", (engine.resolution[0] * 2, engine.resolution[1] * 2))
        assert drafted.size[0] < 900


@pytest.mark.parametrize("error,expected", [
    ("NonFiniteOutputError", 1),  # a 500 in the catalogue: a processing failure
    ("PixelBudgetExceeded", 2),  # a 400: the caller's input
])
def test_cli_exit_code_follows_the_catalogue_status(sample_files, tmp_path, capsys, monkeypatch, error, expected):
    from fastfit_engine import errors

    class Failing:
        device = torch.device("cpu")

        @classmethod
        def from_models_dir(cls, **kwargs):
            return cls()

        def run(self, *args, **kwargs):
            raise getattr(errors, error)("the model produced NaN")

    monkeypatch.setattr("fastfit_engine.runtime.engine.FastFitEngine", Failing)
    code, err = _run(["--person", sample_files["person"], "--upper", sample_files["upper"], "--output",
                      tmp_path / "o.png"], capsys)
    assert code == expected and err[-1] == "error: the model produced NaN"
