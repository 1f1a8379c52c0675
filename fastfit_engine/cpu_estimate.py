"""Tell someone running on a CPU, once, how long a full-size request would take there.

The synthetic test models make every stage of a request runnable on a laptop, but at the product
size (768x1024, 30 steps) a CPU takes many minutes for one request: the attention over the
person's and the garments' tokens does not shrink with tiny weights. Rather than a fixed rule of
thumb, the estimate is extrapolated from the running request itself (its preparation time and its
first denoising step), so it fits the machine and the models in use. Logged once per process on
the "fastfit.engine" logger: the command line prints it on stderr, the service in its log.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import torch

log = logging.getLogger("fastfit.engine")

FULL_SIZE = (768, 1024)  # the size the models were trained at (the engine's default)
FULL_STEPS = 30  # the schema's default step count

# A denoising step's time grows with the working size's pixels to this power (between linear
# convolutions and quadratic attention). Measured on 2 shared CPU cores, tiny synthetic models,
# upper only, guidance 2.5 (2026-12-01): see the fit in the commit adding this file.
STEP_EXPONENT = 1.5

_logged = threading.Event()


def full_size_seconds(prepare_s: float, first_step_s: float, resolution: tuple[int, int]) -> float:
    """Seconds for a FULL_SIZE, FULL_STEPS request, from one at `resolution` that took `prepare_s` up
    to diffusion and `first_step_s` from there to the end of its first denoising step."""
    ratio = FULL_SIZE[0] * FULL_SIZE[1] / (resolution[0] * resolution[1])
    return prepare_s * ratio + FULL_STEPS * first_step_s * ratio**STEP_EXPONENT


def with_cpu_estimate(
    progress: Callable[[int, int], None] | None,
    device: torch.device,
    resolution: tuple[int, int],
    t_request: float,
    t_diffusion: float,
) -> Callable[[int, int], None] | None:
    """`progress`, wrapped on a CPU (until the estimate has been logged) to log it after step 1.

    `t_request` and `t_diffusion` are `time.perf_counter()` readings at the request's start and at
    the start of diffusion."""
    if device.type != "cpu" or _logged.is_set():
        return progress

    def callback(step: int, total: int) -> None:
        if step == 0 and not _logged.is_set():
            _logged.set()
            first_step_s = time.perf_counter() - t_diffusion
            minutes = full_size_seconds(t_diffusion - t_request, first_step_s, resolution) / 60
            log.warning(
                "running on the CPU: a full-size request (%dx%d, %d steps) would take about %d min here "
                "(this %dx%d request's first denoising step took %.1f s); a CUDA GPU takes seconds",
                *FULL_SIZE, FULL_STEPS, max(1, round(minutes)), *resolution, first_step_s,
            )
        if progress is not None:
            progress(step, total)

    return callback
