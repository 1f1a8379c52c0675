"""The catalogue runner: every row of a CSV or JSON Lines manifest rendered through the service.

Resumable and safe to interrupt: rows are grouped by person (the service's person cache), N are in
flight at once, each image is written atomically (`.part`, then renamed) with a JSON sidecar that
holds its seed, failures go to failures.jsonl, and a row whose image exists is skipped. Uses
fastfit_client.py (copy both files) and tqdm for the progress bar.

    python fastfit_client.py batch rows.csv --out renders/ --url http://tryon.internal:8000 \\
        --api-key-file key.txt --concurrency 2   # the command line is fastfit_client.py's
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
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastfit_client import GARMENTS, FastFitClient, FastFitError

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
