"""The warm-up: throw-away 1-step requests before real ones.

Why: so real requests pay neither CUDA/cuDNN start-up and per-shape set-up (a third of a second
on a layout's first request, bench/README.md), nor compilation, nor the first computation of a
slot's unconditional reference K/V. One request per layout of reference sizes (the engine's
`WARMUP_SETS`); a compiled engine on CUDA first captures the reference pass of each garment size
as a CUDA graph. The service runs it before reporting ready. By default a CPU runs the first
layout only: what a CPU's first request pays is one-time start-up (allocators, thread pools,
onnxruntime's first run), not a per-layout cost.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from PIL import Image

from ..request.schema import parse_numbers

_PARAMS = parse_numbers({"steps": 1, "seed": 0})


def warm_up(engine: Any, sets: Sequence[Sequence[str]] | None = None) -> float:
    """Warm ``engine`` (a FastFitEngine) up with one request per garment set of ``sets`` (None:
    every layout on CUDA, the first on a CPU); the seconds taken. Grey images, caches bypassed
    (every layout runs every stage; no grey garment is cached)."""
    w, h = engine.resolution
    person = Image.new("RGB", (w, h), (128, 128, 128))
    garment = Image.new("RGB", (w, h), (200, 200, 200))
    cuda = engine.device.type == "cuda"
    t0 = time.perf_counter()
    if engine.compiled and cuda:  # the fast path: reference passes as graphs
        with engine.gpu_lock:
            engine.pipeline.capture_reference_graphs(sorted(set(engine.reference_sizes.values())))
    with engine.caches_bypassed():
        if sets is None:
            sets = engine.WARMUP_SETS if cuda else engine.WARMUP_SETS[:1]
        for slots in sets:
            engine.process(person, {slot: garment for slot in slots}, _PARAMS)
    return time.perf_counter() - t0
