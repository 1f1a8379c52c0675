"""Model files: where they live, which ones we need, and fetching them from the Hugging Face Hub.

Layout under the models root (default `Models/`, env FASTFIT_MODELS_DIR):

    FastFit-MR-1024/   unet/, vae/, scheduler/            (hub repo zhengchong/FastFit-MR-1024)
    Human-Toolkit/     DensePose/, SCHP/                  (hub repo zhengchong/Human-Toolkit)
    Human-Toolkit/DWPose/  yolox_l.onnx, dw-ll_ucoco_384.onnx  (from the toolkit, else yzd-v/DWPose)

Everything is checked before any model is built, so a half-downloaded folder fails with a
message naming the missing files instead of an obscure loader error minutes later.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODELS_DIR = "Models"
MODELS_DIR_ENV = "FASTFIT_MODELS_DIR"


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


class ModelsNotFoundError(FileNotFoundError):
    """Model files are missing and could not be downloaded; the message says what to put where."""


@dataclass(frozen=True)
class ModelPaths:
    root: Path
    fastfit: Path
    human_toolkit: Path

    @property
    def dwpose(self) -> Path:
        return self.human_toolkit / "DWPose"

    @property
    def densepose(self) -> Path:
        return self.human_toolkit / "DensePose"

    @property
    def schp_lip(self) -> Path:
        return self.human_toolkit / "SCHP" / "schp-lip.pth"

    @property
    def schp_atr(self) -> Path:
        return self.human_toolkit / "SCHP" / "schp-atr.pth"


def resolve_models_dir(models_dir: str | os.PathLike | None = None) -> Path:
    """The option if given, else $FASTFIT_MODELS_DIR, else ./Models."""
    if models_dir is None or str(models_dir) == "":
        models_dir = os.environ.get(MODELS_DIR_ENV) or DEFAULT_MODELS_DIR
    return Path(models_dir).expanduser()


def missing_files(repo: ModelRepo, folder: str | os.PathLike) -> list[str]:
    """Relative paths of the required files absent from `folder` (first alternative named)."""
    folder = Path(folder)
    missing = []
    for group in repo.required:
        if not any((folder / name).is_file() for name in group):
            missing.append(group[0])
    return missing


def hub_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def _describe(missing: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(missing[:limit])
    return shown + (f" and {len(missing) - limit} more" if len(missing) > limit else "")


def ensure_repo(
    repo: ModelRepo,
    root: Path,
    *,
    download: bool = True,
    revision: str | None = None,
    downloader: Callable[..., object] | None = None,
) -> Path:
    """Make sure `root/repo.folder` holds the required files, downloading only what we use."""
    folder = root / repo.folder
    missing = missing_files(repo, folder)
    if not missing:
        return folder
    place = f"place the files of https://huggingface.co/{repo.repo_id} in {folder}"
    if not download:
        raise ModelsNotFoundError(f"{folder} is missing {_describe(missing)}; {place}")
    if hub_offline():
        raise ModelsNotFoundError(f"{folder} is missing {_describe(missing)} and HF_HUB_OFFLINE is set; {place}")
    if downloader is None:
        from huggingface_hub import snapshot_download

        downloader = snapshot_download
    revision = revision or os.environ.get(repo.revision_env) or None
    folder.mkdir(parents=True, exist_ok=True)
    try:
        downloader(
            repo_id=repo.repo_id,
            revision=revision,
            local_dir=str(folder),
            allow_patterns=list(repo.allow_patterns),
        )
    except Exception as exc:  # network, auth, unknown revision: all end the same way for the user
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelsNotFoundError(
            f"could not download {repo.repo_id} ({type(exc).__name__}: {reason[:200]}); {place}"
        ) from exc
    missing = missing_files(repo, folder)
    if missing:
        raise ModelsNotFoundError(
            f"{folder} is still missing {_describe(missing)} after downloading {repo.repo_id}; {place}"
        )
    return folder


def ensure_models(
    models_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    revisions: dict[str, str] | None = None,
    downloader: Callable[..., object] | None = None,
) -> ModelPaths:
    """Check (and if needed download) both model folders; return their paths.

    `revisions` maps a repo id to a commit or tag to pin; env FASTFIT_REVISION,
    HUMAN_TOOLKIT_REVISION and DWPOSE_REVISION do the same.
    """
    root = resolve_models_dir(models_dir)
    revisions = revisions or {}
    folders = [
        ensure_repo(r, root, download=download, revision=revisions.get(r.repo_id), downloader=downloader)
        for r in REPOS
    ]
    return ModelPaths(root=root, fastfit=folders[0], human_toolkit=folders[1])  # DWPose lies inside the toolkit
