"""FastFitPipeline: multi-reference virtual try-on with a per-request reference K/V cache.

Semantics follow FastFit's published pipeline (arXiv 2508.20586; github Zheng-Chong/FastFit):
masked person composited with the pose skeleton, VAE latents, nearest-sampled latent mask,
classifier-free guidance whose unconditional row uses zero reference latents, DDPM steps, decode,
repaint outside the mask.

One object, as diffusers pipelines are, its steps in files of their own: argument checks
(model/inputs.py), the preparation steps (model/preparation.py), the garment half and its
reference passes (model/references.py), the speed options (model/acceleration.py); this file
holds the denoising loop, the decode and the call that ties them together.

Deliberate differences, none of which changes a result beyond float rounding: the garment half
runs on its own, one reference pass per garment, with the unconditional K/V memoised
(model/references.py lists why); VAE encodings use the posterior mode (model/preparation.py).

Determinism contract (deliberately stricter than the reference, whose VAE sampling uses the global
RNG): one torch.Generator on the pipeline device seeded with ``seed``; its first draw is the
initial noise (1, 4, H/8, W/8) in the weight dtype, then one scheduler draw per step; VAE
encodings use the posterior mode.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from fastfit_engine.errors import NonFiniteOutputError
from fastfit_engine.model import acceleration
from fastfit_engine.model.compile_fallback import EagerFallback
from fastfit_engine.model.defaults import DEFAULT_GUIDANCE, DEFAULT_STEPS, draw_seed
from fastfit_engine.model.inputs import check_inputs, check_references, check_seed
from fastfit_engine.model.loading import load_scheduler, load_vae
from fastfit_engine.model.preparation import PersonInputs, PreparationSteps
from fastfit_engine.model.references import PreparedReferences, ReferenceSteps
from fastfit_engine.model.unet import GARMENT_LABELS, FastFitUNet

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DDPMScheduler

__all__ = ["FastFitPipeline", "PersonInputs", "PreparedReferences", "GARMENT_LABELS"]


class FastFitPipeline(PreparationSteps, ReferenceSteps):
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
        self._init_reference_side()

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
        acceleration.apply_memory_options(unet, vae, device, channels_last, fast_group_norm)
        pipe = cls(unet, vae, scheduler, device, dtype)
        pipe.set_attention_backend(attention_backend)
        if compile_unet:
            pipe.compile_unet()
        if compile_vae:
            pipe.compile_vae()
        return pipe

    # -- speed options (model/acceleration.py) ----------------------------------------------------
    def set_attention_backend(self, name: str) -> None:
        """"auto": FlashAttention-4 where it is faster (head size <= 80) and cuDNN first for the
        rest when FA4 can run here (package installed, SM90+ GPU), else PyTorch's SDPA choice;
        "fa4": the same, an error where FA4 cannot run; "triton": our Triton kernel for head
        sizes 40 and 80 (triton_attention.py; slower than FA4 today, so not the default), cuDNN
        first for the rest, an error where it cannot run (no SM90+ GPU); "sdpa": PyTorch's SDPA
        choice, no FA4; "cudnn"/"flash": SDPA with that priority."""
        acceleration.set_attention_backend(self.unet.kv_cache.attention_policy, self.device, name)

    def compile_vae(self, **kwargs: Any) -> None:
        """torch.compile the VAE encoder and decoder (GPU option; one graph per image batch shape);
        eager again if compiling fails (``compile_fallback``)."""
        acceleration.compile_vae(self.vae, self.compile_fallback, **kwargs)

    def compile_unet(self, batch_sizes: tuple[int, ...] = (2,), **kwargs: Any) -> None:
        """torch.compile the denoising forward (GPU option; the reference pass stays eager).

        One graph serves every garment layout (the reference tokens are a dynamic dimension; see
        `acceleration.compile_denoise`), so the warm-up compiles once instead of once per layout
        (bench/README.md, "Compile cache", has the warm-up times both ways).

        Only steps of ``batch_sizes`` rows run compiled (default: 2, classifier-free guidance);
        others (guidance 1.0: one row) stay eager, so such a request never waits minutes for a
        shape the warm-up did not compile. A failed compilation turns the step eager
        (``compile_fallback``).
        """
        self._denoise = acceleration.compile_denoise(self.unet, self.compile_fallback, batch_sizes, **kwargs)

    # -- argument checks (model/inputs.py) --------------------------------------------------------
    check_inputs = staticmethod(check_inputs)
    check_references = staticmethod(check_references)

    # -- the loop ---------------------------------------------------------------------------------
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
        seed = draw_seed() if seed is None else check_seed(seed)
        if not isinstance(references, PreparedReferences):
            with self.prepare_references(refs, person.size, guidance_scale) as prepared:
                return self.generate(person, mask, prepared, pose=pose, num_inference_steps=num_inference_steps,
                                     guidance_scale=guidance_scale, seed=seed, callback=callback)
        return self.generate(person, mask, references, pose=pose, num_inference_steps=num_inference_steps,
                             guidance_scale=guidance_scale, seed=seed, callback=callback)

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
        generator = torch.Generator(device=self.device).manual_seed(seed)
        scheduler, timesteps, timesteps_device = self.prepare_timesteps(num_inference_steps)
        latents = self.prepare_latents(latent_size, generator, scheduler)
        model_input = self.prepare_model_input(masked_latent, person_inputs.latent_mask, rows=2 if prepared.do_cfg else 1)
        for i, t in enumerate(timesteps):
            latents = self.denoise_step(model_input, latents, t, timesteps_device[i], scheduler, guidance_scale, generator)
            if callback is not None:
                callback(i, num_inference_steps)
        return self.postprocess(self.decode_latents(latents), person_inputs)

