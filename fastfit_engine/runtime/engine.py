"""FastFitEngine: one object that owns every model and turns a `TryOnRequest` into a try-on image.

It reproduces the upstream FastFit app's flow (3:4 crop, LANCZOS resizes, DWPose, DensePose,
SCHP LIP and ATR, the multi-reference mask, references in a fixed order) and adds what a service
needs: a request checked and decoded once at the front door (`request/tryon.py`, taken as it is
here), a seed that is always reported, per-stage timings and peak VRAM, and the GPU lock so one
engine can be shared by threads.

Off the critical path: as soon as the person is prepared, DWPose (on the engine's GPU as torch
modules when it has the memory, else on the CPU with onnxruntime; FASTFIT_DWPOSE_DEVICE) starts
on the pose thread and DensePose, SCHP and the mask on the parser thread (its own CUDA stream), while this thread does
the garment half (VAE encodes and conditional reference passes): the garment half is mostly
eager kernel launches, so the GPU has room for the parsers beside it (bench/README.md has the
measurements). On a CPU the parsers run on this thread after the garments (the two would compete
for the same cores). Every thread, stream and lock: runtime/concurrency.py.

Mask control (not in the reference): a caller's own mask replaces the automatic one, and then
DensePose and SCHP, which only feed the mask, are skipped (DWPose still runs: its drawing
conditions the model); `mask_grow` dilates the automatic mask after the person cache, which
keeps the mask ungrown, so a cached entry serves every grow setting with the mask a miss makes.

Exact caches across requests (fastfit_engine/runtime/caches.py): a garment's conditional reference K/V
(GPU) and a person's parser maps and mask (CPU); neither changes a pixel, and neither touches
the random draws (one generator per request: the initial noise, then one draw per step; the
mask's own generator from the seed).
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .. import settings
from ..model.compile_cache import compile_cache_dir, compile_enabled, use_compile_cache
from ..request.images import DEFAULT_MAX_PIXELS, ImageSource, prepare_person, prepare_reference
from ..request.output import encode_image, format_for_path
from ..request.schema import (
    GARMENT_SLOTS,
    PERSON_FIELD,
    TryOnParams,
    check_images,
    check_mask,
    garment_set_per_size_layout,
    parse_numbers,
)
from ..request.tryon import (  # noqa: F401 - DEFAULT_RESOLUTION, parse_resolution: the engine's public names too
    CPU_RESOLUTION,
    DEFAULT_RESOLUTION,
    GarmentInput,
    TryOnRequest,
    decode_mask,
    decode_request,
    parse_resolution,
    working_size,
)
from ..weights.assets import ModelPaths, ensure_models
from .caches import LRUCache, PersonMaps, expire_in_background, image_digest
from .concurrency import WorkerJob, holding
from .cpu_estimate import with_cpu_estimate

log = logging.getLogger("fastfit.engine")
# Seconds per stage. "garments": VAE encodes and reference passes (or garment-cache restores), on
# the request thread. "pose" is DWPose on its worker thread; "densepose", "schp" and "mask" run on
# the parser thread (on CUDA) beside "garments"; "pose_wait" is what is left of them on the
# critical path: the request thread blocked on the person's maps and mask after its garment work.
# A person-cache hit reports 0 for the parser stages.
PREVIEW_STAGES = ("pose", "densepose", "schp", "mask")  # a mask preview's timings (then "total")
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
class Preparation:
    """What the stages before diffusion make of one person photo."""

    person: Image.Image  # cropped to 3:4 and resized to the working size
    pose: Image.Image  # DWPose skeleton drawing
    mask: Image.Image  # L; 255 where the model repaints
    seed: int  # reported with the preview (the mask itself draws nothing from it)
    timings: dict[str, float]  # seconds: pose, densepose, schp, mask, total

    masked_person: Image.Image | None = None  # RGB; what diffusion is conditioned on (preprocess() only)


@dataclass
class _Parsed:
    """What the parser thread hands back: DensePose, SCHP LIP and ATR maps, the mask, its timings."""

    densepose: np.ndarray
    lip: np.ndarray
    atr: np.ndarray
    mask: Image.Image
    timings: dict[str, float]

    def grown(self, pixels: int) -> Image.Image:
        """The mask grown by `pixels` (the caller's `mask_grow`), never into the face."""
        from parse_utils import grow_mask

        return grow_mask(self.mask, pixels, self.lip)

    def maps(self, pose: Image.Image) -> PersonMaps:
        """The person-cache entry: the maps and the mask."""
        return PersonMaps.frozen(pose, self.densepose, self.lip, self.atr, self.mask)


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class FastFitEngine:
    """Loads all models once; `process` runs one try-on request end to end."""

    def __init__(
        self,
        models_dir: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        dwpose_device: str = "auto",
        *,
        resolution: str | tuple[int, int] | None = None,
        download: bool = True,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        compile: bool | None = None,
        garment_cache_mb: float | None = None,
        person_cache_mb: float | None = None,
        person_cache_items: int | None = None,
        person_cache_ttl: float | None = None,
    ):
        self.device = torch.device(device) if device is not None else _default_device()
        if dtype is None:
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.dtype = dtype
        self.resolution = working_size(resolution, self.device.type)
        if not resolution and self.device.type != "cuda":
            log.warning(
                "no GPU: working size %dx%d so that a request takes seconds, not the tens of minutes of the "
                "trained size on a CPU; FASTFIT_RESOLUTION (or --resolution) sets another, e.g. 768x1024",
                *CPU_RESOLUTION,
            )
        self.max_pixels = max_pixels
        self.paths: ModelPaths = ensure_models(models_dir, download=download)
        from ..weights.integrity import verify_models
        from ..weights.startup import log_loading

        self.synthetic_weights: bool = verify_models(self.paths.root).synthetic_weights  # a WARNING was logged

        from parse_utils import SCHP, DensePose, DWposeDetector
        from parse_utils.dwpose import auto_device

        # "auto": the engine's own GPU when it has the memory and the diffusion is not float32
        # (parse_utils/dwpose/wholebody.py)
        if dwpose_device == "auto":
            dwpose_device = str(auto_device(self.device, self.dtype))
        log_loading(self.paths, self.device, self.dtype, dwpose_device, requested=device)

        from ..model.pipeline import FastFitPipeline

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
        self.gpu_lock = threading.Lock()  # the one lock around model work (see runtime/concurrency.py)
        self._init_caches(garment_cache_mb, person_cache_mb, person_cache_items, person_cache_ttl)

    # ------------------------------------------------------------------ caches
    def _init_caches(
        self, garment_mb: float | None, person_mb: float | None, person_items: int | None, person_ttl: float | None
    ) -> None:
        """Caches sized by the arguments, else FASTFIT_GARMENT_CACHE_MB, FASTFIT_PERSON_CACHE_MB and
        FASTFIT_PERSON_CACHE_ITEMS (0 disables); persons kept at most FASTFIT_PERSON_CACHE_TTL
        seconds; a single pose worker thread."""
        if garment_mb is None:
            garment_mb = settings.read("FASTFIT_GARMENT_CACHE_MB")
        if person_mb is None:
            person_mb = settings.read("FASTFIT_PERSON_CACHE_MB")
        if person_items is None:
            person_items = int(settings.read("FASTFIT_PERSON_CACHE_ITEMS"))
        self.garment_cache = LRUCache("garment", int(garment_mb * 2**20))
        if person_ttl is None:
            person_ttl = settings.read("FASTFIT_PERSON_CACHE_TTL")
        self.person_cache = LRUCache("person", int(person_mb * 2**20), max_items=person_items, ttl=person_ttl)
        expire_in_background(self.person_cache, every=min(person_ttl, 30.0))
        self._caches_on = True
        self._pose_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastfit-pose")
        self._parse_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastfit-parse")
        self._prep_pool = ThreadPoolExecutor(max_workers=len(GARMENT_SLOTS), thread_name_prefix="fastfit-prep")
        # DensePose, SCHP and the mask on that thread beside the garment work: on CUDA (see the
        # module docstring); a CPU has no idle units for them, so there they follow the garments
        self.parse_beside = self.device.type == "cuda"
        self._parse_stream: torch.cuda.Stream | None = None

    @property
    def compile_fallbacks(self) -> int:
        """Compilations that failed and turned the pipeline eager (0 or 1; see compile_fallback.py)."""
        return self.pipeline.compile_fallback.failures

    def cache_stats(self) -> dict[str, dict[str, int]]:
        """Hits, misses, evictions, entries and bytes per cache ("garment", "person")."""
        return {c.name: c.stats() for c in (self.garment_cache, self.person_cache)}

    def clear_caches(self) -> None:
        """Drop every cached garment and person (e.g. after changing weights); counters stay."""
        self.garment_cache.clear()
        self.person_cache.clear()

    @contextlib.contextmanager
    def caches_bypassed(self) -> Iterator[None]:
        """Neither read nor fill the caches (nor count) inside the block: the warm-up uses it."""
        previous, self._caches_on = self._caches_on, False
        try:
            yield
        finally:
            self._caches_on = previous

    # ------------------------------------------------------------------ inputs
    @property
    def reference_sizes(self) -> dict[str, tuple[int, int]]:
        """Reference size per garment slot (the schema's size factor of the working size)."""
        return {s.name: s.reference_size(self.resolution) for s in GARMENT_SLOTS}

    def request(
        self,
        person: ImageSource | None,
        garments: Mapping[str, ImageSource | None],
        params: TryOnParams | None = None,
        *,
        max_total_pixels: int | None = None,
        mask: ImageSource | None = None,
        **numbers: Any,
    ) -> TryOnRequest:
        """The Python front door: a `TryOnRequest` from raw inputs, checked by the schema once.

        The numbers come either as `params` (from `schema.parse_numbers`, used as they are) or as
        keywords (`steps=`, `seed=`, `guidance_scale=`), which the schema parses here; absent ones
        get the schema's defaults and an absent seed is drawn. `garments` maps upper/lower/dress/
        shoe/bag to a path, bytes or PIL image; the images are decoded as the service decodes
        them (`request/tryon.py`). `mask`: the caller's own cloth-agnostic mask instead of the
        automatic one (see `request.tryon.decode_mask`)."""
        if params is None:
            params = parse_numbers(numbers)
        elif numbers:
            raise TypeError(f"takes params or keywords, not both (got {', '.join(sorted(numbers))})")
        check_mask(mask is not None, params)
        given = [k for k, v in garments.items() if v is not None]
        order = check_images(given + ([PERSON_FIELD] if person is not None else []))
        return self.decode(person, {g: garments[g] for g in order}, params, max_total_pixels=max_total_pixels, mask=mask)

    def decode(
        self,
        person: ImageSource,
        garments: Mapping[str, ImageSource],
        params: TryOnParams,
        *,
        max_total_pixels: int | None = None,
        options: Mapping[str, Any] | None = None,
        mask: ImageSource | None = None,
    ) -> TryOnRequest:
        """Decode a request whose fields a front door has checked (garments in reference order)
        at this engine's working size and pixel limit."""
        return decode_request(person, garments, params, working_size=self.resolution, max_pixels=self.max_pixels,
                              max_total_pixels=max_total_pixels, options=options, mask=mask)

    def load_mask(self, mask: ImageSource) -> Image.Image:
        """A caller's mask as this engine uses it (`request.tryon.decode_mask` at its working size)."""
        return decode_mask(mask, self.resolution, self.max_pixels)

    # One garment set per layout of reference sizes a request can have (0-2 person-size items
    # x 0-2 half-size ones); together they touch all five slots.
    WARMUP_SETS = garment_set_per_size_layout()

    _WARMUP_PARAMS = parse_numbers({"steps": 1, "seed": 0})

    def warmup(self, sets: Sequence[Sequence[str]] | None = None) -> float:
        """Throw-away 1-step requests, one per reference-size layout, so real requests pay neither
        CUDA/cuDNN start-up and per-shape set-up (a third of a second on a layout's first request,
        bench/README.md), nor compilation, nor the first computation of a slot's
        unconditional reference K/V; returns the seconds taken. A compiled engine on CUDA first
        captures the reference pass of each garment size as a CUDA graph. The service runs it
        before reporting ready. ``sets`` limits it to some garment sets (benchmarks); by default
        a CPU runs the first layout only: what a CPU's first request pays is one-time start-up
        (allocators, thread pools, onnxruntime's first run), not a per-layout cost."""
        w, h = self.resolution
        person = Image.new("RGB", (w, h), (128, 128, 128))
        garment = Image.new("RGB", (w, h), (200, 200, 200))
        t0 = time.perf_counter()
        if self.compiled and self.device.type == "cuda":  # the fast path: reference passes as graphs
            with self.gpu_lock:
                self.pipeline.capture_reference_graphs(sorted(set(self.reference_sizes.values())))
        with self.caches_bypassed():  # every layout runs every stage; no grey garment is cached
            if sets is None:
                sets = self.WARMUP_SETS if self.device.type == "cuda" else self.WARMUP_SETS[:1]
            for slots in sets:
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
        stage: StageCallback | None = None,
        check: Callable[[], None] | None = None,
        mask: ImageSource | None = None,
        **numbers: Any,
    ) -> TryOnResult:
        """Run one try-on from raw inputs: `run(request(person, garments, params, mask=mask, **numbers))`."""
        return self.run(self.request(person, garments, params, mask=mask, **numbers), output_path=output_path,
                        progress=progress, stage=stage, check=check)

    def run(
        self,
        request: TryOnRequest,
        *,
        output_path: str | os.PathLike | None = None,
        progress: ProgressCallback | None = None,
        stage: StageCallback | None = None,
        check: Callable[[], None] | None = None,
        lock_held: bool = False,
    ) -> TryOnResult:
        """Run one try-on of a `TryOnRequest`, taken as it is (its fields were checked at the front door).

        `progress(step, total)` is called after each denoising step, `stage(name)` after each timed
        stage but "pose" and "total" (a person-cache hit skips "densepose", "schp", "pose_wait"),
        and `check()` before each stage; `progress` and `check` may raise (a passed deadline, a
        client gone) to stop the request there: the GPU lock and the reference K/V cache are
        released on the way out, after the request's own pose and parser work has ended.
        `lock_held`: the caller holds `gpu_lock` already (the service's admission does).
        """
        if request.working_size != self.resolution:
            raise ValueError(f"the request was decoded for {request.working_size}, this engine works at {self.resolution}")
        with holding(self.gpu_lock, lock_held):
            result = self._run(request, progress, stage, check)
        if output_path is not None:  # the extension picks the format (.png, .jpg, .webp)
            out = Path(output_path)
            out.write_bytes(encode_image(result.image, format_for_path(out)))
            result.output_path = out
        return result

    def preview(self, request: TryOnRequest, *, lock_held: bool = False) -> Preparation:
        """The stages before diffusion of a decoded request (its garments play no part);
        `lock_held` as for `run`."""
        t_start = time.perf_counter()
        with holding(self.gpu_lock, lock_held), torch.inference_mode():
            prep = self._preprocess(request.person, request.params.seed, request.params.mask_grow, request.mask)
            # The pipeline's own composite (person outside the mask, pose skeleton inside), in 8 bits.
            masked = self.pipeline.prepare_person_inputs(prep.person, prep.mask, prep.pose).masked
            pixels = ((masked[0].float().permute(1, 2, 0) + 1.0) * 127.5).round().clamp(0, 255)
            prep.masked_person = Image.fromarray(pixels.to(torch.uint8).cpu().numpy(), "RGB")
        prep.timings["total"] = time.perf_counter() - t_start
        return prep

    def preprocess(
        self, person: ImageSource, seed: int | None = None, *, mask: ImageSource | None = None, mask_grow: int = 0
    ) -> Preparation:
        """The stages before diffusion alone (pose, DensePose, SCHP parsing, the cloth-agnostic
        mask) for one person photo: what a mask preview shows, without the diffusion model. The
        mask is the one a try-on of the same photo uses (`mask_grow` grows it, and a caller's
        `mask` replaces it, as in `process`); `seed` is only reported (the preview answers carry
        it like a try-on's)."""
        params = parse_numbers({"seed": seed, "mask_grow": mask_grow})
        check_mask(mask is not None, params)
        if person is None:
            check_images([])  # the schema's "person is required"
        return self.preview(self.decode(person, {}, params, mask=mask))

    def _preprocess(
        self, person_img: Image.Image, seed: int, mask_grow: int = 0, mask: Image.Image | None = None
    ) -> Preparation:
        """The person's maps (person cache, or DWPose on its thread beside DensePose and SCHP on
        this one) and the mask a try-on with this mask setting uses; with the caller's `mask`,
        DWPose alone."""
        person = prepare_person(person_img, self.resolution)
        key = self._person_key(person)
        maps = self.person_cache.get(key) if key is not None else None
        timings = dict.fromkeys(PREVIEW_STAGES, 0.0)  # zeros for what the person cache saves
        pose_job = self._start_pose(person, maps)
        try:
            if mask is not None:  # nothing to parse: the pose alone (from the cache, or DWPose)
                pose, timings["pose"] = pose_job.result() if maps is None else (maps.pose, 0.0)
                return Preparation(person=person, pose=pose, mask=mask, seed=seed, timings=timings)
            parsed = self._parse_and_mask(person, maps)
            if maps is None:
                maps, timings["pose"] = self._new_person_maps(key, pose_job, parsed)
        finally:
            if pose_job is not None:
                pose_job.settle()  # DWPose never outlives its request (runtime/concurrency.py)
        timings.update(parsed.timings)
        return Preparation(person=person, pose=maps.pose, mask=parsed.grown(mask_grow), seed=seed, timings=timings)

    def _new_person_maps(self, key: tuple | None, pose_job: WorkerJob, parsed: _Parsed) -> tuple[PersonMaps, float]:
        """A parsed person's maps with DWPose's drawing once it is done (into the person cache
        under ``key``), and DWPose's seconds on its thread."""
        pose, pose_seconds = pose_job.result()
        maps = parsed.maps(pose)
        if key is not None:
            self.person_cache.put(key, maps, maps.nbytes)
        return maps, pose_seconds

    def _person_key(self, person: Image.Image) -> tuple[str, tuple[int, int]] | None:
        """The person cache's key for a prepared person photo; None while the cache is off."""
        if not (self._caches_on and self.person_cache.enabled):
            return None
        return (image_digest(person), person.size)

    @staticmethod
    def _cloth_mask(densepose: np.ndarray, lip: np.ndarray, atr: np.ndarray) -> Image.Image:
        """The cloth-agnostic mask from the parser maps (the pose plays no part). The upstream
        app's variant: no square cloth mask, so the horizontal widening makes no random draws
        and the mask is the same for every seed (and is cached with the maps)."""
        from parse_utils import multi_ref_cloth_agnostic_mask

        return multi_ref_cloth_agnostic_mask(densepose, lip, atr, square_cloth_mask=False, horizon_expand=True)

    def _run(
        self,
        request: TryOnRequest,
        progress: ProgressCallback | None,
        stage: StageCallback | None = None,
        check: Callable[[], None] | None = None,
    ) -> TryOnResult:
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        timings: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        t_start = time.perf_counter()

        def announce(name: str) -> None:
            if stage is not None:
                stage(name)
            if check is not None and name != "diffusion":  # a finished result is always delivered
                check()

        def lap(name: str, t0: float, *, quiet: bool = False) -> float:
            if cuda:  # this thread's stream only: the parser thread's work is not this stage's
                torch.cuda.current_stream(self.device).synchronize()
            now = time.perf_counter()
            timings[name] = now - t0
            if not quiet:
                announce(name)
            return now

        if check is not None:
            check()
        garment_cache = self.garment_cache if self._caches_on and self.garment_cache.enabled else None
        params = request.params
        garment_jobs = [self._prep_pool.submit(self._prepare_garment, g, garment_cache is not None) for g in request.garments]
        person = prepare_person(request.person, self.resolution)
        person_key = self._person_key(person)
        maps: PersonMaps | None = self.person_cache.get(person_key) if person_key is not None else None
        pose_job = self._start_pose(person, maps)
        # the caller's mask leaves nothing to parse: DensePose and SCHP feed only the mask
        parse_job = self._start_parsing(person, maps) if request.mask is None else None
        t = time.perf_counter()
        try:
            with torch.inference_mode():
                prepped = [job.result() for job in garment_jobs]
                references = [(label, image) for label, image, _ in prepped]
                keys = [key for _, _, key in prepped] if garment_cache is not None else None
                with self.pipeline.prepare_references(
                    references, person.size, params.guidance_scale, garment_cache=garment_cache, keys=keys
                ) as prepared:
                    t = lap("garments", t)
                    hit = maps is not None
                    if parse_job is None:  # the caller's mask: wait for DWPose alone (none on a hit)
                        pose, timings["pose"] = pose_job.result() if not hit else (maps.pose, 0.0)
                        t = lap("pose_wait", t, quiet=hit)
                        mask = request.mask
                    else:
                        parsed = parse_job.result()
                        if parse_job.ran_here:
                            t = time.perf_counter()  # its stages timed themselves; the wait is for DWPose
                        if not hit:
                            maps, timings["pose"] = self._new_person_maps(person_key, pose_job, parsed)
                            announce("densepose")
                            announce("schp")
                        t = lap("pose_wait", t, quiet=hit)
                        timings.update(parsed.timings)
                        pose, mask = maps.pose, parsed.grown(params.mask_grow)
                    announce("mask")
                    image = self.pipeline.generate(
                        person,
                        mask,
                        prepared,
                        pose=pose,
                        num_inference_steps=params.steps,
                        guidance_scale=params.guidance_scale,
                        seed=params.seed,
                        callback=with_cpu_estimate(progress, self.device, self.resolution, t_start, t),
                    )
                    lap("diffusion", t)
        finally:
            # nothing this request started outlives it: an early stop (deadline, client gone)
            # waits here for DWPose and the parsers, so the next request's start at once
            if pose_job is not None:
                pose_job.settle()
            if parse_job is not None:
                parse_job.settle()
        timings["total"] = time.perf_counter() - t_start
        peak = torch.cuda.max_memory_allocated(self.device) / 2**20 if cuda else None
        return TryOnResult(image=image, seed=params.seed, timings=timings, peak_vram_mb=peak, mask=mask)

    def _prepare_garment(self, garment: GarmentInput, keyed: bool) -> tuple[int, Image.Image, tuple | None]:
        """One garment's class index, resized reference and (if ``keyed``) garment-cache key; a
        prep thread runs one per garment beside the person's preparation (LANCZOS resizes and
        SHA-256 release the GIL)."""
        reference = prepare_reference(garment.image, self.reference_sizes[garment.slot])
        key = self.pipeline.reference_key(garment.class_index, reference) if keyed else None
        return garment.class_index, reference, key

    def _start_pose(self, person: Image.Image, maps: PersonMaps | None) -> WorkerJob | None:
        """DWPose on the pose thread, unless the person cache gave the maps."""
        return None if maps is not None else WorkerJob(self._timed_pose, person).start(self._pose_worker)

    def _start_parsing(self, person: Image.Image, maps: PersonMaps | None) -> WorkerJob:
        """DensePose, SCHP (unless the person cache gave ``maps``) and the mask (unless the maps
        hold it): with ``parse_beside`` at once on the parser thread and its own CUDA stream,
        beside the garment work; otherwise on this thread when asked for."""
        job = WorkerJob(self._parse_and_mask, person, maps)
        if self.parse_beside and maps is None:
            job.start(self._parse_worker)
        return job

    def _parse_and_mask(self, person: Image.Image, maps: PersonMaps | None) -> _Parsed:
        """The parser maps and the mask, each stage timed on its own (on the parser stream)."""
        if maps is not None:
            return _Parsed(maps.densepose, maps.lip, maps.atr, maps.mask, {})
        cuda = self.device.type == "cuda"
        timings: dict[str, float] = {}
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.inference_mode())
            if cuda:
                if self._parse_stream is None:
                    self._parse_stream = torch.cuda.Stream(self.device)
                stack.enter_context(torch.cuda.device(self.device))
                stack.enter_context(torch.cuda.stream(self._parse_stream))
            t = time.perf_counter()

            def lap(name: str) -> None:
                nonlocal t
                if cuda:
                    self._parse_stream.synchronize()
                now = time.perf_counter()
                timings[name] = now - t
                t = now

            densepose = np.asarray(self.densepose(person))
            lap("densepose")
            lip = np.asarray(self.schp_lip(person))
            atr = np.asarray(self.schp_atr(person))
            lap("schp")
            mask = self._cloth_mask(densepose, lip, atr)
            lap("mask")
        return _Parsed(densepose, lip, atr, mask, timings)

    def _timed_pose(self, person: Image.Image) -> tuple[Image.Image, float]:
        """DWPose on the worker thread: the drawing and the seconds it took there."""
        t0 = time.perf_counter()
        pose = self.pose_detector(person)
        return pose, time.perf_counter() - t0
