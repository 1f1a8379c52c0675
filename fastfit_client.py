"""A small client for the FastFit try-on service; one file with no dependency beyond Python 3.10+.

Copy it into your shop's code base:

    from fastfit_client import FastFitClient, RequestRejected

    client = FastFitClient("http://tryon.internal:8000", timeout=300)
    try:
        result = client.try_on("person.jpg", upper="shirt.jpg", steps=30, seed=42)
    except RequestRejected as exc:  # fix the request: exc.code says what is wrong
        print(exc.code, exc.message)
    else:
        result.save("out.png")
        print(result.seed, result.timings_ms)

What it does for you: sends the multipart request, waits out `503` answers that carry
`Retry-After` (models still loading, queue full) a few times, applies a timeout to every
attempt, and turns the service's JSON errors `{"error": {"code", "message"}}` into exceptions
by kind (`RequestRejected` for 4xx, `ServiceBusy`, `ServiceUnavailable`, `ServiceFailed`,
`TransportError`), each with `.status`, `.code` and `.message`.
"""
from __future__ import annotations

import io
import json
import os
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import IO, Any

ImageInput = str | os.PathLike | bytes | IO[bytes]

GARMENTS = ("upper", "lower", "dress", "shoe", "bag")


class FastFitError(Exception):
    """Any failure of a try-on call: `status` (HTTP, 0 without an answer), `code`, `message`."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None):
        super().__init__(f"{code}: {message}" if code else message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


class RequestRejected(FastFitError):
    """4xx: the request itself is wrong (a missing field, a bad number, an unreadable image,
    too large...). Retrying the same request gives the same answer."""


class ServiceBusy(FastFitError):
    """503 with Retry-After (loading, queue_full, queue_timeout) that lasted past the retries."""


class ServiceUnavailable(FastFitError):
    """503 without Retry-After: the service cannot serve (e.g. `engine_failed`); ask its operator."""


class ServiceFailed(FastFitError):
    """500: the try-on failed on the server; the details are in the server's log."""


class TransportError(FastFitError):
    """No answer: connection refused or reset (`code` "connection_error"), or `timeout`."""


@dataclass
class TryOnResult:
    image: bytes  # the encoded image, as sent by the service
    content_type: str  # e.g. image/png
    seed: int  # reproduces the image with the same inputs
    timings_ms: dict[str, float]  # per stage (pose, densepose, schp, mask, diffusion, total)
    peak_vram_mb: float | None  # None when the service runs without CUDA
    attempts: int  # 1 plus the retries it took

    def save(self, path: str | os.PathLike) -> Path:
        out = Path(path)
        out.write_bytes(self.image)
        return out


def parse_server_timing(value: str) -> dict[str, float]:
    """'pose;dur=12.5, total;dur=80' -> {'pose': 12.5, 'total': 80.0} (milliseconds)."""
    out: dict[str, float] = {}
    for part in value.split(","):
        name, *params = [p.strip() for p in part.split(";")]
        for p in params:
            if name and p.startswith("dur="):
                out[name] = float(p[4:])
    return out


def _read_image(value: ImageInput) -> tuple[bytes, str]:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), "image"
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        return path.read_bytes(), path.name
    if isinstance(value, io.IOBase) or hasattr(value, "read"):
        return value.read(), Path(getattr(value, "name", "image")).name
    raise TypeError(f"an image must be a path, bytes or a binary file, got {type(value).__name__}")


def _multipart(files: dict[str, ImageInput], fields: dict[str, Any]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, value in files.items():
        data, filename = _read_image(value)
        filename = filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                  "Content-Type: application/octet-stream\r\n\r\n".encode())
        out.write(data)
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def _error_from(status: int, body: bytes, retry_after: float | None) -> FastFitError:
    try:
        err = json.loads(body)["error"]
        code, message = str(err["code"]), str(err["message"])
    except (ValueError, KeyError, TypeError):  # not the service's JSON (a proxy's page, say)
        code, message = f"http_{status}", body[:200].decode("utf-8", "replace").strip() or f"HTTP {status}"
    if 400 <= status < 500:
        cls: type[FastFitError] = RequestRejected
    elif status == 503:
        cls = ServiceBusy if retry_after is not None else ServiceUnavailable
    else:
        cls = ServiceFailed
    return cls(status, code, message, retry_after)


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: treat as "soon"
        return 1.0


class FastFitClient:
    """Calls one FastFit service.

    `timeout`: seconds for each attempt (a request at full size on a GPU takes seconds; on a busy
    queue it may wait up to the server's queue timeout). `max_retries`: how many times a 503 with
    Retry-After is retried, after waiting what the server asked (never more than
    `max_retry_wait` seconds; a longer ask is raised at once as ServiceBusy).
    """

    def __init__(
        self,
        base_url: str,
        timeout: float = 300.0,
        max_retries: int = 3,
        max_retry_wait: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self._sleep = sleep

    def try_on(
        self,
        person: ImageInput,
        *,
        upper: ImageInput | None = None,
        lower: ImageInput | None = None,
        dress: ImageInput | None = None,
        shoe: ImageInput | None = None,
        bag: ImageInput | None = None,
        steps: int | None = None,
        seed: int | None = None,
        guidance_scale: float | None = None,
        **options: Any,
    ) -> TryOnResult:
        """One try-on. Unset numbers take the service's defaults; `options` are sent as further
        form fields (for service options this client does not name)."""
        garments = {"upper": upper, "lower": lower, "dress": dress, "shoe": shoe, "bag": bag}
        files: dict[str, ImageInput] = {"person": person, **{k: v for k, v in garments.items() if v is not None}}
        numbers = {"steps": steps, "seed": seed, "guidance_scale": guidance_scale, **options}
        body, content_type = _multipart(files, {k: v for k, v in numbers.items() if v is not None})
        status, headers, data, attempts = self._post("/prompt", body, content_type)
        timing = parse_server_timing(headers.get("Server-Timing", ""))
        vram = headers.get("X-Peak-VRAM-MB")
        return TryOnResult(
            image=data,
            content_type=headers.get("Content-Type", "application/octet-stream"),
            seed=int(headers["X-Seed"]),
            timings_ms=timing,
            peak_vram_mb=float(vram) if vram else None,
            attempts=attempts,
        )

    def ready(self) -> bool:
        """True once the service has loaded its models."""
        try:
            self._send(urllib.request.Request(self.base_url + "/ready"))
        except FastFitError:
            return False
        return True

    # ------------------------------------------------------------------ transport
    def _send(self, req: urllib.request.Request) -> tuple[int, Any, bytes]:
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()
            raise _error_from(exc.code, body, _retry_after(exc.headers)) from None
        except TimeoutError:
            raise TransportError(0, "timeout", f"no answer within {self.timeout:g} s") from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise TransportError(0, "timeout", f"no answer within {self.timeout:g} s") from None
            raise TransportError(0, "connection_error", f"cannot reach {self.base_url}: {exc.reason}") from None
        except (ConnectionError, OSError) as exc:
            raise TransportError(0, "connection_error", f"cannot reach {self.base_url}: {exc}") from None

    def _post(self, path: str, body: bytes, content_type: str) -> tuple[int, Any, bytes, int]:
        attempt = 0
        while True:
            attempt += 1
            req = urllib.request.Request(self.base_url + path, data=body, method="POST",
                                         headers={"Content-Type": content_type})
            try:
                status, headers, data = self._send(req)
                return status, headers, data, attempt
            except ServiceBusy as exc:
                wait = exc.retry_after or 0.0
                if attempt > self.max_retries or wait > self.max_retry_wait:
                    raise
                self._sleep(wait)
