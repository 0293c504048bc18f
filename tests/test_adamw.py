"""kernels.adamw (the training step's optimizer update in one launch) against reference/adamw.py in float64, the
reference against torch.optim.AdamW, and the training step with the lab op against the step with torch's fused
AdamW. CPU: Triton interpreter. GPU: the model shapes, the peer (torch's fused AdamW on the same buffers), capture."""
from __future__ import annotations

import pytest
import torch

import kernels  # noqa: F401
from groundthink.harness import compare, rel_err
from kernels.adamw import adamw
from kernels.adamw.spec import make_inputs
from reference.adamw import adamw as ref
from tests.test_step import batches, lab_adamw_ops, make

BOUND = 1e-6          # fp32 math vs float64: every output is an fp32 rounding of a few fp32 operations


@pytest.mark.parametrize("N,P,G", [(1000, 5, 3), (4096, 9, 2), (64, 1, 1), (130, 3, 3)])
@pytest.mark.parametrize("clip", ["active", "off", "nan_norm"])
def test_kernel_matches_float64(N, P, G, clip):
    d = make_inputs(N, P, G, seed=N + P)
    if clip == "off":
        d["max_norm"] = 0.0
    elif clip == "nan_norm":        # a NaN norm clips by 1 (the step's guard skips such a step anyway)
        d["total_norm"] = torch.tensor(float("nan"))
    errs = compare(adamw, ref, d, backward=False)
    assert max(errs.values()) <= BOUND, errs


def test_gaps_stay_zero_and_the_skip_flag_changes_nothing():
    """Elements of a parameter's last chunk past its end (zeros in every buffer) stay zero; found_inf ≠ 0 leaves
    every buffer bit for bit as it was."""
    d = make_inputs(640, 4, 2, seed=3)
    gap = torch.zeros(640, dtype=torch.bool)
    for c in (1, 4, 9):                              # the last 20 elements of chunks 1, 4, 9 are gaps
        gap[c * 64 + 44:(c + 1) * 64] = True
    for k in ("param", "grad", "exp_avg", "exp_avg_sq"):
        d[k][gap] = 0
    adamw(**d)
    assert all(torch.equal(d[k][gap], torch.zeros(int(gap.sum()))) for k in ("param", "exp_avg", "exp_avg_sq"))
    before = {k: d[k].clone() for k in ("param", "exp_avg", "exp_avg_sq")}
    d["found_inf"] = torch.tensor(1.0)
    adamw(**d)
    assert all(torch.equal(d[k], before[k]) for k in before)


def test_reference_is_torch_adamw():
    """The oracle's update (float64) equals torch.optim.AdamW's with clip_grad_norm_ over three steps, two groups
    with and without weight decay, parameters of odd sizes (gaps between them in the flat layout)."""
    torch.manual_seed(0)
    shapes, groups = [(5, 7), (13,), (3, 3, 2), (70,)], [0, 1, 0, 1]
    ps = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in shapes]
    opt = torch.optim.AdamW([{"params": [p for p, g in zip(ps, groups) if g == j], "lr": 1e-2 * (j + 1),
                              "weight_decay": 0.1 * (1 - j)} for j in (0, 1)], betas=(0.9, 0.95), eps=1e-8)
    starts, n = [], 0
    for p in ps:
        starts.append(n)
        n += -(-p.numel() // 64) * 64
    flat = {k: torch.zeros(n, dtype=torch.float64) for k in ("param", "grad", "exp_avg", "exp_avg_sq")}
    for p, a in zip(ps, starts):
        flat["param"][a:a + p.numel()] = p.detach().reshape(-1)
    owner = torch.tensor([i for i, p in enumerate(ps) for _ in range(-(-p.numel() // 64))], dtype=torch.int32)
    for it in range(3):
        grads = [torch.randn(p.shape, dtype=torch.float64) * (3 if it == 1 else 0.1) for p in ps]
        for p, g, a in zip(ps, grads, starts):
            p.grad = g.clone()
            flat["grad"][a:a + p.numel()] = g.reshape(-1)
        norm = torch.nn.utils.clip_grad_norm_(ps, 1.0)
        opt.step()
        ref(**flat, step=torch.full((4,), it + 1.0, dtype=torch.float64), chunk_param=owner,
            group=torch.tensor(groups, dtype=torch.int32), lr=torch.tensor([1e-2, 2e-2], dtype=torch.float64),
            weight_decay=torch.tensor([0.1, 0.0], dtype=torch.float64), total_norm=norm.detach(),
            found_inf=torch.zeros((), dtype=torch.float64), max_norm=1.0, beta1=0.9, beta2=0.95, eps=1e-8)
        for p, a in zip(ps, starts):
            torch.testing.assert_close(flat["param"][a:a + p.numel()], p.detach().reshape(-1), rtol=1e-12,
                                       atol=1e-14)


@pytest.mark.parametrize("change,msg", [
    (lambda d: d.update(grad=d["grad"][:-1]), "grad must be a 1-D float tensor"),
    (lambda d: d.update(chunk_param=d["chunk_param"].long()), "chunk_param must be an int32"),
    (lambda d: d.update(step=d["step"][:-1]), "group must be an int32 tensor of shape"),
    (lambda d: d.update(total_norm=d["total_norm"].view(1)), "total_norm must be a float tensor of shape ()"),
    (lambda d: d.update(exp_avg=d["exp_avg"].double()), "must be contiguous, on cpu, and float32"),
    (lambda d: d.update(beta2=1.0), "need 0 ≤ beta1, beta2 < 1"),
])
def test_bad_input_is_one_line_error(change, msg):
    d = make_inputs(1000, 5, 3)
    change(d)
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        adamw(**d)


# ----------------------------------------------------------------------------------------------- the training step

def test_training_step_with_the_lab_op_equals_torch_fused_adamw():
    """TrainStep with ``ops.adamw`` a lab kernel (one launch, clip inside) = TrainStep with torch's fused AdamW
    (clip pass, grouped steps): parameters, moments and steps after four steps with clipping active, a skipped
    (non-finite) step among them; opt.state holds views of the flat moments."""
    from groundthink.step import TrainStep
    runs = []
    for lab in (False, True):
        model, opt, _ = make(clip=0.05)
        if lab:
            model.ops = lab_adamw_ops()
        step = TrainStep(model, opt, batch_size=4, seq_len=8, device="cpu", grad_clip=0.05)
        assert (step.adamw is not None) == lab
        for i, (x, y) in enumerate(batches(4)):
            if i == 2:
                step.skip.fill_(1.0)                  # the guard: this update must change nothing
            step(x, y, [1e-2, 5e-3, 2e-3])
            step.skip.fill_(0.0)
        runs.append((model, opt))
    (m0, o0), (m1, o1) = runs
    for p, q in zip(m0.parameters(), m1.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-7)
        s0, s1 = o0.state[p], o1.state[q]
        assert float(s1["step"]) == float(s0["step"]) == 3.0
        torch.testing.assert_close(s1["exp_avg_sq"], s0["exp_avg_sq"], rtol=1e-5, atol=1e-12)
    st = o1.state[next(m1.parameters())]
    assert st["exp_avg"]._base is not None            # a view of the flat moments


def test_lab_adamw_adopts_a_loaded_optimizer_state():
    """A checkpoint's optimizer state (opt.state_dict() of a lab-op run) loaded into a fresh optimizer before or
    after the step is built continues exactly like the run that saved it."""
    from groundthink.step import TrainStep
    data = batches(4)

    def run(n_before, state=None, params=None, load_after=False):
        model, opt, _ = make(clip=0.05)
        model.ops = lab_adamw_ops()
        if params is not None:
            model.load_state_dict(params)
        if state is not None and not load_after:
            opt.load_state_dict(state)
        step = TrainStep(model, opt, batch_size=4, seq_len=8, device="cpu", grad_clip=0.05)
        if state is not None and load_after:
            opt.load_state_dict(state)
        for x, y in data[n_before:]:
            step(x, y, [1e-2] * 3)
        return model, opt

    full, _ = run(0)
    model, opt, _ = make(clip=0.05)
    model.ops = lab_adamw_ops()
    step = TrainStep(model, opt, batch_size=4, seq_len=8, device="cpu", grad_clip=0.05)
    for x, y in data[:2]:
        step(x, y, [1e-2] * 3)
    saved = ({k: v.clone() for k, v in model.state_dict().items()},
             {"state": {k: {n: t.clone() for n, t in v.items()} for k, v in opt.state_dict()["state"].items()},
              "param_groups": opt.state_dict()["param_groups"]})
    for load_after in (False, True):
        resumed, _ = run(2, saved[1], saved[0], load_after)
        for p, q in zip(full.parameters(), resumed.parameters()):
            torch.testing.assert_close(q, p, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("impl", ["triton", "torch_fused"])
def test_gpu_model_shapes(impl):
    """The lab kernel and the peer at the GF-MH small model's buffers vs float64, and the lab kernel captured."""
    from groundthink.spec import get
    spec = get("adamw")
    shp = spec.bench.shapes()[0]
    fn = spec.impl(impl).load()
    d = make_inputs(*shp, device="cuda")
    errs = compare(fn, ref, d, backward=False, ref_device="cpu")
    assert max(errs.values()) <= BOUND, errs
    if impl == "triton":
        g = torch.cuda.CUDAGraph()
        d = make_inputs(*shp, device="cuda")
        want = {k: d[k].clone() for k in ("param", "exp_avg", "exp_avg_sq")}
        fn(**{**d, **{k: v.clone() for k, v in want.items()}})        # warm-up (compile) on copies
        with torch.cuda.graph(g):
            fn(**d)
        g.replay()
        ref_d = {**{k: (v.double().cpu() if isinstance(v, torch.Tensor) and v.is_floating_point() else
                        v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in d.items()},
                 **{k: v.double().cpu() for k, v in want.items()}}
        ref(**ref_d)
        errs = {k: rel_err(d[k], ref_d[k]) for k in want}       # ‖out − ref‖ / ‖ref‖, the harness's measure
        assert max(errs.values()) <= BOUND, errs
