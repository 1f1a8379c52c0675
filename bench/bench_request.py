"""Whole-request benchmark: FastFitEngine.process (parsers, mask, diffusion) per garment set.

Builds a full-size synthetic Models tree (random weights in the published layouts) unless
``--models`` names one. Synthetic DWPose files are tiny; ``--dwpose-proxy`` replaces them with
the cost-equivalent random YOLOX-L / DWPose-L graphs of bench/proxies/dwpose.py so the
pose stage costs what the real one does. Runs the engine's warm-up (not with ``--quick``), then
per garment set the four cases the engine's caches distinguish, each ``--repeats`` times:

- ``cold``: a person and garments never seen (person and garment caches miss);
- ``repeat_person``: the set's person again with new garments (person cache hits);
- ``repeat_garments``: a new person with the set's garments again (garment cache hits);
- ``both``: the set's person and garments again.

"New" images are the examples with a patch of pixels changed per call, so every one hashes
differently. Prints JSON with, per case, the median seconds per stage, the cache hits and misses
it caused, plus peak VRAM, whether the repeated image repeated, whether it equals the same
request with the caches bypassed and (where the warm-up captured reference-pass CUDA graphs)
whether it equals the same request with eager reference passes. ``--no-caches`` runs every case
with the caches bypassed.

    python -m bench.bench_request --dwpose-proxy            # GPU, 768x1024, 30 steps
    python -m bench.bench_request --quick                   # tiny models on CPU (script check)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import contextlib
import itertools

import numpy as np
import torch
from PIL import Image

from bench._common import SCENARIOS, pick_scenarios
from fastfit_engine.runtime.engine import STAGES, FastFitEngine

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


CASES = ("cold", "repeat_person", "repeat_garments", "both")

_fresh = itertools.count(1)


def fresh(image: Image.Image) -> Image.Image:
    """A copy that no cache has seen: a 16x16 corner patch set to a new value per call."""
    out = image.convert("RGB").copy()
    n = next(_fresh)
    out.paste((n * 37 % 256, n * 91 % 256, n * 53 % 256), (0, 0, 16, 16))
    return out


def _cache_counts(engine: FastFitEngine) -> dict[str, tuple[int, int]]:
    return {name: (s["hits"], s["misses"]) for name, s in engine.cache_stats().items()}


def run_scenario(engine: FastFitEngine, slots: tuple[str, ...], steps: int, repeats: int, caches: bool = True) -> dict:
    person = Image.open(EXAMPLES / "person.jpg").convert("RGB")
    garments = {slot: Image.open(EXAMPLES / f"{slot}.png").convert("RGB") for slot in slots}
    seen_person = fresh(person)
    seen_garments = {slot: fresh(img) for slot, img in garments.items()}
    new_garments = lambda: {slot: fresh(img) for slot, img in garments.items()}
    inputs = {
        "cold": lambda: (fresh(person), new_garments()),
        "repeat_person": lambda: (seen_person, new_garments()),
        "repeat_garments": lambda: (fresh(person), seen_garments),
        "both": lambda: (seen_person, seen_garments),
    }
    bypass = contextlib.nullcontext if caches else engine.caches_bypassed
    with bypass():
        first = engine.process(seen_person, seen_garments, steps=steps, seed=0)  # fills the caches
    runs: dict[str, list] = {case: [] for case in CASES}
    counted = {case: {"garment": [0, 0], "person": [0, 0]} for case in CASES}
    for _ in range(repeats):
        for case in CASES:  # interleaved, so a slow spell of the machine touches every case
            p, g = inputs[case]()
            before = _cache_counts(engine)
            with bypass():
                runs[case].append(engine.process(p, g, steps=steps, seed=0))
            for name, (hits, misses) in _cache_counts(engine).items():
                counted[case][name][0] += hits - before[name][0]
                counted[case][name][1] += misses - before[name][1]
    with engine.caches_bypassed():
        uncached = engine.process(seen_person, seen_garments, steps=steps, seed=0)
    image = lambda r: np.asarray(r.image)
    graphs_equal = None  # the same request with every reference pass eager instead of replayed
    graphs = engine.pipeline.reference_graphs
    if graphs is not None and len(graphs):
        engine.pipeline.reference_graphs = None
        try:
            with engine.caches_bypassed():
                eager = engine.process(seen_person, seen_garments, steps=steps, seed=0)
        finally:
            engine.pipeline.reference_graphs = graphs
        graphs_equal = bool(np.array_equal(image(eager), image(uncached)))
    every = [r for case in CASES for r in runs[case]]
    return {
        "cases": {
            case: {
                "seconds": {s: round(statistics.median(r.timings[s] for r in runs[case]), 4) for s in STAGES},
                "total_all": [round(r.timings["total"], 4) for r in runs[case]],
                "hits": {name: hm[0] for name, hm in counted[case].items()},
                "misses": {name: hm[1] for name, hm in counted[case].items()},
            }
            for case in CASES
        },
        "first_call_total": round(first.timings["total"], 4),
        "peak_vram_mb": max((r.peak_vram_mb or 0.0) for r in every) or None,
        "deterministic": all(np.array_equal(image(first), image(r)) for r in runs["both"]),
        "cached_equals_uncached": bool(np.array_equal(image(uncached), image(runs["both"][-1]))),
        "reference_graphs_equal_eager": graphs_equal,
        "garment_cache": engine.cache_stats()["garment"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, default=None, help="existing Models root (else a synthetic one)")
    ap.add_argument("--dwpose-proxy", action="store_true", help="cost-equivalent DWPose graphs in the synthetic tree")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dwpose-device", default="auto", help="as FASTFIT_DWPOSE_DEVICE: auto (the engine's default), cpu or cuda[:N]")
    ap.add_argument("--compile", choices=("auto", "on", "off"), default="auto", help="compiled UNet step and VAE (auto: the engine's default, on with CUDA)")
    ap.add_argument("--compile-cache", type=Path, default=None, help="persistent compiler cache folder (as FASTFIT_COMPILE_CACHE)")
    ap.add_argument("--warmup-all", action="store_true", help="warm up every garment layout as the service does (default: only the chosen sets')")
    ap.add_argument("--no-caches", action="store_true", help="bypass the garment and person caches in every case")
    ap.add_argument("--eager-reference-passes", action="store_true", help="drop the warm-up's reference-pass CUDA graphs (to compare)")
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
    if args.compile_cache is not None:
        os.environ["FASTFIT_COMPILE_CACHE"] = str(args.compile_cache)
    compile_flag = {"auto": None, "on": True, "off": False}[args.compile]
    engine = FastFitEngine.from_models_dir(
        models, device=device, dwpose_device=args.dwpose_device, resolution=resolution, download=False, compile=compile_flag
    )
    load_s = time.perf_counter() - t0
    warm_sets = None if args.warmup_all else [SCENARIOS[name] for name in wanted]
    warmup_s = None if args.quick else engine.warmup(warm_sets)  # the engine's own tests cover the warm-up
    if args.eager_reference_passes:
        engine.pipeline.reference_graphs = None
    report = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "resolution": f"{resolution[0]}x{resolution[1]}",
        "steps": args.steps,
        "repeats": args.repeats,
        "dwpose": "proxy" if args.dwpose_proxy else ("synthetic-tiny" if args.models is None else "given"),
        "dwpose_runtime": engine.parsers.pose.detector.session.get_providers()[0],
        "models_build_s": round(build_s, 1),
        "engine_load_s": round(load_s, 1),
        "warmup_s": None if warmup_s is None else round(warmup_s, 2),
        "warmup_sets": "all" if warm_sets is None else [list(x) for x in warm_sets],
        "compiled": engine.compiled,
        "reference_graphs": len(engine.pipeline.reference_graphs or ()),
        "caches": {
            "enabled": not args.no_caches,
            "garment_cache_mb": engine.garment_cache.max_bytes / 2**20,
            "person_cache_mb": engine.person_cache.max_bytes / 2**20,
        },
        "scenarios": {},
    }
    for name in wanted:
        report["scenarios"][name] = run_scenario(engine, SCENARIOS[name], args.steps, args.repeats, caches=not args.no_caches)
        print(json.dumps({name: report["scenarios"][name]}), file=sys.stderr, flush=True)
    print(json.dumps(report, indent=1))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
