"""The pipeline's preparation steps: images to tensors, VAE latents, timesteps, noise, UNet input.

Public methods of `FastFitPipeline` (a mixin here, so the steps read as the pipeline's own, as
in diffusers): ``__call__`` is built from them and the benchmarks time them one by one. The host
provides ``device``, ``dtype``, ``vae``, ``vae_scale`` and ``scheduler``.

Deliberate differences from the reference, none of which changes a result beyond float
rounding: every image is scaled to [-1, 1] in float32 before the cast to the weight dtype;
VAE encodings use the posterior mode (the reference samples with the global RNG); every image
is encoded on its own or with others of its size, and the mode is per sample. Each request
steps its own copy of the scheduler.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DDPMScheduler

__all__ = ["PersonInputs", "PreparationSteps"]


@dataclass(frozen=True)
class PersonInputs:
    """The person side of one request as tensors on the pipeline device, in the weight dtype."""

    image: torch.Tensor  # [1, 3, H, W] person in [-1, 1]
    mask: torch.Tensor  # [1, 1, H, W] 1 = repaint, 0 = keep
    masked: torch.Tensor  # [1, 3, H, W] person, the mask area replaced by the pose skeleton (or zero)
    latent_mask: torch.Tensor  # [1, 1, H/8, W/8] the mask sampled nearest


def _indices_by_size(tensors: Sequence[torch.Tensor]) -> list[list[int]]:
    """Indices grouped by spatial size, in first-seen order, so equal sizes can share a batch."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, x in enumerate(tensors):
        groups.setdefault(tuple(x.shape[-2:]), []).append(i)
    return list(groups.values())


class PreparationSteps:
    """Mixin of `FastFitPipeline`: the tensors one request's denoising loop starts from."""

    device: torch.device
    dtype: torch.dtype
    vae: AutoencoderKL
    vae_scale: float
    scheduler: DDPMScheduler

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
