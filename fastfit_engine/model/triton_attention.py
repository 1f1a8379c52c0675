"""Our own attention kernel for the UNet's self-attention shapes (head 40 and 80, no mask), in Triton.

Why: at the top UNet level (batch 2 x 8 heads, 12288 queries x 36864 keys, head 40) one call
needs 7.2e9 exponentials, and an H200's special-function units issue 16 fp32 exp2 per clock per
multiprocessor: 1.7 ms if every exponential goes through them one at a time, more than the two
matrix products need (about 1.2 ms at dense bf16 peak), so a head-40 kernel is bound by the
exponential and the per-score work around it, not by the tensor cores. This kernel is a
flash-attention forward loop (online softmax, fp32 accumulator) over TMA-loaded tiles
(host tensor descriptors on 2-D (batch * tokens, heads * head) views of the fused projection's
slices and the K/V cache buffers: no copies; a tile's columns past the head size belong to the
next head, so Q's are zeroed once and K's then add nothing), with these options per build
(:class:`TritonConfig`):

- ``exp``: "f32" (``exp2``: one MUFU.EX2 per score), "f16x2" (``ex2.approx.f16x2`` through
  inline PTX, ``tl.inline_asm_elementwise`` with pack=2; P and an f16 copy of V go to the
  tensor cores, V's copy carries a column of ones so the accumulator sums P's rows),
  "bf16x2" (``ex2.approx.ftz.bf16x2`` on a bf16 argument: no V copy, but the argument keeps
  only 8 bits);
- ``poly``: a share of the exponentials as a degree-3 polynomial on the FMA pipes;
- ``pipe``: 1, the next key block's Q.K^T issued before this block's softmax, so the tensor
  cores work while the special-function units do (ptxas interleaves the two); 2, the same loop
  unrolled by two so that the scores need no register copies;
- the tile (queries x keys per program), warps and TMA pipeline depth.

On an H200 every build measured (bf16, 2026-12-04) is slower than cuDNN and FA4 at both head
sizes, the best ones as accurate as cuDNN; bench/README.md ("Our Triton attention kernel") has the figures
and why the packed exponential, the polynomial and the unrolled loop did not pay. Hence FA4
stays the default and this kernel is chosen only by ``attention_backend="triton"``.

The kernel is registered as the custom op ``fastfit::triton_attention`` (with a fake
implementation) so torch.compile treats it as opaque; Triton compiles each build on its first
call per shape (the pipeline's warm-up, about 1 s) and keeps it in its cache (``TRITON_CACHE_DIR``,
pointed at the compile-cache volume by compile_cache.py). Its CPU kernel is a plain SDPA
reference for tests on machines without a GPU; the dispatcher never sends CPU tensors there.
``python -m bench.bench_attention --quick`` runs the f32 builds in Triton's interpreter on the CPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

try:  # a dependency of Linux torch wheels; absent elsewhere
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only on platforms without Triton
    triton = None

__all__ = [
    "TRITON_HEAD_DIMS",
    "TRITON_CONFIGS",
    "TritonConfig",
    "kernel",
    "launch",
    "triton_attention",
]

# Head sizes the kernel is built and measured for (the UNet's levels 0 and 1).
TRITON_HEAD_DIMS = (40, 80)


@dataclass(frozen=True)
class TritonConfig:
    """One build of the kernel: exponential variant, tile and pipeline (see the module notes)."""

    exp: str = "f32"  # "f32", "f16x2", "bf16x2"
    block_m: int = 128  # queries per program
    block_n: int = 128  # keys per loop step
    warps: int = 8
    stages: int = 3  # TMA pipeline depth
    poly: int = 0  # share of exponentials on the FMA pipes: 0, 1 (1/4), 2 (1/2); "f32" only
    pipe: int = 0  # 1: issue the next key block's Q.K^T before this block's softmax; 2: that, unrolled by two

    def name(self) -> str:
        flags = ("_poly" + str(self.poly) if self.poly else "") + ("", "_pipe", "_pipe2")[self.pipe]
        return f"{self.exp}{flags}_{self.block_m}x{self.block_n}x{self.warps}x{self.stages}"


# Per head size: the fastest build within cuDNN's accuracy on one H200, 2026-12-04
# (bench/bench_attention.py, upper+lower shapes; numbers in bench/README.md, "Our Triton attention kernel").
TRITON_CONFIGS: dict[int, TritonConfig] = {
    40: TritonConfig("f32", 64, 128, 4, 3, pipe=1),
    80: TritonConfig("f32", 64, 64, 4, 3, pipe=1),
}
EXP_VARIANTS = ("f16x2", "f32", "bf16x2")


def kernel():
    """The Triton kernel (raises ImportError where Triton is not installed)."""
    if triton is None:
        raise ImportError("No module named 'triton'")
    return attention_fwd


if triton is not None:

    @triton.jit
    def _exp2_f16x2(x):
        # two fp32 arguments -> one packed f16x2 register -> ex2.approx.f16x2 (which ptxas for
        # sm_90a still issues as two MUFU.EX2.F16, one per half: bench/README.md)
        return tl.inline_asm_elementwise(
            "{ .reg .b32 t; cvt.rn.f16x2.f32 t, $2, $1; ex2.approx.f16x2 $0, t; }",
            "=r,r,r", [x], dtype=tl.float16, is_pure=True, pack=2,
        )

    @triton.jit
    def _exp2_bf16x2(x):
        return tl.inline_asm_elementwise(
            "{ .reg .b32 t; cvt.rn.bf16x2.f32 t, $2, $1; ex2.approx.ftz.bf16x2 $0, t; }",
            "=r,r,r", [x], dtype=tl.bfloat16, is_pure=True, pack=2,
        )

    @triton.jit
    def _exp2_poly(x):
        # 2**x on the FMA pipes (x <= 0): round x to n (the 1.5 * 2**23 trick), a degree-3 fit of
        # 2**f on [-0.5, 0.5] (relative error 7.5e-5, under bf16's 3.9e-3), n added to the exponent
        x = tl.maximum(x, -126.0)  # at -127 a fit value under 1 would borrow from the sign bit
        t = x + 12582912.0
        f = x - (t - 12582912.0)
        p = f * 0.0551703 + 0.24260802
        p = p * f + 0.69326093
        p = p * f + 0.99992827
        bits = p.to(tl.int32, bitcast=True) + (t.to(tl.int32, bitcast=True) << 23)
        return bits.to(tl.float32, bitcast=True)

    @triton.jit
    def _block(s, start, m_i, l_i, acc, v_desc, v_row, v_col, N, qk_scale, offs_n,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, EXP: tl.constexpr, ROWSUM_MMA: tl.constexpr,
               EVEN_N: tl.constexpr, POLY: tl.constexpr):
        """Online softmax and P.V for one key block whose scores are ``s``."""
        if not EVEN_N:
            s = tl.where(start + offs_n[None, :] < N, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        alpha = tl.math.exp2(m_i - m_new)
        x = s * qk_scale - m_new[:, None]
        if EXP == 1:
            p = _exp2_f16x2(x)
            if not ROWSUM_MMA:
                l_i = l_i * alpha + tl.sum(p.to(tl.float32), 1)
        elif EXP == 2:
            p = _exp2_bf16x2(x)
            l_i = l_i * alpha + tl.sum(p.to(tl.float32), 1)
        else:
            if POLY == 0:
                pf = tl.math.exp2(x)
            else:
                # a share of the exponentials on the FMA pipes: 1/2 (POLY 2) or 1/4 (POLY 1)
                xa, xb = tl.split(tl.reshape(x, [BLOCK_M, BLOCK_N // 2, 2]))
                if POLY == 2:
                    pb = _exp2_poly(xb)
                else:
                    xb0, xb1 = tl.split(tl.reshape(xb, [BLOCK_M, BLOCK_N // 4, 2]))
                    pb = tl.reshape(tl.join(tl.math.exp2(xb0), _exp2_poly(xb1)), [BLOCK_M, BLOCK_N // 2])
                pf = tl.reshape(tl.join(tl.math.exp2(xa), pb), [BLOCK_M, BLOCK_N])
            l_i = l_i * alpha + tl.sum(pf, 1)
            p = pf.to(v_desc.dtype)
        acc = acc * alpha[:, None]
        v = v_desc.load([v_row + start, v_col])
        if not EVEN_N:
            v = tl.where(start + offs_n[:, None] < N, v, 0.0).to(v_desc.dtype)
        acc = tl.dot(p, v, acc)
        return m_new, l_i, acc

    @triton.jit
    def attention_fwd(
        q_desc, k_desc, v_desc, O,
        sob, som, soh,
        M, N, H, qk_scale,
        HEAD: tl.constexpr, DP: tl.constexpr, DV: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        EXP: tl.constexpr, ROWSUM_MMA: tl.constexpr, EVEN_N: tl.constexpr, V_PER_HEAD: tl.constexpr,
        POLY: tl.constexpr, PIPE: tl.constexpr,
    ):
        # q_desc/k_desc: 2-D (batch * tokens, heads * head) views; a tile's columns past HEAD belong
        # to the next head (or lie past the row: zeros), so Q's are zeroed once and K's then add nothing.
        # v_desc: the same view (bf16 variants) or the f16 copy as (batch * heads * keys, DV).
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, DP)
        offs_dv = tl.arange(0, DV)
        offs_n = tl.arange(0, BLOCK_N)
        q = q_desc.load([b * M + pid_m * BLOCK_M, h * HEAD])
        q = tl.where(offs_d[None, :] < HEAD, q, 0.0).to(q_desc.dtype)
        k_row = b * N
        if V_PER_HEAD:
            v_row = bh * N
            v_col = 0
        else:
            v_row = b * N
            v_col = h * HEAD
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, DV], tl.float32)
        if PIPE == 2:  # pipelined and unrolled by two: s_a and s_b alternate, no register copies
            s_a = tl.dot(q, k_desc.load([k_row, h * HEAD]).T)
            for start in range(0, N, 2 * BLOCK_N):
                s_b = tl.dot(q, k_desc.load([k_row + start + BLOCK_N, h * HEAD]).T)
                m_i, l_i, acc = _block(s_a, start, m_i, l_i, acc, v_desc, v_row, v_col, N, qk_scale, offs_n,
                                       BLOCK_M, BLOCK_N, EXP, ROWSUM_MMA, EVEN_N, POLY)
                # past the last block this reads the next batch's keys (or zeros): unused
                s_a = tl.dot(q, k_desc.load([k_row + start + 2 * BLOCK_N, h * HEAD]).T)
                m_i, l_i, acc = _block(s_b, start + BLOCK_N, m_i, l_i, acc, v_desc, v_row, v_col, N, qk_scale,
                                       offs_n, BLOCK_M, BLOCK_N, EXP, ROWSUM_MMA, EVEN_N, POLY)
        else:
            if PIPE:  # Q.K^T of the next key block is issued before this block's softmax
                s_next = tl.dot(q, k_desc.load([k_row, h * HEAD]).T)
            for start in range(0, N, BLOCK_N):
                if PIPE:
                    s = s_next
                    s_next = tl.dot(q, k_desc.load([k_row + start + BLOCK_N, h * HEAD]).T)
                else:
                    s = tl.dot(q, k_desc.load([k_row + start, h * HEAD]).T)
                m_i, l_i, acc = _block(s, start, m_i, l_i, acc, v_desc, v_row, v_col, N, qk_scale, offs_n,
                                       BLOCK_M, BLOCK_N, EXP, ROWSUM_MMA, EVEN_N, POLY)
        if ROWSUM_MMA:
            l_i = tl.sum(tl.where(offs_dv[None, :] == HEAD, acc, 0.0), 1)
        out = acc / l_i[:, None]
        tl.store(
            O + b * sob + h * soh + offs_m[:, None] * som + offs_dv[None, :],
            out.to(O.dtype.element_ty),
            mask=(offs_m[:, None] < M) & (offs_dv[None, :] < HEAD),
        )



def _pow2(n: int) -> int:
    return 1 << (max(n, 16) - 1).bit_length()


def f16_values_with_ones(v: torch.Tensor) -> torch.Tensor:
    """V (batch, keys, heads, head) -> f16 (batch, heads, keys, DV) with column ``head`` all ones."""
    batch, keys, heads, head = v.shape
    out = torch.zeros(batch, heads, keys, _pow2(head + 1), device=v.device, dtype=torch.float16)
    out[..., :head] = v.transpose(1, 2)
    out[..., head] = 1.0
    return out


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(batch, tokens, heads, head) -> a 2-D (batch * tokens, heads * head) view, copying only if
    the layout has no such view (the fused projection's slices and the K/V buffers do)."""
    batch, tokens, heads, head = t.shape
    if (t.stride(3) != 1 or t.stride(2) != head or t.stride(0) != tokens * t.stride(1)
            or (t.stride(1) * t.element_size()) % 16 or t.data_ptr() % 16):
        t = t.contiguous()
    return t.as_strided((batch * tokens, heads * head), (t.stride(1), 1))


def launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config: TritonConfig | None = None) -> torch.Tensor:
    """Run the kernel: (batch, tokens, heads, head) in, a fresh contiguous tensor of that layout out."""
    from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: PLC0415

    batch, m, heads, head = q.shape
    n = k.shape[1]
    config = config or TRITON_CONFIGS.get(head) or TritonConfig(block_n=64)
    exp, block_m, block_n = config.exp, config.block_m, config.block_n
    if exp not in EXP_VARIANTS:
        raise ValueError(f"unknown exponential variant {exp!r}; expected one of {EXP_VARIANTS}")
    out = q.new_empty(q.shape)
    exp_id = {"f32": 0, "f16x2": 1, "bf16x2": 2}[exp]
    dp = _pow2(head)
    q2, k2 = _rows(q), _rows(k)
    if exp == "f16x2":
        v2 = f16_values_with_ones(v)
        dv, rowsum, per_head = v2.shape[-1], 1, True
        v2 = v2.view(-1, dv)
    else:
        v2, dv, rowsum, per_head = _rows(v), dp, 0, False
    q_desc = TensorDescriptor.from_tensor(q2, [block_m, dp])
    k_desc = TensorDescriptor.from_tensor(k2, [block_n, dp])
    v_desc = TensorDescriptor.from_tensor(v2, [block_n, dv])
    grid = (triton_cdiv(m, block_m), batch * heads)
    kernel()[grid](
        q_desc, k_desc, v_desc, out,
        out.stride(0), out.stride(1), out.stride(2),
        m, n, heads, math.log2(math.e) / math.sqrt(head),
        HEAD=head, DP=dp, DV=dv, BLOCK_M=block_m, BLOCK_N=block_n,
        EXP=exp_id, ROWSUM_MMA=rowsum, EVEN_N=n % (2 * block_n if config.pipe == 2 else block_n) == 0, V_PER_HEAD=per_head,
        POLY=config.poly, PIPE=config.pipe,
        num_warps=config.warps, num_stages=config.stages,
    )
    return out


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


@torch.library.custom_op("fastfit::triton_attention", mutates_args=(), device_types="cuda")
def triton_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over (batch, tokens, heads, head size) tensors, no mask."""
    return launch(q, k, v)


@triton_attention.register_kernel("cpu")
def _triton_attention_cpu(q, k, v):
    # reference semantics for tests on machines without a GPU; never chosen by attention_bshd
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2).contiguous()


@triton_attention.register_fake
def _triton_attention_fake(q, k, v):
    return q.new_empty(q.shape)
