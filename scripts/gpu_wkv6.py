"""GPU dev run of kernels.wkv6: timings of every algorithm, knob variant and fla's chunk_rwkv6, the
compile report and per-kernel GPU times, in one command on one GPU machine; prints a compact table last. A thin
caller: correctness is the GPU tests' (tests/test_wkv6.py, ``@pytest.mark.gpu``), run here in a subprocess; the
timings are the benchmarks' measurement on the spec's inputs.

    python3 scripts/gpu_wkv6.py --warm-fla > $OUT/fla_warm.log 2>&1 &     # fla's minutes of autotuning, meanwhile
    python3 scripts/gpu_wkv6.py 2>&1 | tee $OUT/wkv6.log                  # GPU tests, waits for the warm-up, times
    python3 scripts/gpu_wkv6.py --first-call 2>&1 | tee -a $OUT/wkv6.log  # cold process: compile + autotune time

Checks (WKV6_CHECKS, default 1 in the main mode, 0 with ``--resources``): ``pytest tests/test_wkv6.py -m
gpu`` (WKV6_TESTS_K: its -k filter, default all), i.e. ‖x − ref‖/‖ref‖ of o, final state and every gradient
against the float64 reference with the same dtype-rounded cotangents on both sides, for every algorithm, forward
mode and knob the tests list (bf16 / fp16 / fp32, mild / strong / extreme decay, varlen, odd K and V, B8 T4096
H32), and determinism; the exit status of the script is pytest's.
WKV6_DEADLINE_S: the GPU tests' subprocess is stopped that many seconds after the script's start (the summary
still prints; tests cut say so). WKV6_FLA_SHAPES (indices into SHAPES) limits fla's warm-up and timing (its autotuning costs ~40 s a shape).
Timings: the benchmarks' measurement (``bench.common.measure``: one untimed first call, then
``time_fn``: the median of 5 batches of back-to-back calls, 125 ms in all) in ms of the forward (no grad) and
forward+backward (fixed random cotangent), on the benchmark's inputs (``kernels/wkv6/spec.py``: bf16, mild decay
``logsigmoid(randn)``, seed 0), scale 1; extra peak memory of one fwd+bwd (GiB, the input gradients included);
then both steps as CUDA-graph replays (``gate.graph_ms``, the benchmarks' ms_graph: GPU time without the host's,
which sets the eager medians of the small shapes — run 25: 1.45 ms eager for 0.23 ms of GPU work at B64 T256 H4).
Env: WKV6_ALGOS (comma list of the names in ALGOS), WKV6_BUDGET_S, WKV6_SHAPES
(indices into SHAPES, e.g. 0,2), WKV6_CHECKS=0 (timings only: the tests check correctness);
WKV6_SMOKE=1 runs the whole flow on CPU (interpreter, tiny shapes, one timed call instead of do_bench: checks the
script, measures nothing). Run the first call's measurement with a fresh TRITON_CACHE_DIR. ``--regs``
(no GPU needed): registers, spill stack and SASS instructions of the backward's, the walks' and the state scan's
kernels as compiled for sm_90 on this machine (WKV6_REGS_ONLY picks kernels; WKV6_REGS_BT: a comma list of the
``state_rows`` knob values to compile ``_bwd_cross_kernel`` at; WKV6_REGS_MAXNREG: a comma list of register caps,
0 = none; WKV6_REGS_PREC: the dots' precision, "tf32" or "tf32_trunc"; WKV6_REGS_SET: constexprs set in every
case that has them, e.g. "PIPE=False,HAS_A=True"). Each line ends with the SASS digest
(``bench.sm90.sass_digest``): equal digests before and after a change = the same compiled kernel (how a default
is shown unchanged by a default-off candidate added beside it). This machine's Triton may not be the GPU
machine's: session 24's offline compile (Triton 3.9) gave ``_bwd_cross_kernel`` 255 registers + 144 B spill at 4
warps, where the H200's Triton 3.6 compiled it at 138 and none — read the offline figures as differences only;
``--host`` (CPU): host µs per call
with every Triton launch stubbed. ``--host-gpu``: where the eager fwd+bwd's host time goes on the GPU machine (per
shape and algorithm, fla where warm: ms per call synced, ms per call back to back, cProfile's top functions).

Chunk backward variants (``kernels.wkv6.chunk.TUNING``, in VARIANTS; forward modes in SEQ; named in WKV6_ALGOS only,
forward: the sequential walk): chunk_nosave (states recomputed in the backward instead of saved), chunk_lowmem
(``LOWMEM``: recomputed, batch pieces of <= 128 MiB of fp32 buffers, narrow scan blocks, the fused backward and
the default's ``fwd_scores`` rule; = ``wkv6_chunk_lowmem``),
chunk_run9 (run 9's forward: state_rows 64, scan_pipe off, one walk kernel), chunk_rows64 / chunk_rows32
(``state_rows`` forced: fp32 states every 64 / 32 rows; the default, None, takes 32 with the walk forward and 64
with the state pass), chunk_nopipe (the state scans without PIPE; H200 run 31 timed and dropped rings of one and
four tiles), chunk_fill1 / chunk_fill2 (narrow scan blocks until 1 / 2 × #SMs programs), chunk_walk1 (the level
walk, ``fwd_scores`` False), chunk_auto (the default knobs: time a knob beside it),
chunk_par_fill2 (the state-pass forward, fill2), chunk_seq_scores / chunk_par_scores (``fwd_scores``: the blocks'
scores from ``_fwd_scores_kernel``, the walk in 16-row blocks (``fwd_step`` False) / the one-kernel state pass +
the chunk-parallel output),
chunk_par_one / chunk_par_two (the scored state-pass forward with ``fwd_states`` "one" / "two": the one-kernel
state pass or the chunk states + scan; the default takes "one" up to T 4096, "two" above: session 21, untimed),
chunk_seq_levels / chunk_par_levels (``fwd_scores`` False: the level code in the walk / state-pass output, the
default until run 12; chunk_run9 and chunk_walk1 run without the scores kernel too), chunk_seq_pipe
(the scored walk in 16-row blocks with ``fwd_pipe``: the next block's loads in flight; chunk_seq_scores without:
H200 run 33, walk kernel 1,083 / 1,220 µs at B8 T4096 H32, 51 / 48 at B64 T256 H2 — on since), chunk_seq_step (the scored
walk in 32-row steps, ``fwd_step``: the default's walk since run 16), chunk_seq_rows64 (the scored walk at
``state_rows`` 64: 16-row blocks), chunk_bsplit / chunk_bsplit64
(``bwd_split`` "block": the backward's own pairs in 1-warp programs, then the state kernel, one program per block;
the latter at 64-row states), chunk_bfused / chunk_bfused64 (``bwd_split`` "fused": one kernel per chunk, own pairs
and crossing terms per key slice, no fp32 partials; 32- / 64-row states), chunk_bslice (the split backward on
batch slices of <= 256 MiB of fp32 partials, ``split_bytes``), chunk_bstates1 / chunk_bstates2 (the backward's D_c
in one kernel, ``bwd_states`` "one": no per-chunk ΔD round trip / in two, the ΔD kernel and the scan; the default
takes "one" where S_c is saved and T <= 4096 since H200 run 33; timed and removed there: chunk_bstates1_nosave, the
one-kernel D_c with S_c recomputed by the forward's one-kernel pass in chunk_pieces_nosave's pieces — 6,912 against
5,674 GPU µs at B8 T4096 H32, both 0.86 GiB: one batch element's 128 programs per piece leave the H200 half idle
through 128 chunks in series), chunk_overlap (``bwd_overlap``: the own kernel on a side stream beside the
backward's state pass; session 29, untimed since H200 run 24 found nothing at B8 T4096 H32), chunk_pieces /
chunk_pieces_nosave (the extra peak memory: the backward in batch pieces of <= 128 MiB of fp32 state buffers,
D_c and the own kernel's partials per piece; the latter also recomputing S_c per piece of <= 64 MiB instead of keeping the forward's: at B8 T4096 H32
K = V = 64 the default holds 0.5 GiB of gradients + 0.125 of o + 0.5 saved S + 0.0625 scores + 0.5 D + 0.75
partials = 2.44 GiB, the pieces ~1.5 and ~0.9 by that count; H200 run 32: 2.46 -> 1.51 and 0.86 GiB, GPU µs
4,577 -> 4,738 and 5,661; run 33, with the one-kernel D pass per piece: 4,272 -> 4,724 and 5,674; ``LOWMEM``
8,707 at 0.76 GiB); the others keep the
default's forward mode (the walk where chunk_seq runs, the state pass where chunk_par does: compare with that
one). Run 10 (wkv6f) timed the scan knobs against run 9's default
(profiles/nvidia-h100-80gb-hbm3/run10-2026-11-27/wkv6f/). Run 5 also timed
chunk_bv32 (32 V columns per backward program, fp32 partial sums), run 8 chunk_rows16 and the "dot" move
(chunk_movedot, chunk_rows32_movedot: S and D moved by one masked dot each), run 9 chunk_carry (one program per
chunk carrying D, S saved every 16 rows), run 6 two split backwards (chunk_split, chunk_split_blk: two kernels
joined through fp32 partials), run 11 chunk_nreg128 (a 128-register cap: never better than 168) and a chunk_bsplit
at 4 warps (the block kernel's split again, call 6), run 16 chunk_bsplitc / chunk_bsplitc64 (``bwd_split``
"chunk": the state kernel one program per chunk), chunk_bfusedc / chunk_bfusedc64 (``bwd_split`` "fused_chunk":
the fused kernel with one block per chunk, no state moves) and chunk_seq_step64 (64-row steps), run 17 chunk_bpair
(``bwd_split`` "pair": the split backward's state kernel one program per 32-row chunk, no state moves),
chunk_lowmem_fused32 (``LOWMEM`` at 32-row states: faster at B8 T4096 H32 only, more memory), run 30 chunk_xdots /
chunk_xdots8 (``cross_moves`` "dots": the cross kernel's state moves as dots of the other block's rows, at 4 / 8
warps: cross kernel 4,530 / 6,070 vs 2,611 µs at B8 T4096 H32), chunk_sumdots (``decay_sums`` "scans" / "dots":
the scored walk's steps and the cross kernel summing w by scans and column sums or by 0/1 dots; dots won at every
shape and the knob went), run 32 chunk_xearly (``cross_early``: the cross kernel's block loads before its state
moves: cross kernel 2,002 -> 2,105 µs at B8 T4096 H32, 1,228 -> 1,566 at B1 T16384 H32; chunk_ownpipe, the own
kernel's next key slice in flight, won and is the own kernel's only form) and chunk_split (``fwd_split``: the level
walk in two kernels; at B64 T256 H2, its last default place, 231 GPU µs per fwd+bwd against the scored walk's 187)
and the one-kernel
``_bwd_kernel`` (``bwd_split`` False; chunk_bwd1, chunk_nreg0 / chunk_nreg168: its ``bwd_maxnreg`` cap; the old
``LOWMEM``'s backward): they lost and were removed. ``--resources`` with WKV6_CHECKS=1 runs the
GPU tests after its timings. Dot precision (PRECISIONS, the default knobs otherwise): chunk_fwdtrunc /
chunk_fwdround (the forward's "tf32" dots read truncated by the tensor cores / rounded to nearest first),
chunk_crosstrunc (the split backward's cross kernel truncated), chunk_trunc (every dot truncated: before eeda170),
chunk_dwx3 (the own pairs' dw span dots in Triton's three tf32 passes, ``DW_PRECISION`` "tf32x3": the default
until H200 run 31 timed two passes, own kernel 1,099 -> 972 µs at B8 T4096 H32). Timed and removed in H200 run 33
(GPU µs per fwd+bwd at B8 T4096 H32 / B4 T2048 H16 / B64 T256 H2 / B1 T16384 H32 against the default's 4,629 / 712
/ 191 / 2,794): chunk_crossdwx2 (the cross kernel's dw triangle dots in two tf32 passes) 4,611 / 709 / 191 / 2,776
— under 1 %, for a less exact dw (the gradient nearest its bound); chunk_walk_cap128 (the scored walk's steps at
BV 32 capped at 128 registers: one wave) 4,861 (walk 623 -> 875 µs) / 708 / 202 / 2,788; chunk_scores_cap128 /
chunk_scores_w2 (the scores kernel capped at 128 registers / at 2 warps) 4,599 / 4,607 at B8 T4096 (scores kernel
342 -> 339 / 340), within 2 µs elsewhere.
One kernel's configs replaced (CONFIGS): chunk_walk_s1 (the scored walk's steps at 1 pipeline stage, BV 64: the
default before H200 run 30 took 2 stages, the next step's loads in flight: 924 -> 616 µs at B8 T4096 H32);
chunk_par_s1 (the chunk-parallel output kernel ``_fwd_par_scored_kernel`` at 1 stage, BV 64 at 2 / 4 warps: the
default before run 31 took 2 stages, 119 -> 84 µs at B4 T2048 H16, 415 -> 281 at B1 T16384 H32). The own and
scores kernels at 2 stages compile to the same SASS offline (their loops are not pipelined; also with
``tl.range(num_stages=2)`` on the own kernel's slice loop): not offered.
WKV6_EXTRA: shapes "B,T,H,K,V;..." appended to SHAPES (e.g. "8,1024,8,64,64", the large
model at one GPU's batch of a two-GPU run; index 6), not in the spec's benchmark list.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
T0 = time.time()
BUDGET = float(os.environ.get("WKV6_BUDGET_S", "240"))
MODE = sys.argv[1] if len(sys.argv) > 1 else "main"
DONE = os.path.join(tempfile.gettempdir(), "wkv6_fla_warm.done")   # the shapes the last finished warm-up warmed
if MODE == "--warm-fla" and os.path.exists(DONE):
    os.remove(DONE)     # at once (before the imports): a warm machine keeps the last call's file (run 25 call 4's
                        # main mode saw it, did not wait, and timed beside this warm-up's autotuning)
SMOKE = os.environ.get("WKV6_SMOKE", "0") == "1"
if SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"
if MODE == "--regs":    # compiles for sm_90 without a GPU: real JIT functions, not the interpreter
    os.environ["TRITON_INTERPRET"] = "0"
if MODE == "--host":    # the Python path on the CPU, kernel launches stubbed (interpreter functions)
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import triton  # noqa: E402

import kernels  # noqa: E402,F401
import kernels.wkv6 as kw  # noqa: E402
import kernels.wkv6.chunk as kc  # noqa: E402
import kernels.wkv6.common as kcom  # noqa: E402
from kernels._common import autotune_configs, forget_picks  # noqa: E402
from bench.common import measure  # noqa: E402
from groundthink import gate  # noqa: E402
from groundthink.spec import get  # noqa: E402

SPEC = get("wkv6")
SHAPES = SPEC.bench.shapes()   # the spec's benchmark shapes; 4, 5: the small and large models' wkv6
FLA_SHAPES = [SHAPES[int(i)] for i in os.environ.get("WKV6_FLA_SHAPES", ",".join(map(str, range(len(SHAPES))))
                                                    ).split(",")]      # fla timed (and warmed) only there
DEV = "cpu" if SMOKE else "cuda"
if SMOKE:
    SHAPES = [(1, 70, 2, 16, 16), (2, 40, 1, 16, 16), (1, 64, 1, 16, 16), (1, 130, 1, 16, 16)]
EXTRA = [tuple(int(x) for x in e.split(",")) for e in os.environ.get("WKV6_EXTRA", "").split(";") if e]
SHAPES = SHAPES + EXTRA        # WKV6_EXTRA: shapes "B,T,H,K,V;..." after the spec's (indices 6, 7, ...)
if os.environ.get("WKV6_SHAPES"):   # a subset of SHAPES by index, e.g. "0,2" (little device time)
    SHAPES = [SHAPES[int(i)] for i in os.environ["WKV6_SHAPES"].split(",")]


def sync():
    if not SMOKE:
        torch.cuda.synchronize()


def device_name():
    return "cpu (WKV6_SMOKE: interpreter, nothing measured)" if SMOKE else torch.cuda.get_device_name()


VARIANTS = {"chunk_nosave": dict(save_states=False), "chunk_lowmem": kc.LOWMEM}
KNOBS = {"chunk_run9": dict(state_rows=64, scan_pipe=False, fwd_scores=False),  # run 9's forward
         "chunk_rows64": dict(state_rows=64), "chunk_rows32": dict(state_rows=32),
         "chunk_nopipe": dict(scan_pipe=False), "chunk_fill2": dict(scan_fill=2), "chunk_fill1": dict(scan_fill=1),
         "chunk_walk1": dict(fwd_scores=False),
         "chunk_auto": {},    # the default knobs and forward choice (kernels.wkv6.wkv6 itself), beside a knob's
         "chunk_bslice": dict(bwd_split="block", split_bytes=2**28),
         "chunk_pieces": dict(piece_bytes=2**27), "chunk_pieces_nosave": dict(save_states=False, piece_bytes=2**26),
         "chunk_bsplit": dict(bwd_split="block"), "chunk_bsplit64": dict(bwd_split="block", state_rows=64),
         "chunk_bstates1": dict(bwd_states="one"), "chunk_bstates2": dict(bwd_states="two"),
         "chunk_overlap": dict(bwd_overlap=True),
         "chunk_bfused": dict(bwd_split="fused"), "chunk_bfused64": dict(bwd_split="fused", state_rows=64)}
PAR_KNOBS = {"chunk_par_fill2": dict(scan_fill=2),    # the state-pass forward
             "chunk_par_scores": dict(fwd_scores=True), "chunk_par_levels": dict(fwd_scores=False),
             "chunk_par_one": dict(fwd_scores=True, fwd_states="one"),
             "chunk_par_two": dict(fwd_scores=True, fwd_states="two")}
SEQ_KNOBS = {"chunk_seq_scores": dict(fwd_scores=True, fwd_step=False, fwd_pipe=False),     # the walk
             "chunk_seq_levels": dict(fwd_scores=False),
             "chunk_seq_pipe": dict(fwd_scores=True, fwd_step=False, fwd_pipe=True),
             "chunk_seq_step": dict(fwd_scores=True, fwd_step=True),
             "chunk_seq_rows64": dict(fwd_scores=True, state_rows=64)}
# the forward mode each name forces (``kc.forward_mode``: True the walk, False the state pass; absent: the default's)
SEQ = {"chunk_seq": True, "chunk_par": False, **{n: True for n in VARIANTS}, **{n: False for n in PAR_KNOBS},
       **{n: True for n in SEQ_KNOBS}}
# the dots' precision for half inputs (``kernels.wkv6.common``: FWD_PRECISION, BWD_PRECISION, CROSS_PRECISION), the
# default knobs otherwise: "tf32" rounds fp32 operands to nearest tf32 (the backward's default), "tf32_trunc" is the
# tensor cores' own truncating read (the forward's default since run 28)
PRECISIONS = {"chunk_fwdtrunc": dict(FWD_PRECISION="tf32_trunc"), "chunk_fwdround": dict(FWD_PRECISION="tf32"),
              "chunk_crosstrunc": dict(CROSS_PRECISION="tf32_trunc"),
              "chunk_trunc": dict(FWD_PRECISION="tf32_trunc", BWD_PRECISION="tf32_trunc"),
              "chunk_dwx3": dict(DW_PRECISION="tf32x3")}
# one kernel's autotune configs replaced (the autotuner's and the launcher's kept picks cleared before and after):
# candidates timed beside the default without adding compiles to its first call
CONFIGS = {"chunk_walk_s1": ("_fwd_step_kernel", [triton.Config({"BV": 64}, num_warps=4, num_stages=1)]),
           "chunk_par_s1": ("_fwd_par_scored_kernel", [triton.Config({"BV": 64}, num_warps=nw, num_stages=1)
                                                       for nw in (2, 4)])}
CONFIGS = {n: (k, autotune_configs(c)) for n, (k, c) in CONFIGS.items()}   # the interpreter (smoke): the first only
ALGOS = {"chunk": kw.wkv6, "chunk_seq": kw.wkv6, "chunk_par": kw.wkv6, "fused": kw.wkv6_fused,
         **{n: kw.wkv6 for n in (*VARIANTS, *KNOBS, *PAR_KNOBS, *SEQ_KNOBS, *PRECISIONS, *CONFIGS)}}
KNOBS.update(PAR_KNOBS)
KNOBS.update(SEQ_KNOBS)
VARIANTS.update(KNOBS)
_PICK = os.environ.get("WKV6_ALGOS", "chunk,chunk_seq,chunk_par,fused").split(",")
if set(_PICK) - set(ALGOS):
    sys.exit(f"error: WKV6_ALGOS names {sorted(set(_PICK) - set(ALGOS))}; accepted: {', '.join(ALGOS)}")
ALGOS = {n: ALGOS[n] for n in _PICK}


@contextlib.contextmanager
def variant(name):
    """The TUNING knobs and the forward mode of a name in ALGOS, for a forward and its backward (the default's for
    the others)."""
    prec = PRECISIONS.get(name, {})
    saved = {a: getattr(kcom, a) for a in prec}
    for a, x in prec.items():
        setattr(kcom, a, x)
    tuner, old = None, None
    if name in CONFIGS:
        tuner = getattr(kc, CONFIGS[name][0])
        old, tuner.configs = tuner.configs, CONFIGS[name][1]
        forget_picks(tuner)
    try:
        with kc.tuning(**VARIANTS.get(name, {})), kc.forward_mode(SEQ.get(name)):
            yield
    finally:
        for a, x in saved.items():
            setattr(kcom, a, x)
        if tuner is not None:
            tuner.configs = old
            forget_picks(tuner)


def log(*a):
    print(f"[{MODE} {time.time() - T0:6.1f}s]", *a, flush=True)


def tests(k):
    """Correctness is the GPU tests' (tests/test_wkv6.py, ``@pytest.mark.gpu``: every algorithm, forward mode and
    knob vs float64): run them in a subprocess, ``-k k`` ('' = all; WKV6_TESTS_K), in WKV6_TEST_JOBS pytest-xdist
    processes when > 1 (``scripts/gpu_reports.sh`` sets it: 4 where xdist is installed), their contended autotune
    picks kept out of the disk cache. Not in the smoke mode: it runs
    the interpreter (TRITON_INTERPRET=1, inherited by a child), where the GPU tests on a CUDA machine would run
    uncompiled and bf16 dots are wrong. Returns pytest's exit status (0 when skipped)."""
    if SMOKE:
        log("checks: skipped (smoke: the interpreter; the GPU tests need compiled kernels)")
        return 0
    jobs = int(os.environ.get("WKV6_TEST_JOBS", "1"))    # > 1: pytest-xdist processes (compiles side by side)
    cmd = [sys.executable, "-m", "pytest", "tests/test_wkv6.py", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider",
           *(["-n", str(jobs)] if jobs > 1 else []), *(["-k", k] if k else [])]
    env = {**os.environ, **({"TRITON_CACHE_AUTOTUNING": "0"} if jobs > 1 else {})}   # contended picks not kept
    log("checks:", " ".join(cmd[1:]))
    deadline = os.environ.get("WKV6_DEADLINE_S")     # seconds after the start by which the tests must end
    left = None if not deadline else max(10.0, float(deadline) - (time.time() - T0))
    try:
        rc = subprocess.run(cmd, cwd=ROOT, timeout=left, env=env).returncode
    except subprocess.TimeoutExpired:
        log(f"checks: cut after {left:.0f} s (WKV6_DEADLINE_S {deadline}): the tests above this line ran")
        return "cut"
    log(f"checks: pytest exit {rc}")
    return rc


# ------------------------------------------------------------------------------------------------ timings
def bench_inputs(shape, grad=False):
    """The benchmark's inputs at ``shape`` (the spec's maker, bf16, seed 0) with scale 1."""
    return {**SPEC.bench.make_inputs(*shape, grad, dtype=torch.bfloat16, device=DEV), "scale": 1.0}


def time_impl(f, shape):
    """(fwd ms, fwd+bwd ms, extra peak GiB of one fwd+bwd, graph fwd ms, graph fwd+bwd ms) of ``f(**inputs)``:
    ``bench.common.measure`` (the grads of the leaves are cleared before every call: no .grad accumulation in the
    timed loop; on the CPU two host-clock calls, no memory), then the same steps as CUDA-graph replays
    (``gate.graph_ms``, the benchmarks' ``ms_graph``: no host time — the eager medians of small shapes are
    host-bound; NaN on the CPU or where the capture fails)."""
    mf = measure(f, bench_inputs(shape), False, warm_rep=(25, 100))
    m = measure(f, bench_inputs(shape, grad=True), True, warm_rep=(25, 100))
    graph = []
    for x in (mf, m):
        try:
            graph.append(gate.graph_ms(x["step"], list(x["leaves"] or []))[0] if DEV == "cuda" else float("nan"))
        except Exception as ex:  # noqa: BLE001 - said, and the eager figures stand
            log(f"graph capture failed: {type(ex).__name__}: {str(ex)[:200]}")
            graph.append(float("nan"))
    return mf["ms"], m["ms"], (m["peak_mb"] or 0.0) / 1024, *graph


def fla():
    return SPEC.impl("fla_chunk").load()


def warm_fla():
    f = fla()
    for sh in FLA_SHAPES:
        t = time.time()
        f(**bench_inputs(sh, grad=True))[0].sum().backward()
        sync()
        log(f"fla warm {sh}: {time.time() - t:.1f}s")
    open(DONE, "w").write(json.dumps([list(sh) for sh in FLA_SHAPES]))


def fla_warm():
    """Whether a finished ``--warm-fla`` warmed every shape in FLA_SHAPES (its file lists them)."""
    try:
        warmed = json.loads(open(DONE).read())
    except (OSError, ValueError):
        return False
    return all(list(sh) in warmed for sh in FLA_SHAPES)


def first_call():
    """Compile + autotune + one fwd+bwd of the default wkv6 at B8 T4096 H32, in this (cold) process."""
    xs = bench_inputs(SHAPES[0], grad=True)
    t = time.time()
    kw.wkv6(**xs)[0].sum().backward()
    sync()
    log(f"FIRST CALL wkv6 fwd+bwd B8 T4096 H32 (compile + autotune, cold cache): {time.time() - t:.1f} s")


def quick():
    """The new algorithm alone, both forward modes, at B8 T4096 H32 and B1 T16384 H32 (little device time)."""
    log(device_name(), "torch", torch.__version__, "triton", triton.__version__)
    t = time.time()
    with variant("chunk_seq"):
        kw.wkv6(**bench_inputs(SHAPES[0], grad=True))[0].sum().backward()
    sync()
    log(f"first call chunk_seq fwd+bwd B8 T4096 H32 (compile + autotune): {time.time() - t:.1f} s")
    for name, sh in (("chunk_seq", SHAPES[0]), ("chunk_par", SHAPES[3]), ("chunk_seq", SHAPES[1])):
        with variant(name):
            r = time_impl(kw.wkv6, sh)
        log(f"QUICK {name} {sh}: fwd {r[0]:.3f} ms fwd+bwd {r[1]:.3f} ms extra peak {r[2]:.3f} GiB")


def compiled_kernels():
    """(module, kernel, warps, stages, registers, spills, shared bytes, autotune pick) of every compiled wkv6 kernel
    in this process (Triton's own compile report)."""
    import importlib
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction
    rows = []
    for mod in ("chunk", "fused", "states", "recurrent"):
        for name, obj in vars(importlib.import_module(f"kernels.wkv6.{mod}")).items():
            fn, pick = obj, getattr(obj, "best_config", None) if isinstance(obj, Autotuner) else None
            while not isinstance(fn, JITFunction) and hasattr(fn, "fn"):
                fn = fn.fn
            if not isinstance(fn, JITFunction) or getattr(fn, "__module__", "").split(".")[-1] != mod:
                continue
            for cache in getattr(fn, "device_caches", {}).values():
                kcache = next(c for c in cache if isinstance(c, dict))
                for ck in kcache.values():
                    try:
                        ck._init_handles()
                    except Exception:  # noqa: BLE001
                        pass
                    md = ck.metadata
                    rows.append((mod, name, md.num_warps, md.num_stages, getattr(ck, "n_regs", "?"),
                                 getattr(ck, "n_spills", "?"), md.shared, str(pick) if pick else ""))
    return rows


def resources():
    """Compile report (registers, spills, shared memory) and the per-kernel GPU time of one fwd+bwd of every
    algorithm in WKV6_ALGOS at every shape in WKV6_SHAPES, then the timing table (no fla); WKV6_CHECKS=1 runs the
    GPU tests after it (``tests``). Returns pytest's exit status (None: not run)."""
    from torch.profiler import ProfilerActivity, profile
    log(device_name(), "torch", torch.__version__, "triton", triton.__version__)
    impls = {n: f for n, f in ALGOS.items() if n != "chunk"}
    gpu_us = {}     # (name, shape) -> (GPU us of all kernels per fwd+bwd, {kernel: us})
    for sh in SHAPES:
        xs = bench_inputs(sh, grad=True)
        leaves = [xs[n] for n in "rkvwu"]
        for n, f in impls.items():
            t = time.time()
            with variant(n):
                o = f(**xs)[0]
                do = torch.randn_like(o)      # a contiguous cotangent (o.sum()'s would cost a reduce + a copy)
                o.backward(do)
            sync()
            log(f"first fwd+bwd {n} {sh}: {time.time() - t:.1f} s")
            if SMOKE:
                continue
            # the op's own kernels only: grads cleared before each call (no .grad accumulation adds)
            with profile(activities=[ProfilerActivity.CUDA]) as prof, variant(n):
                for _ in range(3):
                    for x in leaves:
                        x.grad = None
                    f(**xs)[0].backward(do)
                sync()
            ev = sorted(prof.key_averages(), key=lambda e: -e.self_device_time_total)
            gpu_us[n, sh] = (sum(e.self_device_time_total for e in ev) / 3,
                             {e.key: e.self_device_time_total / 3 for e in ev if e.self_device_time_total > 0})
            ev = ev[:8]
            log(f"split {n} {sh} (us per fwd+bwd): " + "; ".join(
                f"{e.key[:40]} {e.self_device_time_total / 3:.0f}" for e in ev))
    print("\n==== compiled wkv6 kernels: module kernel warps stages regs spills shared pick")
    for r in compiled_kernels():
        print(" ".join(str(x) for x in r))
    import kernels.wkv6.states as ks
    for name, tuner in [("_fwd_scores_kernel", kc._fwd_scores_kernel), ("_fwd_scored_kernel", kc._fwd_scored_kernel),
                        ("_fwd_step_kernel", kc._fwd_step_kernel),
                        ("_fwd_par_scored_kernel", kc._fwd_par_scored_kernel),
                        ("_fwd_states_kernel", ks._fwd_states_kernel), ("_bwd_own_kernel", kc._bwd_own_kernel),
                        ("_bwd_cross_kernel", kc._bwd_cross_kernel),
                        ("_bwd_fused_kernel", kc._bwd_fused_kernel)]:   # fwd_scores', bwd_split's: pick per key
        for key, cfg in getattr(tuner, "cache", {}).items():
            print(f"{name} key {key[:7]}: {cfg}")
    if os.environ.get("WKV6_NOTIME") == "1":      # e.g. while fla warms up in the background: report only
        return
    res = {}
    for sh in SHAPES:
        for n, f in impls.items():
            with variant(n):
                res[n, sh] = time_impl(f, sh)
            log(f"time {n:12s} {sh}: fwd {res[n, sh][0]:.3f} fwd+bwd {res[n, sh][1]:.3f} mem {res[n, sh][2]:.3f}")
    print(f"\n==== wkv6 {device_name()} bf16: ms (bench median) fwd / fwd+bwd / extra peak GiB of fwd+bwd")
    print("| shape | " + " | ".join(impls) + " |")
    for sh in SHAPES:
        print(f"| B{sh[0]} T{sh[1]} H{sh[2]} K{sh[3]} | " + " | ".join(
            "{:.3f} / {:.3f} / {:.2f}".format(*res[n, sh]) for n in impls) + " |")
    rc = tests(os.environ.get("WKV6_TESTS_K", "")) if os.environ.get("WKV6_CHECKS", "0") == "1" else None
    summary(impls, res, gpu_us, rc)
    return rc if rc != "cut" else 1


def summary(impls, res, gpu_us, rc):
    """The last lines of ``--resources``: per shape and algorithm the profiler's GPU us of one fwd+bwd (all kernels;
    the backward's kernels and the forward's by name, us), the bench ms and the extra peak, and the tests' exit."""
    print(f"\n==== wkv6 summary, {device_name()}, bf16: GPU us per fwd+bwd (profiler, all kernels) | backward kernels us "
          "| forward kernels us | ms fwd / fwd+bwd (bench median) | extra peak GiB")
    for sh in SHAPES:
        for n in impls:
            tot, ks = gpu_us.get((n, sh), (float("nan"), {}))
            bwd = ", ".join(f"{k.split('(')[0][:24]} {v:.0f}" for k, v in sorted(ks.items(), key=lambda kv: -kv[1])
                            if "bwd" in k or "scan" in k)
            fwd = ", ".join(f"{k.split('(')[0][:24]} {v:.0f}" for k, v in sorted(ks.items(), key=lambda kv: -kv[1])
                            if "fwd" in k)
            f, fb, mem = res.get((n, sh), (float("nan"),) * 3)[:3]
            print(f"B{sh[0]} T{sh[1]} H{sh[2]} K{sh[3]} {n:18s} {tot:7.0f} | {bwd} | {fwd} | {f:.3f} / {fb:.3f} | "
                  f"{mem:.2f}")
    print("checks:", "not run" if rc is None else f"GPU tests pytest exit {rc} (WKV6_TESTS_K "
          f"{os.environ.get('WKV6_TESTS_K', '')!r})")


def main():
    log(device_name(), "torch", torch.__version__, "triton", triton.__version__)
    rc = tests(os.environ.get("WKV6_TESTS_K", "")) if os.environ.get("WKV6_CHECKS", "1") == "1" else None
    while not SMOKE and not fla_warm() and time.time() - T0 < BUDGET:
        time.sleep(2)
    impls = {n: f for n, f in ALGOS.items() if n != "chunk"}
    if fla_warm():
        impls = {**{n: f for n, f in impls.items() if n.startswith("chunk_")}, "fla": fla(),
                 **{n: f for n, f in impls.items() if not n.startswith("chunk_")}}
    else:
        log("fla warm-up not done within the budget: fla not timed")
    res = {}
    for sh in SHAPES:
        for n, f in impls.items():
            if n == "fla" and sh not in FLA_SHAPES:
                continue
            try:
                with variant(n):
                    res[n, sh] = time_impl(f, sh)
                log(f"time {n:9s} {sh}: fwd {res[n, sh][0]:.3f} fwd+bwd {res[n, sh][1]:.3f} mem {res[n, sh][2]:.3f}")
            except Exception as ex:  # noqa: BLE001
                log(f"time {n} {sh} ERROR {type(ex).__name__}: {str(ex)[:300]}")
    print(f"\n==== wkv6 {device_name()} bf16 K=V=64: ms (bench median) fwd / fwd+bwd / "
          "extra peak GiB of fwd+bwd (grads incl.) || CUDA graph fwd / fwd+bwd")
    print("| shape | " + " | ".join(impls) + " |")
    for sh in SHAPES:
        cells = [("{:.3f} / {:.3f} / {:.2f} || {:.3f} / {:.3f}".format(*res[n, sh]) if (n, sh) in res else "-")
                 for n in impls]
        print(f"| B{sh[0]} T{sh[1]} H{sh[2]} | " + " | ".join(cells) + " |")
    sms = 4 if SMOKE else torch.cuda.get_device_properties(0).multi_processor_count
    checks = "not run (WKV6_CHECKS=0)" if rc is None else f"GPU tests: pytest exit {rc}"
    print(f"checks: {checks}; the default wkv6 takes chunk_seq where N·H·cdiv(V, 32) >= SMs ({sms}), else chunk_par")
    return rc


def regs():
    """Registers, spill stack (bytes per thread) and SASS instruction count of the chunk kernels (backward, forward
    walk, state scan), compiled for the H100 (sm_90) by Triton on this machine (no GPU needed: ``triton.compile`` +
    ``cuobjdump``), bf16 inputs, K = V = 64 (WKV6_REGS_KV), 4 and 8 warps (WKV6_REGS_ONLY: a comma list of kernel
    names). A compile report, not a timing: registers, spill stack bytes, SASS instructions, then the static counts
    of the shared / local memory, shuffle and barrier opcodes (``bench.sm90.MEMORY_OPS``: the L1 traffic that sets
    these kernels' time on the H200, run 29's Nsight Compute)."""
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    from bench.sm90 import MEMORY_OPS, sass_digest, sass_ops, sm90_usage
    kv = int(os.environ.get("WKV6_REGS_KV", "64"))
    RPREC = os.environ.get("WKV6_REGS_PREC", "tf32")    # the dots' precision ("tf32_trunc": without the rounding)
    half = {"q_ptr", "k_ptr", "v_ptr", "w_ptr", "u_ptr", "do_ptr", "o_ptr", "dq_ptr", "dk_ptr", "dv_ptr", "dw_ptr"}
    none = dict(cu_ptr=None, cmap_ptr=None)       # absent tensors: None constexprs, as the launchers pass them
    blk = dict(H=32, K=kv, V=kv, BT=kc.BT, SB=kc.SB, BK=kv, BV=kv, LOG=kc.LOG, VARLEN=False, PREC=RPREC, **none)
    import kernels.wkv6.states as ks
    bts = [int(b) for b in os.environ.get("WKV6_REGS_BT", "32").split(",")]   # state_rows knob values
    cases = [(kc, "_bwd_cross_kernel", dict(H=32, K=kv, V=kv, BT=bt, SB=kc.SB, BK=kv, BV=kv, VARLEN=False,
                                            PREC=RPREC, FINISH_DU=True, **none)) for bt in bts]
    walk = dict(blk, USE_H0=False, SAVE=True, h0_ptr=None, SCORES=False, a_ptr=None, STEP=False, FAST=False,
                PIPE=os.environ.get("WKV6_REGS_PIPE", "0") == "1")     # every constexpr given (a missing one is i32)
    del walk["cmap_ptr"]        # the walks take no slot map (one program per sequence·head)
    scan = dict(H=32, K=kv, V=kv, BT=kc.BT, BK=kv, BV=kv, MODE=2, USE_H0=False, USE_DHT=False, VARLEN=False,
                h0_ptr=None, dht_ptr=None, ht_ptr=None, cu_ptr=None)    # the backward's reverse scan
    cases += [(kc, "_fwd_seq_kernel", dict(walk)),
              (ks, "_chunk_scan_kernel", dict(scan, PIPE=False)),
              (ks, "_chunk_scan_kernel", dict(scan, PIPE=True)),
              (kc, "_fwd_scores_kernel", dict(H=32, K=kv, BT=64, SB=kc.SB, BK=kv, LOG=kc.LOG, VARLEN=False,
                                              PREC=RPREC, FAST=True, **none)),
              (kc, "_fwd_scored_kernel", dict(walk, SCORES=True, BV=32, a_ptr="*fp32")),
              (kc, "_fwd_step_kernel", dict(walk, BT=32, SCORES=True, STEP=True, FAST=True, BV=64, a_ptr="*fp32")),
              (kc, "_fwd_par_scored_kernel", dict(blk, BT=64, SCORES=True, a_ptr="*fp32")),
              (kc, "_bwd_own_kernel", dict(blk, BT=32, BKC=int(os.environ.get("WKV6_REGS_BKC", "32")), HALF_B=True,
                                           FAST=True, DWP=os.environ.get("WKV6_REGS_DWP", "tf32x2"), HAS_A=False)),
              (kc, "_bwd_own_kernel", dict(blk, BT=32, BKC=int(os.environ.get("WKV6_REGS_BKC", "32")), HALF_B=True,
                                           FAST=True, DWP=os.environ.get("WKV6_REGS_DWP", "tf32x2"), HAS_A=True,
                                           pa_ptr=None)),
              (kc, "_bwd_fused_kernel", dict(blk, BT=int(os.environ.get("WKV6_REGS_FBT", "32")),
                                             BKC=int(os.environ.get("WKV6_REGS_BKC", "16")), HALF_B=True, FAST=True,
                                             DWP="tf32x3")),
              (ks, "_fwd_states_kernel", dict(H=32, K=kv, V=kv, BT=32, BKS=32, BVS=32, USE_H0=False, VARLEN=False,
                                              PREC=RPREC, h0_ptr=None, cu_ptr=None)),
              (ks, "_bwd_states_kernel", dict(H=32, K=kv, V=kv, BT=32, BKS=32, BVS=32, USE_DHT=False, VARLEN=False,
                                              PREC=RPREC, dht_ptr=None, cu_ptr=None))]
    STAGES = [int(x) for x in os.environ.get("WKV6_REGS_STAGES", "1").split(",")]   # num_stages values
    CAPS = [int(x) for x in os.environ.get("WKV6_REGS_MAXNREG", "0").split(",")]    # register caps (0: none)
    WARPS = [int(x) for x in os.environ.get("WKV6_REGS_WARPS", "4,8").split(",")]   # num_warps values
    only = os.environ.get("WKV6_REGS_ONLY")       # e.g. _bwd_fused_kernel: one kernel (each compile takes ~10 s)
    cases = [c for c in cases if not only or c[1] in only.split(",")]
    for item in filter(None, os.environ.get("WKV6_REGS_SET", "").split(",")):   # e.g. PIPE=False
        name, _, val = item.partition("=")
        for _, _, consts in cases:
            if name in consts:
                consts[name] = {"True": True, "False": False}.get(val, int(val) if val.isdigit() else val)
    print(f"==== wkv6 chunk kernels, sm_90 compile (Triton {triton.__version__}), bf16, K = V = {kv}: "
          "kernel warps registers spill-stack-bytes sass-instructions, static counts of the memory opcodes, "
          "SASS digest")
    for mod, name, consts in cases:
        fn = getattr(mod, name)
        while not isinstance(fn, JITFunction):
            fn = fn.fn
        ptrs = {n: consts.pop(n) for n in [n for n, c in consts.items() if isinstance(c, str) and c[:1] == "*"]}
        types = {n: ptrs[n] if n in ptrs else "constexpr" if n in consts else "*bf16" if n in half
                 else "*i32" if n in ("cu_ptr", "cmap_ptr") else "*fp32" if n.endswith("_ptr")
                 else "fp32" if n == "scale" else "i32" for n in fn.arg_names}
        for nw, ns, cap in [(w, s, c) for w in WARPS for s in STAGES for c in CAPS]:
            src = ASTSource(fn, types, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
            u = sm90_usage(src, nw, ns, cap or None)
            ops = sass_ops(u["sass"])
            n_ins = sum(ops.values())
            tag = "".join(f" {c}={consts[c]}" for c in ("HALF_B", "BT", "SB", "PIPE", "SCORES", "STEP", "HAS_A")
                   if c in consts)
            print(name + tag, nw, *(("stages", ns) if ns != 1 else ()), *(("maxnreg", cap) if cap else ()),
                  u["regs"], u["stack"], n_ins, " ".join(f"{o} {ops[o]}" for o in MEMORY_OPS),
                  "digest", sass_digest(u["sass"]), flush=True)


def host_gpu():
    """Where the eager fwd+bwd's host time goes, on the GPU machine (its CPU, real launches), per shape in SHAPES and
    algorithm in WKV6_ALGOS (+ fla where ``--warm-fla`` finished): the benchmark's step (``measure``: leaves' grads
    cleared, fixed cotangents) timed synced after every call (the eager median's way) and 200 calls back to back
    (one sync at the end: the host's own rate where it is slower than the GPU), then cProfile's top 22 functions by
    own time over 200 calls (WKV6_PROF_SORT: another pstats key)."""
    import cProfile
    import io
    import pstats
    import re
    REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    log(device_name(), "torch", torch.__version__, "triton", triton.__version__)
    impls = {n: f for n, f in ALGOS.items() if n != "chunk"}
    if fla_warm():
        impls["fla"] = fla()
    calls = 4 if SMOKE else 200
    for sh in SHAPES:
        for n, f in impls.items():
            if n == "fla" and sh not in FLA_SHAPES:
                continue
            with variant(n):
                step = measure(f, bench_inputs(sh, grad=True), True, warm_rep=(5, 10))["step"]
                sync()
                t = time.perf_counter()
                for _ in range(calls // 4):
                    step()
                    sync()
                synced = (time.perf_counter() - t) / (calls // 4) * 1e3
                t = time.perf_counter()
                for _ in range(calls):
                    step()
                sync()
                free = (time.perf_counter() - t) / calls * 1e3
                pr = cProfile.Profile()
                pr.enable()
                for _ in range(calls):
                    step()
                sync()
                pr.disable()
            out = io.StringIO()
            st = pstats.Stats(pr, stream=out)
            st.sort_stats(os.environ.get("WKV6_PROF_SORT", "tottime")).print_stats(22)
            top = "\n".join(re.sub(r"\S*/site-packages/", "<site-packages>/", ln.replace(REPO, "<repo>"))[:200]
                            for ln in out.getvalue().splitlines() if ln.strip())
            log(f"host {n} {sh}: {synced:.3f} ms per call synced, {free:.3f} back to back; cProfile ({calls} calls):\n{top}")


def host():
    """Host (Python) time of the public ``wkv6`` per call on this CPU with every Triton launch replaced by a no-op:
    what the eager call costs besides the launches themselves (validation, allocations, autograd, custom-op or
    Function dispatch, torch ops). bf16 tensors of a tiny shape (B2 T32 H2 K=V=16: the CPU's torch ops cost little
    compute there; the small model's B64 T256 H4 K32 takes the same path on the H100: the sequential forward, one
    backward piece). Prints the launches and aten ops of one fwd+bwd, then min / median CPU µs of this process
    (``time.process_time``: time waiting for a core on a shared machine does not count) over 15 rounds of 200
    calls."""
    import collections
    from torch.utils._python_dispatch import TorchDispatchMode
    from triton.runtime.interpreter import InterpretedFunction
    launches = collections.Counter()
    InterpretedFunction.run = lambda self, *a, **k: launches.update([self.fn.__name__])

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n[str(func)] += 1
            return func(*args, **(kwargs or {}))

    B, T, H, K = 2, 32, 2, 16
    g = torch.Generator().manual_seed(0)
    r, k, v, w = [torch.randn(B, T, H, K, generator=g).to(torch.bfloat16).requires_grad_(True) for _ in range(4)]
    u = torch.randn(H, K, generator=g).to(torch.bfloat16).requires_grad_(True)
    do = torch.randn(B, T, H, K, generator=g).to(torch.bfloat16)

    def fwdbwd():
        for x in (r, k, v, w, u):
            x.grad = None
        torch.autograd.backward([kw.wkv6(r, k, v, w, u, scale=1.0)[0]], [do])

    def fwd():
        with torch.no_grad():
            kw.wkv6(r, k, v, w, u, scale=1.0)

    fwdbwd()
    launches.clear()
    with Ops() as ops:
        fwdbwd()
    log(f"launches per fwd+bwd: {dict(launches)}; aten ops: {dict(ops.n)}")
    for name, f in (("fwd+bwd", fwdbwd), ("fwd (no grad)", fwd)):
        ts = []
        for _ in range(15):
            t = time.process_time()
            for _ in range(200):
                f()
            ts.append((time.process_time() - t) / 200 * 1e6)
        ts.sort()
        log(f"HOST {name}: min {ts[0]:.0f} us, median {ts[7]:.0f} us CPU time per call (launches stubbed)")


if __name__ == "__main__":
    sys.exit({"main": main, "--warm-fla": warm_fla, "--first-call": first_call, "--quick": quick,
              "--resources": resources, "--regs": regs, "--host": host,
              "--host-gpu": host_gpu}[MODE]() or 0)
