"""Slow clients against the real service: bare gunicorn (our gthread worker with read deadlines)
and the real nginx front, both started by the real launcher on the tiny synthetic models.

Before the fix, four connections trickling their headers, their body, or announcing a
Content-Length they never send held all four gthread threads, and /health and /prompt hung for
as long as they stayed open (measured: no answer within 20 s). These tests fail that way with
gunicorn's plain gthread worker.
"""
from __future__ import annotations

import json
import re
import socket
import threading
import time

import pytest

from _front_helpers import ROOT, Stack, get, slow_clients
from helpers import multipart_body

HEADER_TIMEOUT = 1.0  # bare gunicorn deadlines in this test (production: 10 s and 60 s)
BODY_TIMEOUT = 1.0
FRONT_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def stack(models_dir, tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("front"), models_dir, "cpu", {
        "GUNICORN_THREADS": "4",  # the thread count of the original report
        "FASTFIT_CLIENT_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
        "FASTFIT_CLIENT_BODY_TIMEOUT": str(BODY_TIMEOUT),
        "FASTFIT_FRONT_HEADER_TIMEOUT": str(FRONT_TIMEOUT),
        "FASTFIT_FRONT_BODY_TIMEOUT": str(FRONT_TIMEOUT),
    })
    try:
        s.wait("/health", 200, 60)
        yield s
    finally:
        code = s.stop()
        assert code == 0, s.output()


def _probe(base: str, timeout: float) -> tuple[tuple, tuple]:
    health = slow_clients.timed_request(base + "/health", timeout=timeout)
    body, headers = slow_clients.small_prompt()
    prompt = slow_clients.timed_request(base + "/prompt", body, headers, timeout=timeout)
    return health, prompt


def _start(base: str, mode: str, n: int, interval: float, duration: float) -> list:
    host, port = base.removeprefix("http://").split(":")
    clients = [slow_clients.SlowClient(host, int(port), mode, interval, duration) for _ in range(n)]
    for c in clients:
        c.start()
    time.sleep(0.5)  # they hold their connections now
    return clients


@pytest.mark.parametrize("mode", ["headers", "body", "lying-length"])
def test_bare_gunicorn_answers_health_and_prompt_while_four_clients_trickle(stack, mode):
    base = stack.instances[0]
    clients = _start(base, mode, 4, 0.3, 20)  # a line / 16 bytes every 0.3 s: no per-read timeout fires
    try:
        health, prompt = _probe(base, timeout=HEADER_TIMEOUT + BODY_TIMEOUT + 4)
        # every thread was taken; the deadline frees them, so /health waits at most about that long
        assert health[0] == 200 and json.loads(health[1]) == {"status": "ok"}, health
        assert health[3] < HEADER_TIMEOUT + BODY_TIMEOUT + 1.5, health
        assert prompt[0] == 400 and json.loads(prompt[1])["error"]["code"], prompt  # the app answered
        for c in clients:
            c.join(HEADER_TIMEOUT + BODY_TIMEOUT + 3)
            assert not c.is_alive(), "the slow connection was not closed by the server"
            assert c.closed_by_server and c.status() == 408, c.answer
            assert c.body_json()["error"]["code"] == "request_timeout", c.answer
    finally:
        for c in clients:
            c.stop()


def _raw(base: str, data: bytes) -> bytes:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(data)
        return _answer(s)


def _answer(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(65536):  # until the answer is complete (nginx may linger before closing)
        out += chunk
        head, sep, body = out.partition(b"\r\n\r\n")
        length = [int(v) for k, _, v in (h.partition(b":") for h in head.split(b"\r\n")[1:])
                  if k.strip().lower() == b"content-length"]
        if sep and length and len(body) >= length[0]:
            break
    return out


def _status_and_json(raw: bytes) -> tuple[int, dict, str]:
    head, body = raw.split(b"\r\n\r\n", 1)
    return int(head.split(b" ", 2)[1]), json.loads(body), head.decode("latin-1")


def test_bare_gunicorn_protocol_errors_are_json_and_there_is_no_server_header(stack):
    base = stack.instances[0]
    cases = [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
        (b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(120)) + b"\r\n",
         431, "header_fields_too_large"),
        (b"G@T /health HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request"),
        (b"POST /prompt HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\n", 417, "expectation_failed"),
    ]
    ids = set()
    for request, status, code in cases:
        got_status, body, head = _status_and_json(_raw(base, request))
        assert (got_status, body["error"]["code"]) == (status, code), head
        assert "application/json" in head and "server:" not in head.lower(), head
        assert "gunicorn" not in json.dumps(body)
        ids |= set(re.findall(r"^X-Request-ID: ([0-9a-f]{32})\r?$", head, re.M))  # like every other answer
    assert len(ids) == len(cases)
    status, _, headers = get(base + "/health")
    assert status == 200 and "Server" not in headers


def _chunked(content_type: str, body: bytes) -> bytes:
    return (b"POST /prompt HTTP/1.1\r\nHost: x\r\nContent-Type: " + content_type.encode()
            + b"\r\nTransfer-Encoding: chunked\r\n\r\n" + body)


@pytest.mark.parametrize("content_type", ["application/json", "multipart/form-data; boundary=b"])
def test_bare_gunicorn_answers_malformed_chunked_framing_with_400(stack, content_type):
    base = stack.instances[0]
    for framing in (b"zz\r\nabc\r\n0\r\n\r\n",  # a chunk size that is not hex
                    b"2\r\nabcdef\r\n0\r\n\r\n"):  # chunk data longer than its size
        raw = _raw(base, _chunked(content_type, framing))
        status, body, head = _status_and_json(raw)
        assert (status, body) == (400, {"error": {"code": "bad_request", "message":
                                                  "the request body's chunked transfer coding is malformed"}}), raw
        assert "Connection: close" in head  # where a next request would start is unknown
    assert get(base + "/health")[0] == 200
    assert "Traceback" not in stack.output()


def test_bare_gunicorn_holds_a_chunked_json_body_to_the_upload_limit(stack):
    """A valid body followed by 28 MB of spaces: 413 as with a Content-Length, never cut off and read."""
    base = stack.instances[0]
    host, port = base.removeprefix("http://").split(":")
    valid = json.dumps({"steps": 1}).encode()
    with socket.create_connection((host, int(port)), timeout=20) as s:
        s.sendall(_chunked("application/json", b"%x\r\n%s\r\n" % (len(valid), valid)))
        piece = b" " * 2**20
        try:
            for _ in range(28):
                s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            s.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the end: the answer is already there
        answer = _answer(s)
    status, body, _ = _status_and_json(answer)
    assert status == 413 and body["error"]["code"] == "payload_too_large", answer
    # the same body in one piece, under the limit, is read whole: missing_person, not a cut body
    status, body, _ = _status_and_json(_raw(base, _chunked("application/json", b"%x\r\n%s\r\n0\r\n\r\n" % (
        len(valid) + 3000, valid + b" " * 3000))))
    assert status == 400 and body["error"]["code"] == "missing_person", body


@pytest.mark.parametrize("mode", ["headers", "body", "lying-length"])
def test_front_answers_at_once_while_sixteen_clients_trickle(stack, mode):
    clients = _start(stack.front, mode, 16, 0.3, 8)
    try:
        health, prompt = _probe(stack.front, timeout=5)
        # nginx holds slow clients in its event loop; gunicorn never sees them
        assert health[0] == 200 and health[3] < 1.0, health
        assert prompt[0] == 400 and json.loads(prompt[1])["error"]["code"], prompt  # the app answered
        assert prompt[2]["X-Content-Type-Options"] == "nosniff" and prompt[2]["Server"] == "nginx"
        if mode != "body":  # a body trickling faster than the read timeout is held by nginx, harmlessly
            for c in clients:
                c.join(FRONT_TIMEOUT + 3)
                assert c.closed_by_server, f"nginx did not close a {mode} client"
                assert c.answer == b"", c.answer  # nginx closes a slow header or body without an answer
    finally:
        for c in clients:
            c.stop()
    # the instance itself never saw a slow request
    assert not any(e["uri"] == "/prompt" and e["upstream_status"] == "408" for e in stack.access_entries())


def test_front_passes_a_large_body_buffered_on_disk(stack):
    # over nginx's 1 MB in-memory buffer: the body goes through its temp folder to the app
    boundary = "big"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="person"; filename="p.png"\r\n'
            "Content-Type: image/png\r\n\r\n").encode() + b"\x00" * 3_000_000 + f"\r\n--{boundary}--\r\n".encode()
    status, answer, headers, _ = slow_clients.timed_request(
        stack.front + "/prompt", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}, timeout=30)
    assert status == 400 and json.loads(answer)["error"]["code"] in ("no_garment", "invalid_image"), answer
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_front_errors_are_json(stack):
    cases = [
        (b"POST /prompt HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n", 413, "payload_too_large"),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431, "header_fields_too_large"),
        (b"GARBAGE\r\n\r\n", 400, "bad_request"),
        (_chunked("application/json", b"zz\r\nabc\r\n0\r\n\r\n"), 400, "bad_request"),
    ]
    for request, status, code in cases:
        got_status, body, head = _status_and_json(_raw(stack.front, request))
        assert (got_status, body["error"]["code"]) == (status, code), head
        assert "application/json" in head and "nosniff" in head and "Server: nginx\r\n" in head + "\r\n", head
    # the app's own JSON errors pass through unchanged
    status, body, headers = get(stack.front + "/nope")
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Request-ID"]


def test_front_answers_503_with_retry_after_when_every_instance_is_full(models_dir, sample_files, tmp_path):
    """nginx finds no instance with a free slot (max_conns reached) and says 502 internally; the
    README promises 503 `unavailable` with Retry-After, which is what the client retries."""
    s = Stack(tmp_path, models_dir, "cpu", {"FASTFIT_QUEUE_SIZE": "0", "FASTFIT_RETRY_AFTER": "7"})
    try:
        s.wait("/ready", 200, 120)
        body, ctype = multipart_body({"person": sample_files["person"], "bag": sample_files["bag"]},
                                     {"steps": "20", "seed": "1", "guidance_scale": "1"})
        running = {}
        first = threading.Thread(target=lambda: running.setdefault("answer", slow_clients.timed_request(
            s.front + "/prompt", body, {"Content-Type": ctype}, timeout=240)))
        first.start()
        for _ in range(200):
            if b"fastfit_inflight 1.0" in get(f"{s.front}/instances/0/metrics")[1]:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the long request never started")
        status, answer, headers, _ = slow_clients.timed_request(s.front + "/prompt", body, {"Content-Type": ctype})
        assert "answer" not in running, "the long try-on ended before the instance was seen full"
        assert status == 503 and json.loads(answer)["error"]["code"] == "unavailable", (status, answer)
        assert headers["Retry-After"] == "7" and headers["X-Content-Type-Options"] == "nosniff"
        first.join(240)
        assert running["answer"][0] == 200, running["answer"][:2]
    finally:
        s.stop()


def test_front_closes_a_stalled_body_without_an_answer_as_the_readme_says(stack):
    """nginx ends a request whose body stalls past client_body_timeout without any answer (no
    error page runs for a read timeout), so the README's front table lists no 408."""
    host, port = stack.front.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=FRONT_TIMEOUT + 5) as s:
        s.sendall(b"POST /prompt HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{\"st")
        t0 = time.monotonic()
        assert _answer(s) == b""  # closed, nothing written
        assert FRONT_TIMEOUT - 0.2 < time.monotonic() - t0 < FRONT_TIMEOUT + 2
    # the front's own answers, as the launcher renders them (from the error catalogue) and as the
    # README lists them
    from fastfit_service.nginx_front import nginx_error_locations

    rendered = nginx_error_locations("20", "10")
    pages = dict(re.findall(r'location = /_fastfit_error/\d+ \{.*?return (\d+) \'\{"error": \{"code": "(\w+)"', rendered))
    readme = (ROOT / "README.md").read_text().split("**The front.**", 1)[1].split("\n\n**", 1)[0]
    rows = {}
    for statuses, codes in re.findall(r"^\| ([\d /]+) \| (`[^|]+`) \|", readme, re.M):
        rows.update(zip(statuses.split(" / "), re.findall(r"`(\w+)`", codes)))
    assert rows == pages and "408" not in pages, (rows, pages)
