"""FastFitEngine: one object that owns every model and turns (person, garments) into a try-on image.

It reproduces the reference app's flow (3:4 crop, LANCZOS resizes, DWPose, DensePose, SCHP LIP
and ATR, the multi-reference mask, references in a fixed order) and adds what a service needs:
input validation from the shared schema, a seed that is always reported, per-stage timings and
peak VRAM, and a lock so one engine can be shared by threads.
"""
from __future__ import annotations

import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Union

import numpy as np
import torch
from PIL import Image

from .assets import ModelPaths, ensure_models
from .images import DEFAULT_MAX_PIXELS, ImageSource, load_image, prepare_person, prepare_reference
from .output import encode_image, format_for_path
from .schema import GARMENT_LABELS, PERSON_FIELD, check_garments, parse_numbers

DEFAULT_RESOLUTION = (768, 1024)
STAGES = ("pose", "densepose", "schp", "mask", "diffusion", "total")

ProgressCallback = Callable[[int, int], None]


@dataclass
class TryOnResult:
    """The image and what a caller needs to reproduce or account for it."""

    image: Image.Image
    seed: int
    timings: dict[str, float]  # seconds per stage, STAGES order
    peak_vram_mb: Optional[float]  # None off CUDA
    output_path: Optional[Path] = None
    mask: Optional[Image.Image] = field(default=None, repr=False)

    def to_png_bytes(self) -> bytes:
        return encode_image(self.image, "png")

    def server_timing(self) -> str:
        """The timings as an HTTP Server-Timing header value (milliseconds)."""
        return ", ".join(f"{k};dur={v * 1000.0:.1f}" for k, v in self.timings.items())


@dataclass
class Preparation:
    """What the stages before diffusion make of one person photo."""

    person: Image.Image  # cropped to 3:4 and resized to the working size
    pose: Image.Image  # DWPose skeleton drawing
    mask: Image.Image  # L; 255 where the model repaints
    seed: int  # for the mask's random draws (none in the default variant)
    timings: dict[str, float]  # seconds: pose, densepose, schp, mask, total

    def masked_person(self) -> Image.Image:
        """The picture the diffusion model is conditioned on, in 8 bits: the person outside the
        mask, the pose skeleton over mid-grey inside it (the pipeline composes it in [-1, 1] as
        person * (1 - mask) + mask * pose/255)."""
        person = np.asarray(self.person.convert("RGB"), dtype=np.float32)
        pose = np.asarray(self.pose.convert("RGB").resize(self.person.size), dtype=np.float32)
        inside = (np.asarray(self.mask.convert("L")) >= 128)[..., None]
        out = np.where(inside, (pose / 255.0 + 1.0) * 127.5, person)
        return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB")


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


def parse_resolution(value: Union[str, tuple[int, int], list, None]) -> tuple[int, int]:
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
        models_dir: Union[str, os.PathLike, None] = None,
        device: Union[str, torch.device, None] = None,
        dtype: Optional[torch.dtype] = None,
        dwpose_device: str = "cpu",
        *,
        resolution: Union[str, tuple[int, int], None] = DEFAULT_RESOLUTION,
        download: bool = True,
        max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
    ):
        self.device = torch.device(device) if device is not None else _default_device()
        if dtype is None:
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.dtype = dtype
        self.resolution = parse_resolution(resolution)
        self.max_pixels = max_pixels
        self.paths: ModelPaths = ensure_models(models_dir, download=download)

        from parse_utils import SCHP, DensePose, DWposeDetector

        from .pipeline import FastFitPipeline

        parser_device = str(self.device)
        self.pose_detector = DWposeDetector(self.paths.dwpose, device=dwpose_device)
        self.densepose = DensePose(self.paths.densepose, device=parser_device)
        self.schp_lip = SCHP(self.paths.schp_lip, device=parser_device)
        self.schp_atr = SCHP(self.paths.schp_atr, device=parser_device)
        self.pipeline = FastFitPipeline.from_pretrained(self.paths.fastfit, device=self.device, dtype=self.dtype)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ inputs
    @property
    def reference_sizes(self) -> dict[str, tuple[int, int]]:
        """Reference size per garment slot: clothes at the person size, shoe and bag at half of it."""
        w, h = self.resolution
        return {"upper": (w, h), "lower": (w, h), "dress": (w, h), "shoe": (w // 2, h // 2), "bag": (w // 2, h // 2)}

    def load_inputs(
        self, person: ImageSource, garments: Mapping[str, ImageSource]
    ) -> tuple[Image.Image, dict[str, Image.Image]]:
        """Validate the garment set and decode every image (person transparency over white too)."""
        order = check_garments([k for k, v in garments.items() if v is not None])
        person_img = load_image(person, name=PERSON_FIELD, max_pixels=self.max_pixels)
        images = {g: load_image(garments[g], name=g, max_pixels=self.max_pixels) for g in order}
        return person_img, images

    # One garment set per layout of reference sizes a request can have: 0-2 person-size items
    # (upper/lower, or a dress) x 0-2 half-size ones (shoe, bag). The first two sets also
    # touch all five slots.
    WARMUP_SETS = (
        ("upper", "lower", "shoe", "bag"),
        ("dress",),
        ("upper", "lower", "shoe"),
        ("upper", "lower"),
        ("dress", "shoe", "bag"),
        ("dress", "shoe"),
        ("shoe", "bag"),
        ("shoe",),
    )

    def warmup(self) -> float:
        """Throw-away 1-step requests, one per reference-size layout, so real requests pay neither
        CUDA/cuDNN start-up and per-shape set-up (measured: +0.35 s on a layout's first request)
        nor the first computation of a slot's unconditional reference K/V; returns the seconds
        taken. The service runs it before reporting ready on CUDA."""
        w, h = self.resolution
        person = Image.new("RGB", (w, h), (128, 128, 128))
        garment = Image.new("RGB", (w, h), (200, 200, 200))
        t0 = time.perf_counter()
        for slots in self.WARMUP_SETS:
            self.process(person, {slot: garment for slot in slots}, steps=1, seed=0)
        return time.perf_counter() - t0

    # ----------------------------------------------------------------- process
    def process(
        self,
        person: ImageSource,
        garments: Mapping[str, ImageSource],
        output_path: Union[str, os.PathLike, None] = None,
        steps: int = 30,
        seed: Optional[int] = None,
        guidance_scale: float = 2.5,
        progress: Optional[ProgressCallback] = None,
    ) -> TryOnResult:
        """Run one try-on. `garments` maps upper/lower/dress/shoe/bag to a path, bytes or PIL image.

        `seed=None` draws a fresh seed (reported in the result). `progress(step, total)` is
        called after each denoising step.
        """
        params = parse_numbers({"steps": steps, "seed": seed, "guidance_scale": guidance_scale})
        seed = params["seed"] if params["seed"] is not None else secrets.randbelow(2**32)
        person_img, garment_imgs = self.load_inputs(person, garments)

        with self._lock:
            result = self._run(person_img, garment_imgs, params["steps"], seed, params["guidance_scale"], progress)
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
        params = parse_numbers({"seed": seed})
        seed = params["seed"] if params["seed"] is not None else secrets.randbelow(2**32)
        person_img = load_image(person, name=PERSON_FIELD, max_pixels=self.max_pixels)
        clock = _StageClock(self.device)
        with self._lock, torch.inference_mode():
            prep = self._preprocess(person_img, seed, clock)
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
        steps: int,
        seed: int,
        guidance_scale: float,
        progress: Optional[ProgressCallback],
    ) -> TryOnResult:
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        clock = _StageClock(self.device)
        with torch.inference_mode():
            prep = self._preprocess(person_img, seed, clock)
            sizes = self.reference_sizes
            references = [
                (GARMENT_LABELS[g], prepare_reference(img, sizes[g])) for g, img in garment_imgs.items()
            ]
            image = self.pipeline(
                prep.person,
                prep.mask,
                references,
                pose=prep.pose,
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                seed=seed,
                callback=progress,
            )
            clock.lap("diffusion")
        timings = clock.timings
        timings["total"] = clock.total()
        peak = torch.cuda.max_memory_allocated(self.device) / 2**20 if cuda else None
        return TryOnResult(image=image, seed=seed, timings=timings, peak_vram_mb=peak, mask=prep.mask)
