# session 24: where cvt.rna.tf32.f32 on the GPU differs from tests/test_dot.py's reference; then the dot models
import numpy as np, torch
from tests.test_dot import _rna_inputs, _rna_reference, _rna_kernel, _mma_kernel
x = _rna_inputs(); y = torch.full_like(x, 7.0, device="cuda"); _rna_kernel[(1,)](x.cuda(), y, 4096)
y = y.cpu().numpy(); ref = _rna_reference(x.numpy())
yb, rb, xb = y.view(np.uint32), ref.view(np.uint32), x.numpy().view(np.uint32)
bad = np.nonzero((yb != rb) & ~(np.isnan(y) & np.isnan(ref)))[0]
print(f"rna: {len(bad)} of 4096 differ")
for i in bad[:30]:
    print(f"  i {i}: x {xb[i]:08x} ({x[i].item():.6g}) gpu {yb[i]:08x} ({y[i]:.6g}) ref {rb[i]:08x} ({ref[i]:.6g})")
for n in (16, 64):
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    rna = lambda t: torch.from_numpy(_rna_reference(t.numpy())).double()
    trunc = lambda t: (t.view(torch.int32) & ~0x1FFF).view(torch.float32).double()
    models = {"rna·rna": rna(a) @ rna(b), "rna·trunc": rna(a) @ trunc(b), "trunc·trunc": trunc(a) @ trunc(b),
              "fp64": a.double() @ b.double()}
    for prec, be in (("tf32", False), ("tf32", True), ("tf32_trunc", False), ("ieee", False)):
        c = torch.full((n, n), float("nan"), device="cuda")
        _mma_kernel[(1,)](a.cuda(), b.cuda(), c, n, n, PREC=prec, B_EXACT=be)
        c = c.cpu().double()
        print(f"n {n} {prec:10s} b_exact {be!s:5s}: " + "  ".join(
            f"{k} {((c - m).abs().max() / m.abs().max()).item():.1e}" for k, m in models.items()))
