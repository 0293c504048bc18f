"""The one op registry: which implementation of each op the model uses.

Ops and their implementations (all share one signature per op):

    wkv6                (r, k, v, w, u, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None)
                        -> (o, final_state)
        reference       reference.wkv6.wkv6_chunked         (PyTorch, any device)
        triton          kernels.wkv6.wkv6                   (the lab's kernel: chunk-parallel algorithm)
        triton_fused    kernels.wkv6.wkv6_fused             (the lab's sequential chunked kernel, fallback)
        fla_chunk       fla.ops.rwkv6.chunk_rwkv6           (peer, benchmarks)
        fla_recurrent   fla.ops.rwkv6.fused_recurrent_rwkv6 (peer, benchmarks)
    gate_norm_residual  (x, a, b=None, gate=None, *, weight, bias=None, mode, norm, eps, gate_logits,
                         residual_fp32) -> (h, y)
        reference       reference.gate_norm_residual.gate_norm_residual
        triton          kernels.gate_norm_residual.gate_norm_residual
        compile         torch.compile of the reference      (peer, benchmarks)
    norm_gate           (x, z, weight, bias=None, *, group_size=None, eps, norm, norm_before_gate) -> y
        reference       reference.norm_gate.norm_gate       (per-group norm + SiLU gate)
        triton          kernels.norm_gate.norm_gate
        mamba_ssm       mamba-ssm's layernorm_fn / rmsnorm_fn (peer, benchmarks)
    shift_lerp          (x, mu, x_prev=None) -> x + (shift(x) − x) ⊙ mu          (RWKV-6 token shift, stage A)
    ddlerp              (x, m, maa, x_prev=None) -> 5 × (x + (shift(x) − x) ⊙ (maa_i + m_i))   (stage B)
        reference       reference.shift_lerp.shift_lerp / reference.ddlerp.ddlerp
        triton          kernels.shift_lerp.shift_lerp / kernels.ddlerp.ddlerp
    decay_exp           (base, d, dtype=None) -> −exp(base + d) in dtype     (RWKV-6 log-decay)
        reference       reference.decay_exp.decay_exp
        triton          kernels.decay_exp.decay_exp
    cross_entropy       (logits [N, V], targets [N], ignore_index=-100) -> mean loss (fp32)
        reference       reference.cross_entropy.cross_entropy   (F.cross_entropy on fp32 logits)
        triton          kernels.cross_entropy.cross_entropy     (loss + dlogits in one pass)
    mamba2              (x, dt, A, B, C, chunk_size, D=None, dt_bias=None, dt_softplus=False,
                         initial_states=None, return_final_states=False) -> y or (y, final_states)
        reference       reference.mamba2.mamba_chunk_scan   (PyTorch SSD, the CPU path)
        mamba_ssm       mamba_ssm's mamba_chunk_scan_combined (Triton, GPU)

``resolve(mode)`` picks one implementation per op and says why:
    "reference"  every op on its reference;
    "triton"     the lab's kernels everywhere (under the interpreter on CPU), mamba-ssm for the scan on GPU;
    "auto"       on GPU, the first of the op's lab candidates (``LAB_KERNEL``) that the gate manifest for this
                 GPU allows, else the reference; on CPU, the references.
The model never imports a kernel: it calls what ``resolve`` hands it.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

import torch

OPS = ("wkv6", "gate_norm_residual", "mamba2", "norm_gate", "shift_lerp", "ddlerp", "decay_exp", "cross_entropy")

# op -> impl -> "module:attribute" (imported lazily: kernels pull in Triton, peers may be absent)
IMPLS: dict[str, dict[str, str]] = {
    "wkv6": {
        "reference": "reference.wkv6:wkv6_chunked",
        "triton": "kernels.wkv6:wkv6",
        "triton_fused": "kernels.wkv6:wkv6_fused",
        "fla_chunk": "fla.ops.rwkv6:chunk_rwkv6",
        "fla_recurrent": "fla.ops.rwkv6:fused_recurrent_rwkv6",
    },
    "gate_norm_residual": {
        "reference": "reference.gate_norm_residual:gate_norm_residual",
        "triton": "kernels.gate_norm_residual:gate_norm_residual",
        "compile": "groundthink.registry:_compiled_gate_norm_residual",
    },
    "mamba2": {
        "reference": "reference.mamba2:mamba_chunk_scan",
        "mamba_ssm": "mamba_ssm.ops.triton.ssd_combined:mamba_chunk_scan_combined",
    },
    # glue ops (branch glue; spec.py of each op is the target declaration)
    "norm_gate": {
        "reference": "reference.norm_gate:norm_gate",
        "triton": "kernels.norm_gate:norm_gate",
        "mamba_ssm": "kernels.norm_gate.peer:mamba_ssm_norm_gate",
    },
    "shift_lerp": {"reference": "reference.shift_lerp:shift_lerp", "triton": "kernels.shift_lerp:shift_lerp"},
    "ddlerp": {"reference": "reference.ddlerp:ddlerp", "triton": "kernels.ddlerp:ddlerp"},
    "decay_exp": {"reference": "reference.decay_exp:decay_exp", "triton": "kernels.decay_exp:decay_exp"},
    "cross_entropy": {"reference": "reference.cross_entropy:cross_entropy",
                      "triton": "kernels.cross_entropy:cross_entropy"},
}
# op -> the lab's candidate implementations, in order of preference: "triton" mode takes the first, "auto" the
# first that the gate manifest allows (else the reference)
LAB_KERNEL: dict[str, tuple[str, ...]] = {"wkv6": ("triton", "triton_fused"), "gate_norm_residual": ("triton",),
                                          "mamba2": ("mamba_ssm",), "norm_gate": ("triton",),
                                          "shift_lerp": ("triton",), "ddlerp": ("triton",),
                                          "decay_exp": ("triton",), "cross_entropy": ("triton",)}
_GPU_ONLY = {"fla_chunk", "fla_recurrent", "mamba_ssm", "compile"}


def _compiled_gate_norm_residual():
    from reference.gate_norm_residual import gate_norm_residual
    return torch.compile(gate_norm_residual, dynamic=False)


def load(op: str, impl: str) -> Callable:
    """Import and return one implementation; raises ImportError if it is not installed here."""
    try:
        target = IMPLS[op][impl]
    except KeyError:
        raise KeyError(f"unknown implementation {op}/{impl}; known: "
                       f"{ {o: sorted(i) for o, i in IMPLS.items()} }") from None
    mod, attr = target.split(":")
    fn = getattr(importlib.import_module(mod), attr)
    if mod == "groundthink.registry":
        fn = fn()
    return fn


def available(op: str) -> list[str]:
    """Implementations of ``op`` that import on this machine (GPU-only peers need CUDA)."""
    out = []
    for impl in IMPLS[op]:
        if impl in _GPU_ONLY and not torch.cuda.is_available():
            continue
        try:
            load(op, impl)
            out.append(impl)
        except Exception:  # noqa: BLE001 - absent or broken peer: not available
            pass
    return out


@dataclass
class Choice:
    op: str
    impl: str
    reason: str
    fn: Callable = field(repr=False)


@dataclass
class OpSet:
    """The implementations a model calls: ``ops.wkv6(...)``, ``ops.gate_norm_residual(...)``, ``ops.mamba2(...)``."""
    choices: dict[str, Choice]

    def __getattr__(self, op):
        try:
            return self.__dict__["choices"][op].fn
        except KeyError:
            raise AttributeError(op) from None

    def table(self) -> str:
        rows = [("op", "implementation", "why")] + [(c.op, c.impl, c.reason) for c in self.choices.values()]
        w0, w1 = (max(len(r[i]) for r in rows) for i in (0, 1))
        return "\n".join(f"{r[0]:<{w0}}  {r[1]:<{w1}}  {r[2]}" for r in rows)

    def impls(self) -> dict[str, str]:
        return {op: c.impl for op, c in self.choices.items()}


def _pick(op: str, impl: str, reason: str) -> Choice:
    return Choice(op, impl, reason, load(op, impl))


def resolve(mode: str = "auto", overrides: dict[str, str] | None = None) -> OpSet:
    """Choose one implementation per op (see the module docstring). ``overrides`` pins op -> impl."""
    if mode not in ("auto", "triton", "reference"):
        raise ValueError(f"kernels mode must be auto, triton or reference; got {mode!r}")
    overrides = overrides or {}
    cuda = torch.cuda.is_available()
    choices = {}
    data = status = None
    if mode == "auto" and cuda:
        from groundthink import manifest
        data, status = manifest.load()
    for op in OPS:
        lab = LAB_KERNEL[op][0]
        if op in overrides:
            choices[op] = _pick(op, overrides[op], "pinned by the caller")
        elif mode == "reference":
            choices[op] = _pick(op, "reference", "--kernels reference")
        elif mode == "triton":
            if lab in _GPU_ONLY and not cuda:
                choices[op] = _pick(op, "reference", f"{lab} needs a GPU")
            else:
                try:
                    choices[op] = _pick(op, lab, "--kernels triton" + ("" if cuda else " (Triton interpreter)"))
                except ImportError as e:
                    choices[op] = _pick(op, "reference", f"{lab} not importable: {e}")
        elif not cuda:
            choices[op] = _pick(op, "reference", "no GPU: references (Triton kernels would only run in the "
                                                 "interpreter)")
        else:
            from groundthink import manifest
            whys = []
            for cand in LAB_KERNEL[op]:
                ok, why = manifest.verdict(data, status, op, cand)
                if ok:
                    try:
                        choices[op] = _pick(op, cand, f"gate manifest: {why}")
                        break
                    except ImportError as e:
                        whys.append(f"manifest allows {cand} but it is not importable: {e}")
                else:
                    whys.append(f"{cand}: {why}" if len(LAB_KERNEL[op]) > 1 else why)
            else:
                choices[op] = _pick(op, "reference", "gate manifest: " + "; ".join(whys))
    return OpSet(choices)
