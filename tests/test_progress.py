"""GET /progress/<request id> while a real try-on runs (real app, real threaded server, tiny models)."""
from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

from _live_server import serve
from helpers import multipart_body
from server import create_app


def _progress(url: str, rid: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"{url}/progress/{rid}", timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _until(predicate, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError("timed out")


def test_progress_names_the_stages_of_a_running_request(engine, sample_files, monkeypatch):
    app = create_app(engine, {"QUEUE_SIZE": 1})
    svc = app.extensions["fastfit"]
    real = engine.pipeline
    release = threading.Event()

    class Paused:  # the real pipeline, entered only once the test has looked
        def __getattr__(self, name):
            return getattr(real, name)

        def __call__(self, *args, **kwargs):
            assert release.wait(60)
            return real(*args, **kwargs)

    monkeypatch.setattr(engine, "pipeline", Paused())
    body, ctype = multipart_body({"person": sample_files["person"], "upper": sample_files["upper"]},
                                 {"steps": "3", "seed": "2"})
    rid = "page-0123456789abcdef"
    answers = {}
    with serve(app) as url:
        assert _progress(url, rid)[0] == 404  # unknown id: nothing to say
        req = urllib.request.Request(url + "/prompt", data=body, method="POST",
                                     headers={"Content-Type": ctype, "X-Request-ID": rid})
        svc.gpu_lock.acquire()
        worker = threading.Thread(target=lambda: answers.setdefault("r", urllib.request.urlopen(req, timeout=120).read()))
        worker.start()
        try:
            waiting = _until(lambda: (p := _progress(url, rid))[0] == 200 and p[1])
            assert waiting["state"] == "waiting" and waiting["stage"] is None
        finally:
            svc.gpu_lock.release()
        # the last stage before diffusion, named as in Server-Timing
        _until(lambda: _progress(url, rid)[1].get("stage") == "mask")
        release.set()
        steps = []
        while worker.is_alive():
            status, p = _progress(url, rid)
            if status == 200 and p["stage"] == "diffusion":
                steps.append((p["step"], p["steps"]))
            time.sleep(0.005)
        worker.join()
        status, gone = _progress(url, rid)  # the request has ended: its entry with it
        assert status == 404 and gone["error"]["code"] == "not_found"
    assert answers["r"][:8] == b"\x89PNG\r\n\x1a\n"
    assert steps and all(total == 3 and 1 <= step <= 3 for step, total in steps), steps
