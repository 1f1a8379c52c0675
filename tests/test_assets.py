"""Model management: required files, the models root, downloads and the offline error."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fastfit_engine.weights import assets
from fastfit_engine.weights.assets import (
    DWPOSE,
    FASTFIT,
    HUMAN_TOOLKIT,
    ModelsNotFoundError,
    ensure_models,
    missing_files,
    resolve_models_dir,
)


def _touch_all(root: Path) -> None:
    for repo in (FASTFIT, HUMAN_TOOLKIT, DWPOSE):
        for group in repo.required:
            p = root / repo.folder / group[0]
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"x")


def test_required_files_are_the_published_names():
    flat = {f"{r.folder}/{g[0]}" for r in (HUMAN_TOOLKIT, DWPOSE) for g in r.required}
    assert flat == {
        "Human-Toolkit/DWPose/yolox_l.onnx", "Human-Toolkit/DWPose/dw-ll_ucoco_384.onnx",
        "Human-Toolkit/DensePose/model_final_162be9.pkl",
        "Human-Toolkit/SCHP/schp-lip.pth", "Human-Toolkit/SCHP/schp-atr.pth",
    }
    assert FASTFIT.repo_id == "zhengchong/FastFit-MR-1024" and HUMAN_TOOLKIT.repo_id == "zhengchong/Human-Toolkit"
    assert DWPOSE.repo_id == "yzd-v/DWPose"
    # the toolkit download also asks for its DWPose folder, should the hub repo carry one
    assert {"DWPose/yolox_l.onnx", "DWPose/dw-ll_ucoco_384.onnx"} <= set(HUMAN_TOOLKIT.allow_patterns)
    # every required file is covered by the download patterns (otherwise a download could never complete it)
    from fnmatch import fnmatch

    for repo in (FASTFIT, HUMAN_TOOLKIT, DWPOSE):
        for group in repo.required:
            assert any(fnmatch(group[0], pat) for pat in repo.allow_patterns), group


def test_synthetic_tree_is_complete(models_dir):
    assert missing_files(FASTFIT, models_dir / "FastFit-MR-1024") == []
    assert missing_files(HUMAN_TOOLKIT, models_dir / "Human-Toolkit") == []
    assert missing_files(DWPOSE, models_dir / "Human-Toolkit" / "DWPose") == []
    paths = ensure_models(models_dir, download=False)
    assert paths.fastfit == models_dir / "FastFit-MR-1024"
    assert paths.schp_lip.is_file() and paths.schp_atr.is_file() and paths.dwpose.is_dir()


def test_alternative_bin_weights_count(tmp_path):
    _touch_all(tmp_path)
    f = tmp_path / "FastFit-MR-1024" / "unet"
    (f / "diffusion_pytorch_model.safetensors").unlink()
    assert missing_files(FASTFIT, tmp_path / "FastFit-MR-1024") == ["unet/diffusion_pytorch_model.safetensors"]
    (f / "diffusion_pytorch_model.bin").write_bytes(b"x")
    assert missing_files(FASTFIT, tmp_path / "FastFit-MR-1024") == []


def test_models_dir_option_env_default(monkeypatch, tmp_path):
    monkeypatch.delenv("FASTFIT_MODELS_DIR", raising=False)
    assert resolve_models_dir() == Path("Models")
    monkeypatch.setenv("FASTFIT_MODELS_DIR", str(tmp_path / "env"))
    assert resolve_models_dir() == tmp_path / "env"
    assert resolve_models_dir(tmp_path / "opt") == tmp_path / "opt"


def test_offline_error_names_files_and_place(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    called = []
    with pytest.raises(ModelsNotFoundError) as info:
        ensure_models(tmp_path, downloader=lambda **kw: called.append(kw))
    msg = str(info.value)
    assert "\n" not in msg and not called
    assert "HF_HUB_OFFLINE is set" in msg
    assert f"in {tmp_path / 'FastFit-MR-1024'}" in msg and "https://huggingface.co/zhengchong/FastFit-MR-1024" in msg
    assert "unet/config.json" in msg


def test_no_download_error(tmp_path):
    _touch_all(tmp_path)
    (tmp_path / "Human-Toolkit" / "SCHP" / "schp-atr.pth").unlink()
    with pytest.raises(ModelsNotFoundError, match=r"Human-Toolkit is missing SCHP/schp-atr.pth; place the files"):
        ensure_models(tmp_path, download=False)


def test_download_failure_is_one_line(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def unreachable(**kw):
        raise OSError("Cannot reach https://huggingface.co\nsecond line")

    with pytest.raises(ModelsNotFoundError) as info:
        ensure_models(tmp_path, downloader=unreachable)
    msg = str(info.value)
    assert msg.startswith("could not download zhengchong/FastFit-MR-1024 (OSError: Cannot reach https://huggingface.co)")
    assert "\n" not in msg


def test_downloads_only_missing_repos_with_patterns_and_revision(monkeypatch, tmp_path, models_dir):
    """The downloader gets the repo, the folder, our allow-list and the pinned revision; a
    repo whose folder is already complete is not fetched again."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HUMAN_TOOLKIT_REVISION", "abc123")
    shutil.copytree(models_dir / "FastFit-MR-1024", tmp_path / "FastFit-MR-1024")
    calls = []

    def fake_hub(*, repo_id, revision, local_dir, allow_patterns):
        calls.append((repo_id, revision, Path(local_dir), tuple(allow_patterns)))
        shutil.copytree(models_dir / "Human-Toolkit", local_dir, dirs_exist_ok=True)

    paths = ensure_models(tmp_path, downloader=fake_hub)
    assert calls == [("zhengchong/Human-Toolkit", "abc123", tmp_path / "Human-Toolkit", HUMAN_TOOLKIT.allow_patterns)]
    assert paths.human_toolkit == tmp_path / "Human-Toolkit"
    # complete now: a second call downloads nothing
    ensure_models(tmp_path, downloader=fake_hub)
    assert len(calls) == 1


def test_dwpose_fetched_from_its_authors_when_the_toolkit_lacks_it(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls = []

    def hub(*, repo_id, local_dir, **kw):  # the toolkit repo without a DWPose folder
        calls.append((repo_id, Path(local_dir)))
        if repo_id == "zhengchong/FastFit-MR-1024":
            _touch_all(tmp_path)
            for p in (tmp_path / "Human-Toolkit" / "DWPose").glob("*"):
                p.unlink()
            (tmp_path / "Human-Toolkit" / "SCHP" / "schp-lip.pth").unlink()
        elif repo_id == "zhengchong/Human-Toolkit":
            (Path(local_dir) / "SCHP" / "schp-lip.pth").write_bytes(b"x")
        elif repo_id == "yzd-v/DWPose":
            for name in ("yolox_l.onnx", "dw-ll_ucoco_384.onnx"):
                (Path(local_dir) / name).write_bytes(b"x")

    paths = ensure_models(tmp_path, downloader=hub)
    assert calls == [
        ("zhengchong/FastFit-MR-1024", tmp_path / "FastFit-MR-1024"),
        ("zhengchong/Human-Toolkit", tmp_path / "Human-Toolkit"),
        ("yzd-v/DWPose", tmp_path / "Human-Toolkit" / "DWPose"),
    ]
    assert (paths.dwpose / "yolox_l.onnx").is_file()


def test_incomplete_download_names_what_is_still_missing(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def partial(*, repo_id, local_dir, **kw):  # a repo that lacks a file we need
        if repo_id == "zhengchong/FastFit-MR-1024":
            _touch_all(tmp_path)
            (tmp_path / "Human-Toolkit" / "DensePose" / "model_final_162be9.pkl").unlink()

    with pytest.raises(ModelsNotFoundError, match=r"Human-Toolkit is still missing DensePose/model_final_162be9.pkl "
                                                  r"after downloading zhengchong/Human-Toolkit"):
        ensure_models(tmp_path, downloader=partial)


def test_hub_offline_parsing(monkeypatch):
    for value, expected in [("1", True), ("true", True), ("0", False), ("", False)]:
        monkeypatch.setenv("HF_HUB_OFFLINE", value)
        assert assets.hub_offline() is expected


def test_synthetic_cli_writes_a_complete_models_tree(tmp_path, capsys):
    """`python -m fastfit_engine.synthetic Models --tiny` gives a tree that needs no download."""
    from fastfit_engine.synthetic import main

    assert main([str(tmp_path / "Models"), "--tiny", "--seed", "3"]) == 0
    paths = ensure_models(tmp_path / "Models", download=False)
    for repo, folder in ((FASTFIT, paths.fastfit), (HUMAN_TOOLKIT, paths.human_toolkit), (DWPOSE, paths.dwpose)):
        assert missing_files(repo, folder) == []
    assert (paths.densepose / "densepose_rcnn_R_50_FPN_s1x.yaml").is_file()
