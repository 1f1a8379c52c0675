"""A small client for the FastFit try-on service, and a catalogue runner; one file to copy.

Needs Python 3.10+ and urllib3 (retries); the `batch` command also uses tqdm (progress bar).

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

Rendering a catalogue (every row of a CSV or JSON Lines manifest; resumable, see `run_batch`):

    python fastfit_client.py batch rows.csv --out renders/ --url http://tryon.internal:8000 \\
        --api-key-file key.txt --concurrency 2
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
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


# ---------------------------------------------------------------------------------------- batch
MANIFEST_IMAGES = ("person",) + GARMENTS + ("mask",)
MANIFEST_VALUES = ("seed", "steps", "guidance_scale", "mask_grow", "output_format", "quality")
MANIFEST_COLUMNS = ("name",) + MANIFEST_IMAGES + MANIFEST_VALUES
EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
PART_SUFFIX = ".part"  # a file being written; renamed into place when complete
EXIT_OK, EXIT_SOME_FAILED, EXIT_BAD_MANIFEST = 0, 1, 2


class ManifestError(ValueError):
    """The manifest as a whole cannot be used (unreadable, unknown column, duplicate names): exit 2."""


@dataclass
class BatchRow:
    """One manifest row: `line` is its line in the manifest (1 = the first data row of a CSV
    after its header, or the first line of a JSON Lines file)."""

    line: int
    name: str
    images: dict[str, Path]  # field -> file, relative paths already resolved against the manifest
    values: dict[str, str]  # other fields, as text
    error: tuple[str, str] | None = None  # (code, message) found before sending

    @property
    def output_format(self) -> str:
        return self.values.get("output_format", "png").strip().lower() or "png"

    def output_name(self) -> str:
        return self.name + EXTENSIONS.get(self.output_format, "." + self.output_format)


@dataclass
class BatchSummary:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def images_per_hour(self) -> float:
        return 3600.0 * self.done / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"done": self.done, "skipped": self.skipped, "failed": self.failed,
                "seconds": round(self.seconds, 3), "images_per_hour": round(self.images_per_hour, 1)}


def _manifest_records(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read the manifest {path}: {exc}") from None
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise ManifestError(f"{path.name} line {number}: not a JSON object") from None
            if not isinstance(record, dict):
                raise ManifestError(f"{path.name} line {number}: not a JSON object")
            yield number, record
    elif path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames:
            raise ManifestError(f"{path.name} has no header row")
        _check_columns(path, reader.fieldnames, 1)
        for number, record in enumerate(reader, 1):
            if None in record:
                raise ManifestError(f"{path.name} row {number}: more cells than columns")
            yield number, record
    else:
        raise ManifestError(f"{path.name}: a manifest is .csv or .jsonl (JSON Lines)")


def _check_columns(path: Path, names: Iterable[str], line: int) -> None:
    unknown = [n for n in names if n not in MANIFEST_COLUMNS]
    if unknown:
        raise ManifestError(f"{path.name} line {line}: unknown column {unknown[0][:64]!r}; "
                            f"columns are {', '.join(MANIFEST_COLUMNS)}")


def read_manifest(path: str | os.PathLike) -> list[BatchRow]:
    """The rows of a CSV (with a header) or JSON Lines manifest. Image paths are relative to the
    manifest's folder. A row's own problems (no person, a missing file, a name that is not a
    plain file name) are kept on the row, to be reported while the others run; problems of the
    whole manifest (unreadable, unknown column, two rows with one output) raise ManifestError."""
    path = Path(path)
    rows: list[BatchRow] = []
    seen: dict[str, int] = {}
    for line, record in _manifest_records(path):
        _check_columns(path, record, line)
        cells = {k: ("" if v is None else str(v)).strip() for k, v in record.items()}
        name = cells.get("name") or f"row{line:05d}"
        images = {k: path.parent / cells[k] for k in MANIFEST_IMAGES if cells.get(k)}
        values = {k: cells[k] for k in MANIFEST_VALUES if cells.get(k)}
        row = BatchRow(line, name, images, values)
        if not _SAFE_NAME.match(name):
            row.error = ("invalid_name", f"name {name[:64]!r} is not a plain file name (letters, digits, . _ -)")
        elif "person" not in images:
            row.error = ("missing_person", "the row has no person image")
        else:
            missing = [k for k, p in images.items() if not p.is_file()]
            if missing:
                row.error = ("file_not_found", f"{missing[0]}: file not found: {cells[missing[0]][:200]}")
        if row.error is None:
            out = row.output_name()
            if out in seen:
                raise ManifestError(f"{path.name} lines {seen[out]} and {line} both write {out}: give each row its own name")
            seen[out] = line
        rows.append(row)
    return rows


def _write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder, renamed into place:
    a reader (or a killed run) never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=PART_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _by_person(rows: Sequence[BatchRow]) -> list[BatchRow]:
    """Rows reordered so that one person's rows follow each other (first appearance order): the
    service's person cache then serves the second and later rows of a person."""
    first: dict[Path, int] = {}
    for i, row in enumerate(rows):
        first.setdefault(row.images.get("person", Path()), i)
    return sorted(rows, key=lambda r: first[r.images.get("person", Path())])


def run_batch(
    client: FastFitClient,
    rows: Sequence[BatchRow],
    out_dir: str | os.PathLike,
    *,
    concurrency: int = 1,
    progress: bool | None = None,
    failures_path: str | os.PathLike | None = None,
) -> BatchSummary:
    """Render every row into `out_dir` as `<name>.<format>` plus `<name>.json` (the seed the
    service used, the row's line and fields, timings, whether the weights were synthetic).

    Resumable and idempotent: a row whose image exists is skipped; the sidecar and then the image
    are written atomically, so an image on disk is always complete and its sidecar is there. A
    row that fails (refused, still busy after the retries, no connection) is recorded with its
    error code and message in `failures_path` (default `<out_dir>/failures.jsonl`, rewritten each
    run) and the others go on. `concurrency` requests are in flight at once.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f".*{PART_SUFFIX}"):  # left by a run killed while writing
        stale.unlink(missing_ok=True)
    summary = BatchSummary()
    lock = threading.Lock()
    todo: list[BatchRow] = []
    for row in _by_person(rows):
        if row.error is None and (out / row.output_name()).exists():
            summary.skipped += 1
        elif row.error is not None:
            summary.failed += 1
            summary.failures.append(_failure(row, 0, *row.error))
        else:
            todo.append(row)

    from tqdm import tqdm

    bar = tqdm(total=len(rows), initial=summary.skipped + summary.failed, unit="img", desc="rendering",
               file=sys.stderr, disable=None if progress is None else not progress, dynamic_ncols=True)
    started = time.perf_counter()

    def render(row: BatchRow) -> None:
        try:
            result = client.try_on(row.images["person"], **{k: v for k, v in row.images.items() if k != "person"},
                                   **row.values)
        except FastFitError as exc:
            with lock:
                summary.failed += 1
                summary.failures.append(_failure(row, exc.status, exc.code, exc.message))
        else:
            sidecar = {"name": row.name, "line": row.line, "seed": result.seed,
                       "fields": {**{k: str(p) for k, p in row.images.items()}, **row.values},
                       "content_type": result.content_type, "timings_ms": result.timings_ms,
                       "attempts": result.attempts, "synthetic_weights": result.synthetic_weights}
            _write_atomically(out / f"{row.name}.json", (json.dumps(sidecar, indent=1) + "\n").encode())
            _write_atomically(out / row.output_name(), result.image)
            with lock:
                summary.done += 1
        with lock:
            bar.set_description_str(f"{summary.done} done, {summary.skipped} skipped, {summary.failed} failed", refresh=False)
            bar.update(1)

    try:
        with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="fastfit-batch") as pool:
            for future in as_completed([pool.submit(render, row) for row in todo]):
                future.result()  # a local failure (disk full...) stops the run
    finally:
        bar.close()
        summary.seconds = time.perf_counter() - started
        summary.failures.sort(key=lambda f: f["line"])
        lines = "".join(json.dumps(f) + "\n" for f in summary.failures)
        _write_atomically(Path(failures_path) if failures_path else out / "failures.jsonl", lines.encode())
    return summary


def _failure(row: BatchRow, status: int, code: str, message: str) -> dict[str, Any]:
    return {"line": row.line, "name": row.name, "status": status, "code": code, "message": message}


def _batch_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastfit_client.py", description="FastFit service client.")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("batch", help="render every row of a manifest (CSV or JSON Lines); resumable")
    b.add_argument("manifest", help=f"CSV with a header, or .jsonl; columns: {', '.join(MANIFEST_COLUMNS)}")
    b.add_argument("--out", required=True, help="folder for the images, their .json sidecars and failures.jsonl")
    b.add_argument("--url", default="http://localhost:8000", help="the service (default: %(default)s)")
    b.add_argument("--api-key-file", default=None, help="file holding the API key (sent as a bearer token)")
    b.add_argument("--concurrency", type=int, default=1, help="requests in flight at once (default: 1)")
    b.add_argument("--tries", type=int, default=10,
                   help="retries per row of a busy answer (Retry-After) and of a lost connection (default: 10)")
    b.add_argument("--timeout", type=float, default=300.0, help="seconds per attempt (default: 300)")
    b.add_argument("--failures", default=None, help="failures file (default: OUT/failures.jsonl)")
    b.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """`batch`: exit 0 when every row is done or skipped, 1 when some failed, 2 for a bad
    manifest or command line."""
    parser = _batch_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse's own message is printed
        return EXIT_BAD_MANIFEST if exc.code else EXIT_OK
    try:
        if args.concurrency < 1 or args.tries < 0:
            raise ManifestError("--concurrency must be at least 1 and --tries at least 0")
        api_key = None
        if args.api_key_file:
            try:
                api_key = Path(args.api_key_file).read_text().strip()
            except OSError as exc:
                raise ManifestError(f"--api-key-file: {exc}") from None
            if not api_key:
                raise ManifestError(f"--api-key-file: {args.api_key_file} is empty")
        rows = read_manifest(args.manifest)
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_MANIFEST
    client = FastFitClient(args.url, timeout=args.timeout, max_retries=args.tries, connect_retries=args.tries,
                           api_key=api_key, pool_size=args.concurrency)
    failures = Path(args.failures) if args.failures else Path(args.out) / "failures.jsonl"
    summary = run_batch(client, rows, args.out, concurrency=args.concurrency, progress=args.progress,
                        failures_path=failures)
    s = summary.as_dict()
    print(f"done {s['done']}, skipped {s['skipped']}, failed {s['failed']}, "
          f"{s['images_per_hour']:g} images/hour" + (f"; failures in {failures}" if summary.failed else ""))
    return EXIT_SOME_FAILED if summary.failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
