"""Whole-request benchmark: FastFitEngine.process (parsers, mask, diffusion) per garment set.

Builds a full-size synthetic Models tree (random weights in the published layouts) unless
``--models`` names one. Synthetic DWPose files are tiny; ``--dwpose-proxy`` replaces them with
the cost-equivalent random YOLOX-L / DWPose-L graphs of bench/proxies/dwpose.py so the
pose stage costs what the real one does. Runs the engine's warm-up (not with ``--quick``), then
the repeats, and prints JSON with the median seconds per stage, peak VRAM and whether the image repeated.

    python -m bench.bench_request --dwpose-proxy            # GPU, 768x1024, 30 steps
    python -m bench.bench_request --quick                   # tiny models on CPU (script check)
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench._common import SCENARIOS, pick_scenarios
from fastfit_engine.engine import STAGES, FastFitEngine

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def build_models(root: Path, tiny: bool, dwpose_proxy: bool) -> Path:
    from fastfit_engine.synthetic import write_fastfit_model
    from parse_utils.synthetic import write_human_toolkit

    write_fastfit_model(root / "FastFit-MR-1024", tiny=tiny, seed=0)
    toolkit = write_human_toolkit(root / "Human-Toolkit", tiny=tiny, seed=0)
    if dwpose_proxy:
        from bench.proxies.dwpose import build

        build(Path(toolkit) / "DWPose", seed=0)
    return root


def run_scenario(engine: FastFitEngine, slots: tuple[str, ...], steps: int, repeats: int) -> dict:
    person = EXAMPLES / "person.jpg"
    garments = {slot: EXAMPLES / f"{slot}.png" for slot in slots}
    first = engine.process(person, garments, steps=steps, seed=0)  # this garment set's first call
    runs = [engine.process(person, garments, steps=steps, seed=0) for _ in range(repeats)]
    same = all(np.array_equal(np.asarray(first.image), np.asarray(r.image)) for r in runs)
    return {
        "seconds": {s: round(statistics.median(r.timings[s] for r in runs), 4) for s in STAGES},
        "total_all": [round(r.timings["total"], 4) for r in runs],
        "first_call_total": round(first.timings["total"], 4),
        "peak_vram_mb": max((r.peak_vram_mb or 0.0) for r in runs) or None,
        "deterministic": same,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, default=None, help="existing Models root (else a synthetic one)")
    ap.add_argument("--dwpose-proxy", action="store_true", help="cost-equivalent DWPose graphs in the synthetic tree")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dwpose-device", default="cpu")
    ap.add_argument("--scenarios", default=None, help="comma list of " + ", ".join(SCENARIOS) + " (default: all)")
    ap.add_argument("--quick", action="store_true", help="tiny models on CPU, 64x128, 1 step, 1 repeat, no warm-up (checks the script)")
    args = ap.parse_args()
    wanted = pick_scenarios(ap, args.scenarios)

    if args.quick:
        device, resolution = "cpu", (64, 128)
        args.steps, args.repeats = 1, 1
    else:
        if not torch.cuda.is_available():
            print("CUDA not available; use --quick for a CPU check", file=sys.stderr)
            return 2
        device, resolution = "cuda", (768, 1024)

    tmp = None
    models = args.models
    t0 = time.perf_counter()
    if models is None:
        tmp = tempfile.TemporaryDirectory(prefix="fastfit_models_")
        models = build_models(Path(tmp.name), tiny=args.quick, dwpose_proxy=args.dwpose_proxy)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine = FastFitEngine(models, device=device, dwpose_device=args.dwpose_device, resolution=resolution, download=False)
    load_s = time.perf_counter() - t0
    warmup_s = None if args.quick else engine.warmup()  # the engine's own tests cover the warm-up
    report = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "resolution": f"{resolution[0]}x{resolution[1]}",
        "steps": args.steps,
        "repeats": args.repeats,
        "dwpose": "proxy" if args.dwpose_proxy else ("synthetic-tiny" if args.models is None else "given"),
        "models_build_s": round(build_s, 1),
        "engine_load_s": round(load_s, 1),
        "warmup_s": None if warmup_s is None else round(warmup_s, 2),
        "scenarios": {},
    }
    for name in wanted:
        report["scenarios"][name] = run_scenario(engine, SCENARIOS[name], args.steps, args.repeats)
        print(json.dumps({name: report["scenarios"][name]}), file=sys.stderr, flush=True)
    print(json.dumps(report, indent=1))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
