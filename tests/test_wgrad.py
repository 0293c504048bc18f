"""kernels.wgrad (C = aᵀ b reduced over the rows in one launch) against reference/wgrad.py in float64.
CPU: Triton interpreter, fp32 and fp16 (bf16 dots are not exact there), sizes that are no multiple of the tiles,
strided views, ``out=`` row blocks of a larger buffer, NaN-prefilled outputs, one split and several (the in-kernel
reduction and its counters), bit-identical repeats, bad input. GPU: bf16 at the models' shapes, CUDA-graph capture."""
from __future__ import annotations

import importlib

import pytest
import torch

import kernels  # noqa: F401
from groundthink.harness import bound_for, check_op, rel_err
from kernels import _colsum
from kernels.wgrad import wgrad
from reference.wgrad import wgrad as ref

K = importlib.import_module("kernels.wgrad.wgrad")


@pytest.fixture(autouse=True)
def kernel_everywhere(monkeypatch):
    """The kernel at every shape (the shape rule sends 2-D calls and big outputs to torch.mm; its own test below)."""
    monkeypatch.setitem(K.TUNING, "two_d", True)
    monkeypatch.setitem(K.TUNING, "cublas_at", 1 << 62)


@pytest.fixture
def tiny_tiles(monkeypatch):
    """Tiles of 16 and splits of ≥ 16 rows: several tiles and several splits at interpreter sizes."""
    monkeypatch.setitem(K.TUNING, "small", (16, 16, 16, 4))
    monkeypatch.setitem(K.TUNING, "big", (32, 32, 16, 4))
    monkeypatch.setitem(K.TUNING, "min_rows", 16)
    monkeypatch.setitem(K.TUNING, "waves", 16)
    monkeypatch.setitem(K.TUNING, "fin", 256)         # the wide finish in several [8, 32] loads per level


def _pair(R, M, N, G=0, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lead = (G,) if G else ()
    return (torch.randn(*lead, R, M, generator=gen).to(dtype), torch.randn(*lead, R, N, generator=gen).to(dtype))


def _check(c, a, b, dtype):
    want = ref(a.double(), b.double())
    err = rel_err(c, want)
    assert err <= bound_for(dtype), err


@pytest.mark.parametrize("R,M,N,G", [(70, 24, 40, 0), (129, 17, 33, 0), (45, 16, 33, 3), (200, 40, 20, 0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kernel_matches_float64(tiny_tiles, R, M, N, G, dtype):
    a, b = _pair(R, M, N, G, dtype)
    plan = K._plan(R, M, N, max(G, 1), a.device)
    assert plan[4] > 1                                  # the in-kernel reduction runs
    inputs = {"a": a, "b": b, "out": torch.full((*a.shape[:-2], M, N), float("nan"), dtype=dtype)}
    check_op(wgrad, ref, inputs, bound=bound_for(dtype), context=f"R{R} M{M} N{N} G{G} {dtype}")
    assert wgrad(a, b).dtype == dtype


@pytest.mark.parametrize("finish,flat", [("wide", 1), ("wide", 64), ("coope", 8)])
def test_finish_variants_exact_deterministic_counters(tiny_tiles, monkeypatch, finish, flat):
    """The wide finish in two levels (flat 1: groups of ~√split, a last group smaller than the others) and in one
    (flat 64: the tile's last program sums all split rows) and the coope finish (every program sums its own
    columns of all split rows; the interpreter in two launches):
    fp64 error, NaN-prefilled out, 13 splits (arrival groups of 3, the last of 1), a second call bit-identical,
    every counter back at zero."""
    monkeypatch.setitem(K.TUNING, "finish", finish)
    monkeypatch.setitem(K.TUNING, "flat", flat)
    monkeypatch.setitem(K.TUNING, "waves", 32)
    monkeypatch.setitem(K.TUNING, "fin", 256)         # wide: [8, 32] loads, two of them for 13 rows
    monkeypatch.setitem(K.TUNING, "coop_cols", 16)    # coope: 16 column blocks over 13 programs
    monkeypatch.setattr(K, "num_sms", lambda device: 128)   # coope: the grid within one wave of 128 "SMs"
    a, b = _pair(208, 20, 18, 0, torch.float16, seed=5)
    split = K._plan(208, 20, 18, 1, a.device)[4]
    two, GS, NG, _ = K._levels(split)
    assert split >= 9 and two == (flat == 1 and finish == "wide")
    assert split % GS != 0 or not two                   # a last group smaller than the others
    out = torch.full((20, 18), float("nan"), dtype=torch.float16)
    check_op(wgrad, ref, {"a": a, "b": b, "out": out}, bound=bound_for(torch.float16), context=finish)
    ep = K._epochs(a.device).clone()
    c1, c2 = wgrad(a, b), wgrad(a, b)
    assert torch.equal(c1, c2)
    assert int(_colsum._CACHE[torch.device("cpu")].abs().sum()) == 0
    moved = K._epochs(a.device) - ep                    # coope: each of the 4 tiles' epochs one per call
    assert torch.equal(moved[:4], torch.full((4,), 2 if finish == "coope" else 0, dtype=torch.int32))
    assert not moved[4:].any()


def test_an_unknown_finish_is_one_line(monkeypatch):
    """A TUNING finish that is not one of FINISHES (run 19's "tree", the "coop" twin: removed) is named."""
    monkeypatch.setitem(K.TUNING, "finish", "tree")
    with pytest.raises(ValueError, match="TUNING finish 'tree'; accepted: wide, coope"):
        K._levels(13)


@pytest.mark.parametrize("waves", [1, 2])
def test_coop_grid_within_one_wave(monkeypatch, waves):
    """The coope finish waits for every program of a tile: at every benchmark shape and tile choice the grid fits
    in coop_waves programs per SM of a 132-SM GPU (all programs resident at once), and still splits the rows where
    it can."""
    from groundthink.spec import get
    monkeypatch.setitem(K.TUNING, "finish", "coope")
    monkeypatch.setitem(K.TUNING, "coop_waves", waves)
    monkeypatch.setattr(K, "num_sms", lambda device: 132)
    for big_at in (K.TUNING["big_at"], 0):
        monkeypatch.setitem(K.TUNING, "big_at", big_at)
        for R, M, N, G in get("wgrad").bench.shapes():
            BM, BN, _, _, split, _ = K._plan(R, M, N, max(G, 1), torch.device("cpu"))
            tiles = max(G, 1) * -(-M // BM) * -(-N // BN)
            assert split * tiles <= max(132 * waves, tiles) and (split > 1 or tiles > 66 * waves), \
                (R, M, N, G, split, tiles)


def test_one_split_stores_directly():
    """Default tiles at a small R: one program per tile along the rows, no workspace."""
    a, b = _pair(100, 30, 20)
    assert K._plan(100, 30, 20, 1, a.device)[4] == 1
    _check(wgrad(a, b), a, b, torch.float32)


def test_strided_views_and_out_row_block(tiny_tiles):
    """a and b column slices of wider matrices (row stride ≠ width), C written into a row block of a NaN buffer
    (fp32 out from fp16 inputs); the rest of the buffer untouched."""
    wide_a = torch.randn(90, 50).half()
    wide_b = torch.randn(90, 41).half()
    a, b = wide_a[:, 7:31], wide_b[:, 3:40]
    buf = torch.full((60, 37), float("nan"))
    got = wgrad(a, b, out=buf[10:34])
    assert got.data_ptr() == buf[10:34].data_ptr()
    _check(buf[10:34], a, b, torch.float16)
    assert buf[:10].isnan().all() and buf[34:].isnan().all()


def test_batched_strided_groups(tiny_tiles):
    """lowrank's dW2: h [M, G·R]'s column groups as a strided [G, M, R] view against dy [G, M, N]."""
    h = torch.randn(53, 3 * 8)
    dy = torch.randn(3, 53, 20)
    a = h.view(53, 3, 8).transpose(0, 1)
    _check(wgrad(a, dy), a, dy, torch.float32)


def test_deterministic_and_counters_reset(tiny_tiles):
    a, b = _pair(150, 40, 24, 0, torch.float16, seed=3)
    c1, c2 = wgrad(a, b), wgrad(a, b)
    assert torch.equal(c1, c2)
    buf = _colsum._CACHE[torch.device("cpu")]
    assert int(buf.abs().sum()) == 0                    # every arrival counter back at zero


def test_shape_rule_hands_big_outputs_to_torch_mm(monkeypatch):
    a, b = _pair(30, 12, 10)
    assert K._use_kernel(a, b)
    monkeypatch.setitem(K.TUNING, "cublas_at", 120)
    assert not K._use_kernel(a, b)
    torch.testing.assert_close(wgrad(a, b), a.t() @ b, rtol=0, atol=0)


def test_shape_rule_as_committed(monkeypatch):
    """TUNING as committed (run 19): 2-D calls to torch.mm, batched ones below cublas_at to the kernel."""
    monkeypatch.setitem(K.TUNING, "two_d", False)
    monkeypatch.setitem(K.TUNING, "cublas_at", 32768)
    assert not K._use_kernel(*_pair(30, 12, 10))
    assert K._use_kernel(*_pair(30, 32, 128, G=5))
    assert not K._use_kernel(*_pair(30, 32, 512, G=5))


def test_edge_sizes_and_float64():
    a, b = _pair(0, 5, 7)
    assert torch.equal(wgrad(a, b, out=torch.full((5, 7), float("nan"))), torch.zeros(5, 7))
    a, b = _pair(20, 6, 9, dtype=torch.float64)        # float64: torch.mm (the oracle's own product)
    assert torch.equal(wgrad(a, b), a.t() @ b)


@pytest.mark.parametrize("args,match", [
    ((torch.zeros(4, 3), torch.zeros(5, 3)), "same leading dimensions"),
    ((torch.zeros(4), torch.zeros(4)), "same leading dimensions"),
    ((torch.zeros(4, 3), torch.zeros(4, 2, dtype=torch.float16)), "share one dtype"),
    ((torch.zeros(4, 3, dtype=torch.int32), torch.zeros(4, 2, dtype=torch.int32)), "accepted: float16"),
    ((torch.zeros(4, 3), torch.zeros(4, 2), torch.zeros(2, 3)), "out must have shape"),
])
def test_bad_input_is_one_line(args, match):
    for fn in (wgrad, ref):
        with pytest.raises(ValueError, match=match):
            fn(*args)


# ------------------------------------------------------------------------------------------- GPU only

@pytest.mark.gpu
@pytest.mark.parametrize("finish", ["wide", "coope"])
def test_models_shapes_bf16_and_cuda_graph(monkeypatch, finish):
    """bf16 at every benchmark shape (the models' dW; the kernel, the cuBLAS shape rule off) vs float64 within the
    bf16 bound; then one call captured in a
    CUDA graph and replayed twice on new inputs: equal to the eager call, bit for bit."""
    from groundthink.spec import get
    spec = get("wgrad")
    monkeypatch.setitem(K.TUNING, "cublas_at", 1 << 62)
    monkeypatch.setitem(K.TUNING, "finish", finish)
    for shp in spec.bench.shapes():
        kw = spec.bench.make_inputs(*spec.bench.err_shape(*shp), False, dtype=torch.bfloat16, device="cuda")
        c = wgrad(**kw)
        want = ref(kw["a"].double(), kw["b"].double())
        assert rel_err(c, want) <= bound_for(torch.bfloat16), (shp, rel_err(c, want))
    kw = spec.bench.make_inputs(16384, 128, 128, 0, False, dtype=torch.bfloat16, device="cuda")
    wgrad(**kw)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        wgrad(**kw)
    for seed in (1, 2):
        new = spec.bench.make_inputs(16384, 128, 128, 0, False, dtype=torch.bfloat16, seed=seed, device="cuda")
        kw["a"].copy_(new["a"])
        kw["b"].copy_(new["b"])
        g.replay()
        torch.cuda.synchronize()
        assert torch.equal(kw["out"], wgrad(new["a"], new["b"]))


def test_model_gradients_through_the_kernel():
    """A tiny GF-MH model (fp32, one layer) whose projections' dW go to the lab kernel (ops.wgrad = triton, every
    other op its reference): the same loss, every gradient within the fp32 bound of the all-reference model's; the
    kernel is called 5 times (r, k, v, g as one batch of four — fused.projections.stacked_proj's default backward;
    in_proj + gate: z, xBC, the narrow group; the embedding — the plain nn.Linear layers keep autograd's dW)."""
    from fused import get_model
    from groundthink.registry import resolve
    calls = []
    real = K.wgrad
    runs = []
    for ops in (resolve("reference"), resolve("reference", overrides={"wgrad": "triton"})):
        if ops.choices["wgrad"].impl == "triton":
            ops.choices["wgrad"].fn = lambda *a, **k: calls.append(1) or real(*a, **k)
        torch.manual_seed(0)
        m = get_model("GF-MH", "tiny", vocab_size=11, ops=ops, n_layer=1)
        idx = torch.randint(0, 11, (2, 17), generator=torch.Generator().manual_seed(0))
        _, loss = m(idx[:, :-1], idx[:, 1:])
        loss.backward()
        runs.append((loss.detach(), {n: p.grad for n, p in m.named_parameters()}))
    (l1, g1), (l2, g2) = runs
    assert torch.equal(l1, l2) and len(calls) == 5
    for n in g1:
        assert rel_err(g2[n], g1[n].double()) <= bound_for(torch.float32), n


def test_the_gate_measures_the_steps_call():
    """The qualification's row of one step call (b a saved activation that still says requires_grad; the op has
    no backward: its step is the call alone): timed, and its error vs float64 within the fp32 bound."""
    from groundthink import gate
    from groundthink.calls import Call
    from groundthink.spec import get
    spec = get("wgrad")
    call = Call("wgrad", (40, 24, 16, 0), (("b", "grad", "True"),))
    row = gate.measure(spec, "triton", wgrad, call, "cpu")
    assert row["ms"] is not None and row["note"] == "", row["note"]
    assert row["errors"] and max(row["errors"].values()) <= bound_for(torch.float32), row["errors"]


@pytest.mark.gpu
def test_fp32_at_train_precision():
    """train.py's fp32 calls (the embedding's one-hot GEMM over the fp32 dh) under its "high" matmul precision:
    tf32x3 dots, within the fp32 bound vs float64 (what the gate checks)."""
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        g = torch.Generator(device="cuda").manual_seed(0)
        a = (torch.rand(16384, 97, generator=g, device="cuda") < 0.01).float()
        b = torch.randn(16384, 128, generator=g, device="cuda")
        assert K._prec(a.dtype) == "tf32x3"
        assert rel_err(wgrad(a, b), ref(a.double(), b.double())) <= bound_for(torch.float32)
    finally:
        torch.set_float32_matmul_precision(old)
