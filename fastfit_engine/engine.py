"""FastFitEngine: one object that owns every model and turns (person, garments) into a try-on image.

It reproduces the upstream FastFit app's flow (3:4 crop, LANCZOS resizes, DWPose, DensePose,
SCHP LIP and ATR, the multi-reference mask, references in a fixed order) and adds what a service
needs: input rules and parameters from the request schema (a `TryOnParams` is taken as it is,
never checked again), a seed that is always reported, per-stage timings and peak VRAM, and a
lock so one engine can be shared by threads.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .assets import ModelPaths, ensure_models
from .compile_cache import compile_cache_dir, compile_enabled, use_compile_cache
from .images import DEFAULT_MAX_PIXELS, ImageSource, load_image, prepare_person, prepare_reference
from .output import encode_image, format_for_path
from .schema import (
    GARMENT_LABELS,
    GARMENT_SLOTS,
    PERSON_FIELD,
    TryOnParams,
    check_images,
    garment_set_per_size_layout,
    parse_numbers,
)

DEFAULT_RESOLUTION = (768, 1024)
STAGES = ("pose", "densepose", "schp", "mask", "diffusion", "total")

ProgressCallback = Callable[[int, int], None]


@dataclass
class TryOnResult:
    """The image and what a caller needs to reproduce or account for it."""

    image: Image.Image
    seed: int
    timings: dict[str, float]  # seconds per stage, STAGES order
    peak_vram_mb: float | None  # None off CUDA
    output_path: Path | None = None
    mask: Image.Image | None = field(default=None, repr=False)

    def to_png_bytes(self) -> bytes:
        return encode_image(self.image, "png")


@dataclass
class Preparation:
    """What the stages before diffusion make of one person photo."""

    person: Image.Image  # cropped to 3:4 and resized to the working size
    pose: Image.Image  # DWPose skeleton drawing
    mask: Image.Image  # L; 255 where the model repaints
    seed: int  # for the mask's random draws (none in the default variant)
    timings: dict[str, float]  # seconds: pose, densepose, schp, mask, total

    masked_person: Image.Image | None = None  # RGB; what diffusion is conditioned on (preprocess() only)


class _StageClock:
    """Seconds per stage; on CUDA each lap waits for the GPU so a stage is charged its own work."""

    def __init__(self, device: torch.device):
        self._cuda = device.type == "cuda"
        self._device = device
        self.timings: dict[str, float] = {}
        self._start = self._t = time.perf_counter()

    def start_stages(self) -> None:
        self._t = time.perf_counter()

    def lap(self, stage: str) -> None:
        if self._cuda:
            torch.cuda.synchronize(self._device)
        now = time.perf_counter()
        self.timings[stage] = now - self._t
        self._t = now

    def total(self) -> float:
        return time.perf_counter() - self._start


def parse_resolution(value: str | tuple[int, int] | list[int] | None) -> tuple[int, int]:
    """(W, H) from a tuple or a 'WxH' string; both multiples of 64 (the UNet's total downsampling)."""
    if value is None or value == "":
        return DEFAULT_RESOLUTION
    if isinstance(value, str):
        parts = value.lower().replace(" ", "").split("x")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise ValueError(f"resolution must look like 768x1024, got {value!r}")
        value = (int(parts[0]), int(parts[1]))
    w, h = (int(v) for v in value)
    if w <= 0 or h <= 0 or w % 64 or h % 64:
        raise ValueError(f"resolution must be positive multiples of 64 (W, H), got {w}x{h}")
    return (w, h)


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class FastFitEngine:
    """Loads all models once; `process` runs one try-on request end to end."""

    def __init__(
        self,
        models_dir: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        dwpose_device: str = "cpu",
        *,
        resolution: str | tuple[int, int] | None = DEFAULT_RESOLUTION,
        download: bool = True,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        compile: bool | None = None,
    ):
        self.device = torch.device(device) if device is not None else _default_device()
        if dtype is None:
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.dtype = dtype
        self.resolution = parse_resolution(resolution)
        self.max_pixels = max_pixels
        self.paths: ModelPaths = ensure_models(models_dir, download=download)
        from .integrity import verify_models
        from .startup import log_loading

        self.synthetic_weights: bool = verify_models(self.paths.root).synthetic_weights  # a WARNING was logged
        log_loading(self.paths, self.device, self.dtype, dwpose_device, requested=device)

        from parse_utils import SCHP, DensePose, DWposeDetector

        from .pipeline import FastFitPipeline

        parser_device = str(self.device)
        self.pose_detector = DWposeDetector(self.paths.dwpose, device=dwpose_device)
        self.densepose = DensePose(self.paths.densepose, device=parser_device)
        self.schp_lip = SCHP(self.paths.schp_lip, device=parser_device)
        self.schp_atr = SCHP(self.paths.schp_atr, device=parser_device)
        # compiled UNet step and VAE: default on CUDA (FASTFIT_COMPILE), caches on the models volume
        self.compiled = compile_enabled(self.device) if compile is None else bool(compile)
        if self.compiled and (cache := compile_cache_dir(self.paths.root)) is not None:
            use_compile_cache(cache)
        self.pipeline = FastFitPipeline.from_pretrained(
            self.paths.fastfit, device=self.device, dtype=self.dtype,
            compile_unet=self.compiled, compile_vae=self.compiled,
        )
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ inputs
    @property
    def reference_sizes(self) -> dict[str, tuple[int, int]]:
        """Reference size per garment slot (the schema's size factor of the working size)."""
        return {s.name: s.reference_size(self.resolution) for s in GARMENT_SLOTS}

    def load_inputs(
        self, person: ImageSource | None, garments: Mapping[str, ImageSource | None]
    ) -> tuple[Image.Image, dict[str, Image.Image]]:
        """Apply the schema's image rules and decode every image (person transparency over white too)."""
        given = [k for k, v in garments.items() if v is not None]
        order = check_images(given + ([PERSON_FIELD] if person is not None else []))
        person_img = load_image(person, name=PERSON_FIELD, max_pixels=self.max_pixels)
        images = {g: load_image(garments[g], name=g, max_pixels=self.max_pixels) for g in order}
        return person_img, images

    # One garment set per layout of reference sizes a request can have (0-2 person-size items
    # x 0-2 half-size ones); together they touch all five slots.
    WARMUP_SETS = garment_set_per_size_layout()

    _WARMUP_PARAMS = parse_numbers({"steps": 1, "seed": 0})

    def warmup(self) -> float:
        """Throw-away 1-step requests, one per reference-size layout, so real requests pay neither
        CUDA/cuDNN start-up and per-shape set-up (+0.35 s on a layout's first request; H100 80GB,
        bf16, 768x1024, 2026-11-25) nor the first computation of a slot's unconditional reference
        K/V; returns the seconds taken. The service runs it before reporting ready on CUDA."""
        w, h = self.resolution
        person = Image.new("RGB", (w, h), (128, 128, 128))
        garment = Image.new("RGB", (w, h), (200, 200, 200))
        t0 = time.perf_counter()
        for slots in self.WARMUP_SETS:
            self.process(person, {slot: garment for slot in slots}, self._WARMUP_PARAMS)
        return time.perf_counter() - t0

    # ----------------------------------------------------------------- process
    def process(
        self,
        person: ImageSource,
        garments: Mapping[str, ImageSource],
        params: TryOnParams | None = None,
        *,
        output_path: str | os.PathLike | None = None,
        progress: ProgressCallback | None = None,
        **overrides: Any,
    ) -> TryOnResult:
        """Run one try-on. `garments` maps upper/lower/dress/shoe/bag to a path, bytes or PIL image.

        The numbers come either as `params` (from `schema.parse_numbers`, used as they are) or as
        keywords (`steps=`, `seed=`, `guidance_scale=`), which the schema parses here; absent ones
        get the schema's defaults. A seed of None draws a fresh one (reported in the result).
        `progress(step, total)` is called after each denoising step.
        """
        if params is None:
            params = parse_numbers(overrides)
        elif overrides:
            raise TypeError(f"process() takes params or keywords, not both (got {', '.join(sorted(overrides))})")
        params = params.with_seed()
        person_img, garment_imgs = self.load_inputs(person, garments)

        with self._lock:
            result = self._run(person_img, garment_imgs, params, progress)
        if output_path is not None:  # the extension picks the format (.png, .jpg, .webp)
            out = Path(output_path)
            out.write_bytes(encode_image(result.image, format_for_path(out)))
            result.output_path = out
        return result

    def preprocess(self, person: ImageSource, seed: int | None = None) -> Preparation:
        """The stages before diffusion alone (pose, DensePose, SCHP parsing, the cloth-agnostic
        mask) for one person photo: what a mask preview shows, without the diffusion model. The
        mask is the one a try-on of the same photo uses (`seed` feeds the mask's random draws,
        as in a try-on; the default mask variant makes none)."""
        seed = parse_numbers({"seed": seed}).with_seed().seed
        person_img = load_image(person, name=PERSON_FIELD, max_pixels=self.max_pixels)
        clock = _StageClock(self.device)
        with self._lock, torch.inference_mode():
            prep = self._preprocess(person_img, seed, clock)
            # The pipeline's own composite (person outside the mask, pose skeleton inside), in 8 bits.
            masked = self.pipeline.prepare_person_inputs(prep.person, prep.mask, prep.pose).masked
            pixels = ((masked[0].float().permute(1, 2, 0) + 1.0) * 127.5).round().clamp(0, 255)
            prep.masked_person = Image.fromarray(pixels.to(torch.uint8).cpu().numpy(), "RGB")
        prep.timings["total"] = clock.total()
        return prep

    def _preprocess(self, person_img: Image.Image, seed: int, clock: _StageClock) -> Preparation:
        from parse_utils import multi_ref_cloth_agnostic_mask

        person = prepare_person(person_img, self.resolution)
        clock.start_stages()
        pose = self.pose_detector(person)
        clock.lap("pose")
        densepose = np.asarray(self.densepose(person))
        clock.lap("densepose")
        lip = np.asarray(self.schp_lip(person))
        atr = np.asarray(self.schp_atr(person))
        clock.lap("schp")
        mask = multi_ref_cloth_agnostic_mask(
            densepose, lip, atr, square_cloth_mask=False, horizon_expand=True, rng=np.random.default_rng(seed)
        )
        clock.lap("mask")
        return Preparation(person=person, pose=pose, mask=mask, seed=seed, timings=clock.timings)

    def _run(
        self,
        person_img: Image.Image,
        garment_imgs: dict[str, Image.Image],
        params: TryOnParams,
        progress: ProgressCallback | None,
    ) -> TryOnResult:
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        clock = _StageClock(self.device)
        with torch.inference_mode():
            prep = self._preprocess(person_img, params.seed, clock)
            sizes = self.reference_sizes
            references = [
                (GARMENT_LABELS[g], prepare_reference(img, sizes[g])) for g, img in garment_imgs.items()
            ]
            image = self.pipeline(
                prep.person,
                prep.mask,
                references,
                pose=prep.pose,
                num_inference_steps=params.steps,
                guidance_scale=params.guidance_scale,
                seed=params.seed,
                callback=progress,
            )
            clock.lap("diffusion")
        timings = clock.timings
        timings["total"] = clock.total()
        peak = torch.cuda.max_memory_allocated(self.device) / 2**20 if cuda else None
        return TryOnResult(image=image, seed=params.seed, timings=timings, peak_vram_mb=peak, mask=prep.mask)
