"""The catalogue of model repositories: which hub repository fills which folder, with which files.

Download (`assets.py`) and integrity checks (`integrity.py`) both read it; it imports neither.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DWPOSE", "FASTFIT", "HUMAN_TOOLKIT", "REPOS", "ModelRepo"]


@dataclass(frozen=True)
class ModelRepo:
    """One hub repository mirrored into one folder under the models root."""

    folder: str
    repo_id: str
    # Each entry is a group of alternatives; one file of each group must exist.
    required: tuple[tuple[str, ...], ...]
    allow_patterns: tuple[str, ...]
    revision_env: str


FASTFIT = ModelRepo(
    folder="FastFit-MR-1024",
    repo_id="zhengchong/FastFit-MR-1024",
    required=(
        ("unet/config.json",),
        ("unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.bin"),
        ("vae/config.json",),
        ("vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.bin"),
        ("scheduler/scheduler_config.json",),
    ),
    allow_patterns=("unet/*", "vae/*", "scheduler/*", "model_index.json"),
    revision_env="FASTFIT_REVISION",
)

HUMAN_TOOLKIT = ModelRepo(
    folder="Human-Toolkit",
    repo_id="zhengchong/Human-Toolkit",
    required=(
        ("DensePose/model_final_162be9.pkl",),
        ("SCHP/schp-lip.pth",),
        ("SCHP/schp-atr.pth",),
    ),
    allow_patterns=(
        "DWPose/yolox_l.onnx",
        "DWPose/dw-ll_ucoco_384.onnx",
        "DensePose/model_final_162be9.pkl",
        "DensePose/*.yaml",
        "SCHP/schp-lip.pth",
        "SCHP/schp-atr.pth",
    ),
    revision_env="HUMAN_TOOLKIT_REVISION",
)

# The app expects DWPose inside Human-Toolkit, but that hub repo has not always carried it; the
# same two ONNX files are published by the DWPose authors, so they are fetched from there when
# the toolkit download did not bring them.
DWPOSE = ModelRepo(
    folder="Human-Toolkit/DWPose",
    repo_id="yzd-v/DWPose",
    required=(("yolox_l.onnx",), ("dw-ll_ucoco_384.onnx",)),
    allow_patterns=("yolox_l.onnx", "dw-ll_ucoco_384.onnx"),
    revision_env="DWPOSE_REVISION",
)

REPOS = (FASTFIT, HUMAN_TOOLKIT, DWPOSE)
