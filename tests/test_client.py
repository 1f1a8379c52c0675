"""fastfit_client against the live service (real app, real threaded WSGI server, tiny models)."""
from __future__ import annotations

import ast
import io
import socket
import sys
from pathlib import Path

import pytest
from PIL import Image

from _live_server import serve
from helpers import TEST_RESOLUTION
from fastfit_client import (
    FastFitClient,
    RequestRejected,
    ServiceBusy,
    ServiceUnavailable,
    TransportError,
    parse_server_timing,
)
from fastfit_engine.engine import STAGES
from server import create_app

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def live(engine):
    app = create_app(engine, {"QUEUE_SIZE": 0, "QUEUE_TIMEOUT": 0.2, "RETRY_AFTER": 1, "MAX_UPLOAD_MB": 2})
    with serve(app) as url:
        yield app, url


def test_try_on_returns_the_image_seed_and_timings(live, sample_files, tmp_path):
    app, url = live
    result = FastFitClient(url, timeout=60).try_on(
        sample_files["person"], upper=sample_files["upper"].read_bytes(), shoe=open(sample_files["shoe"], "rb"),
        steps=1, seed=11, guidance_scale=1.0,
    )
    assert result.content_type == "image/png" and result.seed == 11 and result.attempts == 1
    assert list(result.timings_ms) == list(STAGES) and result.timings_ms["total"] > 0
    assert result.peak_vram_mb is None  # CPU
    assert Image.open(io.BytesIO(result.image)).size == TEST_RESOLUTION
    files = {n: (io.BytesIO(sample_files[n].read_bytes()), f"{n}.png") for n in ("person", "upper", "shoe")}
    direct = app.test_client().post("/prompt", data={**files, "steps": "1", "seed": "11", "guidance_scale": "1"},
                                    content_type="multipart/form-data")
    assert result.image == direct.data  # the same request, the same bytes
    assert result.save(tmp_path / "out.png").read_bytes() == direct.data


def test_service_options_pass_through(live, sample_files):
    _, url = live
    result = FastFitClient(url).try_on(sample_files["person"], upper=sample_files["upper"], seed=5,
                                       preview="mask", output_format="webp")
    assert result.content_type == "image/webp" and result.seed == 5
    img = Image.open(io.BytesIO(result.image))
    assert img.format == "WEBP" and img.size == TEST_RESOLUTION
    assert list(result.timings_ms) == ["pose", "densepose", "schp", "mask", "total"]


@pytest.mark.parametrize(
    "garments, numbers, code, fragment",
    [
        (("dress", "upper"), {}, "dress_conflict", "dress cannot be combined with upper"),
        ((), {}, "no_garment", "at least one garment"),
        (("upper",), {"steps": 0}, "out_of_range", "steps must be between 1 and 100, got 0"),
        (("upper",), {"hat": "red"}, "unknown_field", "unknown field 'hat'"),
    ],
)
def test_bad_requests_raise_typed_errors_with_the_code(live, sample_files, garments, numbers, code, fragment):
    _, url = live
    slept: list[float] = []
    client = FastFitClient(url, sleep=slept.append)
    with pytest.raises(RequestRejected) as info:
        client.try_on(sample_files["person"], **{g: sample_files[g] for g in garments}, **numbers)
    assert info.value.status == 400 and info.value.code == code and fragment in info.value.message
    assert slept == []  # a 400 is never retried


def test_too_large_is_rejected_not_retried(live, sample_files):
    _, url = live
    with pytest.raises(RequestRejected) as info:
        FastFitClient(url).try_on(sample_files["person"], upper=b"\0" * (3 * 2**20))
    assert info.value.status == 413 and info.value.code == "payload_too_large"


def test_busy_503_is_retried_after_retry_after(live, sample_files):
    app, url = live
    lock = app.extensions["fastfit"].gpu_lock
    slept: list[float] = []

    def sleep(seconds: float) -> None:  # the GPU frees up while the client waits
        slept.append(seconds)
        if len(slept) == 2:
            lock.release()

    lock.acquire()
    try:
        result = FastFitClient(url, max_retries=3, sleep=sleep).try_on(
            sample_files["person"], bag=sample_files["bag"], steps=1, seed=3)
    finally:
        if lock.locked() and len(slept) < 2:
            lock.release()
    assert slept == [1.0, 1.0] and result.attempts == 3 and result.seed == 3


def test_busy_past_the_retries_raises_service_busy(live, sample_files):
    app, url = live
    slept: list[float] = []
    with app.extensions["fastfit"].gpu_lock:
        with pytest.raises(ServiceBusy) as info:
            FastFitClient(url, max_retries=2, sleep=slept.append).try_on(sample_files["person"], bag=sample_files["bag"])
    assert slept == [1.0, 1.0]
    assert info.value.status == 503 and info.value.code == "queue_timeout" and info.value.retry_after == 1.0
    # a Retry-After longer than the caller accepts is raised at once
    slept.clear()
    with app.extensions["fastfit"].gpu_lock:
        with pytest.raises(ServiceBusy):
            FastFitClient(url, max_retry_wait=0.5, sleep=slept.append).try_on(sample_files["person"], bag=sample_files["bag"])
    assert slept == []


def test_timeout(engine, sample_files):
    app = create_app(engine, {"QUEUE_SIZE": 1, "QUEUE_TIMEOUT": 5})
    with serve(app) as url, app.extensions["fastfit"].gpu_lock:
        with pytest.raises(TransportError) as info:
            FastFitClient(url, timeout=0.3).try_on(sample_files["person"], shoe=sample_files["shoe"], steps=1)
    assert info.value.code == "timeout" and info.value.status == 0


def test_engine_failed_is_not_retried(sample_files):
    def broken():
        raise FileNotFoundError("no models here")  # permanent: not retried by the loader

    app = create_app(config={"ENGINE_FACTORY": broken})
    app.extensions["fastfit"].loader.join(10)
    slept: list[float] = []
    with serve(app) as url:
        client = FastFitClient(url, sleep=slept.append)
        assert client.ready() is False
        with pytest.raises(ServiceUnavailable) as info:
            client.try_on(sample_files["person"], upper=sample_files["upper"])
    assert info.value.code == "engine_failed" and slept == []


def test_connection_refused():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens
    with pytest.raises(TransportError) as info:
        FastFitClient(f"http://127.0.0.1:{port}", timeout=5).try_on(b"x", upper=b"y")
    assert info.value.code == "connection_error"


def test_ready_and_server_timing_parser(live):
    _, url = live
    assert FastFitClient(url).ready() is True
    assert parse_server_timing("pose;dur=12.5, total;desc=\"x\";dur=80") == {"pose": 12.5, "total": 80.0}


def test_the_client_is_one_file_with_urllib3_and_tqdm_only():
    tree = ast.parse((ROOT / "fastfit_client.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert imported - set(sys.stdlib_module_names) - {"__future__"} == {"urllib3", "tqdm"}, imported
