"""Mamba-2 SSD scan in plain PyTorch: the CPU path of ``ops.mamba2`` and the oracle for mamba-ssm's kernel.

Per sequence and head h (head dim p, state dim n, group g(h) = h // (H / G)), with
Δ_t = softplus(dt_t + dt_bias) (or dt_t + dt_bias without ``dt_softplus``) and scalar A_h < 0:

    S_t = exp(Δ_t A_h) · S_{t-1} + Δ_t · x_t ⊗ B_t          S ∈ R^{p×n}
    y_t = S_t C_t + D_h ⊙ x_t                              (D of shape [H] or [H, p])
    y_t ← y_t ⊙ silu(z_t)                                  (only when z is given, as in mamba-ssm)

Layouts follow mamba-ssm's ``mamba_chunk_scan_combined``: x ``[b, l, h, p]``, dt ``[b, l, h]``, A ``[h]``,
B, C ``[b, l, g, n]``, initial/final states ``[b, h, p, n]``.

Two independent formulations of the same function:
* ``ssd_recurrence`` — the recurrence above, one step at a time (the definition, the test oracle);
  ``reference.mamba2_step.mamba2_step`` is one step of it on a carried state (generation).
* ``mamba_chunk_scan`` — the chunked "SSD minimal" form: inside a chunk of Q steps an exact masked
  (Q×Q) decay matrix built from segment sums (every exponent ≤ 0), chunk states passed between chunks by a
  small (c+1)×(c+1) segment-sum recurrence. Any length: padded internally to a chunk multiple with Δ = 0
  (no decay, no input), so padding changes neither y nor the final state.

Math in float64 for float64 inputs, else float32; y comes back in x's dtype, final states in the compute dtype
(float32 for low-precision inputs, as mamba-ssm). Gradients come from autograd.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _cdt(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _softplus(dt):
    # mamba-ssm: softplus(dt) for dt <= 20, identity above
    return torch.where(dt <= 20.0, F.softplus(dt), dt)


def _check(x, dt, A, B, C, D, z, initial_states):
    if x.dim() != 4:
        raise ValueError(f"x must be [b, l, h, p]; got {tuple(x.shape)}")
    b, l, h, p = x.shape
    if dt.shape != (b, l, h):
        raise ValueError(f"dt must be [b, l, h] = {(b, l, h)}; got {tuple(dt.shape)}")
    if A.shape != (h,):
        raise ValueError(f"A must be [h] = ({h},); got {tuple(A.shape)}")
    if B.dim() != 4 or B.shape[:2] != (b, l) or C.shape != B.shape:
        raise ValueError(f"B and C must be [b, l, g, n] with b, l = {b}, {l}; got B {tuple(B.shape)}, "
                         f"C {tuple(C.shape)}")
    g = B.shape[2]
    if h % g:
        raise ValueError(f"the number of groups ({g}) must divide the number of heads ({h})")
    if D is not None and D.shape not in ((h,), (h, p)):
        raise ValueError(f"D must be [h] or [h, p]; got {tuple(D.shape)}")
    if z is not None and z.shape != x.shape:
        raise ValueError(f"z must have x's shape {tuple(x.shape)}; got {tuple(z.shape)}")
    if initial_states is not None and initial_states.shape != (b, h, p, B.shape[-1]):
        raise ValueError(f"initial_states must be [b, h, p, n] = {(b, h, p, B.shape[-1])}; "
                         f"got {tuple(initial_states.shape)}")


def _prep(x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_states):
    """Common preprocessing: compute dtype, Δ, heads-expanded B/C."""
    _check(x, dt, A, B, C, D, z, initial_states)
    cdt = _cdt(x)
    h = x.shape[2]
    g = B.shape[2]
    dt = dt.to(cdt)
    if dt_bias is not None:
        dt = dt + dt_bias.to(cdt)
    if dt_softplus:
        dt = _softplus(dt)
    Bh = B.to(cdt).repeat_interleave(h // g, dim=2)      # [b, l, h, n]
    Ch = C.to(cdt).repeat_interleave(h // g, dim=2)
    return cdt, dt, Bh, Ch


def _finish(y, x, D, z, cdt):
    if D is not None:
        Dc = D.to(cdt)
        y = y + x.to(cdt) * (Dc[:, None] if Dc.dim() == 1 else Dc)
    if z is not None:
        y = y * F.silu(z.to(cdt))
    return y.to(x.dtype)


def _segsum(a):
    """a [..., T] -> [..., T, T] with out[..., i, j] = Σ_{j<k≤i} a_k for j ≤ i, −inf above the diagonal."""
    T = a.shape[-1]
    a = a[..., None].expand(*a.shape, T)                  # [..., T(k), T(j)]
    strict = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device), -1)
    a = a.masked_fill(~strict, 0)
    s = torch.cumsum(a, dim=-2)
    incl = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device), 0)
    return s.masked_fill(~incl, -torch.inf)


def mamba_chunk_scan(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False,
                     initial_states=None, return_final_states=False):
    """Chunked SSD (same signature as mamba-ssm's ``mamba_chunk_scan_combined``).

    Returns y ``[b, l, h, p]``, or ``(y, final_states [b, h, p, n])`` with ``return_final_states``.
    """
    cdt, dt, Bh, Ch = _prep(x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_states)
    b, l, h, p = x.shape
    n = B.shape[-1]
    Q = int(chunk_size)
    if Q < 1:
        raise ValueError(f"chunk_size must be ≥ 1; got {chunk_size}")
    pad = (-l) % Q
    xc = x.to(cdt)
    if pad:   # Δ = 0 on padding: exp(0 · A) = 1 (no decay) and Δ·x = 0 (no input)
        xc = F.pad(xc, (0, 0, 0, 0, 0, pad))
        dt = F.pad(dt, (0, 0, 0, pad))
        Bh = F.pad(Bh, (0, 0, 0, 0, 0, pad))
        Ch = F.pad(Ch, (0, 0, 0, 0, 0, pad))
    L = l + pad
    c = L // Q
    X = (xc * dt[..., None]).view(b, c, Q, h, p)           # Δ·x
    Ad = (dt * A.to(cdt)).view(b, c, Q, h).permute(0, 3, 1, 2)   # [b, h, c, Q]  Δ·A ≤ 0
    Bc = Bh.view(b, c, Q, h, n)
    Cc = Ch.view(b, c, Q, h, n)
    A_cum = torch.cumsum(Ad, dim=-1)                        # [b, h, c, Q]

    # 1. intra-chunk (diagonal blocks): y_t = Σ_{s≤t} (C_t·B_s) exp(A_cum_t − A_cum_s) Δ_s x_s
    Lmat = torch.exp(_segsum(Ad))                           # [b, h, c, Q(t), Q(s)]
    CB = torch.einsum("bclhn,bcshn->bhcls", Cc, Bc)
    Y = torch.einsum("bhcls,bcshp->bclhp", CB * Lmat, X)

    # 2. state contributed by each chunk: Σ_s exp(A_cum_last − A_cum_s) Δ_s x_s ⊗ B_s
    decay_states = torch.exp(A_cum[..., -1:] - A_cum)       # [b, h, c, Q]
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bc, decay_states, X)

    # 3. inter-chunk recurrence over chunk boundaries
    if initial_states is None:
        init = torch.zeros(b, 1, h, p, n, dtype=cdt, device=x.device)
    else:
        init = initial_states.to(cdt)[:, None]
    states = torch.cat([init, states], dim=1)               # [b, c+1, h, p, n]
    decay_chunk = torch.exp(_segsum(F.pad(A_cum[..., -1], (1, 0))))   # [b, h, c+1, c+1]
    new_states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)
    states, final = new_states[:, :-1], new_states[:, -1]

    # 4. state -> output: y_t += C_t · exp(A_cum_t) S_chunk_start
    Y = Y + torch.einsum("bclhn,bchpn,bhcl->bclhp", Cc, states, torch.exp(A_cum))
    y = Y.reshape(b, L, h, p)[:, :l]
    y = _finish(y, x, D, z, cdt)
    return (y, final) if return_final_states else y


def ssd_recurrence(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, initial_states=None,
                   return_final_states=False):
    """The SSD recurrence step by step (same arguments as ``mamba_chunk_scan`` without the chunk size)."""
    cdt, dt, Bh, Ch = _prep(x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_states)
    b, l, h, p = x.shape
    n = B.shape[-1]
    S = (initial_states.to(cdt) if initial_states is not None
         else torch.zeros(b, h, p, n, dtype=cdt, device=x.device))
    xc = x.to(cdt)
    Ac = A.to(cdt)
    ys = []
    for t in range(l):
        dA = torch.exp(dt[:, t] * Ac)                                            # [b, h]
        S = dA[:, :, None, None] * S + (dt[:, t, :, None] * xc[:, t])[..., None] * Bh[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", S, Ch[:, t]))
    y = torch.stack(ys, 1) if ys else xc.new_zeros(b, 0, h, p)
    y = _finish(y, x, D, z, cdt)
    return (y, S) if return_final_states else y
