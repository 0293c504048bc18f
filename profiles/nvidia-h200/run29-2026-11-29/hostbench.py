"""Session 25 call 1: the compiled-kernel launch layer (kernels._common.Launcher.compiled) on the GPU machine:
bitwise equality with the layer off, then host ms per eager fwd+bwd (synced each call / back to back) with
both layers / config layer only / neither, at the small benchmark shapes."""
import inspect, sys, time
sys.path.insert(0, ".")
import torch, triton
import kernels._common as kc
import kernels.wkv6 as kw
from groundthink.spec import get
from bench.common import make_backward

print("triton", triton.__version__, "torch", torch.__version__, torch.cuda.get_device_name())
src = inspect.getsource(triton.runtime.jit.JITFunction.run)
print("\n".join(l for l in src.splitlines() if "binder" in l or "kernel.run" in l or "device_caches" in l or "return kernel" in l))
SPEC = get("wkv6")

def inputs(sh):
    return {**SPEC.bench.make_inputs(*sh, True, dtype=torch.bfloat16, device="cuda"), "scale": 1.0}

def mode(m):
    for lau in kc._LAUNCHERS.values():
        if not hasattr(lau, "_orig"):
            lau._orig = (lau.direct, lau.compiled)
        d, c = lau._orig
        lau.direct, lau.compiled = d and m != "none", c and m == "both"

def grads(sh):
    x = inputs(sh)
    o, _ = kw.wkv6(**x)
    g = torch.randn_like(o)
    o.backward(g)
    return [o] + [x[n].grad for n in ("r", "k", "v", "w", "u")]

for sh in [(4, 2048, 16, 64, 64), (64, 256, 2, 64, 64), (8, 4096, 32, 64, 64)]:
    grads(sh); torch.cuda.synchronize()
    mode("both"); torch.manual_seed(0); a = grads(sh)
    torch.manual_seed(0); a2 = grads(sh)
    mode("config"); torch.manual_seed(0); b = grads(sh)
    mode("both")
    same = all(torch.equal(x, y) for x, y in zip(a, b)) and all(torch.equal(x, y) for x, y in zip(a, a2))
    print(f"{sh}: bitwise equal with/without the compiled layer: {same}")
    # a misaligned view: r offset by one element (the binder's alignment specialization must change)
    x = inputs(sh)
    buf = torch.empty(x["r"].numel() + 1, dtype=x["r"].dtype, device="cuda")
    rr = buf[1:].view_as(x["r"]); rr.copy_(x["r"])
    with torch.no_grad():
        o1, _ = kw.wkv6(rr, x["k"], x["v"], x["w"], x["u"], scale=1.0)
        o2, _ = kw.wkv6(x["r"].detach(), x["k"], x["v"], x["w"], x["u"], scale=1.0)
    print(f"{sh}: misaligned r gives the aligned output: {torch.equal(o1, o2)}")

rows = []
for sh in [(4, 2048, 16, 64, 64), (64, 256, 2, 64, 64)]:
    step, leaves = make_backward(kw.wkv6, inputs(sh))
    for m in ("both", "config", "none", "both"):
        mode(m)
        for _ in range(20):
            for t in leaves: t.grad = None
            step()
        torch.cuda.synchronize()
        res = []
        for synced in (True, False):
            best = 1e9
            for _ in range(5):
                t0 = time.perf_counter()
                for _ in range(100):
                    for t in leaves: t.grad = None
                    step()
                    if synced: torch.cuda.synchronize()
                torch.cuda.synchronize()
                best = min(best, (time.perf_counter() - t0) / 100 * 1e3)
            res.append(best)
        rows.append((sh, m, *res))
        print(f"host {sh} layers={m}: {res[0]:.3f} ms synced, {res[1]:.3f} back to back", flush=True)
mode("both")
print("\n| shape | layers | ms per fwd+bwd synced | back to back |")
for sh, m, a, b in rows:
    print(f"| B{sh[0]} T{sh[1]} H{sh[2]} | {m} | {a:.3f} | {b:.3f} |")
