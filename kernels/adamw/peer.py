"""The peer of ``kernels.adamw``: torch's fused AdamW (``torch._fused_adamw_``, what ``torch.optim.AdamW(fused=True,
capturable=True)`` runs) on per-parameter views of the flat buffers, one call per param group, after clipping
the gradients in place with a multi-tensor multiply by min(1, max_norm / (total_norm + 1e-6)) — the training
step's update before the lab op (``groundthink.step.grouped_adamw_step`` and ``FlatParams.clip_``). Unlike the lab
op it scales ``grad`` in place. The parameters' bounds, groups and weight decays are read on the host once per
set of tables (cached by their sizes and storage — tables rewritten in place with other values would be missed:
the benchmarks and the gate make them once per shape; a CUDA-graph capture must follow an eager call, as the
benchmarks' warm-up does)."""
from __future__ import annotations

import torch

from reference.adamw import CHUNK, check_args

_PLANS: dict = {}


def _plan(n, chunk_param, group, weight_decay):
    """[(group, [(start, end) of each parameter]), ...] and the groups' weight decays (host floats)."""
    key = (n, group.shape[0], weight_decay.shape[0], chunk_param.data_ptr(), group.data_ptr(),
           weight_decay.data_ptr())
    if key not in _PLANS:
        owners, groups = chunk_param.tolist(), group.tolist()
        bounds: dict[int, list[int]] = {}
        for c, i in enumerate(owners):
            b = bounds.setdefault(i, [c * CHUNK, 0])
            b[1] = min((c + 1) * CHUNK, n)
        per: dict[int, list] = {}
        for i, (a, b) in sorted(bounds.items()):
            per.setdefault(groups[i], []).append((i, a, b))
        _PLANS[key] = (sorted(per.items()), [float(w) for w in weight_decay.tolist()])
    return _PLANS[key]


def adamw(param, grad, exp_avg, exp_avg_sq, step, chunk_param, group, lr, weight_decay, total_norm, found_inf,
          max_norm: float = 1.0, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
    check_args(param, grad, exp_avg, exp_avg_sq, step, chunk_param, group, lr, weight_decay, total_norm, found_inf)
    plan, wds = _plan(param.shape[0], chunk_param, group, weight_decay)
    if max_norm > 0:
        torch._foreach_mul_([grad], torch.fmin(max_norm / (total_norm + 1e-6), torch.ones_like(total_norm)))
    for j, members in plan:
        views = [[t[a:b] for _, a, b in members] for t in (param, grad, exp_avg, exp_avg_sq)]
        torch._fused_adamw_(*views, [], [step[i] for i, _, _ in members], amsgrad=False, lr=lr[j], beta1=beta1,
                            beta2=beta2, weight_decay=wds[j], eps=eps, maximize=False, grad_scale=None,
                            found_inf=found_inf)
    return param, exp_avg, exp_avg_sq
