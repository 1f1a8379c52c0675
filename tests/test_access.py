"""Access control (issue 11, item 8), app side: API keys, /metrics, CORS allow-list, nosniff and
request ids, against the real app (Flask test client on the shared CPU engine) and once through
a real gunicorn (keys from a file, the request id in its log lines)."""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from flask import request

from fastfit_service import auth
from helpers import make_garment, png_bytes, stop_process
from server import create_app, default_config
from test_gunicorn import ROOT, _free_port, _get, _wait_for

KEYS = ("k-alpha-0123456789abcdef", "k-beta-0123456789abcdef", "k-gamma-0123456789abcdef")


def _app(engine, **env):
    return create_app(engine, default_config(env))


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _error(resp, status: int) -> tuple[str, str]:
    assert resp.status_code == status, resp.get_data(as_text=True)
    body = resp.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return body["error"]["code"], body["error"]["message"]


def _no_garment_post(client, headers=None):
    """A /prompt that passes authentication and stops at validation (no try-on runs)."""
    data = {"person": (io.BytesIO(png_bytes(make_garment())), "p.png")}
    return client.post("/prompt", data=data, content_type="multipart/form-data", headers=headers or {})


@pytest.fixture(scope="module")
def keyed(engine):
    return _app(engine, FASTFIT_API_KEYS=" , ".join(KEYS)).test_client()


# -- API keys ---------------------------------------------------------------------------------------
def test_without_keys_everything_is_open(engine):
    client = _app(engine).test_client()
    assert _error(_no_garment_post(client), 400)[0] == "no_garment"
    assert client.get("/metrics").status_code == 200


def test_prompt_needs_a_valid_key(keyed):
    for headers in ({}, _bearer("wrong"), {"Authorization": "Basic " + KEYS[0]}, {"Authorization": "Bearer "},
                    {"Authorization": KEYS[0]}, _bearer(KEYS[0][:-1]), _bearer(KEYS[0] + "x")):
        resp = _no_garment_post(keyed, headers)
        code, message = _error(resp, 401)
        assert code == "unauthorized" and "Authorization: Bearer <key>" in message
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert KEYS[0] not in resp.get_data(as_text=True)
    for key in KEYS:
        assert _error(_no_garment_post(keyed, _bearer(key)), 400)[0] == "no_garment"
    assert _error(_no_garment_post(keyed, {"Authorization": f"bearer  {KEYS[1]} "}), 400)[0] == "no_garment"


def test_probes_stay_open_and_metrics_is_behind_the_keys(keyed, engine):
    assert keyed.get("/health").status_code == 200 and keyed.get("/ready").status_code == 200
    assert _error(keyed.get("/metrics"), 401)[0] == "unauthorized"
    assert keyed.get("/metrics", headers=_bearer(KEYS[2])).status_code == 200
    assert _error(keyed.get("/nope"), 401)[0] == "unauthorized"  # routes are not revealed without a key
    public = _app(engine, FASTFIT_API_KEYS=KEYS[0], FASTFIT_METRICS_PUBLIC="1").test_client()
    assert public.get("/metrics").status_code == 200
    assert _error(_no_garment_post(public), 401)[0] == "unauthorized"


def test_page_and_api_description_stay_open_with_keys(keyed):
    """The page, its files, /openapi.json and the docs hold no data: a browser loads them without a
    key and the page sends the key the user types; the try-on itself still needs it."""
    page = keyed.get("/")
    assert page.status_code == 200 and b'id="apikey"' in page.data
    assert b'name="apikey"' not in page.data  # the key never travels as a form field
    assert keyed.get("/web/page.js").status_code == 200
    assert keyed.get("/openapi.json").get_json()["openapi"].startswith("3.1")
    assert keyed.get("/docs/").status_code == 200
    assert _error(_no_garment_post(keyed), 401)[0] == "unauthorized"
    assert _error(keyed.get("/docsx"), 401)[0] == "unauthorized"  # only the docs' own paths are open


def test_every_key_is_compared_in_constant_time(keyed, monkeypatch):
    calls = []
    real = auth.hmac.compare_digest

    def counting(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    assert _no_garment_post(keyed, _bearer(KEYS[0])).status_code == 400  # the first key matches ...
    assert calls == [(32, 32)] * len(KEYS)  # ... and all keys are still compared, as equal-length digests
    calls.clear()
    assert _no_garment_post(keyed, _bearer("x")).status_code == 401
    assert calls == [(32, 32)] * len(KEYS)


def test_keys_from_a_file(engine, tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# service keys\n{KEYS[0]}\n\n  {KEYS[1]}  \n")
    client = _app(engine, FASTFIT_API_KEYS_FILE=str(keys_file)).test_client()
    assert _error(_no_garment_post(client, _bearer(KEYS[1])), 400)[0] == "no_garment"
    assert _no_garment_post(client, _bearer("# service keys")).status_code == 401
    with pytest.raises(RuntimeError, match="FASTFIT_API_KEYS_FILE .* cannot be read"):
        _app(engine, FASTFIT_API_KEYS_FILE=str(tmp_path / "missing"))
    (tmp_path / "empty").write_text("# nothing yet\n")
    with pytest.raises(RuntimeError, match="holds no key"):
        _app(engine, FASTFIT_API_KEYS_FILE=str(tmp_path / "empty"))


# -- headers on every response ------------------------------------------------------------------------
def test_nosniff_and_request_id_on_every_response(keyed):
    responses = [keyed.get("/health"), keyed.get("/metrics"), _no_garment_post(keyed),
                 _no_garment_post(keyed, _bearer(KEYS[0])), keyed.get("/health", headers={"X-Request-ID": "x" * 65})]
    ids = set()
    for resp in responses:
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["X-Request-ID"]), resp.headers
        ids.add(resp.headers["X-Request-ID"])
    assert len(ids) == len(responses)  # a fresh id per request
    for sane in ("abc-123", "0f8e:trace.7_x", "A" * 64):
        assert keyed.get("/health", headers={"X-Request-ID": sane}).headers["X-Request-ID"] == sane
    for insane in ("has space", "semi;colon", "<script>", "A" * 65, ""):  # no answer echoes more than 64
        got = keyed.get("/health", headers={"X-Request-ID": insane}).headers["X-Request-ID"]
        assert got != insane and re.fullmatch(r"[0-9a-f]{32}", got)


def test_request_id_reaches_the_log_lines(keyed, caplog):
    from fastfit_service.security import RequestIdFilter

    caplog.handler.addFilter(RequestIdFilter())
    with caplog.at_level("INFO", logger="fastfit"):
        resp = keyed.get("/metrics", headers={"X-Request-ID": "req-42"})
    assert resp.status_code == 401
    refused = [r for r in caplog.records if "refused GET /metrics: missing API key" in r.getMessage()]
    assert [r.request_id for r in refused] == ["req-42"]


def test_client_text_in_log_lines_is_escaped(engine, caplog):
    """A newline in the path cannot start a forged line; nor can an unhandled error's line."""
    app = _app(engine, FASTFIT_API_KEYS=KEYS[0])
    keyed = app.test_client()
    forged = "/x%0a%5b2026-01-01%2000%3a00%3a00%20%2b0000%5d%20%5bCRITICAL%5d%20FORGED%1b[2J"  # the URL

    @app.before_request
    def _fail():  # an unhandled error (none of the real routes has one left)
        if request.path.startswith("/fail"):
            raise RuntimeError("boom")

    with caplog.at_level("INFO", logger="fastfit"):
        assert _error(keyed.get(forged), 401)[0] == "unauthorized"
        assert _error(keyed.get("/fail" + forged, headers=_bearer(KEYS[0])), 500)[0] == "internal_error"
    messages = [r.getMessage() for r in caplog.records]
    escaped = "/x\\n[2026-01-01 00:00:00 +0000] [CRITICAL] FORGED\\x1b[2J"
    assert f"refused GET {escaped}: missing API key" in messages, messages
    assert f"unhandled error on GET /fail{escaped}" in messages, messages
    assert not any("\n" in m or "\x1b" in m for m in messages), messages
    from fastfit_service.security import loggable

    assert loggable("a\\b\u2028" + "z" * 300) == "a\\\\b\\u2028" + "z" * 196 + "..."


def test_page_and_docs_forbid_framing_and_inline_script(keyed):
    for path in ("/", "/docs/", "/openapi.json", "/health"):
        resp = keyed.get(path)
        assert resp.status_code == 200, path
        csp = dict(d.strip().split(" ", 1) for d in resp.headers["Content-Security-Policy"].split(";"))
        assert csp["default-src"] == "'self'" and csp["frame-ancestors"] == "'none'", csp
        assert not any("unsafe" in v for v in csp.values()), csp  # no inline script, no eval
        assert resp.headers["X-Frame-Options"] == "DENY"
    for page in ("/", "/docs/"):
        assert "<script>" not in keyed.get(page).get_data(as_text=True)  # every script is a file


def test_metrics_content_type_names_its_charset_once(keyed):
    resp = keyed.get("/metrics", headers=_bearer(KEYS[0]))
    assert resp.headers["Content-Type"] == "text/plain; version=1.0.0; charset=utf-8"


# -- CORS ---------------------------------------------------------------------------------------------
SHOP = "https://shop.example"


@pytest.fixture(scope="module")
def cors(engine):
    return _app(engine, FASTFIT_API_KEYS=KEYS[0], FASTFIT_CORS_ORIGINS=f"{SHOP}, http://localhost:3000").test_client()


def test_cors_preflight_is_answered_for_listed_origins(cors):
    resp = cors.options("/prompt", headers={"Origin": SHOP, "Access-Control-Request-Method": "POST",
                                            "Access-Control-Request-Headers": "authorization, content-type"})
    assert resp.status_code == 200  # a preflight carries no key and is still answered
    assert resp.headers["Access-Control-Allow-Origin"] == SHOP
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    assert {"authorization", "content-type"} <= {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
    assert resp.headers["Access-Control-Max-Age"] == "600"
    assert "Access-Control-Allow-Credentials" not in resp.headers


def test_cors_headers_on_answers_only_for_listed_origins(cors):
    resp = _no_garment_post(cors, {**_bearer(KEYS[0]), "Origin": SHOP})
    assert resp.status_code == 400 and resp.headers["Access-Control-Allow-Origin"] == SHOP
    exposed = {h.strip().lower() for h in resp.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"x-seed", "x-request-id", "retry-after"} <= exposed
    assert "Origin" in resp.headers.get("Vary", "")
    denied = _no_garment_post(cors, {"Origin": SHOP})  # a 401 still tells the page why
    assert denied.status_code == 401 and denied.headers["Access-Control-Allow-Origin"] == SHOP
    for other in ("https://evil.example", "https://shop.example.evil", "http://shop.example"):
        resp = cors.options("/prompt", headers={"Origin": other, "Access-Control-Request-Method": "POST"})
        assert "Access-Control-Allow-Origin" not in resp.headers, other
        assert "Access-Control-Allow-Origin" not in cors.get("/health", headers={"Origin": other}).headers


def test_one_listed_origin_still_varies_by_origin(engine):
    """With one origin flask-cors sends it as a constant, yet other origins get no CORS header:
    the answer depends on Origin, and a shared cache must know (Vary: Origin, once)."""
    one = _app(engine, FASTFIT_CORS_ORIGINS=SHOP).test_client()
    answers = [one.get("/health", headers={"Origin": SHOP}), one.get("/health", headers={"Origin": "https://evil.example"}),
               one.get("/health"), one.options("/prompt", headers={"Origin": SHOP, "Access-Control-Request-Method": "POST"}),
               _no_garment_post(one, {"Origin": SHOP})]
    for resp in answers:
        assert resp.headers.getlist("Vary") == ["Origin"], resp.headers
    assert answers[0].headers["Access-Control-Allow-Origin"] == SHOP and "Access-Control-Allow-Origin" not in answers[1].headers
    assert "Vary" not in _app(engine).test_client().get("/health", headers={"Origin": SHOP}).headers  # no CORS: no Vary
    # any origin: a literal `*`, the same for every caller, never the caller's Origin echoed back
    star = _app(engine, FASTFIT_CORS_ORIGINS="*").test_client()
    for origin in (SHOP, "https://" + "x" * 200 + ".example"):
        for resp in (star.get("/health", headers={"Origin": origin}),
                     star.options("/prompt", headers={"Origin": origin, "Access-Control-Request-Method": "POST"})):
            assert resp.headers["Access-Control-Allow-Origin"] == "*" and "Vary" not in resp.headers, resp.headers


def test_no_cors_without_origins_and_bad_origins_refused(engine):
    client = _app(engine).test_client()
    resp = client.options("/prompt", headers={"Origin": SHOP, "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in resp.headers
    for bad in ("shop.example", "https://shop.example/path", "https://*.example", "ftp://shop.example"):
        with pytest.raises(ValueError, match="FASTFIT_CORS_ORIGINS"):
            _app(engine, FASTFIT_CORS_ORIGINS=bad)


# -- through a real gunicorn --------------------------------------------------------------------------
def _request(url: str, headers: dict[str, str]) -> tuple[int, bytes, dict]:
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def test_gunicorn_enforces_keys_and_logs_request_ids(models_dir, tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text(KEYS[1] + "\n")
    port = _free_port()
    env = {**os.environ, "GUNICORN_BIND": f"127.0.0.1:{port}", "FASTFIT_MODELS_DIR": str(models_dir),
           "FASTFIT_RESOLUTION": "128x192", "FASTFIT_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "FASTFIT_WARMUP": "0",
           "FASTFIT_API_KEYS_FILE": str(keys_file), "GUNICORN_ACCESSLOG": "-"}
    log = open(tmp_path / "gunicorn.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "server:app"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(base + "/health", 200, time.time() + 90, proc)  # the probe needs no key
        status, body, headers = _request(base + "/metrics", {"X-Request-ID": "probe-401"})
        assert status == 401 and json.loads(body)["error"]["code"] == "unauthorized"
        assert headers["WWW-Authenticate"].startswith("Bearer") and headers["X-Content-Type-Options"] == "nosniff"
        assert headers["X-Request-ID"] == "probe-401"
        status, body, headers = _request(base + "/metrics", {**_bearer(KEYS[1]), "X-Request-ID": "probe-200"})
        assert status == 200 and b"fastfit_http_requests_total" in body and headers["X-Request-ID"] == "probe-200"
        assert _get(base + "/health")[0] == 200
        # the forged line, and control bytes in a header: nothing a client sends starts a line
        status, _, _ = _request(base + "/x%0a%5b2026-01-01%2000%3a00%3a00%20%2b0000%5d%20%5bCRITICAL%5d%20FORGED",
                                {"X-Request-ID": "forge", "User-Agent": "ua\x85[2026-01-01] [CRITICAL] UA\x9b[2J"})
        assert status == 401
    finally:
        _, output = stop_process(proc, log)
    assert not re.search(r"^\[2026-01-01", output, re.M) and "\x85" not in output and "\x9b" not in output, output
    assert r"[forge] fastfit.server: refused GET /x\n[2026-01-01 00:00:00 +0000] [CRITICAL] FORGED: missing API key" in output
    assert r'"ua\x85[2026-01-01] [CRITICAL] UA\x9b[2J" forge' in output, output
    assert re.search(r"\[probe-401\] fastfit\.server: refused GET /metrics: missing API key", output), output
    assert re.search(r'"GET /metrics HTTP/1\.1" 401 .* probe-401$', output, re.M), output
    assert re.search(r'"GET /metrics HTTP/1\.1" 200 .* probe-200$', output, re.M), output
    assert KEYS[1] not in output
