"""Synthetic FastFit-MR-1024 writer: layout, determinism, tiny structure and the VAE factor 8."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from fastfit_engine.synthetic import SCHEDULER_CONFIG, UNET_CONFIG, write_fastfit_model
from fastfit_engine.model.unet import FastFitUNet

pytestmark = pytest.mark.usefixtures("single_thread")

FILES = [
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "scheduler/scheduler_config.json",
]


def test_tiny_folder_layout_and_seeded_weights(tmp_path):
    a = write_fastfit_model(tmp_path / "a", tiny=True, seed=1)
    b = write_fastfit_model(tmp_path / "b", tiny=True, seed=1)
    c = write_fastfit_model(tmp_path / "c", tiny=True, seed=2)
    assert a == tmp_path / "a"
    for rel in FILES:
        assert (a / rel).is_file(), rel
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    ua, uc = (load_file(str(p / "unet/diffusion_pytorch_model.safetensors")) for p in (a, c))
    assert not torch.equal(ua["conv_in.weight"], uc["conv_in.weight"])
    assert json.loads((a / "scheduler/scheduler_config.json").read_text()) == SCHEDULER_CONFIG
    assert all(v.dtype == torch.float32 for v in ua.values())


def test_tiny_model_keeps_every_key_name(tmp_path):
    folder = write_fastfit_model(tmp_path / "m", tiny=True)
    from diffusers import AutoencoderKL

    from fastfit_engine.synthetic import VAE_CONFIG

    tiny_keys = set(load_file(str(folder / "unet/diffusion_pytorch_model.safetensors")))
    tiny_vae_keys = set(load_file(str(folder / "vae/diffusion_pytorch_model.safetensors")))
    with torch.device("meta"):
        full_keys = set(FastFitUNet(UNET_CONFIG).state_dict())
        full_vae_keys = set(AutoencoderKL.from_config({k: v for k, v in VAE_CONFIG.items() if k[0] != "_"}).state_dict())
    assert tiny_keys == full_keys and len(full_keys) == 577
    assert tiny_vae_keys == full_vae_keys and len(full_vae_keys) == 248
    cfg = json.loads((folder / "unet/config.json").read_text())
    assert cfg["down_block_types"] == UNET_CONFIG["down_block_types"]
    assert cfg["cross_attention_dim"] is None and cfg["num_class_embeds"] == 5 and cfg["in_channels"] == 9


def test_tiny_vae_downsamples_by_8_and_loads(tmp_path):
    from fastfit_engine.model.loading import load_vae

    folder = write_fastfit_model(tmp_path / "m", tiny=True)
    vae = load_vae(folder / "vae", "cpu", torch.float32)
    x = torch.rand(1, 3, 64, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        lat = vae.encode(x).latent_dist.mode()
        img = vae.decode(lat).sample
    assert lat.shape == (1, 4, 8, 6) and img.shape == (1, 3, 64, 48)
    assert torch.isfinite(img).all() and img.std() > 0
