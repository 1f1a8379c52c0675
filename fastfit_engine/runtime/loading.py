"""An engine's parts loaded from a models tree: what `FastFitEngine.from_models_dir` assembles.

Why its own module: which device and precision each model gets, and where its files come from,
is a policy of its own (the engine only takes the parts): the diffusion on the requested device
(CUDA if available) in bfloat16 there, float32 on a CPU; DensePose and SCHP on the same device;
DWPose on the engine's GPU when it has the memory and the diffusion is not float32
(parse_utils/dwpose/wholebody.py); the compiled step and VAE per FASTFIT_COMPILE, with the
compiler caches on the models volume.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from ..weights.assets import ModelPaths
from .person import Parsers


@dataclass
class EngineParts:
    pipeline: Any  # FastFitPipeline
    parsers: Parsers
    paths: ModelPaths
    compiled: bool
    synthetic_weights: bool  # the tree holds fastfit_engine.synthetic's random weights (a WARNING was logged)


def load_parts(
    models_dir: str | os.PathLike | None,
    device: str | torch.device | None,
    dtype: torch.dtype | None,
    dwpose_device: str,
    *,
    download: bool,
    compile: bool | None,
) -> EngineParts:
    """Every model of a models tree (downloaded where missing unless ``download`` is off,
    digests checked), placed as the module docstring says; ``dwpose_device`` "auto" or a device,
    ``compile`` None for FASTFIT_COMPILE."""
    from ..model.compile_cache import compile_cache_dir, compile_enabled, use_compile_cache
    from ..model.pipeline import FastFitPipeline
    from ..weights.assets import ensure_models
    from ..weights.integrity import verify_models
    from ..weights.startup import log_loading

    resolved = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None:
        dtype = torch.bfloat16 if resolved.type == "cuda" else torch.float32
    paths = ensure_models(models_dir, download=download)
    synthetic = verify_models(paths.root).synthetic_weights
    if dwpose_device == "auto":
        from parse_utils.dwpose import auto_device

        dwpose_device = str(auto_device(resolved, dtype))
    log_loading(paths, resolved, dtype, dwpose_device, requested=device)
    parsers = Parsers.load(paths, resolved, dwpose_device)
    compiled = compile_enabled(resolved) if compile is None else bool(compile)
    if compiled and (cache := compile_cache_dir(paths.root)) is not None:
        use_compile_cache(cache)
    pipeline = FastFitPipeline.from_pretrained(
        paths.fastfit, device=resolved, dtype=dtype, compile_unet=compiled, compile_vae=compiled,
    )
    return EngineParts(pipeline, parsers, paths, compiled, synthetic)
