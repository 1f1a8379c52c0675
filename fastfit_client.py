"""A small client for the FastFit try-on service; one file to copy.

Needs Python 3.10+ and urllib3 (retries). The catalogue runner is fastfit_batch.py beside it (copy
both for `batch`; it also uses tqdm for the progress bar).

    from fastfit_client import FastFitClient, RequestRejected

    client = FastFitClient("http://tryon.internal:8000", timeout=300, api_key="...")
    try:
        result = client.try_on("person.jpg", upper="shirt.jpg", steps=30, seed=42)
    except RequestRejected as exc:  # fix the request: exc.code says what is wrong
        print(exc.code, exc.message)
    else:
        result.save("out.png")
        print(result.seed, result.timings_ms, result.synthetic_weights)

What it does for you: sends the multipart request (with `Authorization: Bearer <api_key>` when
given a key), follows `Retry-After` on `503` and `429` answers (models still loading, queue full)
a bounded number of times, retries a refused or reset connection with exponential backoff
(urllib3's `Retry` does both), applies a timeout to every attempt (a request that timed out is
never sent again: the service may still be working on it), and turns the service's JSON errors
`{"error": {"code", "message"}}` into exceptions by kind (`RequestRejected` for 4xx,
`ServiceBusy`, `ServiceUnavailable`, `ServiceFailed`, `TransportError`), each with `.status`,
`.code` and `.message`.

Rendering a catalogue (every row of a CSV or JSON Lines manifest; resumable, see
fastfit_batch.run_batch), through this file's command line or fastfit_batch.py's:

    python fastfit_client.py batch rows.csv --out renders/ --url http://tryon.internal:8000 \\
        --api-key-file key.txt --concurrency 2
"""
from __future__ import annotations

import io
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import urllib3
from urllib3.exceptions import MaxRetryError, NewConnectionError, ReadTimeoutError, ResponseError
from urllib3.exceptions import TimeoutError as Urllib3Timeout
from urllib3.util.retry import Retry

ImageInput = str | os.PathLike | bytes | IO[bytes]

GARMENTS = ("upper", "lower", "dress", "shoe", "bag")
RETRY_AFTER_STATUSES = frozenset({429, 503})  # answers whose Retry-After says when to come back


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
    too large, a missing API key...). Retrying the same request gives the same answer."""


class ServiceBusy(FastFitError):
    """503 or 429 with Retry-After (loading, queue_full, queue_timeout...) that lasted past the retries."""


class ServiceUnavailable(FastFitError):
    """503 without Retry-After: the service cannot serve (e.g. `engine_failed`); ask its operator."""


class ServiceFailed(FastFitError):
    """500 (or another 5xx): the try-on failed on the server; the details are in the server's log."""


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
    synthetic_weights: bool = False  # the service runs on random test weights: the image is noise

    def save(self, path: str | os.PathLike) -> Path:
        out = Path(path)
        out.write_bytes(self.image)
        return out


def parse_server_timing(value: str) -> dict[str, float]:
    """'pose;dur=12.5, total;dur=80' -> {'pose': 12.5, 'total': 80.0} (milliseconds); an entry
    without a readable `dur` is left out (a proxy's header never fails a try-on)."""
    out: dict[str, float] = {}
    for part in value.split(","):
        name, *params = [p.strip() for p in part.split(";")]
        for p in params:
            if name and p.startswith("dur="):
                try:
                    out[name] = float(p[4:])
                except ValueError:
                    pass
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


def multipart_body(files: dict[str, ImageInput], fields: dict[str, Any]) -> tuple[bytes, str]:
    """A multipart/form-data body of text `fields` then `files`, and its Content-Type (with the
    boundary); deploy/loadtest.py builds its requests with it too."""
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
    if status in RETRY_AFTER_STATUSES and retry_after is not None:
        cls: type[FastFitError] = ServiceBusy
    elif 400 <= status < 500:
        cls = RequestRejected
    elif status == 503:
        cls = ServiceUnavailable
    else:
        cls = ServiceFailed
    return cls(status, code, message, retry_after)


class _Retry(Retry):
    """urllib3's Retry with the service's rules: Retry-After is followed on 503 and 429 only, and
    at most `max_wait` seconds (a longer ask ends the retries at once); a read timeout is never
    retried (the service may still be working on that request); sleeps go through `sleep_fn`."""

    RETRY_AFTER_STATUS_CODES = RETRY_AFTER_STATUSES

    def __init__(self, *args: Any, max_wait: float = 60.0, sleep_fn: Callable[[float], None] = time.sleep,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_wait = max_wait
        self.sleep_fn = sleep_fn

    def new(self, **kwargs: Any) -> _Retry:
        out = super().new(**kwargs)
        out.max_wait, out.sleep_fn = self.max_wait, self.sleep_fn
        return out

    def increment(self, method: str | None = None, url: str | None = None, response: Any = None,
                  error: Exception | None = None, _pool: Any = None, _stacktrace: Any = None) -> _Retry:
        if isinstance(error, ReadTimeoutError):
            raise MaxRetryError(_pool, url or "", error) from error
        if response is not None:
            wait = self.get_retry_after(response)
            if wait is not None and wait > self.max_wait:
                raise MaxRetryError(_pool, url or "", ResponseError(f"Retry-After {wait:g} s is too long"))
        return super().increment(method, url, response, error, _pool, _stacktrace)

    def get_retry_after(self, response: Any) -> float | None:
        try:
            return super().get_retry_after(response)
        except urllib3.exceptions.InvalidHeader:  # neither seconds nor an HTTP date: "soon"
            return 1.0

    def sleep_for_retry(self, response: Any) -> bool:
        wait = self.get_retry_after(response)
        if wait:
            self.sleep_fn(wait)
            return True
        return False

    def _sleep_backoff(self) -> None:
        backoff = self.get_backoff_time()
        if backoff > 0:
            self.sleep_fn(backoff)


class FastFitClient:
    """Calls one FastFit service; safe to share between threads.

    `timeout`: seconds for each attempt (a request at full size on a GPU takes seconds; on a busy
    queue it may wait up to the server's queue timeout). `max_retries`: how many times an answer
    with Retry-After (503, 429) is retried, after waiting what the server asked (never more than
    `max_retry_wait` seconds; a longer ask is raised at once as ServiceBusy). `connect_retries`:
    how many times a refused or reset connection is retried, waiting `backoff` x 2^n seconds (at
    most `max_backoff`) between tries. `api_key`: sent as `Authorization: Bearer <key>`.
    `pool_size`: connections kept open (one per thread that calls at once).
    """

    def __init__(
        self,
        base_url: str,
        timeout: float = 300.0,
        max_retries: int = 3,
        max_retry_wait: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        *,
        api_key: str | None = None,
        connect_retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        pool_size: int = 4,
    ):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._retry = _Retry(
            total=max_retries + 2 * connect_retries, connect=connect_retries, read=connect_retries,
            status=max_retries, other=0, redirect=0, allowed_methods=None, status_forcelist=(),
            backoff_factor=backoff, backoff_max=max_backoff, raise_on_status=False,
            respect_retry_after_header=True, max_wait=max_retry_wait, sleep_fn=sleep,
        )
        self._http = urllib3.PoolManager(maxsize=max(1, pool_size), timeout=urllib3.Timeout(timeout))

    def try_on(
        self,
        person: ImageInput,
        *,
        upper: ImageInput | None = None,
        lower: ImageInput | None = None,
        dress: ImageInput | None = None,
        shoe: ImageInput | None = None,
        bag: ImageInput | None = None,
        mask: ImageInput | None = None,
        steps: int | None = None,
        seed: int | None = None,
        guidance_scale: float | None = None,
        **options: Any,
    ) -> TryOnResult:
        """One try-on. Unset numbers take the service's defaults; `options` are sent as further
        form fields (`mask_grow`, `output_format`, `preview`, ...: any field the service takes)."""
        images = {"upper": upper, "lower": lower, "dress": dress, "shoe": shoe, "bag": bag, "mask": mask}
        files: dict[str, ImageInput] = {"person": person, **{k: v for k, v in images.items() if v is not None}}
        numbers = {"steps": steps, "seed": seed, "guidance_scale": guidance_scale, **options}
        body, content_type = multipart_body(files, {k: v for k, v in numbers.items() if v is not None})
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
            synthetic_weights=headers.get("X-FastFit-Synthetic-Weights", "").lower() == "true",
        )

    def ready(self) -> bool:
        """True once the service has loaded its models."""
        try:
            self._request("GET", "/ready", retries=False)
        except FastFitError:
            return False
        return True

    # ------------------------------------------------------------------ transport
    def _request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                 retries: Retry | bool | None = None) -> tuple[int, Any, bytes, int]:
        try:
            resp = self._http.request(method, self.base_url + path, body=body, headers={**self._headers, **(headers or {})},
                                      retries=self._retry if retries is None else retries, preload_content=True)
        except MaxRetryError as exc:
            raise self._transport_error(exc.reason) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:  # retries=False raises the error itself
            raise self._transport_error(exc) from None
        history = getattr(getattr(resp, "retries", None), "history", ())
        attempts = 1 + len(history)
        if resp.status >= 400:
            retry_after = self._retry.get_retry_after(resp)
            raise _error_from(resp.status, resp.data, None if retry_after is None else float(retry_after))
        return resp.status, resp.headers, resp.data, attempts

    def _transport_error(self, reason: BaseException | None) -> TransportError:
        timed_out = isinstance(reason, (Urllib3Timeout, TimeoutError))
        if timed_out and not isinstance(reason, NewConnectionError):  # urllib3 files a refusal under timeouts
            return TransportError(0, "timeout", f"no answer within {self.timeout:g} s")
        return TransportError(0, "connection_error", f"cannot reach {self.base_url}: {reason}")

    def _post(self, path: str, body: bytes, content_type: str) -> tuple[int, Any, bytes, int]:
        return self._request("POST", path, body, {"Content-Type": content_type})


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: `batch` (the catalogue runner, fastfit_batch.py beside this file)."""
    from fastfit_batch import main as batch_main

    return batch_main(argv)


if __name__ == "__main__":
    sys.exit(main())
