"""The pipeline's speed options: memory layout, GroupNorm swap, attention backend, torch.compile.

Why in one place: each makes the same model run faster on some hardware and each is chosen
once, when the pipeline is built (`FastFitPipeline.from_pretrained` and its ``compile_unet`` /
``compile_vae`` / ``set_attention_backend`` methods call these functions). None is in the
reference implementation, which runs the diffusers modules eagerly with PyTorch's default
attention. The layout, GroupNorm and attention choices change a result at most by float
rounding; compilation keeps static shapes so an image repeats bit for bit (see
:func:`compile_options`), and a failed compilation turns eager (model/compile_fallback.py).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from fastfit_engine.model.compile_fallback import EagerFallback
from fastfit_engine.model.group_norm import use_fast_group_norm

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

    from fastfit_engine.model.flash_attention import FlashAttentionPolicy
    from fastfit_engine.model.unet import FastFitUNet

__all__ = ["apply_memory_options", "compile_denoise", "compile_options", "compile_vae", "set_attention_backend"]

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def apply_memory_options(
    unet: FastFitUNet, vae: AutoencoderKL, device: torch.device, channels_last: bool | None, fast_group_norm: bool | None
) -> None:
    """NHWC conv weights (``channels_last``, default: on CUDA) and the faster GroupNorm
    (``fast_group_norm``, default: the VAE only, on CUDA; True: both models; False: neither)."""
    # the swap speeds the VAE's full-resolution norms but slows the eager UNet step (H100,
    # 2026-11-24; bench/README.md, "Memory layout and GroupNorm"), so by default the VAE only
    if fast_group_norm is None:
        if device.type == "cuda":
            use_fast_group_norm(vae)
    elif fast_group_norm:
        use_fast_group_norm(unet)
        use_fast_group_norm(vae)
    # channels_last spares cuDNN its layout conversions: faster in every scenario measured
    # (H100, 2026-11-25; bench/README.md, "Memory layout and GroupNorm")
    if channels_last is None:
        channels_last = device.type == "cuda"
    if channels_last:
        unet.to(memory_format=torch.channels_last)
        vae.to(memory_format=torch.channels_last)


def set_attention_backend(policy: FlashAttentionPolicy, device: torch.device, name: str) -> None:
    """Set the UNet's attention ``policy`` for backend ``name`` (see
    `FastFitPipeline.set_attention_backend` for the names)."""
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
    policy.sdpa_backends = orders[name]
    policy.fa4 = False
    policy.triton = False
    if name in ("auto", "fa4") and enable_fa4(policy, device, required=name == "fa4"):
        policy.sdpa_backends = cudnn
    if name == "triton":
        enable_triton(policy, device, required=True)


def compile_options(kwargs: dict) -> dict:
    """Static shapes, except where :func:`compile_denoise` marks a dimension dynamic itself.

    With PyTorch's default automatic dynamic shapes, a second image shape would recompile the
    model shape-generically and later requests of the first shape would switch to that graph,
    whose kernels round differently: the first request's image would not repeat bit for bit.
    """
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
    return {"dynamic": False, **kwargs}


def compile_vae(vae: AutoencoderKL, fallback: EagerFallback, **kwargs: Any) -> None:
    """torch.compile the VAE encoder and decoder in place (one graph per image batch shape);
    eager again if compiling fails (``fallback``)."""
    options = compile_options(kwargs)
    for name, module in (("VAE encoder", vae.encoder), ("VAE decoder", vae.decoder)):
        eager = module.forward
        module.forward = fallback.guard(name, torch.compile(eager, **options), eager)


def compile_denoise(unet: FastFitUNet, fallback: EagerFallback, batch_sizes: tuple[int, ...], **kwargs: Any) -> Denoise:
    """A denoising step (``unet.forward_denoise``'s signature) that runs compiled for batches of
    ``batch_sizes`` rows and eagerly for others; eager for good if compiling fails (``fallback``).

    One graph serves every garment layout: the reference K/V buffers' token dimension is marked
    dynamic here, and it is the only one that varies between layouts (the person's shape is fixed
    per engine). Nothing the compiler generates reduces over that dimension (attention is an
    opaque FA4 or SDPA call; the rest only copies the person's K/V into the buffer's tail), so
    the image of a layout does not depend on which layout compiled the graph.
    """
    unet.kv_cache.dynamic_tokens = True
    compiled = torch.compile(unet.forward, **compile_options(kwargs))
    forward_denoise = unet.forward_denoise
    batch_sizes = tuple(batch_sizes)

    def compiled_step(sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return forward_denoise(sample, timestep, forward=compiled)

    guarded = fallback.guard("denoising step", compiled_step, forward_denoise)

    def denoise(sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        if sample.shape[0] not in batch_sizes:
            return forward_denoise(sample, timestep)
        return guarded(sample, timestep)

    return denoise
