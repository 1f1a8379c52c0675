"""One try-on's GPU turn: from a started request (its garment resizes and person side begun) to
the image, with the stage timings and callbacks the service reports.

Why its own module: the engine decides when a request's work starts (under the GPU lock, or
before it with the service's overlap: `FastFitEngine.prepare`); this is what runs while the
request holds the lock, the same code either way, so an overlapped request's image is the serial
one bit for bit (the person side draws nothing from the seed and the pipeline's generator is the
request's own).

On the request thread, holding the GPU lock: the garments' VAE encodes and reference passes (or
garment-cache restores), then the wait for the person side ("pose_wait": DensePose, SCHP and
the mask beside the garments on CUDA, DWPose on its thread; nothing left to wait for when the
request was prepared), then the denoising loop and the VAE decode.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..request.tryon import TryOnRequest
from .caches import LRUCache
from .concurrency import WorkerJob
from .cpu_estimate import with_cpu_estimate
from .person import PersonWork

# Seconds per stage. "garments": VAE encodes and reference passes (or garment-cache restores), on
# the request thread. "pose" is DWPose on its worker thread; "densepose", "schp" and "mask" run on
# the parser thread (on CUDA) beside "garments", or before the GPU turn for a prepared request;
# "pose_wait" is what is left of them on the critical path: the request thread blocked on the
# person's maps and mask after its garment work. A person-cache hit reports 0 for the parser
# stages. "total": the request's time holding the GPU (a prepared request's person stages ran
# before it).
STAGES = ("pose", "garments", "densepose", "schp", "pose_wait", "mask", "diffusion", "total")

ProgressCallback = Callable[[int, int], None]
StageCallback = Callable[[str], None]


@dataclass
class TryOnResult:
    """The image and what a caller needs to reproduce or account for it."""

    image: Image.Image
    seed: int
    timings: dict[str, float]  # seconds per stage, STAGES order
    peak_vram_mb: float | None  # None off CUDA
    output_path: Path | None = None
    mask: Image.Image | None = field(default=None, repr=False)


@dataclass
class StartedRequest:
    """A request whose host-side work has begun: one job per garment (class index, resized
    reference, garment-cache key) and the person side. ``prepared``: all of it finished before
    the GPU turn (`FastFitEngine.prepare`)."""

    request: TryOnRequest
    garment_jobs: list[WorkerJob[tuple[int, Image.Image, tuple | None]]]
    person: PersonWork
    keyed: bool  # the garment cache is in use: the jobs made keys
    prepared: bool = False

    def wait(self, check: Callable[[], None] | None) -> None:
        """Until every job is done, calling ``check`` meanwhile (it may raise: then `settle`)."""
        self.person.wait(check)
        for job in self.garment_jobs:
            job.wait(check)

    def settle(self) -> None:
        """Nothing this request started outlives it (runtime/concurrency.py)."""
        self.person.settle()
        for job in self.garment_jobs:
            job.settle()


def run_started(
    engine: Any,
    started: StartedRequest,
    progress: ProgressCallback | None = None,
    stage: StageCallback | None = None,
    check: Callable[[], None] | None = None,
) -> TryOnResult:
    """The GPU turn of ``started`` on ``engine`` (a FastFitEngine, whose GPU lock the caller
    holds; typed loosely, as the engine imports this module); settles the request's jobs on
    every way out."""
    device, pipeline, request = engine.device, engine.pipeline, started.request
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    timings: dict[str, float] = dict.fromkeys(STAGES, 0.0)
    t_start = time.perf_counter()

    def announce(name: str) -> None:
        if stage is not None:
            stage(name)
        if check is not None and name != "diffusion":  # a finished result is always delivered
            check()

    def lap(name: str, t0: float, *, quiet: bool = False) -> float:
        if cuda:  # this thread's stream only: the parser thread's work is not this stage's
            torch.cuda.current_stream(device).synchronize()
        now = time.perf_counter()
        timings[name] = now - t0
        if not quiet:
            announce(name)
        return now

    params, work = request.params, started.person
    garment_cache: LRUCache | None = engine.garment_cache if started.keyed else None
    try:
        if check is not None:
            check()
        t = time.perf_counter()
        with torch.inference_mode():
            prepped = [job.result() for job in started.garment_jobs]
            references = [(label, image) for label, image, _ in prepped]
            keys = [key for _, _, key in prepped] if garment_cache is not None else None
            with pipeline.prepare_references(
                references, work.person.size, params.guidance_scale, garment_cache=garment_cache, keys=keys
            ) as prepared:
                t = lap("garments", t)
                hit = work.hit
                parsed = work.parsed()
                if work.parsed_here:
                    t = time.perf_counter()  # its stages timed themselves; the wait is for DWPose
                pose, person_timings = work.finish(parsed)
                timings.update(person_timings)
                if parsed is not None and not hit:
                    announce("densepose")
                    announce("schp")
                t = lap("pose_wait", t, quiet=hit)
                mask = request.mask if parsed is None else parsed.grown(params.mask_grow)
                announce("mask")
                image = pipeline.generate(
                    work.person,
                    mask,
                    prepared,
                    pose=pose,
                    num_inference_steps=params.steps,
                    guidance_scale=params.guidance_scale,
                    seed=params.seed,
                    callback=with_cpu_estimate(progress, device, engine.resolution, t_start, t),
                )
                lap("diffusion", t)
    finally:
        # an early stop (deadline, client gone) waits here for DWPose and the parsers, so the
        # next request's start at once
        started.settle()
    timings["total"] = time.perf_counter() - t_start
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
    return TryOnResult(image=image, seed=params.seed, timings=timings, peak_vram_mb=peak, mask=mask)

