"""Closed-loop load against the front: CLIENTS callers each send upper+lower try-ons back to back
for DURATION seconds; prints throughput, p50/p99 latency and lost requests as one JSON line.

    # against a running stack (one GPU, then two: compare the throughput)
    python deploy/loadtest.py --url http://127.0.0.1:8000 --clients 8 --duration 120 --steps 30
    # start the stack itself (launcher with FASTFIT_DEVICES) and measure it
    python deploy/loadtest.py --start --devices 0 --models-dir Models --clients 6 --duration 120
    python deploy/loadtest.py --start --devices 0,1 --models-dir Models --clients 12 --duration 120
    # CPU smoke run on tiny synthetic models (writes them to a temporary folder)
    python deploy/loadtest.py --quick

A request is "lost" when it gets no HTTP answer, or an answer other than 200 or a 503 refusal
with Retry-After; a refused request is counted and retried after a short pause, like a client
following Retry-After would (throughput counts only 200s). With --kill-one-after S the script
SIGKILLs instance 0's gunicorn worker S seconds in (the "a worker killed on one GPU does not
disturb the other" check): the answers of the other instance must keep coming.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _image_bytes(kind: str, size: tuple[int, int]) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng({"person": 0, "upper": 1, "lower": 2}[kind])
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def build_request(steps: int, person_size: tuple[int, int]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, value in {"steps": steps, "seed": 1, "guidance_scale": 2.5}.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, size in (("person", person_size), ("upper", (768, 1024)), ("lower", (768, 1024))):
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.jpg"\r\n'
                  "Content-Type: image/jpeg\r\n\r\n".encode())
        out.write(_image_bytes(name, size))
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def run_load(url: str, clients: int, duration: float, body: bytes, ctype: str, timeout: float) -> dict:
    lock = threading.Lock()
    stats = {"ok": [], "refused": 0, "lost": [], "by_instance": {}}
    t_end = time.monotonic() + duration

    def caller() -> None:
        while time.monotonic() < t_end:
            req = urllib.request.Request(url + "/prompt", data=body, method="POST", headers={"Content-Type": ctype})
            t0 = time.monotonic()
            try:
                with urllib.request.urlopen(req, timeout=timeout) as r:
                    r.read()
                    with lock:
                        stats["ok"].append(time.monotonic() - t0)
                continue
            except urllib.error.HTTPError as e:
                e.read()
                if e.code == 503 and e.headers.get("Retry-After"):
                    with lock:
                        stats["refused"] += 1
                    time.sleep(0.2)
                    continue
                outcome = f"HTTP {e.code}"
            except (urllib.error.URLError, OSError) as e:
                outcome = type(e).__name__
            with lock:
                stats["lost"].append(outcome)

    t0 = time.monotonic()
    threads = [threading.Thread(target=caller, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    ok = stats["ok"]
    return {
        "clients": clients, "duration_s": round(wall, 1), "completed": len(ok),
        "throughput_rps": round(len(ok) / wall, 4),
        "p50_s": None if not ok else round(_percentile(ok, 0.50), 3),
        "p99_s": None if not ok else round(_percentile(ok, 0.99), 3),
        "refused_503": stats["refused"], "lost": len(stats["lost"]), "lost_kinds": sorted(set(stats["lost"])),
    }


def free_port_block(n: int) -> int:
    """The first of ``n`` consecutive free loopback ports, below the kernel's ephemeral range.

    A port the kernel hands out for binding to port 0 lies in the ephemeral range, which is also
    where every outgoing connection takes its local port: the front's own connections to the
    first instance once took the second instance's port before that one had bound it (a CI run,
    2026-12-01). Ports below the range are never taken that way.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    low = max(low, 10000 + n + 1)
    rng = random.SystemRandom()
    for _ in range(200):
        base = rng.randrange(10000, low - n)
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + n):
                socks.append(socket.socket())
                socks[-1].bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no {n} consecutive free loopback ports below {low}")


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def kill_instance_worker(launcher_pid: int, instance: int) -> int | None:
    for pid in _children(launcher_pid):
        try:
            if f"FASTFIT_INSTANCE={instance}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                workers = _children(pid)
                if workers:
                    os.kill(workers[0], signal.SIGKILL)
                    return workers[0]
        except OSError:
            continue
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--duration", type=float, default=120.0)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--start", action="store_true", help="start the launcher (nginx + one gunicorn per device)")
    ap.add_argument("--devices", default=None, help="FASTFIT_DEVICES for --start")
    ap.add_argument("--models-dir", default=None)
    ap.add_argument("--kill-one-after", type=float, default=None, help="SIGKILL instance 0's worker after S seconds")
    ap.add_argument("--quick", action="store_true", help="CPU smoke run: tiny synthetic models, 2 CPU instances")
    args = ap.parse_args(argv)

    env = dict(os.environ)
    person_size = (768, 1024)
    if args.quick:
        tmp = Path(tempfile.mkdtemp(prefix="fastfit-loadtest-"))
        models = tmp / "Models"
        subprocess.run([sys.executable, "-m", "fastfit_engine.synthetic", str(models), "--tiny"], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
        args.start, args.models_dir = True, str(models)
        args.devices = args.devices or "cpu,cpu"
        args.clients, args.duration, args.steps, person_size = min(args.clients, 3), min(args.duration, 30), 1, (300, 400)
        env.update({"FASTFIT_RESOLUTION": "128x192", "FASTFIT_WARMUP": "0", "HF_HUB_OFFLINE": "1"})
    launcher = None
    if args.start:
        devices = args.devices or env.get("FASTFIT_DEVICES")
        port = free_port_block(1 + (len(devices.split(",")) if devices else 8))  # the front, then the instances
        args.url = f"http://127.0.0.1:{port}"
        env.update({"FASTFIT_LISTEN": f"127.0.0.1:{port}", "FASTFIT_BACKEND_PORT_BASE": str(port + 1),
                    "FASTFIT_FRONT_ACCESS_LOG": "/dev/null", "GUNICORN_ACCESSLOG": "/dev/null"})
        if args.devices is not None:
            env["FASTFIT_DEVICES"] = args.devices
        if args.models_dir:
            env["FASTFIT_MODELS_DIR"] = args.models_dir
        launcher = subprocess.Popen([sys.executable, "-m", "fastfit_service.launch"], cwd=ROOT, env=env)
    try:
        if launcher is not None:
            check_env = {**env}
            deadline = time.monotonic() + 1800
            while subprocess.run([sys.executable, "-m", "fastfit_service.launch", "--check"], cwd=ROOT, env=check_env,
                                 capture_output=True).returncode != 0:
                if launcher.poll() is not None or time.monotonic() > deadline:
                    print(json.dumps({"error": "the stack did not become ready"}))
                    return 1
                time.sleep(2)
        body, ctype = build_request(args.steps, person_size)
        killer = None
        if args.kill_one_after is not None and launcher is not None:
            killer = threading.Timer(args.kill_one_after, kill_instance_worker, (launcher.pid, 0))
            killer.start()
        result = run_load(args.url, args.clients, args.duration, body, ctype, args.timeout)
        result.update({"steps": args.steps, "devices": env.get("FASTFIT_DEVICES"), "killed_worker_after_s": args.kill_one_after})
        print(json.dumps(result))
        return 0 if result["lost"] == 0 and result["completed"] > 0 else 1
    finally:
        if launcher is not None:
            launcher.send_signal(signal.SIGTERM)
            try:
                launcher.wait(120)
            except subprocess.TimeoutExpired:
                launcher.kill()


if __name__ == "__main__":
    sys.exit(main())
