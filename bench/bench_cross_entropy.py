"""Mean token cross-entropy (``cross_entropy``): the lab's one-pass Triton kernel (loss + dlogits, no fp32 copy of
the logits) vs the eager reference (``F.cross_entropy(logits.float(), targets)``, the model's loss today) and
torch.compile of it, forward and forward+backward, bf16 logits.

Shapes: the models' logits (N = B·T = 16384 rows, char vocabulary V97) and a GPT-2-sized vocabulary (N4096 ×
V50304, where the fp32 copies dominate memory). Bytes (minimal I/O): fwd reads the logits once; fwd+bwd reads them,
writes g, reads g, writes dlogits (4 passes over N·V). Errors: vs float64 at N ≤ 2048 rows.
"""
from __future__ import annotations

import pytest
import torch

from bench import common

OP = "cross_entropy"
common.PEERS.setdefault(OP, ("compile",))
SHAPES = [(16384, 97), (4096, 50304)] if common.ON_GPU else [(16, 40)]
PASSES = ("fwd", "fwdbwd")
IMPLS = ("reference", "triton", "compile")
PRIORITY = {"reference": 1, "triton": 1, "compile": 3}


def shape_str(N, V) -> str:
    return f"N{N} V{V}"


def make_inputs(N, V, grad: bool, dtype=torch.bfloat16, seed: int = 0) -> dict:
    dev = common.DEVICE
    g = torch.Generator(device=dev).manual_seed(seed)
    logits = (2 * torch.randn(N, V, generator=g, device=dev)).to(dtype).requires_grad_(grad)
    return {"logits": logits, "targets": torch.randint(0, V, (N,), generator=g, device=dev)}


def _compile_maker():
    torch._dynamo.reset()
    from reference.cross_entropy import cross_entropy
    return torch.compile(cross_entropy, dynamic=False)


@pytest.mark.parametrize("impl,shp,pass_", common.kernel_cases(SHAPES, PASSES, IMPLS, shape_str, PRIORITY))
def test_cross_entropy(bench, impl, shp, pass_):
    if PRIORITY[impl] > 1:
        common.require_budget(f"{OP}/{impl}")
    from groundthink import registry
    fn = common.load_impl(OP, impl, {"compile": _compile_maker})
    eN = min(shp[0], 2048)
    common.run_case(
        bench, op=OP, impl=impl, fn=fn, ref64=registry.load(OP, "reference"), shape=shape_str(*shp), pass_=pass_,
        make_inputs=lambda grad: make_inputs(*shp, grad),
        make_err_inputs=lambda grad: make_inputs(eN, shp[1], grad, seed=1),
        err_shape=shape_str(eN, shp[1]), nbytes=shp[0] * shp[1] * 2 * (1 if pass_ == "fwd" else 4), flops=None)
