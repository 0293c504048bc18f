"""groundthink/step.py and groundthink/monitor.py: everything of the training step but ``torch.cuda.graph``
itself runs here on CPU (flat gradient bucket, in-place learning-rate tensors, the guarded update, the
explicit all-reduce over gloo, async metrics); the ``gpu`` test captures a tiny model and replays it.
"""
from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from groundthink import monitor
from groundthink.step import TrainStep, group_params

V, B, T = 11, 4, 8


class TwoBranch(nn.Module):
    """A few-hundred-parameter model with the fused API: two branches, a gate, probes."""

    def __init__(self, d=8):
        super().__init__()
        self.emb = nn.Embedding(V, d)
        self.rwkv = nn.Linear(d, d)
        self.mamba = nn.Linear(d, d)
        self.gate = nn.Parameter(torch.zeros(d))
        self.head = nn.Linear(d, V, bias=False)

    def forward(self, idx, targets=None, with_stats=False):
        h = self.emb(idx)
        a, b = torch.tanh(self.rwkv(h)), torch.tanh(self.mamba(h))
        g = torch.sigmoid(self.gate)
        logits = self.head(h + g * a + (1 - g) * b)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        if not with_stats:
            return logits, loss
        return logits, loss, {"gate_mean": g.mean(), "rms_rwkv": monitor.rms(a), "rms_mamba": monitor.rms(b)}

    def param_groups(self):
        return {"rwkv": list(self.rwkv.parameters()), "mamba": list(self.mamba.parameters()),
                "other": [self.emb.weight, self.gate, self.head.weight]}


def lab_adamw_ops():
    """An op set whose ``adamw`` is the lab kernel (the step then updates through ``FlatAdamW``)."""
    from groundthink.registry import Choice, OpSet
    from kernels.adamw import adamw
    return OpSet({"adamw": Choice("adamw", "triton", "test", adamw, True)})


def make(seed=0, clip=1.0, world=1, batch=B, lab_adamw=False):
    torch.manual_seed(seed)
    model = TwoBranch()
    if lab_adamw:
        model.ops = lab_adamw_ops()
    opt = torch.optim.AdamW([{"params": ps, "lr": 1e-2} for ps in group_params(model).values()], lr=1e-2,
                            weight_decay=0.1, fused=True, capturable=True)
    return model, opt, TrainStep(model, opt, batch_size=batch, seq_len=T, device="cpu", grad_clip=clip, world=world)


def batches(n, seed=1, batch=B):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(V, (batch, T), generator=g), torch.randint(V, (batch, T), generator=g)) for _ in range(n)]


def test_step_matches_a_plain_training_loop():
    """The sync-free step (flat grads, device lrs, foreach norms, manual clip) = backward + clip_grad_norm_ +
    AdamW with float lrs."""
    model, opt, step = make(clip=0.05)
    torch.manual_seed(0)
    ref = TwoBranch()
    ref_opt = torch.optim.AdamW([{"params": ps, "lr": 1e-2} for ps in group_params(ref).values()], lr=1e-2,
                                weight_decay=0.1, fused=True)
    lrs = [1e-2, 5e-3, 2e-3]
    for i, (x, y) in enumerate(batches(4)):
        row = step(x, y, [lrs[i % 3]] * 3).tolist()
        _, loss = ref(x, y)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.05)
        for g in ref_opt.param_groups:
            g["lr"] = lrs[i % 3]
        ref_opt.step()
        ref_opt.zero_grad()
        assert row[0] == pytest.approx(loss.item(), rel=1e-6) and row[1] == pytest.approx(gn.item(), rel=1e-5)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_grad_bucket_views_norms_and_clip():
    model, _, step = make()
    b = step.bucket
    x, y = batches(1)[0]
    with torch.no_grad():
        for p in model.parameters():
            p.grad.normal_()
    for p in model.parameters():
        assert p.grad.data_ptr() >= b.flat.data_ptr() and p.grad.shape == p.shape
    per, total = b.norms()
    groups = group_params(model)
    for i, comp in enumerate(("rwkv", "mamba", "other")):
        want = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in groups[comp]]))
        torch.testing.assert_close(per[i], want)
    torch.testing.assert_close(total, torch.linalg.vector_norm(b.flat[:b.n]))
    b.clip_(total, 0.5)
    torch.testing.assert_close(torch.linalg.vector_norm(b.flat[:b.n]), torch.tensor(0.5), rtol=1e-5, atol=0)
    b.zero_()
    assert all(float(p.grad.abs().sum()) == 0 for p in model.parameters())


def test_bf16_weights_once_per_step_equal_autocast_casts():
    """bf16 autocast (CPU): the weights that autocast casts are found (linear weights and biases, the head; not the
    embedding or the gate), refreshed once per step into one bf16 buffer, and the step's losses, norms and
    parameters equal those of the per-use autocast casts (flat_weights=False) exactly."""
    runs = {}
    for flat in (True, False):
        model, opt, _ = make(clip=0.05)
        step = TrainStep(model, opt, batch_size=B, seq_len=T, device="cpu", grad_clip=0.05,
                         amp_dtype=torch.bfloat16, flat_weights=flat)
        rows = [step(x, y, [1e-2] * 3).tolist() for x, y in batches(3)]
        runs[flat] = rows, [p.detach().clone() for p in model.parameters()], step
    step = runs[True][2]
    low = {n for n, p in zip(step.names, step.bucket.params[:step.bucket.k_low])}
    assert low == {"rwkv.weight", "rwkv.bias", "mamba.weight", "mamba.bias", "head.weight"}
    assert step.bucket.low.dtype == torch.bfloat16 and step.bucket.low.numel() == step.bucket.n_low
    assert runs[True][0] == runs[False][0]
    for p, q in zip(runs[True][1], runs[False][1]):
        assert torch.equal(p, q)
    step.bucket.check()
    step.model.head.weight.data = step.model.head.weight.data.clone()
    with pytest.raises(RuntimeError, match="flat parameter buffer was replaced"):
        step(*batches(1)[0], [1e-2] * 3)


def test_hybrid_model_low_weights_and_equal_steps():
    """The hybrid (tiny, one layer, reference ops, bf16 autocast on CPU): the weights found for the bf16 copy are
    exactly the matmul weights (views followed: the conv weight's squeeze; the conv's weights are cast here: its
    reference is F.conv1d, which autocast casts; norms, lerp and decay vectors and the gate bias — added inside
    gate_norm_residual — stay fp32), and two steps equal the per-use casts
    exactly."""
    import fused
    from groundthink.registry import resolve
    runs = {}
    for flat in (True, False):
        torch.manual_seed(0)
        model = fused.get_model("GF-MH", "tiny", vocab_size=V, ops=resolve("reference"), n_layer=1)
        opt = torch.optim.AdamW([{"params": ps} for ps in group_params(model).values()], lr=1e-2, fused=True,
                                capturable=True)
        step = TrainStep(model, opt, batch_size=2, seq_len=T, device="cpu", amp_dtype=torch.bfloat16,
                         flat_weights=flat)
        runs[flat] = [step(x[:2], y[:2], [1e-2] * 3).tolist() for x, y in batches(2)], step
    step = runs[True][1]
    low = {n.removeprefix("blocks.0.") for n in step.names[:step.bucket.k_low]}
    assert low == {"tmix.time_maa_w1", "tmix.time_maa_w2", "tmix.time_decay_w1", "tmix.time_decay_w2", "tmix.rkvg",
                   "tmix.output.weight", "mamba.in_proj.weight", "mamba.out_proj.weight", "fusion.gate_proj.weight",
                   "ffn.up.weight", "ffn.down.weight", "head.weight",
                   "mamba.conv1d.weight", "mamba.conv1d.bias"}, low
    assert runs[True][0] == runs[False][0]


def test_every_matmul_operand_of_a_hybrid_step_is_aligned():
    """cuBLAS runs a GEMM on its fast kernels only when every operand is 16-byte aligned (pointer and leading
    dimension) and not vector-shaped. One bf16 training step of GF-MH (the 1-element gate bias in the bf16 weight
    buffer; the D → 1 row gate): no matmul the model issues is misaligned (before
    the aligned buffer and the row gate's matrix-vector product, 5cf3965: the FFN weights after a gate bias
    were 2–14 bytes off 16 and the gate ran N = 1 and K = 1 GEMMs). The watch itself flags an offset weight
    and an N = 1 product."""
    import fused
    from groundthink.registry import resolve
    from groundthink.step import GemmWatch
    ops = resolve("reference")
    watch = GemmWatch()
    watch.opaque(ops)
    torch.manual_seed(0)
    model = fused.get_model("GF-MH", "tiny", vocab_size=104, ops=ops, n_layer=1)
    opt = torch.optim.AdamW([{"params": ps} for ps in group_params(model).values()], lr=1e-2, fused=True,
                            capturable=True)
    step = TrainStep(model, opt, batch_size=1, seq_len=16, device="cpu", amp_dtype=torch.bfloat16)
    x, y = batches(1, batch=1)[0]
    step.load_batch(torch.cat([x, x], 1), torch.cat([y, y], 1))
    with watch:
        step._body()
    assert len(watch.records) > 10 and watch.misaligned() == [], watch.misaligned()
    w = torch.zeros(80)
    with GemmWatch() as watch:
        torch.ones(8, 8) @ w[1:65].view(8, 8).t()
        torch.ones(8, 8) @ w[:64].view(8, 8)[:, :1]
    assert [bad for _, _, bad in watch.records] == [["B pointer % 16 = 4"], ["vector-shaped (M 8, N 1, K 8)"]]


def test_row_gate_matrix_vector_product_equals_the_linear():
    """GF's D → 1 gate projection as ``matmul(xn, w.view(-1)) + b`` gives nn.Linear's value and gradients (fp64)."""
    import fused
    from groundthink.registry import resolve
    torch.manual_seed(0)
    fusion = fused.get_model("GF", "tiny", vocab_size=V, ops=resolve("reference")).blocks[0].fusion.double()
    xn = torch.randn(2, 5, 64, dtype=torch.float64, requires_grad=True)
    got = fusion._gate_logits(xn)
    want = fusion.gate_proj(xn)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    g = torch.randn_like(want)
    for p in (xn, fusion.gate_proj.weight, fusion.gate_proj.bias):
        torch.testing.assert_close(torch.autograd.grad(got, p, g, retain_graph=True)[0],
                                   torch.autograd.grad(want, p, g, retain_graph=True)[0], rtol=1e-12, atol=1e-14)


def test_lr_tensors_are_updated_in_place():
    _, opt, step = make()
    ptrs = [g["lr"].data_ptr() for g in opt.param_groups]
    step.set_lrs([0.1, 0.2, 0.3])
    assert [g["lr"].data_ptr() for g in opt.param_groups] == ptrs
    assert [round(float(g["lr"]), 6) for g in opt.param_groups] == [0.1, 0.2, 0.3]
    assert all(g["lr"].dim() == 0 and isinstance(g["lr"], torch.Tensor) for g in opt.param_groups)


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_non_finite_step_leaves_params_and_optimizer_state_unchanged(poison):
    model, opt, step = make()
    data = batches(3)
    step(*data[0], [1e-2] * 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state_before = {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}
    forward = model.forward

    def poisoned(idx, targets=None, **kw):
        logits, loss, *probes = forward(idx, targets, **kw)
        return (logits, loss * poison, *probes)

    model.forward = poisoned
    row = step(*data[1], [1e-2] * 3).tolist()
    assert not math.isfinite(row[0]) and float(opt.found_inf) == 1.0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    for p, s in opt.state.items():
        for k, v in s.items():
            assert torch.equal(v, state_before[id(p)][k]), k
    model.forward = forward
    row = step(*data[2], [1e-2] * 3).tolist()
    assert math.isfinite(row[0]) and float(opt.found_inf) == 0.0
    assert not torch.equal(model.head.weight, before["head.weight"])
    assert all(float(s["step"]) == 2 for s in opt.state.values())


def test_metrics_ring_rows_and_stats():
    model, _, step = make()
    ring = monitor.MetricsRing(len(monitor.STATS), capacity=3, device=torch.device("cpu"))
    losses = []
    for i, (x, y) in enumerate(batches(5)):
        row = step(x, y, [1e-2] * 3)
        losses.append(float(row[0]))
        ring.push(row, i + 1)          # the 4th push snapshots the first three (ring full)
    ring.snapshot()
    got = ring.collect(block=True)
    assert [w[0] for w in got] == [[1, 2, 3], [4, 5]]
    rows = [r for w in got for r in w[1]]
    assert [r[0] for r in rows] == pytest.approx(losses)
    d = monitor.unpack(rows[-1], step.has)
    assert set(monitor.STATS) <= set(d) and d["grad_ratio"] == pytest.approx(d["grad_norm_rwkv"] / d["grad_norm_mamba"])
    assert 0 < d["gate_mean"] < 1 and d["state_norm"] == pytest.approx((d["rms_rwkv"] + d["rms_mamba"]) / 2)


def test_batched_probes_equal_per_layer_ones():
    """monitor.branch_rms / gate_mean (all layers at once) = the per-layer RMS and gate means, averaged."""
    g = torch.Generator().manual_seed(0)
    a = [torch.randn(2, 5, 8, generator=g).bfloat16() for _ in range(3)]
    b = [torch.randn(2, 5, 8, generator=g) * (i + 1) for i in range(3)]
    ra, rb, none = monitor.branch_rms(a, b, [None, None])
    torch.testing.assert_close(ra, torch.stack([monitor.rms(t) for t in a]).mean())
    torch.testing.assert_close(rb, torch.stack([monitor.rms(t) for t in b]).mean())
    assert none is None and monitor.gate_mean([None]) is None
    (r_odd,) = monitor.branch_rms([a[0], b[0][:, :3]])
    torch.testing.assert_close(r_odd, (monitor.rms(a[0]) + monitor.rms(b[0][:, :3])) / 2)
    logits = [torch.randn(2, 5, 1, generator=g).bfloat16() for _ in range(3)]
    want = torch.stack([torch.sigmoid(t.float()).mean() for t in logits]).mean()
    torch.testing.assert_close(monitor.gate_mean([("logit", t) for t in logits]), want)
    w = [torch.tensor(0.25), torch.tensor(0.75)]
    torch.testing.assert_close(monitor.gate_mean([("weight", t) for t in w]), torch.tensor(0.5))


def test_unpack_absent_branch_and_gate():
    has = monitor.present({"gate_mean": None, "rms_rwkv": torch.ones(()), "rms_mamba": None}, {"rwkv": [1]})
    d = monitor.unpack([1.0, 2.0, 3.0, 0.0, 0.0, 0.5, 0.0], has)
    assert d["grad_norm_mamba"] == 0.0 and d["rms_mamba"] is None
    assert d["gate_mean"] is None and d["grad_ratio"] is None and d["state_norm"] == 0.5


def test_summarize_trace_counts_launches_and_busy_time():
    ev = [{"ph": "X", "cat": "kernel", "name": "gemm", "ts": 0, "dur": 10},
          {"ph": "X", "cat": "kernel", "name": "gemm", "ts": 5, "dur": 10},       # overlaps: busy 0..15
          {"ph": "X", "cat": "kernel", "name": "add", "ts": 20, "dur": 2},
          {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy DtoD", "ts": 30, "dur": 4},
          {"ph": "X", "cat": "cpu_op", "name": "aten::add", "ts": 0, "dur": 100}]
    s = monitor.summarize_trace(ev, steps=2)
    assert s["launches_per_step"] == 1.5 and s["copies_per_step"] == 0.5
    assert s["gpu_busy_ms_per_step"] == pytest.approx(21 / 2 / 1e3)
    assert s["breakdown"][0]["name"] == "gemm" and s["breakdown"][0]["us_per_step"] == 10


def test_gpu_time_by_op():
    rows = [{"name": "_bwd_own_kernel", "us_per_step": 30.0, "pct": 30.0},
            {"name": "_ddlerp_bwd_kernel", "us_per_step": 10.0, "pct": 10.0},
            {"name": "_state_passing_bwd_kernel", "us_per_step": 5.0, "pct": 5.0},
            {"name": "nvjet_sm90_tst_128x128_64x6_1x2_h_bz_TNT", "us_per_step": 20.0, "pct": 20.0},
            {"name": "void cublasLt::splitKreduce_kernel<32, 16>", "us_per_step": 5.0, "pct": 5.0},
            {"name": "(12 other kernels)", "us_per_step": 30.0, "pct": 30.0}]
    assert monitor.by_op(rows) == [("wkv6", 30.0, 30.0), ("other", 30.0, 30.0), ("matmul (cuBLAS)", 25.0, 25.0),
                                   ("glue kernels", 10.0, 10.0), ("mamba2", 5.0, 5.0)]


# ----------------------------------------------------------------------------------------------- two ranks

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, world, port, q, lab_adamw=False):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, _, step = make(clip=0.05, world=world, batch=B // world, lab_adamw=lab_adamw)
        assert (step.adamw is not None) == lab_adamw
        losses = []
        for x, y in batches(3):
            x, y = x[rank * (B // world):(rank + 1) * (B // world)], y[rank * (B // world):(rank + 1) * (B // world)]
            losses.append(step(x, y, [1e-2] * 3).tolist())
        if rank == 0:
            q.put((losses, [p.detach().flatten().tolist() for p in model.parameters()]))  # no shared tensors
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("lab_adamw", [False, True], ids=["torch_adamw", "lab_adamw"])
def test_two_gloo_ranks_match_one_rank(lab_adamw):
    """Explicit all-reduce of the flat bucket: 2 ranks × batch 2 = 1 rank × batch 4 (loss, norms, parameters),
    with torch's fused AdamW and with the lab's one-launch update (every rank runs the same update on the averaged
    gradients). The ranks are forked after the one-rank run (they inherit its imports, torch._dynamo of the
    optimizer included: no import of their own, ~10 s less on a 2-core machine) unless this process has initialised
    CUDA, which a forked child could not use."""
    model, _, step = make(clip=0.05, lab_adamw=lab_adamw)
    one = [step(x, y, [1e-2] * 3).tolist() for x, y in batches(3)]
    ctx = mp.get_context("spawn" if torch.cuda.is_initialized() else "fork")
    q = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, 2, port, q, lab_adamw)) for r in range(2)]
    for p in procs:
        p.start()
    two_losses, two_params = q.get(timeout=120)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for r1, r2 in zip(one, two_losses):
        assert r1[:4] == pytest.approx(r2[:4], rel=1e-5)
    for p, q2 in zip(model.parameters(), two_params):
        torch.testing.assert_close(p.detach().flatten(), torch.tensor(q2), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------- GPU

@pytest.mark.gpu
def test_captured_step_replays_like_eager():
    """One CUDA graph (warm-up disabled updates, capture, replay) gives the eager step's losses and params."""
    dev = torch.device("cuda")
    data = [(x.to(dev), y.to(dev)) for x, y in batches(4)]
    rows = {}
    for mode in ("eager", "graph"):
        torch.manual_seed(0)
        model = TwoBranch().to(dev)
        opt = torch.optim.AdamW([{"params": ps, "lr": 1e-2} for ps in group_params(model).values()], lr=1e-2,
                                fused=True, capturable=True)
        step = TrainStep(model, opt, batch_size=B, seq_len=T, device=dev, grad_clip=0.05, amp_dtype=None)
        if mode == "graph":
            step.load_batch(*data[0])
            step.capture()
        rows[mode] = [step(x, y, [1e-2] * 3).tolist() for x, y in data]
        rows[mode + "_params"] = [p.detach().clone() for p in model.parameters()]
        step.release()
        assert step.graph is None
    assert sum(rows["eager"], []) == pytest.approx(sum(rows["graph"], []), rel=1e-6)
    for p, q in zip(rows["eager_params"], rows["graph_params"]):
        torch.testing.assert_close(p, q)


@pytest.mark.gpu
def test_captured_step_skips_a_non_finite_update():
    """Inside the graph: a NaN loss leaves every other parameter and the AdamW state unchanged."""
    dev = torch.device("cuda")
    data = [(x.to(dev), y.to(dev)) for x, y in batches(3)]
    model, opt, _ = make()
    model.to(dev)
    opt = torch.optim.AdamW([{"params": ps, "lr": 1e-2} for ps in group_params(model).values()], lr=1e-2,
                            fused=True, capturable=True)
    step = TrainStep(model, opt, batch_size=B, seq_len=T, device=dev)
    step.load_batch(*data[0])
    step.capture()
    step(*data[0], [1e-2] * 3)
    with torch.no_grad():
        model.gate.fill_(float("nan"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    moments = {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}
    row = step(*data[1], [1e-2] * 3).tolist()
    assert not math.isfinite(row[0]) and float(opt.found_inf) == 1.0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]) or (k == "gate" and v.isnan().all()), k
    for p, s in opt.state.items():
        for k, v in s.items():
            assert torch.equal(v, moments[id(p)][k]), k


def test_warmup_iterations_change_nothing():
    """capture()'s warm-up runs the body with the skip flag: afterwards the first real step equals a fresh one."""
    data = batches(2)
    model, opt, step = make()
    fresh, _, fresh_step = make()
    step.load_batch(*data[0])
    step.skip.fill_(1.0)
    for _ in range(3):
        step._body()
    step.skip.fill_(0.0)
    assert all(float(s["step"]) == 0 for s in opt.state.values())
    for x, y in data:
        assert step(x, y, [1e-2] * 3).tolist() == fresh_step(x, y, [1e-2] * 3).tolist()
    for p, q in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        step.capture()


def test_profile_breakdown_names_every_wkv6_kernel():
    """The step's per-op breakdown counts every Triton kernel of kernels/wkv6 (a ``@triton.jit`` function that is
    launched: ``*_kernel``, the walk) as wkv6 (run 10: the renamed walk kernel fell into "other" for a GPU call)."""
    import ast
    from pathlib import Path

    from groundthink.monitor import op_of
    root = Path(__file__).resolve().parent.parent / "kernels" / "wkv6"
    names = {f.name for path in root.glob("*.py") for f in ast.parse(path.read_text()).body
             if isinstance(f, ast.FunctionDef) and f.name.endswith(("_kernel", "_walk"))
             and any("jit" in ast.unparse(d) for d in f.decorator_list)}
    assert len(names) >= 8 and {n for n in names if op_of(n) != "wkv6"} == set()


def test_write_grads_widens_and_takes_non_contiguous_gradients():
    """``_write_grads``: bf16 gradients into fp32 slices of one flat buffer, a transposed (non-contiguous) one too."""
    from groundthink.step import _write_grads
    flat = torch.full((12,), float("nan"))
    g = [torch.arange(6.).reshape(2, 3).to(torch.bfloat16), torch.arange(6., 12.).reshape(3, 2).t().to(torch.bfloat16)]
    _write_grads([flat[:6], flat[6:]], g)
    assert torch.equal(flat, torch.cat([g[0].float().reshape(-1), g[1].float().reshape(-1)]))


def test_grouped_adamw_step_is_opt_step_bitwise():
    """``grouped_adamw_step`` (one step-counter add and subtract for all groups) = ``opt.step()``: parameters,
    moments and step counters bit-identical over steps with and without ``found_inf``, groups with different lr
    (a 0-d tensor, as the step sets them), weight decay and an empty group; it declines before the state exists."""
    from groundthink.step import grouped_adamw_step
    runs = []
    for grouped in (False, True):
        torch.manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(n)) for n in (5, 7, 3, 11)]
        opt = torch.optim.AdamW([{"params": ps[:2], "lr": torch.tensor(1e-2), "weight_decay": 0.1},
                                 {"params": ps[2:], "lr": torch.tensor(3e-3), "weight_decay": 0.0},
                                 {"params": [], "lr": torch.tensor(1e-3)}],
                                betas=(0.9, 0.95), eps=1e-8, fused=True, capturable=True)
        opt.found_inf = torch.zeros(())
        for i in range(4):
            for p in ps:
                p.grad = torch.randn_like(p)
            opt.found_inf.fill_(1.0 if i == 2 else 0.0)
            took = grouped and grouped_adamw_step(opt)
            assert took == (grouped and i > 0)          # the first step creates the state through opt.step()
            if not took:
                opt.step()
        runs.append([t.clone() for p in ps for t in (p.detach(), *opt.state[p].values())])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_a_failed_capture_is_said_with_the_error_raised_inside_it():
    """Run 20: the step's body raised inside the capture and the caller saw only the capture's end failing
    ("operation failed due to a previous error during capture"); the one-line reason leads with the body's error
    and where it surfaced."""
    from groundthink.step import capture_failure

    def body():
        raise RuntimeError("CUDA error: dependency created on uncaptured work in another stream")
    try:
        try:
            body()
        finally:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
    except RuntimeError as e:
        said = capture_failure(e)
    assert said.startswith("RuntimeError: CUDA error: dependency created on uncaptured work in another stream (at ")
    assert "body)" in said and "; then RuntimeError: CUDA error: operation failed due to a previous" in said
    assert str(Path(__file__).resolve().parent.parent) not in said        # file names relative, no machine path


def test_the_capture_probe_names_the_first_call_after_which_the_capture_was_invalid(monkeypatch):
    """GROUNDTHINK_CAPTURE_PROBE=1's bookkeeping (the driver's answer faked: valid for five calls)."""
    from groundthink import step as S
    answers = iter([1] * 5 + [2] * 100)
    monkeypatch.setattr(S, "_stream_capture_status", lambda stream: next(answers))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: None)
    probe = S.CaptureProbe()
    with probe:
        x = torch.ones(3, requires_grad=True)
        (x * 2).sin().sum().backward()
    said = probe.finding()
    assert said.startswith("capture probe: invalid after call 6 (aten.") and "the calls before it: aten." in said


def test_flat_buffer_lays_the_mamba_a_logs_evenly_spaced():
    """Session 16: HybridLM's ``_mamba_A`` stacks every layer's A_log through ``fused.projections.stack``, a view
    (no copy kernel either way) when they lie evenly spaced in one storage — which the training step's flat buffer
    does for a model of identical layers (GF-MH)."""
    from fused import get_model
    from fused.projections import _spacing, stack
    torch.manual_seed(0)
    model = get_model("GF-MH", "tiny", vocab_size=32, n_layer=3)
    opt = torch.optim.AdamW([{"params": ps, "lr": 1e-2} for ps in group_params(model).values()], lr=1e-2,
                            fused=True, capturable=True)
    TrainStep(model, opt, batch_size=1, seq_len=8, device="cpu")
    logs = [blk.mamba.A_log for blk in model.blocks]
    assert _spacing(logs) is not None
    assert stack(logs).data_ptr() == logs[0].data_ptr() and torch.equal(stack(logs), torch.stack(logs))
