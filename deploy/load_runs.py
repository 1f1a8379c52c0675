"""The overlap's load runs on one GPU host, back to back, as one JSON report.

Bare gunicorn (`gunicorn.conf.py`, one worker) is started with FASTFIT_OVERLAP=0 and measured by
deploy/loadtest.py (CLIENTS closed-loop clients, cold upper+lower, 768x1024 on CUDA, STEPS
steps, DURATION seconds, `--single` first), stopped, started again with FASTFIT_OVERLAP=1 and
measured the same way; the two runs send the same requests (same names, same bytes), so their
images are compared by name (`identical_images`: the overlap changes no pixel). Then, against
the overlap-on server, a run with `--repeat-person` of new requests (numbered from 100000, so
no person of the cold runs is in the person cache). Each run's JSON is loadtest's, plus the
number of torch.compile recompilations the server logged during it (TORCH_LOGS=recompiles).

The server warms up the upper+lower layout only (`upper_lower_app()`, the app `server:app`
builds, whose engine's warm-up is limited to the one layout the runs send), so a start takes
the load and one compiled layout; the compile cache is the engine's default, on the models
volume, so the second start loads what the first compiled.

    python deploy/load_runs.py --models-dir Models                    # off, on, repeat: about 12 min on an H200
    python deploy/load_runs.py --models-dir Models --runs off,on      # the overlap's gain only
    python deploy/load_runs.py --quick                                # CPU smoke run on tiny synthetic models
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("fastfit_loadtest", ROOT / "deploy" / "loadtest.py")
loadtest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(loadtest)

REPEAT_FIRST_INDEX = 100_000


def upper_lower_app() -> Any:
    """The service app with the default engine, warmed up on the upper+lower layout only
    (gunicorn: ``'load_runs:upper_lower_app()'`` with deploy/ on PYTHONPATH)."""
    from fastfit_engine.runtime.engine import FastFitEngine
    from fastfit_service.app import create_app
    from fastfit_service.config import default_config, engine_settings

    config = default_config()

    def build() -> FastFitEngine:
        engine = FastFitEngine.from_models_dir(**engine_settings(config).engine_kwargs(),
                                               max_pixels=config["MAX_IMAGE_PIXELS"])
        engine.warmup([("upper", "lower")])
        return engine

    return create_app(config={"ENGINE_FACTORY": build})


class Server:
    """One bare gunicorn with the given environment, its log in ``log``."""

    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self._out = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "load_runs:upper_lower_app()"],
            cwd=ROOT, env={**env, "GUNICORN_BIND": f"127.0.0.1:{port}"}, stdout=self._out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float) -> float:
        """Seconds until /ready answered 200; an error if the server ended or the time ran out."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server ended (exit {self.proc.returncode}); see {self.log}")
            try:
                with urllib.request.urlopen(self.url + "/ready", timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - t0
            except OSError:
                pass
            time.sleep(1.0)
        raise RuntimeError(f"the server was not ready within {timeout:g} s; see {self.log}")

    def recompiles(self) -> int:
        """Recompilations dynamo has logged so far."""
        return self.log.read_text(errors="replace").count("Recompiling function")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._out.close()


def measure(server: Server, args: argparse.Namespace, traffic: Any, name: str, single: int,
            digests: dict[str, str] | None = None) -> dict:
    """One loadtest run against ``server`` with loadtest's own functions: its JSON plus context."""
    before = server.recompiles()
    single_s = loadtest.run_single(server.url, single, traffic, args.timeout) if single else []
    with loadtest.GpuSampler(0) as gpu:
        result = loadtest.run_load(server.url, args.clients, args.duration, traffic, args.timeout, digests)
    result.update(gpu.report())
    median = statistics.median(single_s) if single_s else None
    result.update({
        "run": name, "steps": args.steps, "single_latencies_s": [round(s, 4) for s in single_s],
        "single_median_s": None if median is None else round(median, 4),
        "p99_over_single": round(result["p99_s"] / median, 3) if median and result["p99_s"] else None,
        "recompiles_during_run": server.recompiles() - before,
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    })
    return result


def compare(a: dict[str, str], b: dict[str, str]) -> dict:
    """How many requests both runs answered, and how many of those got the very same image."""
    common = sorted(set(a) & set(b))
    return {"common_requests": len(common), "identical_images": sum(a[k] == b[k] for k in common)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models-dir", default=None)
    ap.add_argument("--runs", default="off,on,repeat", help="which runs, in order: off, on, repeat")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--duration", type=float, default=180.0)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--single", type=int, default=3, help="requests one at a time before each run")
    ap.add_argument("--repeat-person", type=float, default=0.5)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--ready-timeout", type=float, default=900.0)
    ap.add_argument("--queue-size", type=int, default=None, help="FASTFIT_QUEUE_SIZE (default: clients - 1)")
    ap.add_argument("--log-dir", type=Path, default=None, help="server logs (default: a temporary folder)")
    ap.add_argument("--quick", action="store_true", help="CPU smoke run: tiny synthetic models, off and on, 1 step")
    args = ap.parse_args(argv)
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    if unknown := set(runs) - {"off", "on", "repeat"}:
        ap.error(f"unknown runs: {', '.join(sorted(unknown))}")
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="fastfit-load-runs-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "deploy"), str(ROOT),
                                                                      os.environ.get("PYTHONPATH")])),
           "FASTFIT_QUEUE_SIZE": str(args.queue_size if args.queue_size is not None else max(0, args.clients - 1)),
           "GUNICORN_ACCESSLOG": "/dev/null", "TORCH_LOGS": "recompiles", "PYTHONUNBUFFERED": "1"}
    person_size = (768, 1024)
    if args.quick:
        models = log_dir / "Models"
        subprocess.run([sys.executable, "-m", "fastfit_engine.synthetic", str(models), "--tiny"], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
        args.models_dir, args.steps, args.clients, args.single = str(models), 1, 2, 1
        args.duration, person_size, runs = min(args.duration, 3.0), (300, 400), [r for r in runs if r != "repeat"]
        env.update({"FASTFIT_RESOLUTION": "128x192", "HF_HUB_OFFLINE": "1", "FASTFIT_QUEUE_SIZE": "1"})
    if args.models_dir:
        env["FASTFIT_MODELS_DIR"] = args.models_dir
    report: dict[str, Any] = {"runs": {}}
    digests: dict[str, dict[str, str]] = {}
    server: Server | None = None
    overlap: str | None = None
    try:
        for run in runs:
            wanted = "0" if run == "off" else "1"
            if server is None or overlap != wanted:
                if server is not None:
                    server.stop()
                overlap = wanted
                port = loadtest.free_port_block(1)
                server = Server({**env, "FASTFIT_OVERLAP": overlap}, port, log_dir / f"server-overlap-{overlap}.log")
                report.setdefault("ready_s", {})[f"overlap_{overlap}"] = round(server.wait_ready(args.ready_timeout), 1)
            if run == "repeat":
                traffic = loadtest.Traffic(args.steps, person_size, args.repeat_person, 0.0, 0, REPEAT_FIRST_INDEX)
                report["runs"]["overlap_on_repeat_person"] = measure(server, args, traffic, "repeat", args.single)
            else:
                traffic = loadtest.Traffic(args.steps, person_size, 0.0, 0.0, 0)
                digests[run] = {}
                report["runs"][f"overlap_{run}"] = measure(server, args, traffic, run, args.single, digests[run])
    finally:
        if server is not None:
            server.stop()
    if "off" in digests and "on" in digests:
        report["overlap_on_vs_off"] = compare(digests["off"], digests["on"])
        off, on = report["runs"]["overlap_off"], report["runs"]["overlap_on"]
        if off["images_per_hour"]:
            report["overlap_on_vs_off"]["images_per_hour_gain"] = round(on["images_per_hour"] / off["images_per_hour"] - 1, 4)
    report["log_dir"] = str(log_dir)
    print(json.dumps(report))
    lost = sum(r["lost"] for r in report["runs"].values())
    return 0 if lost == 0 and all(r["completed"] > 0 for r in report["runs"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
