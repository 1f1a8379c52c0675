"""Shared pieces of the benchmark scripts: the garment scenarios, the stand-in photo, a synchronising timer.

The scripts run as modules from the repository root: ``python -m bench.bench_diffusion --quick``.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from PIL import Image

# The garment sets every try-on benchmark times, by name, as request slots in reference order.
SCENARIOS: dict[str, tuple[str, ...]] = {
    "upper_lower": ("upper", "lower"),
    "upper_lower_shoe_bag": ("upper", "lower", "shoe", "bag"),
    "dress_shoe": ("dress", "shoe"),
}


References = list[tuple[str, Image.Image]]


def random_request_images(
    person_wh: tuple[int, int], rng: np.random.Generator, names: list[str]
) -> tuple[Image.Image, Image.Image, Image.Image, dict[str, References]]:
    """Person, mask, pose and each named scenario's (model label, image) references, all random;
    the mask is one rectangle (the middle two thirds across, three quarters down)."""
    from fastfit_engine.request.schema import GARMENT_LABELS, GARMENT_SLOTS_BY_NAME

    def img(w: int, h: int) -> Image.Image:
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))

    pw, ph = person_wh
    person = img(pw, ph)
    m = np.zeros((ph, pw), np.uint8)
    m[ph // 8 : ph * 7 // 8, pw // 6 : pw * 5 // 6] = 255
    mask = Image.fromarray(m)
    pose = img(pw, ph)
    scenarios = {
        name: [(GARMENT_LABELS[slot], img(*GARMENT_SLOTS_BY_NAME[slot].reference_size(person_wh))) for slot in SCENARIOS[name]]
        for name in names
    }
    return person, mask, pose, scenarios


def person_image(width: int, height: int) -> Image.Image:
    """Deterministic stand-in photo: a textured figure on a plain background."""
    rng = np.random.default_rng(0)
    img = np.full((height, width, 3), 40, dtype=np.uint8)
    noise = rng.integers(0, 40, size=(height, width, 3), dtype=np.uint8)
    y0, y1, x0, x1 = height // 6, height * 9 // 10, width // 3, width * 2 // 3
    img[y0:y1, x0:x1] = np.array([200, 160, 130], dtype=np.uint8) + noise[y0:y1, x0:x1] // 2
    return Image.fromarray(img)


def sync(device: Any | None) -> None:
    """Wait for queued CUDA work so wall-clock timings cover it (no-op elsewhere)."""
    if device is not None and getattr(device, "type", str(device).split(":")[0]) == "cuda":
        import torch

        torch.cuda.synchronize(device)


def cuda_ms(fn: Callable[[], Any], rounds: int = 5, calls: int = 10, warmup: int = 3) -> float:
    """Median over ``rounds`` of the mean ms of ``calls`` back-to-back calls, by CUDA events."""
    import statistics

    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return round(statistics.median(times), 4)


def time_ms(fn: Callable[[], Any], device: Any | None, warmup: int, repeats: int) -> list[float]:
    """Milliseconds of each of `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def pick_scenarios(parser: argparse.ArgumentParser, value: str | None, available: Iterable[str] = SCENARIOS) -> list[str]:
    """Names from a comma list (all when empty); an unknown name is a usage error."""
    available = list(available)
    wanted = [name.strip() for name in (value or "").split(",") if name.strip()] or available
    unknown = sorted(set(wanted) - set(available))
    if unknown:
        parser.error(f"unknown scenarios {unknown}; expected some of {sorted(available)}")
    return wanted
