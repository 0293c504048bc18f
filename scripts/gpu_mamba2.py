"""GPU run of the lab's mamba2 kernel (kernels/mamba2/ssd.py) against mamba-ssm's mamba_chunk_scan_combined: checks,
timings, launch counts, in one command; prints a short table last.

    python3 scripts/gpu_mamba2.py 2>&1 | tee $OUT/mamba2.log

1. checks: ``pytest tests/test_mamba2.py -m gpu -s`` in a subprocess (first CUDA-graph replay and determinism at both
   model shapes, then the lean reverse step's bf16 errors and replay, then bf16 and fp32 at both model shapes: output,
   final state and every gradient vs float64, mamba-ssm's errors printed beside); the exit status of the script is
   pytest's (MAMBA2_CHECKS=0 skips them; MAMBA2_CHECKS_K: a -k filter).
2. timings at the small (64, 256, 8, 32, 1, 32, 64) and large (16, 1024, 16, 64, 1, 64, 256) model shapes
   (B, T, H, P, G, N, chunk; the spec's bf16 inputs, dt_softplus, D [H], dt_bias): ms of the forward (no grad) and
   of forward+backward (``torch.autograd.grad`` with a fixed cotangent: no .grad accumulation), median of
   ``triton.testing.do_bench``, eager and as a replayed CUDA graph of the same call; extra peak memory of one
   fwd+bwd (MiB beyond the inputs).
3. launches: GPU kernels (and memsets/copies) per fwd+bwd, counted by torch.profiler, per implementation.
4. a sweep of the lab kernel's knobs (``ssd.TUNING``: lean, save, bwd_cfg, ws_bytes, bwd_bt, bp, dot, fwd_bt, ckpt,
   prec) under the CUDA graph, each variant's graph fwd / fwd+bwd ms and its gradients' largest relative difference
   from the default's (MAMBA2_SWEEP=0 skips it; "lean": only LEAN_SWEEP), and the registers / spills / warps the
   autotuner picked for each lab kernel.
``--compile`` (no GPU needed): compiles the lab kernels for sm_90 with this machine's Triton at both model shapes
(default tiles, every autotune config; MAMBA2_COMPILE_QUICK=1: the small shape's first configs), printing
registers and spill bytes (cuobjdump); exit 1 on a compile failure (tests/test_mamba2.py runs the quick one).
Env: MAMBA2_SHAPES (indices, e.g. "0"), MAMBA2_CHECKS (1), MAMBA2_CHECKS_K (a pytest -k filter), MAMBA2_CHECKS_S
(150: the checks' cap), MAMBA2_SWEEP (1: SWEEP; "lean": LEAN_SWEEP; 0 none), MAMBA2_BUDGET_S (480: no sweep variant
starts later, counted from the script's start); MAMBA2_SMOKE=1 (no GPU needed) runs the flow on the CPU interpreter
at a tiny shape with single timed calls and no graphs (checks the script, measures nothing).
"""
from __future__ import annotations

import os
import subprocess
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import time  # noqa: E402

if sys.argv[1:2] == ["--compile"]:    # real JIT functions, not the interpreter
    os.environ["TRITON_INTERPRET"] = "0"
import torch  # noqa: E402

SMOKE = os.environ.get("MAMBA2_SMOKE", "0") == "1"
DEV = "cpu" if SMOKE else "cuda"
SHAPES = [(64, 256, 8, 32, 1, 32, 64), (16, 1024, 16, 64, 1, 64, 256)]
# each against the default (fwd_bt None: 64 small / 32 large, bwd_bt 16, bp None, dot 1, lean 2 — the default since
# run 17: graph fwd+bwd 0.258 / 0.818 ms vs lean 0's 0.318 / 1.051 —, bwd_cfg None: the main table's row).
# LEAN_SWEEP first, most informative first (the budget cuts the tail; variants that need no new compile — ws_bytes,
# bwd_cfg — are cheap): save (the forward's chunk-entry states as the backward's checkpoints: no checkpoint pass,
# fwd BT / 16 − 1 re-walk steps a group; with fwd_bt 16 none at all, a slower forward; run 17 small: 0.250 vs 0.258);
# (2, 1) = 2 warps, 1 stage fixed (4 programs a SM at 255 registers: the small model's 512 programs in one wave, not
# two); ws_bytes 1 TiB: every chunk-entry state kept (one re-walk of 63 state steps; the default at the large shape
# walks 56 checkpoint steps and 56 re-walk steps around its 64 reverse steps); bp 32 (512 programs at the large
# shape); (8, 1) = 8 warps, where lean spills least; lean 0 / 1 (the baselines); then the knobs never timed.
LEAN_SWEEP = [dict(save=True), dict(bwd_cfg=(2, 1)), dict(save=True, bwd_cfg=(2, 1)), dict(ws_bytes=1 << 40),
              dict(save=True, fwd_bt=16), dict(bp=32), dict(bp=32, bwd_cfg=(2, 1)), dict(bwd_cfg=(8, 1)),
              dict(lean=0), dict(lean=1), dict(lean=0, bwd_cfg=(2, 1)), dict(bwd_bt=32), dict(dot=2)]
SWEEP = LEAN_SWEEP + [dict(fwd_bt=64), dict(fwd_bt=32), dict(bwd_bt=64), dict(bp=16), dict(ckpt=4), dict(fwd_bt=128),
                      dict(dot=0), dict(dot=0, prec="tf32x3")]
BUDGET_S = float(os.environ.get("MAMBA2_BUDGET_S", "480"))   # the sweep stops starting variants after this
T0 = time.monotonic()


def _impls():
    from kernels.mamba2 import mamba_chunk_scan_combined as lab
    out = {"triton": lab}
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined as peer
        out["mamba_ssm"] = peer
    except Exception as e:   # noqa: BLE001
        print(f"!! mamba_ssm not importable: {type(e).__name__}: {e}")
    return out


def _inputs(shp):
    from kernels.mamba2.spec import make_inputs
    if SMOKE:
        shp = (1, 40, 2, 8, 1, 8, 16)
    return make_inputs(*shp, True, dtype=torch.float32 if SMOKE else torch.bfloat16, seed=0, device=DEV)


def _step(fn, inp):
    leaves = [v for v in inp.values() if isinstance(v, torch.Tensor) and v.requires_grad]
    dy = torch.randn(inp["x"].shape, device=DEV, generator=torch.Generator(DEV).manual_seed(1)).to(inp["x"].dtype)

    def fwd():
        with torch.no_grad():
            return fn(**inp)

    def fwdbwd():
        return torch.autograd.grad(fn(**inp), leaves, dy)
    return fwd, fwdbwd


class _NoGraph:
    def __init__(self, f):
        self.replay = f


def _graph(f):
    if SMOKE:
        return _NoGraph(f)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            f()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        f()
    return g


def _bench(f):
    if SMOKE:
        t0 = time.perf_counter()
        f()
        return (time.perf_counter() - t0) * 1e3
    import triton
    return triton.testing.do_bench(f, warmup=25, rep=200, return_mode="median")


def _launches(f):
    if SMOKE:
        return 0, 0, {}
    from torch.profiler import ProfilerActivity, profile
    f()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        f()
        torch.cuda.synchronize()
    kern, other, names = 0, 0, {}
    for e in prof.events():
        if e.device_type != torch.autograd.DeviceType.CUDA:
            continue
        if e.name.startswith(("Memset", "Memcpy")) or "memset" in e.name.lower() or "memcpy" in e.name.lower():
            other += 1
        else:
            kern += 1
        names[e.name] = names.get(e.name, 0) + 1
    return kern, other, names


def _peak_mib(f):
    if SMOKE:
        return 0.0
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    f()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _kernel_info():
    from kernels.mamba2 import ssd
    out = []
    for k in (ssd._ssd_fwd_kernel, ssd._ssd_bwd_kernel):
        try:
            cfg = k.best_config
            fn = k.fn
            regs = []
            for dev_cache in fn.device_caches.values():
                for ck in dev_cache[0].values():
                    regs.append(f"regs {ck.n_regs} spills {ck.n_spills} warps {ck.metadata.num_warps}")
            out.append(f"{fn.__name__}: best {cfg}; compiled: " + "; ".join(sorted(set(regs))))
        except Exception as e:   # noqa: BLE001
            out.append(f"{getattr(k, '__name__', k)}: ({type(e).__name__}: {e})")
    return out


def compile_report() -> int:
    """sm_90 compile of the lab kernels (see the module docstring); 1 on a failure."""
    import re
    import tempfile
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction
    from kernels.mamba2 import ssd
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    half = {"p_x", "p_dt", "p_B", "p_C", "p_y", "p_dy", "p_dx", "p_ddt", "p_dB", "p_dC"}
    quick = os.environ.get("MAMBA2_COMPILE_QUICK") == "1"
    flags = dict(HAS_D=True, D_PER_P=False, HAS_BIAS=True, SOFTPLUS=True, PREC="tf32", DOT=ssd.TUNING["dot"])
    cases = []
    for (B, T, H, P, G, N, Q) in SHAPES[:1] if quick else SHAPES:
        BTF, BP, BN = ssd._tiles(P, N, bwd=False)
        BTB = ssd._tiles(P, N, bwd=True)[0]
        fwd_cfgs = [(4, 2), (8, 2)]
        bwd_cfgs = [(8, 1), (4, 1), (8, 2)]
        bwd = dict(flags, BT=BTB, BP=BP, BN=BN, HAS_H0=False, HAS_DHT=False, SAVED=False, p_h0=None, p_dhT=None,
                   p_dh0=None, p_st=None)
        fwd = dict(flags, BT=BTF, BP=BP, BN=BN, HAS_H0=False, STORE_HT=False, STORE_ST=False, p_h0=None, p_hT=None,
                   p_st=None)
        cases += [(ssd._ssd_fwd_kernel, fwd, fwd_cfgs[:1] if quick else fwd_cfgs),
                  (ssd._ssd_bwd_kernel, dict(bwd, LEAN=0), bwd_cfgs[:1] if quick else bwd_cfgs),
                  (ssd._ssd_bwd_kernel, dict(bwd, LEAN=2), bwd_cfgs[:1] if quick else bwd_cfgs),
                  (ssd._ssd_reduce_kernel, dict(BR=32, BN=BN, BH=H, BQ=1, BPP=P, BS=max(1, 4096 // (H * P)),
                                                HAS_D=True, D_PER_P=False, HAS_BIAS=True), [(4, 1)])]
        # save: the forward storing its chunk-entry states, the backward taking them (with lean 2)
        st = {k: v for k, v in bwd.items() if k != "p_st"}
        cases += [(ssd._ssd_fwd_kernel, dict({k: v for k, v in fwd.items() if k != "p_st"}, STORE_ST=True),
                   fwd_cfgs[:1]),
                  (ssd._ssd_bwd_kernel, dict(st, SAVED=True, LEAN=2), bwd_cfgs[:1] if quick else bwd_cfgs)]
        if not quick:   # lean 1, and the sweep's lean variants with bwd_bt 32 and bp 32
            cases += [(ssd._ssd_bwd_kernel, dict(bwd, LEAN=1), bwd_cfgs),
                      (ssd._ssd_bwd_kernel, dict(bwd, BT=32, LEAN=2), bwd_cfgs)]
            if BP > 32:
                cases.append((ssd._ssd_bwd_kernel, dict(bwd, BP=32, LEAN=2), bwd_cfgs))
    only = os.environ.get("MAMBA2_COMPILE_ONLY")     # (a substring of the kernel names to compile)
    failed = False
    for kern, consts, cfgs in cases:
        if only and only not in getattr(kern, "__name__", "") + getattr(getattr(kern, "fn", None), "__name__", ""):
            continue
        fn = kern
        while not isinstance(fn, JITFunction):
            fn = fn.fn
        types = {n: "constexpr" if n in consts else "*bf16" if n in half else "*fp32" if n.startswith("p_")
                 else "i32" for n in fn.arg_names}
        for nw, ns in cfgs:
            src = ASTSource(fn, types, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
            lean = (f" LEAN={consts['LEAN']}" if consts.get("LEAN") else "") + (
                " SAVED" if consts.get("SAVED") else "") + (" STORE_ST" if consts.get("STORE_ST") else "")
            tag = (f"{fn.__name__}{lean} BT={consts.get('BT')} BP={consts.get('BP')} "
                   f"BN={consts.get('BN')} warps={nw} stages={ns}")
            try:
                k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": nw, "num_stages": ns})
            except Exception as e:   # noqa: BLE001
                print("FAIL", tag, type(e).__name__, [ln for ln in str(e).splitlines() if ln.strip()][-3:])
                failed = True
                continue
            use = ""
            if os.path.exists(tool):
                with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
                    f.write(k.asm["cubin"])
                    f.flush()
                    out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True,
                                         text=True).stdout
                m = re.search(r"REG:(\d+) STACK:(\d+)", out)
                use = f" regs={m.group(1)} spill={m.group(2)}" if m else ""
            use += f" smem={getattr(k.metadata, 'shared', '?')}"
            print("ok", tag + use, flush=True)
    return 1 if failed else 0


def _table(rows):
    f = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    dev_name = "CPU (smoke)" if SMOKE else torch.cuda.get_device_name()
    print(f"\n== mamba2 on {dev_name} (bf16, ms, do_bench median; graph = CUDA-graph replay)")
    print(f"{'shape':<34} {'impl':<10} {'fwd':>8} {'fwd+bwd':>8} {'g.fwd':>8} {'g.fb':>8} {'peakMiB':>8} "
          f"{'launch f':>8} {'launch fb':>9}")
    for r in rows:
        mem = "-" if r[6] is None else f"{r[6]:.0f}"
        print(f"{r[0]:<34} {r[1]:<10} {f(r[2]):>8} {f(r[3]):>8} {f(r[4]):>8} {f(r[5]):>8} {mem:>8} {r[7]:>8} "
              f"{r[8]:>9}")


def main() -> int:
    if sys.argv[1:2] == ["--compile"]:
        return compile_report()
    rc = 0
    checks = os.environ.get("MAMBA2_CHECKS", "0" if SMOKE else "1")
    if checks == "1":
        k = os.environ.get("MAMBA2_CHECKS_K")
        sel = ["-k", k] if k else []
        print(f"== checks: pytest tests/test_mamba2.py -m gpu -s {' '.join(sel)}", flush=True)
        cap = float(os.environ.get("MAMBA2_CHECKS_S", "150"))   # the timings after it must still run
        try:
            rc = subprocess.call([sys.executable, "-m", "pytest", "tests/test_mamba2.py", "-m", "gpu", "-s", "-q",
                                  "-p", "no:cacheprovider", *sel], cwd=ROOT, timeout=cap)
        except subprocess.TimeoutExpired:
            rc = 124
            print(f"== checks: cut after MAMBA2_CHECKS_S={cap:.0f} s (raise it to run them all)", flush=True)
        print(f"== checks rc={rc}", flush=True)
    import kernels  # noqa: F401
    from kernels.mamba2 import ssd
    impls = _impls()
    idx = [int(i) for i in os.environ.get("MAMBA2_SHAPES", "0,1").split(",") if i.strip()]
    rows, sweep_rows = [], []
    for i in idx:
        shp = SHAPES[i]
        label = "B{} T{} H{} P{} G{} N{} Q{}".format(*shp)
        inp = _inputs(shp)
        for name, fn in impls.items():
            try:
                fwd, fb = _step(fn, inp)
                fwd(), fb()
                t_f, t_fb = _bench(fwd), _bench(fb)
                gf, gfb = _graph(fwd), _graph(fb)
                tg_f, tg_fb = _bench(gf.replay), _bench(gfb.replay)
                kern, other, names = _launches(fb)
                kf, of, _ = _launches(fwd)
                mem = _peak_mib(fb)
                rows.append((label, name, t_f, t_fb, tg_f, tg_fb, mem, f"{kf}+{of}", f"{kern}+{other}"))
                print(f"-- {label} {name}: fwd {t_f:.4f} ms, fwd+bwd {t_fb:.4f} ms, graph fwd {tg_f:.4f}, graph "
                      f"fwd+bwd {tg_fb:.4f}; launches fwd {kf}+{of}, fwd+bwd {kern}+{other} (kernels+mem ops); "
                      f"peak +{mem:.0f} MiB", flush=True)
                print("   kernels per fwd+bwd: " + ", ".join(f"{n} x{c}" for n, c in sorted(names.items())))
                del gf, gfb
            except Exception:   # noqa: BLE001
                print(f"!! {label} {name} failed:\n" + traceback.format_exc()[-3000:], flush=True)
                rows.append((label, name, None, None, None, None, None, "-", "-"))
        del inp
    _table(rows)   # (again at the end, after the sweep: a command cut short keeps this one)
    # the knob sweep last, variant by variant at every shape, within the time budget (a new knob value compiles)
    sweep = os.environ.get("MAMBA2_SWEEP", "1")
    if sweep in ("1", "lean") and "triton" in impls:
        old = dict(ssd.TUNING)
        cases = [("B{} T{} H{} P{} G{} N{} Q{}".format(*SHAPES[i]), _inputs(SHAPES[i])) for i in idx]
        base = {label: [g.float() for g in _step(impls["triton"], inp)[1]()] for label, inp in cases}   # the walk's

        def _vs_base(label, gs):   # max over the gradients of ‖g − g_walk‖ / ‖g_walk‖ (rounding-level if right)
            return max(((a.float() - b).norm() / b.norm().clamp_min(1e-30)).item() for a, b in zip(gs, base[label]))
        for v in (LEAN_SWEEP if sweep == "lean" else SWEEP):
            for label, inp in cases:
                if time.monotonic() - T0 > BUDGET_S:
                    sweep_rows.append((label, str(v) + " (skipped: time budget)", None, None, None))
                    continue
                ssd.TUNING.update(v)
                try:
                    fwd, fb = _step(impls["triton"], inp)
                    fwd()
                    dv = _vs_base(label, fb())
                    gf, gfb = _graph(fwd), _graph(fb)
                    bc = getattr(ssd._ssd_bwd_kernel, "best_config", None)   # (the autotuner's pick, when it ran)
                    pick = (f" [{v['bwd_cfg'][0]}w]" if v.get("bwd_cfg") else
                            f" [{bc.num_warps}w{bc.num_stages}s]" if bc is not None else "")
                    sweep_rows.append((label, str(v) + pick, _bench(gf.replay), _bench(gfb.replay), dv))
                    print(f"sweep {sweep_rows[-1]}", flush=True)
                    del gf, gfb
                except Exception as e:   # noqa: BLE001
                    sweep_rows.append((label, str(v) + f" FAILED {type(e).__name__}: {str(e)[:200]}", None, None, None))
                ssd.TUNING.clear()
                ssd.TUNING.update(old)
        del cases
    if not SMOKE:
        print("\n== lab kernels as compiled:\n" + "\n".join(_kernel_info()))
    _table(rows)
    if sweep_rows:
        f = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        print("\n== lab knob sweep (graph replay ms: fwd, fwd+bwd; compare with the table's triton g.fwd / g.fb; "
              "vs walk: max rel. difference of the gradients from the default's)")
        for r in sweep_rows:
            print(f"{r[0]:<34} {r[1]:<55} {f(r[2]):>8} {f(r[3]):>8} {'-' if r[4] is None else f'{r[4]:.1e}':>8}")
    print(f"\n== checks rc={rc}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
