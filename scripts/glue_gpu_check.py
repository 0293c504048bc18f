"""GPU check of the glue ops inside the model (one H100 call): bf16 autocast training step of GF-MH small with the
fused glue ops vs the same model with the glue ops on their PyTorch references (loss and every gradient), CUDA
kernel launches per step for both (torch.profiler), and CUDA-graph capture of one forward+backward of each op.
Usage: python scripts/glue_gpu_check.py  (prints a short table)."""
from __future__ import annotations

import torch

GLUE = ("norm_gate", "shift_lerp", "ddlerp", "decay_exp")


def step(m, idx, tgt):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        _, loss = m(idx, tgt)
    loss.backward()
    return loss


def launches(m, idx, tgt):
    from torch.profiler import ProfilerActivity, profile
    step(m, idx, tgt)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step(m, idx, tgt)
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type.name == "CUDA")


def graph_capture_ok():
    from groundthink.registry import load
    dev = "cuda"
    x = torch.randn(4, 64, 128, device=dev, dtype=torch.bfloat16, requires_grad=True)
    z = torch.randn(4, 64, 128, device=dev, dtype=torch.bfloat16, requires_grad=True)
    w = torch.ones(128, device=dev, requires_grad=True)
    m5 = torch.randn(5, 4, 64, 128, device=dev, dtype=torch.bfloat16, requires_grad=True)
    maa = torch.rand(5, 128, device=dev, requires_grad=True)

    def f():
        y = load("norm_gate", "triton")(x, z, w, w, group_size=32)
        y = y + load("shift_lerp", "triton")(x, w) + load("decay_exp", "triton")(w, z).float()
        y = y + sum(load("ddlerp", "triton")(x, m5, maa))
        y.float().sum().backward()

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            f()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        f()
    g.replay()
    torch.cuda.synchronize()
    return True


def main():
    from fused import get_model
    from groundthink.registry import resolve
    torch.manual_seed(0)
    fused_ops = resolve("triton")
    ref_ops = resolve("triton", overrides={op: "reference" for op in GLUE})
    m = get_model("GF-MH", "small", vocab_size=97, ops=fused_ops).cuda()
    m.collect_stats = False
    idx = torch.randint(0, 97, (64, 257), device="cuda")
    idx, tgt = idx[:, :-1], idx[:, 1:]
    rows = []
    for name, ops in (("glue fused", fused_ops), ("glue reference", ref_ops)):
        m.set_ops(ops)
        m.zero_grad(set_to_none=True)
        loss = step(m, idx, tgt)
        grads = {n: p.grad.detach().float().clone() for n, p in m.named_parameters() if p.grad is not None}
        m.zero_grad(set_to_none=True)
        rows.append((name, loss.item(), grads, launches(m, idx, tgt)))
    (_, l0, g0, n0), (_, l1, g1, n1) = rows
    worst = max(((g0[k] - g1[k]).norm() / g1[k].norm().clamp_min(1e-30)).item() for k in g1)
    print(fused_ops.table())
    print(f"loss fused {l0:.6f}  reference glue {l1:.6f}  rel diff {abs(l0 - l1) / abs(l1):.2e}")
    print(f"worst relative gradient difference over {len(g1)} parameters: {worst:.3e}")
    print(f"CUDA kernels per training step (fwd+bwd, GF-MH small B64 T256, bf16): fused {n0}  reference glue {n1}")
    print(f"CUDA-graph capture of the glue ops fwd+bwd: {'ok' if graph_capture_ok() else 'FAILED'}")


if __name__ == "__main__":
    main()
