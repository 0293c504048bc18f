"""One step of the Mamba-2 recurrence on a carried state, in plain PyTorch: the decode path of the model
(``ops.mamba2_step``). It is ``reference.mamba2.ssd_recurrence`` for a single token, so it agrees with the
chunked scan by construction and by test (tests/test_mamba2_step.py).
"""
from __future__ import annotations

from reference.mamba2 import ssd_recurrence


def mamba2_step(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """state ``[b, h, p, n]``, x ``[b, h, p]``, dt ``[b, h]``, A ``[h]``, B, C ``[b, g, n]``, z ``[b, h, p]``
    (mamba-ssm's ``selective_state_update`` layout, but not in place).

    Returns ``(y [b, h, p] in x's dtype, new_state in the compute dtype)``.
    """
    y, S = ssd_recurrence(x[:, None], dt[:, None], A, B[:, None], C[:, None], D=D,
                          z=None if z is None else z[:, None], dt_bias=dt_bias, dt_softplus=dt_softplus,
                          initial_states=state, return_final_states=True)
    return y[:, 0], S
