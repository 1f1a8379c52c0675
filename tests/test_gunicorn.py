"""The production entry point: a real gunicorn process over loopback, with the synthetic models."""
from __future__ import annotations

import io
import json
import os
import runpy
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from PIL import Image

from helpers import multipart_body, stop_process

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def _wait_for(url: str, status: int, deadline: float, proc: subprocess.Popen) -> None:
    while time.time() < deadline:
        assert proc.poll() is None, "gunicorn exited early"
        try:
            if _get(url, timeout=2)[0] == status:
                return
        except (urllib.error.URLError, ConnectionError, socket.timeout):
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer {status} in time")


def test_gunicorn_serves_health_ready_and_prompt(models_dir, sample_files, tmp_path):
    port = _free_port()
    env = {
        **os.environ,
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "GUNICORN_ACCESSLOG": "-",
        "FASTFIT_MODELS_DIR": str(models_dir),
        "FASTFIT_RESOLUTION": "128x192",
        "FASTFIT_DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
        "FASTFIT_WARMUP": "1",
    }
    log = open(tmp_path / "gunicorn.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "server:app"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(base + "/health", 200, time.time() + 90, proc)
        status, body, _ = _get(base + "/health")
        assert json.loads(body) == {"status": "ok"}
        _wait_for(base + "/ready", 200, time.time() + 180, proc)

        body, ctype = multipart_body({"person": sample_files["person"], "bag": sample_files["bag"]},
                                 {"steps": "1", "seed": "5", "guidance_scale": "1"})
        req = urllib.request.Request(base + "/prompt", data=body, method="POST", headers={"Content-Type": ctype})
        with urllib.request.urlopen(req, timeout=300) as r:
            assert r.status == 200 and r.headers["Content-Type"] == "image/png"
            assert r.headers["X-Seed"] == "5" and "diffusion;dur=" in r.headers["Server-Timing"]
            img = Image.open(io.BytesIO(r.read()))
            assert img.size == (128, 192)

        # a bad request over the wire: JSON error, server still up
        body, ctype = multipart_body({"person": sample_files["person"]}, {})
        req = urllib.request.Request(base + "/prompt", data=body, method="POST", headers={"Content-Type": ctype})
        try:
            urllib.request.urlopen(req, timeout=30)
            raise AssertionError("expected 400")
        except urllib.error.HTTPError as e:
            assert e.code == 400 and json.loads(e.read())["error"]["code"] == "no_garment"
        status, text, _ = _get(base + "/metrics")
        assert status == 200 and b'fastfit_http_requests_total{endpoint="/prompt",status="200"} 1.0' in text
    finally:
        code, output = stop_process(proc, log)  # graceful shutdown
    assert code == 0, output
    assert "Traceback" not in output, output
    assert "fastfit.server: warm-up request took" in output
    assert "fastfit.server: engine ready" in output  # the app's own log lines reach the error log
    assert '"POST /prompt HTTP/1.1" 200' in output  # access log


def test_config_is_one_worker_threads_and_env(monkeypatch):
    monkeypatch.setenv("GUNICORN_BIND", "127.0.0.1:9999")
    monkeypatch.setenv("GUNICORN_THREADS", "6")
    cfg = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert cfg["bind"] == "127.0.0.1:9999" and cfg["threads"] == 6
    assert cfg["workers"] == 1 and cfg["worker_class"] == "fastfit_service.gunicorn_worker.DeadlineThreadWorker"
    assert cfg["preload_app"] is False  # models (and CUDA) only ever in the worker
    assert cfg["timeout"] >= 120 and cfg["graceful_timeout"] >= 30
    monkeypatch.delenv("GUNICORN_BIND")
    monkeypatch.setenv("PORT", "7000")
    monkeypatch.delenv("GUNICORN_THREADS")
    cfg = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert cfg["bind"] == "127.0.0.1:7000"  # loopback unless told: the front faces clients
    from server import default_config

    assert cfg["threads"] >= default_config()["QUEUE_SIZE"] + 2  # a thread left for /health when busy

