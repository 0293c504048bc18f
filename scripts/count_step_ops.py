"""Count the kernel launches of one whole training step on CPU: forward, backward and update (the
``groundthink.step.TrainStep`` body that train.py replays as a CUDA graph), as a proxy for a GPU's launches.

What counts as one launch: every aten op that does work (views, bare allocations and metadata ops are free on a
GPU and not counted); every Triton kernel launch (interpreter; the host-side tensor work the interpreter does for
it is not counted); one fused AdamW call per parameter group (``_fused_adamw_``; on a GPU its multi-tensor apply
launches one kernel per ~100 tensors of a group). The Mamba-2 scan runs on its PyTorch reference here (mamba-ssm
is GPU-only): each scan call counts as ``--scan-fwd`` launches forward and ``--scan-bwd`` backward (estimates of mamba-ssm 2.3's
mamba_chunk_scan_combined: 5 Triton kernels forward; its backward recomputes the forward's states and runs ~10 more
kernels and a few torch reductions: 20), its own ops not counted; the reference conv (pad + conv + SiLU) stands where causal-conv1d launches one kernel each way.
torch's embedding backward (``embedding_dense_backward``, one op on CPU) counts as ``--emb-bwd`` launches (an
estimate of its CUDA path for more than 3,072 indices: a 64-bit radix sort of the indices — histogram, scan,
8 one-sweep passes — then ~10 segment kernels and a zero fill: 20); ``fused.projections.embedding``'s one-hot
GEMM backward (``eq`` + ``mm``) replaces it unless ``GROUNDTHINK_EMB_GEMM=0``.
Not modelled: cuBLAS's split-K reduction kernels (a second launch for some weight-gradient GEMMs on a GPU), the
NCCL all-reduce (one rank here). So the GPU count is higher by roughly those; the profile window of train.py on a
GPU is the measurement.

Usage: PYTHONPATH=. python scripts/count_step_ops.py [--variant GF-MH] [--kernels triton|reference] [--autocast]
[--flat-weights on|off] [--batch 2 --seq 64]. ``--autocast`` (as on a GPU): bf16 autocast on CPU, with the
weights' bf16 copy made once per step (``--flat-weights on``, the default) or cast per use (off: the earlier step).
``--before ENV=VALUE[,ENV=VALUE]``: count twice, with those environment variables set (the earlier path, e.g.
``GROUNDTHINK_EMB_GEMM=0``) and without, and print the per-op differences.
``--where OP[,OP]`` (or ``all``): also list where each launch of those ops comes from: the issuing Python frame
(the innermost outside torch, triton, einops and this script), the autograd node running it in the backward, and
its owner (the frame's top-level package: fused, groundthink, kernels, mamba_ssm, causal_conv1d; ``autograd``
for a built-in backward node reached from ``loss.backward()``), with a total per owner.
``--scan mamba_ssm``: instead of the modelled scan, mamba-ssm's own ``mamba_chunk_scan_combined`` (host code,
workspaces, autotune pre-hook zero fills, torch reductions; each Triton kernel one launch) through the
interpreter — needs the mamba_ssm package files and einops importable (e.g. the wheel unpacked on PYTHONPATH; its
``__init__`` is skipped); every autotuner keeps its first config (all of a kernel's configs share one pre-hook).
With it (or ``--conv model``) the causal conv counts as causal-conv1d 1.7 on a GPU: one kernel each way and its
backward's two fp32 zero fills (dweight, dbias).
``--splitk-probe`` (GPU only, ~1 min): for the small step's weight-gradient shapes (K = B·T = 16,384) each
formulation's CUDA kernels per call (cuBLAS adds a ``splitKreduce`` kernel when it splits K) and µs per call:
dW = dYᵀX in bf16 (the step's form), the operands swapped (Xᵀ dY, transposed view), an fp32 output
(``mm(..., out_dtype=float32)``: straight into the fp32 gradient buffer), G = 4 slices as one bmm.
``--gemms [--size large --vocab 104 --kernels reference]``: instead of counting, list the step's matrix products
that cuBLAS would run on its slow misaligned kernels (``groundthink.step.GemmWatch``; ~1 min with the references).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import importlib.util
import os
import sys
import types

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import kernels  # noqa: F401  (Triton interpreter on CPU)

FREE = {"empty", "empty_like", "new_empty", "empty_strided", "new_empty_strided", "detach", "lift_fresh",
        "_to_copy_noop", "alias", "set_", "resize_", "_unsafe_view"}


_SKIP = ("torch", "triton", "einops", "__main__", "contextlib")      # modules whose frames are not call sites


def _site() -> tuple[str, str]:
    """(owner, site) of the op being dispatched: site = the innermost Python frame outside torch, triton, einops
    and this script (``dir/file:line function``) and the autograd node being run (backward) if any; owner = that
    frame's top-level package, or ``autograd`` when the frame is only the ``backward()`` call (a built-in node)."""
    f = sys._getframe(2)
    while f is not None and str(f.f_globals.get("__name__", "")).split(".")[0] in _SKIP:
        f = f.f_back
    where, owner = "?", "?"
    if f is not None:
        parts = f.f_code.co_filename.split(os.sep)
        where = f"{os.sep.join(parts[-2:])}:{f.f_lineno} {f.f_code.co_name}"
        owner = str(f.f_globals.get("__name__", "?")).split(".")[0]
    node = torch._C._current_autograd_node()
    if node is not None:
        where += f"  [{node.name()}]"
        if f is not None and f.f_code.co_name == "_body":     # the frame is TrainStep's loss.backward() itself
            owner = "autograd"
    return owner, where


class OpCounter(TorchDispatchMode):
    def __init__(self, weights: dict[str, int] | None = None, where: set[str] | None = None):
        super().__init__()
        self.weights = weights or {}    # op name -> the launches one call of it counts as (its GPU path)
        self.counts = collections.Counter()
        self.where = where or set()     # op names whose call sites are recorded (``--where``; "all": every op)
        self.sites = collections.Counter()   # (tag, op, dtype, owner, site) -> launches
        self.tag = "other"
        self.paused = 0
        self.active = False     # set while the measured step runs (launches outside it are not counted)

    def add(self, name, n: int = 1, dtype: str = "", site: tuple[str, str] | None = None):
        if self.active and not self.paused:
            self.counts[(self.tag, name)] += n
            if self._watched(name):
                self.sites[(self.tag, name, dtype, *(site or _site()))] += n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "groundthink":   # the lab's custom ops: count what their implementation launches
            from torch._library.custom_ops import OPDEFS
            with self:
                return OPDEFS[func._schema.name]._init_fn(*args, **(kwargs or {}))
        out = func(*args, **(kwargs or {}))
        if self.paused:
            return out
        name = func.overloadpacket.__name__
        is_view = any(r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns)
        if name not in FREE and not is_view:
            n = self.weights.get(name, 1)
            self.counts[(self.tag, name)] += n
            if self._watched(name) and self.active:
                first = out[0] if isinstance(out, (tuple, list)) and out else out
                dtype = str(first.dtype).replace("torch.", "") if isinstance(first, torch.Tensor) else ""
                self.sites[(self.tag, name, dtype, *_site())] += n
        return out

    def _watched(self, name: str) -> bool:
        return name in self.where or "all" in self.where


def _patch_triton(counter: OpCounter):
    from triton.runtime import interpreter
    orig = interpreter.GridExecutor.__call__

    def call(self, *a, **k):
        counter.add("triton:" + self.fn.__name__)
        counter.paused += 1
        try:
            return orig(self, *a, **k)
        finally:
            counter.paused -= 1

    interpreter.GridExecutor.__call__ = call


def _opaque(counter: OpCounter, run, on_fwd, on_bwd):
    """An autograd Function around ``run(*tensors)`` whose own ops are not counted; ``on_fwd()`` and ``on_bwd()``
    count the launches it stands for. Returns its ``apply``."""

    class Opaque(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *ts):
            counter.paused += 1
            try:
                leaves = [t.detach().requires_grad_() for t in ts]
                with torch.enable_grad():
                    y = run(*leaves)
            finally:
                counter.paused -= 1
            on_fwd()
            ctx.graph = (y, leaves)
            return y.detach()

        @staticmethod
        def backward(ctx, dy):
            y, leaves = ctx.graph
            counter.paused += 1
            try:
                grads = torch.autograd.grad(y, leaves, dy)
            finally:
                counter.paused -= 1
            on_bwd()
            return grads

    return Opaque.apply


def _opaque_scan(counter: OpCounter, ref, n_fwd: int, n_bwd: int):
    """The reference Mamba-2 scan counted as ``n_fwd`` launches forward and ``n_bwd`` backward (its own ops not
    counted)."""
    fwd_site, bwd_site = (("mamba_ssm", f"mamba2 scan {p} (modelled)") for p in ("forward", "backward"))

    def scan(x, dt, A, B, C, chunk_size, D=None, dt_bias=None, dt_softplus=False, **kw):
        assert dt_softplus and not kw, "the counter covers the training path only"
        run = lambda x, dt, A, B, C, D, dt_bias: ref(x, dt, A, B, C, chunk_size, D=D, dt_bias=dt_bias,  # noqa: E731
                                                     dt_softplus=True)
        return _opaque(counter, run, lambda: counter.add("mamba2-scan", n_fwd, site=fwd_site),
                       lambda: counter.add("mamba2-scan", n_bwd, site=bwd_site))(x, dt, A, B, C, D, dt_bias)

    return scan


def _mamba_ssm_scan():
    """mamba-ssm's ``mamba_chunk_scan_combined`` run through the Triton interpreter (``--scan mamba_ssm``): its
    real host code, workspaces, pre-hook zero fills and torch reductions are counted, each Triton kernel as one
    launch. Needs the mamba_ssm package (and einops) importable; its ``__init__`` (CUDA extensions) is skipped.
    Every autotuner keeps its first config only (the interpreter cannot benchmark); a config's pre-hook (the
    ``init_to_zero`` fills) still runs, as it does on a GPU for whichever config wins."""
    spec = importlib.util.find_spec("mamba_ssm")
    if spec is None:
        raise SystemExit("--scan mamba_ssm: the mamba_ssm package is not importable (put mamba-ssm 2.3's files "
                         "and einops on PYTHONPATH); --scan model counts the modelled launches instead")
    if "mamba_ssm" not in sys.modules:      # the package without its __init__ (which imports CUDA extensions)
        pkg = types.ModuleType("mamba_ssm")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["mamba_ssm"] = pkg
    if not torch.cuda.is_available():       # its host code enters torch.cuda.device(x.device.index) (None on CPU)
        torch.cuda.device = lambda index: contextlib.nullcontext()      # and sizes splits by an H100's 132 SMs
        torch.cuda.get_device_properties = lambda device=None: types.SimpleNamespace(multi_processor_count=132)
    from triton.runtime.autotuner import Autotuner
    from mamba_ssm.ops.triton import ssd_bmm, ssd_chunk_scan, ssd_chunk_state, ssd_combined, ssd_state_passing
    for mod in (ssd_bmm, ssd_chunk_scan, ssd_chunk_state, ssd_combined, ssd_state_passing):
        for obj in vars(mod).values():
            if isinstance(obj, Autotuner):
                obj.configs = obj.configs[:1]
    return ssd_combined.mamba_chunk_scan_combined


def _modelled_conv(counter: OpCounter, ref):
    """The reference causal conv counted as causal-conv1d 1.7 runs on a GPU (``--scan mamba_ssm`` or ``--conv
    model``): forward one kernel; backward one kernel and the fp32 zero fills of dweight and dbias
    (``causal_conv1d_bwd_function``'s ``torch.zeros_like(..., dtype=float32)``; its ``type_as`` casts back are
    not counted: on a GPU the weight and bias stay fp32 — autocast does not cast for causal_conv1d_fn — while
    on CPU the reference conv's autocast puts them in the bf16 copy). The output is channel-last in memory, as
    causal-conv1d's channel-last path returns it (the model passes a transposed [B, T, C] tensor), so that the
    scan's B and C views keep stride 1 and mamba-ssm copies nothing (with the reference's contiguous output it
    would clone them: a CPU-only cost). Its own (reference) ops are not counted."""
    site = ("causal_conv1d", "causal_conv1d/cpp_functions.py (modelled)")

    def backward_launches():
        counter.add("causal_conv1d", site=site)
        counter.add("zeros_like", 2, dtype="float32", site=site)        # dweight, dbias

    def conv(x, weight, bias=None, activation=None, **kw):
        assert bias is not None and not kw, "the counter covers the training path only"
        run = lambda *ts: ref(*ts, activation=activation).transpose(1, 2).contiguous().transpose(1, 2)  # noqa: E731
        return _opaque(counter, run, lambda: counter.add("causal_conv1d", site=site), backward_launches)(
            x, weight, bias)      # the output channel-last in memory, as on a GPU

    return conv


def _make_step(args, ops):
    import train
    from types import SimpleNamespace as NS
    from fused import get_model
    from groundthink.step import TrainStep
    torch.manual_seed(0)
    m = get_model(args.variant, args.size, vocab_size=args.vocab, ops=ops)
    opt = train.make_optimizer(m, NS(lr=1e-3, weight_decay=0.1, lr_mult_rwkv=1.0, lr_mult_mamba=1.0,
                                     lr_mult_other=1.0))
    flat = {} if args.flat_weights == "absent" else {"flat_weights": args.flat_weights == "on"}   # absent: older step
    step = TrainStep(m, opt, batch_size=args.batch, seq_len=args.seq, device="cpu",
                     amp_dtype=torch.bfloat16 if args.autocast else None, **flat)
    idx = torch.randint(0, args.vocab, (args.batch, args.seq + 1))
    step.load_batch(idx[:, :-1], idx[:, 1:])
    return m, step


def gemm_report(args):
    """One training step under ``GemmWatch``: every matmul the model itself issues, the misaligned ones listed
    (inside the ops of the registry nothing is recorded: on a GPU they are the lab's or a peer's own kernels)."""
    from groundthink.registry import resolve
    from groundthink.step import GemmWatch
    ops = resolve(args.kernels)
    watch = GemmWatch()
    watch.opaque(ops)
    _, step = _make_step(args, ops)
    with watch:
        step._body()
    bad = watch.misaligned()
    print(f"{args.variant}/{args.size} B{args.batch} T{args.seq} vocab {args.vocab}"
          f"{' bf16 autocast' if args.autocast else ''}: {len(watch.records)} matrix products per step, "
          f"{len(bad)} misaligned")
    for line, n in collections.Counter(bad).most_common():
        print(f"  {n:3d} x {line}")


SPLITK_SHAPES = ((128, 128), (256, 128), (384, 128), (24, 128), (512, 128), (128, 512), (104, 128), (32, 128),
                 (128, 32), (672, 128), (512, 512), (2304, 512))
# weight gradients [M, N] of the small step (r/k/v/g, output, in_proj pieces, FFN, head, LoRA), in_proj as one
# group (672), and two of the large step's (r/k/v/g, in_proj)


def _per_call(fn, reps: int = 20) -> tuple[float, float, str]:
    """(CUDA kernels per call, µs per call, the kernels' short names) of ``fn``: the µs by ``gate.graph_ms`` (a
    CUDA-graph replay: GPU time and launch gaps, no host time — what a captured step pays)."""
    import warnings
    from torch.profiler import ProfilerActivity, profile

    from groundthink.gate import graph_ms
    warnings.filterwarnings("ignore", message="Profiler clears events")    # (its text names torch's install path)
    us = graph_ms(fn, [])[0] * 1e3              # (its warm-up first: the profile below sees warm calls only)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    short = sorted({("splitKreduce" if "splitKreduce" in n else n.split("(")[0].split("<")[0][-40:]) for n in names})
    return len(names) / reps, us, " + ".join(short)


def splitk_probe(K: int = 16384):
    """Print, per weight-gradient shape, each formulation's kernels per call and µs (see the module docstring),
    under this process's cuBLAS settings (printed first: the preferred BLAS library, the workspace variables, the
    bf16 reduced-precision split-K flag; ``GROUNDTHINK_SPLITK_NO_REDUCED=1`` turns that flag off here)."""
    if not torch.cuda.is_available():
        raise SystemExit("--splitk-probe needs a CUDA device (it profiles cuBLAS's kernels)")
    if os.environ.get("GROUNDTHINK_SPLITK_NO_REDUCED") == "1":
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    env = {k: os.environ[k] for k in ("TORCH_BLAS_PREFER_CUBLASLT", "CUBLAS_WORKSPACE_CONFIG",
                                      "CUBLASLT_WORKSPACE_SIZE") if k in os.environ}
    print(f"cuBLAS settings: library {torch.backends.cuda.preferred_blas_library()}, env {env or 'default'}, "
          f"bf16 reduced-precision reduction {torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction}")
    torch.manual_seed(0)
    bf = dict(device="cuda", dtype=torch.bfloat16)
    print(f"{'M x N':>10} {'formulation':<22} {'kernels':>7} {'us':>8}  kernels")
    for M, N in SPLITK_SHAPES:
        dy, x = torch.randn(K, M, **bf), torch.randn(K, N, **bf)
        dys, xs = torch.randn(4, K, M, **bf), torch.randn(4, K, N, **bf)
        out, out32 = torch.empty(M, N, **bf), torch.empty(M, N, device="cuda", dtype=torch.float32)
        forms = {"dY^T X bf16": lambda: torch.mm(dy.t(), x, out=out),
                 "(X^T dY)^T bf16": lambda: torch.mm(x.t(), dy, out=out.t()),
                 "dY^T X -> fp32": lambda: torch.mm(dy.t(), x, out_dtype=torch.float32, out=out32),
                 "4 x as one bmm": lambda: torch.bmm(dys.transpose(1, 2), xs)}
        for name, fn in forms.items():
            try:
                n, us, what = _per_call(fn)
                print(f"{f'{M}x{N}':>10} {name:<22} {n:7.1f} {us:8.1f}  {what}")
            except Exception as e:          # an unsupported form (e.g. out_dtype on an older torch)
                print(f"{f'{M}x{N}':>10} {name:<22} {'-':>7} {'-':>8}  {type(e).__name__}: {str(e)[:60]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", default="GF-MH")
    ap.add_argument("--size", default="small")
    ap.add_argument("--kernels", default="triton")
    ap.add_argument("--vocab", type=int, default=97)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--autocast", action="store_true", help="bf16 autocast (as on GPU)")
    ap.add_argument("--flat-weights", choices=["on", "off", "absent"], default="on")
    ap.add_argument("--scan-fwd", type=int, default=5)
    ap.add_argument("--scan-bwd", type=int, default=20)
    ap.add_argument("--emb-bwd", type=int, default=20, help="launches of torch's CUDA embedding backward")
    ap.add_argument("--scan", choices=["model", "mamba_ssm"], default="model", help="the Mamba-2 scan: the "
                    "reference counted as --scan-fwd/--scan-bwd launches (model), or mamba-ssm's own Triton code "
                    "through the interpreter (mamba_ssm; implies --conv model)")
    ap.add_argument("--conv", choices=["reference", "model"], default="reference", help="the causal conv: the "
                    "reference's ops counted (reference) or causal-conv1d's GPU launches modelled (model)")
    ap.add_argument("--where", default="", help="OP[,OP] or all: list every call site of these ops (e.g. "
                    "fill_,zero_,zeros,zeros_like,sum): Python frame outside torch, autograd node")
    ap.add_argument("--before", default="", help="ENV=VALUE[,ENV=VALUE]: also count with these set, print the "
                    "differences")
    ap.add_argument("--gemms", action="store_true", help="list the step's matrix products and the misaligned "
                    "ones (groundthink.step.GemmWatch) instead of counting launches")
    ap.add_argument("--splitk-probe", action="store_true", help="GPU: kernels per call and µs of weight-gradient "
                    "GEMM formulations at the small step's shapes")
    args = ap.parse_args()
    if args.splitk_probe:
        return splitk_probe()
    if args.gemms:
        return gemm_report(args)
    if args.before:
        env = dict(kv.split("=", 1) for kv in args.before.split(","))
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            before = count(args)
        finally:
            for k, v in saved.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    after = count(args)
    if args.before:
        print(f"with {args.before}: {sum(before.values())} launches, without: {sum(after.values())}; by op:")
        for key in sorted(set(before) | set(after), key=lambda k: after[k] - before[k]):
            if after[key] != before[key]:
                print(f"  {before[key]:5d} -> {after[key]:5d}  {key[0]:<12} {key[1]}")


def count(args) -> collections.Counter:
    """One counted training step (after an uncounted one): prints the summary, returns {(tag, op): launches}."""
    from groundthink.registry import resolve
    ops = resolve(args.kernels)
    counter = OpCounter({"embedding_dense_backward": args.emb_bwd}, where=set(filter(None, args.where.split(","))))
    _patch_triton(counter)
    if args.scan == "mamba_ssm":
        ops.choices["mamba2"].fn = _mamba_ssm_scan()
    else:
        ops.choices["mamba2"].fn = _opaque_scan(counter, ops.choices["mamba2"].fn, args.scan_fwd, args.scan_bwd)
    if args.scan == "mamba_ssm" or args.conv == "model":
        ops.choices["causal_conv1d"].fn = _modelled_conv(counter, ops.choices["causal_conv1d"].fn)
    m, step = _make_step(args, ops)
    tag = (lambda t: lambda *_: setattr(counter, "tag", t))
    for blk in m.blocks:
        for name in ("tmix", "mamba", "ffn", "fusion"):
            mod = getattr(blk, name, None)
            if mod is not None:
                mod.register_forward_pre_hook(tag("fwd:" + name))
                mod.register_forward_hook(tag("fwd:other"))
    m.register_forward_hook(tag("bwd"))
    update = step._update
    step._update = lambda *a: (tag("update")(), update(*a))[1]
    step._body()          # uncounted: AdamW's lazy state (zeros on the first step), caches
    with counter:
        counter.active = True
        counter.tag = "fwd:other"
        step._body()
        counter.active = False    # a second count() patches over this one's hooks: they must stay silent
    by_tag = collections.Counter()
    for (t, _), n in counter.counts.items():
        by_tag[t] += n
    total = sum(by_tag.values())
    print(f"{args.variant}/{args.size} B{args.batch} T{args.seq}{' bf16 autocast' if args.autocast else ''}, "
          f"flat weights {args.flat_weights}, ops {ops.impls()}"
          + ("" if args.scan == "model" and args.conv == "reference" else
             f" (counted in their place: mamba2 {'mamba-ssm' if args.scan == 'mamba_ssm' else 'modelled'}, "
             "causal_conv1d modelled)"))
    print(f"launches per training step (forward + backward + update): {total}")
    for t, n in sorted(by_tag.items()):
        print(f"  {t:<12} {n}")
    print("top ops:")
    for (t, name), n in counter.counts.most_common(int(os.environ.get("TOP", "25"))):
        print(f"  {n:5d}  {t:<12} {name}")
    if counter.where:
        owners = collections.Counter()
        for (_, _, _, owner, _), n in counter.sites.items():
            owners[owner] += n
        print(f"{','.join(sorted(counter.where))}: {sum(owners.values())} launches by owner (the issuing frame's "
              f"package; autograd = a built-in backward node): "
              + ", ".join(f"{o} {n}" for o, n in owners.most_common()))
        print("  launches  pass         op           dtype     owner          site [autograd node]")
        for (t, name, dt, owner, site), n in sorted(counter.sites.items(), key=lambda kv: (-kv[1], kv[0])):
            print(f"  {n:5d}  {t:<12} {name:<12} {dt:<9} {owner:<14} {site}")
    return collections.Counter(counter.counts)


if __name__ == "__main__":
    main()
