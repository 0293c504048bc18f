"""Count the ops of one training step (forward + backward) on CPU: a proxy for GPU kernel launches.

Every aten op that does work is counted once (views and bare allocations are free on a GPU and not counted);
every Triton kernel launch (interpreter) counts once and the host-side tensor work the interpreter does for it is
not counted. The Mamba-2 scan runs on its PyTorch reference here (mamba-ssm is GPU-only): its ops are the same
before and after the glue fusions and not what the GPU runs (mamba-ssm's fused Triton scan), so they are not
counted: each scan call counts as one op ("mamba2-scan") forward and one backward. AdamW (fused on GPU) is not
counted. Usage: PYTHONPATH=. python scripts/count_step_ops.py [--variant GF-MH] [--kernels triton|reference]
"""
from __future__ import annotations

import argparse
import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import kernels  # noqa: F401  (Triton interpreter on CPU)

FREE = {"empty", "empty_like", "new_empty", "empty_strided", "new_empty_strided", "detach", "lift_fresh",
        "_to_copy_noop", "alias", "set_", "resize_", "_unsafe_view"}


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()
        self.tag = "other"
        self.paused = 0
        self.active = False     # set while the measured step runs (launches outside it are not counted)

    def add(self, name):
        if self.active and not self.paused:
            self.counts[(self.tag, name)] += 1

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
            self.counts[(self.tag, name)] += 1
        return out


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


def _opaque_scan(counter: OpCounter, ref):
    """The reference Mamba-2 scan as one counted op forward and one backward (its own ops not counted)."""

    class Scan(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, dt, A, B, C, D, dt_bias, chunk_size):
            counter.paused += 1
            try:
                leaves = [t.detach().requires_grad_() for t in (x, dt, A, B, C, D, dt_bias)]
                with torch.enable_grad():
                    y = ref(*leaves[:5], chunk_size, D=leaves[5], dt_bias=leaves[6], dt_softplus=True)
            finally:
                counter.paused -= 1
            counter.add("mamba2-scan")
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
            counter.add("mamba2-scan")
            return (*grads, None)

    def scan(x, dt, A, B, C, chunk_size, D=None, dt_bias=None, dt_softplus=False, **kw):
        assert dt_softplus and not kw, "the counter covers the training path only"
        return Scan.apply(x, dt, A, B, C, D, dt_bias, chunk_size)

    return scan


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", default="GF-MH")
    ap.add_argument("--size", default="small")
    ap.add_argument("--kernels", default="triton")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--autocast", action="store_true", help="bf16 autocast (as on GPU: counts its casts too)")
    args = ap.parse_args()
    from fused import get_model
    from groundthink.registry import resolve
    torch.manual_seed(0)
    ops = resolve(args.kernels)
    counter = OpCounter()
    _patch_triton(counter)
    ops.choices["mamba2"].fn = _opaque_scan(counter, ops.choices["mamba2"].fn)
    m = get_model(args.variant, args.size, vocab_size=97, ops=ops)
    m.collect_stats = False
    idx = torch.randint(0, 97, (args.batch, args.seq + 1))
    for blk in m.blocks:
        for name in ("tmix", "mamba", "ffn", "fusion"):
            mod = getattr(blk, name, None)
            if mod is None:
                continue
            mod.register_forward_pre_hook(lambda *_, n=name: setattr(counter, "tag", "fwd:" + n))
            mod.register_forward_hook(lambda *_: setattr(counter, "tag", "fwd:other"))
    import contextlib
    amp = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.autocast else contextlib.nullcontext
    with amp():
        m(idx[:, :-1], idx[:, 1:])   # warm-up (lazy init, caches)
    m.zero_grad(set_to_none=True)
    with counter:
        counter.active = True
        counter.tag = "fwd:other"
        with amp():
            _, loss = m(idx[:, :-1], idx[:, 1:])
        counter.tag = "bwd"
        loss.backward()
    by_tag = collections.Counter()
    for (tag, _), n in counter.counts.items():
        by_tag[tag] += n
    total = sum(by_tag.values())
    print(f"{args.variant}/{args.size} B{args.batch} T{args.seq}{' bf16 autocast' if args.autocast else ''}, "
          f"ops {ops.impls()}")
    print(f"ops per step (forward + backward): {total}")
    for tag, n in sorted(by_tag.items()):
        print(f"  {tag:<12} {n}")
    print("top ops:")
    for (tag, name), n in counter.counts.most_common(int(__import__("os").environ.get("TOP", "25"))):
        print(f"  {n:5d}  {tag:<12} {name}")


if __name__ == "__main__":
    main()
