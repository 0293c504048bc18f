"""kernels._colsum: the glue ops' parameter gradients finished inside their backward kernels by the last program
to arrive. Correctness against float64 and run-to-run determinism are in each op's own tests; here: the two-level
sum itself (partial groups), and the arrival counters back at zero after every backward (a replayed CUDA graph
relies on it), for grids with several programs and column blocks (interpreter: 2 programs, 32-wide column
blocks). GPU: the finish under load and under CUDA-graph replay."""
from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

import kernels  # noqa: F401
from kernels._colsum import arrive_tree, counters, finish_columns, tree
from kernels.ddlerp import ddlerp
from kernels.decay_exp import decay_exp
from kernels.lowrank import lowrank
from kernels.gate_norm_residual import gate_norm_residual
from kernels.norm_gate import norm_gate
from kernels.shift_lerp import shift_lerp


@triton.jit
def _tree_sum_kernel(p_rows, p_part, p_out, p_count, W, n_progs, GS, NG, BP: tl.constexpr, BC: tl.constexpr):
    # p_rows, p_part: [n_progs, W] fp32 (rows in, workspace); p_out: [W]; every program stores its row, then the
    # two-level finish
    pid = tl.program_id(0)
    o = tl.arange(0, BC)
    for c in range(0, W, BC):
        m = c + o < W
        tl.store(p_part + pid * W + c + o, tl.load(p_rows + pid * W + c + o, mask=m), mask=m)
    if arrive_tree(p_part, W, p_count, pid, n_progs, GS, NG, 0, W, 1, 0, BP, BC):
        finish_columns(p_part, GS * W, NG, p_out, 0, W, BP, BC)


@pytest.mark.parametrize("n_progs", [1, 7, 10])
def test_two_level_sum(n_progs):
    """Groups of ⌊√P⌋ (a partial last group at P = 7, 10): the column sums equal a float64 sum within fp32
    rounding, and the counters are back at zero."""
    W = 37
    rows = torch.randn(n_progs, W, generator=torch.Generator().manual_seed(n_progs))
    out = torch.full((W,), float("nan"))
    GS, NG = tree(n_progs)
    assert GS * NG >= n_progs and (NG - 1) * GS < n_progs
    cnt = counters(torch.device("cpu"), 1, NG)
    _tree_sum_kernel[(n_progs,)](rows, torch.full_like(rows, float("nan")), out, cnt, W, n_progs, GS, NG, BP=2,
                                 BC=16)
    torch.testing.assert_close(out.double(), rows.double().sum(0), rtol=1e-6, atol=1e-6)
    assert not cnt.any()


def _cases(gen):
    rnd = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    B, T, D = 2, 5, 70                                   # 10 rows, 3 column blocks of 32
    x = rnd(B, T, D)
    yield "shift_lerp", lambda p: shift_lerp(x, p[0]), [torch.rand(D, generator=gen)]
    m = rnd(5, B, T, D)
    yield "ddlerp", lambda p: torch.stack(ddlerp(x, m, p[0])), [torch.rand(5, D, generator=gen)]
    yield "decay_exp", lambda p: decay_exp(p[0], x), [rnd(D) * 0.1]
    x2 = rnd(B * T * 7, 20)                               # 70 rows: 2 row blocks of 64
    yield "lowrank", lambda p: lowrank(x2, p[1], p[2], base=p[0]), [rnd(D) * 0.1, rnd(20, 16) * 0.1, rnd(16, D) * 0.1]
    z = rnd(B, T, 64)
    yield "norm_gate", lambda p: norm_gate(z, z.flip(-1), p[0], p[1], group_size=16, norm="layer"), \
        [rnd(64), rnd(64)]
    a, b = rnd(B, T, D), rnd(B, T, D)
    yield "gate_norm_residual", lambda p: torch.cat(gate_norm_residual(
        x, a, b, p[2], weight=p[0], bias=p[1], mode="vector", norm="layer", gate_logits=True), -1), \
        [rnd(D), rnd(D), rnd(D)]


def test_counters_reset_after_each_backward():
    """Every glue backward leaves the arrival counters at zero (its gradients' correctness and run-to-run
    determinism are tested in each op's own tests)."""
    gen = torch.Generator().manual_seed(0)
    for name, fn, params in _cases(gen):
        params = [p.requires_grad_() for p in params]
        out = fn(params)
        grads = torch.autograd.grad(out, params, torch.randn(out.shape, generator=gen))
        assert all(torch.isfinite(g).all() for g in grads), name
        assert not counters(torch.device("cpu"), 1, 1).any(), f"{name}: arrival counters not reset"


@pytest.mark.gpu
def test_gpu_finish_under_load_and_graph_replay():
    """On a GPU, with hundreds of programs racing to the counter: 20 eager reruns and 3 replays of a captured
    CUDA graph give bit-identical parameter gradients, within fp32 rounding of a float64 column sum, and leave
    the counters at zero."""
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    B, T, D = 16, 1024, 200                                   # 2 column blocks of 128, 264 programs each (H100)
    x = torch.randn(B, T, D, device=dev, generator=gen, dtype=torch.bfloat16)
    mu = torch.rand(D, device=dev, generator=gen).requires_grad_()
    dy = torch.randn(B, T, D, device=dev, generator=gen, dtype=torch.bfloat16)

    def grad():
        return torch.autograd.grad(shift_lerp(x, mu), mu, dy)[0]

    first = grad()
    xx = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], 1).double() - x.double()
    want = (dy.double() * xx).sum((0, 1))
    assert ((first.double() - want).norm() / want.norm()).item() < 1e-5
    for _ in range(20):
        assert torch.equal(grad(), first)
    out = torch.empty_like(first)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out.copy_(grad())
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out.copy_(grad())
    for _ in range(3):
        out.zero_()
        g.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, first)
    assert not counters(dev, 1, 1).any()
