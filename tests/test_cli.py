"""inference.py: a real run at the product size, and every error path (one line, right exit code)."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import inference
from fastfit_engine import schema
from fastfit_service.config import EngineSettings

ROOT = Path(__file__).resolve().parents[1]


def test_cli_writes_a_768x1024_png(models_dir, sample_files, tmp_path):
    out = tmp_path / "result.png"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FASTFIT_RESOLUTION": ""}
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
    assert "denoising [" in proc.stderr and "1/1" in proc.stderr
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


def test_progress_lines_when_not_a_terminal():
    buf = io.StringIO()
    progress = inference._Progress(stream=buf, width=10)
    for i in range(20):
        progress(i, 20)
    lines = buf.getvalue().splitlines()
    assert lines[0] == "denoising [          ] 1/20"
    assert lines[-1] == "denoising [##########] 20/20"
    assert len(lines) == 11  # first, every 10 %, last


@pytest.mark.parametrize("field", schema.NUMBER_FIELDS, ids=lambda f: f.name)
def test_cli_errors_name_the_fields_flag(field, sample_files, capsys):
    got, err = _run(["--person", sample_files["person"], "--upper", sample_files["upper"], field.cli_flag, "x"], capsys)
    kind = "an integer" if field.kind is int else "a number"
    assert got == 2 and err == [f"error: {field.cli_flag} must be {kind}, got 'x'"]


def test_engine_settings_from_the_environment():
    env = {"FASTFIT_MODELS_DIR": "/m", "FASTFIT_DEVICE": "cuda:1", "FASTFIT_DWPOSE_DEVICE": "cuda", "FASTFIT_RESOLUTION": "384x512"}
    assert EngineSettings.from_env(env) == EngineSettings("/m", "cuda:1", "cuda", "384x512")
    assert EngineSettings.from_env({"FASTFIT_DEVICE": " ", "FASTFIT_RESOLUTION": ""}) == EngineSettings(None, None, "cpu", None)


def test_cli_uses_fastfit_device(sample_files, tmp_path, capsys, monkeypatch):
    """The CLI builds its engine from the same settings as the service: a bad FASTFIT_DEVICE is refused."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("FASTFIT_DEVICE", "nosuchdevice")
    got, err = _run(["--person", sample_files["person"], "--upper", sample_files["upper"],
                     "--models-dir", tmp_path / "Models", "--output", tmp_path / "o.png"], capsys)
    assert got == 1 and err[-1].startswith("error: RuntimeError: ") and err[-1].endswith("device string: nosuchdevice")
