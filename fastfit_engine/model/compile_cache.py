"""torch.compile by default on CUDA, with compiler caches that outlive the process.

Compiling the denoising UNet and the VAE costs minutes on a cold start (one step graph for every
garment layout; bench/README.md has the start-up times from an empty and a filled cache).
Inductor (FX graph and autotune caches, Triton kernels), AOTAutograd and FlashAttention-4's CuTe
JIT all keep on-disk caches; pointing them at one folder on a persistent volume (by default
``<models folder>/.compile-cache``, next to the weights) makes the second start load compiled
artifacts instead of compiling them. A cache never changes a result: a cached graph is the graph
that would have been compiled (its key covers the source, the shapes and the library versions).

Environment:
  FASTFIT_COMPILE        1/0 (also true/false, on/off): compile the UNet step and the VAE, and
                         replay the garments' reference passes from CUDA graphs (captured by
                         the warm-up). Default: on for CUDA devices, off elsewhere.
  FASTFIT_COMPILE_CACHE  folder for the compiler caches; "off" leaves the libraries' defaults
                         (a per-user folder under /tmp). Default: <models folder>/.compile-cache.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from fastfit_engine import settings

__all__ = ["COMPILE_ENV", "COMPILE_CACHE_ENV", "compile_enabled", "compile_cache_dir", "use_compile_cache"]

log = logging.getLogger("fastfit.compile")

COMPILE_ENV = "FASTFIT_COMPILE"
COMPILE_CACHE_ENV = "FASTFIT_COMPILE_CACHE"
DEFAULT_CACHE_NAME = ".compile-cache"



def compile_enabled(device: torch.device | str, env: Mapping[str, str] | None = None) -> bool:
    """FASTFIT_COMPILE if set, else True on CUDA and False elsewhere; a bad value is an error."""
    value = settings.read(COMPILE_ENV, env)
    return torch.device(device).type == "cuda" if value is None else value


def compile_cache_dir(models_root: str | os.PathLike, env: Mapping[str, str] | None = None) -> Path | None:
    """FASTFIT_COMPILE_CACHE if set ("off" gives None), else ``models_root/.compile-cache``."""
    value = settings.read(COMPILE_CACHE_ENV, env)
    if value is not None and settings.is_false_word(value):
        return None
    return Path(value).expanduser() if value else Path(models_root) / DEFAULT_CACHE_NAME


def use_compile_cache(folder: str | os.PathLike) -> Path:
    """Point Inductor's, Triton's and FlashAttention-4's on-disk caches at ``folder``.

    Call before the first compilation and before ``flash_attn.cute`` is imported (FA4 reads its
    settings at import). Creates the folder; an unwritable folder is an error naming it.
    """
    folder = Path(folder).expanduser().resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OSError(f"compile cache folder {folder} is not writable: {exc.strerror or exc}") from None
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder / "inductor")
    # Inductor otherwise derives Triton's folder from its own, but a value inherited from the
    # environment would win; keep both on the volume
    os.environ["TRITON_CACHE_DIR"] = str(folder / "triton")
    os.environ["FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED"] = "1"
    os.environ["FLASH_ATTENTION_CUTE_DSL_CACHE_DIR"] = str(folder / "fa4")
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    inductor_config.autotune_local_cache = True
    log.info("compile cache: %s", folder)
    return folder
