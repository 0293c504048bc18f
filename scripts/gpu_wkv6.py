"""GPU check + timing of kernels.wkv6, both algorithms: ``wkv6`` (chunk-parallel, the default) and ``wkv6_fused``
(sequential) — one command on one GPU machine; prints a compact table last.

    python3 scripts/gpu_wkv6.py --part aux > $OUT/aux.log 2>&1 &
    PYTHONUNBUFFERED=1 python3 scripts/gpu_wkv6.py 2>&1 | tee $OUT/wkv6.log

Two processes share the GPU so that Triton compiles (CPU-bound, minutes in all) overlap:
* ``--part aux``: correctness of the other specializations (bf16 K=V=128 with two V-blocks, fp16, fp32 with
  K=60/V=100), small shapes, results to /tmp/wkv6_aux.json;
* ``--part main`` (default): bf16 correctness at B8 T4096 H32 K=V=64 (reference: float64 chunked on 2 batches × 4
  heads of the same inputs; du through a kernel run on that slice) and B4 T256, varlen, recurrent vs chunked,
  determinism; fla warm-up (its autotuning) while aux compiles; then, once aux is done, timings
  (triton.testing.do_bench, median) of forward and forward+backward and extra peak memory, ours and fla's
  chunk_rwkv6 (when importable).
Errors are ‖x − ref‖/‖ref‖ against float64 with the *same* (dtype-rounded) cotangents on both sides.
WKV6_BUDGET_S (default 175) bounds the optional sections. WKV6_SMOKE=1 runs the whole flow on CPU (interpreter,
tiny shapes, wall-clock "timings") to check the script itself; WKV6_ALGOS=parallel,fused picks the algorithms.
"""
from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
T0 = time.time()
BUDGET = float(os.environ.get("WKV6_BUDGET_S", "175"))
SMOKE = os.environ.get("WKV6_SMOKE", "0") == "1"
PART = "aux" if "--part" in sys.argv and sys.argv[sys.argv.index("--part") + 1] == "aux" else "main"
AUX_JSON, AUX_DONE = "/tmp/wkv6_aux.json", "/tmp/wkv6_aux.done"
if SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402

import kernels  # noqa: E402,F401
import kernels.wkv6 as kw  # noqa: E402
from groundthink.harness import compare, rel_err  # noqa: E402
from reference.wkv6 import wkv6_chunked  # noqa: E402

dev = "cpu" if SMOKE else "cuda"
ROWS = []
SHAPES = [(8, 4096, 32, 64, 64), (4, 2048, 16, 64, 64), (64, 256, 2, 64, 64), (1, 16384, 32, 64, 64)]
LARGE = (8, 4096, 32, 64, 64)
if SMOKE:
    SHAPES = [(1, 70, 2, 16, 16), (2, 33, 1, 16, 16)]
    LARGE = (2, 70, 4, 16, 16)
ALGOS = {n: {"parallel": kw.wkv6, "fused": kw.wkv6_fused}[n]
         for n in os.environ.get("WKV6_ALGOS", "parallel,fused").split(",")}


def left():
    return BUDGET - (time.time() - T0)


def log(*a):
    print(f"[{PART} {time.time() - T0:6.1f}s]", *a, flush=True)


def guard(fn, *a, **k):
    try:
        return fn(*a, **k)
    except Exception as ex:  # noqa: BLE001
        import traceback
        traceback.print_exc()
        log(f"FAILED {fn.__name__}{a}: {type(ex).__name__}: {str(ex)[:400]}")
        ROWS.append((f"{fn.__name__}{a}"[:60], "-", "ERROR"))


def inputs(B, T, H, K, V, dtype, h0=True, seed=0, grad=True):
    g = torch.Generator(device=dev).manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, device=dev)  # noqa: E731
    d = dict(r=rnd(B, T, H, K), k=rnd(B, T, H, K), v=rnd(B, T, H, V),
             w=F.logsigmoid(rnd(B, T, H, K)) / 0.1, u=rnd(H, K))     # strong decay (fla's test: down to < -40)
    d = {n: x.to(dtype).requires_grad_(grad) for n, x in d.items()}
    if h0:
        d["initial_state"] = rnd(B, H, K, V).requires_grad_(grad)
    d["output_final_state"] = True
    return d


def ref(**kw_):
    return wkv6_chunked(**kw_, chunk_size=64)


def fmt(errs):
    return " ".join(f"{k}={v:.2e}" for k, v in errs.items())


def record(name, errs, bound):
    worst = max(errs.values())
    ok = worst <= bound
    log(f"check {name}: {'OK' if ok else 'FAIL'} worst={worst:.2e} (bound {bound:g}) | {fmt(errs)}")
    ROWS.append((name, f"{worst:.2e}", "OK" if ok else "FAIL"))


def check_small(algo, B, T, H, K, V, dtype, bound):
    errs = compare(ALGOS[algo], ref, inputs(B, T, H, K, V, dtype))
    record(f"{algo} B{B} T{T} H{H} K{K} V{V} {str(dtype)[6:]}", errs, bound)


def check_large(algo, dtype=torch.bfloat16, bound=2e-3, shape=None):
    B, T, H, K, V = shape or LARGE
    fn = ALGOS[algo]
    d = inputs(B, T, H, K, V, dtype)
    x = {n: v.detach().requires_grad_(True) if torch.is_tensor(v) else v for n, v in d.items()}
    o, s = fn(**x)
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
    xs = {n: (v.detach().to(dtype) if n != "initial_state" else v.detach().float()).requires_grad_(True)
          if torch.is_tensor(v) else v for n, v in y.items()}     # du sums over all batches: kernel on the slice
    o3, s3 = fn(**xs)
    torch.autograd.backward([o3, s3], [go[bs, :, hs], gs[bs, hs]])
    errs["du"] = rel_err(xs["u"].grad, y["u"].grad)
    record(f"{algo} B{B} T{T} H{H} K{K} V{V} {str(dtype)[6:]} (2x4 heads vs fp64)", errs, bound)


def check_misc():
    T_, K_ = (1000, 64) if not SMOKE else (150, 16)
    cu = torch.tensor([0, 100, 101, 777, 1000] if not SMOKE else [0, 64, 65, 65, 150], device=dev,
                      dtype=torch.int32)
    for algo, fn in ALGOS.items():
        d = inputs(1, T_, 4, K_, K_, torch.bfloat16, h0=False)
        d["initial_state"] = torch.randn(4, 4, K_, K_, device=dev).requires_grad_(True)
        errs = compare(lambda **a: fn(**a, cu_seqlens=cu), lambda **a: ref(**a, cu_seqlens=cu), d)
        record(f"{algo} varlen 4 seqs T{T_} H4 K{K_} bf16", errs, 2e-3)
    if len(ALGOS) == 2:     # the two algorithms agree (bf16: both within their bf16 rounding of each other)
        d = inputs(2, 2048 if not SMOKE else 100, 4, K_, K_, torch.bfloat16)
        res = []
        for fn in ALGOS.values():
            x = {n: v.detach().requires_grad_(True) if torch.is_tensor(v) else v for n, v in d.items()}
            o, s = fn(**x)
            g = torch.Generator(device=dev).manual_seed(3)
            torch.autograd.backward([o, s], [torch.randn(o.shape, generator=g, device=dev).to(o.dtype),
                                             torch.randn(s.shape, generator=g, device=dev)])
            res.append({"o": o, "ht": s, **{"d" + n: x[n].grad for n in ("r", "k", "v", "w", "u", "initial_state")}})
        record("parallel vs fused B2 T2048 H4 bf16", {n: rel_err(res[0][n], res[1][n]) for n in res[0]}, 4e-3)
    d = inputs(4, 8, 8, K_, K_, torch.bfloat16, grad=False)
    d.pop("output_final_state")
    o1, s1 = kw.wkv6_recurrent(**d)
    o2, s2 = kw.wkv6(**d, output_final_state=True)
    e = {"o": rel_err(o1, o2), "state": rel_err(s1, s2)}
    record("recurrent vs chunked B4 T8 H8 bf16", e, 2e-3)
    d = inputs(2, 4096, 32, 64, 64, torch.bfloat16) if not SMOKE else inputs(1, 70, 2, 16, 16, torch.bfloat16)
    for algo, fn in ALGOS.items():
        outs = []
        for _ in range(2):
            x = {n: v.detach().requires_grad_(True) if torch.is_tensor(v) else v for n, v in d.items()}
            o, s = fn(**x)
            torch.autograd.backward([o, s], [torch.ones_like(o), torch.ones_like(s)])
            outs.append([o, s] + [x[n].grad for n in ("r", "k", "v", "w", "u", "initial_state")])
        same = all(torch.equal(a, b) for a, b in zip(*outs))
        log(f"{algo} deterministic (bit-identical rerun incl. grads): {same}")
        ROWS.append((f"{algo} determinism B2 T4096 H32 (o, state, all grads)", "-", "OK" if same else "FAIL"))


def bench(fn):
    if SMOKE:
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def _mem(fn, args):
    if SMOKE:
        fn()
        return 0.0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**30


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
    peak = _mem(fwdbwd, args)
    grads = sum(a.grad.numel() * a.grad.element_size() for a in args) / 2**30
    for a in args:
        a.grad = None
    log(f"time {name} B{B} T{T} H{H} K{K} V{V}: fwd {t_f:.3f} ms  fwd+bwd {t_fb:.3f} ms  "
        f"extra peak {peak:.3f} GiB (of which grads {grads:.3f} GiB)")
    return t_f, t_fb, peak, peak - grads


def ours(algo):
    fn = ALGOS[algo]

    def f(r, k, v, w, u):
        return fn(r, k, v, w, u, scale=1.0)[0]
    return f


def fla_fn():
    from fla.ops.rwkv6 import chunk_rwkv6

    def f(r, k, v, w, u):
        return chunk_rwkv6(r, k, v, w, u, scale=1.0)[0]
    return f


def split():
    B, T, H, K, V = SHAPES[0]
    d = inputs(B, T, H, K, V, torch.bfloat16, h0=False, grad=False)
    r, k, v, w, u = (d[n] for n in "rkvwu")
    do = torch.randn_like(v)
    if "parallel" in ALGOS:
        B_, T_, H_, K_, V_, N_ = kw._dims(r, v, None)
        t_pf = bench(lambda: kw._par_fwd_impl(r, k, v, w, u, 1.0, None, None))
        t_ps = bench(lambda: kw._par_states(r, k, v, w, None, 1.0, None, None, None, "fwd"))
        hs_p = kw._par_fwd_impl(r, k, v, w, u, 1.0, None, None, save=True)[2]
        t_pb = bench(lambda: kw._par_bwd_impl(r, k, v, w, u, do, None, None, None, 1.0, hs_p))
        t_pbs = bench(lambda: kw._par_states(r, k, v, w, do, 1.0, None, None, None, "bwd_d"))
        t_pb2 = bench(lambda: kw._par_bwd_impl(r, k, v, w, u, do, None, None, None, 1.0, None))
        del hs_p
        log(f"split parallel B{B} T{T} H{H}: fwd {t_pf:.3f} ms (states+scan {t_ps:.3f}, output {t_pf - t_ps:.3f}); "
            f"bwd with saved states {t_pb:.3f} ms (dstates+scan {t_pbs:.3f}, main {t_pb - t_pbs:.3f}); "
            f"bwd recomputing the states {t_pb2:.3f} ms")
        for kern in (kw._chunk_state_kernel, kw._chunk_fwd_out_kernel, kw._chunk_bwd_kernel):
            cache = getattr(kern, "cache", {})
            log(f"autotune {getattr(kern.fn, '__name__', kern.fn)}: "
                + "; ".join(f"{k_} -> {c}" for k_, c in cache.items()))
        SPLIT_PAR[:] = [t_pf, t_ps, t_pb, t_pbs, t_pb2]
    if "fused" not in ALGOS:
        return None
    _, _, hs = kw._fwd_impl(r, k, v, w, u, 1.0, None, None, save=True)
    t_f = bench(lambda: kw._fwd_impl(r, k, v, w, u, 1.0, None, None))
    t_fs = bench(lambda: kw._fwd_impl(r, k, v, w, u, 1.0, None, None, save=True))
    t_b = bench(lambda: kw._bwd_impl(r, k, v, w, u, do, None, None, None, 1.0, hs))
    t_b2 = bench(lambda: kw._bwd_impl(r, k, v, w, u, do, None, None, None, 1.0, None))
    log(f"split B8 T4096 H32: fwd {t_f:.3f} ms, fwd+checkpoints {t_fs:.3f} ms, bwd main {t_b:.3f} ms, "
        f"bwd incl. checkpoint recompute {t_b2:.3f} ms")
    for kern in (kw._wkv6_fwd_kernel, kw._wkv6_bwd_main_kernel, kw._wkv6_bwd_states_kernel):
        cache = getattr(kern, "cache", {})
        log(f"autotune {getattr(kern.fn, '__name__', kern.fn)}: " + "; ".join(f"{k} -> {c}" for k, c in cache.items()))
    return t_f, t_fs, t_b, t_b2


SPLIT_PAR = []


def table(res, fla, sp):
    print("\n==== wkv6 checks (rel err vs fp64, same cotangents; bound 2e-3 half / 1e-5 fp32) ====")
    rows = list(ROWS)
    if os.path.exists(AUX_JSON):
        rows += [tuple(r) for r in json.load(open(AUX_JSON))]
    for name, worst, st in rows:
        print(f"{name:60s} worst {worst:>9s}  {st}")
    if SPLIT_PAR:
        sp2 = SPLIT_PAR
        print(f"\nsplit parallel {SHAPES[0]}: fwd {sp2[0]:.3f} (states+scan {sp2[1]:.3f}) / bwd {sp2[2]:.3f} "
              f"(dstates+scan {sp2[3]:.3f}) / bwd recomputing states {sp2[4]:.3f} ms")
    if sp:
        print(f"split fused {SHAPES[0]}: fwd {sp[0]:.3f} / fwd+ckpt {sp[1]:.3f} / bwd {sp[2]:.3f} / "
              f"bwd+ckpt-recompute {sp[3]:.3f} ms")
    dev_name = "CPU smoke (meaningless)" if SMOKE else torch.cuda.get_device_name()
    print(f"\n==== wkv6 timing {dev_name} bf16 (ms, do_bench median; mem = extra peak GiB fwd+bwd "
          f"incl./excl. grads) ====")
    print(f"{'shape':22s} " + " ".join(f"{a[:3] + ' fwd':>9s} {a[:3] + ' f+b':>9s} {a[:3] + ' mem':>11s}"
                                      for a in list(ALGOS) + ["fla"]))
    for sh in SHAPES:
        cells = []
        for a in list(ALGOS) + ["fla"]:
            x = (fla if a == "fla" else res.get(a, {})).get(sh)
            cells.append(f"{x[0]:9.3f} {x[1]:9.3f} {x[2]:5.2f}/{x[3]:5.2f}" if x else f"{'-':>9s} {'-':>9s} {'-':>11s}")
        print(f"B{sh[0]} T{sh[1]} H{sh[2]} K{sh[3]:<5d} " + " ".join(cells))
    print(f"total {time.time() - T0:.0f}s", flush=True)


def main_part():
    log(("CPU smoke" if SMOKE else torch.cuda.get_device_name()), "torch", torch.__version__,
        "triton", triton.__version__)
    small = (4, 256, 2, 64, 64) if not SMOKE else (2, 40, 2, 16, 16)
    for algo in ALGOS:
        guard(check_small, algo, *small, torch.bfloat16, 2e-3)
        guard(check_large, algo, torch.bfloat16, 2e-3)
    guard(check_misc)
    while not SMOKE and not os.path.exists(AUX_DONE) and time.time() - T0 < 125:
        time.sleep(1)
    log(f"aux done: {os.path.exists(AUX_DONE)}")
    res, fla = {a: {} for a in ALGOS}, {}
    for sh in SHAPES:
        for algo in ALGOS:
            r_ = guard(time_impl, algo, ours(algo), *sh)
            if r_:
                res[algo][sh] = r_
    sp = guard(split)
    guard(table, res, fla, sp)
    # fla last (its first-call autotuning can take minutes): whatever the budget allows
    if os.environ.get("WKV6_FLA", "1" if not SMOKE else "0") == "1":
        try:
            f = fla_fn()
        except Exception as e:  # noqa: BLE001
            log(f"fla unavailable: {type(e).__name__}: {e}")
            return
        for sh in SHAPES:
            if left() < 15:
                log("out of time budget: rest of fla skipped")
                break
            r_ = guard(time_impl, "fla", f, *sh)
            if r_:
                fla[sh] = r_
                guard(table, res, fla, sp)


def aux_part():
    cases = [(2, 1000, 4, 128, 128, torch.bfloat16, 2e-3), (2, 300, 3, 64, 64, torch.float16, 2e-3),
             (2, 300, 3, 60, 100, torch.float32, 1e-5)]
    if SMOKE:
        cases = [(1, 70, 1, 20, 24, torch.float32, 1e-5)]
    for args in cases:
        for algo in ALGOS:
            guard(check_small, algo, *args)
            json.dump(ROWS, open(AUX_JSON, "w"))
    open(AUX_DONE, "w").close()


if __name__ == "__main__":
    for f_ in (AUX_JSON, AUX_DONE) if PART == "aux" else ():
        if os.path.exists(f_):
            os.remove(f_)
    main_part() if PART == "main" else aux_part()
