"""Work of a full-size denoising step and of the VAE, counted without a GPU or weights (issue 19).

The modules are built on PyTorch's meta device and run once with forward hooks that add up the
FLOP of convolutions and linear layers and the elements GroupNorm/LayerNorm read; self-attention's
FLOP and exponentials come from the token counts of each level. This is the arithmetic behind the
floors in bench/README.md ("The denoising step by arithmetic"); it measures nothing.

    python -m bench.bench_step --census
"""
from __future__ import annotations

import collections
from collections.abc import Callable

import torch


def census(person_wh: tuple[int, int] = (768, 1024), references: int = 2) -> dict:
    """Work of one denoising step (batch 2) and of the VAE, counted on the meta device (no GPU,
    no weights): FLOP of convolutions, linear layers and self-attention (keys: the person plus
    ``references`` person-size references), exponentials, and GroupNorm/LayerNorm elements."""
    from diffusers import AutoencoderKL

    from fastfit_engine.model.attention import level_token_count
    from fastfit_engine.model.unet import FastFitUNet
    from fastfit_engine.synthetic import UNET_CONFIG, VAE_CONFIG

    def count(module: torch.nn.Module, call: Callable[[], object]) -> dict:
        totals: dict[str, float] = collections.Counter()

        def hook(m: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
            if isinstance(m, torch.nn.Conv2d):
                totals["conv_tflop"] += 2 * out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1] / 1e12
            elif isinstance(m, torch.nn.Linear):
                totals["linear_tflop"] += 2 * out.numel() * m.in_features / 1e12
            elif isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                kind = "group_norm" if isinstance(m, torch.nn.GroupNorm) else "layer_norm"
                totals[f"{kind}_calls"] += 1
                totals[f"{kind}_elements"] += args[0].numel()

        hooks = [m.register_forward_hook(hook) for m in module.modules()]
        try:
            with torch.no_grad():
                call()
        finally:
            for h in hooks:
                h.remove()
        return {k: round(v, 4) if "tflop" in k else int(v) for k, v in sorted(totals.items())}

    w, h = person_wh[0] // 8, person_wh[1] // 8
    meta = dict(device="meta", dtype=torch.bfloat16)
    with torch.device("meta"):
        unet = FastFitUNet(UNET_CONFIG).to(torch.bfloat16)
        vae = AutoencoderKL.from_config({k: v for k, v in VAE_CONFIG.items() if not k.startswith("_")}).to(torch.bfloat16)
    step = count(unet, lambda: unet(torch.empty(2, 9, h, w, **meta), torch.tensor([500], device="meta")))
    flop = exps = 0
    for _, attn, level in unet.self_attention_layers():
        queries = level_token_count(h, w, level)
        keys = (1 + references) * queries
        flop += 2 * 2 * 2 * queries * keys * attn.to_q.out_features  # batch 2; QK^T and PV
        exps += 2 * attn.heads * queries * keys
    step["attention_tflop"] = round(flop / 1e12, 4)
    step["exponentials"] = exps
    return {
        "step": step,
        "vae_encode": count(vae, lambda: vae.encoder(torch.empty(1, 3, person_wh[1], person_wh[0], **meta))),
        "vae_decode": count(vae, lambda: vae.decoder(torch.empty(1, 4, h, w, **meta))),
    }
