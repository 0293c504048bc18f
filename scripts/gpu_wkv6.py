"""GPU check + timing of kernels.wkv6 (one command, one machine; prints a compact table last).

    PYTHONUNBUFFERED=1 python3 scripts/gpu_wkv6.py 2>&1 | tee $OUT/wkv6.log

1. correctness vs the float64 chunked reference (run on the GPU): bf16 B8 T4096 H32 K=V=64 (reference on 2
   batches × 4 heads of the same inputs; du through a kernel run on that slice), bf16 B2 T1000 H4 K=V=128 and
   K=60/V=100 (masks, two V-blocks), fp16 and fp32;
2. timing (triton.testing.do_bench, median) of forward and forward+backward, extra peak memory;
3. fla's chunk_rwkv6 side by side when importable and time is left (WKV6_FLA=0 skips it).
Environment: WKV6_BUDGET_S (default 170) stops optional sections early.
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
T0 = time.time()
BUDGET = float(os.environ.get("WKV6_BUDGET_S", "170"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402

import kernels  # noqa: E402,F401
import kernels.wkv6 as kw  # noqa: E402
from groundthink.harness import compare, rel_err  # noqa: E402
from reference.wkv6 import wkv6_chunked  # noqa: E402

dev = "cuda"
ROWS = []


def left():
    return BUDGET - (time.time() - T0)


def log(*a):
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def inputs(B, T, H, K, V, dtype, h0=True, seed=0, grad=True):
    g = torch.Generator(device=dev).manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, device=dev)  # noqa: E731
    d = dict(r=rnd(B, T, H, K), k=rnd(B, T, H, K), v=rnd(B, T, H, V),
             w=F.logsigmoid(rnd(B, T, H, K)) / 0.1, u=rnd(H, K))     # strong decay (down to ≈ -40 and below)
    d = {n: x.to(dtype).requires_grad_(grad) for n, x in d.items()}
    if h0:
        d["initial_state"] = rnd(B, H, K, V).requires_grad_(grad)
    d["output_final_state"] = True
    return d


def ref(**kw_):
    return wkv6_chunked(**kw_, chunk_size=64)


def fmt(errs):
    return " ".join(f"{k}={v:.2e}" for k, v in errs.items())


def check_small(B, T, H, K, V, dtype, bound):
    d = inputs(B, T, H, K, V, dtype)
    errs = compare(kw.wkv6, ref, d)
    worst = max(errs.values())
    ok = worst <= bound
    log(f"check B{B} T{T} H{H} K{K} V{V} {str(dtype)[6:]}: {'OK' if ok else 'FAIL'} worst={worst:.2e} | {fmt(errs)}")
    ROWS.append(("check", f"B{B} T{T} H{H} K{K} V{V} {str(dtype)[6:]}", f"{worst:.2e}", "OK" if ok else "FAIL"))
    return errs


def check_large(dtype=torch.bfloat16, bound=2e-3, tag=""):
    B, T, H, K, V = 8, 4096, 32, 64, 64
    d = inputs(B, T, H, K, V, dtype)
    x = {n: v.detach().requires_grad_(True) if torch.is_tensor(v) else v for n, v in d.items()}
    o, s = kw.wkv6(**x)
    g = torch.Generator(device=dev).manual_seed(1)
    go = torch.randn(o.shape, generator=g, device=dev).to(o.dtype)
    gs = torch.randn(s.shape, generator=g, device=dev)
    torch.autograd.backward([o, s], [go, gs])
    bs, hs = slice(0, 2), slice(0, 4)
    y = {}
    for n, v in d.items():
        if not torch.is_tensor(v):
            y[n] = v
        elif n in ("r", "k", "v", "w"):
            y[n] = v.detach()[bs, :, hs].double().requires_grad_(True)
        elif n == "u":
            y[n] = v.detach()[hs].double().requires_grad_(True)
        else:
            y[n] = v.detach()[bs, hs].double().requires_grad_(True)
    o2, s2 = ref(**y)
    torch.autograd.backward([o2, s2], [go[bs, :, hs].double(), gs[bs, hs].double()])
    errs = {"o": rel_err(o[bs, :, hs], o2), "ht": rel_err(s[bs, hs], s2)}
    for n in "rkvw":
        errs["d" + n] = rel_err(x[n].grad[bs, :, hs], y[n].grad)
    errs["dh0"] = rel_err(x["initial_state"].grad[bs, hs], y["initial_state"].grad)
    # du sums over all batches: run the kernel on the slice itself
    xs = {n: (v.detach().to(dtype) if n != "initial_state" else v.detach().float()).requires_grad_(True)
          if torch.is_tensor(v) else v for n, v in y.items()}
    o3, s3 = kw.wkv6(**xs)
    torch.autograd.backward([o3, s3], [go[bs, :, hs], gs[bs, hs]])
    errs["du"] = rel_err(xs["u"].grad, y["u"].grad)
    worst = max(errs.values())
    ok = worst <= bound
    name = f"B8 T4096 H32 K64 V64 {str(dtype)[6:]}{tag} (2x4 heads vs fp64)"
    log(f"check {name}: {'OK' if ok else 'FAIL'} worst={worst:.2e} | {fmt(errs)}")
    ROWS.append(("check", name, f"{worst:.2e}", "OK" if ok else "FAIL"))
    return errs


def bench(fn, **kw_):
    return triton.testing.do_bench(fn, warmup=kw_.get("warmup", 25), rep=kw_.get("rep", 100), return_mode="median")


def time_impl(name, f, B, T, H, K, V, dtype=torch.bfloat16):
    d = inputs(B, T, H, K, V, dtype, h0=False, grad=False)
    r, k, v, w, u = (d[n] for n in "rkvwu")
    args = [x.detach().requires_grad_(True) for x in (r, k, v, w, u)]

    def fwd():
        with torch.no_grad():
            return f(r, k, v, w, u)

    def fwdbwd():
        o = f(*args)
        o.backward(do)

    o = fwd()
    do = torch.randn_like(o)
    t_f = bench(fwd)
    fwdbwd()
    t_fb = bench(fwdbwd)
    for a in args:
        a.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fwdbwd()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    grads = sum(a.grad.numel() * a.grad.element_size() for a in args) / 2**30
    for a in args:
        a.grad = None
    log(f"time {name} B{B} T{T} H{H} K{K} V{V}: fwd {t_f:.3f} ms  fwd+bwd {t_fb:.3f} ms  "
        f"extra peak {peak:.3f} GiB (grads {grads:.3f} GiB)")
    return t_f, t_fb, peak, peak - grads


def ours(r, k, v, w, u):
    return kw.wkv6(r, k, v, w, u, scale=1.0)[0]


def guard(fn, *a, **k):
    try:
        return fn(*a, **k)
    except Exception as ex:  # noqa: BLE001
        import traceback
        traceback.print_exc()
        log(f"FAILED {getattr(fn, '__name__', fn)}{a}: {type(ex).__name__}: {str(ex)[:400]}")
        ROWS.append(("check", f"{getattr(fn, '__name__', fn)}{a}"[:55], "-", "ERROR"))


def main():
    log(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)
    # ---------------------------------------------------------------- correctness
    guard(check_small, 4, 256, 2, 64, 64, torch.bfloat16, 2e-3)
    guard(check_large, torch.bfloat16, 2e-3)
    guard(check_small, 2, 1000, 4, 128, 128, torch.bfloat16, 2e-3)
    guard(check_small, 2, 1000, 4, 60, 100, torch.bfloat16, 2e-3)
    guard(check_small, 2, 300, 3, 64, 64, torch.float16, 2e-3)
    guard(check_small, 2, 300, 3, 60, 100, torch.float32, 1e-5)
    guard(sec_misc)
    res, fla = {}, {}
    guard(sec_timing, res)
    guard(sec_split)
    guard(table, res, fla)          # printed before fla (whose first-call autotuning can outlast the budget)
    guard(sec_fla, fla)
    if fla:
        guard(table, res, fla)


def sec_misc():
    cu = torch.tensor([0, 100, 101, 777, 1000], device=dev, dtype=torch.int32)
    d = inputs(1, 1000, 4, 64, 64, torch.bfloat16, h0=False)
    d["initial_state"] = torch.randn(4, 4, 64, 64, device=dev).requires_grad_(True)
    errs = compare(lambda **a: kw.wkv6(**a, cu_seqlens=cu), lambda **a: ref(**a, cu_seqlens=cu), d)
    worst = max(errs.values())
    log(f"check varlen bf16: worst={worst:.2e} | {fmt(errs)}")
    ROWS.append(("check", "varlen 4 seqs T1000 H4 bf16", f"{worst:.2e}", "OK" if worst <= 2e-3 else "FAIL"))
    # recurrent vs chunked
    d = inputs(4, 8, 8, 64, 64, torch.bfloat16, grad=False)
    d.pop("output_final_state")
    o1, s1 = kw.wkv6_recurrent(**d)
    o2, s2 = kw.wkv6(**d, output_final_state=True)
    log(f"recurrent vs chunked: o {rel_err(o1, o2):.2e} state {rel_err(s1, s2):.2e}")
    # determinism at the big shape
    d = inputs(2, 4096, 32, 64, 64, torch.bfloat16)
    outs = []
    for _ in range(2):
        x = {n: v.detach().requires_grad_(True) if torch.is_tensor(v) else v for n, v in d.items()}
        o, s = kw.wkv6(**x)
        torch.autograd.backward([o, s], [torch.ones_like(o), torch.ones_like(s)])
        outs.append([o, s] + [x[n].grad for n in ("r", "k", "v", "w", "u", "initial_state")])
    same = all(torch.equal(a, b) for a, b in zip(*outs))
    log(f"deterministic (bit-identical rerun incl. grads): {same}")
    ROWS.append(("check", "determinism B2 T4096 H32", "-", "OK" if same else "FAIL"))


SHAPES = [(8, 4096, 32, 64, 64), (4, 2048, 16, 64, 64), (64, 256, 2, 64, 64), (1, 16384, 32, 64, 64)]


def sec_timing(res):
    for sh in SHAPES:
        res[sh] = time_impl("ours", ours, *sh)


def sec_split():
    # per-kernel breakdown at the big shape
    B, T, H, K, V = SHAPES[0]
    d = inputs(B, T, H, K, V, torch.bfloat16, h0=False, grad=False)
    r, k, v, w, u = (d[n] for n in "rkvwu")
    do = torch.randn_like(v)
    t_f = bench(lambda: kw._fwd_impl(r, k, v, w, u, 1.0, None, None))
    t_b = bench(lambda: kw._bwd_impl(r, k, v, w, u, do, None, None, None, 1.0))
    hs = torch.empty((B * T // 16 + B, H, K, V), device=dev)
    t_s = bench(lambda: kw._wkv6_bwd_states_kernel[(1, B * H)](k, v, w, hs, hs, r, T, H=H, K=K, V=V, BT=16, BK=64,
                                                                BV=64, USE_H0=False, VARLEN=False, PREC="tf32"))
    log(f"fwd op alone {t_f:.3f} ms, bwd alone {t_b:.3f} ms (states kernel {t_s:.3f} ms)")
    ROWS.append(("split", "B8 T4096 H32 fwd / bwd / states", f"{t_f:.3f}", f"{t_b:.3f} / {t_s:.3f}"))
    del hs
    # variants: intra-chunk decays by cumprod (EXP_SCAN), backward dot precision (errors and time)
    for scan, prec in ((not kw.EXP_SCAN, "tf32"), (kw.EXP_SCAN, "tf32x3"), (kw.EXP_SCAN, "ieee")):
        if left() < 60:
            log("out of time budget: skipping variants")
            break
        old = kw.EXP_SCAN, kw.BWD_PRECISION
        try:
            kw.EXP_SCAN, kw.BWD_PRECISION = scan, prec
            t_f = bench(lambda: kw._fwd_impl(r, k, v, w, u, 1.0, None, None))
            t_v = bench(lambda: kw._bwd_impl(r, k, v, w, u, do, None, None, None, 1.0))
            e = check_large(torch.bfloat16, 2e-3, tag=f" scan={scan} bwd {prec}")
            log(f"variant EXP_SCAN={scan} BWD_PRECISION={prec}: fwd {t_f:.3f} ms bwd {t_v:.3f} ms | {fmt(e)}")
            ROWS.append(("variant", f"EXP_SCAN={scan} bwd={prec}", f"fwd {t_f:.3f}", f"bwd {t_v:.3f}"))
        except Exception as ex:  # noqa: BLE001
            log(f"variant EXP_SCAN={scan} BWD_PRECISION={prec} failed: {type(ex).__name__}: {ex}")
        finally:
            kw.EXP_SCAN, kw.BWD_PRECISION = old


def sec_fla(fla):
    if os.environ.get("WKV6_FLA", "1") == "1" and left() > 45:
        try:
            from fla.ops.rwkv6 import chunk_rwkv6

            def fla_fn(r, k, v, w, u):
                return chunk_rwkv6(r, k, v, w, u, scale=1.0)[0]

            for sh in SHAPES:
                if left() < 30:
                    log("out of time budget: skipping the rest of fla")
                    break
                fla[sh] = time_impl("fla", fla_fn, *sh)
        except Exception as e:  # noqa: BLE001
            log(f"fla unavailable: {type(e).__name__}: {e}")


def table(res, fla):
    print("\n==== wkv6 checks (rel err vs fp64; bound 2e-3 half / 1e-5 fp32) ====")
    for _, name, worst, st in ROWS:
        print(f"{name:55s} worst {worst:>9s}  {st}")
    print("\n==== wkv6 timing H100 bf16 (ms, do_bench median; mem = extra peak GiB fwd+bwd, incl. / excl. grads) ====")
    print(f"{'shape':24s} {'ours fwd':>9s} {'ours f+b':>9s} {'mem':>12s} {'fla fwd':>9s} {'fla f+b':>9s} {'fla mem':>8s}")
    for sh in SHAPES:
        if sh not in res:
            continue
        a = res[sh]
        f_ = fla.get(sh)
        fs = f"{f_[0]:9.3f} {f_[1]:9.3f} {f_[2]:8.3f}" if f_ else f"{'-':>9s} {'-':>9s} {'-':>8s}"
        print(f"B{sh[0]} T{sh[1]} H{sh[2]} K{sh[3]:<8d} {a[0]:9.3f} {a[1]:9.3f} {a[2]:5.2f}/{a[3]:5.2f}  {fs}")
    print(f"total {time.time() - T0:.0f}s")


if __name__ == "__main__":
    main()
