"""Model files: where they live, which ones we need, and fetching them from the Hugging Face Hub.

Layout under the models root (default `Models/`, env FASTFIT_MODELS_DIR):

    FastFit-MR-1024/   unet/, vae/, scheduler/            (hub repo zhengchong/FastFit-MR-1024)
    Human-Toolkit/     DensePose/, SCHP/                  (hub repo zhengchong/Human-Toolkit)
    Human-Toolkit/DWPose/  yolox_l.onnx, dw-ll_ucoco_384.onnx  (from the toolkit, else yzd-v/DWPose)

Everything is checked before any model is built, so a half-downloaded folder fails with a
message naming the missing files instead of an obscure loader error minutes later.

Every Hub call has a timeout. huggingface_hub's shared HTTP client has none by default and some
of its calls (``repo_info``, ``list_repo_tree`` inside ``snapshot_download``) pass none, so a
Hub (or proxy) that accepts the connection and never answers hung the CLI and the service
loader forever. We add a request hook to that client that fills any missing timeout from
huggingface_hub's own settings, ``HF_HUB_ETAG_TIMEOUT`` (connect) and ``HF_HUB_DOWNLOAD_TIMEOUT``
(read), 10 s each by default; a timeout ends as a ``ModelsNotFoundError`` (code
``engine_failed``) naming the repository. A server that trickles one byte per timeout is not
bounded by this (no per-call deadline can tell it from a slow link).

A download records the SHA-256 of what it brought (``.fastfit-sha256.json``, see
``integrity.py``): the Hub's own digest for each LFS file, fetched first and pinned to the same
commit as the download.
"""
from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from .. import settings
from .catalogue import DWPOSE, FASTFIT, HUMAN_TOOLKIT, REPOS, ModelRepo
from .integrity import compute_digests, write_manifest

log = logging.getLogger("fastfit.assets")

MODELS_DIR_ENV = "FASTFIT_MODELS_DIR"


class ModelsNotFoundError(FileNotFoundError):
    """Model files are missing and could not be downloaded; the message says what to put where.

    `code` is what the service reports for it; `retryable` is True for download failures
    (network, timeouts), which a later attempt may not meet, and False for a missing file
    that nothing will bring.
    """

    code = "engine_failed"

    def __init__(self, message: str, *, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


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
        models_dir = settings.read(MODELS_DIR_ENV)
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
    return settings.read("HF_HUB_OFFLINE")


def _hub_timeouts() -> dict[str, float]:
    from huggingface_hub import constants

    connect = float(constants.HF_HUB_ETAG_TIMEOUT)
    read = float(constants.HF_HUB_DOWNLOAD_TIMEOUT)
    return {"connect": connect, "read": read, "write": read, "pool": connect}


def _fill_missing_timeouts(request: Any) -> None:
    """httpx request hook: a timeout left at None (wait forever) gets huggingface_hub's default."""
    timeouts = dict(request.extensions.get("timeout") or {})
    defaults = _hub_timeouts()
    for key, value in defaults.items():
        if timeouts.get(key) is None:
            timeouts[key] = value
    request.extensions = {**request.extensions, "timeout": timeouts}


def install_hub_timeouts() -> None:
    """Make sure huggingface_hub's shared HTTP client puts a timeout on every request (idempotent;
    the client is re-created after a fork or ``close_session``, so call this before each use)."""
    from huggingface_hub import get_session

    session = get_session()
    hooks = dict(session.event_hooks)
    if _fill_missing_timeouts not in hooks.get("request", []):
        hooks["request"] = [*hooks.get("request", []), _fill_missing_timeouts]
        session.event_hooks = hooks


def hub_lfs_digests(repo_id: str, revision: str | None, patterns: Sequence[str]) -> tuple[str, dict[str, dict]]:
    """(commit, {path: {"sha256", "size"}}) for the LFS files of `repo_id` matching `patterns`,
    from the Hub's file metadata (``model_info(files_metadata=True)``)."""
    from huggingface_hub import HfApi, constants

    install_hub_timeouts()
    info = HfApi().model_info(repo_id, revision=revision, files_metadata=True, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    digests = {}
    for sibling in info.siblings or ():
        lfs = sibling.lfs
        if lfs is None or not any(fnmatch(sibling.rfilename, pat) for pat in patterns):
            continue
        sha = lfs["sha256"] if isinstance(lfs, dict) else lfs.sha256
        size = lfs["size"] if isinstance(lfs, dict) else lfs.size
        digests[sibling.rfilename] = {"sha256": str(sha).lower(), "size": int(size)}
    return info.sha, digests


def _matching_files(folder: Path, patterns: Sequence[str]) -> list[str]:
    files = (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return sorted(f for f in files if any(fnmatch(f, pat) for pat in patterns) and not f.startswith("."))


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    reason = text.splitlines()[0] if text else type(exc).__name__
    if "timeout" in type(exc).__name__.lower() or "timed out" in text.lower():
        t = _hub_timeouts()
        reason = f"no answer within {t['read']:g} s; HF_HUB_DOWNLOAD_TIMEOUT / HF_HUB_ETAG_TIMEOUT set the limits"
    return f"{type(exc).__name__}: {reason[:200]}"


def _describe(missing: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(missing[:limit])
    return shown + (f" and {len(missing) - limit} more" if len(missing) > limit else "")


def synthetic_hint(root: Path) -> str:
    """The way on without the Hub, for the end of a missing-models message (one line): random
    weights in the published formats (fastfit_engine/synthetic.py), enough to try the plumbing."""
    return (f"; or, to try the plumbing without downloading, write random weights (the images are noise; "
            f"needs requirements-dev.txt): python -m fastfit_engine.synthetic {shlex.quote(str(root))} --tiny "
            f"(README: Synthetic models)")


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
    place = f"place the files of https://huggingface.co/{repo.repo_id} in {folder}{synthetic_hint(root)}"
    if not download:
        raise ModelsNotFoundError(f"{folder} is missing {_describe(missing)}; {place}")
    if hub_offline():
        raise ModelsNotFoundError(f"{folder} is missing {_describe(missing)} and HF_HUB_OFFLINE is set; {place}")
    revision = revision or settings.read(repo.revision_env)
    hub_digests: dict[str, dict] = {}
    try:
        if downloader is None:
            from huggingface_hub import snapshot_download

            # Digests first, then the download pinned to the commit they describe.
            revision, hub_digests = hub_lfs_digests(repo.repo_id, revision, repo.allow_patterns)
            install_hub_timeouts()
            downloader = snapshot_download
        folder.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s (revision %s) into %s", repo.repo_id, revision or "latest", folder)
        downloader(
            repo_id=repo.repo_id,
            revision=revision,
            local_dir=str(folder),
            allow_patterns=list(repo.allow_patterns),
        )
    except Exception as exc:  # network, auth, unknown revision, timeout: all end the same way for the user
        raise ModelsNotFoundError(
            f"could not download {repo.repo_id} ({_reason(exc)}); {place}", retryable=True
        ) from exc
    _record_digests(repo, folder, revision, hub_digests)
    missing = missing_files(repo, folder)
    if missing:
        raise ModelsNotFoundError(
            f"{folder} is still missing {_describe(missing)} after downloading {repo.repo_id}; {place}"
        )
    return folder


def _record_digests(repo: ModelRepo, folder: Path, revision: str | None, hub_digests: dict[str, dict]) -> None:
    """Write the folder's manifest: the Hub's digest where it gave one, else hashed now."""
    files = _matching_files(folder, repo.allow_patterns)
    digests = {f: hub_digests[f] for f in files if f in hub_digests}
    digests.update(compute_digests(folder, [f for f in files if f not in hub_digests]))
    source = "hub-lfs-sha256+computed" if hub_digests else "computed-after-download"
    write_manifest(folder, digests, repo_id=repo.repo_id, revision=revision, source=source)


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
