"""Start the real production stack (nginx + gunicorn through `python -m fastfit_service.launch`)
on the tiny synthetic models, on loopback ports, with short client timeouts."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_spec = importlib.util.spec_from_file_location("fastfit_slow_clients", ROOT / "deploy" / "slow_clients.py")
slow_clients = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(slow_clients)
_spec = importlib.util.spec_from_file_location("fastfit_loadtest", ROOT / "deploy" / "loadtest.py")
loadtest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(loadtest)


def require_nginx() -> None:
    """nginx is installed by .ci/run; in CI its absence is a failure, elsewhere a skip."""
    if shutil.which("nginx") or Path("/usr/sbin/nginx").exists():
        return
    if os.environ.get("CI") == "true":
        pytest.fail("nginx is not installed (.ci/run installs it)")
    pytest.skip("nginx is not installed (apt-get install nginx)")


def get(url: str, timeout: float = 5.0) -> tuple[int | None, bytes, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)
    except (urllib.error.URLError, OSError):
        return None, b"", {}


class Stack:
    """The launcher process, its front URL, its instances' direct URLs and its log files."""

    def __init__(self, tmp: Path, models_dir: Path, devices: str, extra_env: dict[str, str] | None = None):
        require_nginx()
        n = len(devices.split(","))
        front = loadtest.free_port_block(1 + n)  # the front, then the instances
        base = front + 1
        self.front = f"http://127.0.0.1:{front}"
        self.instances = [f"http://127.0.0.1:{base + i}" for i in range(n)]
        self.access_log = tmp / "front-access.log"
        self.log_path = tmp / "launch.log"
        self.env = {
            **os.environ,
            "FASTFIT_DEVICES": devices,
            "FASTFIT_LISTEN": f"127.0.0.1:{front}",
            "FASTFIT_BACKEND_PORT_BASE": str(base),
            "FASTFIT_RUN_DIR": str(tmp / "run"),
            "FASTFIT_FRONT_ACCESS_LOG": str(self.access_log),
            "FASTFIT_MODELS_DIR": str(models_dir),
            "FASTFIT_RESOLUTION": "128x192",
            "HF_HUB_OFFLINE": "1",
            "FASTFIT_WARMUP": "0",
            "GUNICORN_ACCESSLOG": "-",
            **(extra_env or {}),
        }
        self.log = open(self.log_path, "w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "fastfit_service.launch"], cwd=ROOT, env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def wait(self, path: str, status: int, timeout: float, base: str | None = None) -> None:
        deadline = time.time() + timeout
        for url in ([base] if base else [self.front] + self.instances):
            while True:
                assert self.proc.poll() is None, f"launcher exited early:\n{self.output()}"
                if get(url + path, timeout=2)[0] == status:
                    break
                assert time.time() < deadline, f"{url}{path} did not answer {status} in time:\n{self.output()}"
                time.sleep(0.2)

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()

    def access_entries(self) -> list[dict]:
        if not self.access_log.exists():
            return []
        return [json.loads(line) for line in self.access_log.read_text().splitlines() if line.strip()]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode
