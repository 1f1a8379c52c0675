"""The launcher's start-up in places that broke it: stdout nginx cannot open, nginx refusing its
configuration, and a GPU stack started without GPUs (one loud line, not a silent CPU)."""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fastfit_service import instances, launch, nginx_front

ROOT = Path(__file__).resolve().parents[1]
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def _nginx_test(conf_text: str, run_dir: Path, stdout) -> subprocess.CompletedProcess:
    conf = run_dir / "nginx.conf"
    conf.write_text(conf_text)
    return subprocess.run([NGINX, "-t", "-q", "-e", "stderr", "-p", str(run_dir), "-c", str(conf)],
                          stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=30)


@pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is not installed")
def test_stdout_nginx_cannot_open_falls_back_to_a_file_log(tmp_path):
    """Under systemd stdout is a socket: nginx's open("/dev/stdout") fails (ENXIO, even as root).
    The launcher sees it first and gives nginx a file in the run folder instead, saying so."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = {"FASTFIT_DEVICES": "cpu", "FASTFIT_FRONT_ACCESS_LOG": ""}
    planned = instances.plan_instances(env)
    temp_dir = nginx_front.prepare_temp_dirs(str(run_dir))
    ours, theirs = socket.socketpair()
    with ours, theirs:
        broken = _nginx_test(nginx_front.render_nginx_config(env, planned, str(run_dir), temp_dir), run_dir, theirs)
        assert broken.returncode != 0 and "/dev/stdout" in broken.stderr  # the failure is real
        code = ("import sys; from fastfit_service.nginx_front import front_access_log; "
                f"sys.stderr.write('CHOSEN=' + front_access_log({{}}, {str(run_dir)!r}))")
        chosen = subprocess.run([sys.executable, "-c", code], cwd=ROOT, stdout=theirs, stderr=subprocess.PIPE,
                                text=True, timeout=60)
    assert chosen.returncode == 0, chosen.stderr
    fallback = str(run_dir / "access.log")
    assert chosen.stderr.endswith(f"CHOSEN={fallback}")
    assert "nginx cannot write its access log to /dev/stdout" in chosen.stderr
    fixed = {**env, "FASTFIT_FRONT_ACCESS_LOG": fallback}
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ok = _nginx_test(nginx_front.render_nginx_config(fixed, planned, str(run_dir), temp_dir), run_dir, theirs)
    assert ok.returncode == 0, ok.stderr
    if temp_dir != str(run_dir):
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_an_unwritable_access_log_is_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FASTFIT_DEVICES", "cpu")
    monkeypatch.setenv("FASTFIT_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("FASTFIT_FRONT_ACCESS_LOG", str(tmp_path / "no" / "such" / "access.log"))
    assert launch.main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fastfit.launch: FASTFIT_FRONT_ACCESS_LOG={str(tmp_path / 'no' / 'such' / 'access.log')!r} "
                   "cannot be written: No such file or directory"]


@pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is not installed")
def test_nginx_refusing_its_configuration_is_one_clear_line(tmp_path, monkeypatch, capsys):
    """Not a CalledProcessError traceback: nginx's own first error line, before any instance starts."""
    monkeypatch.setenv("FASTFIT_LISTEN", "127.0.0.1:many")  # a valid setting, an address nginx refuses
    monkeypatch.setenv("FASTFIT_DEVICES", "cpu")
    monkeypatch.setenv("FASTFIT_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("FASTFIT_FRONT_ACCESS_LOG", str(tmp_path / "access.log"))
    code = launch.main([])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("fastfit.launch: nginx refused to start: ") and '"listen" directive' in err[0], err


def test_a_bad_setting_is_one_clear_line_before_anything_starts(tmp_path, monkeypatch, capsys):
    """A value the settings module refuses (fastfit_engine/settings.py) stops the launcher with its message."""
    monkeypatch.setenv("FASTFIT_FRONT_MAX_CONNECTIONS", "many")
    monkeypatch.setenv("FASTFIT_DEVICES", "cpu")
    monkeypatch.setenv("FASTFIT_RUN_DIR", str(tmp_path / "run"))
    code = launch.main([])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["fastfit.launch: FASTFIT_FRONT_MAX_CONNECTIONS must be a whole number >= 0, got 'many'"]


def test_all_devices_without_a_gpu_is_said_loudly(tmp_path, monkeypatch, capsys):
    """FASTFIT_DEVICES=all (the default) in a container without nvidia-smi: one CPU instance, and a
    WARNING at start naming the likely cause, before anything else can fail."""
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi here
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("FASTFIT_DEVICES", "all")
    monkeypatch.setenv("FASTFIT_NGINX", str(tmp_path / "nginx"))  # stop right after the plan
    monkeypatch.setenv("FASTFIT_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("FASTFIT_FRONT_ACCESS_LOG", str(tmp_path / "access.log"))
    assert launch.main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastfit.launch: WARNING: FASTFIT_DEVICES=all found no GPU (nvidia-smi is not installed")
    assert "running ONE instance on the CPU" in err and "nginx is not installed" in err
    for spec in ("cpu", "cpu,cpu"):  # asked for: no warning
        env = {"FASTFIT_DEVICES": spec, "PATH": str(tmp_path)}
        assert instances.no_gpu_warning(env, instances.plan_instances(env)) is None
    env = {"CUDA_VISIBLE_DEVICES": ""}
    assert "CUDA_VISIBLE_DEVICES=''" in instances.no_gpu_warning(env, instances.plan_instances(env))
