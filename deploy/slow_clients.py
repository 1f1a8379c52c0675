"""Check a deployment against slow clients: does /health still answer while some connections
trickle their request?

    python deploy/slow_clients.py http://127.0.0.1:8000 --mode headers --clients 4 --interval 5

Modes: `headers` sends the request line, then one header line every INTERVAL seconds; `body`
sends complete headers for a POST /prompt, then a few body bytes every INTERVAL seconds;
`lying-length` announces a Content-Length, sends a tenth of it and waits. While the slow
connections are open the script times GET /health (and a small POST /prompt that is answered
before any model work) and prints one JSON line: the latencies, and what each slow client got
back (status line, or that the server closed it).

tests/test_front.py uses the same clients against the real gunicorn service and the real nginx.
"""
from __future__ import annotations

import argparse
import json
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request


class SlowClient(threading.Thread):
    """One connection that sends its request too slowly (see the module docstring for modes)."""

    def __init__(self, host: str, port: int, mode: str, interval: float, duration: float) -> None:
        super().__init__(daemon=True)
        self.host, self.port, self.mode, self.interval, self.duration = host, port, mode, interval, duration
        self.answer = b""
        self.closed_by_server = False
        self.ended_at: float | None = None
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def status(self) -> int | None:
        """The HTTP status the server answered, or None if it answered nothing."""
        try:
            return int(self.answer.split(b" ", 2)[1])
        except (IndexError, ValueError):
            return None

    def body_json(self) -> dict | None:
        try:
            return json.loads(self.answer.split(b"\r\n\r\n", 1)[1])
        except (IndexError, ValueError):
            return None

    def _pieces(self):
        host = f"Host: {self.host}\r\n".encode()
        if self.mode == "headers":
            yield b"GET /health HTTP/1.1\r\n"
            yield host
            n = 0
            while True:
                n += 1
                yield f"X-Slow-{n}: {'a' * 8}\r\n".encode()
        length = 100_000
        yield (b"POST /prompt HTTP/1.1\r\n" + host
               + b"Content-Type: multipart/form-data; boundary=xyz\r\n"
               + f"Content-Length: {length}\r\n\r\n".encode())
        if self.mode == "lying-length":
            yield b"--xyz\r\n" + b"a" * (length // 10)
            while True:
                yield b""  # keep the connection open, send nothing
        while True:
            yield b"a" * 16

    def run(self) -> None:
        t_end = time.monotonic() + self.duration
        try:
            with socket.create_connection((self.host, self.port), timeout=self.duration + 5) as s:
                s.settimeout(0.05)
                for piece in self._pieces():
                    if piece:
                        s.sendall(piece)
                    wait_until = time.monotonic() + self.interval
                    while time.monotonic() < wait_until:
                        if self._stop_event.is_set() or time.monotonic() > t_end:
                            return
                        try:
                            data = s.recv(65536)
                        except socket.timeout:
                            continue
                        if not data:
                            self.closed_by_server = True
                            return
                        self.answer += data
        except (ConnectionError, BrokenPipeError, OSError):
            self.closed_by_server = True
        finally:
            self.ended_at = time.monotonic()


def timed_request(url: str, data: bytes | None = None, headers: dict | None = None,
                  timeout: float = 30.0) -> tuple[int | None, bytes, dict, float]:
    """(status, body, headers, seconds); status None when nothing came back within timeout."""
    t0 = time.monotonic()
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers), time.monotonic() - t0
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers), time.monotonic() - t0
    except (urllib.error.URLError, TimeoutError, ConnectionError, socket.timeout):
        return None, b"", {}, time.monotonic() - t0


def small_prompt() -> tuple[bytes, dict]:
    """A /prompt body with no image: the app answers 400 (missing_person) before any model work."""
    boundary = "fastfitslowcheck"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"steps\"\r\n\r\n1\r\n--{boundary}--\r\n").encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base_url")
    ap.add_argument("--mode", choices=("headers", "body", "lying-length"), default="headers")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--interval", type=float, default=5.0)
    ap.add_argument("--duration", type=float, default=60.0, help="how long each slow client keeps going")
    ap.add_argument("--probe-timeout", type=float, default=30.0)
    args = ap.parse_args(argv)
    url = urllib.parse.urlsplit(args.base_url)
    clients = [SlowClient(url.hostname, url.port or 80, args.mode, args.interval, args.duration)
               for _ in range(args.clients)]
    for c in clients:
        c.start()
    time.sleep(1.0)  # let them connect and start trickling
    health = timed_request(args.base_url + "/health", timeout=args.probe_timeout)
    body, headers = small_prompt()
    prompt = timed_request(args.base_url + "/prompt", body, headers, timeout=args.probe_timeout)
    for c in clients:
        c.stop()
    for c in clients:
        c.join(5)
    print(json.dumps({
        "mode": args.mode, "clients": args.clients, "interval_s": args.interval,
        "health": {"status": health[0], "seconds": round(health[3], 2)},
        "prompt": {"status": prompt[0], "seconds": round(prompt[3], 2)},
        "slow_clients": [{"status": c.status(), "closed_by_server": c.closed_by_server} for c in clients],
    }))


if __name__ == "__main__":
    main()
