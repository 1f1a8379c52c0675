"""Production hardening of the service, against the real app served by a real WSGI server thread
(werkzeug) on the shared CPU engine: admission before decoding, decode-size limits, deadlines,
cancellation of abandoned requests, the stuck-engine watchdog, NaN/Inf outputs and draining.

Slow or stuck GPU calls are made with a forward pre-hook on the real UNet's input convolution (a
sleep, or a wait on an event); the pipeline itself is never replaced.
"""
from __future__ import annotations

import contextlib
import http.client
import io
import json
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from werkzeug.serving import make_server

from fastfit_engine.request.images import load_image
from helpers import make_garment, make_person, multipart_body, png_bytes
from server import create_app


# -- a real server over loopback ----------------------------------------------------------------
class Served:
    def __init__(self, app) -> None:
        self.app = app
        self.svc = app.extensions["fastfit"]
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def get(self, path: str) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            body = r.read()
            return r.status, (json.loads(body) if r.getheader("Content-Type", "").startswith("application/json") else body)
        finally:
            conn.close()

    def metric(self, name: str) -> float:
        status, text = self.get("/metrics")
        for line in text.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"{name} not in /metrics")

    def post(self, files: dict[str, bytes], fields: dict[str, str], timeout: float = 120) -> tuple[int, dict, dict]:
        body, ctype = multipart_body(files, fields)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("POST", "/prompt", body=body, headers={"Content-Type": ctype})
            r = conn.getresponse()
            data = r.read()
            is_json = r.getheader("Content-Type", "").startswith("application/json")
            return r.status, (json.loads(data) if is_json else data), dict(r.getheaders())
        finally:
            conn.close()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def serve(engine) -> Iterator:
    servers: list[Served] = []

    def start(**config) -> Served:
        s = Served(create_app(engine, {"QUEUE_SIZE": 1, "RETRY_AFTER": 5, **config}))
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()


@pytest.fixture(scope="module")
def inputs() -> dict[str, bytes]:
    return {"person": png_bytes(make_person()), "shoe": png_bytes(make_garment((90, 50, 30), 60, 80))}


@contextlib.contextmanager
def unet_pre_hook(engine, hook) -> Iterator[None]:
    """Run `hook` at the start of every denoising step of the real UNet (its `conv_in`)."""
    handle = engine.pipeline.unet.conv_in.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _wait(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _error(body) -> str:
    assert isinstance(body, dict) and set(body) == {"error"}, body
    return body["error"]["code"]


def _cache_is_free(engine) -> bool:
    cache = engine.pipeline.unet.kv_cache
    return cache.request is None and cache.nbytes() == 0


# -- admission before decoding -------------------------------------------------------------------
def test_refused_requests_decode_nothing(serve, inputs, monkeypatch):
    """A request refused for a full queue pays for no image decode (it used to decode all five)."""
    loads = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: (loads.append(self.size), real_load(self))[1])
    s = serve(QUEUE_SIZE=0)
    assert s.svc.slots.acquire(blocking=False)  # the one slot is taken: the GPU is busy
    try:
        status, body, headers = s.post(inputs, {"steps": "1"})
    finally:
        s.svc.slots.release()
    assert status == 503 and _error(body) == "queue_full" and headers["Retry-After"] == "5"
    assert loads == []
    s.svc.start_drain()
    status, body, _ = s.post(inputs, {"steps": "1"})
    assert status == 503 and _error(body) == "draining" and loads == []


def test_large_uploads_are_decoded_only_as_large_as_the_model_needs(engine):
    """A 2000x2500 JPEG is decoded at 1/4 scale (draft mode), a 2000x2500 PNG box-reduced at once;
    both still cover twice the model's working size, so the LANCZOS resize after is unchanged in kind."""
    rng = np.random.default_rng(0)
    big = Image.fromarray(rng.integers(0, 256, (50, 40, 3), dtype=np.uint8)).resize((2000, 2500), Image.Resampling.NEAREST)
    jpeg = io.BytesIO()
    big.save(jpeg, format="JPEG", quality=80)
    loads = []
    real_load = ImageFile.ImageFile.load
    try:
        ImageFile.ImageFile.load = lambda self: (loads.append(self.size), real_load(self))[1]
        png = io.BytesIO()
        big.save(png, format="PNG", compress_level=1)
        tryon = engine.request(jpeg.getvalue(), {"upper": png.getvalue()})
        person, garments = tryon.person, {g.slot: g.image for g in tryon.garments}
    finally:
        ImageFile.ImageFile.load = real_load
    w, h = engine.resolution  # 192x256: 2x cover is 384x512 after the 3:4 crop
    assert loads[0] == (500, 625)  # JPEG: the largest DCT scale (1/4) that keeps 384x512 after the crop
    assert person.size == (500, 625)
    assert loads[1] == (2000, 2500)  # PNG: decoded in full (no reduced decoding) ...
    assert garments["upper"].size == (500, 625)  # ... and box-reduced by 4 at once (2x cover: 384x512)
    # A small image is left as it is (bit for bit): the test photos and phone-size inputs never change.
    small = make_person()
    assert np.array_equal(np.asarray(engine.request(png_bytes(small), {"upper": png_bytes(small)}).person), np.asarray(small))
    # EXIF rotation: the scale is chosen for the upright (landscape) image, whose 3:4 crop is
    # 1500x2000: 1/4 would leave 375x500 < 384x512, so 1/2, then turned upright.
    exif = Image.Exif()
    exif[0x0112] = 6
    tall = io.BytesIO()
    big.save(tall, format="JPEG", exif=exif.tobytes())
    rotated = load_image(tall.getvalue(), cover=(w, h), crop_aspect=3 / 4)
    assert rotated.size == (1250, 1000)


def test_pixel_budget_is_checked_before_decoding(serve, inputs, monkeypatch):
    loads = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: (loads.append(self.size), real_load(self))[1])
    s = serve(MAX_REQUEST_PIXELS=100_000)  # the 300x400 person alone is 120,000
    status, body, _ = s.post(inputs, {"steps": "1"})
    assert status == 400 and _error(body) == "pixel_budget_exceeded", body
    assert "the limit is 100000 per request" in body["error"]["message"]
    assert loads == []


# -- deadlines and abandoned requests ------------------------------------------------------------
def test_abandoned_request_stops_within_a_few_steps(serve, engine, inputs):
    """A client that closes its connection mid-request frees the GPU: its 100 steps stop early."""
    s = serve()
    calls = []
    with unet_pre_hook(engine, lambda *a: (calls.append(1), time.sleep(0.02))[1]):
        body, ctype = multipart_body(inputs, {"steps": "100", "guidance_scale": "1", "seed": "1"})
        sock = socket.create_connection(("127.0.0.1", s.port))
        sock.sendall(f"POST /prompt HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        _wait(lambda: s.metric("fastfit_denoising_steps_total") >= 2, what="the first steps")
        assert len(calls) >= 2
        sock.close()  # the client gives up
        _wait(lambda: s.svc.busy_since is None and not s.svc.gpu_lock.locked(), what="the GPU to be free")
    steps = s.metric("fastfit_denoising_steps_total")
    assert 2 <= steps < 20 and len(calls) <= steps + 1, (steps, len(calls))  # stops within a step of the close
    assert s.metric("fastfit_requests_cancelled_total") == 1
    assert _cache_is_free(engine)
    status, body, _ = s.post(inputs, {"steps": "1", "guidance_scale": "1"})
    assert status == 200


def test_deadline_gives_504_and_frees_the_gpu(serve, engine, inputs):
    s = serve(REQUEST_TIMEOUT=1.0)
    with unet_pre_hook(engine, lambda *a: time.sleep(0.05)):
        t0 = time.time()
        status, body, _ = s.post(inputs, {"steps": "100", "guidance_scale": "1"})
        elapsed = time.time() - t0
    assert status == 504 and _error(body) == "deadline_exceeded", body
    assert "within its 1 s limit" in body["error"]["message"]
    assert elapsed < 20  # 100 slowed steps take 5 s or more
    assert s.metric("fastfit_requests_expired_total") == 1
    assert s.metric("fastfit_denoising_steps_total") < 100
    assert _cache_is_free(engine) and not s.svc.gpu_lock.locked()
    status, _, _ = s.post(inputs, {"steps": "1", "guidance_scale": "1"})
    assert status == 200


def test_a_queued_request_whose_deadline_passes_is_504(serve, inputs):
    s = serve(REQUEST_TIMEOUT=0.5, QUEUE_TIMEOUT=30)
    with s.svc.gpu_lock:
        status, body, _ = s.post(inputs, {"steps": "1"})
    assert status == 504 and _error(body) == "deadline_exceeded"
    assert s.metric("fastfit_requests_expired_total") == 1 and s.svc.waiting == 0


# -- watchdog -------------------------------------------------------------------------------------
def test_a_stuck_gpu_call_fails_health_and_readiness(serve, engine, inputs):
    s = serve(STUCK_TIMEOUT=0.5)
    release = threading.Event()
    result: dict = {}
    stalled = []
    with unet_pre_hook(engine, lambda *a: (stalled.append(1), release.wait(60))[0]):
        t = threading.Thread(target=lambda: result.update(r=s.post(inputs, {"steps": "1", "guidance_scale": "1"})))
        t.start()
        try:
            _wait(lambda: s.get("/health")[0] == 503, what="/health to fail")
            status, body = s.get("/health")
            assert _error(body) == "engine_stuck"
            status, body = s.get("/ready")
            assert status == 503 and _error(body) == "engine_stuck"
            assert s.metric("fastfit_engine_stuck") == 1
            status, body, _ = s.post(inputs, {"steps": "1"})  # refused at once, not queued
            assert status == 503 and _error(body) == "engine_stuck"
        finally:
            release.set()
            t.join(60)
    assert result["r"][0] == 200  # it was slow, not dead: the result is delivered
    assert stalled, "the hook never ran"
    assert s.get("/health")[0] == 200 and s.get("/ready")[0] == 200
    assert s.metric("fastfit_engine_stuck") == 0


# -- NaN / Inf ------------------------------------------------------------------------------------
def test_non_finite_output_is_a_500_with_its_own_code(serve, engine, inputs):
    s = serve()
    bias = engine.pipeline.unet.conv_out.bias
    saved = bias.detach().clone()
    with torch.no_grad():
        bias[0] = float("nan")  # one corrupt weight: before this check the answer was a 200 PNG
    try:
        status, body, _ = s.post(inputs, {"steps": "1", "guidance_scale": "1"})
    finally:
        with torch.no_grad():
            bias.copy_(saved)
    assert status == 500 and _error(body) == "non_finite_output"
    assert s.metric("fastfit_non_finite_outputs_total") == 1
    assert s.post(inputs, {"steps": "1", "guidance_scale": "1"})[0] == 200


def test_a_model_with_nan_weights_is_not_ready(models_dir, tmp_path, serve):
    """NaN written into the UNet safetensors: the warm-up catches it and /ready says so."""
    from safetensors.torch import load_file, save_file

    root = tmp_path / "Models"
    shutil.copytree(models_dir, root, symlinks=True)
    (unet_file,) = (root / "FastFit-MR-1024").rglob("unet/*.safetensors")
    tensors = load_file(unet_file)
    name = next(k for k in tensors if k.endswith("conv_out.bias"))
    tensors[name][:] = float("nan")
    save_file(tensors, unet_file)
    app = create_app(config={"MODELS_DIR": str(root), "DEVICE": "cpu", "RESOLUTION": "128x192", "WARMUP": True})
    svc = app.extensions["fastfit"]
    svc.loader.join(180)
    c = app.test_client()
    r = c.get("/ready")
    assert r.status_code == 503 and r.get_json()["error"]["code"] == "non_finite_output"
    assert "fastfit_non_finite_outputs_total 1.0" in c.get("/metrics").get_data(as_text=True)


# -- draining -------------------------------------------------------------------------------------
def test_sigterm_handler_puts_the_app_into_draining(serve, inputs):
    s = serve()
    seen = []
    previous = signal.signal(signal.SIGUSR2, lambda sig, frame: seen.append(sig))
    try:
        from fastfit_service.admission import drain_on_signal

        drain_on_signal(s.app, signal.SIGUSR2)
        signal.raise_signal(signal.SIGUSR2)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert seen == [signal.SIGUSR2]  # the server's own handler still runs
    status, body = s.get("/ready")
    assert status == 503 and _error(body) == "draining"
    assert s.get("/health")[0] == 200  # alive: the running request finishes
    status, body, headers = s.post(inputs, {"steps": "1"})
    assert status == 503 and _error(body) == "draining" and headers["Retry-After"] == "5"
    assert s.metric("fastfit_draining") == 1
