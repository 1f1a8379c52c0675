"""The Flask service through its test client, on the shared CPU engine (real pipeline, random weights)."""
from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from helpers import TEST_RESOLUTION, png_bytes, png_claiming
from server import create_app


def _files(sample_files, *names, **extra):
    data = {n: (io.BytesIO(sample_files[n].read_bytes()), f"{n}.png") for n in names}
    data.update(extra)
    return data


def _post(client, data):
    return client.post("/prompt", data=data, content_type="multipart/form-data")


def _error(resp):
    body = resp.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert "Traceback" not in resp.get_data(as_text=True)
    return body["error"]["code"], body["error"]["message"]


@pytest.fixture(scope="module")
def app(engine):
    return create_app(engine, {"QUEUE_SIZE": 2, "MAX_UPLOAD_MB": 2})


@pytest.fixture()
def client(app):
    return app.test_client()


def _assert_still_serving(client):
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code == 200


# -- success, headers, determinism ------------------------------------------------------------
def test_prompt_success_headers_and_determinism(client, sample_files):
    r1 = _post(client, _files(sample_files, "person", "upper", steps="1", seed="42", guidance_scale="1.0"))
    assert r1.status_code == 200, r1.get_data(as_text=True)
    assert r1.mimetype == "image/png"
    assert r1.headers["X-Seed"] == "42"
    assert "X-Peak-VRAM-MB" not in r1.headers  # CPU
    timing = dict(part.split(";dur=") for part in r1.headers["Server-Timing"].split(", "))
    assert list(timing) == ["pose", "garments", "densepose", "schp", "pose_wait", "mask", "diffusion", "total"]
    assert all(float(v) >= 0 for v in timing.values())
    img = Image.open(io.BytesIO(r1.data))
    assert img.format == "PNG" and img.size == TEST_RESOLUTION
    r2 = _post(client, _files(sample_files, "person", "upper", steps="1", seed="42", guidance_scale="1.0"))
    assert r2.status_code == 200 and r2.data == r1.data  # same seed, same bytes


def test_random_seed_is_reported(client, sample_files):
    r = _post(client, _files(sample_files, "person", "shoe", steps="1", guidance_scale="1"))
    assert r.status_code == 200
    assert 0 <= int(r.headers["X-Seed"]) <= 2**32 - 1


# -- 400s: validation, in the documented order --------------------------------------------------
BAD_REQUESTS = [
    # (description, builder(sample_files) -> data, code, message fragment)
    ("no person", lambda f: _files(f, "upper"), "missing_person", "person image is required"),
    ("no garment", lambda f: _files(f, "person"), "no_garment", "at least one garment"),
    ("dress+upper", lambda f: _files(f, "person", "dress", "upper"), "dress_conflict", "dress cannot be combined with upper"),
    ("dress+lower", lambda f: _files(f, "person", "lower", "dress"), "dress_conflict", "dress cannot be combined with lower"),
    ("steps 0", lambda f: _files(f, "person", "upper", steps="0"), "out_of_range", "steps must be between 1 and 100, got 0"),
    ("steps 101", lambda f: _files(f, "person", "upper", steps="101"), "out_of_range", "steps must be between 1 and 100"),
    ("steps text", lambda f: _files(f, "person", "upper", steps="many"), "invalid_number", "steps must be an integer"),
    ("seed neg", lambda f: _files(f, "person", "upper", seed="-5"), "out_of_range", "seed must be between 0 and 4294967295"),
    ("seed big", lambda f: _files(f, "person", "upper", seed=str(2**32)), "out_of_range", "seed must be between"),
    ("guidance low", lambda f: _files(f, "person", "upper", guidance_scale="0.5"), "out_of_range", "guidance_scale must be between 1.0 and 10.0"),
    ("guidance nan", lambda f: _files(f, "person", "upper", guidance_scale="nan"), "invalid_number", "finite"),
    ("unknown field", lambda f: _files(f, "person", "upper", hat="1"), "unknown_field", "unknown field 'hat'"),
    ("unknown file", lambda f: _files(f, "person", "upper", hat=(io.BytesIO(b"x"), "h.png")), "unknown_field", "unknown field 'hat'"),
    ("person as text", lambda f: {**_files(f, "upper"), "person": "me.jpg"}, "not_a_file", "'person' must be a file upload"),
    ("steps as file", lambda f: _files(f, "person", "upper", steps=(io.BytesIO(b"3"), "s.txt")), "not_a_number_field", "'steps' must be a form field"),
    ("garbage person", lambda f: {**_files(f, "upper"), "person": (io.BytesIO(b"hello"), "p.png")}, "invalid_image", "person is not a decodable image"),
    ("garbage bag", lambda f: {**_files(f, "person", "upper"), "bag": (io.BytesIO(b"\x89PNG\r\n\x1a\n"), "b.png")}, "invalid_image", "bag is not a decodable image"),
    ("empty named upload", lambda f: {**_files(f, "person"), "upper": (io.BytesIO(b""), "u.png")}, "invalid_image", "upper is empty"),
    ("too many pixels", lambda f: {**_files(f, "person"), "shoe": (io.BytesIO(png_claiming(7000, 7000)), "s.png")}, "image_too_large", "shoe is too large: 7000x7000 pixels"),
    ("tiny person", lambda f: {**_files(f, "upper"), "person": (io.BytesIO(png_bytes(Image.new("RGB", (8, 12)))), "p.png")}, "image_too_small", "person is too small: 8x12 pixels"),
    ("bomb", lambda f: {**_files(f, "upper"), "person": (io.BytesIO(png_claiming(40000, 40000)), "p.png")}, "image_too_large", "person is too large"),
]


@pytest.mark.parametrize("desc, build, code, fragment", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_are_400_and_server_keeps_serving(client, sample_files, desc, build, code, fragment):
    r = _post(client, build(sample_files))
    assert r.status_code == 400
    got_code, message = _error(r)
    assert got_code == code and fragment in message, message
    assert "\n" not in message
    _assert_still_serving(client)


def test_duplicate_field(client, sample_files):
    data = _files(sample_files, "person", "upper")
    data["steps"] = ["2", "3"]
    r = _post(client, data)
    assert r.status_code == 400 and _error(r) == ("duplicate_field", "field 'steps' is given more than once")


def test_blank_html_file_input_counts_as_absent(client, sample_files):
    # Browsers send an empty part with an empty file name for an unused <input type=file>.
    data = {**_files(sample_files, "person", "upper"), "dress": (io.BytesIO(b""), "")}
    r = _post(client, {**data, "steps": "101"})
    assert _error(r)[0] == "out_of_range"  # got past the garment rules: dress was ignored


def test_upload_limit_413(client, sample_files):
    big = (io.BytesIO(b"\0" * (3 * 1024 * 1024)), "big.png")
    r = _post(client, _files(sample_files, "person", upper=big))
    assert r.status_code == 413
    assert _error(r) == ("payload_too_large", "the request is larger than 2 MB")
    _assert_still_serving(client)


def test_unknown_route_and_method_are_json(client):
    r = client.get("/nope")
    assert r.status_code == 404 and _error(r)[0] == "not_found"
    r = client.get("/prompt")
    assert r.status_code == 405 and _error(r)[0] == "method_not_allowed"


# -- 500: processing failure without leaking internals ------------------------------------------
class _ExplodingPipeline:
    def __call__(self, *args, **kwargs):
        raise RuntimeError("CUDA error at /srv/secret/path.py line 12: device-side assert")


def test_processing_failure_is_500_without_internals(app, engine, sample_files, monkeypatch, caplog):
    monkeypatch.setattr(engine, "pipeline", _ExplodingPipeline())
    client = app.test_client()
    r = _post(client, _files(sample_files, "person", "upper", steps="1"))
    assert r.status_code == 500
    code, message = _error(r)
    assert code == "processing_failed" and message == "the try-on could not be processed"
    text = r.get_data(as_text=True)
    assert "secret" not in text and "CUDA" not in text and "RuntimeError" not in text
    assert any("processing failed" in rec.getMessage() for rec in caplog.records)  # but it is logged
    monkeypatch.undo()
    _assert_still_serving(client)
    # and the GPU lock was released: the next request runs
    ok = _post(client, _files(sample_files, "person", "shoe", steps="1", seed="1", guidance_scale="1"))
    assert ok.status_code == 200


# -- concurrency: lock, bounded queue, 503 ------------------------------------------------------
def test_concurrent_requests_are_all_answered_and_excess_refused(engine, sample_files):
    app = create_app(engine, {"QUEUE_SIZE": 2, "RETRY_AFTER": 7})
    svc = app.extensions["fastfit"]
    results: dict[int, object] = {}

    def send(seed: int) -> None:
        r = _post(app.test_client(), _files(sample_files, "person", "shoe", steps="1", seed=str(seed), guidance_scale="1"))
        results[seed] = (r.status_code, r.headers.get("X-Seed"), r.data)

    svc.gpu_lock.acquire()  # the GPU is busy: requests must queue
    try:
        threads = [threading.Thread(target=send, args=(s,)) for s in (101, 102, 103)]
        for t in threads:
            t.start()
        deadline = time.time() + 30
        while svc.waiting < 3 and time.time() < deadline:  # 1 + QUEUE_SIZE slots, all waiting
            time.sleep(0.01)
        assert svc.waiting == 3
        # the queue is full: refused at once, with Retry-After; health still answers
        c = app.test_client()
        r = _post(c, _files(sample_files, "person", "shoe", steps="1"))
        assert r.status_code == 503 and r.headers["Retry-After"] == "7"
        assert _error(r)[0] == "queue_full"
        assert c.get("/health").status_code == 200
        metrics = c.get("/metrics").get_data(as_text=True)
        assert "fastfit_queue_depth 3.0" in metrics
    finally:
        svc.gpu_lock.release()
    for t in threads:
        t.join(120)
    assert sorted(results) == [101, 102, 103]  # none lost
    for seed, (status, x_seed, data) in results.items():
        assert status == 200 and x_seed == str(seed)
        assert Image.open(io.BytesIO(data)).size == TEST_RESOLUTION
    assert svc.waiting == 0
    metrics = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'fastfit_http_requests_total{endpoint="/prompt",status="200"} 3.0' in metrics
    assert 'fastfit_http_requests_total{endpoint="/prompt",status="503"} 1.0' in metrics
    assert 'fastfit_http_request_duration_seconds_count{endpoint="/prompt"} 4.0' in metrics
    assert "fastfit_queue_depth 0.0" in metrics


def test_queue_timeout(engine, sample_files):
    app = create_app(engine, {"QUEUE_SIZE": 1, "QUEUE_TIMEOUT": 0.2})
    svc = app.extensions["fastfit"]
    with svc.gpu_lock:
        r = _post(app.test_client(), _files(sample_files, "person", "shoe"))
    assert r.status_code == 503 and "Retry-After" in r.headers and _error(r)[0] == "queue_timeout"


# -- engine loading in the background -----------------------------------------------------------
def test_ready_is_503_until_the_engine_is_loaded(engine, sample_files):
    gate = threading.Event()

    def slow_factory():
        gate.wait(30)
        return engine

    app = create_app(config={"ENGINE_FACTORY": slow_factory, "RETRY_AFTER": 3})
    c = app.test_client()
    assert c.get("/health").status_code == 200
    r = c.get("/ready")
    assert r.status_code == 503 and r.headers["Retry-After"] == "3" and _error(r)[0] == "loading"
    r = _post(c, _files(sample_files, "person", "upper"))
    assert r.status_code == 503 and _error(r)[0] == "loading"
    # validation still answers while loading
    assert _post(c, _files(sample_files, "person")).status_code == 400
    assert "fastfit_engine_ready 0.0" in c.get("/metrics").get_data(as_text=True)
    gate.set()
    app.extensions["fastfit"].loader.join(30)
    assert c.get("/ready").get_json() == {"status": "ready"}
    assert "fastfit_engine_ready 1.0" in c.get("/metrics").get_data(as_text=True)


def test_failed_engine_load(sample_files, caplog):
    def broken():
        raise FileNotFoundError("/very/secret/Models is missing unet/config.json")

    app = create_app(config={"ENGINE_FACTORY": broken})
    app.extensions["fastfit"].loader.join(10)
    c = app.test_client()
    r = c.get("/ready")
    assert r.status_code == 503 and _error(r)[0] == "engine_failed"
    assert "secret" not in r.get_data(as_text=True)
    r = _post(c, _files(sample_files, "person", "upper"))
    assert r.status_code == 503 and _error(r)[0] == "engine_failed"
    assert c.get("/health").status_code == 200
    assert any("secret" in rec.getMessage() for rec in caplog.records)  # the operator sees why


def test_default_app_uses_models_dir_env(monkeypatch, models_dir, caplog):
    """`server:app` builds the real engine from the environment, lazily (importing loads nothing)."""
    import importlib

    import server

    monkeypatch.setenv("FASTFIT_MODELS_DIR", str(models_dir))
    monkeypatch.setenv("FASTFIT_RESOLUTION", "128x192")
    monkeypatch.setenv("FASTFIT_DEVICE", "cpu")
    monkeypatch.delenv("FASTFIT_WARMUP", raising=False)  # on by default, on a CPU too (one layout)
    caplog.set_level("INFO", logger="fastfit")
    layouts = []
    from fastfit_engine.runtime.engine import FastFitEngine

    real_process = FastFitEngine.process

    def counted(self, person, garments, *args, **kwargs):
        layouts.append(tuple(garments))
        return real_process(self, person, garments, *args, **kwargs)

    monkeypatch.setattr(FastFitEngine, "process", counted)
    mod = importlib.reload(server)
    assert mod._app is None
    app = mod.app
    assert mod.app is app
    app.extensions["fastfit"].loader.join(120)
    eng = app.extensions["fastfit"].engine
    assert eng is not None and eng.resolution == (128, 192) and eng.device.type == "cpu"
    assert any(rec.getMessage().startswith("warm-up request took") for rec in caplog.records)
    assert layouts == [FastFitEngine.WARMUP_SETS[0]]  # a CPU pays one-time start-up, not per layout
    assert app.test_client().get("/ready").status_code == 200
    assert mod.create_app is not None
    np.testing.assert_equal(app.config["MAX_CONTENT_LENGTH"], 20 * 1024 * 1024)
    importlib.reload(server)


def test_peak_vram_header_when_the_engine_reports_it(app, engine, sample_files, monkeypatch):
    """On CUDA the engine reports peak VRAM; the service passes it on (rounded MB)."""
    real = engine.run

    def on_cuda(*args, **kwargs):
        result = real(*args, **kwargs)
        result.peak_vram_mb = 4915.4  # what a CUDA run would report
        return result

    monkeypatch.setattr(engine, "run", on_cuda)
    r = _post(app.test_client(), _files(sample_files, "person", "shoe", steps="1", seed="3", guidance_scale="1"))
    assert r.status_code == 200 and r.headers["X-Peak-VRAM-MB"] == "4915"


def test_steps_are_checked_once_from_the_form_to_the_scheduler(app, engine, sample_files, monkeypatch):
    """The form's numbers are parsed by the schema once; the engine and pipeline take them as they are."""
    from fastfit_engine.request import schema

    parsed, scheduled = [], []
    real_parse = schema.NumberField.parse
    scheduler_cls = type(engine.pipeline.scheduler)
    real_set_timesteps = scheduler_cls.set_timesteps

    def counting_parse(self, value):
        parsed.append((self.name, value))
        return real_parse(self, value)

    def recording_set_timesteps(self, num_inference_steps, *args, **kwargs):
        scheduled.append(num_inference_steps)
        return real_set_timesteps(self, num_inference_steps, *args, **kwargs)

    monkeypatch.setattr(schema.NumberField, "parse", counting_parse)
    monkeypatch.setattr(scheduler_cls, "set_timesteps", recording_set_timesteps)
    r = _post(app.test_client(), _files(sample_files, "person", "shoe", steps=" 1", seed="6", guidance_scale="1"))
    assert r.status_code == 200 and r.headers["X-Seed"] == "6"
    assert parsed == [("steps", " 1"), ("seed", "6"), ("guidance_scale", "1")]
    assert scheduled == [1] and type(scheduled[0]) is int


def test_server_timing_header_format():
    from fastfit_service.responses import server_timing

    assert server_timing({"pose": 0.01234, "total": 1.5}) == "pose;dur=12.3, total;dur=1500.0"
