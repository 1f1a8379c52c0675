"""Strict loading of diffusers-layout component folders (weights, JSON configs, VAE, scheduler).

Every loader fails loudly: a missing file names the file, and a checkpoint whose keys or shapes do
not match the model is an error that names the keys (the model is never left partly random).
Weights are read from safetensors, or from a ``.bin`` with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DDPMScheduler

__all__ = [
    "WEIGHTS_SAFETENSORS",
    "WEIGHTS_BIN",
    "load_weight_file",
    "check_state_dict_keys",
    "read_json_config",
    "load_vae",
    "load_scheduler",
]

WEIGHTS_SAFETENSORS = "diffusion_pytorch_model.safetensors"
WEIGHTS_BIN = "diffusion_pytorch_model.bin"


def load_weight_file(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read diffusers' weight file from ``folder``: safetensors preferred, .bin via weights_only."""
    folder = Path(folder)
    st = folder / WEIGHTS_SAFETENSORS
    if st.is_file():
        from safetensors.torch import load_file

        return load_file(str(st))
    bin_path = folder / WEIGHTS_BIN
    if bin_path.is_file():
        state = torch.load(str(bin_path), map_location="cpu", weights_only=True)
        if not isinstance(state, Mapping):
            raise ValueError(f"{bin_path}: expected a state dict, got {type(state).__name__}")
        return dict(state)
    raise FileNotFoundError(f"no weights in {folder}: expected {WEIGHTS_SAFETENSORS} or {WEIGHTS_BIN}")


def check_state_dict_keys(
    expected: Mapping[str, tuple[int, ...]], state: Mapping[str, torch.Tensor], where: str
) -> None:
    """Raise a ValueError naming missing, unexpected and mis-shaped keys (never silent random init)."""
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected)
    mismatched = sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k])}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k])
    )
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing[:12])}" + (" ..." if len(missing) > 12 else ""))
    if unexpected:
        problems.append(
            f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:12])}" + (" ..." if len(unexpected) > 12 else "")
        )
    if mismatched:
        problems.append(
            f"shape mismatch ({len(mismatched)}): {', '.join(mismatched[:12])}" + (" ..." if len(mismatched) > 12 else "")
        )
    if problems:
        raise ValueError(f"{where}: checkpoint does not match the model; " + "; ".join(problems))


def read_json_config(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """A component's JSON config; a missing or broken file is an error that names it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing {what} config: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON ({exc})") from None


def load_vae(folder: str | os.PathLike, device: str | torch.device, dtype: torch.dtype) -> AutoencoderKL:
    """AutoencoderKL from a diffusers ``vae`` folder with strict key checks (no silent random init)."""
    from diffusers import AutoencoderKL

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"VAE folder not found: {folder}")
    config = read_json_config(folder / "config.json", "VAE")
    with torch.device("meta"):
        vae = AutoencoderKL.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    state = load_weight_file(folder)
    expected = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    check_state_dict_keys(expected, state, f"VAE weights in {folder}")
    vae.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state.items()}, strict=True, assign=True)
    return vae.eval().requires_grad_(False)


def load_scheduler(folder: str | os.PathLike) -> DDPMScheduler:
    """DDPMScheduler from the folder's config, whatever class name the config carries (as the reference)."""
    from diffusers import DDPMScheduler

    folder = Path(folder)
    config = read_json_config(folder / "scheduler_config.json", "scheduler")
    return DDPMScheduler.from_config(config)
