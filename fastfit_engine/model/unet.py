"""FastFit's cacheable try-on UNet, assembled from stock diffusers blocks.

The layout equals the SD 1.5 inpainting UNet without cross-attention, plus ``condition_conv_in``
(4-channel input of the reference pass) and a 5-entry ``class_embedding`` (garment category), so
the published FastFit-MR-1024 checkpoint loads key for key.

Two passes:
- reference pass (:meth:`FastFitUNet.forward_reference`): reference latent through
  ``condition_conv_in``, class embedding as the only conditioning (no time embedding at all),
  every self-attention layer stores its K/V in the per-layer cache;
- denoising pass (:meth:`FastFitUNet.forward`): 9-channel input through ``conv_in``, time embedding
  only, self-attention over [stored references, person].
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.unets.unet_2d_blocks import (
    CrossAttnDownBlock2D,
    CrossAttnUpBlock2D,
    DownBlock2D,
    UNetMidBlock2DCrossAttn,
    UpBlock2D,
)
from torch import nn

from fastfit_engine.model.attention import CacheMode, ReferenceAttnProcessor, ReferenceKVCache, ReferencePassComplete
from fastfit_engine.model.loading import check_state_dict_keys, load_weight_file, read_json_config

from fastfit_engine.model.labels import GARMENT_LABELS

__all__ = ["FastFitUNet", "GARMENT_LABELS"]

_DEFAULTS: dict[str, Any] = {
    "in_channels": 9,
    "out_channels": 4,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "attention_head_dim": 8,
    "num_attention_heads": None,
    "cross_attention_dim": None,
    "num_class_embeds": 5,
    "class_embed_type": None,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "act_fn": "silu",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "condition_in_channels": 4,
}

# config fields whose non-default values would change the architecture we do not implement
_MUST_BE_UNSET = (
    "addition_embed_type",
    "encoder_hid_dim",
    "time_embedding_type",
    "time_cond_proj_dim",
    "projection_class_embeddings_input_dim",
)


class FastFitUNet(nn.Module):
    """Cacheable UNet; state-dict keys equal the published FastFit UNet checkpoint."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        cfg = dict(_DEFAULTS)
        cfg.update({k: v for k, v in dict(config).items() if not k.startswith("_")})
        self.config = cfg
        if cfg["cross_attention_dim"] is not None:
            raise ValueError("FastFit UNet has no cross-attention: config cross_attention_dim must be null")
        for key in _MUST_BE_UNSET:
            if cfg.get(key) not in (None, False):
                raise ValueError(f"unsupported UNet config field {key}={cfg[key]!r}")
        if cfg["class_embed_type"] is not None:
            raise ValueError(f"unsupported class_embed_type {cfg['class_embed_type']!r} (expected null)")
        if not cfg["num_class_embeds"]:
            raise ValueError("FastFit UNet needs num_class_embeds (garment categories)")
        if cfg["mid_block_type"] != "UNetMidBlock2DCrossAttn":
            raise ValueError(f"unsupported mid_block_type {cfg['mid_block_type']!r}")

        boc = list(cfg["block_out_channels"])
        n_levels = len(boc)
        down_types = list(cfg["down_block_types"])
        up_types = list(cfg["up_block_types"])
        if len(down_types) != n_levels or len(up_types) != n_levels:
            raise ValueError("block_out_channels, down_block_types and up_block_types must have equal lengths")
        # diffusers' legacy naming: attention_head_dim is the number of heads for SD-style UNets
        heads = cfg["num_attention_heads"] or cfg["attention_head_dim"]
        if isinstance(heads, int):
            heads = [heads] * n_levels
        heads = list(heads)
        lpb = cfg["layers_per_block"]
        groups, eps, act = cfg["norm_num_groups"], cfg["norm_eps"], cfg["act_fn"]
        temb_ch = boc[0] * 4

        self.conv_in = nn.Conv2d(cfg["in_channels"], boc[0], kernel_size=3, padding=1)
        self.condition_conv_in = nn.Conv2d(cfg["condition_in_channels"], boc[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(boc[0], cfg["flip_sin_to_cos"], cfg["freq_shift"])
        self.time_embedding = TimestepEmbedding(boc[0], temb_ch, act_fn=act)
        self.class_embedding = nn.Embedding(cfg["num_class_embeds"], temb_ch)

        self.down_blocks = nn.ModuleList()
        out_ch = boc[0]
        for i, kind in enumerate(down_types):
            in_ch, out_ch = out_ch, boc[i]
            final = i == n_levels - 1
            common = dict(
                num_layers=lpb,
                in_channels=in_ch,
                out_channels=out_ch,
                temb_channels=temb_ch,
                add_downsample=not final,
                resnet_eps=eps,
                resnet_act_fn=act,
                resnet_groups=groups,
                downsample_padding=cfg["downsample_padding"],
            )
            if kind == "CrossAttnDownBlock2D":
                block = CrossAttnDownBlock2D(num_attention_heads=heads[i], cross_attention_dim=None, **common)
            elif kind == "DownBlock2D":
                block = DownBlock2D(**common)
            else:
                raise ValueError(f"unsupported down block type {kind!r}")
            self.down_blocks.append(block)

        self.mid_block = UNetMidBlock2DCrossAttn(
            in_channels=boc[-1],
            temb_channels=temb_ch,
            resnet_eps=eps,
            resnet_act_fn=act,
            output_scale_factor=cfg["mid_block_scale_factor"],
            cross_attention_dim=None,
            num_attention_heads=heads[-1],
            resnet_groups=groups,
        )

        self.up_blocks = nn.ModuleList()
        rev_ch = list(reversed(boc))
        rev_heads = list(reversed(heads))
        out_ch = rev_ch[0]
        for i, kind in enumerate(up_types):
            prev_out, out_ch = out_ch, rev_ch[i]
            in_ch = rev_ch[min(i + 1, n_levels - 1)]
            final = i == n_levels - 1
            common = dict(
                num_layers=lpb + 1,
                in_channels=in_ch,
                out_channels=out_ch,
                prev_output_channel=prev_out,
                temb_channels=temb_ch,
                resolution_idx=i,
                add_upsample=not final,
                resnet_eps=eps,
                resnet_act_fn=act,
                resnet_groups=groups,
            )
            if kind == "CrossAttnUpBlock2D":
                block = CrossAttnUpBlock2D(num_attention_heads=rev_heads[i], cross_attention_dim=None, **common)
            elif kind == "UpBlock2D":
                block = UpBlock2D(**common)
            else:
                raise ValueError(f"unsupported up block type {kind!r}")
            self.up_blocks.append(block)

        self.conv_norm_out = nn.GroupNorm(num_channels=boc[0], num_groups=groups, eps=eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(boc[0], cfg["out_channels"], kernel_size=3, padding=1)

        self.kv_cache = ReferenceKVCache()
        self._n_upsamplers = n_levels - 1

    # -- construction / loading -----------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, folder: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> FastFitUNet:
        """Load config.json + weights from a diffusers-style ``unet`` folder with strict key checks."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"UNet folder not found: {folder}")
        config = read_json_config(folder / "config.json", "UNet")
        with torch.device("meta"):
            model = cls(config)
        state = load_weight_file(folder)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        check_state_dict_keys(expected, state, f"UNet weights in {folder}")
        state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
        model.load_state_dict(state, strict=True, assign=True)
        model.eval().requires_grad_(False)
        model.install_reference_attention()
        return model

    # -- attention layers -----------------------------------------------------------------------
    def self_attention_layers(self) -> list[tuple[str, nn.Module, int]]:
        """(name, Attention module, level) of every caching layer, in forward order."""
        layers = []
        n_levels = len(self.down_blocks)

        def collect(prefix: str, block: nn.Module, level: int) -> None:
            for j, transformer in enumerate(getattr(block, "attentions", None) or []):
                for b, tblock in enumerate(transformer.transformer_blocks):
                    layers.append((f"{prefix}.attentions.{j}.transformer_blocks.{b}.attn1", tblock.attn1, level))

        for i, block in enumerate(self.down_blocks):
            collect(f"down_blocks.{i}", block, i)
        collect("mid_block", self.mid_block, n_levels - 1)
        for i, block in enumerate(self.up_blocks):
            collect(f"up_blocks.{i}", block, n_levels - 1 - i)
        return layers

    def install_reference_attention(self) -> None:
        """Give every self-attention layer its own caching processor (one cache per layer)."""
        layers = self.self_attention_layers()
        self.kv_cache.clear()
        self.kv_cache.processors = []
        for idx, (name, attn, level) in enumerate(layers):
            if getattr(attn, "is_cross_attention", False):
                raise ValueError(f"{name} is a cross-attention layer")
            proc = ReferenceAttnProcessor(self.kv_cache, name, level, is_last=idx == len(layers) - 1)
            if attn.to_q.weight.device.type != "meta":
                proc.fuse(attn)
            attn.set_processor(proc)
            self.kv_cache.processors.append(proc)

    def _apply(self, fn, recurse=True):  # keep fused QKV weights in step with .to()/.half()
        result = super()._apply(fn, recurse)
        if getattr(self, "kv_cache", None) is not None and self.kv_cache.processors:
            for (_, attn, _), proc in zip(self.self_attention_layers(), self.kv_cache.processors):
                if attn.to_q.weight.device.type != "meta":
                    proc.fuse(attn)
        return result

    # -- passes ---------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    def _backbone(self, hidden: torch.Tensor, emb: torch.Tensor, spatial: tuple[int, int]) -> torch.Tensor:
        residuals = (hidden,)
        for block in self.down_blocks:
            hidden, res = block(hidden, temb=emb)
            residuals += res
        hidden = self.mid_block(hidden, emb)
        factor = 2**self._n_upsamplers
        forward_size = any(s % factor != 0 for s in spatial)
        for i, block in enumerate(self.up_blocks):
            n = len(block.resnets)
            res, residuals = residuals[-n:], residuals[:-n]
            size = residuals[-1].shape[2:] if forward_size and i < len(self.up_blocks) - 1 else None
            hidden = block(hidden, res_hidden_states_tuple=res, temb=emb, upsample_size=size)
        hidden = self.conv_norm_out(hidden)
        hidden = self.conv_act(hidden)
        return self.conv_out(hidden)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int | None = None,
        class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Stock-semantics forward: the input conv is picked by whether class_labels is given.

        Attention behaviour follows ``self.kv_cache.mode`` (off / store / read).
        """
        emb = None
        if timestep is not None:
            t = timestep if torch.is_tensor(timestep) else torch.tensor(timestep, device=sample.device)
            t = t.to(sample.device).reshape(-1).expand(sample.shape[0])
            emb = self.time_embedding(self.time_proj(t).to(dtype=sample.dtype))
        if class_labels is not None:
            class_emb = self.class_embedding(class_labels.to(sample.device)).to(dtype=sample.dtype)
            emb = class_emb if emb is None else emb + class_emb
        if emb is None:
            raise ValueError("FastFitUNet.forward needs a timestep (denoising) or class_labels (reference pass)")
        conv = self.conv_in if class_labels is None else self.condition_conv_in
        hidden = conv(sample)
        return self._backbone(hidden, emb, tuple(sample.shape[-2:]))

    def forward_reference(
        self,
        latents: torch.Tensor,
        class_labels: torch.Tensor,
        ref_indices: list[int],
        rows: list[int] | None = None,
    ) -> None:
        """Reference pass: store K/V of ``len(ref_indices)`` references batched as [ref][cache row].

        ``rows`` names the cache rows the batch covers (default: all of them). Work after the
        last caching layer is skipped: its output is never used.
        """
        cache = self.kv_cache
        cache.set_store(ref_indices, rows)
        try:
            self.forward(latents, None, class_labels)
        except ReferencePassComplete:
            pass
        finally:
            cache.mode = CacheMode.OFF

    def forward_denoise(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        forward: Callable[..., torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Denoising pass: person queries attend to every stored reference, then to themselves.

        ``forward`` replaces :meth:`forward` for the pass (e.g. its torch.compile'd version).
        """
        cache = self.kv_cache
        cache.set_read()
        try:
            return (forward or self.forward)(sample, timestep, None)
        finally:
            cache.mode = CacheMode.OFF
