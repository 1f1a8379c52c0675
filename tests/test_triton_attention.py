"""Our Triton attention kernel: when the policy picks it, the fallbacks, the custom op, and the
kernel's arithmetic in Triton's interpreter (the kernel itself needs an SM90 GPU). The op's
opcheck and its place in one dynamo graph are tested beside FA4's in test_flash_attention.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from helpers import OpRecorder, attention_qkv, attention_reference
from fastfit_engine.model import flash_attention as fa
from fastfit_engine.model import triton_attention as ta
from fastfit_engine.model.flash_attention import FlashAttentionPolicy, attention_bshd, enable_fa4, enable_triton

ROOT = Path(__file__).resolve().parents[1]


def _kernel_taken(policy, q, k, v) -> str:
    rec = OpRecorder()
    with rec:
        out = attention_bshd(q, k, v, policy)
    assert out.shape == q.shape
    torch.testing.assert_close(out.double(), attention_reference(q, k, v), atol=2e-2, rtol=2e-2)
    if any("fastfit.triton_attention" in op for op in rec.ops):
        return "triton"
    if any("fastfit.fa4_attention" in op for op in rec.ops):
        return "fa4"
    assert any("scaled_dot_product" in op for op in rec.ops), rec.ops
    return "sdpa"


# ------------------------------------------------------------- choice per layer shape
@pytest.mark.parametrize(
    "head_dim, dtype, triton, fa4, devices, expected",
    [
        (40, torch.bfloat16, True, False, ("cpu",), "triton"),
        (80, torch.float16, True, False, ("cpu",), "triton"),
        (40, torch.bfloat16, True, True, ("cpu",), "triton"),  # before FA4 when both are on
        (64, torch.bfloat16, True, True, ("cpu",), "fa4"),  # a head size the kernel is not built for
        (160, torch.bfloat16, True, True, ("cpu",), "sdpa"),
        (40, torch.float32, True, True, ("cpu",), "sdpa"),  # 16-bit only
        (40, torch.bfloat16, True, False, ("cuda",), "sdpa"),  # CPU tensors never reach the kernel
        (40, torch.bfloat16, False, False, ("cpu",), "sdpa"),  # off (the default)
    ],
)
def test_kernel_choice_per_shape(head_dim, dtype, triton, fa4, devices, expected):
    policy = FlashAttentionPolicy(triton=triton, fa4=fa4, devices=devices)
    q, k, v = attention_qkv(head_dim, dtype)
    assert policy.use_triton(q, k) is (expected == "triton")
    assert _kernel_taken(policy, q, k, v) == expected


def test_kernel_is_off_by_default():
    policy = FlashAttentionPolicy()
    assert policy.triton is False and policy.triton_head_dims == (40, 80)


# ------------------------------------------------------------------- fallbacks
def test_cpu_device_keeps_the_kernel_off():
    policy = FlashAttentionPolicy(triton=True)
    assert enable_triton(policy, "cpu") is False and policy.triton is False
    with pytest.raises(ValueError, match="attention_backend 'triton' cannot run here: not a CUDA device"):
        enable_triton(FlashAttentionPolicy(), "cpu", required=True)
    # FA4's switch is untouched by the kernel's
    policy = FlashAttentionPolicy()
    enable_triton(policy, "cpu")
    assert policy.fa4 is False and enable_fa4(policy, "cpu") is False


@pytest.fixture
def fresh_reason():
    fa.triton_unavailable_reason.cache_clear()
    yield
    fa.triton_unavailable_reason.cache_clear()


def test_old_gpu_or_missing_triton_is_reported(monkeypatch, fresh_reason):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: (8, 6))
    assert fa.triton_unavailable_reason(0) == "The Triton attention kernel needs an SM90+ GPU, this one is SM86"
    fa.triton_unavailable_reason.cache_clear()
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: (9, 0))
    assert fa.triton_unavailable_reason(0) is None
    fa.triton_unavailable_reason.cache_clear()
    monkeypatch.setattr(ta, "triton", None)
    assert fa.triton_unavailable_reason(0) == "triton is not importable (ImportError: No module named 'triton')"
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    policy = FlashAttentionPolicy()
    assert enable_triton(policy, "cuda") is False and policy.triton is False
    with pytest.raises(ValueError, match="attention_backend 'triton' cannot run here: triton is not importable"):
        enable_triton(policy, "cuda", required=True)


def test_pipeline_backend_name(models_dir):
    from fastfit_engine.model.pipeline import FastFitPipeline

    pipe = FastFitPipeline.from_pretrained(models_dir / "FastFit-MR-1024", device="cpu", dtype=torch.float32)
    policy = pipe.unet.kv_cache.attention_policy
    with pytest.raises(ValueError, match="attention_backend 'triton' cannot run here: not a CUDA device"):
        pipe.set_attention_backend("triton")
    assert policy.triton is False
    policy.triton = True
    pipe.set_attention_backend("sdpa")  # any other name turns it off
    assert policy.triton is False


# --------------------------------------------------------------------- custom op
def test_fake_implementation_shapes_under_fake_tensor_mode():
    with FakeTensorMode():
        q = torch.empty(2, 16, 3, 40, dtype=torch.bfloat16)
        k = torch.empty(2, 48, 3, 40, dtype=torch.bfloat16)
        out = torch.ops.fastfit.triton_attention(q, k, k)
        assert out.shape == (2, 16, 3, 40) and out.is_contiguous() and out.dtype == torch.bfloat16


def test_unknown_exponential_variant_is_refused():
    q, k, v = attention_qkv(40, torch.bfloat16)
    with pytest.raises(ValueError, match=r"unknown exponential variant 'exp'; expected one of \('f16x2', 'f32', 'bf16x2'\)"):
        ta.launch(q, k, v, ta.TritonConfig(exp="exp"))


def test_value_copy_for_the_packed_exponential():
    _, _, v = attention_qkv(40, torch.bfloat16)
    copy = ta.f16_values_with_ones(v)
    assert copy.shape == (2, 2, 20, 64) and copy.dtype == torch.float16
    torch.testing.assert_close(copy[..., :40], v.transpose(1, 2).half())
    assert (copy[..., 40] == 1).all() and (copy[..., 41:] == 0).all()


# ------------------------------------------------- the kernel, in Triton's interpreter
def test_kernel_arithmetic_in_the_interpreter():
    """``bench_attention --quick``: the real kernel (fp32-exponential builds: plain, half
    polynomial, pipelined) run by Triton's interpreter at head 40 and 80, key counts that are
    not a multiple of the key block, q as a slice of a fused projection; compared with fp32
    math attention, as SDPA is. (The interpreter has no inline PTX and no bf16 loads.)"""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "bench.bench_attention", "--quick"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert [(s["head"], s["keys"] % 64 != 0) for s in report["shapes"]] == [(40, True), (80, True)]
    for shape in report["shapes"]:
        builds = {n: r for n, r in shape.items() if n.startswith("triton_")}
        assert sorted(builds) == ["triton_f32_32x32x4x1", "triton_f32_pipe2_32x32x4x1", "triton_f32_pipe_32x32x4x1",
                                  "triton_f32_poly2_32x64x4x1"]
        for name, row in builds.items():
            assert "error" not in row, (name, row)
            # float16 inputs and output: within 2x SDPA's own error against the same reference
            assert row["max_abs_err"] <= 2 * shape["sdpa"]["max_abs_err"] + 1e-4, (name, row, shape["sdpa"])
            assert row["mean_abs_err"] <= 1.5 * shape["sdpa"]["mean_abs_err"], (name, row, shape["sdpa"])
