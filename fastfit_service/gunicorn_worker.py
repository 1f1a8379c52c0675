"""gunicorn's threaded worker with read deadlines, JSON error answers and no `Server` header.

    gunicorn -c gunicorn.conf.py server:app      (gunicorn.conf.py selects this worker class)

Why: gunicorn's gthread worker gives each connection to one of a few threads, which then reads
the request line, the headers and (through the app) the body from a blocking socket with no
timeout. Four connections that trickle their headers one line every few seconds, trickle the
body, or announce a Content-Length they never send held all four threads of the service, and
`/health` and `/prompt` hung for as long as those connections stayed open.

The real fix for slow clients is the buffering front (nginx, `deploy/nginx/`), which reads the
whole request before gunicorn sees it. This worker makes the bare service degrade gracefully too:

- the request line and headers must arrive within `FASTFIT_CLIENT_HEADER_TIMEOUT` seconds (10)
  and the body within `FASTFIT_CLIENT_BODY_TIMEOUT` seconds (60) after the headers, as a whole,
  not per read (a per-read timeout lets a client trickle one byte at a time forever); a client
  that misses its deadline gets `408 {"error": {"code": "request_timeout", ...}}` and its
  connection is closed, and the thread is free again;
- a new connection that has sent nothing holds a thread for at most 0.5 s (gunicorn: 5 s)
  before it goes back to the poller, which holds idle connections without a thread;
- gunicorn's own answers to malformed requests (400, 414, 431, ...), which are HTML, are
  written as the JSON errors the rest of the API uses, with an `X-Request-ID` like every answer;
- a body whose chunked transfer coding is malformed (a chunk size that is not hex, chunk data
  longer than its size, a cut body) is a 400 `bad_request` from the app, not an unhandled
  gunicorn exception (500), and its connection is closed (where the next request starts is unknown);
- responses carry no `Server: gunicorn` header;
- the access log escapes control characters in what a client sent (a User-Agent or Referer may
  hold bytes such as 0x85, a line break to some log readers, or 0x9b, a terminal escape), as
  the service's own log lines do (security.loggable); gunicorn itself escapes only quotes.

With slow clients holding threads, `/health` went from no answer at all to an answer at the
header deadline (bench/README.md, "Slow clients", has the measurement).

This relies on two gunicorn internals (the parser's `SocketUnreader` and the gthread module's
wait-for-data constant), so gunicorn is pinned in constraints.txt and tests/test_front.py checks
the behaviour end to end.
"""
from __future__ import annotations

import json
import re
import socket
import time
from typing import Any

import gunicorn.glogging as glogging
import gunicorn.http.message as gunicorn_message
import gunicorn.http.parser as gunicorn_parser
import gunicorn.http.wsgi as gunicorn_wsgi
import gunicorn.workers.gthread as gthread
from gunicorn.http.body import ChunkedReader
from gunicorn.http.errors import NoMoreData, ParseException
from gunicorn.http.unreader import SocketUnreader
from werkzeug.exceptions import BadRequest, RequestTimeout

from fastfit_engine import settings
from fastfit_engine.errors import transport_errors

from .security import REQUEST_ID_HEADER, request_id_from

# How long a thread waits for the first bytes of a new connection before handing it back to the
# poller (gunicorn's default is 5 s, long enough for four silent connections to block /health).
FIRST_DATA_WAIT_S = 0.5


def header_timeout() -> float:
    return settings.read("FASTFIT_CLIENT_HEADER_TIMEOUT")


def body_timeout() -> float:
    return settings.read("FASTFIT_CLIENT_BODY_TIMEOUT")


class ClientTooSlow(RequestTimeout):
    """The request did not arrive before its deadline: 408 (a werkzeug HTTPException, so the
    Flask app answers it as JSON when it happens while the app reads the body)."""

    def __init__(self, what: str, seconds: float) -> None:
        super().__init__(f"the request {what} did not arrive within {seconds:g} s")


class DeadlineUnreader(SocketUnreader):
    """gunicorn's socket reader with one deadline for the headers and one for the body.

    The header clock starts at the first read of a request; `start_body` starts the body clock;
    `reset` (after each request) makes the next read start a new header clock.
    """

    def __init__(self, sock: socket.socket, max_chunk: int = 8192) -> None:
        super().__init__(sock, max_chunk)
        self.deadline: float | None = None
        self.phase = "headers"
        self.limit = header_timeout()
        self.timed_out = False

    def start_body(self) -> None:
        self.phase, self.limit = "body", body_timeout()
        self.deadline = time.monotonic() + self.limit

    def reset(self) -> None:
        self.deadline, self.phase, self.limit = None, "headers", header_timeout()

    def chunk(self, size_hint: int | None = None) -> bytes:
        if self.deadline is None:
            self.deadline = time.monotonic() + self.limit
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            self.timed_out = True
            raise ClientTooSlow(self.phase, self.limit)
        prior = self.sock.gettimeout()
        self.sock.settimeout(remaining if prior is None else min(prior, remaining))
        try:
            return super().chunk(size_hint)
        except (socket.timeout, TimeoutError):
            if time.monotonic() < self.deadline and prior is not None:
                raise  # the caller's own (shorter) timeout, e.g. gunicorn's keep-alive drain
            self.timed_out = True
            raise ClientTooSlow(self.phase, self.limit) from None
        finally:
            try:
                self.sock.settimeout(prior)
            except OSError:
                pass


class MalformedChunkedBody(BadRequest):
    """The chunked framing of the body is broken: 400 (a werkzeug HTTPException, so the Flask app
    answers it as JSON while it reads the body)."""

    description = "the request body's chunked transfer coding is malformed"


class StrictChunkedReader(ChunkedReader):
    """gunicorn's chunked body reader; a framing error reaches the app as a 400 and closes the
    connection after the answer."""

    def read(self, size: int) -> bytes:
        try:
            return super().read(size)
        except (ParseException, NoMoreData):
            self.req.must_close = True
            raise MalformedChunkedBody() from None


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class EscapingAtoms(glogging.SafeAtoms):
    """gunicorn's access log values with control characters written as `\\xNN` / `\\uNNNN`."""

    def __init__(self, atoms: dict[str, Any]) -> None:
        super().__init__(atoms)
        for key, value in self.items():
            if isinstance(value, str):
                self[key] = _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), value)


class EscapingLogger(glogging.Logger):
    """gunicorn's logger whose access lines escape control characters (gunicorn.conf.py selects it)."""

    atoms_wrapper_class = EscapingAtoms


class _NoServerHeaderResponse(gunicorn_wsgi.Response):
    def default_headers(self) -> list[str]:
        return [h for h in super().default_headers() if not h.lower().startswith("server:")]


class _CapturedSocket:
    """Collects what gunicorn's error writer would send, so it can be re-written as JSON."""

    def __init__(self) -> None:
        self.data = b""

    def gettimeout(self) -> float:
        return 0.0

    def setblocking(self, flag: bool) -> None:  # noqa: ARG002 - socket API
        pass

    def sendall(self, data: bytes) -> None:
        self.data += data

    send = sendall


# the codes this worker answers before the app, from the error catalogue
_ERROR_CODES = {status: (c.code, c.message) for status, c in transport_errors("gunicorn").items()}


def json_error_bytes(status: int, reason: str, code: str, message: str, request_id: str) -> bytes:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n"
            f"{REQUEST_ID_HEADER}: {request_id}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


class DeadlineThreadWorker(gthread.ThreadWorker):
    """gthread with request read deadlines and JSON answers to protocol errors (see above)."""

    def init_process(self) -> None:
        # Worker-process-wide switches, made after the fork so the master is untouched.
        gunicorn_parser.SocketUnreader = DeadlineUnreader
        gunicorn_message.ChunkedReader = StrictChunkedReader
        gunicorn_wsgi.Response = _NoServerHeaderResponse
        gthread.DEFAULT_WORKER_DATA_TIMEOUT = FIRST_DATA_WAIT_S
        super().init_process()

    @staticmethod
    def _unreader(conn: Any) -> DeadlineUnreader | None:
        unreader = getattr(getattr(conn, "parser", None), "unreader", None)
        return unreader if isinstance(unreader, DeadlineUnreader) else None

    def handle(self, conn: Any) -> Any:
        try:
            return super().handle(conn)
        finally:
            unreader = self._unreader(conn)
            if unreader is not None:
                unreader.reset()

    def handle_request(self, req: Any, conn: Any) -> Any:
        unreader = self._unreader(conn)
        if unreader is not None:
            unreader.start_body()
        return super().handle_request(req, conn)

    def _keepalive_after(self, conn: Any, keepalive: bool) -> bool:
        unreader = self._unreader(conn)
        if unreader is not None and unreader.timed_out:
            return False  # a client that missed its deadline is not kept
        return super()._keepalive_after(conn, keepalive)

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        # the client's id when its headers were read and it is sane, else a new one (security.py)
        sent = [v for k, v in getattr(req, "headers", None) or () if k == REQUEST_ID_HEADER.upper()]
        request_id = request_id_from(sent[0] if sent else None)
        if isinstance(exc, ClientTooSlow):
            self.log.warning("Request from ip=%s timed out: %s (%s)", (addr or ("",))[0], exc.description, request_id)
            status, reason, code, message = 408, "Request Timeout", "request_timeout", exc.description
        else:
            captured = _CapturedSocket()
            super().handle_error(req, captured, addr, exc)  # gunicorn picks the status and logs
            try:
                status_line = captured.data.split(b"\r\n", 1)[0].decode("latin-1")
                status, reason = int(status_line.split(" ", 2)[1]), status_line.split(" ", 2)[2]
            except (IndexError, ValueError):
                status, reason = 500, "Internal Server Error"
            code, message = _ERROR_CODES.get(status, _ERROR_CODES[500])
        try:
            gthread.util.write_nonblock(client, json_error_bytes(status, reason, code, message, request_id))
        except Exception:  # noqa: BLE001 - the client may be gone
            self.log.debug("Failed to send error message.")
