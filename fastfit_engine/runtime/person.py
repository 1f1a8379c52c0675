"""The person's side of a request: DWPose, DensePose, SCHP and the cloth-agnostic mask.

Why its own module: these stages need no diffusion model, so they can run before or beside the
GPU work of a request (the garment half of the same request, or with the service's overlap the
previous request's denoising; runtime/concurrency.py). `PersonPreparer` owns the parsers, the
person cache lookups, the pose and parser threads and the parser stream; `PersonWork` is one
request's person side once started, which its owner either collects (`parsed`, `finish`) or
settles.

DWPose runs on its own thread (on the engine's GPU as torch modules when it has the memory, else
on the CPU with onnxruntime; FASTFIT_DWPOSE_DEVICE); DensePose, SCHP and the mask on the parser
thread and its CUDA stream, or on a CPU on the collecting thread (a CPU has no idle units to run
them beside other work). As in the reference app the mask is its multi-reference variant
without the square cloth mask, so it draws nothing from the seed and is cached with the maps.
"""
from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..request.images import prepare_person
from ..weights.assets import ModelPaths
from .caches import LRUCache, PersonMaps, image_digest
from .concurrency import WorkerJob

# A mask preview's stages (then "total"); the try-on's names for the same stages.
PREVIEW_STAGES = ("pose", "densepose", "schp", "mask")


@dataclass
class Parsers:
    """The person models: DWPose, DensePose, SCHP on LIP and on ATR labels."""

    pose: Any  # parse_utils.DWposeDetector: image -> skeleton drawing
    densepose: Any  # parse_utils.DensePose: image -> part labels
    schp_lip: Any  # parse_utils.SCHP (LIP labels)
    schp_atr: Any  # parse_utils.SCHP (ATR labels)

    @classmethod
    def load(cls, paths: ModelPaths, device: torch.device, dwpose_device: str | torch.device) -> Parsers:
        """The four models from a models tree; DensePose and SCHP on ``device``."""
        from parse_utils import SCHP, DensePose, DWposeDetector

        parser_device = str(device)
        return cls(
            pose=DWposeDetector(paths.dwpose, device=str(dwpose_device)),
            densepose=DensePose(paths.densepose, device=parser_device),
            schp_lip=SCHP(paths.schp_lip, device=parser_device),
            schp_atr=SCHP(paths.schp_atr, device=parser_device),
        )


@dataclass
class Preparation:
    """What the stages before diffusion make of one person photo."""

    person: Image.Image  # cropped to 3:4 and resized to the working size
    pose: Image.Image  # DWPose skeleton drawing
    mask: Image.Image  # L; 255 where the model repaints
    seed: int  # reported with the preview (the mask itself draws nothing from it)
    timings: dict[str, float]  # seconds: pose, densepose, schp, mask, total

    masked_person: Image.Image | None = None  # RGB; what diffusion is conditioned on (previews only)


@dataclass
class ParsedPerson:
    """What the parser stages hand back: DensePose, SCHP LIP and ATR maps, the mask, its timings."""

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


class PersonWork:
    """One request's person side once started: the prepared photo, its cache key and cached maps
    (a hit starts nothing), DWPose's job and the parser job (None: the caller gave a mask)."""

    def __init__(self, person: Image.Image, key: tuple | None, maps: PersonMaps | None, cache: LRUCache,
                 pose_job: WorkerJob | None, parse_job: WorkerJob | None) -> None:
        self.person, self.key, self.maps, self._cache = person, key, maps, cache
        self.pose_job, self.parse_job = pose_job, parse_job

    @property
    def hit(self) -> bool:
        """The person cache gave the maps (nothing was parsed for this request)."""
        return self.maps is not None and self.pose_job is None

    def wait(self, check: Callable[[], None] | None) -> None:
        """Until DWPose and the parsers are done (the parsers here, if they were not started),
        calling ``check`` meanwhile (it may raise: then `settle`)."""
        for job in (self.parse_job, self.pose_job):
            if job is not None:
                job.wait(check)

    def parsed(self) -> ParsedPerson | None:
        """The parser maps and mask (None with the caller's mask), waiting for the parser job."""
        return None if self.parse_job is None else self.parse_job.result()

    @property
    def parsed_here(self) -> bool:
        """The parsers ran on the thread that asked for them (their time is not a wait)."""
        return self.parse_job is not None and self.parse_job.ran_here

    def finish(self, parsed: ParsedPerson | None) -> tuple[Image.Image, dict[str, float]]:
        """The pose drawing, waiting for DWPose (a new person's maps go into the person cache),
        and the person stages' seconds (0 for what the cache saved)."""
        timings = dict.fromkeys(PREVIEW_STAGES, 0.0)
        if self.pose_job is None:
            pose = self.maps.pose
        else:
            pose, timings["pose"] = self.pose_job.result()
        if parsed is not None:
            timings.update(parsed.timings)
            if self.maps is None:
                self.maps = parsed.maps(pose)
                if self.key is not None:
                    self._cache.put(self.key, self.maps, self.maps.nbytes)
        return pose, timings

    def settle(self) -> None:
        """Nothing started here outlives its request: drop what has not started, wait for the rest."""
        for job in (self.pose_job, self.parse_job):
            if job is not None:
                job.settle()


def cloth_mask(densepose: np.ndarray, lip: np.ndarray, atr: np.ndarray) -> Image.Image:
    """The cloth-agnostic mask from the parser maps (the pose plays no part). The upstream app's
    variant: no square cloth mask, so the horizontal widening makes no random draws and the mask
    is the same for every seed (and is cached with the maps)."""
    from parse_utils import multi_ref_cloth_agnostic_mask

    return multi_ref_cloth_agnostic_mask(densepose, lip, atr, square_cloth_mask=False, horizon_expand=True)


class PersonPreparer:
    """Starts a request's person side on the pose and parser threads (runtime/concurrency.py)."""

    def __init__(self, parsers: Parsers, device: torch.device, resolution: tuple[int, int],
                 person_cache: LRUCache) -> None:
        self.parsers, self.device, self.resolution, self.person_cache = parsers, device, resolution, person_cache
        self._pose_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastfit-pose")
        self._parse_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastfit-parse")
        # DensePose, SCHP and the mask on that thread beside other GPU work: on CUDA; a CPU has no
        # idle units for them, so there they run on the thread that collects them
        self.parse_beside = device.type == "cuda"
        self._parse_stream: torch.cuda.Stream | None = None
        # one person parsed at a time: on a CPU the parsers run on the collecting thread, which
        # with the service's overlap can be a preparing request's beside a preview's
        self._parse_lock = threading.Lock()

    cloth_mask = staticmethod(cloth_mask)  # an attribute, so a test can give a known mask

    def start(self, person_img: Image.Image, *, parse: bool, cached: bool) -> PersonWork:
        """Crop and resize the photo, look it up in the person cache (``cached``), and start
        DWPose and (``parse``: the caller gave no mask) the parsers for what the cache lacks."""
        person = prepare_person(person_img, self.resolution)
        key = (image_digest(person), person.size) if cached and self.person_cache.enabled else None
        maps = self.person_cache.get(key) if key is not None else None
        pose_job = None if maps is not None else WorkerJob(self._timed_pose, person).start(self._pose_worker)
        parse_job = None
        if parse:
            parse_job = WorkerJob(self._parse_and_mask, person, maps)
            if self.parse_beside and maps is None:
                parse_job.start(self._parse_worker)
        return PersonWork(person, key, maps, self.person_cache, pose_job, parse_job)

    def _parse_and_mask(self, person: Image.Image, maps: PersonMaps | None) -> ParsedPerson:
        """The parser maps and the mask, each stage timed on its own (on the parser stream)."""
        if maps is not None:
            return ParsedPerson(maps.densepose, maps.lip, maps.atr, maps.mask, {})
        cuda = self.device.type == "cuda"
        timings: dict[str, float] = {}
        with contextlib.ExitStack() as stack:
            stack.enter_context(self._parse_lock)
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

            densepose = np.asarray(self.parsers.densepose(person))
            lap("densepose")
            lip = np.asarray(self.parsers.schp_lip(person))
            atr = np.asarray(self.parsers.schp_atr(person))
            lap("schp")
            mask = self.cloth_mask(densepose, lip, atr)
            lap("mask")
        return ParsedPerson(densepose, lip, atr, mask, timings)

    def _timed_pose(self, person: Image.Image) -> tuple[Image.Image, float]:
        """DWPose on the pose thread: the drawing and the seconds it took there."""
        t0 = time.perf_counter()
        pose = self.parsers.pose(person)
        return pose, time.perf_counter() - t0

