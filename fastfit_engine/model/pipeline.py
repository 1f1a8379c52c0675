"""FastFitPipeline: multi-reference virtual try-on with a per-request reference K/V cache.

Semantics follow FastFit's published pipeline (arXiv 2508.20586; github Zheng-Chong/FastFit):
masked person composited with the pose skeleton, VAE latents, nearest-sampled latent mask,
classifier-free guidance whose unconditional row uses zero reference latents, DDPM steps, decode,
repaint outside the mask.

Deliberate differences, none of which changes a result beyond float rounding: the unconditional
(zero-latent) reference K/V are memoised per (label, latent size) across requests; every image is
VAE-encoded alone and every garment has its own conditional reference pass (batch 1), so what a
garment contributes never depends on the other images of the request: that is what lets the
garment half of a request run before the pose exists (:meth:`prepare_references`) and lets a
garment cache across requests (fastfit_engine/runtime/caches.py) return exactly what a pass computes.

Determinism contract (deliberately stricter than the reference, whose VAE sampling uses the global
RNG): one torch.Generator on the pipeline device seeded with ``seed``; its first draw is the
initial noise (1, 4, H/8, W/8) in the weight dtype, then one scheduler draw per step; VAE
encodings use the posterior mode.
"""
from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fastfit_engine.model.compile_fallback import EagerFallback
from fastfit_engine.model.defaults import DEFAULT_GUIDANCE, DEFAULT_STEPS, draw_seed, guidance_runs
from fastfit_engine.model.garment_store import GarmentStore, image_digest, snapshot_nbytes
from fastfit_engine.errors import NonFiniteOutputError
from fastfit_engine.model.group_norm import use_fast_group_norm
from fastfit_engine.model.loading import load_scheduler, load_vae
from fastfit_engine.model.reference_graphs import ReferenceGraphs
from fastfit_engine.model.unet import GARMENT_LABELS, FastFitUNet

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DDPMScheduler

__all__ = ["FastFitPipeline", "PersonInputs", "PreparedReferences", "GARMENT_LABELS"]

_LABEL_NAMES = {v: k for k, v in GARMENT_LABELS.items()}


def _label_index(label: Any) -> int:
    if isinstance(label, bool):
        raise ValueError(f"unknown garment label {label!r}; expected one of {sorted(GARMENT_LABELS)} or 0..4")
    if isinstance(label, (int, np.integer)):
        if 0 <= int(label) < len(GARMENT_LABELS):
            return int(label)
    elif isinstance(label, str) and label.lower() in GARMENT_LABELS:
        return GARMENT_LABELS[label.lower()]
    raise ValueError(f"unknown garment label {label!r}; expected one of {sorted(GARMENT_LABELS)} or 0..4")


def _check_image(image: Any, what: str) -> None:
    if not isinstance(image, Image.Image):
        raise ValueError(f"{what} must be a PIL image, got {type(image).__name__}")
    w, h = image.size
    if w < 8 or h < 8 or w % 8 or h % 8:
        raise ValueError(f"{what} size {w}x{h} must be a positive multiple of 8 in both sides")


def _indices_by_size(tensors: Sequence[torch.Tensor]) -> list[list[int]]:
    """Indices grouped by spatial size, in first-seen order, so equal sizes can share a batch."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, x in enumerate(tensors):
        groups.setdefault(tuple(x.shape[-2:]), []).append(i)
    return list(groups.values())


@dataclass(frozen=True)
class PersonInputs:
    """The person side of one request as tensors on the pipeline device, in the weight dtype."""

    image: torch.Tensor  # [1, 3, H, W] person in [-1, 1]
    mask: torch.Tensor  # [1, 1, H, W] 1 = repaint, 0 = keep
    masked: torch.Tensor  # [1, 3, H, W] person, the mask area replaced by the pose skeleton (or zero)
    latent_mask: torch.Tensor  # [1, 1, H/8, W/8] the mask sampled nearest


@dataclass(frozen=True)
class PreparedReferences(Sequence):
    """The garment half of one request, live in the UNet's reference K/V cache (see
    :meth:`FastFitPipeline.prepare_references`); a sequence of the (label, image) pairs as given."""

    references: tuple[tuple[str | int, Image.Image], ...]
    labels: tuple[int, ...]  # class indices, in reference order
    latent_size: tuple[int, int]  # the person latent (h, w) the cache was sized for
    do_cfg: bool  # the cache holds the unconditional row too
    cached: tuple[bool, ...]  # per reference: conditional K/V restored from the garment cache
    request: object = field(repr=False, compare=False)  # the cache request it lives in

    def __len__(self) -> int:
        return len(self.references)

    def __getitem__(self, index):  # type: ignore[override]
        return self.references[index]


class FastFitPipeline:
    """Loads unet/, vae/, scheduler/ from a FastFit model folder and runs try-on requests.

    ``__call__`` is built from public steps, as diffusers pipelines are: :meth:`check_inputs`,
    :meth:`prepare_person_inputs`, :meth:`encode_images`, :meth:`prepare_timesteps`,
    :meth:`prepare_latents`, :meth:`prepare_model_input`, :meth:`prepare_references` (which runs
    :meth:`run_reference_passes`), :meth:`denoise_step`, :meth:`decode_latents`, :meth:`postprocess`.
    Call them under ``torch.inference_mode()``, as ``__call__`` does. The garment half needs
    neither the person nor the pose: :meth:`prepare_references` runs it (with an optional garment
    cache) and its result can be passed to ``__call__`` as ``references``, so a caller can do
    that work while the pose detector runs elsewhere.
    """

    def __init__(
        self, unet: FastFitUNet, vae: AutoencoderKL, scheduler: DDPMScheduler, device: str | torch.device, dtype: torch.dtype
    ) -> None:
        self.unet = unet
        self.vae = vae
        self.scheduler = scheduler
        self.device = torch.device(device)
        self.dtype = dtype
        self.vae_scale = float(vae.config.scaling_factor)
        self._denoise = unet.forward_denoise
        # compiled calls (compile_unet, compile_vae) turn eager together if compiling ever fails
        self.compile_fallback = EagerFallback()
        # K/V of the zero reference latent (the unconditional row) depend only on the weights,
        # the label and the latent size, so they are computed once and reused across requests
        self.unconditional_memo_size = 10
        self._unconditional_memo: OrderedDict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
        # conditional reference passes replayed from CUDA graphs (capture_reference_graphs)
        self.reference_graphs: ReferenceGraphs | None = None

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | os.PathLike,
        device: str | torch.device = "cuda",
        dtype: torch.dtype = torch.bfloat16,
        *,
        channels_last: bool | None = None,
        compile_unet: bool = False,
        compile_vae: bool = False,
        attention_backend: str = "auto",
        fast_group_norm: bool | None = None,
    ) -> FastFitPipeline:
        """``model_dir`` holds unet/, vae/ and scheduler/ (diffusers layout).

        GPU options: ``channels_last`` (default: on for CUDA, off on CPU) stores conv weights
        NHWC; ``attention_backend`` "cudnn" puts cuDNN first in SDPA's priority for the UNet's
        self-attention (falls back to flash where cuDNN cannot run); ``compile_unet`` /
        ``compile_vae`` use torch.compile (slow first call per shape); ``fast_group_norm``
        swaps GroupNorm for a same-numerics, better-parallelised version (default: VAE only, CUDA only).
        """
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise FileNotFoundError(f"FastFit model folder not found: {model_dir}")
        missing = [sub for sub in ("unet", "vae", "scheduler") if not (model_dir / sub).is_dir()]
        if missing:
            raise FileNotFoundError(f"{model_dir} is not a FastFit model folder: missing {', '.join(missing)}/")
        device = torch.device(device)
        scheduler = load_scheduler(model_dir / "scheduler")
        unet = FastFitUNet.from_pretrained(model_dir / "unet", device=device, dtype=dtype)
        vae = load_vae(model_dir / "vae", device=device, dtype=dtype)
        # measured on an H100: the swap speeds the VAE (full-resolution, 128-channel norms:
        # decode 68 -> 41 ms) but slows the eager UNet step (43 -> 47 ms), so by default on CUDA
        # it applies to the VAE only; True applies it to both, False to neither
        if fast_group_norm is None:
            if device.type == "cuda":
                use_fast_group_norm(vae)
        elif fast_group_norm:
            use_fast_group_norm(unet)
            use_fast_group_norm(vae)
        # measured on an H100 (eager, 768x1024): channels_last spares cuDNN its layout conversions,
        # upper+lower 1.54 -> 1.48 s, dress+shoe 1.46 -> 1.33 s; default on CUDA, off on CPU
        if channels_last is None:
            channels_last = device.type == "cuda"
        if channels_last:
            unet.to(memory_format=torch.channels_last)
            vae.to(memory_format=torch.channels_last)
        pipe = cls(unet, vae, scheduler, device, dtype)
        pipe.set_attention_backend(attention_backend)
        if compile_unet:
            pipe.compile_unet()
        if compile_vae:
            pipe.compile_vae()
        return pipe

    def set_attention_backend(self, name: str) -> None:
        """"auto": FlashAttention-4 where it is faster (head size <= 80) and cuDNN first for the
        rest when FA4 can run here (package installed, SM90+ GPU), else PyTorch's SDPA choice;
        "fa4": the same, an error where FA4 cannot run; "triton": our Triton kernel for head
        sizes 40 and 80 (triton_attention.py; slower than FA4 today, so not the default), cuDNN
        first for the rest, an error where it cannot run (no SM90+ GPU); "sdpa": PyTorch's SDPA
        choice, no FA4; "cudnn"/"flash": SDPA with that priority."""
        from torch.nn.attention import SDPBackend

        from fastfit_engine.model.flash_attention import enable_fa4, enable_triton

        cudnn = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
        orders = {
            "auto": None,
            "sdpa": None,
            "fa4": cudnn,
            "triton": cudnn,
            "cudnn": cudnn,
            "flash": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH],
        }
        if name not in orders:
            raise ValueError(f"unknown attention_backend {name!r}; expected one of {sorted(orders)}")
        policy = self.unet.kv_cache.attention_policy
        policy.sdpa_backends = orders[name]
        policy.fa4 = False
        policy.triton = False
        if name in ("auto", "fa4") and enable_fa4(policy, self.device, required=name == "fa4"):
            policy.sdpa_backends = cudnn
        if name == "triton":
            enable_triton(policy, self.device, required=True)

    @staticmethod
    def _compile_options(kwargs: dict) -> dict:
        """Static shapes, except where ``compile_unet`` marks a dimension dynamic itself.

        With PyTorch's default automatic dynamic shapes, a second image shape would recompile the
        model shape-generically and later requests of the first shape would switch to that graph,
        whose kernels round differently: the first request's image would not repeat bit for bit.
        """
        import torch._dynamo

        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
        return {"dynamic": False, **kwargs}

    def compile_vae(self, **kwargs: Any) -> None:
        """torch.compile the VAE encoder and decoder (GPU option; one graph per image batch shape);
        eager again if compiling fails (``compile_fallback``)."""
        options = self._compile_options(kwargs)
        for name, module in (("VAE encoder", self.vae.encoder), ("VAE decoder", self.vae.decoder)):
            eager = module.forward
            module.forward = self.compile_fallback.guard(name, torch.compile(eager, **options), eager)

    def compile_unet(self, batch_sizes: tuple[int, ...] = (2,), **kwargs: Any) -> None:
        """torch.compile the denoising forward (GPU option; the reference pass stays eager).

        One graph serves every garment layout: the reference K/V buffers' token dimension is
        marked dynamic from the first compilation on, and it is the only one that varies between
        layouts (the person's shape is fixed per engine). Nothing the compiler generates reduces
        over that dimension (attention is an opaque FA4 or SDPA call; the rest only copies the
        person's K/V into the buffer's tail), so the image of a layout does not depend on which
        layout compiled the graph, and the warm-up compiles once instead of once per layout.
        (bench/README.md, "Compile cache", has the warm-up times both ways.)

        Only steps of ``batch_sizes`` rows run compiled (default: 2, classifier-free guidance);
        others (guidance 1.0: one row) stay eager, so such a request never waits minutes for a
        shape the warm-up did not compile. A failed compilation turns the step eager
        (``compile_fallback``).
        """
        self.unet.kv_cache.dynamic_tokens = True
        compiled = torch.compile(self.unet.forward, **self._compile_options(kwargs))
        forward_denoise = self.unet.forward_denoise
        batch_sizes = tuple(batch_sizes)

        def compiled_step(sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            return forward_denoise(sample, timestep, forward=compiled)

        guarded = self.compile_fallback.guard("denoising step", compiled_step, forward_denoise)

        def denoise(sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            if sample.shape[0] not in batch_sizes:
                return forward_denoise(sample, timestep)
            return guarded(sample, timestep)

        self._denoise = denoise

    # -- preparation steps (public: __call__ is built from them, benchmarks time them) -------------
    def check_inputs(
        self,
        person: Image.Image,
        mask: Image.Image,
        references: Sequence[tuple[str | int, Image.Image]],
        pose: Image.Image | None,
        num_inference_steps: int,
    ) -> list[tuple[int, Image.Image]]:
        """Raise a ValueError naming the first bad argument; return the references as (class index, image)."""
        _check_image(person, "person image")
        if not isinstance(mask, Image.Image):
            raise ValueError(f"mask must be a PIL image, got {type(mask).__name__}")
        if mask.size != person.size:
            raise ValueError(f"mask size {mask.size[0]}x{mask.size[1]} != person size {person.size[0]}x{person.size[1]}")
        if pose is not None and not isinstance(pose, Image.Image):
            raise ValueError(f"pose must be a PIL image or None, got {type(pose).__name__}")
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        return self.check_references(references)

    @staticmethod
    def check_references(references: Sequence[tuple[str | int, Image.Image]]) -> list[tuple[int, Image.Image]]:
        """Raise a ValueError naming the first bad reference; return them as (class index, image)."""
        if references is None or len(references) == 0:
            raise ValueError("at least one reference garment is required")
        refs = []
        for i, item in enumerate(references):
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise ValueError(f"reference {i} must be a (label, PIL image) pair")
            label, image = item
            idx = _label_index(label)
            _check_image(image, f"reference {i} ({_LABEL_NAMES[idx]})")
            refs.append((idx, image))
        return refs

    def to_device(self, host: torch.Tensor) -> torch.Tensor:
        """A host tensor on the pipeline's device without waiting for the GPU's queued work.

        A plain ``.to("cuda")`` from pageable memory synchronises the stream, which stalled the
        garment half's kernel launches behind each encode (H200, 2026-12-01); a pinned copy is
        queued like any kernel. The values are the same either way.
        """
        if self.device.type != "cuda":
            return host.to(self.device)
        return host.pin_memory().to(self.device, non_blocking=True)

    def preprocess_image(self, image: Image.Image) -> torch.Tensor:
        """uint8 RGB -> [1,3,H,W] in [-1,1]; the scaling happens in fp32 before the cast."""
        arr = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy())
        x = self.to_device(arr).permute(2, 0, 1).unsqueeze(0).float()
        return (x / 127.5 - 1.0).to(self.dtype)

    def prepare_person_inputs(self, person: Image.Image, mask: Image.Image, pose: Image.Image | None) -> PersonInputs:
        """Person tensor, binary mask (>= 0.5 repaints), masked person with the pose skeleton, latent mask."""
        dtype = self.dtype
        width, height = person.size
        person_x = self.preprocess_image(person)
        mask_arr = torch.from_numpy(np.asarray(mask.convert("L"), dtype=np.uint8).copy())
        mask_f32 = (self.to_device(mask_arr).float() / 255.0 >= 0.5).float()[None, None]
        mask_x = mask_f32.to(dtype)
        if pose is not None:
            pose_img = pose.convert("RGB")
            if pose_img.size != person.size:
                pose_img = pose_img.resize(person.size)
            pose_arr = torch.from_numpy(np.asarray(pose_img, dtype=np.uint8).copy())
            pose_x = (self.to_device(pose_arr).permute(2, 0, 1).unsqueeze(0).float() / 255.0).to(dtype)
            masked = person_x * (1 - mask_x) + mask_x * pose_x
        else:
            masked = person_x * (1 - mask_x)
        latent_mask = F.interpolate(mask_f32, size=(height // 8, width // 8), mode="nearest").to(dtype)
        return PersonInputs(image=person_x, mask=mask_x, masked=masked, latent_mask=latent_mask)

    def encode_images(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """Scaled VAE posterior modes; equal-size images are encoded as one batch (the mode is per-sample)."""
        out: list[torch.Tensor | None] = [None] * len(images)
        for indices in _indices_by_size(images):
            batch = torch.cat([images[i] for i in indices], dim=0)
            latents = self.vae.encode(batch).latent_dist.mode() * self.vae_scale
            for j, i in enumerate(indices):
                out[i] = latents[j : j + 1]
        return out

    def prepare_timesteps(self, num_inference_steps: int) -> tuple[DDPMScheduler, list[int], torch.Tensor]:
        """A per-request copy of the scheduler set to ``num_inference_steps``, its timesteps on the
        host and on the device (the step needs no host sync)."""
        scheduler = type(self.scheduler).from_config(self.scheduler.config)
        scheduler.set_timesteps(num_inference_steps)
        timesteps = [int(t) for t in scheduler.timesteps]
        return scheduler, timesteps, self.to_device(torch.tensor(timesteps, dtype=torch.int64))

    def prepare_latents(
        self, latent_size: tuple[int, int], generator: torch.Generator, scheduler: DDPMScheduler
    ) -> torch.Tensor:
        """Initial noise [1, 4, h, w] in the weight dtype: the generator's first draw."""
        latents = torch.randn((1, 4, *latent_size), generator=generator, device=self.device, dtype=self.dtype)
        return latents * scheduler.init_noise_sigma

    def prepare_model_input(self, masked_latent: torch.Tensor, latent_mask: torch.Tensor, rows: int) -> torch.Tensor:
        """The 9-channel UNet input [rows, noisy latent | mask | masked person latent]; each step fills 0:4."""
        model_input = torch.empty((rows, 9, *masked_latent.shape[-2:]), device=self.device, dtype=self.dtype)
        model_input[:, 4:5] = latent_mask
        model_input[:, 5:9] = masked_latent
        return model_input

    def capture_reference_graphs(self, reference_sizes: Sequence[tuple[int, int]], graphs: bool | None = None) -> None:
        """Capture the conditional reference pass as a CUDA graph for references of each (W, H)
        in ``reference_sizes`` (see fastfit_engine/model/reference_graphs.py); later passes of those
        sizes replay it, others stay eager. Call it between requests (the engine's warm-up does).
        ``graphs=False`` (the default off CUDA) runs the same staging path without graphs."""
        if graphs is None:
            graphs = self.device.type == "cuda"
        if self.reference_graphs is None or self.reference_graphs.graphs != graphs:
            self.reference_graphs = ReferenceGraphs(self.unet, graphs=graphs)
        channels = self.vae.config.latent_channels
        with torch.inference_mode():
            for width, height in reference_sizes:
                self.reference_graphs.capture((height // 8, width // 8), channels, self.dtype, self.device)

    def run_reference_passes(
        self,
        labels: Sequence[int],
        ref_latents: Sequence[torch.Tensor | None],
        do_cfg: bool,
        cached: Sequence[list[tuple[torch.Tensor, torch.Tensor]] | None] | None = None,
    ) -> None:
        """Fill the begun cache: the unconditional row from the memo; the conditional row of each
        reference from ``cached[i]`` (a :meth:`ReferenceKVCache.snapshot` of that row, e.g. from
        the garment cache; its latent may then be None) or from a pass of that reference alone.

        One pass per reference (batch 1) rather than one per group of equal sizes: a garment's K/V
        must not depend on the garments it came with, or a cached copy would not be exact. A pass
        of a size with a captured graph (:meth:`capture_reference_graphs`) is a graph replay.
        """
        cache = self.unet.kv_cache
        if cache.request is None:
            raise RuntimeError("ReferenceKVCache.begin() must be called before the reference passes")
        hws = cache.request.ref_hws
        if do_cfg:
            for i, label in enumerate(labels):
                self._unconditional_reference(i, label, hws[i])
        cond_row = 1 if do_cfg else 0
        for i, label in enumerate(labels):
            if cached is not None and cached[i] is not None:
                cache.restore(i, cond_row, cached[i])
                continue
            staged = self.reference_graphs.run(label, ref_latents[i]) if self.reference_graphs is not None else None
            if staged is not None:
                cache.restore(i, cond_row, staged)
                continue
            label_t = torch.full((1,), label, dtype=torch.int64, device=self.device)
            self.unet.forward_reference(ref_latents[i], label_t, [i], rows=[cond_row])

    def reference_key(self, label: str | int, image: Image.Image) -> tuple:
        """Garment-cache key of a prepared reference: what its conditional K/V depend on besides
        the weights (content hash, class index of the label, size, weight dtype and device)."""
        return (image_digest(image), _label_index(label), tuple(image.size), str(self.unet.dtype), str(self.unet.device))

    @contextlib.contextmanager
    def prepare_references(
        self,
        references: Sequence[tuple[str | int, Image.Image]],
        person_size: tuple[int, int],
        guidance_scale: float,
        *,
        garment_cache: GarmentStore | None = None,
        keys: Sequence[tuple] | None = None,
    ) -> Iterator[PreparedReferences]:
        """The garment half of a request, which needs neither the person image nor the pose.

        Encodes each reference alone, sizes the UNet's reference K/V cache for a person of
        ``person_size`` (W, H) and fills it; with ``garment_cache``, a garment seen before (same
        prepared image bytes, label, size, dtype, device) restores its conditional K/V instead of
        being encoded and passed, and a new one is stored. ``keys`` are the references' cache keys
        (:meth:`reference_key`, in order) where the caller has them already. Yields the live set,
        to be passed to ``__call__`` as ``references`` inside this block; the cache is freed on exit.
        """
        refs = self.check_references(references)
        labels = [label for label, _ in refs]
        do_cfg = guidance_runs(guidance_scale)
        width, height = person_size
        latent_size = (height // 8, width // 8)
        use_cache = garment_cache is not None and garment_cache.enabled
        if keys is not None and len(keys) != len(refs):
            raise ValueError(f"{len(keys)} garment-cache keys for {len(refs)} references")
        if not use_cache:
            keys = []
        elif keys is None:
            keys = [self.reference_key(label, image) for label, image in refs]
        hits = [garment_cache.get(key) for key in keys] if use_cache else [None] * len(refs)
        latents = [
            self.encode_images([self.preprocess_image(image)])[0] if hit is None else None
            for hit, (_, image) in zip(hits, refs)
        ]
        cache = self.unet.kv_cache
        try:
            cache.begin(2 if do_cfg else 1, latent_size, [(image.size[1] // 8, image.size[0] // 8) for _, image in refs])
            self.run_reference_passes(labels, latents, do_cfg, cached=hits)
            if use_cache:
                cond_row = 1 if do_cfg else 0
                for i, key in enumerate(keys):
                    if hits[i] is None:
                        snapshot = cache.snapshot(i, cond_row)
                        garment_cache.put(key, snapshot, snapshot_nbytes(snapshot))
            yield PreparedReferences(
                references=tuple(tuple(item) for item in references),
                labels=tuple(labels),
                latent_size=latent_size,
                do_cfg=do_cfg,
                cached=tuple(hit is not None for hit in hits),
                request=cache.request,
            )
        finally:
            cache.clear()

    def denoise_step(
        self,
        model_input: torch.Tensor,
        latents: torch.Tensor,
        timestep: int,
        timestep_device: torch.Tensor,
        scheduler: DDPMScheduler,
        guidance_scale: float,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """One DDPM step inside :meth:`prepare_references`: UNet on the (guided) rows, then the scheduler."""
        model_input[:, 0:4] = scheduler.scale_model_input(latents, timestep)
        noise_pred = self._denoise(model_input, timestep_device)
        if model_input.shape[0] == 2:
            uncond, cond = noise_pred.chunk(2)
            noise_pred = uncond + guidance_scale * (cond - uncond)
        return scheduler.step(noise_pred, timestep, latents, generator=generator).prev_sample

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE decode to [1,3,H,W] in about [-1,1]."""
        return self.vae.decode(latents.to(self.vae.dtype) / self.vae_scale).sample

    def postprocess(self, image: torch.Tensor, person: PersonInputs) -> Image.Image:
        """Repaint outside the mask with the original person, then round to a PIL RGB image.

        A decoded image with NaN or Inf raises NonFiniteOutputError: rounding would turn it into
        a plausible-looking black image (corrupt weights did exactly that)."""
        if not bool(torch.isfinite(image).all()):
            raise NonFiniteOutputError("the model produced a non-finite (NaN/Inf) image")
        image = image * person.mask + (1 - person.mask) * person.image
        image = (image / 2 + 0.5).clamp(0, 1)
        arr = image[0].permute(1, 2, 0).float().cpu().numpy()
        arr = np.round(arr * 255.0).astype(np.uint8)
        return Image.fromarray(arr)

    # -- call -------------------------------------------------------------------------------------
    @torch.inference_mode()
    def __call__(
        self,
        person: Image.Image,
        mask: Image.Image,
        references: Sequence[tuple[str | int, Image.Image]],
        pose: Image.Image | None = None,
        num_inference_steps: int = DEFAULT_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE,
        seed: int | None = None,
        *,
        callback: Callable[[int, int], None] | None = None,
    ) -> Image.Image:
        """Return the try-on result as a PIL RGB image of the person's size.

        The defaults are the request schema's (`model/defaults.py`): 30 steps, guidance 2.5 and
        a fresh random seed when none is given (pass one to reproduce an image). The pipeline is
        single-threaded: one call at a time per pipeline (its reference K/V cache, memo and
        CUDA-graph buffers are shared; see fastfit_engine/runtime/concurrency.py).

        ``references`` are (label, image) pairs, or the live result of :meth:`prepare_references`
        (made for this person size and guidance), whose garment work is then not repeated.
        """
        refs = self.check_inputs(person, mask, references, pose, num_inference_steps)
        seed = draw_seed() if seed is None else seed
        if not isinstance(references, PreparedReferences):
            with self.prepare_references(refs, person.size, guidance_scale) as prepared:
                return self.generate(person, mask, prepared, pose=pose, num_inference_steps=num_inference_steps,
                                     guidance_scale=guidance_scale, seed=seed, callback=callback)
        return self.generate(person, mask, references, pose=pose, num_inference_steps=num_inference_steps,
                             guidance_scale=guidance_scale, seed=seed, callback=callback)

    def _check_prepared(self, prepared: PreparedReferences, person_size: tuple[int, int], guidance_scale: float) -> None:
        if prepared.request is None or prepared.request is not self.unet.kv_cache.request:
            raise ValueError("prepared references are not live: use them inside their prepare_references() block")
        width, height = person_size
        if prepared.latent_size != (height // 8, width // 8):
            raise ValueError(f"prepared references were made for another person size, not {width}x{height}")
        if prepared.do_cfg != guidance_runs(guidance_scale):
            raise ValueError(f"prepared references were made for guidance {'> 1' if prepared.do_cfg else '<= 1'}, got {guidance_scale}")

    @torch.inference_mode()
    def generate(
        self,
        person: Image.Image,
        mask: Image.Image,
        prepared: PreparedReferences,
        *,
        pose: Image.Image | None,
        num_inference_steps: int,
        guidance_scale: float,
        seed: int,
        callback: Callable[[int, int], None] | None = None,
    ) -> Image.Image:
        """The person half and the denoising loop, inside a live :meth:`prepare_references` block,
        for inputs already checked (by ``__call__``, or a `TryOnRequest` the engine runs): nothing
        is validated or defaulted again here."""
        self._check_prepared(prepared, person.size, guidance_scale)
        person_inputs = self.prepare_person_inputs(person, mask, pose)
        (masked_latent,) = self.encode_images([person_inputs.masked])
        latent_size = tuple(person_inputs.latent_mask.shape[-2:])
        generator = torch.Generator(device=self.device).manual_seed(int(seed))
        scheduler, timesteps, timesteps_device = self.prepare_timesteps(num_inference_steps)
        latents = self.prepare_latents(latent_size, generator, scheduler)
        model_input = self.prepare_model_input(masked_latent, person_inputs.latent_mask, rows=2 if prepared.do_cfg else 1)
        for i, t in enumerate(timesteps):
            latents = self.denoise_step(model_input, latents, t, timesteps_device[i], scheduler, guidance_scale, generator)
            if callback is not None:
                callback(i, num_inference_steps)
        return self.postprocess(self.decode_latents(latents), person_inputs)

    # -- unconditional reference memo -------------------------------------------------------------
    def clear_unconditional_memo(self) -> None:
        """Drop the memoised unconditional reference K/V (e.g. after changing the UNet weights)."""
        self._unconditional_memo.clear()

    def _unconditional_reference(self, ref: int, label: int, latent_hw: tuple[int, int]) -> None:
        """Fill cache row 0 of ``ref`` with the K/V of a zero latent of ``latent_hw`` carrying ``label``.

        Always computed alone (batch 1), so the stored values do not depend on which request
        first needed them and repeated requests stay bit-identical.
        """
        cache = self.unet.kv_cache
        key = (label, tuple(latent_hw), self.unet.dtype, str(self.unet.device))
        memo = self._unconditional_memo
        if key in memo:
            memo.move_to_end(key)
            cache.restore(ref, 0, memo[key])
            return
        label_t = torch.full((1,), label, dtype=torch.int64, device=self.device)
        zeros = torch.zeros((1, self.vae.config.latent_channels, *latent_hw), device=self.device, dtype=self.vae.dtype)
        self.unet.forward_reference(zeros, label_t, [ref], rows=[0])
        if self.unconditional_memo_size > 0:
            memo[key] = cache.snapshot(ref, 0)
            while len(memo) > self.unconditional_memo_size:
                memo.popitem(last=False)
