"""Production launcher: nginx in front of one gunicorn instance per device.

    python -m fastfit_service.launch                       # what the Docker image runs
    python -m fastfit_service.launch --print-nginx-config  # the rendered reference front
    python -m fastfit_service.launch --check               # HEALTHCHECK: every instance ready?

Each device (`FASTFIT_DEVICES`; instances.py plans them) gets its own gunicorn (one worker: its
own warm engine, GPU lock and bounded queue) on a loopback port, pinned to that one GPU.
nginx (nginx_front.py renders deploy/nginx/fastfit.conf.template) buffers requests and sends
`/prompt` to the instance with the fewest open requests, never more than one instance accepts
(`max_conns`).

Supervision, deliberately thin: gunicorn's master already restarts a worker that dies (a worker
killed on one GPU is replaced by its own master; the other instances never notice, and nginx
sends that GPU's share to the others while it reloads, since it answers 503 `loading`). If a whole
instance or nginx exits (gunicorn gives up when a worker cannot boot, e.g. the model does not
load), this launcher stops the rest and exits non-zero, so the container runtime or the kubelet
restarts the container with its back-off, instead of a second supervisor (supervisord) hiding a
broken GPU behind endless restarts. SIGTERM drains: nginx stops accepting (new connections are
refused at once) and finishes what it has, gunicorn finishes its running request.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from fastfit_engine.settings import SettingError, read
from fastfit_service.instances import Instance, LaunchError, instance_env, no_gpu_warning, plan_instances
from fastfit_service.nginx_front import (
    front_access_log,
    front_listen,
    nginx_binary,
    prepare_temp_dirs,
    render_nginx_config,
)

ROOT = Path(__file__).resolve().parents[1]


def check(env: dict[str, str], timeout: float = 4.0) -> int:
    """HEALTHCHECK: 0 when every instance answers /ready through the front, else 1."""
    host_port = front_listen(env).rsplit(":", 1)
    port = host_port[-1]
    failed = []
    for inst in plan_instances(env):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/instances/{inst.index}/ready", timeout=timeout) as r:
                ok = r.status == 200
        except (urllib.error.URLError, OSError):
            ok = False
        if not ok:
            failed.append(str(inst.index))
    if failed:
        print(f"not ready: instance(s) {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def run(env: dict[str, str]) -> int:
    instances = plan_instances(env)
    warning = no_gpu_warning(env, instances)
    if warning is not None:
        print(f"fastfit.launch: {warning}", file=sys.stderr, flush=True)
    run_dir = read("FASTFIT_RUN_DIR", env) or tempfile.mkdtemp(prefix="fastfit-front-")
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    env = {**env, "FASTFIT_FRONT_ACCESS_LOG": front_access_log(env, run_dir)}
    conf = Path(run_dir) / "nginx.conf"
    temp_dir = prepare_temp_dirs(run_dir)
    try:
        conf.write_text(render_nginx_config(env, instances, run_dir, temp_dir))
        return _run_stack(env, instances, run_dir, conf)
    finally:
        if temp_dir != run_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)


def _run_stack(env: dict[str, str], instances: list[Instance], run_dir: str, conf: Path) -> int:
    nginx = nginx_binary(env)
    test = subprocess.run([nginx, "-t", "-q", "-e", "stderr", "-p", run_dir, "-c", str(conf)],
                          capture_output=True, text=True)
    if test.returncode != 0:
        lines = (test.stderr or test.stdout).strip().splitlines()
        raise LaunchError(f"nginx refused to start: {lines[0] if lines else f'exit code {test.returncode}'}")

    gunicorn_cmd = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "server:app"]
    procs: dict[str, subprocess.Popen] = {}
    for inst in instances:
        print(f"fastfit.launch: instance {inst.index} on {'CPU' if inst.device == 'cpu' else 'GPU ' + inst.device}"
              f" at {inst.address}", file=sys.stderr, flush=True)
        procs[f"instance {inst.index}"] = subprocess.Popen(gunicorn_cmd, cwd=ROOT, env=instance_env(env, inst))
    procs["nginx"] = subprocess.Popen([nginx, "-e", "stderr", "-p", run_dir, "-c", str(conf)])
    print(f"fastfit.launch: front listening on {front_listen(env)}", file=sys.stderr, flush=True)

    stopping = {"signal": None}

    def on_signal(signum: int, frame: object) -> None:  # noqa: ARG001 - signal handler signature
        stopping["signal"] = signum

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    exit_code = 0
    while stopping["signal"] is None:
        dead = [(name, p.returncode) for name, p in procs.items() if p.poll() is not None]
        if dead:
            for name, code in dead:
                print(f"fastfit.launch: {name} exited with code {code}; stopping the others", file=sys.stderr, flush=True)
            exit_code = 1
            break
        time.sleep(0.5)

    # Drain: nginx stops accepting and finishes what it has; gunicorn finishes its running request.
    for name, p in procs.items():
        if p.poll() is None:
            p.send_signal(signal.SIGQUIT if name == "nginx" else signal.SIGTERM)
    deadline = time.monotonic() + read("GUNICORN_GRACEFUL_TIMEOUT", env) + 10
    for p in procs.values():
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return exit_code


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="nginx in front of one gunicorn instance per device")
    ap.add_argument("--print-nginx-config", action="store_true", help="print the rendered nginx.conf and exit")
    ap.add_argument("--check", action="store_true", help="exit 0 when every instance is ready (HEALTHCHECK)")
    args = ap.parse_args(argv)
    env = dict(os.environ)
    try:
        if args.print_nginx_config:
            instances = plan_instances(env)
            print(render_nginx_config(env, instances, read("FASTFIT_RUN_DIR", env) or "/tmp/fastfit-front"), end="")
            return 0
        if args.check:
            return check(env)
        return run(env)
    except (LaunchError, SettingError) as exc:  # one line: what to fix
        print(f"fastfit.launch: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
