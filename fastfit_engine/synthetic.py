"""Synthetic FastFit-MR-1024 model folders: published layout and key names, seeded random weights.

Real weights never run in tests or CI; this writer produces folders that the real loaders read
(unet/, vae/, scheduler/ with diffusers' file names). ``tiny`` keeps every key name and block
type (4 levels, 2 layers per block, VAE factor 8) with small channel counts.

CLI: ``python -m fastfit_engine.synthetic OUT_DIR [--tiny] [--seed N] [--force]`` writes a Models
root: OUT_DIR/FastFit-MR-1024 and OUT_DIR/Human-Toolkit. It refuses a folder holding anything
but its own earlier output (real downloaded weights must never silently become random ones)
unless ``--force``; each folder it writes gets a ``.fastfit-synthetic.json`` marker (what, when,
seed, the files), which makes the engine warn that it serves synthetic weights, and a
``.fastfit-sha256.json`` digest manifest like a download.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastfit_engine.model.loading import WEIGHTS_SAFETENSORS

__all__ = [
    "UNET_CONFIG",
    "UNET_CONFIG_TINY",
    "VAE_CONFIG",
    "VAE_CONFIG_TINY",
    "SCHEDULER_CONFIG",
    "random_state_dict",
    "write_fastfit_model",
    "write_models_root",
    "SyntheticTargetError",
    "main",
]

UNET_CONFIG: dict[str, Any] = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": None,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 9,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_class_embeds": 5,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
UNET_CONFIG_TINY: dict[str, Any] = {**UNET_CONFIG, "block_out_channels": [16, 32, 64, 64], "norm_num_groups": 8}

VAE_CONFIG: dict[str, Any] = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
VAE_CONFIG_TINY: dict[str, Any] = {
    **VAE_CONFIG,
    "block_out_channels": [16, 32, 64, 64],
    "norm_num_groups": 8,
    "sample_size": 64,
}

SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "DDPMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}


def random_state_dict(
    model: nn.Module, generator: torch.Generator, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Seeded random weights for ``model`` (may live on the meta device), module by module.

    Fan-in scaled normals keep activations in a sane range through a deep random UNet, so bf16
    runs stay finite; norms start near identity.
    """
    state: dict[str, torch.Tensor] = {}
    for mod_name, module in model.named_modules():
        params = list(module.named_parameters(recurse=False))
        if not params:
            continue
        for p_name, param in sorted(params):
            key = f"{mod_name}.{p_name}" if mod_name else p_name
            shape = tuple(param.shape)
            if isinstance(module, (nn.GroupNorm, nn.LayerNorm)):
                noise = torch.randn(shape, generator=generator) * 0.05
                value = noise + 1.0 if p_name == "weight" else noise
            elif isinstance(module, nn.Embedding):
                value = torch.randn(shape, generator=generator)
            elif p_name == "weight" and len(shape) >= 2:
                fan_in = 1
                for s in shape[1:]:
                    fan_in *= s
                value = torch.randn(shape, generator=generator) * (fan_in**-0.5)
            else:
                value = torch.randn(shape, generator=generator) * 0.02
            state[key] = value.to(dtype)
    expected = set(model.state_dict())
    if set(state) != expected:
        raise RuntimeError(f"random_state_dict missed keys: {sorted(expected - set(state))[:5]}")
    return state


def _save(folder: Path, config: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / WEIGHTS_SAFETENSORS))


def write_fastfit_model(
    folder: str | os.PathLike, *, tiny: bool = False, seed: int = 0, dtype: torch.dtype | None = None
) -> Path:
    """Write unet/, vae/ and scheduler/ of a FastFit-MR-1024-style folder; returns the folder.

    Full size is stored in fp16 (1.7 GB instead of 3.4 GB); tiny in fp32 unless ``dtype`` says otherwise.
    """
    from diffusers import AutoencoderKL

    from fastfit_engine.model.unet import FastFitUNet

    folder = Path(folder)
    dtype = dtype or (torch.float32 if tiny else torch.float16)
    generator = torch.Generator("cpu").manual_seed(int(seed))
    unet_cfg = UNET_CONFIG_TINY if tiny else UNET_CONFIG
    vae_cfg = VAE_CONFIG_TINY if tiny else VAE_CONFIG
    with torch.device("meta"):
        unet = FastFitUNet(unet_cfg)
        vae = AutoencoderKL.from_config({k: v for k, v in vae_cfg.items() if not k.startswith("_")})
    _save(folder / "unet", unet_cfg, random_state_dict(unet, generator, dtype))
    _save(folder / "vae", vae_cfg, random_state_dict(vae, generator, dtype))
    sched = folder / "scheduler"
    sched.mkdir(parents=True, exist_ok=True)
    (sched / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG, indent=2) + "\n")
    return folder


class SyntheticTargetError(Exception):
    """The output folder holds files this writer did not write."""


def _own_files(root: Path) -> set[Path]:
    """Files under `root` that an earlier run of this writer wrote (listed by its markers)."""
    from .weights.integrity import MANIFEST_NAME, SYNTHETIC_MARKER, read_synthetic_marker

    own: set[Path] = set()
    for marker in root.rglob(SYNTHETIC_MARKER):
        folder = marker.parent
        doc = read_synthetic_marker(folder) or {}
        own.update(folder / f for f in doc.get("files", []) if isinstance(f, str))
        own.update((marker, folder / MANIFEST_NAME))
    return own


def foreign_files(root: str | os.PathLike) -> list[Path]:
    """Files under `root` that writing a synthetic tree there would overwrite or mix with."""
    root = Path(root)
    if not root.exists():
        return []
    if not root.is_dir():
        return [root]
    own = _own_files(root)
    return sorted(p for p in root.rglob("*") if not p.is_dir() and p not in own)


def write_models_root(
    root: str | os.PathLike, *, tiny: bool = False, seed: int = 0, force: bool = False
) -> tuple[Path, Path]:
    """Write a marked synthetic Models root (FastFit-MR-1024 and Human-Toolkit); returns both folders.

    Refuses (SyntheticTargetError) a `root` holding anything but this writer's own output
    unless `force`.
    """
    from parse_utils.synthetic import write_human_toolkit

    from .weights.integrity import compute_digests, write_manifest, write_synthetic_marker

    root = Path(root)
    foreign = [] if force else foreign_files(root)
    if foreign:
        shown = ", ".join(str(p.relative_to(root)) if p != root else str(p) for p in foreign[:3])
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise SyntheticTargetError(
            f"{root} holds files this writer did not write ({shown}{more}); random weights would replace "
            "or mix with them. Choose an empty folder, or pass --force to overwrite"
        )
    folders = (
        write_fastfit_model(root / "FastFit-MR-1024", tiny=tiny, seed=seed),
        write_human_toolkit(root / "Human-Toolkit", tiny=tiny, seed=seed),
    )
    for folder in folders:
        files = [
            p.relative_to(folder).as_posix()
            for p in folder.rglob("*")
            if p.is_file() and not p.name.startswith(".fastfit-")
        ]
        write_synthetic_marker(folder, files, tiny=tiny, seed=seed)
        write_manifest(folder, compute_digests(folder, files), repo_id=None, revision=None, source="synthetic-writer")
    return folders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a synthetic Models root (FastFit-MR-1024 + Human-Toolkit).")
    parser.add_argument("out_dir", type=Path, help="Models root to create")
    parser.add_argument("--tiny", action="store_true", help="small channels for fast CPU tests")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="write even if the folder holds other files")
    args = parser.parse_args(argv)
    try:  # DWPose's two ONNX graphs are built with the onnx package, a development dependency
        import onnx  # noqa: F401
    except ImportError:
        print("error: writing synthetic models needs the onnx package (requirements-dev.txt): "
              "pip install -r requirements-dev.txt -c constraints.txt", file=sys.stderr)
        return 2
    try:
        model, toolkit = write_models_root(args.out_dir, tiny=args.tiny, seed=args.seed, force=args.force)
    except SyntheticTargetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {model} and {toolkit} (random weights, marked synthetic)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
