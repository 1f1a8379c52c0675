"""Every environment variable the project reads, declared once, with one rule per kind.

The bottom layer: the engine, the weights, the service, gunicorn.conf.py and the launcher all read
their variables through `read()`, and the README's Configuration table is `markdown_table()` (a
test keeps them equal). Rules: surrounding blanks are dropped and an empty value counts as unset;
a flag is `1`/`true`/`yes`/`on` or `0`/`false`/`no`/`off` (any case), anything else is an error
naming the variable, as is a number that does not parse or is out of its range.

Left out on purpose: `CUDA_VISIBLE_DEVICES` (CUDA's own; set-but-empty means "no GPU", which
this module's "empty is unset" rule would hide) and the Hugging Face Hub's own timeouts, which
huggingface_hub reads itself.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["FALSE_WORDS", "SETTINGS", "SETTINGS_BY_NAME", "Setting", "SettingError", "is_false_word", "is_set",
           "markdown_table", "read"]

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


class SettingError(ValueError):
    """An environment variable with a value its kind does not allow; the message names it."""


def is_false_word(text: str) -> bool:
    return text.strip().lower() in FALSE_WORDS


def _flag(name: str, text: str) -> bool:
    word = text.lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise SettingError(f"{name} must be 1 or 0 (true/false, yes/no, on/off), got {text!r}")


def _number(kind: type, minimum: float | None) -> Callable[[str, str], Any]:
    def parse(name: str, text: str) -> Any:
        what = "a number" if kind is float else "a whole number"
        try:
            value = float(text) if kind is float else int(text, 10)
        except ValueError:
            bound = "" if minimum is None else f" >= {minimum:g}"
            raise SettingError(f"{name} must be {what}{bound}, got {text!r}") from None
        if minimum is not None and not value >= minimum:
            raise SettingError(f"{name} must be {what} >= {minimum:g}, got {text!r}")
        return value

    return parse


def _text(name: str, text: str) -> str:
    return text


def _names(name: str, text: str) -> tuple[str, ...]:
    """A comma-separated list; blanks around and between items are dropped."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


KINDS: dict[str, Callable[[str, str], Any]] = {
    "text": _text,
    "flag": _flag,
    "list": _names,
    "int": _number(int, None),
    "count": _number(int, 0),  # a whole number >= 0
    "number": _number(float, 0),  # a number >= 0 (sizes, seconds)
}


@dataclass(frozen=True)
class Setting:
    """One environment variable: its kind (a key of KINDS), default and README row."""

    name: str
    kind: str
    default: Any
    default_text: str  # the README's default column
    meaning: str  # the README's meaning column
    group: str  # who reads it: engine, weights, service, gunicorn, launcher

    def parse(self, text: str) -> Any:
        return KINDS[self.kind](self.name, text)


def _s(name: str, kind: str, default: Any, default_text: str, group: str, meaning: str) -> Setting:
    return Setting(name, kind, default, default_text, meaning, group)


SETTINGS: tuple[Setting, ...] = (
    # the engine (command line and service)
    _s("FASTFIT_MODELS_DIR", "text", "Models", "`Models`", "engine",
       "models root holding `FastFit-MR-1024/` and `Human-Toolkit/` (CLI: `--models-dir`)"),
    _s("FASTFIT_DEVICE", "text", None, "`cuda` if available", "engine",
       "device for the diffusion model, DensePose and SCHP"),
    _s("FASTFIT_DWPOSE_DEVICE", "text", "auto", "`auto`", "engine",
       "device for DWPose: `auto` runs it on the engine's GPU (its ONNX graphs as torch modules) when that GPU has "
       "12 GiB free at start-up, else on the CPU (onnxruntime); `cpu` keeps its VRAM for the diffusion (e.g. on a "
       "24 GB card at a larger resolution); `cuda[:N]` forces the GPU"),
    _s("FASTFIT_RESOLUTION", "text", None, "`768x1024` on CUDA, `192x256` on a CPU", "engine",
       "working size W x H (multiples of 64); the models were trained at 768x1024, which takes tens of minutes a "
       "request on a CPU (CLI: `--resolution`)"),
    _s("FASTFIT_GARMENT_CACHE_MB", "number", 1024.0, "`1024`", "engine",
       "GPU memory for garments seen before (their reference keys/values, see \"Caches across requests\"); "
       "`0` turns it off"),
    _s("FASTFIT_PERSON_CACHE_MB", "number", 256.0, "`256`", "engine",
       "CPU memory for persons seen before (their parser maps); `0` turns it off"),
    _s("FASTFIT_PERSON_CACHE_ITEMS", "number", 64.0, "`64`", "engine",
       "count bound of the person cache; `0` turns it off"),
    _s("FASTFIT_PERSON_CACHE_TTL", "number", 600.0, "`600`", "engine",
       "seconds a person's cached maps are kept after they were stored (a hit does not extend it; dropped even "
       "when no request comes); `0` keeps nothing (see \"What is kept\")"),
    _s("FASTFIT_COMPILE", "flag", None, "on with CUDA", "engine",
       "`1`/`0`: the compiled denoising step and VAE, and the garments' reference passes as CUDA graphs "
       "(see \"Performance\"); if compiling fails (no C compiler for Triton, an unsupported GPU), the engine logs "
       "one WARNING, counts it in `fastfit_compile_fallbacks_total` and runs eager (slower, same images)"),
    _s("FASTFIT_COMPILE_CACHE", "text", None, "`<models>/.compile-cache`", "engine",
       "folder for the compiler caches (a volume in Docker), so a second start loads instead of compiling; "
       "`off`: the libraries' own defaults"),
    # the weights
    _s("FASTFIT_REVISION", "text", None, "latest", "weights", "hub revision (commit or tag) of FastFit-MR-1024 to download"),
    _s("HUMAN_TOOLKIT_REVISION", "text", None, "latest", "weights", "hub revision of Human-Toolkit to download"),
    _s("DWPOSE_REVISION", "text", None, "latest", "weights", "hub revision of yzd-v/DWPose to download"),
    _s("HF_HUB_OFFLINE", "flag", False, "unset", "weights",
       "`1`: never download; missing files give an error saying what to put where"),
    _s("FASTFIT_VERIFY_WEIGHTS", "flag", True, "`1`", "weights",
       "`0`: skip the SHA-256 check of the weights at start-up (see \"Integrity and start-up\")"),
    _s("FASTFIT_REQUIRE_DIGESTS", "flag", False, "`0`", "weights",
       "`1`: refuse weight files without a recorded digest instead of loading them with a warning"),
    _s("FASTFIT_LOAD_ATTEMPTS", "count", 3, "`3`", "weights", "engine load attempts in all (the service retries a failed load)"),
    _s("FASTFIT_LOAD_BACKOFF", "number", 5.0, "`5`", "weights", "seconds before the second attempt, doubled each time"),
    _s("FASTFIT_LOAD_BACKOFF_MAX", "number", 60.0, "`60`", "weights", "longest pause between attempts, in seconds"),
    # the service
    _s("FASTFIT_WARMUP", "flag", None, "on", "service",
       "`1`/`0`: run throw-away 1-step requests (one per layout of garment sizes, compiling each from the compile "
       "cache; on a CPU one layout, as the first request's extra time there is one-time start-up) before `/ready` "
       "turns 200, so no real request is slow (timings: bench/README.md)"),
    _s("FASTFIT_MAX_UPLOAD_MB", "number", 20.0, "`20`", "service", "request body limit (413 above)"),
    _s("FASTFIT_MAX_IMAGE_PIXELS", "count", 36_000_000, "`36000000`", "service",
       "largest image accepted, in pixels (400 above)"),
    _s("FASTFIT_QUEUE_SIZE", "count", 2, "`2`", "service", "requests allowed to wait for the GPU"),
    _s("FASTFIT_QUEUE_TIMEOUT", "number", 120.0, "`120`", "service", "seconds a request may wait in the queue"),
    _s("FASTFIT_OVERLAP", "flag", True, "`1`", "service",
       "`1`: the next try-on's person preparation (DWPose, DensePose, SCHP, the mask, the garment resizes) runs "
       "while the current one denoises, at most one request prepared ahead; `0`: each request's preparation "
       "waits for the GPU (see \"Performance\")"),
    _s("FASTFIT_MAX_REQUEST_PIXELS", "count", 72_000_000, "`72000000`", "service",
       "pixels all images of one request may decode to together, after reduced decoding (400 "
       "`pixel_budget_exceeded` above, before any decoding)"),
    _s("FASTFIT_REQUEST_TIMEOUT", "number", 180.0, "`180`", "service",
       "seconds a request may take from arrival to result, queue included (504 `deadline_exceeded`); `0`: no limit"),
    _s("FASTFIT_STUCK_TIMEOUT", "number", 300.0, "`300`", "service",
       "seconds the running request may go without finishing a stage or a denoising step before `/health` and "
       "`/ready` fail with `engine_stuck`; `0`: off"),
    _s("FASTFIT_RETRY_AFTER", "count", 10, "`10`", "service", "`Retry-After` seconds on 503"),
    _s("FASTFIT_MAX_FORM_PARTS", "count", 16, "`16`", "service",
       "most multipart parts in a request (`413 too_many_parts` above; the form has 9 fields)"),
    _s("FASTFIT_MAX_FIELD_BYTES", "count", 1024, "`1024`", "service", "largest text field (`413 field_too_large` above)"),
    _s("FASTFIT_API_KEYS", "list", (), "unset", "service",
       "comma-separated API keys; when set (or the file is), every route but `/health` and `/ready` needs "
       "`Authorization: Bearer <key>`"),
    _s("FASTFIT_API_KEYS_FILE", "text", None, "unset", "service",
       "file with one API key a line (`#` comments); read at start-up; unreadable or empty: the service does not start"),
    _s("FASTFIT_METRICS_PUBLIC", "flag", False, "`0`", "service", "`1`: `/metrics` needs no key even when keys are configured"),
    _s("FASTFIT_CORS_ORIGINS", "list", (), "unset", "service",
       "comma-separated origins (`https://shop.example`) whose pages may call the API from a browser; `*` any; "
       "unset: no CORS headers"),
    _s("FASTFIT_EXIT_ON_LOAD_FAILURE", "flag", False, "on under gunicorn", "service",
       "`1`: the process exits when the last engine load attempt fails (gunicorn's master then starts a new worker)"),
    # bare gunicorn
    _s("PORT", "count", 8000, "`8000`", "gunicorn", "port of a bare gunicorn (and of the front, see `FASTFIT_LISTEN`)"),
    _s("GUNICORN_BIND", "text", None, "`127.0.0.1:8000`", "gunicorn",
       "listen address of a bare gunicorn (loopback: put the nginx front before it, or set `0.0.0.0:8000` deliberately)"),
    _s("GUNICORN_THREADS", "count", 8, "`8`", "gunicorn",
       "threads of the single worker (keep it above `FASTFIT_QUEUE_SIZE` + 1 so `/health` answers while busy)"),
    _s("GUNICORN_TIMEOUT", "count", 300, "`300`", "gunicorn", "worker timeout, seconds"),
    _s("GUNICORN_GRACEFUL_TIMEOUT", "count", 60, "`60`", "gunicorn", "graceful shutdown time, seconds"),
    _s("GUNICORN_KEEPALIVE", "count", 5, "`5`", "gunicorn", "seconds an idle keep-alive connection stays open"),
    _s("GUNICORN_ACCESSLOG", "text", "-", "`-` (stdout)", "gunicorn", "gunicorn's access log"),
    _s("GUNICORN_LOGLEVEL", "text", "info", "`info`", "gunicorn", "log level of gunicorn and the service"),
    _s("FASTFIT_CLIENT_HEADER_TIMEOUT", "number", 10.0, "`10`", "gunicorn",
       "bare gunicorn: seconds for the whole request line and headers; later gets `408 request_timeout`"),
    _s("FASTFIT_CLIENT_BODY_TIMEOUT", "number", 60.0, "`60`", "gunicorn",
       "bare gunicorn: seconds for the whole body; later gets `408 request_timeout`"),
    # the launcher and its nginx front
    _s("FASTFIT_DEVICES", "text", None, "`all`", "launcher",
       "devices of the launcher's instances: `all` (every visible GPU, else the CPU), `0,1` (GPU indices or UUIDs), `cpu`"),
    _s("FASTFIT_LISTEN", "text", None, "`0.0.0.0:8000`", "launcher", "the front's listen address (default: port `PORT`)"),
    _s("FASTFIT_BACKEND_PORT_BASE", "count", 8100, "`8100`", "launcher", "loopback port of instance 0 (instance N: base + N)"),
    _s("FASTFIT_FRONT_CONN_PER_IP", "count", 64, "`64`", "launcher",
       "connections one address may hold at the front (429 above); `0` turns the limit off (as behind an ingress)"),
    _s("FASTFIT_FRONT_MAX_CONNECTIONS", "count", 1024, "`1024`", "launcher", "nginx `worker_connections`"),
    _s("FASTFIT_FRONT_ACCESS_LOG", "text", "/dev/stdout", "`/dev/stdout`", "launcher",
       "nginx's JSON access log (a path)"),
    _s("FASTFIT_FRONT_HEADER_TIMEOUT", "number", 10.0, "`10`", "launcher",
       "seconds the whole request header may take at the front (then the connection is closed)"),
    _s("FASTFIT_FRONT_BODY_TIMEOUT", "number", 10.0, "`10`", "launcher", "seconds the body may pause at the front (then `408`)"),
    _s("FASTFIT_FRONT_SEND_TIMEOUT", "number", 30.0, "`30`", "launcher", "seconds a client may pause reading the answer"),
    _s("FASTFIT_FRONT_UPSTREAM_TIMEOUT", "number", 600.0, "`600`", "launcher",
       "seconds an instance may take to answer (then `504 upstream_timeout`)"),
    _s("FASTFIT_NGINX", "text", None, "`nginx` on `PATH`", "launcher", "the nginx binary"),
    _s("FASTFIT_RUN_DIR", "text", None, "a new temporary folder", "launcher", "folder for nginx's configuration, pid and buffers"),
    _s("FASTFIT_INSTANCE", "text", None, "set by the launcher", "launcher", "the instance's index, for logs and tools (not to be set by hand)"),
)
SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}
assert len(SETTINGS_BY_NAME) == len(SETTINGS), "a variable declared twice"


def read(name: str, environ: Mapping[str, str] | None = None) -> Any:
    """The typed value of a declared variable (its default when unset or blank)."""
    setting = SETTINGS_BY_NAME[name]  # a KeyError here is a variable nobody declared
    text = (os.environ if environ is None else environ).get(name, "").strip()
    return setting.default if not text else setting.parse(text)


def is_set(name: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether a declared variable has a non-blank value (where an explicit choice is treated
    differently from the default)."""
    assert name in SETTINGS_BY_NAME, name
    return bool((os.environ if environ is None else environ).get(name, "").strip())


def markdown_table() -> str:
    """The README's Configuration table, one row per variable."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    rows += [f"| `{s.name}` | {s.default_text} | {s.meaning} |" for s in SETTINGS]
    return "\n".join(rows) + "\n"
