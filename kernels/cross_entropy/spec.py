"""Declaration of the ``cross_entropy`` op (groundthink.spec format). The model's loss calls it through the registry
(``ops.cross_entropy(logits [B·T, V], targets [B·T])`` in fused/model.py): the reference is
``F.cross_entropy(logits.float(), targets)`` (the model's earlier loss, unchanged), the lab kernel never makes fp32
logits. Graph-safe: no host syncs, no autotuning.

Benchmarks: the models' logits (N = B·T = 16384 rows, char vocabulary V97) and a GPT-2-sized vocabulary
(N4096 × V50304, where fp32 copies dominate memory). Bytes: fwd reads the logits once; fwd+bwd 4 passes over N·V.
"""
import torch

from groundthink.spec import Bench, EagerCase, Impl, OpSpec


def make_inputs(N, V, grad: bool, dtype=torch.bfloat16, seed: int = 0, device="cpu") -> dict:
    g = torch.Generator(device=device).manual_seed(seed)
    logits = (2 * torch.randn(N, V, generator=g, device=device)).to(dtype).requires_grad_(grad)
    return {"logits": logits, "targets": torch.randint(0, V, (N,), generator=g, device=device)}


SPEC = OpSpec(
    name="cross_entropy",
    doc="mean token cross-entropy, loss and dlogits in one pass: cross_entropy(logits [N,V], targets [N], "
        "ignore_index=-100) -> fp32 scalar",
    impls=(
        Impl("reference", "reference.cross_entropy:cross_entropy", role="reference", graph_safe=True),
        Impl("triton", "kernels.cross_entropy:cross_entropy", role="lab", graph_safe=True),
    ),
    bench=Bench(shapes=lambda: [(16384, 97), (4096, 50304)], cpu_shapes=[(16, 40)],
                shape_str=lambda N, V: f"N{N} V{V}", make_inputs=make_inputs,
                err_shape=lambda N, V: (min(N, 2048), V),
                nbytes=lambda N, V, pass_, es=2: N * V * es * (1 if pass_ == "fwd" else 4),
                model_shape=lambda cfg, batch, seq_len: (batch * seq_len, cfg.vocab_size)),
    kernels=("*_ce_*",),
    kernels_group="glue kernels",
    eager=(EagerCase("kernels.cross_entropy.cross_entropy:_cross_entropy",
                     inputs=lambda t: dict(logits=t(7, 11), targets=torch.tensor([0, 3, -100, 10, 5, 5, 1])),
                     op_args=lambda k: (k["logits"], k["targets"], -100, True)),),
)
