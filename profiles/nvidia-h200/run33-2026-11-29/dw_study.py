"""Session 29: wkv6's bf16 gradient errors vs fp64 over many draws at the GPU test's shapes (strong decay): each
gradient's error, its bf16 rounding floor (the exact value rounded), and the kernel's own part (error against the
exact value rounded to bf16); at the default dot precisions and with the backward's / cross kernel's dots at tf32x3."""
import sys
import torch
sys.path.insert(0, ".")
from groundthink.harness import rel_err
from tests.test_wkv6 import make_inputs, ref_chunked
from kernels.wkv6 import wkv6
import kernels.wkv6.common as kcom

NAMES = ("r", "k", "v", "w", "u", "initial_state")


def draw(shape, seed):
    torch.manual_seed(seed)
    d = make_inputs(*shape, dtype=torch.bfloat16, decay="strong", h0=True, device="cuda")
    run = {n: (x.detach().clone().requires_grad_(True) if torch.is_tensor(x) else x) for n, x in d.items()}
    ref = {n: (x.detach().double().requires_grad_(True) if torch.is_tensor(x) else x) for n, x in d.items()}
    o, s = wkv6(**run)
    ro, rs = ref_chunked(**ref, chunk_size=64)
    g = torch.Generator().manual_seed(seed)
    co = torch.randn(ro.shape, generator=g, dtype=torch.float64).bfloat16().double().cuda()
    cs = torch.randn(rs.shape, generator=g, dtype=torch.float64).float().double().cuda()
    torch.autograd.backward([o, s], [co.to(o.dtype), cs.to(s.dtype)])
    torch.autograd.backward([ro, rs], [co, cs])
    res = {}
    for n, a, b in [("o", o, ro)] + [(f"d{n}", run[n].grad, ref[n].grad) for n in NAMES]:
        res[n] = (rel_err(a, b), rel_err(b.to(a.dtype), b) if a.dtype != torch.float32 else 0.0,
                  rel_err(a.double(), b.to(a.dtype).double()))
    return res


for shape in [(1, 300, 3, 60, 100), (2, 256, 2, 32, 96), (2, 1000, 4, 128, 128)]:
    for label, prec in [("default", {}), ("bwd tf32x3", dict(BWD_PRECISION="tf32x3", CROSS_PRECISION="tf32x3"))]:
        old = {k: getattr(kcom, k) for k in prec}
        for k, v in prec.items():
            setattr(kcom, k, v)
        rows = [draw(shape, s) for s in range(16 if shape[1] < 1000 else 6)]
        for k, v in old.items():
            setattr(kcom, k, v)
        print(f"== {shape} {label}: error / floor / kernel-vs-rounded (x1e-3): mean, max over {len(rows)} draws;"
              f" fails (> 2e-3)")
        for n in rows[0]:
            e = torch.tensor([r[n] for r in rows]) * 1e3
            print(f"  {n:16s} err {e[:, 0].mean():.3f} max {e[:, 0].max():.3f} | floor {e[:, 1].mean():.3f} max "
                  f"{e[:, 1].max():.3f} | own {e[:, 2].mean():.3f} max {e[:, 2].max():.3f} | fails "
                  f"{int((e[:, 0] > 2).sum())}")
