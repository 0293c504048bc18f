"""``mma``: ``tl.dot`` whose "tf32" rounds fp32 operands to the nearest tf32 value (the tensor cores truncate them).

A "tf32" dot of fp32 operands runs on the tensor cores, which read each operand with 10 of its 23 mantissa bits:
Hopper's ``wgmma`` (and Ampere's ``mma``) *ignore* the low 13 bits — a truncation toward zero. Its error is up to
2^-10 relative and biased (mean ≈ −2^-11 per operand), so along the dot's inner dimension it adds up coherently
instead of averaging out. ``mma(a, b, PREC)`` with PREC = "tf32" rounds each fp32 operand to nearest first
(``cvt.rna.tf32.f32``, one instruction per element, in registers before the operand goes to the tensor cores):
at most 2^-11, unbiased; an operand the caller marks exact (``A_EXACT`` / ``B_EXACT``: values of a bf16 / fp16
input, which tf32 holds exactly) is left alone. wkv6 on one H200 (run 27, bf16, 8 draws B2 T150 H2 K32 V96
strong decay): dw's error vs float64 max 2.147e-3 / median 1.828e-3 truncated, 1.825e-3 / 1.730e-3 rounded
(its bf16 rounding floor: max 1.815e-3), o's 1.79e-3 → 1.70e-3; fwd+bwd at B8 T4096 H32 5.517 → 5.880 ms
(do_bench). The CPU interpreter, its dots made to truncate or round like this, gives the same errors to four
digits (notes/wkv6.md, session 23).

PREC: "tf32" (rounded operands; half operands — bf16 / fp16 — are exact in tf32 and go in as they are),
"tf32_trunc" (the hardware's own truncating read: kept to measure the difference), "ieee" / "tf32x3" (``tl.dot``'s
own). Under the interpreter "tf32" rounds the operands the same way (by bits: no PTX there) before numpy's fp32
matmul, so the CPU tests see the GPU's numerics; "tf32_trunc" there is numpy's exact fp32 matmul.
"""
import triton
import triton.language as tl

from kernels import INTERPRET

_PTX = tl.constexpr(not INTERPRET)


@triton.jit
def _rna_tf32(x):
    """x (fp32) rounded to the nearest tf32 value (10 mantissa bits, ties away from zero), as fp32: one PTX
    ``cvt.rna.tf32.f32`` on the GPU; under the interpreter the same by bits (half an ulp of tf32 added to the
    magnitude bits, the low 13 cleared; overflow to ±inf; a NaN's low 13 bits cleared, as the H200 does: a NaN
    whose payload sits only there becomes ±inf — still non-finite, like the tensor cores' own truncating read of it;
    run 28, ``tests/test_dot.py::test_mma_on_the_gpu``)."""
    if _PTX:
        y = tl.inline_asm_elementwise("cvt.rna.tf32.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True,
                                      pack=1)
    else:
        u = x.to(tl.uint32, bitcast=True)
        y = tl.where(x == x, (u + 0x1000) & 0xFFFFE000, u & 0xFFFFE000).to(tl.float32, bitcast=True)
    return y


@triton.jit
def mma(a, b, PREC: tl.constexpr, A_EXACT: tl.constexpr = False, B_EXACT: tl.constexpr = False):
    """tl.dot(a, b) ([M, K] · [K, N], fp32 accumulator) at PREC (module docstring). A_EXACT / B_EXACT: that operand
    holds values of a half-precision input (exact in tf32), so "tf32" leaves it as it is (no instruction spent)."""
    if PREC == "tf32_trunc":
        c = tl.dot(a, b, input_precision="tf32")
    else:
        if PREC == "tf32":
            if a.dtype == tl.float32 and not A_EXACT:
                a = _rna_tf32(a)
            if b.dtype == tl.float32 and not B_EXACT:
                b = _rna_tf32(b)
        c = tl.dot(a, b, input_precision=PREC)
    return c
