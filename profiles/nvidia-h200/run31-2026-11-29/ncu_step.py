"""One fwd+bwd of the default wkv6 at B T H (argv; K = V = 64, bf16) inside cudaProfilerStart/Stop (after a warm-up
that autotunes), for ncu --profile-from-start off."""
import sys
sys.path.insert(0, ".")
import torch
import kernels.wkv6 as kw
from groundthink.spec import get
B, T, H = (int(a) for a in sys.argv[1:4])
x = {**get("wkv6").bench.make_inputs(B, T, H, 64, 64, True, dtype=torch.bfloat16, device="cuda"), "scale": 1.0}
args = {n: x[n] for n in ("r", "k", "v", "w", "u", "scale")}
g = None
for i in range(2):
    if i == 1:
        torch.cuda.synchronize()
        torch.cuda.profiler.start()
    o, _ = kw.wkv6(**args)
    g = torch.randn_like(o) if g is None else g
    o.backward(g)
    for n in "rkvwu":
        x[n].grad = None
torch.cuda.synchronize()
torch.cuda.profiler.stop()
print("ok")
