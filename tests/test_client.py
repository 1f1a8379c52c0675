"""fastfit_client against the live service (real app, real threaded WSGI server, tiny models)."""
from __future__ import annotations

import ast
import io
import socket
import threading
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
from fastfit_engine.runtime.engine import STAGES
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
    # a stage whose duration is not a number (a proxy's header) is left out, the rest is read
    assert parse_server_timing("proxy;dur=fast, total;dur=80, ;dur=3") == {"total": 80.0}


def _third_party_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    return imported - set(sys.stdlib_module_names) - {"__future__"}


def test_the_client_is_one_file_with_urllib3_only_and_the_batch_runner_adds_tqdm():
    # fastfit_client.py names fastfit_batch only inside its command line (the `batch` hand-over)
    assert _third_party_imports(ROOT / "fastfit_client.py") == {"urllib3", "fastfit_batch"}
    tree = ast.parse((ROOT / "fastfit_client.py").read_text())
    assert not any(isinstance(node, (ast.Import, ast.ImportFrom)) and "fastfit_batch" in ast.dump(node) for node in tree.body)
    assert _third_party_imports(ROOT / "fastfit_batch.py") == {"fastfit_client", "tqdm"}


def test_a_keyed_service_with_the_api_key(engine, sample_files, tmp_path, monkeypatch):
    app = create_app(engine, {"API_KEYS": ["k-0123456789"]})
    slept: list[float] = []
    with serve(app) as url:
        with pytest.raises(RequestRejected) as info:
            FastFitClient(url, sleep=slept.append).try_on(sample_files["person"], bag=sample_files["bag"], steps=1)
        assert info.value.status == 401 and info.value.code == "unauthorized" and slept == []
        with pytest.raises(RequestRejected):
            FastFitClient(url, api_key="wrong").try_on(sample_files["person"], bag=sample_files["bag"], steps=1)
        monkeypatch.setattr(engine, "synthetic_weights", True)  # as for a tree the synthetic writer marked
        result = FastFitClient(url, api_key="k-0123456789").try_on(
            sample_files["person"], bag=sample_files["bag"], steps=1, seed=8)
        assert result.seed == 8 and result.synthetic_weights is True
        monkeypatch.setattr(engine, "synthetic_weights", False)

        # the batch command reads the key from a file
        (tmp_path / "key.txt").write_text("k-0123456789\n")
        (tmp_path / "rows.csv").write_text(f"person,bag,steps,seed\n{sample_files['person']},{sample_files['bag']},1,8\n")
        from fastfit_client import main

        assert main(["batch", str(tmp_path / "rows.csv"), "--out", str(tmp_path / "o"), "--url", url,
                     "--api-key-file", str(tmp_path / "key.txt"), "--no-progress"]) == 0
        assert (tmp_path / "o" / "row00001.png").read_bytes() == result.image
        assert main(["batch", str(tmp_path / "rows.csv"), "--out", str(tmp_path / "o2"), "--url", url,
                     "--no-progress"]) == 1
        assert '"code": "unauthorized"' in (tmp_path / "o2" / "failures.jsonl").read_text()


def test_429_and_503_answers_are_followed_by_their_retry_after():
    """A stand-in for any server in front (a rate limiter answers 429): the client waits what it asks."""
    from flask import Flask

    answers = [(429, "2"), (503, "1"), (200, None)]
    seen: list[str | None] = []
    app = Flask("limiter")

    @app.post("/prompt")
    def prompt():
        from flask import request

        seen.append(request.headers.get("Authorization"))
        status, wait = answers[len(seen) - 1]
        if status != 200:
            return {"error": {"code": "slow_down", "message": "later"}}, status, {"Retry-After": wait}
        return b"PNG", 200, {"Content-Type": "image/png", "X-Seed": "4"}

    slept: list[float] = []
    with serve(app) as url:
        result = FastFitClient(url, sleep=slept.append, api_key="abc").try_on(b"p", upper=b"u")
        assert result.image == b"PNG" and result.attempts == 3 and slept == [2, 1]
        assert seen == ["Bearer abc"] * 3
        seen.clear()
        answers[:] = [(429, "1")] * 3
        with pytest.raises(ServiceBusy) as info:
            FastFitClient(url, sleep=slept.append, max_retries=2).try_on(b"p", upper=b"u")
        assert info.value.status == 429 and info.value.retry_after == 1.0 and len(seen) == 3


def test_every_try_on_through_the_full_front_succeeds_by_following_retry_after(models_dir, sample_files, tmp_path):
    """The nginx front with its one instance full answers 503 with Retry-After; four client threads
    x three try-ons all succeed by waiting as asked."""
    from _front_helpers import Stack

    s = Stack(tmp_path, models_dir, "cpu", {"FASTFIT_QUEUE_SIZE": "0", "FASTFIT_RETRY_AFTER": "1"})
    results: list = []
    errors: list = []
    try:
        s.wait("/ready", 200, 120)
        client = FastFitClient(s.front, timeout=120, max_retries=200, pool_size=4)

        def work(i: int) -> None:
            for j in range(3):
                try:
                    results.append(client.try_on(sample_files["person"], bag=sample_files["bag"], steps=1, seed=10 * i + j))
                except Exception as exc:  # noqa: BLE001 - collected and asserted below
                    errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
    finally:
        s.stop()
    assert errors == [] and len(results) == 12
    assert sorted(r.seed for r in results) == sorted(10 * i + j for i in range(4) for j in range(3))
    assert sum(r.attempts for r in results) > 12  # some were refused as full and came back
    refused = [e for e in s.access_entries() if str(e.get("status")) == "503"]
    assert refused, "the front never answered 503"
