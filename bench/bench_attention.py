"""Microbenchmark of the UNet self-attention kernels at every garment layout's shapes (GPU only).

For each shape (batch 2 for guidance, 8 heads, the person's queries, the person's plus every
reference's keys; head 40 at the top UNet level, 80 at the next) it times our Triton kernel's
variants and SDPA's cuDNN kernel (and FA4 where it is installed), and compares each output with
fp32 math attention on a sample of query rows: max abs error, against which a kernel must be no
worse than FA4 (or, where FA4 is absent, cuDNN). Writes JSON.

    python -m bench.bench_attention --out attention.json            # sweep + every layout
    python -m bench.bench_attention --variants default --out a.json  # the shipped choice only
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from fastfit_engine.attention import level_token_count
from fastfit_engine.schema import GARMENT_SLOTS_BY_NAME, garment_set_per_size_layout

PERSON_WH = (768, 1024)
BATCH, HEADS = 2, 8
HEAD_BY_LEVEL = {0: 40, 1: 80}
REFERENCE_ROWS = 512  # query rows compared with fp32 math attention

# (exponential, polynomial share, (block_m, block_n, warps, stages), pipelined Q.K^T, warp-specialised)
SWEEP = {
    40: [
        ("bf16x2", 0, (128, 64, 4, 3), False, False), ("f32", 0, (128, 128, 8, 3), False, False),
        ("f32", 0, (128, 128, 8, 2), True, False), ("f32", 0, (128, 128, 8, 3), True, False),
        ("f32", 0, (64, 128, 4, 2), True, False), ("f32", 0, (64, 128, 4, 3), True, False),
        ("f32", 0, (128, 64, 8, 2), True, False), ("f32", 0, (128, 64, 8, 3), True, False),
        ("f32", 2, (128, 128, 8, 2), True, False), ("f32", 2, (64, 128, 4, 3), True, False),
        ("f16x2", 0, (128, 128, 8, 2), True, False), ("f16x2", 0, (64, 128, 4, 3), True, False),
        ("bf16x2", 0, (128, 128, 8, 2), True, False), ("bf16x2", 0, (64, 128, 4, 3), True, False),
        ("bf16x2", 0, (128, 64, 8, 3), True, False),
        ("f32", 0, (128, 128, 8, 2), False, True), ("f32", 0, (128, 64, 4, 3), False, True),
    ],
    80: [
        ("f32", 0, (64, 64, 4, 3), False, False), ("f32", 0, (64, 64, 4, 3), True, False),
        ("f32", 0, (64, 128, 4, 2), True, False), ("f32", 0, (128, 64, 8, 2), True, False),
        ("f32", 0, (128, 128, 8, 2), True, False), ("f32", 0, (64, 64, 4, 4), True, False),
        ("bf16x2", 0, (64, 64, 4, 3), True, False), ("bf16x2", 0, (128, 64, 8, 2), True, False),
        ("f16x2", 0, (64, 64, 4, 3), True, False), ("f32", 2, (64, 64, 4, 3), True, False),
        ("f32", 0, (64, 64, 4, 3), False, True),
    ],
}


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


def make_inputs(queries: int, keys: int, head: int, seed: int = 0):
    """q as a slice of a fused QKV projection, k and v as the K/V cache buffers lay them out."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    channels = HEADS * head
    qkv = torch.randn(BATCH, queries, 3 * channels, device="cuda", dtype=torch.bfloat16, generator=g)
    q = qkv[..., :channels].view(BATCH, queries, HEADS, head)
    k = torch.randn(BATCH, keys, channels, device="cuda", dtype=torch.bfloat16, generator=g).view(BATCH, keys, HEADS, head)
    v = torch.randn(BATCH, keys, channels, device="cuda", dtype=torch.bfloat16, generator=g).view(BATCH, keys, HEADS, head)
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
        torch.cuda.synchronize()
        first_s = time.perf_counter() - start
        err = (out[:, rows].float() - ref).abs()
        full = {"ms": round(timed(lambda: fn(q, k, v)), 4), "max_abs_err": float(err.max()),
                "mean_abs_err": float(err.mean()), "first_call_s": round(first_s, 2)}
        if not torch.isfinite(out).all():
            full["error"] = "non-finite output"
        return full
    except Exception as exc:  # a variant that does not compile or run is reported, not fatal
        return {"error": f"{type(exc).__name__}: {str(exc)[:400]}"}


def variant_name(exp: str, poly: int, tile, pipe: bool, ws: bool) -> str:
    flags = ("_poly" + str(poly) if poly else "") + ("_pipe" if pipe else "") + ("_ws" if ws else "")
    return f"triton_{exp}{flags}_{'x'.join(map(str, tile))}"


def run_shape(shape: dict, variants: list, with_fa4: bool) -> dict:
    from fastfit_engine.triton_attention import launch  # noqa: PLC0415

    q, k, v = make_inputs(shape["queries"], shape["keys"], shape["head"])
    g = torch.Generator(device="cuda").manual_seed(1)
    rows = torch.randperm(shape["queries"], device="cuda", generator=g)[:REFERENCE_ROWS].sort().values
    ref = reference_rows(q, k, v, rows)
    result = dict(shape)
    result["cudnn"] = measure("cudnn", cudnn, q, k, v, rows, ref)
    if with_fa4:
        result["fa4"] = measure("fa4", fa4, q, k, v, rows, ref)
    for variant in variants:
        exp, poly, tile, pipe, ws = variant
        fn = (lambda e, p, t, pp, w: lambda q, k, v: launch(q, k, v, tile=t, exp=e, poly=p, pipe=pp, warp_specialize=w))(
            exp, poly, tile, pipe, ws)
        result[variant_name(*variant)] = measure("triton", fn, q, k, v, rows, ref)
    if any(v[0] == "f16x2" for v in variants):
        from fastfit_engine.triton_attention import f16_values_with_ones  # noqa: PLC0415

        result["f16_value_copy_ms"] = round(timed(lambda: f16_values_with_ones(v)), 4)
    return result


def best_variant(result: dict, bound_key: str) -> str | None:
    bound = result.get(bound_key, {}).get("max_abs_err")
    ok = [(r["ms"], n) for n, r in result.items() if n.startswith("triton_") and isinstance(r, dict) and "ms" in r
          and "error" not in r and (bound is None or r["max_abs_err"] <= bound * 1.05)]
    return min(ok)[1] if ok else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("attention.json"))
    ap.add_argument("--variants", choices=["sweep", "default"], default="sweep",
                    help="sweep: every variant at upper+lower, the best at every layout; default: the shipped tile only")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("CUDA not available: this benchmark needs a GPU", file=sys.stderr)
        return 2
    from fastfit_engine.flash_attention import fa4_available  # noqa: PLC0415
    from fastfit_engine.triton_attention import TRITON_TILES  # noqa: PLC0415

    with_fa4 = fa4_available("cuda")
    bound_key = "fa4" if with_fa4 else "cudnn"
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "fa4": with_fa4,
              "date": time.strftime("%Y-%m-%d", time.gmtime()), "batch": BATCH, "heads": HEADS, "shapes": []}
    shapes = layout_shapes()
    best: dict[int, tuple] = {}
    for i, shape in enumerate(shapes):
        head = shape["head"]
        if args.variants == "default":
            variants = [("f16x2", 0, tuple(TRITON_TILES[head]), True, False)]
        elif head not in best:  # the first layout of each head size: the whole sweep
            variants = SWEEP[head]
        else:
            variants = [best[head]]
        result = run_shape(shape, variants, with_fa4)
        if args.variants == "sweep" and head not in best:
            name = best_variant(result, bound_key)
            if name:
                best[head] = next(v for v in SWEEP[head] if variant_name(*v) == name)
        report["shapes"].append(result)
        args.out.write_text(json.dumps(report, indent=1))
        rows = [(n, r) for n, r in result.items() if isinstance(r, dict)]
        print(f"{shape['garments']:>24} L{shape['level']} {shape['queries']}x{shape['keys']} d{head}: " + ", ".join(
            f"{n}={r['ms']:.3f}ms/{r['max_abs_err']:.1e}" if "ms" in r else f"{n}=ERR" for n, r in rows), flush=True)
    for r in report["shapes"]:
        for n, v in r.items():
            if isinstance(v, dict) and "error" in v:
                print(f"  {r['garments']} L{r['level']} {n}: {v['error']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
