"""Weight integrity (recorded SHA-256 checked at load) and the synthetic writer's markers and refusal."""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from fastfit_engine.weights import assets
from fastfit_engine.weights.integrity import (
    MANIFEST_NAME,
    SYNTHETIC_MARKER,
    WeightIntegrityError,
    read_manifest,
    verify_models,
)
from fastfit_engine.synthetic import foreign_files, main as synthetic_main, write_models_root

from conftest import TEST_RESOLUTION

UNET = "FastFit-MR-1024/unet/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def marked_root(tmp_path_factory) -> Path:
    """A tree written by the synthetic writer, forced over a folder that already held a stray file."""
    root = tmp_path_factory.mktemp("marked") / "Models"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    write_models_root(root, tiny=True, seed=0, force=True)
    return root


@pytest.fixture
def tree(marked_root, tmp_path) -> Path:
    root = tmp_path / "Models"
    shutil.copytree(marked_root, root)
    return root


def _engine(root: Path):
    from fastfit_engine.runtime.engine import FastFitEngine

    return FastFitEngine.from_models_dir(root, device="cpu", resolution=TEST_RESOLUTION, download=False)


def _corrupt_middle(path: Path, n: int = 4096, seed: int = 0) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + n] = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def test_corrupt_unet_bytes_make_loading_fail_naming_the_file(tree):
    """4 KiB of random bytes in the middle of the UNet: safetensors still parses it, so only the
    digest check stands between this and a service that answers with black images."""
    _corrupt_middle(tree / UNET)
    with pytest.raises(WeightIntegrityError) as info:
        _engine(tree)
    msg = str(info.value)
    assert str(tree / UNET) in msg and "is corrupt" in msg and "\n" not in msg
    assert info.value.code == "engine_failed" and info.value.retryable is False


def test_manifest_records_the_sha256_of_every_written_file(tree):
    for folder in ("FastFit-MR-1024", "Human-Toolkit"):
        files = read_manifest(tree / folder)
        on_disk = {
            p.relative_to(tree / folder).as_posix()
            for p in (tree / folder).rglob("*") if p.is_file() and not p.name.startswith(".fastfit-")
        }
        assert set(files) == on_disk
        for rel, entry in files.items():
            data = (tree / folder / rel).read_bytes()
            assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    assert "DWPose/yolox_l.onnx" in read_manifest(tree / "Human-Toolkit")


def test_intact_synthetic_tree_loads_flagged_and_logged(tree, caplog):
    caplog.set_level(logging.INFO)
    engine = _engine(tree)
    assert engine.synthetic_weights is True
    text = [r.getMessage() for r in caplog.records]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum(m.startswith("SYNTHETIC WEIGHTS: ") for m in warnings) == 2  # both folders
    assert any(m.startswith("verified ") and "weight files" in m for m in text)
    assert "engine device: cpu (requested), float32; DWPose on cpu" in text
    assert f"loading FastFit UNet, VAE and scheduler from {tree / 'FastFit-MR-1024'}" in text
    assert f"loading SCHP ATR from {tree / 'Human-Toolkit' / 'SCHP' / 'schp-atr.pth'}" in text


def test_unmarked_tree_without_digests_warns_or_fails_when_strict(models_dir, caplog, monkeypatch):
    """conftest's tree has neither marker nor manifest (like weights copied by hand)."""
    monkeypatch.delenv("FASTFIT_REQUIRE_DIGESTS", raising=False)
    with caplog.at_level(logging.WARNING):
        report = verify_models(models_dir)
    assert not report.synthetic_weights and report.verified == []
    assert models_dir / UNET in report.unrecorded and len(report.unrecorded) == 10  # every required file
    assert any("no recorded SHA-256 for " in r.getMessage() for r in caplog.records)
    monkeypatch.setenv("FASTFIT_REQUIRE_DIGESTS", "1")
    with pytest.raises(WeightIntegrityError, match=r"no recorded SHA-256 for .* and FASTFIT_REQUIRE_DIGESTS=1"):
        verify_models(models_dir)


def test_verification_can_be_switched_off_and_bad_manifests_are_errors(tree, monkeypatch):
    _corrupt_middle(tree / UNET)
    monkeypatch.setenv("FASTFIT_VERIFY_WEIGHTS", "0")
    assert verify_models(tree).verified == []
    monkeypatch.delenv("FASTFIT_VERIFY_WEIGHTS")
    with pytest.raises(WeightIntegrityError, match="unet/diffusion_pytorch_model.safetensors is corrupt"):
        verify_models(tree)
    (tree / "FastFit-MR-1024" / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(WeightIntegrityError, match=r"\.fastfit-sha256\.json is not a valid digest manifest"):
        verify_models(tree)


# ---------------------------------------------------------------------- download records digests
def test_download_records_the_hubs_lfs_digests_and_pins_the_commit(tmp_path, marked_root, monkeypatch):
    """With the real Hub path (no injected downloader), the digests come from the Hub's metadata
    and the download is pinned to the commit they describe; a downloaded file that differs from
    the Hub's digest then fails the load."""
    import huggingface_hub
    from huggingface_hub.hf_api import BlobLfsInfo, ModelInfo, RepoSibling

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    src = marked_root / "FastFit-MR-1024"
    unet_bytes = (src / "unet/diffusion_pytorch_model.safetensors").read_bytes()
    commit = "0123456789abcdef0123456789abcdef01234567"
    asked = []

    def fake_model_info(self, repo_id, revision=None, files_metadata=False, timeout=None, **kw):
        asked.append((repo_id, revision, files_metadata, timeout is not None))
        info = ModelInfo(id=repo_id, sha=commit, siblings=[])
        info.siblings = [
            RepoSibling(rfilename="unet/config.json", size=10, blob_id="x"),
            RepoSibling(rfilename="unet/diffusion_pytorch_model.safetensors", size=len(unet_bytes), blob_id="y",
                        lfs=BlobLfsInfo(size=len(unet_bytes), sha256=hashlib.sha256(unet_bytes).hexdigest(),
                                        pointer_size=130)),
            RepoSibling(rfilename="text_encoder/model.safetensors", size=1, blob_id="z",
                        lfs=BlobLfsInfo(size=1, sha256="0" * 64, pointer_size=130)),
        ]
        return info

    downloads = []

    def fake_snapshot_download(*, repo_id, revision, local_dir, allow_patterns):
        downloads.append((repo_id, revision))
        shutil.copytree(src, local_dir, dirs_exist_ok=True)
        for marker in Path(local_dir).glob(".fastfit-*"):
            marker.unlink()  # a download carries neither our marker nor our manifest
        _corrupt_middle(Path(local_dir) / "unet/diffusion_pytorch_model.safetensors")  # damaged in transit

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", fake_model_info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    folder = assets.ensure_repo(assets.FASTFIT, tmp_path)
    assert asked == [("zhengchong/FastFit-MR-1024", None, True, True)]
    assert downloads == [("zhengchong/FastFit-MR-1024", commit)]
    doc = json.loads((folder / MANIFEST_NAME).read_text())
    assert doc["revision"] == commit and doc["repo_id"] == "zhengchong/FastFit-MR-1024"
    assert doc["files"]["unet/diffusion_pytorch_model.safetensors"]["sha256"] == hashlib.sha256(unet_bytes).hexdigest()
    config = (folder / "unet/config.json").read_bytes()
    assert doc["files"]["unet/config.json"]["sha256"] == hashlib.sha256(config).hexdigest()  # hashed locally
    assert "text_encoder/model.safetensors" not in doc["files"]  # outside our allow-list
    with pytest.raises(WeightIntegrityError, match="diffusion_pytorch_model.safetensors is corrupt"):
        verify_models(tmp_path, [assets.FASTFIT])


def test_injected_downloader_gets_digests_computed_after_download(tmp_path, marked_root, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def hub(*, repo_id, local_dir, **kw):
        shutil.copytree(marked_root / "Human-Toolkit", local_dir, dirs_exist_ok=True)
        (Path(local_dir) / SYNTHETIC_MARKER).unlink()
        (Path(local_dir) / MANIFEST_NAME).unlink()

    assets.ensure_repo(assets.HUMAN_TOOLKIT, tmp_path, downloader=hub)
    doc = json.loads((tmp_path / "Human-Toolkit" / MANIFEST_NAME).read_text())
    assert doc["source"] == "computed-after-download"
    assert set(doc["files"]) == {
        "DWPose/yolox_l.onnx", "DWPose/dw-ll_ucoco_384.onnx", "DensePose/model_final_162be9.pkl",
        "DensePose/Base-DensePose-RCNN-FPN.yaml", "DensePose/densepose_rcnn_R_50_FPN_s1x.yaml",
        "SCHP/schp-lip.pth", "SCHP/schp-atr.pth",
    }
    report = verify_models(tmp_path, [assets.HUMAN_TOOLKIT, assets.DWPOSE])
    assert len(report.verified) == 7 and report.unrecorded == [] and not report.synthetic_weights


# --------------------------------------------------------------------------------- synthetic writer
def test_synthetic_writer_refuses_a_folder_with_other_files(tmp_path, capsys):
    real = tmp_path / "Models" / UNET
    real.parent.mkdir(parents=True)
    real.write_bytes(b"real weights")
    assert synthetic_main([str(tmp_path / "Models"), "--tiny"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'Models'} holds files this writer did not write ({UNET})")
    assert "--force" in err and err.count("\n") == 1
    assert real.read_bytes() == b"real weights"
    assert not (tmp_path / "Models" / "Human-Toolkit").exists()


def test_synthetic_writer_without_onnx_says_what_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # an install from requirements.txt alone
    assert synthetic_main([str(tmp_path / "Models"), "--tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: writing synthetic models needs the onnx package (requirements-dev.txt): "
                   "pip install -r requirements-dev.txt -c constraints.txt"]
    assert not (tmp_path / "Models").exists()  # nothing half-written


def test_synthetic_writer_marks_what_it_writes(marked_root):
    # its own earlier output is not foreign; the stray file it was forced over still is
    assert foreign_files(marked_root) == [marked_root / "notes.txt"]
    for folder in ("FastFit-MR-1024", "Human-Toolkit"):
        doc = json.loads((marked_root / folder / SYNTHETIC_MARKER).read_text())
        assert "random weights" in doc["what"] and doc["written"].endswith("Z")
        assert doc["tiny"] is True and doc["seed"] == 0
    doc = json.loads((marked_root / "FastFit-MR-1024" / SYNTHETIC_MARKER).read_text())
    assert doc["files"] == [
        "scheduler/scheduler_config.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
    ]
    assert foreign_files(marked_root / "absent") == []


def test_service_marks_responses_served_by_synthetic_weights(tree, engine, sample_files):
    import io

    from server import create_app

    shop = "https://shop.example"

    def post(eng, **fields):
        data = {n: (io.BytesIO(sample_files[n].read_bytes()), f"{n}.png") for n in ("person", "upper")}
        data.update(steps="1", guidance_scale="1", **fields)
        client = create_app(engine=eng, config={"CORS_ORIGINS": (shop,)}).test_client()
        return client.post("/prompt", data=data, content_type="multipart/form-data", headers={"Origin": shop})

    synthetic = _engine(tree)
    for fields in ({}, {"response_format": "json"}, {"preview": "mask", "response_format": "json"}):
        r = post(synthetic, **fields)
        assert r.status_code == 200 and r.headers["X-FastFit-Synthetic-Weights"] == "true", fields
        # a page on a listed origin may read the flag
        exposed = {h.strip().lower() for h in r.headers["Access-Control-Expose-Headers"].split(",")}
        assert "x-fastfit-synthetic-weights" in exposed
        if fields:
            assert r.get_json()["synthetic_weights"] is True
    r = post(engine)  # conftest's tree carries no marker
    assert r.status_code == 200 and "X-FastFit-Synthetic-Weights" not in r.headers
    r = post(engine, response_format="json")
    assert r.status_code == 200 and r.get_json()["synthetic_weights"] is False


def test_cli_says_synthetic_weights_on_stdout(tree, sample_files, tmp_path, capsys, monkeypatch):
    import inference

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out.png"
    argv = ["--person", str(sample_files["person"]), "--upper", str(sample_files["upper"]), "--steps", "1",
            "--guidance", "1", "--resolution", "192x256", "--models-dir", str(tree), "--output", str(out)]
    assert inference.run(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"output: {out}" and lines[-1] == "synthetic weights: yes"
