"""RWKV-6 wkv recurrence in plain PyTorch: the oracle for ``kernels.wkv6`` and the CPU path.

Per sequence and head, state S ∈ R^{K×V}, log-decay w_t ≤ 0 per key channel, bonus u ∈ R^K:

    o_t = (scale · r_t) · (S_{t-1} + diag(u) k_tᵀ v_t)
    S_t = diag(exp(w_t)) S_{t-1} + k_tᵀ v_t

fla-style layout: r, k, w ``[B, T, H, K]``, v ``[B, T, H, V]``, u ``[H, K]``, ``initial_state`` and the final
state ``[N, H, K, V]`` (N = B, or the number of sequences when ``cu_seqlens`` packs several into B = 1).

Two independent formulations of the same function:
* ``wkv6`` — the recurrence above, one step at a time (the definition);
* ``wkv6_chunked`` — chunks of C steps with exact pairwise decays inside the chunk and state passing between
  chunks (every exponent ≤ 0 by construction); far faster in Python for long T. Cross-checked in tests.

Both compute in float64 when the inputs are float64, else in float32 (or ``compute_dtype``). ``o`` comes back in
the dtype of ``r``; the final state in the compute dtype. Gradients come from autograd.

Without ``cu_seqlens`` every sequence has length T, so both run the whole batch at once (the step functions
take any leading dimensions, ``[..., T, H, K]``): a Python loop over chunks, not over sequences × chunks. At the
small model's shape (B64 T256 H4) that is 16 iterations instead of 1,024 — the per-sequence loop made the
reference's first use in the gate cost 12.4 s of host time on the H100 (run 6). With ``cu_seqlens`` the
packed sequences differ in length and run one after another.
"""
from __future__ import annotations

import torch


def _prepare(r, k, v, w, u, scale, initial_state, cu_seqlens, compute_dtype):
    if r.dim() != 4 or k.shape != r.shape or w.shape != r.shape:
        raise ValueError(f"r, k, w must share shape [B, T, H, K]; got r {tuple(r.shape)}, k {tuple(k.shape)}, "
                         f"w {tuple(w.shape)}")
    B, T, H, K = r.shape
    if v.dim() != 4 or v.shape[:3] != (B, T, H):
        raise ValueError(f"v must be [B, T, H, V] = [{B}, {T}, {H}, V]; got {tuple(v.shape)}")
    if u.shape != (H, K):
        raise ValueError(f"u must be [H, K] = [{H}, {K}]; got {tuple(u.shape)}")
    if cu_seqlens is not None and B != 1:
        raise ValueError(f"with cu_seqlens the batch must be packed into B = 1; got B = {B}")
    N = B if cu_seqlens is None else len(cu_seqlens) - 1
    if initial_state is not None and initial_state.shape != (N, H, K, v.shape[-1]):
        raise ValueError(f"initial_state must be [N, H, K, V] = [{N}, {H}, {K}, {v.shape[-1]}]; "
                         f"got {tuple(initial_state.shape)}")
    if compute_dtype is None:
        compute_dtype = torch.float64 if r.dtype == torch.float64 else torch.float32
    scale = K ** -0.5 if scale is None else scale
    if cu_seqlens is None:
        spans = None                     # the whole batch at once
    else:
        bounds = [int(x) for x in cu_seqlens.tolist()]
        spans = [(bounds[n], bounds[n + 1]) for n in range(N)]   # B = 1 with cu_seqlens
    return compute_dtype, scale, spans


def _run(step_fn, r, k, v, w, u, scale, initial_state, output_final_state, cu_seqlens, compute_dtype):
    """Apply ``step_fn`` (whole sequences, [..., T, H, *] tensors) to the batch, or with ``cu_seqlens`` to every
    packed sequence, and assemble o, final state."""
    cdt, scale, spans = _prepare(r, k, v, w, u, scale, initial_state, cu_seqlens, compute_dtype)
    B, H, K, V = r.shape[0], r.shape[2], r.shape[3], v.shape[3]
    if spans is None:
        S = (initial_state.to(cdt) if initial_state is not None
             else torch.zeros(B, H, K, V, dtype=cdt, device=r.device))
        o, S = step_fn(*(x.to(cdt) for x in (r, k, v, w)), u.to(cdt), scale, S)
        return o.to(r.dtype), (S if output_final_state else None)
    outs, finals = [], []
    for n, (t0, t1) in enumerate(spans):
        S = (initial_state[n].to(cdt) if initial_state is not None
             else torch.zeros(H, K, V, dtype=cdt, device=r.device))
        o, S = step_fn(*(x[0, t0:t1].to(cdt) for x in (r, k, v, w)), u.to(cdt), scale, S)
        outs.append(o)
        finals.append(S)
    o = torch.cat(outs, 0).unsqueeze(0)
    final = torch.stack(finals, 0) if output_final_state else None
    return o.to(r.dtype), final


def _loop(r, k, v, w, u, scale, S):
    """Sequences step by step. r, k, w: [..., T, H, K], v: [..., T, H, V], S: [..., H, K, V]."""
    outs = []
    for t in range(r.shape[-3]):
        kv = k[..., t, :, :, None] * v[..., t, :, None, :]            # [..., H, K, V]
        outs.append(torch.einsum("...hk,...hkv->...hv", r[..., t, :, :] * scale, S + u[:, :, None] * kv))
        S = torch.exp(w[..., t, :, :])[..., None] * S + kv
    o = torch.stack(outs, -3) if outs else r.new_zeros(*r.shape[:-3], 0, r.shape[-2], S.shape[-1])
    return o, S


def wkv6(r, k, v, w, u, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
         compute_dtype=None):
    """The RWKV-6 recurrence, step by step. Returns ``(o, final_state or None)``."""
    return _run(_loop, r, k, v, w, u, scale, initial_state, output_final_state, cu_seqlens, compute_dtype)


def _make_chunked(chunk: int):
    def _chunked(r, k, v, w, u, scale, S):
        """Sequences in chunks of ``chunk`` steps (a different algorithm from the loop); shapes as ``_loop``."""
        T = r.shape[-3]
        outs = []
        for t0 in range(0, T, chunk):
            rc, kc, vc, wc = (x[..., t0:t0 + chunk, :, :].transpose(-3, -2) for x in (r, k, v, w))  # [..., H, C, *]
            C = rc.shape[-2]
            G = torch.cumsum(wc, dim=-2)                                 # G_t = Σ_{j≤t} w_j      [..., H, C, K]
            G_prev = G - wc                                              # G_{t-1}
            rs = rc * scale
            # inter-chunk: r_t ⊙ exp(G_{t-1}) · S
            o = torch.einsum("...hck,...hkv->...hcv", rs * torch.exp(G_prev), S)
            # intra-chunk, s < t: Σ_k r_tk k_sk exp(G_{t-1,k} − G_{s,k}); exponents ≤ 0 on the kept entries
            diff = G_prev[..., :, None, :] - G[..., None, :, :]          # [..., H, t, s, K]
            mask = torch.tril(torch.ones(C, C, dtype=torch.bool, device=r.device), -1)
            decay = torch.exp(torch.where(mask[:, :, None], diff, torch.full_like(diff, -torch.inf)))
            A = torch.einsum("...htk,...hsk,...htsk->...hts", rs, kc, decay)
            A = A + torch.diag_embed(torch.einsum("...htk,hk,...htk->...ht", rs, u, kc))   # diagonal: the bonus u
            o = o + torch.einsum("...hts,...hsv->...htv", A, vc)
            outs.append(o.transpose(-3, -2))
            # state: exp(G_last) S + Σ_s (k_s ⊙ exp(G_last − G_s))ᵀ v_s
            G_last = G[..., -1:, :]
            S = torch.exp(G_last[..., 0, :, None]) * S + torch.einsum("...hsk,...hsv->...hkv",
                                                                       kc * torch.exp(G_last - G), vc)
        o = torch.cat(outs, -3) if outs else r.new_zeros(*r.shape[:-3], 0, r.shape[-2], S.shape[-1])
        return o, S
    return _chunked


def wkv6_chunked(r, k, v, w, u, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
                 compute_dtype=None, chunk_size: int = 16):
    """Same function as ``wkv6`` through the chunked formulation. Returns ``(o, final_state or None)``."""
    return _run(_make_chunked(chunk_size), r, k, v, w, u, scale, initial_state, output_final_state, cu_seqlens,
                compute_dtype)


def wkv6_recurrent_step(r, k, v, w, u, state, scale=None):
    """Decode a few tokens from a carried state: the same recurrence, r/k/w ``[B, T, H, K]``,
    state ``[B, H, K, V]``. Returns ``(o, new_state)``."""
    return wkv6(r, k, v, w, u, scale=scale, initial_state=state, output_final_state=True)
