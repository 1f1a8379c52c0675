"""FlashAttention-4 dispatch: fallback, per-shape choice, the custom op under dynamo; compile switches."""
from __future__ import annotations

import os
import sys

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from helpers import OpRecorder, attention_qkv, attention_reference
from fastfit_engine.model import flash_attention as fa
from fastfit_engine.model.compile_cache import compile_cache_dir, compile_enabled, use_compile_cache
from fastfit_engine.model.flash_attention import FlashAttentionPolicy, attention_bshd, enable_fa4


@pytest.fixture
def fresh_fa4_checks():
    fa.fa4_unavailable_reason.cache_clear()
    fa._import_fa4.cache_clear()
    yield
    fa.fa4_unavailable_reason.cache_clear()
    fa._import_fa4.cache_clear()


# ------------------------------------------------------------------ fallback
def test_cpu_device_falls_back_to_sdpa():
    policy = FlashAttentionPolicy()
    assert enable_fa4(policy, "cpu") is False and policy.fa4 is False
    assert fa.fa4_available("cpu") is False
    with pytest.raises(ValueError, match="attention_backend 'fa4' cannot run here: not a CUDA device"):
        enable_fa4(FlashAttentionPolicy(), "cpu", required=True)


def test_package_absent_or_old_gpu_is_reported(monkeypatch, fresh_fa4_checks):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: (9, 0))
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "flash_attn.cute", None)
    monkeypatch.setitem(sys.modules, "flash_attn.cute.interface", None)
    reason = fa.fa4_unavailable_reason(0)
    assert reason.startswith("flash-attn-4 is not importable (ModuleNotFoundError")
    fa.fa4_unavailable_reason.cache_clear()
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: (8, 0))
    assert fa.fa4_unavailable_reason(0) == "FlashAttention-4 needs an SM90+ GPU, this one is SM80"


# ------------------------------------------------------- choice per layer shape
@pytest.mark.parametrize(
    "head_dim, dtype, devices, enabled, expected",
    [
        (40, torch.bfloat16, ("cpu",), True, True),
        (80, torch.bfloat16, ("cpu",), True, True),
        (160, torch.bfloat16, ("cpu",), True, False),  # cuDNN is faster at head 160
        (40, torch.float32, ("cpu",), True, False),  # FA4 is 16-bit only
        (40, torch.bfloat16, ("cuda",), True, False),  # CPU tensors never reach FA4
        (40, torch.bfloat16, ("cpu",), False, False),  # FA4 not enabled
    ],
)
def test_backend_choice_per_shape(head_dim, dtype, devices, enabled, expected):
    policy = FlashAttentionPolicy(fa4=enabled, devices=devices)
    q, k, v = attention_qkv(head_dim, dtype)
    assert policy.use_fa4(q, k) is expected
    rec = OpRecorder()
    with rec:
        out = attention_bshd(q, k, v, policy)
    took_fa4 = any("fastfit.fa4_attention" in op for op in rec.ops)
    took_sdpa = any("scaled_dot_product" in op or "_scaled_dot" in op for op in rec.ops)
    assert took_fa4 is expected and took_sdpa is not expected, rec.ops
    assert out.shape == q.shape
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(out.double(), attention_reference(q, k, v), atol=tol, rtol=tol)


def test_fa4_max_head_dim_matches_the_documented_rule():
    assert fa.FA4_MAX_HEAD_DIM == 80
    policy = FlashAttentionPolicy(fa4=True, devices=("cpu",))
    assert [d for d in (40, 80, 160) if policy.use_fa4(*attention_qkv(d, torch.bfloat16)[:2])] == [40, 80]


# ------------------------------------------------------------- custom op
def test_fake_implementation_shapes_under_fake_tensor_mode():
    with FakeTensorMode():
        q = torch.empty(2, 16, 3, 24).transpose(1, 2).transpose(1, 2)
        k = torch.empty(2, 40, 3, 24)
        v = torch.empty(2, 40, 3, 8)
        out = torch.ops.fastfit.fa4_attention(q, k, v, 0, 0)
        assert out.shape == (2, 16, 3, 8) and out.is_contiguous() and out.dtype == q.dtype


# each custom op of the policy: FA4's (head 8 here) and our Triton kernel's (head 40)
OPS = [({"fa4": True}, 8, "fa4_attention", (0, 0)), ({"triton": True}, 40, "triton_attention", ())]


@pytest.mark.parametrize("switch, head_dim, op, extra", OPS)
def test_custom_op_passes_opcheck_and_matches_reference(switch, head_dim, op, extra):
    q, k, v = attention_qkv(head_dim)
    torch.library.opcheck(getattr(torch.ops.fastfit, op).default, (q, k, v, *extra))
    out = getattr(torch.ops.fastfit, op)(q, k, v, *extra)
    torch.testing.assert_close(out.double(), attention_reference(q, k, v), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("switch, head_dim, op, extra", OPS)
def test_custom_op_stays_in_one_dynamo_graph(switch, head_dim, op, extra):
    """fullgraph=True fails on any graph break; the recording backend shows the op in the graph."""
    policy = FlashAttentionPolicy(devices=("cpu",), **switch)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def block(q, k, v):
        return attention_bshd(q * 2, k, v, policy).reshape(q.shape[0], q.shape[1], -1) + 1

    q, k, v = attention_qkv(head_dim, torch.bfloat16)
    torch._dynamo.reset()
    compiled = torch.compile(block, backend=backend, fullgraph=True, dynamic=False)
    out = compiled(q, k, v)
    assert len(graphs) == 1
    targets = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert any(f"fastfit.{op}" in t for t in targets), targets
    torch.testing.assert_close(out, block(q, k, v))
    # and through AOTAutograd, which runs the fake implementation
    torch._dynamo.reset()
    aot = torch.compile(block, backend="aot_eager", fullgraph=True, dynamic=False)
    torch.testing.assert_close(aot(q, k, v), block(q, k, v))


def test_pipeline_attention_backend_names(models_dir):
    from fastfit_engine.model.pipeline import FastFitPipeline

    pipe = FastFitPipeline.from_pretrained(models_dir / "FastFit-MR-1024", device="cpu", dtype=torch.float32)
    policy = pipe.unet.kv_cache.attention_policy
    assert policy.fa4 is False and policy.sdpa_backends is None  # "auto" on CPU: plain SDPA
    pipe.set_attention_backend("cudnn")
    assert policy.fa4 is False and policy.sdpa_backends[0] == torch.nn.attention.SDPBackend.CUDNN_ATTENTION
    assert pipe.unet.kv_cache.sdpa_backends is policy.sdpa_backends
    with pytest.raises(ValueError, match="cannot run here: not a CUDA device"):
        pipe.set_attention_backend("fa4")
    with pytest.raises(ValueError, match=r"expected one of \['auto', 'cudnn', 'fa4', 'flash', 'sdpa', 'triton'\]"):
        pipe.set_attention_backend("fa3")


# ------------------------------------------------------- compile switch and cache
@pytest.mark.parametrize(
    "value, device, expected",
    [(None, "cuda", True), (None, "cpu", False), ("0", "cuda", False), ("off", "cuda", False),
     ("1", "cpu", True), ("true", "cpu", True), (" ", "cuda", True)],
)
def test_compile_switch(value, device, expected):
    env = {} if value is None else {"FASTFIT_COMPILE": value}
    assert compile_enabled(device, env) is expected


def test_compile_switch_rejects_unknown_values():
    with pytest.raises(ValueError, match="FASTFIT_COMPILE must be 1 or 0 .* got 'maybe'"):
        compile_enabled("cuda", {"FASTFIT_COMPILE": "maybe"})


def test_compile_cache_folder_choice(tmp_path):
    assert compile_cache_dir(tmp_path, {}) == tmp_path / ".compile-cache"
    assert compile_cache_dir(tmp_path, {"FASTFIT_COMPILE_CACHE": str(tmp_path / "cc")}) == tmp_path / "cc"
    assert compile_cache_dir(tmp_path, {"FASTFIT_COMPILE_CACHE": "off"}) is None


def test_use_compile_cache_points_every_cache_at_the_folder(tmp_path, monkeypatch):
    import torch._inductor.config as inductor_config

    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED",
                 "FLASH_ATTENTION_CUTE_DSL_CACHE_DIR"):
        monkeypatch.setenv(name, "unset-by-test")  # restored after the test
    monkeypatch.setattr(inductor_config, "fx_graph_cache", False)
    folder = use_compile_cache(tmp_path / "volume" / "cc")
    assert folder.is_dir()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(folder / "inductor")
    assert os.environ["TRITON_CACHE_DIR"] == str(folder / "triton")
    assert os.environ["FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED"] == "1"
    assert os.environ["FLASH_ATTENTION_CUTE_DSL_CACHE_DIR"] == str(folder / "fa4")
    assert inductor_config.fx_graph_cache is True
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    assert cache_dir() == str(folder / "inductor")


def test_use_compile_cache_unwritable_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match=f"compile cache folder {blocker / 'cc'} is not writable"):
        use_compile_cache(blocker / "cc")


def test_engine_compiles_when_switched_on(models_dir, tmp_path, monkeypatch):
    from conftest import TEST_RESOLUTION

    from fastfit_engine.runtime.engine import FastFitEngine

    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED",
                 "FLASH_ATTENTION_CUTE_DSL_CACHE_DIR"):
        monkeypatch.setenv(name, "unset-by-test")
    monkeypatch.setenv("FASTFIT_COMPILE", "1")
    monkeypatch.setenv("FASTFIT_COMPILE_CACHE", str(tmp_path / "cc"))
    engine = FastFitEngine.from_models_dir(models_dir, device="cpu", resolution=TEST_RESOLUTION, download=False)
    assert engine.compiled is True
    assert (tmp_path / "cc").is_dir() and os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cc" / "inductor")
    pipe = engine.pipeline
    assert pipe._denoise != pipe.unet.forward_denoise  # the compiled step wrapper
    monkeypatch.setenv("FASTFIT_COMPILE", "0")
    eager = FastFitEngine.from_models_dir(models_dir, device="cpu", resolution=TEST_RESOLUTION, download=False)
    assert eager.compiled is False and eager.pipeline._denoise == eager.pipeline.unet.forward_denoise


def test_compiled_step_serves_guided_batches_only(models_dir):
    """Guidance 1.0 (one row) runs the eager step: no request compiles a layout the warm-up skipped."""
    import numpy as np
    from PIL import Image

    from fastfit_engine.model.pipeline import FastFitPipeline

    graphs = []

    def backend(gm, example_inputs):
        graphs.append([tuple(t.shape) for t in example_inputs if isinstance(t, torch.Tensor)])
        return gm.forward

    torch._dynamo.reset()
    pipe = FastFitPipeline.from_pretrained(models_dir / "FastFit-MR-1024", device="cpu", dtype=torch.float32)
    pipe.compile_unet(backend=backend)
    rng = np.random.default_rng(0)
    person = Image.fromarray(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8))
    mask = Image.fromarray(np.full((64, 48), 255, np.uint8))
    refs = [("upper", Image.fromarray(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)))]
    pipe(person, mask, refs, num_inference_steps=1, guidance_scale=1.0)
    assert graphs == []
    pipe(person, mask, refs, num_inference_steps=1, guidance_scale=2.5)
    assert len(graphs) == 1 and any(s[:1] == (2,) and len(s) == 4 for s in graphs[0])


def test_one_compiled_step_serves_every_garment_layout(models_dir):
    """The K/V token dimension is dynamic: a second layout reuses the first graph, and each
    layout's compiled image equals its eager one whichever layout compiled the graph."""
    import numpy as np
    from PIL import Image

    from fastfit_engine.model.pipeline import FastFitPipeline

    graphs = []

    def backend(gm, example_inputs):
        placeholders = [n.meta.get("example_value") for n in gm.graph.nodes if n.op == "placeholder"]
        graphs.append([v for v in placeholders if isinstance(v, torch.SymInt)])
        return gm.forward

    rng = np.random.default_rng(3)
    person = Image.fromarray(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8))
    mask = Image.fromarray(np.full((64, 48), 255, np.uint8))
    full = Image.fromarray(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8))
    half = Image.fromarray(rng.integers(0, 256, (32, 24, 3), dtype=np.uint8))
    layouts = [[("upper", full)], [("upper", full), ("shoe", half)], [("upper", full), ("lower", full), ("bag", half)]]
    eager = FastFitPipeline.from_pretrained(models_dir / "FastFit-MR-1024", device="cpu", dtype=torch.float32)
    expected = [np.asarray(eager(person, mask, refs, num_inference_steps=2, seed=5)) for refs in layouts]
    for order in ([0, 1, 2], [2, 0, 1]):
        torch._dynamo.reset()
        graphs.clear()
        pipe = FastFitPipeline.from_pretrained(models_dir / "FastFit-MR-1024", device="cpu", dtype=torch.float32)
        pipe.compile_unet(backend=backend)
        for i in order:
            out = np.asarray(pipe(person, mask, layouts[i], num_inference_steps=2, seed=5))
            np.testing.assert_array_equal(out, expected[i])
        assert len(graphs) == 1, f"{len(graphs)} graphs for {len(layouts)} layouts"
        assert graphs[0], "no symbolic size in the graph"  # the buffers' token count
