"""``kernels._dot``: the round-to-nearest tf32 read of fp32 dot operands (CPU interpreter: by bits; GPU: the PTX
``cvt.rna.tf32.f32`` and the tensor cores' own truncating read, ``test_mma_on_the_gpu``), and ``tensor_core_reads``:
the interpreter made to read "tf32" dot operands as Hopper's tensor cores do, for tests that pin the GPU's numerics
on the CPU."""
import contextlib

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

from kernels import INTERPRET
from kernels._dot import _rna_tf32, mma

interpreter = pytest.mark.skipif(not INTERPRET, reason="the interpreter's path (the GPU's is PTX)")


@contextlib.contextmanager
def tensor_core_reads():
    """Inside: the interpreter's "tf32" dots drop the low 13 mantissa bits of fp32 operands (``wgmma`` with .tf32
    "will truncate lower 13 bits of the 32-bit input data", PTX ISA), and fp32 → bf16 casts round to nearest even as
    the GPU's do (the interpreter's own truncate). With both, wkv6's errors at bf16 match the H200's to four digits
    (run 27: dw max 2.147e-3 / median 1.828e-3 over 8 draws, either way)."""
    from triton._C.libtriton import ir
    from triton.runtime import interpreter as I

    builder = I.InterpreterBuilder
    dot, cast = builder.create_dot, builder.cast_impl

    def trunc(h):
        if h.data.dtype != np.float32:
            return h
        return I.TensorHandle((h.data.view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32), h.dtype)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if input_precision == ir.INPUT_PRECISION.TF32:
            a, b = trunc(a), trunc(b)
        return dot(self, a, b, d, input_precision, max_num_imprecise_acc)

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            t = torch.from_numpy(np.ascontiguousarray(src.data, dtype=np.float32)).to(torch.bfloat16)
            return I.TensorHandle(t.view(torch.int16).numpy().view(np.uint16), tl.bfloat16)
        return cast(self, src, dst_type)

    saved = {n: builder.__dict__[n] for n in ("create_dot", "cast_impl", "create_fp_trunc")}
    builder.create_dot, builder.cast_impl = create_dot, cast_impl
    builder.create_fp_trunc = lambda self, src, dst_type: cast_impl(self, src, dst_type)
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(builder, n, f)


def _rna_reference(x: np.ndarray) -> np.ndarray:
    """Nearest tf32 value, ties away from zero, computed on the bits in int64 (no wrap-around): ±inf kept, finite
    values past the largest tf32 go to ±inf, a NaN has its low 13 bits cleared (the H200's cvt.rna.tf32.f32, run 28:
    0x7F800001 → +inf; a NaN with a payload bit above them stays a NaN)."""
    bits = x.view(np.uint32).astype(np.int64)
    mag = bits & 0x7FFFFFFF
    out = ((mag + 0x1000) & 0x7FFFE000) | (bits & 0x80000000)
    overflow = np.where(mag + 0x1000 >= 0x7F800000, (bits & 0x80000000) | 0x7F800000, out)
    out = np.where(mag > 0x7F800000, bits & 0xFFFFE000, np.where(mag == 0x7F800000, bits, overflow))
    return out.astype(np.uint32).view(np.float32)


@triton.jit
def _rna_kernel(x_ptr, y_ptr, N: tl.constexpr):
    o = tl.arange(0, N)
    tl.store(y_ptr + o, _rna_tf32(tl.load(x_ptr + o)))


@triton.jit
def _mma_kernel(a_ptr, b_ptr, c_ptr, M: tl.constexpr, N: tl.constexpr, PREC: tl.constexpr, B_EXACT: tl.constexpr):
    o_m, o_n = tl.arange(0, M), tl.arange(0, N)
    b_a = tl.load(a_ptr + o_m[:, None] * N + o_n[None, :])
    b_b = tl.load(b_ptr + o_m[:, None] * N + o_n[None, :])
    tl.store(c_ptr + o_m[:, None] * N + o_n[None, :], mma(b_a, b_b, PREC, B_EXACT=B_EXACT))


def _rna_inputs():
    """4,096 fp32 values: random magnitudes over 2^±120, the specials, ties and subnormals, NaN payloads, zeros."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, generator=g) * torch.exp2(torch.randint(-120, 120, (4000,), generator=g).float())
    special = torch.tensor([float("nan"), -float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 3.4e38, -3.4e38,
                            1 + 2 ** -11, 1 + 3 * 2 ** -11, -(1 + 2 ** -11), 1 + 2 ** -12, 1e-40, -1e-42])
    bits = torch.tensor([0x7FFFFFFF, 0xFFFFFFFF, 0x7F800001, 0x7FC00000], dtype=torch.int64).to(torch.int32)
    return torch.cat([x, special, bits.view(torch.float32), torch.zeros(78)])


def _check_rna(x, y):
    ref = _rna_reference(x.numpy())
    nan = np.isnan(ref)
    assert np.array_equal(np.isnan(y.numpy()), nan)                      # no NaN made, none lost but 0x7F800001's
    assert np.isinf(ref[4014 + 2]) and np.isnan(ref[4014 + 3]) and np.isnan(ref[4014 + 0])
    assert np.array_equal(y.numpy()[~nan].view(np.uint32), ref[~nan].view(np.uint32))
    assert (y.numpy()[~nan].view(np.uint32) & 0x1FFF == 0).all()          # 10 mantissa bits left
    assert y[4000 + 8] == 1 + 2 ** -10 and y[4000 + 9] == 1 + 2 ** -9    # ties away from zero
    assert y[4000 + 11] == 1.0                                            # below half an ulp: down


@interpreter
def test_rna_tf32_rounds_to_nearest_ties_away_and_keeps_specials():
    x = _rna_inputs()
    y = torch.full_like(x, 7.0)
    _rna_kernel[(1,)](x, y, 4096)
    _check_rna(x, y)


@interpreter
@pytest.mark.parametrize("prec,b_exact", [("tf32", False), ("tf32", True), ("tf32_trunc", False), ("ieee", False)])
def test_mma_reads_its_operands_as_said(prec, b_exact, request):
    """"tf32": the dot of both operands rounded to tf32 (B as it is when marked exact); "tf32_trunc" and "ieee"
    under the interpreter: the fp32 dot itself (under ``--tensor-core-reads``, "tf32_trunc" and an operand left
    as it is are read truncated, as the tensor cores read them)."""
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(16, 16, generator=g), torch.randn(16, 16, generator=g)
    c = torch.full((16, 16), float("nan"))
    _mma_kernel[(1,)](a, b, c, 16, 16, PREC=prec, B_EXACT=b_exact)
    rna = lambda t: torch.from_numpy(_rna_reference(t.numpy())).double()  # noqa: E731
    trunc = request.config.getoption("--tensor-core-reads")
    raw = lambda t: (t.view(torch.int32) & ~0x1FFF).view(torch.float32).double() if trunc else t.double()  # noqa
    if prec == "tf32":
        want = rna(a) @ (raw(b) if b_exact else rna(b))
    elif prec == "tf32_trunc":
        want = raw(a) @ raw(b)
    else:
        want = a.double() @ b.double()
    assert torch.allclose(c.double(), want, rtol=1e-6, atol=1e-6)
    if prec == "tf32":
        assert not torch.allclose(c.double(), a.double() @ b.double(), rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET or not torch.cuda.is_available(), reason="needs a GPU (compiled kernels)")
@pytest.mark.parametrize("n", [16, 64])
def test_mma_on_the_gpu(n):
    """On the GPU: ``cvt.rna.tf32.f32`` gives the reference's bits (specials included); a "tf32_trunc" dot equals
    the fp64 dot of the operands with their low 13 mantissa bits cleared (the tensor cores' read: what
    ``tensor_core_reads`` emulates — n 64 takes Hopper's wgmma, 16 the mma.sync path), "tf32" the dot of the operands
    rounded to nearest (an exact-marked operand read truncated by the hardware), "ieee" the fp32 dot."""
    x = _rna_inputs()
    y = torch.full_like(x, 7.0, device="cuda")
    _rna_kernel[(1,)](x.cuda(), y, 4096)
    _check_rna(x, y.cpu())
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    rna = lambda t: torch.from_numpy(_rna_reference(t.numpy())).double()  # noqa: E731
    trunc = lambda t: (t.view(torch.int32) & ~0x1FFF).view(torch.float32).double()  # noqa: E731
    want = {("tf32", False): rna(a) @ rna(b), ("tf32", True): rna(a) @ trunc(b),
            ("tf32_trunc", False): trunc(a) @ trunc(b), ("ieee", False): a.double() @ b.double()}
    for (prec, b_exact), ref in want.items():
        c = torch.full((n, n), float("nan"), device="cuda")
        _mma_kernel[(1,)](a.cuda(), b.cuda(), c, n, n, PREC=prec, B_EXACT=b_exact)
        err = ((c.cpu().double() - ref).abs().max() / ref.abs().max()).item()
        assert err < 1e-6, f"{prec} (b exact {b_exact}): max error {err:.2e} vs its model (n {n})"
    other = trunc(a) @ trunc(b)       # the models are told apart: rounding and truncation differ by ~1e-3
    assert ((rna(a) @ rna(b) - other).abs().max() / other.abs().max()).item() > 1e-4
