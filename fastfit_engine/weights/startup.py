"""Starting the engine: retry with backoff, and saying what is loaded from where, on which device.

A model load can fail for a passing reason (the Hub or a proxy times out, a network volume is
slow to mount) or a lasting one (a corrupt file, a missing file in offline mode). The service
retries the first kind a few times with a growing pause, then gives up so the worker exits
non-zero and its supervisor restarts it, instead of staying up and "healthy" with no model.
Errors say whether a retry can help with a ``retryable`` attribute (``ModelsNotFoundError`` from
a failed download: yes; ``WeightIntegrityError`` and a missing file that nothing will download:
no, retrying only delays the same error); without it, ``LASTING_ERRORS`` are not retried.

In the service (``fastfit_service.admission``) the loader thread calls the engine factory
through ``call_with_retry``; when the last attempt fails and ``FASTFIT_EXIT_ON_LOAD_FAILURE`` is
on (gunicorn.conf.py turns it on in the worker), the worker exits with code 1 and the gunicorn
master starts a fresh one.

Settings (env): ``FASTFIT_LOAD_ATTEMPTS`` (default 3 attempts in all), ``FASTFIT_LOAD_BACKOFF``
(first pause, 5 s, doubled after each failure) and ``FASTFIT_LOAD_BACKOFF_MAX`` (60 s).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from .. import settings

log = logging.getLogger("fastfit.startup")

T = TypeVar("T")

ATTEMPTS_ENV = "FASTFIT_LOAD_ATTEMPTS"
BACKOFF_ENV = "FASTFIT_LOAD_BACKOFF"
BACKOFF_MAX_ENV = "FASTFIT_LOAD_BACKOFF_MAX"


@dataclass(frozen=True)
class RetryPolicy:
    """`attempts` calls in all; the pause after failure n is min(first_delay * factor**(n-1), max_delay)."""

    attempts: int = 3
    first_delay: float = 5.0
    factor: float = 2.0
    max_delay: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.first_delay < 0 or self.factor < 1 or self.max_delay < 0:
            raise ValueError(f"invalid retry policy {self}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RetryPolicy:
        return cls(
            attempts=settings.read(ATTEMPTS_ENV, env),
            first_delay=settings.read(BACKOFF_ENV, env),
            max_delay=settings.read(BACKOFF_MAX_ENV, env),
        )

    def delays(self) -> list[float]:
        """The pauses between attempts (one fewer than the attempts)."""
        return [min(self.first_delay * self.factor**i, self.max_delay) for i in range(self.attempts - 1)]


# Errors that another attempt a few seconds later cannot cure, unless they say otherwise.
LASTING_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError,
    ValueError, TypeError, KeyError, ImportError, NotImplementedError,
)


def is_retryable(exc: BaseException) -> bool:
    """An error's own `retryable` attribute decides; otherwise anything but LASTING_ERRORS is
    retried (timeouts, connection errors, a GPU still held by a previous process...)."""
    flag = getattr(exc, "retryable", None)
    if flag is not None:
        return bool(flag)
    return not isinstance(exc, LASTING_ERRORS)


def call_with_retry(
    fn: Callable[[], T],
    policy: RetryPolicy | None = None,
    *,
    what: str = "model load",
    retryable: Callable[[BaseException], bool] = is_retryable,
    sleep: Callable[[float], Any] = time.sleep,
) -> T:
    """Call `fn` until it returns, retrying retryable exceptions with the policy's pauses; the last
    exception (or the first lasting one) propagates. KeyboardInterrupt/SystemExit are never retried."""
    policy = policy or RetryPolicy.from_env()
    delays = policy.delays()
    for attempt in range(1, policy.attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt == policy.attempts or not retryable(exc):
                why = "attempts exhausted" if attempt == policy.attempts else "not retryable"
                log.error("%s failed (attempt %d of %d, %s): %s: %s",
                          what, attempt, policy.attempts, why, type(exc).__name__, exc)
                raise
            delay = delays[attempt - 1]
            log.warning("%s failed (attempt %d of %d): %s: %s; retrying in %.1f s",
                        what, attempt, policy.attempts, type(exc).__name__, exc, delay)
            sleep(delay)
    raise AssertionError("unreachable")  # the loop returns or raises


def log_loading(paths: Any, device: Any, dtype: Any, dwpose_device: Any, *, requested: Any = None) -> None:
    """INFO lines: the device and why it was chosen, then each component and the path it is loaded
    from (`paths` is an ``assets.ModelPaths``)."""
    if requested is not None:
        why = "requested"
    else:
        import torch

        why = "default: CUDA " + ("available" if torch.cuda.is_available() else "not available")
    log.info("engine device: %s (%s), %s; DWPose on %s", device, why, str(dtype).replace("torch.", ""), dwpose_device)
    components = {
        "DWPose": paths.dwpose,
        "DensePose": paths.densepose,
        "SCHP LIP": paths.schp_lip,
        "SCHP ATR": paths.schp_atr,
        "FastFit UNet, VAE and scheduler": paths.fastfit,
    }
    for name, path in components.items():
        log.info("loading %s from %s", name, path)
