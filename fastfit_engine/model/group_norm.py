"""GroupNorm with the same parameters and numerics as ``nn.GroupNorm``, better parallelised on GPUs.

A drop-in class swap (:func:`use_fast_group_norm`): state-dict keys and tensors stay as they are,
so checkpoints load unchanged. Not in the reference implementation, which uses the stock layer.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["FastGroupNorm", "use_fast_group_norm"]


class FastGroupNorm(nn.GroupNorm):
    """GroupNorm with the same parameters and fp32 statistics, computed with a wide reduction.

    PyTorch's CUDA GroupNorm reduces one (sample, group) row per thread block: with 32 groups at
    batch 1-2 that is 32-64 blocks for millions of elements, which left most of an H100 idle
    (a quarter of the eager UNet step). Here the moments come from a general fp32 reduction and
    the affine is one fused multiply-add in fp32, rounded once; channels_last inputs stay
    channels_last, which spares cuDNN its layout conversions.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # under torch.compile the native op is fused by Inductor; the out= call would break graphs
        if x.ndim != 4 or x.dtype == torch.float64 or torch.compiler.is_compiling():
            return super().forward(x)
        b, c, h, w = x.shape
        g = self.num_groups
        xf = x.float()
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            grouped = xf.permute(0, 2, 3, 1).reshape(b, h * w, g, c // g)
            var, mean = torch.var_mean(grouped, dim=(1, 3), correction=0)  # [b, g]
        else:
            var, mean = torch.var_mean(xf.reshape(b, g, -1), dim=2, correction=0)
        rstd = torch.rsqrt(var + self.eps)
        scale = rstd.repeat_interleave(c // g, dim=1)  # [b, c]
        shift = -mean.repeat_interleave(c // g, dim=1) * scale
        if self.affine:
            shift = shift * self.weight.float() + self.bias.float()
            scale = scale * self.weight.float()
        scale, shift = scale[:, :, None, None], shift[:, :, None, None]
        if torch.is_grad_enabled() and (scale.requires_grad or shift.requires_grad or x.requires_grad):
            return torch.addcmul(shift, xf, scale).to(x.dtype)
        out = torch.empty_like(x)
        torch.addcmul(shift, xf, scale, out=out)
        return out


def use_fast_group_norm(module: nn.Module) -> int:
    """Swap every nn.GroupNorm in ``module`` for FastGroupNorm in place (same tensors, same keys)."""
    count = 0
    for m in module.modules():
        if type(m) is nn.GroupNorm:
            m.__class__ = FastGroupNorm
            count += 1
    return count
