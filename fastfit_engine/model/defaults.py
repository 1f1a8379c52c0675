"""The diffusion parameters' defaults and the two decisions made from them, in one place.

The request schema's fields and the pipeline's own keyword defaults both read these, so a request
that leaves a number out and a direct `FastFitPipeline` call get the same values.
"""
from __future__ import annotations

import secrets

DEFAULT_STEPS = 30  # denoising steps
DEFAULT_GUIDANCE = 2.5  # classifier-free guidance scale, as the upstream FastFit app uses
SEED_MAX = 2**32 - 1


def draw_seed() -> int:
    """A fresh random seed (the default when none is given), from the OS's randomness, never a global RNG."""
    return secrets.randbelow(SEED_MAX + 1)


def guidance_runs(guidance_scale: float) -> bool:
    """Whether classifier-free guidance runs: at a scale of 1 or less the guided prediction is the
    conditional one, so the unconditional rows are skipped. The one place this is decided."""
    return guidance_scale > 1.0
