"""What the training step calls: every distinct (op, variant) of one step, read off the model itself.

Why. The gate qualified each op at its spec's ``make_inputs`` (bf16 tensors, the spec's flags) while the step
calls other variants: fp32 activations (the first layer's token shift, the residual stream), fp32 parameters
(wkv6's ``u``, the conv's weight), ``scale=1``, ddlerp's stacked ``order``, norm_gate as RMS without bias on the
Mamba side, gate_norm_residual's "add" mode after the FFN. A verdict then allowed kernel paths that never passed a
check. Here the step's calls are recorded from the model, so the qualification cannot drift from it.

How (``step_calls``). One forward and backward of the model at ``TOKENS`` (batch 2 × 16 tokens) through
recording references, under the step's autocast (bf16 on CUDA, as ``TrainStep``). Each call's arguments are bound
to the reference's signature (defaults filled in). Each is matched to one of its spec's ``model_shape`` entries
(the calls the spec declares, at the same tiny batch and length): the same arguments given or None, every tensor
of the same number of elements and last dimension. What the call passes that ``make_inputs`` at that shape (in
the spec's dtype) does not is its **variant**: a tensor's dtype, ``requires_grad`` or padded rows (a column slice
of a wider GEMM output, by its row stride), a non-tensor argument's value — and, from the backward, an output that
gets no gradient (the last layer's residual h: its backward kernel runs without ``dh``, ``unused_outputs``). The
step's call at the run's batch and length is then ``Call(op, shape = model_shape(cfg, batch, seq_len)[i],
variant, count)``; ``inputs`` rebuilds it (``make_inputs``, then the variant) at any shape of the op, e.g. the
spec's error shape.

A call that matches no entry is ``unmatched`` (its spec does not describe it): no verdict can cover it, so its
op runs its reference, and the qualification says why (fail closed).

Labels. ``Call.label`` = the spec's shape string, then the variant in brackets ("B64 T256 D128 [x float32]");
rows and verdicts are keyed by it, so a verdict covers the variants it has rows for, and a benchmark row (no
variant) covers a step call only where the step passes exactly what ``make_inputs`` makes.

Not part of a variant: other strides (mamba2's x, B, C are transposed views in the step, contiguous in
``make_inputs``; mamba-ssm's kernels, a peer's, are not qualified in that layout).
"""
from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass

import torch

from groundthink.spec import get, specs

TOKENS = (2, 16)   # batch and length of the recording forward


@dataclass(frozen=True)
class Call:
    """One distinct call of the training step: ``shape`` (the spec's shape tuple, None if unmatched),
    ``variant`` (sorted (argument, "dtype" | "grad" | "value", text) overrides of ``make_inputs``, and
    ("out<i>", "unused", "") for an output without a gradient), ``count`` (calls of it per step)."""
    op: str
    shape: tuple | None
    variant: tuple = ()
    count: int = 1
    why: str = ""          # an unmatched call: what it passes

    @property
    def label(self) -> str:
        if self.shape is None:
            return f"unmatched call ({self.why})"
        base = get(self.op).bench.shape_str(*self.shape)
        return base + (" [" + "; ".join(_show(v) for v in self.variant) + "]" if self.variant else "")

    def payload(self) -> dict:
        """JSON form (``precompile``'s background items)."""
        return {"shape": list(self.shape), "variant": [list(v) for v in self.variant]}


def from_payload(op: str, d: dict) -> Call:
    return Call(op, tuple(d["shape"]), tuple(tuple(v) for v in d.get("variant", ())))


def as_calls(op: str, value) -> list[Call]:
    """``value``: a list of ``Call``s, or one spec shape tuple (a call without variant)."""
    if isinstance(value, list):
        return value
    return [value if isinstance(value, Call) else Call(op, tuple(value))]


def _show(v: tuple) -> str:
    name, kind, text = v
    return {"dtype": f"{name} {text}", "grad": f"{name} grad={text}", "unused": f"{name} unused",
            "rows": f"{name} rows {text}"}.get(
        kind, f"{name}={text}")


# ------------------------------------------------------------------------------------------ the inputs

def _value(text: str, exact: bool):
    if text.startswith("torch."):
        dt = getattr(torch, text[6:])
        return dt if exact else torch.float32
    return ast.literal_eval(text)


def inputs(spec, shape: tuple, variant: tuple, dtype: torch.dtype, seed: int = 0, device="cpu",
           exact: bool = True) -> dict:
    """The keyword arguments of one call of ``spec``'s op at ``shape`` with ``variant`` applied to
    ``make_inputs`` (inputs that take gradients, as a fwd+bwd needs; the variant's "grad" entries switch some off). ``exact=False`` (the CPU interpreter, where everything runs in ``dtype`` = float32): dtype
    overrides are left out, a dtype argument becomes float32."""
    kw = spec.bench.make_inputs(*shape, True, dtype=dtype, seed=seed, device=device)
    for name, kind, text in variant:
        t = kw.get(name)
        if kind == "dtype" and exact:
            kw[name] = t.detach().to(getattr(torch, text)).requires_grad_(t.requires_grad)
        elif kind == "grad":
            kw[name] = t.detach().requires_grad_(text == "True")
        elif kind == "value":
            kw[name] = _value(text, exact)
        elif kind == "rows":           # the same values in the columns of a wider buffer
            buf = t.new_empty(*t.shape[:-1], int(text))
            kw[name] = buf[..., :t.shape[-1]].copy_(t.detach()).requires_grad_(t.requires_grad)
    return kw


def run_shapes(spec, call: Call) -> list[tuple]:
    """Where a qualification runs ``call``: the step's shape, then the spec's error shape (when it differs)."""
    err = tuple(spec.bench.err_shape(*call.shape)) if spec.bench.err_shape else tuple(call.shape)
    return list(dict.fromkeys([tuple(call.shape), err]))


def unused_outputs(fn, variant: tuple):
    """``fn`` with the outputs the step gives no gradient (``variant``'s "unused": the last layer's residual h)
    detached, so that a fwd+bwd runs the backward the step runs."""
    unused = {int(name[3:]) for name, kind, _ in variant if kind == "unused"}
    if not unused:
        return fn

    def run(*args, **kwargs):
        out = fn(*args, **kwargs)
        return tuple(o.detach() if i in unused and isinstance(o, torch.Tensor) else o for i, o in enumerate(out))
    return run


def row_dtype(kw: dict) -> torch.dtype:
    """The least precise floating dtype among the call's tensors (its error bound applies to the call)."""
    from groundthink.harness import BOUNDS
    dts = {v.dtype for v in kw.values() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    return max(dts, key=lambda d: BOUNDS.get(d, 0.0)) if dts else torch.float32


# ------------------------------------------------------------------------------------------ recording

def _bound(spec, args: tuple, kwargs: dict) -> dict:
    sig = inspect.signature(spec.reference.load())
    b = sig.bind(*args, **kwargs)
    b.apply_defaults()
    return dict(b.arguments)


def _padded_rows(t: torch.Tensor) -> bool:
    """A view whose rows are further apart than their length (a column slice of a wider tensor: the step's z and
    gate logits, split off one GEMM's output): kernels that take the row stride specialise on it."""
    return t.dim() >= 2 and t.shape[-2] > 1 and t.stride(-1) == 1 and t.stride(-2) > t.shape[-1]


def _diff(made: dict, call: dict) -> tuple | None:
    """The variant turning ``made`` (make_inputs' arguments) into ``call``'s, or None when they do not match
    (another argument given or None, a tensor of another size)."""
    out = []
    for name in sorted(set(made) | set(call)):
        a, b = made.get(name), call.get(name)
        if isinstance(a, torch.Tensor) != isinstance(b, torch.Tensor):
            return None
        if isinstance(a, torch.Tensor):
            if a.numel() != b.numel() or a.shape[-1:] != b.shape[-1:]:
                return None
            if a.dtype != b.dtype:
                out.append((name, "dtype", str(b.dtype).removeprefix("torch.")))
            if a.requires_grad != b.requires_grad:
                out.append((name, "grad", str(b.requires_grad)))
            if _padded_rows(b) and a.is_contiguous():
                out.append((name, "rows", str(b.stride(-2))))
        elif a != b or type(a) is not type(b):
            out.append((name, "value", repr(b)))
    return tuple(out)


def _match(spec, cfg, call: dict) -> tuple[int, tuple] | None:
    """(index of the spec's model shape, variant) that describes ``call`` at ``TOKENS``; the fewest overrides
    win; None if none."""
    best = None
    for i, shp in enumerate(model_shapes(spec, cfg, *TOKENS)):
        made = _bound(spec, (), spec.bench.make_inputs(*shp, True, dtype=spec.bench.dtype))
        variant = _diff(made, call)
        if variant is not None and (best is None or len(variant) < len(best[1])):
            best = (i, variant)
    return best


def model_shapes(spec, cfg, batch: int, seq_len: int) -> list[tuple]:
    """The spec's ``model_shape`` entries (one tuple, or a list of them: one per kind of call)."""
    got = spec.bench.model_shape(cfg, batch, seq_len)
    return list(got) if isinstance(got, list) else [got]


class _Recorder:
    """Stands in for an ``OpSet``: every op runs its reference; each call's arguments are kept, and which of its
    outputs that require a gradient receive one in the backward."""

    def __init__(self):
        self.calls: list[tuple[str, dict, set]] = []

    def __getattr__(self, op: str):
        if op.startswith("_") or op not in specs():
            raise AttributeError(op)
        spec = get(op)
        ref = spec.reference.load()

        def call(*args, **kwargs):
            needs, got = set(), set()
            self.calls.append((op, _bound(spec, args, kwargs), needs, got))
            out = ref(*args, **kwargs)
            many = isinstance(out, (tuple, list))
            outs = list(out) if many else [out]
            for i, o in enumerate(outs):
                if isinstance(o, torch.Tensor) and o.requires_grad:
                    needs.add(i)            # an alias: a gradient reaches it only from outside the op (not via y(h))
                    outs[i] = o.view_as(o)
                    outs[i].register_hook(lambda g, i=i: got.add(i))
            return type(out)(outs) if many else outs[0]
        return call


def record(model, amp: torch.dtype | None = None) -> list[tuple[str, dict, tuple]]:
    """(op, bound arguments, outputs that receive no gradient) of every op call of one forward + backward of
    ``model`` at ``TOKENS`` under autocast to ``amp`` (None: none); the model's ops and its parameters'
    gradients are restored after. The recorder lets go of its calls at the end: a backward that keeps the op it
    was handed (``ctx.wgrad``: the recorder's bound call) made a cycle through C++ autograd nodes — recorder →
    calls → tensors → graph → ctx → recorder — that the garbage collector cannot see, and the leaked graph held
    the parameters' gradient accumulators, made on the default stream: a later CUDA-graph capture of the step
    failed at the backward's end ("dependency created on uncaptured work in another stream", run 20 — every
    ``--kernels auto`` step since the wgrad op joined the recording, small and large)."""
    recorder, ops = _Recorder(), model.ops
    params = list(model.parameters())
    grads = [p.grad for p in params]
    idx = torch.zeros(*TOKENS, dtype=torch.long, device=params[0].device)
    model.set_ops(recorder)
    try:
        with torch.autocast(idx.device.type, dtype=amp or torch.bfloat16, enabled=amp is not None,
                            cache_enabled=False):
            loss = model(idx, idx)[1]
        loss.backward()
    finally:
        model.set_ops(ops)
        calls, recorder.calls = recorder.calls, []     # see the docstring: no cycle through the backward's ctx
        for p, g in zip(params, grads):
            p.grad = g
    return [(op, call, tuple(sorted(needs - got))) for op, call, needs, got in calls]


def _describe(call: dict) -> str:
    return ", ".join(f"{k} {tuple(v.shape)} {str(v.dtype)[6:]}" + ("" if v.requires_grad else " no grad")
                     if isinstance(v, torch.Tensor) else f"{k}={v!r}" for k, v in call.items())


def step_calls(model, batch: int, seq_len: int, amp: torch.dtype | None = None) -> dict[str, list[Call]]:
    """{op: [the distinct ``Call``s of one training step at ``batch`` × ``seq_len``]} of ``model`` (module
    docstring). ``amp``: the step's autocast dtype; default bf16 on CUDA (``TrainStep``'s), none elsewhere."""
    device = next(model.parameters()).device
    if amp is None and device.type == "cuda":
        amp = torch.bfloat16
    cfg, found, counts, matched = model.config, {}, {}, {}
    for op, call, unused in record(model, amp):
        spec, desc = get(op), _describe(call)
        if (op, desc) not in matched:          # one match per distinct signature (a layer repeats its calls)
            matched[op, desc] = _match(spec, cfg, call) if spec.bench is not None and spec.bench.model_shape \
                else None
        m = matched[op, desc]
        if m is not None and unused:           # an output without a gradient: its backward specialises anew
            m = (m[0], tuple(sorted(m[1] + tuple((f"out{i}", "unused", "") for i in unused))))
        key = (op, m) if m is not None else (op, desc)
        counts[key] = counts.get(key, 0) + 1
        if key not in found:
            found[key] = (model_shapes(spec, cfg, batch, seq_len)[m[0]], m[1], "") if m is not None else \
                (None, (), desc)
    out: dict[str, list[Call]] = {}
    for key, (shape, variant, why) in found.items():
        out.setdefault(key[0], []).append(Call(key[0], shape, variant, counts[key], why))
    out["adamw"] = [optimizer_call(model)]
    return out


def optimizer_call(model) -> Call:
    """The step's one ``adamw`` call (made by ``groundthink.step.TrainStep``, not by the model): its flat
    buffers' (N, P, G)."""
    from groundthink.step import adamw_shape, group_params
    return Call("adamw", adamw_shape(group_params(model)))
