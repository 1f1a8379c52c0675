"""Production launcher: nginx in front of one gunicorn instance per device.

    python -m fastfit_service.launch                       # what the Docker image runs
    python -m fastfit_service.launch --print-nginx-config  # the rendered reference front
    python -m fastfit_service.launch --check               # HEALTHCHECK: every instance ready?

`FASTFIT_DEVICES` picks the devices: unset or `all` is every visible GPU (`CUDA_VISIBLE_DEVICES`
if set, else `nvidia-smi`), or the CPU when there is none; `0,1` are GPU indices (or UUIDs);
`cpu` or `cpu,cpu` run CPU instances (tests use them as fake devices). Each device gets its own
gunicorn (one worker: its own warm engine, GPU lock and bounded queue) on a loopback port, started
with `CUDA_VISIBLE_DEVICES` set to that one GPU, so CUDA in that process only ever sees its GPU.
nginx (deploy/nginx/fastfit.conf.template) buffers requests and sends `/prompt` to the instance
with the fewest open requests, never more than one instance accepts (`max_conns`).

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
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from fastfit_engine.errors import transport_errors
from fastfit_engine.settings import SETTINGS_BY_NAME, SettingError, is_set, read

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "deploy" / "nginx" / "fastfit.conf.template"


class LaunchError(Exception):
    pass


def _ms(env: dict[str, str], name: str) -> str:
    """Seconds from the environment (fractions allowed) as an nginx time in milliseconds."""
    return f"{round(read(name, env) * 1000)}ms"


def visible_gpus(env: dict[str, str]) -> list[str]:
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES when set, else what nvidia-smi lists."""
    if "CUDA_VISIBLE_DEVICES" in env:  # CUDA's own variable: set but empty means no GPU
        return [d.strip() for d in env["CUDA_VISIBLE_DEVICES"].split(",") if d.strip() and d.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def parse_devices(spec: str | None, visible: list[str]) -> list[str]:
    """FASTFIT_DEVICES -> one entry per instance: a GPU id as CUDA_VISIBLE_DEVICES names it, or 'cpu'."""
    spec = (spec or "").strip()
    if spec in ("", "all"):
        return list(visible) or ["cpu"]
    devices = [d.strip() for d in spec.split(",")]
    if any(not d for d in devices):
        raise LaunchError(f"FASTFIT_DEVICES={spec!r}: an empty entry (write e.g. '0,1', 'all' or 'cpu')")
    gpus = [d for d in devices if d != "cpu"]
    if len(set(gpus)) != len(gpus):
        raise LaunchError(f"FASTFIT_DEVICES={spec!r}: a GPU is listed twice (one engine per GPU)")
    for d in gpus:
        if d.startswith("cuda"):
            raise LaunchError(f"FASTFIT_DEVICES={spec!r}: name GPUs by index or UUID, e.g. '0,1', not {d!r}")
        if visible and d not in visible:
            raise LaunchError(f"FASTFIT_DEVICES={spec!r}: GPU {d!r} is not visible (visible: {','.join(visible)})")
    return devices


@dataclass
class Instance:
    index: int
    device: str  # GPU id or "cpu"
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def no_gpu_warning(env: dict[str, str], instances: list[Instance]) -> str | None:
    """The loud start-up line when `all` GPUs (the default) came to none and the stack falls back to
    one CPU instance (minutes a request): usually a container started without its GPUs."""
    spec = read("FASTFIT_DEVICES", env) or ""
    if spec not in ("", "all") or [i.device for i in instances] != ["cpu"]:
        return None
    if "CUDA_VISIBLE_DEVICES" in env:
        why = f"CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']!r} names none"
    elif shutil.which("nvidia-smi") is None:
        why = "nvidia-smi is not installed here (a container started without --gpus / the NVIDIA runtime?)"
    else:
        why = "nvidia-smi lists none"
    return (f"WARNING: FASTFIT_DEVICES={spec or 'all'} found no GPU ({why}): running ONE instance on the CPU, "
            "minutes a request; give the container its GPUs (docker run --gpus all, the NVIDIA Container "
            "Toolkit) or set FASTFIT_DEVICES=cpu to mean it")


DEFAULT_ACCESS_LOG: str = SETTINGS_BY_NAME["FASTFIT_FRONT_ACCESS_LOG"].default


def front_access_log(env: dict[str, str], run_dir: str) -> str:
    """Where nginx writes its access log: FASTFIT_FRONT_ACCESS_LOG (must be writable), else stdout.
    nginx opens stdout by its path, which fails where this process's stdout is a socket (systemd's
    journal) or a file of another user: then a file in the run folder, said on stderr."""
    wanted = read("FASTFIT_FRONT_ACCESS_LOG", env) if is_set("FASTFIT_FRONT_ACCESS_LOG", env) else ""
    target = wanted or DEFAULT_ACCESS_LOG
    try:
        with open(target, "a"):
            pass
    except OSError as exc:
        if wanted:
            raise LaunchError(f"FASTFIT_FRONT_ACCESS_LOG={wanted!r} cannot be written: {exc.strerror or exc}") from None
        fallback = str(Path(run_dir) / "access.log")
        print(f"fastfit.launch: nginx cannot write its access log to {target} ({exc.strerror or exc}); writing it "
              f"to {fallback} instead (FASTFIT_FRONT_ACCESS_LOG chooses another file)", file=sys.stderr, flush=True)
        return fallback
    return target


def plan_instances(env: dict[str, str]) -> list[Instance]:
    devices = parse_devices(read("FASTFIT_DEVICES", env), visible_gpus(env))
    base = read("FASTFIT_BACKEND_PORT_BASE", env)
    return [Instance(i, d, base + i) for i, d in enumerate(devices)]


def instance_env(env: dict[str, str], inst: Instance) -> dict[str, str]:
    """The environment of one gunicorn instance: pinned to its device before anything imports torch."""
    out = dict(env)
    out["GUNICORN_BIND"] = inst.address  # loopback only: clients reach it through the front
    out["FASTFIT_INSTANCE"] = str(inst.index)
    if inst.device == "cpu":
        out["CUDA_VISIBLE_DEVICES"] = ""
        out["FASTFIT_DEVICE"] = "cpu"
    else:
        out["CUDA_VISIBLE_DEVICES"] = inst.device
        out["FASTFIT_DEVICE"] = "cuda:0"  # the one GPU this process sees
    out.pop("PORT", None)
    return out


def front_listen(env: dict[str, str]) -> str:
    return read("FASTFIT_LISTEN", env) or f"0.0.0.0:{read('PORT', env)}"


def nginx_error_locations(max_body_mb: str, retry_after: str) -> str:
    """The front's own error answers, one location per status, from the error catalogue (the
    API's JSON shape; Retry-After where the catalogue says so; an add_header in a location
    replaces the inherited ones, so nosniff is repeated there)."""
    lines = []
    for status, c in sorted(transport_errors("nginx").items()):
        body = json.dumps({"error": {"code": c.code, "message": c.message.format(max_body_mb=max_body_mb)}})
        headers = (f"add_header Retry-After {retry_after} always; add_header X-Content-Type-Options nosniff always; "
                   if c.retry_after else "")
        lines.append(f"            location = /_fastfit_error/{status} {{ {headers}return {status} '{body}\\n'; }}\n")
    return "".join(lines)


def render_nginx_config(env: dict[str, str], instances: list[Instance], run_dir: str,
                        temp_dir: str | None = None) -> str:
    queue = read("FASTFIT_QUEUE_SIZE", env)
    per_ip = read("FASTFIT_FRONT_CONN_PER_IP", env)
    conn_limit = ""
    if per_ip > 0:
        conn_limit = ("    limit_conn_zone $binary_remote_addr zone=fastfit_per_ip:10m;\n"
                      f"    limit_conn fastfit_per_ip {per_ip};\n    limit_conn_status 429;\n")
    max_upload = read("FASTFIT_MAX_UPLOAD_MB", env)
    max_body_mb = str(int(max_upload) + (1 if max_upload % 1 else 0))
    values = {
        "run_dir": run_dir,
        "temp_dir": temp_dir or run_dir,
        "user": nginx_user_line(),
        "worker_connections": str(read("FASTFIT_FRONT_MAX_CONNECTIONS", env)),
        "access_log": read("FASTFIT_FRONT_ACCESS_LOG", env),
        "client_header_timeout": _ms(env, "FASTFIT_FRONT_HEADER_TIMEOUT"),
        "client_body_timeout": _ms(env, "FASTFIT_FRONT_BODY_TIMEOUT"),
        "send_timeout": _ms(env, "FASTFIT_FRONT_SEND_TIMEOUT"),
        # nginx refuses a body above this itself; the app's own limit (same number) stays exact
        "max_body_mb": max_body_mb,
        "conn_limit": conn_limit,
        "prompt_servers": "\n".join(f"        server {i.address} max_conns={1 + queue};" for i in instances),
        "any_servers": "\n".join(f"        server {i.address};" for i in instances),
        "listen": front_listen(env),
        "upstream_read_timeout": _ms(env, "FASTFIT_FRONT_UPSTREAM_TIMEOUT"),
        "next_upstream_tries": str(len(instances)),
        "retry_after": str(read("FASTFIT_RETRY_AFTER", env)),
        "error_locations": nginx_error_locations(max_body_mb, str(read("FASTFIT_RETRY_AFTER", env))),
        "instance_locations": "".join(
            f"        location = /instances/{i.index}/{ep} {{ proxy_pass http://{i.address}/{ep}; }}\n"
            for i in instances for ep in ("health", "ready", "metrics")),
    }
    text = TEMPLATE.read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    if "{{" in text:
        raise LaunchError("nginx template has an unknown placeholder: " + text.split("{{", 1)[1].split("}}")[0])
    return text


TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def nginx_user_line() -> str:
    """As root (CI, a root container) nginx's workers would drop to a user that cannot write the
    run folder: name an unprivileged user explicitly (prepare_temp_dirs hands it the temp folders).
    As any other user (the image runs as uid 1000) nginx cannot switch users and needs no line."""
    if os.geteuid() != 0:
        return ""
    import grp
    import pwd

    user = pwd.getpwnam("nobody")
    return f"user {user.pw_name} {grp.getgrgid(user.pw_gid).gr_name};"


def prepare_temp_dirs(run_dir: str) -> str:
    """nginx's temp folders (request bodies over 1 MB are buffered there), writable by its workers;
    returns their parent. As root they live in a fresh folder under the system temp directory that
    the unprivileged worker user can reach (the run folder's parents may be private)."""
    base = Path(run_dir)
    owner = None
    if os.geteuid() == 0:
        import pwd

        base = Path(tempfile.mkdtemp(prefix="fastfit-nginx-temp-"))
        base.chmod(0o711)
        user = pwd.getpwnam("nobody")
        owner = (user.pw_uid, user.pw_gid)
    for name in TEMP_DIRS:
        path = base / name
        path.mkdir(parents=True, exist_ok=True)
        if owner is not None:
            os.chown(path, *owner)
    return str(base)


def nginx_binary(env: dict[str, str]) -> str:
    path = read("FASTFIT_NGINX", env) or shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(path).exists() and shutil.which(path) is None:
        raise LaunchError("nginx is not installed (apt-get install nginx), or set FASTFIT_NGINX")
    return path


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
