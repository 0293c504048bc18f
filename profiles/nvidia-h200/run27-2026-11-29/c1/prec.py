"""Diagnosis (not evidence): does tf32x3 in the backward (and forward) take dw's kernel error below the bf16 floor,
and what does it cost at B8 T4096 H32? Errors over 8 draws, bf16_K32_V96 strong; GPU ms by do_bench."""
import sys, statistics
sys.path.insert(0, "."); sys.path.insert(0, "tests")
import torch, triton
import kernels.wkv6.common as kcom
import kernels.wkv6.chunk as kc
from kernels.wkv6 import wkv6, wkv6_chunk_lowmem
from groundthink.harness import compare
from reference.wkv6 import wkv6_chunked as ref_chunked
from test_wkv6 import make_inputs
precs = [("tf32", "tf32"), ("tf32", "tf32x3"), ("tf32x3", "tf32x3")]
rows = []
for fp, bp in precs:
    kcom.FWD_PRECISION, kcom.BWD_PRECISION = fp, bp
    errs = {}
    for seed in range(8):
        torch.manual_seed(seed)
        d = make_inputs(2, 150, 2, 32, 96, dtype=torch.bfloat16, decay="strong", h0=True, device="cuda")
        for name, fn in (("lowmem", wkv6_chunk_lowmem), ("chunk", wkv6)):
            with kc.forward_mode(False):
                e = compare(fn, lambda **kw: ref_chunked(**kw, chunk_size=64), d)
            errs.setdefault(name, []).append(e)
    torch.manual_seed(0)
    d = make_inputs(8, 4096, 32, 64, 64, dtype=torch.bfloat16, decay="mild", device="cuda", final=False)
    args = {n: d[n] for n in "rkvwu"}
    o = wkv6(**args)[0]; do = torch.randn_like(o)
    def step():
        o = wkv6(**args)[0]
        torch.autograd.grad(o, list(args.values()), do)
    ms = triton.testing.do_bench(step, warmup=50, rep=400)
    fms = triton.testing.do_bench(lambda: wkv6(**args), warmup=50, rep=300)
    for name, es in errs.items():
        dws = [e["dw"] for e in es]
        rest = max(v for e in es for k, v in e.items() if k not in ("dw", "du"))
        rows.append(f"{fp:7s} {bp:7s} {name:7s} dw max {max(dws):.3e} med {statistics.median(dws):.3e} "
                    f"rest max {rest:.3e} | B8 T4096 fwd {fms:.3f} fwd+bwd {ms:.3f} ms")
    print(rows[-1], flush=True)
print("\n".join(["== prec table"] + rows))
