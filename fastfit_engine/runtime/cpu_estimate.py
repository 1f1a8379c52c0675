"""Tell someone running on a CPU, once, how long a full-size request would take there.

The synthetic test models make every stage of a request runnable on a laptop, but at the product
size (768x1024, 30 steps) a CPU takes many minutes for one request: the attention over the
person's and the garments' tokens does not shrink with tiny weights. Rather than a fixed rule of
thumb, the estimate is extrapolated from the running request itself (its time up to diffusion and its
first denoising steps), so it fits the machine and the models in use. Logged once per process on
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
# convolutions and quadratic attention). Measured (2026-12-01, 2 shared CPU cores at load ~13,
# tiny synthetic models, upper only, guidance 2.5; CPU seconds per step, as wall times were
# mostly waiting): 2.45 s at 384x512, 19.2 s at 768x1024, 7.9x for 4x the pixels = 4**1.49.
# The preparation stages (DWPose, DensePose, SCHP) take about as long at any working size.
STEP_EXPONENT = 1.5

_logged = threading.Event()


def full_size_seconds(prepare_s: float, first_step_s: float, step_s: float, resolution: tuple[int, int]) -> float:
    """Seconds for a FULL_SIZE, FULL_STEPS request, from one at `resolution` that took `prepare_s` up
    to diffusion, `first_step_s` from there to the end of its first denoising step and `step_s` for
    each later step."""
    scale = (FULL_SIZE[0] * FULL_SIZE[1] / (resolution[0] * resolution[1])) ** STEP_EXPONENT
    return prepare_s + scale * (first_step_s + (FULL_STEPS - 1) * step_s)


def with_cpu_estimate(
    progress: Callable[[int, int], None] | None,
    device: torch.device,
    resolution: tuple[int, int],
    t_request: float,
    t_diffusion: float,
) -> Callable[[int, int], None] | None:
    """`progress`, wrapped on a CPU (until the estimate has been logged) to log the estimate after the
    second denoising step (the first of a 1-step request).

    `t_request` and `t_diffusion` are `time.perf_counter()` readings at the request's start and at
    the start of diffusion."""
    if device.type != "cpu" or _logged.is_set():
        return progress
    ends: list[float] = []

    def callback(step: int, total: int) -> None:
        ends.append(time.perf_counter())
        if len(ends) == min(2, total) and not _logged.is_set():
            _logged.set()
            first_s = ends[0] - t_diffusion
            step_s = ends[1] - ends[0] if len(ends) > 1 else first_s
            minutes = full_size_seconds(t_diffusion - t_request, first_s, step_s, resolution) / 60
            log.warning(
                "running on the CPU: a full-size request (%dx%d, %d steps) would take about %d min here "
                "(this %dx%d request: preparation %.1f s, first denoising step %.1f s, then %.1f s a step); "
                "a CUDA GPU takes seconds",
                *FULL_SIZE, FULL_STEPS, max(1, round(minutes)), *resolution, t_diffusion - t_request, first_s, step_s,
            )
        if progress is not None:
            progress(step, total)

    return callback
