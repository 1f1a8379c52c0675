"""FastFitUNet: checkpoint layout (full size on the meta device), both passes, strict loading."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from fastfit_engine.synthetic import UNET_CONFIG, VAE_CONFIG
from fastfit_engine.model.unet import FastFitUNet

pytestmark = pytest.mark.usefixtures("single_thread")

# sha256 of json.dumps(sorted([key, shape])) of the published checkpoints' key lists
# (fastfit_unet.json: 577 tensors, fastfit_vae.json: 248 tensors)
UNET_MANIFEST_SHA = "bee5ead93978eb776d8e44a9db96428317196b9cfc19224e65cbe8f6cf414460"
VAE_MANIFEST_SHA = "6286db08f9cfd63c3269bc33f220dd77e9ab46cd1173bb5f3f71ef61a92db085"


def _layout_sha(state) -> str:
    items = sorted((k, list(v.shape)) for k, v in state.items())
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


def test_full_size_unet_matches_published_layout():
    with torch.device("meta"):
        unet = FastFitUNet(UNET_CONFIG)
    state = unet.state_dict()
    assert len(state) == 577
    assert tuple(state["conv_in.weight"].shape) == (320, 9, 3, 3)
    assert tuple(state["condition_conv_in.weight"].shape) == (320, 4, 3, 3)
    assert tuple(state["class_embedding.weight"].shape) == (5, 1280)
    assert not any(".attn2." in k or ".norm2." in k and "transformer_blocks" in k for k in state)
    assert _layout_sha(state) == UNET_MANIFEST_SHA
    layers = unet.self_attention_layers()
    assert len(layers) == 16
    assert [lvl for _, _, lvl in layers] == [0, 0, 1, 1, 2, 2, 3, 2, 2, 2, 1, 1, 1, 0, 0, 0]
    assert all(attn.heads == 8 for _, attn, _ in layers)


def test_full_size_vae_matches_published_layout():
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL.from_config({k: v for k, v in VAE_CONFIG.items() if not k.startswith("_")})
    assert _layout_sha(vae.state_dict()) == VAE_MANIFEST_SHA


def test_both_passes_use_their_own_inputs(model_dir):
    unet = FastFitUNet.from_pretrained(model_dir / "unet")
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(2, 4, 8, 6, generator=g)
    person = torch.randn(1, 9, 8, 6, generator=g)
    t = torch.tensor(500)
    with torch.no_grad():
        r0 = unet(ref, None, torch.tensor([0, 0]))
        r3 = unet(ref, None, torch.tensor([3, 3]))
        d0 = unet(person, t, None)
        d1 = unet(person, torch.tensor(20), None)
        assert r0.shape == (2, 4, 8, 6) and d0.shape == (1, 4, 8, 6)
        assert not torch.allclose(r0, r3)  # class embedding conditions the reference pass
        assert not torch.allclose(d0, d1)  # time embedding conditions the denoising pass
        # reference pass: condition_conv_in + class embedding only (conv_in and time MLP unused)
        unet.conv_in.weight.zero_()
        unet.time_embedding.linear_1.weight.zero_()
        assert torch.equal(unet(ref, None, torch.tensor([0, 0])), r0)
        # denoising pass: conv_in + time embedding only (condition_conv_in and class table unused)
    unet = FastFitUNet.from_pretrained(model_dir / "unet")
    with torch.no_grad():
        unet.condition_conv_in.weight.zero_()
        unet.class_embedding.weight.zero_()
        assert torch.equal(unet(person, t, None), d0)
        # emb is the class embedding alone, not a t=0 time embedding
        unet2 = FastFitUNet.from_pretrained(model_dir / "unet")
        assert not torch.allclose(unet2(ref, torch.tensor(0), torch.tensor([0, 0])), r0)
        with pytest.raises(ValueError, match="needs a timestep"):
            unet(person)


def test_odd_latent_sizes_forward_upsample_size(model_dir):
    unet = FastFitUNet.from_pretrained(model_dir / "unet")
    with torch.no_grad():
        out = unet(torch.randn(1, 9, 10, 6, generator=torch.Generator().manual_seed(1)), torch.tensor(3), None)
    assert out.shape == (1, 4, 10, 6)


def test_bin_weights_and_dtype(model_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file

    folder = tmp_path / "unet"
    folder.mkdir()
    shutil.copy(model_dir / "unet" / "config.json", folder)
    state = load_file(str(model_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    torch.save(state, folder / "diffusion_pytorch_model.bin")
    unet = FastFitUNet.from_pretrained(folder, dtype=torch.bfloat16)
    assert unet.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 and p.device.type == "cpu" for p in unet.parameters())
    assert torch.equal(unet.conv_in.weight.float(), state["conv_in.weight"].to(torch.bfloat16).float())


def test_strict_key_errors(model_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "unet"
    with pytest.raises(FileNotFoundError, match="UNet folder not found"):
        FastFitUNet.from_pretrained(folder)
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match="missing UNet config"):
        FastFitUNet.from_pretrained(folder)
    shutil.copy(model_dir / "unet" / "config.json", folder)
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model.safetensors or diffusion_pytorch_model.bin"):
        FastFitUNet.from_pretrained(folder)
    state = load_file(str(model_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    state.pop("condition_conv_in.bias")
    state.pop("class_embedding.weight")
    state["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q.weight"] = torch.zeros(2, 2)
    state["conv_in.weight"] = torch.zeros(16, 4, 3, 3)
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ValueError) as err:
        FastFitUNet.from_pretrained(folder)
    msg = str(err.value)
    assert "missing keys (2): class_embedding.weight, condition_conv_in.bias" in msg
    assert "unexpected keys (1): down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q.weight" in msg
    assert "conv_in.weight (16, 4, 3, 3) != (16, 9, 3, 3)" in msg


def test_config_rejects_cross_attention():
    with pytest.raises(ValueError, match="cross_attention_dim must be null"):
        with torch.device("meta"):
            FastFitUNet({**UNET_CONFIG, "cross_attention_dim": 768})
    with pytest.raises(ValueError, match="unsupported down block type"):
        with torch.device("meta"):
            FastFitUNet({**UNET_CONFIG, "down_block_types": ["Foo"] * 4})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_group_norm_matches_native(dtype, channels_last):
    from torch import nn

    from fastfit_engine.model.group_norm import FastGroupNorm, use_fast_group_norm

    g = torch.Generator().manual_seed(0)
    native = nn.GroupNorm(8, 32, eps=1e-6)
    with torch.no_grad():
        native.weight.copy_(torch.randn(32, generator=g))
        native.bias.copy_(torch.randn(32, generator=g))
    native = native.to(dtype)
    fast = nn.Sequential(nn.GroupNorm(8, 32, eps=1e-6).to(dtype))
    fast.load_state_dict(nn.Sequential(native).state_dict())
    assert use_fast_group_norm(fast) == 1 and isinstance(fast[0], FastGroupNorm)
    x = (torch.randn(2, 32, 12, 10, generator=g) * 3 + 1).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref, out = native(x), fast(x)
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last) == channels_last
    diff = (out.float() - ref.float()).abs()
    if dtype == torch.bfloat16:  # one rounding of fp32 math: at most 1 ulp, rarely
        assert (diff <= ref.float().abs() * 2**-7 + 1e-6).all()
        assert (diff > 0).float().mean() < 0.01
    else:
        assert diff.max() <= 2e-6
