"""Every benchmark script runs end to end with ``--quick`` (tiny models, CPU) and prints its report.

The benchmarks are scripts, not timed tests: nothing here looks at a duration. What is checked is
that each script still runs against the current code (a bench that reaches into a renamed method
fails here, not on the GPU machine) and that its JSON says what it measured.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ["upper_lower", "upper_lower_shoe_bag", "dress_shoe"]


def run_bench(module: str, *args: str) -> dict:
    """``python -m bench.<module> --quick ARGS`` from the repository root; its stdout parsed as JSON."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", "--quick", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_every_bench_script_is_covered():
    scripts = sorted(p.stem for p in (ROOT / "bench").glob("bench_*.py"))
    # bench_attention --quick runs in test_triton_attention.py (the kernel's interpreter check)
    assert scripts == ["bench_attention", "bench_densepose", "bench_diffusion", "bench_dwpose", "bench_output_formats", "bench_request",
                       "bench_schp", "bench_sha256", "bench_step"]


def test_bench_output_formats_quick():
    report = run_bench("bench_output_formats")
    assert report["size"] == "192x256" and report["quality"] == 90
    (row,) = report["images"].values()
    assert list(row) == ["png", "jpeg", "webp"]
    assert row["jpeg"]["bytes"] < row["png"]["bytes"] and row["webp"]["bytes"] < row["png"]["bytes"]


def test_bench_diffusion_quick(models_dir):
    report = run_bench("bench_diffusion", "--model-dir", str(models_dir / "FastFit-MR-1024"))
    assert report["device"] == "cpu" and report["size"] == "48x64" and report["steps"] == 2
    variant = report["variants"]["eager"]
    assert "error" not in variant, variant
    assert sorted(k for k in variant if not k.startswith("_")) == sorted(SCENARIOS)
    for name in SCENARIOS:
        row = variant[name]
        assert row["deterministic"] is True
        assert row["ms_per_step"] > 0 and row["reference_pass_ms"] > 0
        assert row["vae_encode_ms"] > 0 and row["vae_decode_ms"] > 0
        # on the CPU "eager" and the reference "sdpa" take the same kernels: the same image
        assert row["distance_to_reference"] == {"mean_abs_in_mask": 0.0, "max_abs_in_mask": 0, "psnr_in_mask_db": None}
    assert report["reference_variant"] == "sdpa"


def test_image_distance_counts_only_the_mask():
    import numpy as np
    from PIL import Image

    from bench.bench_diffusion import image_distance

    ref = np.full((4, 6, 3), 100, np.uint8)
    img = ref.copy()
    img[0, 0] = [103, 100, 100]  # inside the mask: |diff| 3, 0, 0
    img[3, 5] = [0, 0, 0]  # outside: ignored
    m = np.zeros((4, 6), np.uint8)
    m[0:2, 0:3] = 255  # 6 pixels, 18 values
    d = image_distance(img, ref, Image.fromarray(m))
    assert d["mean_abs_in_mask"] == round(3 / 18, 4) and d["max_abs_in_mask"] == 3
    assert d["psnr_in_mask_db"] == round(10 * np.log10(255.0**2 / (9 / 18)), 2)


def test_bench_step_quick(models_dir):
    report = run_bench("bench_step", "--model-dir", str(models_dir / "FastFit-MR-1024"))
    assert report["device"] == "cpu" and report["compiled"] is False
    assert list(report["parts"]) == ["denoising_step", "whole_step_with_scheduler", "reference_pass_eager", "vae_encode", "vae_decode"]
    step = report["parts"]["denoising_step"]
    assert step["kernel_ms_per_call"] > 0 and step["top_kernels"]
    assert abs(sum(step["by_category_ms"].values()) - step["kernel_ms_per_call"]) < 0.01 * step["kernel_ms_per_call"] + 0.01
    assert {"convolution", "attention"} <= set(step["by_category_ms"])


def test_kernel_categories_by_name():
    from bench.bench_step import kernel_category

    names = {
        "kernel_cutlass_kernel_flash_attncuteflash_fwd_sm90FlashAttentionForwardSm90": "attention",
        "fmha_cutlassF_bf16_aligned_64x128_rf_sm80": "attention",
        "sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc": "convolution",
        "nvjet_tst_128x256_64x4_1x2_h_bz_coopA_TNT": "matrix product",
        "void at::native::(anonymous namespace)::RowwiseMomentsCUDAKernel<c10::BFloat16>": "normalisation",
        "triton_red_fused_native_group_norm_0": "normalisation",
        "triton_poi_fused_add_silu_3": "pointwise",
        "triton_poi_fused_clone_7": "copy",
        "void cudnn::engines_precompiled::nchwToNhwcKernel<__nv_bfloat16>": "copy",
        "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>>": "pointwise",
        "aten::convolution": "convolution",
        "aten::copy_": "copy",
    }
    assert {name: kernel_category(name) for name in names} == names


def test_bench_request_quick(models_dir):
    from fastfit_engine.runtime.engine import STAGES

    report = run_bench("bench_request", "--models", str(models_dir), "--scenarios", ",".join(SCENARIOS))
    assert report["resolution"] == "64x128" and report["dwpose"] == "given" and report["warmup_s"] is None
    assert list(report["scenarios"]) == SCENARIOS
    n = {"upper_lower": 2, "upper_lower_shoe_bag": 4, "dress_shoe": 2}
    for name, row in report["scenarios"].items():
        assert row["deterministic"] is True and row["cached_equals_uncached"] is True
        cases = row["cases"]
        assert list(cases) == ["cold", "repeat_person", "repeat_garments", "both"]
        for case in cases.values():
            assert list(case["seconds"]) == list(STAGES) and case["seconds"]["total"] > 0
        # each case did what its name says (one repeat)
        assert cases["cold"]["hits"] == {"garment": 0, "person": 0}
        assert cases["repeat_person"]["hits"] == {"garment": 0, "person": 1}
        assert cases["repeat_garments"]["hits"] == {"garment": n[name], "person": 0}
        assert cases["both"]["hits"] == {"garment": n[name], "person": 1}
        assert cases["cold"]["misses"] == {"garment": n[name], "person": 1}


def test_bench_dwpose_quick():
    report = run_bench("bench_dwpose", "--runtimes", "onnxruntime:cpu,torch:cpu")
    assert report["models"] == "synthetic" and report["repeats"] == 2
    reference, converted = report["results"]
    assert reference["runtime"] == "onnxruntime:cpu" and reference["providers"] == ["CPUExecutionProvider"]
    assert converted["runtime"] == "torch:cpu:float32" and converted["providers"] == ["torch:cpu:float32"]
    for result in (reference, converted):
        assert result["total_ms_median"] > 0
        assert {"detector_session", "pose_session", "render"} <= set(result["stages_ms_median"])
    parity = converted["parity_vs_first"]
    assert parity["keypoints_max_abs_px"] == 0 and parity["drawing_pixels_differing"] == 0
    assert parity["simcc_argmax_same_fraction_xy"] == [1.0, 1.0] and parity["body_visibility_same"] is True


def test_bench_schp_quick():
    report = run_bench("bench_schp", "--device", "cpu")
    assert report["weights"] == "synthetic tiny" and report["image_size"] == [96, 128]
    assert set(report["results"]) == {"lip", "atr"}
    for row in report["results"].values():
        assert row["output_size"] == [96, 128] and row["end_to_end"]["median_ms"] > 0


def test_bench_densepose_quick():
    report = run_bench("bench_densepose", "--device", "cpu")
    assert report["input_wh"] == [96, 128] and report["output_size"] == [96, 128]
    stages = report["stages_ms"]
    assert stages["num_detections"] >= 1 and "densepose_decoder_head" in stages  # every stage ran


def test_dwpose_proxy_builder_runs_as_a_module():
    proc = subprocess.run(
        [sys.executable, "-m", "bench.proxies.dwpose", "--help"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0 and "yolox_l.onnx" in proc.stdout


def test_bench_sha256_quick():
    report = run_bench("bench_sha256")
    assert report["total_gb"] == round(7 * (8 << 20) / 1e9, 2)
    assert report["all_files_gb_per_s"] > 0 and report["one_thread_gb_per_s"] > 0


def test_census_counts_the_step_exponentials():
    from bench.step_census import census

    report = census()
    # batch 2, 8 heads; (queries, layers) per level at 768x1024, keys = 3 x queries (upper+lower)
    levels = [(12288, 5), (3072, 5), (768, 5), (192, 1)]
    assert report["step"]["exponentials"] == sum(2 * 8 * q * 3 * q * n for q, n in levels)
    # FLOP = exponentials x 2 products x 2 FLOP x head size (40, 80, 160, 160)
    heads = [40, 80, 160, 160]
    flop = sum(2 * 8 * q * 3 * q * n * 4 * d for (q, n), d in zip(levels, heads))
    assert report["step"]["attention_tflop"] == round(flop / 1e12, 4)
    assert report["step"]["group_norm_calls"] == 61 and report["vae_decode"]["group_norm_calls"] == 30
    assert report["vae_decode"]["conv_tflop"] > report["vae_encode"]["conv_tflop"] > report["step"]["conv_tflop"] > 0
