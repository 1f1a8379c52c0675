"""FastFitEngine: one object that owns every model and turns a `TryOnRequest` into a try-on image.

It reproduces the upstream FastFit app's flow (3:4 crop, LANCZOS resizes, DWPose, DensePose,
SCHP LIP and ATR, the multi-reference mask, references in a fixed order) and adds what a service
needs: a request checked and decoded once at the front door (`request/tryon.py`, taken as it is
here), a seed that is always reported, per-stage timings and peak VRAM, and the GPU lock so one
engine can be shared by threads.

The engine is put together from its parts (the pipeline, the person parsers, the cache sizes):
`FastFitEngine.from_models_dir(...)` loads them from a models tree for the usual case. Where a
request's work runs: the person side (runtime/person.py) and the garments' resizes start on
worker threads when the request begins, under the GPU lock (`run`), or before it (`prepare`,
the service's overlap: the person side of the next request runs while this one denoises); its
GPU turn is runtime/tryon_run.py; warm-up is runtime/warmup.py. Every thread, stream and lock:
runtime/concurrency.py.

Mask control (not in the reference): a caller's own mask replaces the automatic one, and then
DensePose and SCHP, which only feed the mask, are skipped (DWPose still runs: its drawing
conditions the model); `mask_grow` dilates the automatic mask after the person cache, which
keeps the mask ungrown, so a cached entry serves every grow setting with the mask a miss makes.

Exact caches across requests (fastfit_engine/runtime/caches.py): a garment's conditional reference K/V
(GPU) and a person's parser maps and mask (CPU); neither changes a pixel, and neither touches
the random draws (one generator per request: the initial noise, then one draw per step; the
mask draws nothing).
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..request.images import DEFAULT_MAX_PIXELS, ImageSource, prepare_reference
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
from ..weights.assets import ModelPaths
from .caches import caches_from_settings
from .concurrency import WorkerJob, holding
from .person import PREVIEW_STAGES, Parsers, PersonPreparer, Preparation  # noqa: F401 - public names too
from .tryon_run import STAGES, ProgressCallback, StageCallback, StartedRequest, TryOnResult, run_started  # noqa: F401

log = logging.getLogger("fastfit.engine")


class FastFitEngine:
    """The models and threads of one device; `run` turns one request into its image."""

    def __init__(
        self,
        pipeline: Any,
        parsers: Parsers,
        *,
        resolution: str | tuple[int, int] | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        compiled: bool = False,
        garment_cache_mb: float | None = None,
        person_cache_mb: float | None = None,
        person_cache_items: int | None = None,
        person_cache_ttl: float | None = None,
        synthetic_weights: bool = False,
        paths: ModelPaths | None = None,
    ):
        """An engine from its parts: a `FastFitPipeline` (its device and dtype are the engine's),
        the person `Parsers`, the working size (None: the device's default), the per-image pixel
        limit, whether the pipeline was compiled (warm-up then captures the reference graphs),
        the cache sizes (None: the FASTFIT_* settings), and for reports whether the weights are
        synthetic and where they came from."""
        self.pipeline = pipeline
        self.parsers = parsers
        self.device: torch.device = pipeline.device
        self.dtype: torch.dtype = pipeline.dtype
        self.resolution = working_size(resolution, self.device.type)
        if not resolution and self.device.type != "cuda":
            log.warning(
                "no GPU: working size %dx%d so that a request takes seconds, not the tens of minutes of the "
                "trained size on a CPU; FASTFIT_RESOLUTION (or --resolution) sets another, e.g. 768x1024",
                *CPU_RESOLUTION,
            )
        self.max_pixels = max_pixels
        self.compiled = compiled
        self.synthetic_weights = synthetic_weights  # a WARNING was logged where they were loaded
        self.paths = paths
        self.gpu_lock = threading.Lock()  # the one lock around model work (see runtime/concurrency.py)
        self.garment_cache, self.person_cache = caches_from_settings(
            garment_cache_mb, person_cache_mb, person_cache_items, person_cache_ttl)
        self._caches_on = True
        self.person = PersonPreparer(parsers, self.device, self.resolution, self.person_cache)
        self._prep_pool = ThreadPoolExecutor(max_workers=len(GARMENT_SLOTS), thread_name_prefix="fastfit-prep")

    @classmethod
    def from_models_dir(
        cls,
        models_dir: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        dwpose_device: str = "auto",
        *,
        download: bool = True,
        compile: bool | None = None,
        **options: Any,
    ) -> FastFitEngine:
        """The usual engine: every model from a models tree (downloaded where missing unless
        ``download`` is off, digests checked), on ``device`` (default: CUDA if available) in
        ``dtype`` (default: bfloat16 on CUDA, float32 on the CPU), DWPose on ``dwpose_device``
        ("auto": the engine's GPU when it has the memory and the diffusion is not float32), the
        pipeline compiled per ``compile`` (None: FASTFIT_COMPILE); ``options`` go to the
        constructor (resolution, max_pixels, cache sizes)."""
        from .loading import load_parts

        parts = load_parts(models_dir, device, dtype, dwpose_device, download=download, compile=compile)
        return cls(parts.pipeline, parts.parsers, compiled=parts.compiled, synthetic_weights=parts.synthetic_weights,
                   paths=parts.paths, **options)

    # ------------------------------------------------------------------ caches
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

    def warmup(self, sets: Sequence[Sequence[str]] | None = None) -> float:
        """Throw-away 1-step requests, one per reference-size layout (or ``sets``), before real
        ones: see runtime/warmup.py; returns the seconds taken."""
        from .warmup import warm_up

        return warm_up(self, sets)

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

    def begin(self, request: TryOnRequest) -> StartedRequest:
        """Start a request's host-side work on the worker threads: each garment's resize and
        cache key, the person's crop, cache lookup, DWPose and (on CUDA) the parsers."""
        if request.working_size != self.resolution:
            raise ValueError(f"the request was decoded for {request.working_size}, this engine works at {self.resolution}")
        keyed = self._caches_on and self.garment_cache.enabled
        jobs = [WorkerJob(self._prepare_garment, g, keyed).start(self._prep_pool) for g in request.garments]
        person = self.person.start(request.person, parse=request.mask is None, cached=self._caches_on)
        return StartedRequest(request, jobs, person, keyed)

    def prepare(self, request: TryOnRequest, check: Callable[[], None] | None = None) -> StartedRequest:
        """`begin` and wait until all of it is done, without the GPU lock (the parsers run here on
        a CPU): the service's overlap prepares the next request while another one holds the GPU.
        ``check`` is called meanwhile; if it raises, the request's jobs are settled first (nothing
        it started keeps running). Hand the result to `run(request, prepared=...)`."""
        started = self.begin(request)
        try:
            started.wait(check)
        except BaseException:
            started.settle()
            raise
        started.prepared = True
        return started

    def run(
        self,
        request: TryOnRequest,
        *,
        output_path: str | os.PathLike | None = None,
        progress: ProgressCallback | None = None,
        stage: StageCallback | None = None,
        check: Callable[[], None] | None = None,
        lock_held: bool = False,
        prepared: StartedRequest | None = None,
    ) -> TryOnResult:
        """Run one try-on of a `TryOnRequest`, taken as it is (its fields were checked at the front door).

        `progress(step, total)` is called after each denoising step, `stage(name)` after each timed
        stage but "pose" and "total" (a person-cache hit skips "densepose", "schp", "pose_wait"),
        and `check()` before each stage; `progress` and `check` may raise (a passed deadline, a
        client gone) to stop the request there: the GPU lock and the reference K/V cache are
        released on the way out, after the request's own pose and parser work has ended.
        `lock_held`: the caller holds `gpu_lock` already (the service's admission does).
        `prepared`: what `prepare(request)` made before the GPU turn (else the work starts here).
        """
        if prepared is not None and prepared.request is not request:
            raise ValueError("prepared for another request")
        with holding(self.gpu_lock, lock_held):
            started = prepared if prepared is not None else self.begin(request)
            result = run_started(self, started, progress, stage, check)
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
            work = self.person.start(request.person, parse=request.mask is None, cached=self._caches_on)
            try:
                parsed = work.parsed()
                pose, timings = work.finish(parsed)
            finally:
                work.settle()  # DWPose never outlives its request (runtime/concurrency.py)
            mask = request.mask if parsed is None else parsed.grown(request.params.mask_grow)
            prep = Preparation(person=work.person, pose=pose, mask=mask, seed=request.params.seed, timings=timings)
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

    def _prepare_garment(self, garment: GarmentInput, keyed: bool) -> tuple[int, Image.Image, tuple | None]:
        """One garment's class index, resized reference and (if ``keyed``) garment-cache key; a
        prep thread runs one per garment beside the person's preparation (LANCZOS resizes and
        SHA-256 release the GIL)."""
        reference = prepare_reference(garment.image, self.reference_sizes[garment.slot])
        key = self.pipeline.reference_key(garment.class_index, reference) if keyed else None
        return garment.class_index, reference, key
