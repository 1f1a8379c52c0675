"""Closed-loop load like a shop's: CLIENTS callers each send upper+lower try-ons back to back for
DURATION seconds, every request with its own images unless a share of persons or garments is
asked to repeat; prints one JSON line with images per hour, p50/p95/p99 latency, lost requests,
the service's own stage timings and, where NVML is present (the `nvidia-ml-py` package), how
busy the GPU was over the run.

    # against a running service: cold traffic, then half the persons repeated
    python deploy/loadtest.py --url http://127.0.0.1:8000 --clients 4 --duration 180 --steps 30
    python deploy/loadtest.py --url http://127.0.0.1:8000 --clients 4 --duration 180 --repeat-person 0.5
    # start the stack itself (launcher with FASTFIT_DEVICES) and measure it
    python deploy/loadtest.py --start --devices 0 --models-dir Models --clients 6 --duration 120
    python deploy/loadtest.py --start --devices 0,1 --models-dir Models --clients 12 --duration 120
    # CPU smoke run on tiny synthetic models (writes them to a temporary folder)
    python deploy/loadtest.py --quick

Traffic (deploy/load_traffic.py). Request i of the run gets a new person photo and new garments
(distinct bytes, so every cache misses: "cold"), except that with probability --repeat-person it
reuses one of the persons already sent (and likewise --repeat-garments for the garment pair). The
draws come from --mix-seed, so two runs with the same options send the same sequence.

Counting. A request is "lost" when it gets no HTTP answer, or an answer other than 200 or a
503/429 refusal with Retry-After; a refused request is counted and sent again after the
Retry-After it was given (capped at 2 s), as a client following Retry-After would. Images per
hour count 200s only; `--digests FILE` keeps each answer's image SHA-256 under the request's
name, so two runs (say, FASTFIT_OVERLAP on and off) can be compared image by image. `--single N` first sends N requests one at a time (no load) and reports
their median latency, the figure the p99 under load is compared with. From each answer's
Server-Timing the tool keeps the engine's stages; `gpu_work_s` is a request's engine time less
the time it waited for the CPU pose ("pose_wait"), and `gpu_bound_images_per_hour` the rate if
the GPU did nothing but that work back to back (an estimate; `gpu_busy_fraction` from NVML is
the measurement). With --kill-one-after S the script SIGKILLs instance 0's gunicorn worker S
seconds in (the "a worker killed on one GPU does not disturb the other" check).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the tool's own modules (deploy/) and the client whose request body and Server-Timing reader it shares (the root)
for _path in (str(ROOT / "deploy"), str(ROOT)):
    if _path not in sys.path:
        sys.path.append(_path)

from fastfit_client import parse_server_timing as client_server_timing  # noqa: E402
from gpu_sampler import GpuSampler  # noqa: E402
from load_traffic import Traffic, build_request, image_bytes  # noqa: E402,F401 (tests and load_runs use them from here)


def parse_server_timing(value: str | None) -> dict[str, float]:
    """`name;dur=12.5, ...` (milliseconds) as seconds per stage."""
    return {name: ms / 1000.0 for name, ms in client_server_timing(value or "").items()}


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def post(url: str, body: bytes, ctype: str, timeout: float) -> tuple[int | None, dict, str | None, str | None]:
    """One POST /prompt: (status or None, headers, error kind for an answerless failure, SHA-256
    of a 200's image)."""
    req = urllib.request.Request(url + "/prompt", data=body, method="POST", headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            digest = hashlib.sha256(r.read()).hexdigest()
            return r.status, dict(r.headers), None, digest
    except urllib.error.HTTPError as e:
        e.read()
        return e.code, dict(e.headers), None, None
    except (urllib.error.URLError, OSError) as e:
        return None, {}, type(e).__name__, None


def _retry_after(headers: dict) -> float | None:
    try:
        return min(2.0, max(0.0, float(headers.get("Retry-After", ""))))
    except ValueError:
        return None


def run_single(url: str, n: int, traffic: Traffic, timeout: float) -> list[float]:
    """N requests one at a time: each one's latency (s), without load beside it."""
    out = []
    for _ in range(n):
        body, ctype, _, _ = traffic.body()
        t0 = time.monotonic()
        status, _, _, _ = post(url, body, ctype, timeout)
        if status == 200:
            out.append(time.monotonic() - t0)
    return out


def run_load(url: str, clients: int, duration: float, traffic: Traffic, timeout: float,
             digests: dict[str, str] | None = None) -> dict:
    """The closed loop; ``digests`` (if given) gets each answered request's name -> its image's SHA-256."""
    lock = threading.Lock()
    ok: list[float] = []
    stages: list[dict[str, float]] = []
    stats = {"refused": 0, "lost": [], "repeat_person": 0}
    t_end = time.monotonic() + duration

    def caller() -> None:
        body = None
        while time.monotonic() < t_end:
            if body is None:  # a refused request is sent again as it was
                body, ctype, repeated, name = traffic.body()
            t0 = time.monotonic()
            status, headers, failure, digest = post(url, body, ctype, timeout)
            if status == 200:
                with lock:
                    ok.append(time.monotonic() - t0)
                    if digests is not None:
                        digests[name] = digest
                    stages.append(parse_server_timing(headers.get("Server-Timing")))
                    stats["repeat_person"] += repeated
                body = None
                continue
            wait = _retry_after(headers) if status in (429, 503) else None
            if wait is not None:
                with lock:
                    stats["refused"] += 1
                time.sleep(max(wait, 0.05))
                continue
            with lock:
                stats["lost"].append(failure or f"HTTP {status}")
            body = None

    t0 = time.monotonic()
    threads = [threading.Thread(target=caller, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    gpu_work = [s["total"] - s.get("pose_wait", 0.0) for s in stages if "total" in s]
    stage_names = sorted({name for s in stages for name in s})
    median_gpu_work = statistics.median(gpu_work) if gpu_work else None
    return {
        "clients": clients, "duration_s": round(wall, 1), "completed": len(ok),
        "images_per_hour": round(len(ok) / wall * 3600, 1), "throughput_rps": round(len(ok) / wall, 4),
        "p50_s": _rounded(_percentile(ok, 0.50)), "p95_s": _rounded(_percentile(ok, 0.95)),
        "p99_s": _rounded(_percentile(ok, 0.99)),
        "refused": stats["refused"], "lost": len(stats["lost"]), "lost_kinds": sorted(set(stats["lost"])),
        "repeated_person_share": round(stats["repeat_person"] / len(ok), 3) if ok else None,
        "stage_median_s": {n: _rounded(statistics.median([s[n] for s in stages if n in s])) for n in stage_names},
        "gpu_work_median_s": _rounded(median_gpu_work),
        "gpu_bound_images_per_hour": round(3600 / median_gpu_work, 1) if median_gpu_work else None,
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


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


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("a share is between 0 and 1")
    return value


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
    ap.add_argument("--repeat-person", type=_share, default=0.0, help="share of requests reusing a person already sent")
    ap.add_argument("--repeat-garments", type=_share, default=0.0, help="share reusing a garment pair already sent")
    ap.add_argument("--mix-seed", type=int, default=0, help="seed of the repeat draws (same seed, same traffic)")
    ap.add_argument("--first-index", type=int, default=0,
                    help="number the requests from here (a run against a warm server then sends images it never saw)")
    ap.add_argument("--single", type=int, default=0, help="first send N requests one at a time (latency without load)")
    ap.add_argument("--gpu-index", type=int, default=0, help="NVML index of the GPU whose busy fraction is sampled")
    ap.add_argument("--digests", default=None,
                    help="write each answered request's name and image SHA-256 to this JSON file (compare two runs)")
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
        traffic = Traffic(args.steps, person_size, args.repeat_person, args.repeat_garments, args.mix_seed,
                          args.first_index)
        single = run_single(args.url, args.single, traffic, args.timeout) if args.single else []
        killer = None
        if args.kill_one_after is not None and launcher is not None:
            killer = threading.Timer(args.kill_one_after, kill_instance_worker, (launcher.pid, 0))
            killer.start()
        digests: dict[str, str] | None = {} if args.digests else None
        with GpuSampler(args.gpu_index) as gpu:
            result = run_load(args.url, args.clients, args.duration, traffic, args.timeout, digests)
        result.update(gpu.report())
        if args.digests:
            Path(args.digests).write_text(json.dumps(digests, sort_keys=True))
        single_median = statistics.median(single) if single else None
        result.update({
            "steps": args.steps, "devices": env.get("FASTFIT_DEVICES"), "killed_worker_after_s": args.kill_one_after,
            "repeat_person": args.repeat_person, "repeat_garments": args.repeat_garments,
            "single_median_s": _rounded(single_median),
            "p99_over_single": round(result["p99_s"] / single_median, 3) if single_median and result["p99_s"] else None,
        })
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
