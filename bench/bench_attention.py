"""Microbenchmark of the UNet self-attention kernels at every garment layout's shapes (GPU only).

For each shape (batch 2 for guidance, 8 heads, the person's queries, the person's plus every
reference's keys; head 40 at the top UNet level, 80 at the next) it times SDPA's cuDNN kernel,
FA4 where it is installed, and builds of our Triton kernel (fastfit_engine/model/triton_attention.py),
and compares each output with fp32 math attention on a sample of query rows: a Triton build
counts only if its max abs error is no worse than FA4's (cuDNN's where FA4 is absent). Each
Triton build runs in a subprocess with a time limit, so one that hangs in the compiler or on the
GPU costs that limit, not the run. Writes JSON.

    python -m bench.bench_attention --out attention.json             # sweep + every layout
    python -m bench.bench_attention --variants default --out a.json  # the shipped builds only
    python -m bench.bench_attention --quick   # CPU: tiny shapes, the kernel in Triton's interpreter

``--quick`` checks the kernel's arithmetic without a GPU: Triton's interpreter (TRITON_INTERPRET=1)
runs the fp32-exponential builds on float16 tensors (it has no bfloat16 loads and no inline PTX,
so the packed-exponential builds are GPU-only), and nothing is timed.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from fastfit_engine.model.attention import level_token_count
from fastfit_engine.request.schema import GARMENT_SLOTS_BY_NAME, garment_set_per_size_layout
from fastfit_engine.model.triton_attention import TRITON_CONFIGS, TritonConfig

PERSON_WH = (768, 1024)
BATCH, HEADS = 2, 8
HEAD_BY_LEVEL = {0: 40, 1: 80}
REFERENCE_ROWS = 512  # query rows compared with fp32 math attention
VARIANT_TIMEOUT_S = 45  # a build that hangs (compiler or kernel) costs this much

# Builds timed at the first (upper+lower) shape of each head size; the fastest within the
# accuracy bound then runs at every other layout, beside the shipped TRITON_CONFIGS build.
C = TritonConfig
SWEEP = {
    40: [
        C("f32", 64, 128, 4, 3, pipe=1), C("f32", 64, 128, 4, 3, pipe=2), C("f32", 64, 128, 4, 2, pipe=2),
        C("f32", 128, 128, 8, 2, pipe=2), C("f32", 128, 128, 8, 3), C("f16x2", 128, 128, 8, 2, pipe=1),
        C("bf16x2", 128, 128, 8, 2, pipe=1), C("f32", 128, 128, 8, 2, poly=2, pipe=1),
    ],
    80: [
        C("f32", 64, 64, 4, 3, pipe=1), C("f32", 64, 64, 4, 3, pipe=2), C("f32", 64, 64, 4, 2, pipe=2),
        C("f32", 64, 64, 4, 3), C("f16x2", 64, 64, 4, 3, pipe=1),
    ],
}
# --quick: (queries, keys) per head size, uneven key blocks included, and interpreter-sized builds
QUICK_SHAPES = [(32, 200, 40), (32, 96, 80)]
QUICK_BUILDS = [C("f32", 32, 32, 4, 1), C("f32", 32, 64, 4, 1, poly=2), C("f32", 32, 32, 4, 1, pipe=1),
                C("f32", 32, 32, 4, 1, pipe=2)]


def layout_shapes() -> list[dict]:
    """(level, queries, keys, head) of every garment layout's denoising attention (upper+lower first)."""
    w, h = PERSON_WH[0] // 8, PERSON_WH[1] // 8
    shapes = []
    for names in sorted(garment_set_per_size_layout(), key=lambda n: n != ("upper", "lower")):
        refs = [(h // GARMENT_SLOTS_BY_NAME[n].size_factor, w // GARMENT_SLOTS_BY_NAME[n].size_factor) for n in names]
        for level, head in HEAD_BY_LEVEL.items():
            person = level_token_count(h, w, level)
            keys = person + sum(level_token_count(rh, rw, level) for rh, rw in refs)
            shapes.append({"garments": "+".join(names), "level": level, "queries": person, "keys": keys, "head": head})
    return shapes


def make_inputs(queries: int, keys: int, head: int, device: str = "cuda", seed: int = 0):
    """q as a slice of a fused QKV projection, k and v as the K/V cache buffers lay them out."""
    g = torch.Generator(device=device).manual_seed(seed)
    channels = HEADS * head
    dtype = torch.bfloat16 if device == "cuda" else torch.float16  # the interpreter has no bf16

    def randn(*shape):
        return torch.randn(*shape, device=device, generator=g).to(dtype)

    q = randn(BATCH, queries, 3 * channels)[..., :channels].view(BATCH, queries, HEADS, head)
    k = randn(BATCH, keys, channels).view(BATCH, keys, HEADS, head)
    v = randn(BATCH, keys, channels).view(BATCH, keys, HEADS, head)
    return q, k, v


def reference_rows(q, k, v, rows):
    """fp32 math attention for the query rows ``rows``: (batch, len(rows), heads, head)."""
    qs = q[:, rows].float().transpose(1, 2)
    s = qs @ k.float().permute(0, 2, 3, 1) / math.sqrt(q.shape[-1])
    return (torch.softmax(s, dim=-1) @ v.float().transpose(1, 2)).transpose(1, 2)


def timed(fn) -> float:
    from triton.testing import do_bench  # noqa: PLC0415

    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


def cudnn(q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: PLC0415

    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        return torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def fa4(q, k, v):
    return torch.ops.fastfit.fa4_attention(q, k, v, 0, 0)


def measure(name, fn, q, k, v, rows, ref) -> dict:
    try:
        start = time.perf_counter()
        out = fn(q, k, v)
        if q.is_cuda:
            torch.cuda.synchronize()
        first_s = time.perf_counter() - start
        err = (out[:, rows].float() - ref).abs()
        full = {"ms": round(timed(lambda: fn(q, k, v)), 4) if q.is_cuda else None, "max_abs_err": float(err.max()),
                "mean_abs_err": float(err.mean()), "first_call_s": round(first_s, 2)}
        if not torch.isfinite(out).all():
            full["error"] = "non-finite output"
        return full
    except Exception as exc:  # a variant that does not compile or run is reported, not fatal
        return {"error": f"{type(exc).__name__}: {str(exc)[:400]}"}


def _inputs_and_reference(shape: dict, device: str = "cuda"):
    q, k, v = make_inputs(shape["queries"], shape["keys"], shape["head"], device)
    g = torch.Generator(device=device).manual_seed(1)
    rows = torch.randperm(shape["queries"], device=device, generator=g)[:REFERENCE_ROWS].sort().values
    return q, k, v, rows, reference_rows(q, k, v, rows)


def child(shapes: list[dict], configs: list[TritonConfig], device: str) -> None:
    """Time Triton builds at shapes; one JSON line per result on stdout (run in a subprocess)."""
    from fastfit_engine.model.triton_attention import f16_values_with_ones, launch  # noqa: PLC0415

    for shape in shapes:
        q, k, v, rows, ref = _inputs_and_reference(shape, device)
        for config in configs:
            name = "triton_" + config.name()
            if config == TRITON_CONFIGS.get(shape["head"]) and device == "cuda":  # the shipped build, through the custom op
                fn = torch.ops.fastfit.triton_attention
            else:
                fn = (lambda c: lambda q, k, v: launch(q, k, v, c))(config)
            print("RESULT " + json.dumps([shape["index"], name, measure(name, fn, q, k, v, rows, ref)]), flush=True)
        if any(c.exp == "f16x2" for c in configs) and device == "cuda":
            row = {"ms": round(timed(lambda: f16_values_with_ones(v)), 4)}
            print("RESULT " + json.dumps([shape["index"], "f16_value_copy", row]), flush=True)


def run_children(shapes: list[dict], configs: list[TritonConfig], timeout_s: float, device: str = "cuda") -> list:
    """``child`` in a subprocess, so that a build that hangs is cut off; [shape index, name, result]s.
    On the CPU the subprocess runs Triton's interpreter (it must be chosen before the import)."""
    cmd = [sys.executable, "-m", "bench.bench_attention", "--child", json.dumps(
        {"shapes": shapes, "configs": [dataclasses.asdict(c) for c in configs], "device": device})]
    env = dict(os.environ, TRITON_INTERPRET="1") if device == "cpu" else None
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
        out = done.stdout
        problem = None if done.returncode == 0 else f"exit {done.returncode}: {done.stderr[-400:]}"
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        problem = f"timed out after {timeout_s:.0f} s"
    results = [json.loads(line[7:]) for line in out.splitlines() if line.startswith("RESULT ")]
    if problem:
        seen = {(i, n) for i, n, _ in results}
        results += [[s["index"], "triton_" + c.name(), {"error": problem}] for s in shapes for c in configs
                    if (s["index"], "triton_" + c.name()) not in seen]
    return results


def best_build(result: dict, bound_key: str) -> str | None:
    """Name of the fastest Triton build at a shape whose max abs error is within the bound."""
    bound = result.get(bound_key, {}).get("max_abs_err")
    ok = [(r["ms"], n) for n, r in result.items() if n.startswith("triton_") and "ms" in r and "error" not in r
          and (bound is None or r["max_abs_err"] <= bound * 1.05)]
    return min(ok)[1] if ok else None


def quick() -> int:
    """Tiny shapes on the CPU: SDPA and the interpreted kernel against fp32 math; JSON on stdout."""
    report = {"device": "cpu (Triton interpreter)", "shapes": []}
    shapes = [{"garments": "quick", "level": i, "queries": m, "keys": n, "head": d, "index": i}
              for i, (m, n, d) in enumerate(QUICK_SHAPES)]
    for shape in shapes:
        q, k, v, rows, ref = _inputs_and_reference(shape, "cpu")
        sdpa = lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(  # noqa: E731
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
        report["shapes"].append(dict(shape, sdpa=measure("sdpa", sdpa, q, k, v, rows, ref)))
    for index, name, row in run_children(shapes, QUICK_BUILDS, 240, device="cpu"):
        report["shapes"][index][name] = row
    print(json.dumps(report, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("attention.json"))
    ap.add_argument("--variants", choices=["sweep", "default"], default="sweep",
                    help="sweep: several builds at upper+lower, then the best and the shipped one at every "
                         "layout; default: the shipped builds only")
    ap.add_argument("--budget-s", type=float, default=600, help="skip sweep builds once this much time has passed")
    ap.add_argument("--most", type=int, default=None, help="time at most this many sweep builds per head size")
    ap.add_argument("--first-only", action="store_true", help="only the first (upper+lower) shape of each head size")
    ap.add_argument("--quick", action="store_true", help="CPU: tiny shapes through Triton's interpreter, untimed")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        job = json.loads(args.child)
        child(job["shapes"], [TritonConfig(**c) for c in job["configs"]], job["device"])
        return 0
    if args.quick:
        return quick()
    if not torch.cuda.is_available():
        print("CUDA not available: this benchmark needs a GPU (--quick runs on the CPU)", file=sys.stderr)
        return 2
    from fastfit_engine.model.flash_attention import fa4_available  # noqa: PLC0415

    began = time.perf_counter()
    with_fa4 = fa4_available("cuda")
    bound_key = "fa4" if with_fa4 else "cudnn"
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "fa4": with_fa4,
              "date": time.strftime("%Y-%m-%d", time.gmtime()), "batch": BATCH, "heads": HEADS,
              "accuracy_bound": f"max abs error <= 1.05 x {bound_key}'s, vs fp32 math on {REFERENCE_ROWS} query rows",
              "shapes": []}
    shapes = [dict(s, index=i) for i, s in enumerate(layout_shapes())]
    if args.first_only:
        shapes = [dict(s, index=i) for i, s in enumerate(s for s in shapes if s["garments"] == shapes[0]["garments"])]
    for shape in shapes:  # the library kernels, in this process
        q, k, v, rows, ref = _inputs_and_reference(shape)
        result = dict(shape, cudnn=measure("cudnn", cudnn, q, k, v, rows, ref))
        if with_fa4:
            result["fa4"] = measure("fa4", fa4, q, k, v, rows, ref)
        report["shapes"].append(result)
        del q, k, v, ref
    for head in HEAD_BY_LEVEL.values():
        first, *others = [s for s in shapes if s["head"] == head]
        configs = SWEEP[head][: args.most] if args.variants == "sweep" else [TRITON_CONFIGS[head]]
        for config in configs:
            if time.perf_counter() - began > args.budget_s:
                report["shapes"][first["index"]]["triton_" + config.name()] = {"error": "skipped: out of time"}
                continue
            for index, name, row in run_children([first], [config], VARIANT_TIMEOUT_S):
                report["shapes"][index][name] = row
            args.out.write_text(json.dumps(report, indent=1))
        name = best_build(report["shapes"][first["index"]], bound_key)
        best = next((c for c in configs if name == "triton_" + c.name()), TRITON_CONFIGS[head])
        builds = list(dict.fromkeys([TRITON_CONFIGS[head], best]))
        for index, name, row in run_children(others, builds, 30 + 10 * len(others) * len(builds)) if others else []:
            report["shapes"][index][name] = row
        args.out.write_text(json.dumps(report, indent=1))
    for r in report["shapes"]:
        print(f"{r['garments']:>22} L{r['level']} {r['queries']}x{r['keys']} d{r['head']}: " + ", ".join(
            f"{n}={v['ms']:.3f}ms/{v.get('max_abs_err', 0):.1e}" if "ms" in v else f"{n}=ERR"
            for n, v in r.items() if isinstance(v, dict)))
    for r in report["shapes"]:
        for n, v in r.items():
            if isinstance(v, dict) and "error" in v:
                print(f"  {r['garments']} L{r['level']} {n}: {v['error']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
