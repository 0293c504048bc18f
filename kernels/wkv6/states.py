"""The chunk-state pass shared by the chunk-parallel algorithms: per-chunk state contributions in parallel, then a
short sequential scan over the chunks of each (sequence, head, V-block) (see the package docstring)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._common import autotune_configs, grid_bucket as _grid_bucket, launch, new_empty
from kernels._dot import mma
from kernels.wkv6.common import (_blocks, _cdiv, _chunk_loc, _cu, _decay_sums, _decay_total, _dims, _kv_ranges,
                                 _nh_bucket, _prec, _row_offsets, _seq_bounds, _state_or_zeros, _sum_operand)

BT_PAR = 64       # chunk length of the state pass


# Layouts of the kernels below (a token is row bos + t of the flattened [B·T, H, *] tensors; chunks of BT rows; N
# sequences: B, or len(cu) − 1 with VARLEN, where B = 1):
#   q_ptr, k_ptr, w_ptr [B·T, H, K] (q = r; w the raw log-decay, clamped inside), v_ptr / do_ptr [B·T, H, V] (the
#   inputs' dtype; do the output's gradient); hs_ptr / hd_ptr [slots, H, K, V] fp32 per-chunk states (ΔS_c then
#   S_c, ΔD_c then D_c; ``_chunk_scan_kernel``: hs_ptr [directions, SLOTS, H, K, V], both directions in one
#   buffer), gl_ptr [slots, H, K] fp32 the chunks' decay sums G_L; a chunk's slot: n·NT + i (fixed length) or
#   cu[n]//BT + n + i (VARLEN, ``_par_slots``); cu_ptr [N + 1] int32 sequence offsets and cmap_ptr [slots] int32
#   the sequence of each slot (both None unless VARLEN); h0_ptr / ht_ptr [N, H, K, V] fp32 the initial / final
#   state, dht_ptr / dh0_ptr [N, H, K, V] fp32 their gradients; scale (float) multiplies q·k; T the padded length
#   (fixed-length batches), NT = cdiv(T, BT), SLOTS the slots per direction; NH_BUCKET = min(pow2(N·H), 1024) and
#   GRID_BUCKET = min(pow2(programs), 2^16), autotune keys only (unused by the kernel bodies).
# Constexprs: H heads; K, V head sizes; BT the chunk rows (64, ``BT_PAR``, or the ``state_rows`` knob's 32); BK =
#   max(16, pow2(K)) ≥ K and BV (≤ 64) the tile widths (``_blocks``; the scan may take a narrower BV), BKS / BVS
#   the K- and V-block widths of ``_walk_states`` (its kernels autotune them, 32 or 64); PREC the dots' input precision
#   ("ieee" for fp32 inputs, else "tf32"; ``common._prec``); PIPE: the scan keeps a second chunk's loads in flight.
# MODE (constexpr): 1 the forward's S direction ("fwd"), 2 the backward's D direction alone ("bwd_d": S_c saved by
# the forward), 3 both ("bwd"). Optional tensors are None with their constexpr flag off (MODE's bits, USE_H0,
# USE_DHT, USE_S0, VARLEN). REV: ``_walk_states``'s direction (False the forward's S, True the backward's D).


@triton.autotune(configs=autotune_configs([triton.Config({}, num_warps=4, num_stages=1),
                                           triton.Config({}, num_warps=8, num_stages=1),
                                           triton.Config({}, num_warps=4, num_stages=3)]),
                 key=["K", "V", "BT", "BK", "BV", "PREC", "MODE", "GRID_BUCKET"])
@triton.jit(do_not_specialize=['T', 'NT', 'GRID_BUCKET'])
def _chunk_state_kernel(q_ptr, k_ptr, v_ptr, w_ptr, do_ptr, hs_ptr, hd_ptr, gl_ptr, cu_ptr, cmap_ptr, scale, T, NT,
                        GRID_BUCKET, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                        BK: tl.constexpr, BV: tl.constexpr, VARLEN: tl.constexpr, MODE: tl.constexpr,
                        PREC: tl.constexpr):
    """Grid (chunk slots, V-blocks, H), per chunk (parallel): the chunk decay G_L -> gl_ptr and (MODE & 1)
    ΔS = (k ⊙ exp(G_L − G))ᵀ v -> hs_ptr, (MODE & 2, backward) ΔD = (q ⊙ exp(Gp))ᵀ do -> hd_ptr (the chunk's own
    contribution to dL/dS at its start). Every exponent ≤ 0, every sum of w a ``common._decay_sums`` dot (w_ptr as
    ``_w_for_dots`` gives it; they were scans and a column sum until session 26). Reads k, v when MODE & 1 and q, do
    when MODE & 2; hs_ptr is None without MODE & 1, hd_ptr and do_ptr None without MODE & 2 (layouts above).
    GRID_BUCKET: autotune key only (``kernels._common.grid_bucket`` of the grid)."""
    i_s, i_v, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_c, bos, L = _chunk_loc(cu_ptr, cmap_ptr, i_s, T, NT, BT, VARLEN)
    o_t = tl.arange(0, BT)
    o_k, o_v, m_k, m_v, o_kv, m_kv = _kv_ranges(i_v, K, V, BK, BV)
    m_t, p_k, p_v, m_tk, m_tv = _row_offsets(bos, i_c * BT, L, i_h, o_t, o_k, o_v, m_k, m_v, H, K, V)
    b_ws = _sum_operand(tl.load(w_ptr + p_k, mask=m_tk, other=0.))
    b_gl = _decay_total(b_ws)
    r, x = o_t[:, None], o_t[None, :]
    p_s = (i_s.to(tl.int64) * H + i_h) * K * V + o_kv
    tl.store(gl_ptr + (i_s.to(tl.int64) * H + i_h) * K + o_k, b_gl, mask=m_k & (o_k * 0 + i_v == 0))
    if MODE % 2 == 1:
        b_k = tl.load(k_ptr + p_k, mask=m_tk, other=0.).to(tl.float32)
        b_v = tl.load(v_ptr + p_v, mask=m_tv, other=0.).to(tl.float32)
        # G_L − G_t as a suffix sum (not a difference of two long prefix sums: at w ≈ −40 those lose the exponent)
        b_ds = mma(tl.trans(b_k * tl.exp(_decay_sums(x > r, b_ws))), b_v, PREC, B_EXACT=True)
        tl.store(hs_ptr + p_s, b_ds, mask=m_kv)
    if MODE >= 2:
        b_q = tl.load(q_ptr + p_k, mask=m_tk, other=0.).to(tl.float32) * scale
        b_do = tl.load(do_ptr + p_v, mask=m_tv, other=0.).to(tl.float32)
        b_dd = mma(tl.trans(b_q * tl.exp(_decay_sums(x < r, b_ws))), b_do, PREC, B_EXACT=True)
        tl.store(hd_ptr + p_s, b_dd, mask=m_kv)


@triton.jit(do_not_specialize=['T', 'NT', 'SLOTS'])
def _chunk_scan_kernel(hs_ptr, gl_ptr, h0_ptr, dht_ptr, ht_ptr, dh0_ptr, cu_ptr, T, NT, SLOTS, H: tl.constexpr,
                       K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                       MODE: tl.constexpr, USE_H0: tl.constexpr, USE_DHT: tl.constexpr, VARLEN: tl.constexpr,
                       PIPE: tl.constexpr):
    """Grid (sequence·heads, V-blocks, directions). Sequential over the chunks of one (sequence, head, V-block),
    in place on the per-chunk buffer hs_ptr [directions, SLOTS, H, K, V] fp32 (SLOTS chunk slots per direction;
    ``_chunk_state_kernel``'s hs then hd), with gl_ptr [SLOTS, H, K] fp32 the chunks' decay sums (layouts above):
    direction 0 (MODE & 1): X_c = ΔS_c -> S_c (state at chunk start), carry S ← diag(exp(G_L)) S + ΔS_c, start
    h0_ptr (USE_H0; else zeros), end ht_ptr (the final state; MODE 1 only, else None). Direction 1 (MODE & 2):
    X_c = ΔD_c -> D_c (dL/dS at chunk end), walked backwards, D ← diag(exp(G_L)) D + ΔD_c, start dht_ptr
    (USE_DHT; else zeros), end dh0_ptr (MODE & 2, else None). Same recursion, mirrored. Direction =
    program_id(2) + (MODE == 2); buffer = hs + program_id(2)·SLOTS. PIPE: the loop unrolled by two over a ring of
    two (X_c, G_L) register tiles, each reloaded with the chunk two ahead right after its use (one load in flight
    while a chunk waits for its own; else load, then use). Each tile is reloaded into itself, so no loop-carried
    register copy waits for a load: the one-ahead rotation before session 27 (x ← x_next at the loop's end) made
    ptxas copy registers at the back edge, and that copy waited for the next load each step (H200 run 31 call 4,
    Nsight Compute at B1 T16384 H32: 55 % of the scan's stall samples on one IMAD.MOV, long scoreboard; 0.77 µs
    per chunk at one or two ahead). Call 5, GPU µs of both scans: 417 (rotation) -> 278 at B1 T16384 H32, 60 -> 44
    at B4 T2048 H16, 290 -> 304 at B8 T4096 H32; rings of one or four tiles were far slower (2,352 / 3,211 µs at
    B1 T16384; offline sm_90, Triton 3.9: 255 registers and a spill stack) and were dropped (four with narrow scan
    blocks: 262). Chunks i ≥ nt load x = 0, G_L = 0 and store nothing: the state passes through unchanged."""
    i_nh, i_v, i_dir = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    if MODE == 2:
        rev = i_dir + 1
    else:
        rev = i_dir
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos = _seq_bounds(cu_ptr, i_n, T, VARLEN)
    L = eos - bos
    nt = tl.cdiv(L, BT)
    if VARLEN:
        base = bos // BT + i_n
    else:
        base = i_n.to(tl.int64) * NT
    o_k, o_v, m_k, m_v, o_kv, m_kv = _kv_ranges(i_v, K, V, BK, BV)
    if rev == 0:
        b_h = _state_or_zeros(h0_ptr, i_nh, o_kv, m_kv, K, V, BK, BV, USE_H0)
    else:
        b_h = _state_or_zeros(dht_ptr, i_nh, o_kv, m_kv, K, V, BK, BV, USE_DHT)
    buf = hs_ptr + i_dir.to(tl.int64) * SLOTS * H * K * V
    if PIPE:        # a ring of two chunks' loads in flight, the loop unrolled by two (see the docstring)
        b_x0, b_g0 = _scan_step_load(buf, gl_ptr, base, 0, nt, rev, i_h, o_k, m_k, o_kv, m_kv, H, K, V)
        b_x1, b_g1 = _scan_step_load(buf, gl_ptr, base, 1, nt, rev, i_h, o_k, m_k, o_kv, m_kv, H, K, V)
        for i in range(0, nt, 2):
            b_h = _scan_fold(buf, b_h, b_x0, b_g0, base, i, nt, rev, i_h, o_kv, m_kv, H, K, V)
            b_x0, b_g0 = _scan_step_load(buf, gl_ptr, base, i + 2, nt, rev, i_h, o_k, m_k, o_kv, m_kv, H, K, V)
            b_h = _scan_fold(buf, b_h, b_x1, b_g1, base, i + 1, nt, rev, i_h, o_kv, m_kv, H, K, V)
            b_x1, b_g1 = _scan_step_load(buf, gl_ptr, base, i + 3, nt, rev, i_h, o_k, m_k, o_kv, m_kv, H, K, V)
    else:
        for i in range(0, nt):
            b_x, b_g = _scan_step_load(buf, gl_ptr, base, i, nt, rev, i_h, o_k, m_k, o_kv, m_kv, H, K, V)
            b_h = _scan_fold(buf, b_h, b_x, b_g, base, i, nt, rev, i_h, o_kv, m_kv, H, K, V)
    p_nh = i_nh.to(tl.int64) * K * V + o_kv
    if rev == 0:
        if MODE == 1:
            tl.store(ht_ptr + p_nh, b_h, mask=m_kv)
    else:
        if MODE >= 2:
            tl.store(dh0_ptr + p_nh, b_h, mask=m_kv)


@triton.jit
def _scan_fold(buf, b_h, b_x, b_g, base, i, nt, rev, i_h, o_kv, m_kv, H: tl.constexpr, K: tl.constexpr,
               V: tl.constexpr):
    """The scan's i-th chunk (i ≥ nt: nothing stored, b_h unchanged by its zero loads): stores b_h [BK, BV] as its
    state (in place of X_c), returns diag(exp(b_g)) b_h + b_x."""
    slot = (base + i + rev * (nt - 1 - 2 * i)).to(tl.int64)      # chunk i (forward) or nt-1-i (reverse)
    tl.store(buf + (slot * H + i_h) * K * V + o_kv, b_h, mask=m_kv & (o_kv * 0 + i < nt))
    return b_h * tl.exp(b_g)[:, None] + b_x


@triton.jit
def _scan_step_load(buf, gl_ptr, base, i, nt, rev, i_h, o_k, m_k, o_kv, m_kv, H: tl.constexpr, K: tl.constexpr,
                    V: tl.constexpr):
    """X_c [BK, BV] and G_L [BK] of the scan's i-th chunk (i ≥ nt: zeros)."""
    slot = (base + i + rev * (nt - 1 - 2 * i)).to(tl.int64)
    b_x = tl.load(buf + (slot * H + i_h) * K * V + o_kv, mask=m_kv & (o_kv * 0 + i < nt), other=0.)
    b_g = tl.load(gl_ptr + (slot * H + i_h) * K + o_k, mask=m_k & (o_k * 0 + i < nt), other=0.)
    return b_x, b_g


@triton.jit
def _walk_states(x_ptr, y_ptr, w_ptr, s0_ptr, hs_ptr, out_ptr, cu_ptr, scale, T, NT, H: tl.constexpr,
                 K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BKS: tl.constexpr, BVS: tl.constexpr,
                 USE_S0: tl.constexpr, VARLEN: tl.constexpr, PREC: tl.constexpr, REV: tl.constexpr):
    """Grid (V-blocks, K-blocks, N·H): a state pass in one kernel (no per-chunk Δ round trip): walks the BT-row
    chunks of one (sequence, head, K-block, V-block) with the state in registers, storing it at each chunk ->
    hs_ptr (layouts above; every slot of the sequence written) and the last one -> out_ptr [N, H, K, V] fp32; starts
    from s0_ptr (USE_S0; else None and zeros). Every exponent ≤ 0 (the decay sums ``common._decay_sums`` dots, w_ptr
    as ``_w_for_dots`` gives it); rows of a K-block decay independently.
    REV False, the forward's S (``_fwd_states_kernel``): x_ptr = k, y_ptr = v, scale None, chunks first to last, S
    stored at each chunk start, S ← diag(exp(G_L)) S + (k ⊙ exp(G_L − G))ᵀ v; s0 = h0, out = ht.
    REV True, the backward's D (``_bwd_states_kernel``, the ``bwd_states`` knob's "one"): x_ptr = q (× scale),
    y_ptr = do, chunks last to first, D (dL/dS at the chunk's end) stored, D ← diag(exp(G_L)) D + (q ⊙ exp(Gp))ᵀ do
    — ``_chunk_state_kernel``'s ΔD and ``_chunk_scan_kernel``'s fold, the same operations; s0 = dL/dh_T, out =
    dL/dh0. The body of both kernels below (two names, so the profiler tells the passes apart)."""
    i_v, i_kb, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos = _seq_bounds(cu_ptr, i_n, T, VARLEN)
    L = eos - bos
    if VARLEN:
        slot0 = bos // BT + i_n
    else:
        slot0 = i_n.to(tl.int64) * NT
    o_t = tl.arange(0, BT)
    o_k = i_kb * BKS + tl.arange(0, BKS)
    o_v = i_v * BVS + tl.arange(0, BVS)
    m_k = o_k < K
    m_v = o_v < V
    o_kv = o_k[:, None] * V + o_v[None, :]
    m_kv = m_k[:, None] & m_v[None, :]
    b_h = _state_or_zeros(s0_ptr, i_nh, o_kv, m_kv, K, V, BKS, BVS, USE_S0)
    nt = tl.cdiv(L, BT)
    for j in tl.range(0, nt):
        if REV:
            i_c = nt - 1 - j
        else:
            i_c = j
        tl.store(hs_ptr + ((slot0 + i_c) * H + i_h) * K * V + o_kv, b_h, mask=m_kv)
        rows = i_c * BT + o_t
        tok = (bos + rows) * H + i_h
        m_t = rows < L
        m_tk = m_t[:, None] & m_k[None, :]
        b_x = tl.load(x_ptr + tok[:, None] * K + o_k[None, :], mask=m_tk, other=0.).to(tl.float32)
        b_ws = _sum_operand(tl.load(w_ptr + tok[:, None] * K + o_k[None, :], mask=m_tk, other=0.))
        b_y = tl.load(y_ptr + tok[:, None] * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0.)
        if REV:     # the query rows' decay from the chunk start (exclusive prefix)
            b_xd = b_x * scale * tl.exp(_decay_sums(o_t[None, :] < o_t[:, None], b_ws))
        else:       # the key rows' decay to the chunk end (exclusive suffix)
            b_xd = b_x * tl.exp(_decay_sums(o_t[None, :] > o_t[:, None], b_ws))
        b_h = (b_h * tl.exp(_decay_total(b_ws))[:, None]
               + mma(tl.trans(b_xd), b_y.to(tl.float32), PREC, B_EXACT=True))
    tl.store(out_ptr + i_nh.to(tl.int64) * K * V + o_kv, b_h, mask=m_kv)


# H100 run 12 (wkv6i) picked 64 × 64 at 256 and 128 sequence·heads, 64 × 32 at 64 (a 2-warp 32 × 32 config, since
# removed, never won); 32 × 32 stays for fewer sequence·heads (more programs)
@triton.autotune(configs=autotune_configs([triton.Config({"BKS": 32, "BVS": 32}, num_warps=4, num_stages=2),
                                           triton.Config({"BKS": 64, "BVS": 32}, num_warps=4, num_stages=2),
                                           triton.Config({"BKS": 64, "BVS": 64}, num_warps=4, num_stages=2)]),
                 key=["K", "V", "BT", "PREC", "NH_BUCKET"])
@triton.jit(do_not_specialize=['T', 'NT', 'NH_BUCKET'])
def _fwd_states_kernel(k_ptr, v_ptr, w_ptr, h0_ptr, hs_ptr, ht_ptr, cu_ptr, T, NT, NH_BUCKET, H: tl.constexpr,
                       K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BKS: tl.constexpr, BVS: tl.constexpr,
                       USE_H0: tl.constexpr, VARLEN: tl.constexpr, PREC: tl.constexpr):
    """The forward's S pass (``_walk_states`` REV False): S at each chunk start -> hs_ptr, the final state -> ht_ptr,
    from h0_ptr (USE_H0). NH_BUCKET: autotune key only."""
    _walk_states(k_ptr, v_ptr, w_ptr, h0_ptr, hs_ptr, ht_ptr, cu_ptr, None, T, NT, H, K, V, BT, BKS, BVS, USE_H0,
                 VARLEN, PREC, False)


# one config: H200 run 33 picked 64 × 32 of the forward's three at B8 T4096 H32, B4 T2048 H16, B64 T256 H2 and
# B1 T16384 H32 (the first call compiles only it)
@triton.autotune(configs=autotune_configs([triton.Config({"BKS": 64, "BVS": 32}, num_warps=4, num_stages=2)]),
                 key=["K", "V", "BT", "PREC", "NH_BUCKET"])
@triton.jit(do_not_specialize=['T', 'NT', 'NH_BUCKET'])
def _bwd_states_kernel(q_ptr, do_ptr, w_ptr, dht_ptr, hd_ptr, dh0_ptr, cu_ptr, scale, T, NT, NH_BUCKET,
                       H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BKS: tl.constexpr,
                       BVS: tl.constexpr, USE_DHT: tl.constexpr, VARLEN: tl.constexpr, PREC: tl.constexpr):
    """The backward's D pass (``_walk_states`` REV True; the ``bwd_states`` knob's "one"): D at each chunk end ->
    hd_ptr, dL/dh0 -> dh0_ptr, from dht_ptr (USE_DHT). NH_BUCKET: autotune key only."""
    _walk_states(q_ptr, do_ptr, w_ptr, dht_ptr, hd_ptr, dh0_ptr, cu_ptr, scale, T, NT, H, K, V, BT, BKS, BVS,
                 USE_DHT, VARLEN, PREC, True)


def _walk_pass(x, y, w, s0, cu_seqlens, bt, rev, scale=None, out=None):
    """A one-kernel state pass (chunks of ``bt`` rows): rev False the forward's S (``_fwd_states_kernel``: x = k,
    y = v, s0 = h0 or None), rev True the backward's D (``_bwd_states_kernel``: x = q, y = do, s0 = dL/dh_T or None,
    ``scale``). Returns (the states [slots, H, K, V] fp32 (``out`` when given), the last one [N, H, K, V] fp32 (ht
    or dL/dh0), slots, NT, cmap, cu (both None unless varlen)). Slots of a varlen batch that hold no chunk stay
    unwritten (no kernel reads them)."""
    B, T, H, K, V, N = _dims(x, y, cu_seqlens)
    dev = x.device
    S, NT, cmap = _par_slots(B, T, N, cu_seqlens, dev, bt)
    cu = _cu(cu_seqlens)
    hs = new_empty((S, H, K, V), torch.float32, dev) if out is None else out
    last = new_empty((N, H, K, V), torch.float32, dev)
    grid = lambda meta: (_cdiv(V, meta["BVS"]), _cdiv(K, meta["BKS"]), N * H)  # noqa: E731
    meta = dict(H=H, K=K, V=V, BT=bt, VARLEN=cu is not None, PREC=_prec(x.dtype, rev))
    if rev:
        launch(_bwd_states_kernel)[grid](x, y, w, s0, hs, last, cu, scale, T, NT, _nh_bucket(N * H),
                                         USE_DHT=s0 is not None, **meta)
    else:
        launch(_fwd_states_kernel)[grid](x, y, w, s0, hs, last, cu, T, NT, _nh_bucket(N * H), USE_H0=s0 is not None,
                                         **meta)
    return hs, last, S, NT, cmap, cu


def _par_slots(B, T, N, cu_seqlens, device, bt=BT_PAR):
    """Number of chunk slots (chunks of ``bt`` rows), NT and the int32 slot -> sequence map (varlen; else None)."""
    NT = _cdiv(T, bt)
    if cu_seqlens is None:
        return B * NT, NT, None
    S = NT + N        # sequence n: slots cu[n]//BT + n + i, i < cdiv(len_n, BT) (disjoint, see _bwd_impl)
    cu = cu_seqlens.to(torch.int64)
    starts = cu[:-1] // bt + torch.arange(N, device=device)
    cmap = torch.searchsorted(starts, torch.arange(S, device=device), right=True) - 1
    return S, NT, cmap.clamp_(min=0).to(torch.int32)


def _par_states(r, k, v, w, do, scale, h0, dht, cu_seqlens, mode, scan_bv=None, bt=BT_PAR, pipe=False, out=None):
    """Per-chunk states (parallel state kernel + sequential scan over chunks of ``bt`` rows, a multiple of 16).

    mode "fwd": S_c (state at each chunk start, [S, H, K, V] fp32) and the final state;
    "bwd": S_c and D_c (dL/dS at each chunk end) and dh0; "bwd_d" (S_c saved by the forward): D_c and dh0 only.
    do / h0 / dht / cu_seqlens: None when absent.
    scan_bv: the scan's V-block width (None: the state kernel's; narrower gives the scan more programs); pipe: the
    scan keeps a second chunk's loads in flight (``_chunk_scan_kernel``'s PIPE); out: mode "fwd"'s S_c buffer
    [S, H, K, V] fp32 when given (e.g. a view of a larger saved buffer).
    Returns (buf [1 or 2, S, H, K, V]: S_c then D_c, ht ("fwd") or None, dh0 (backward) or None, S, NT,
    cmap, cu (both None unless varlen))."""
    B, T, H, K, V, N = _dims(r, v, cu_seqlens)
    BK, BV = _blocks(K, V)
    NV = _cdiv(V, BV)
    dev = r.device
    S, NT, cmap = _par_slots(B, T, N, cu_seqlens, dev, bt)
    cu = _cu(cu_seqlens)
    varlen = cu_seqlens is not None
    prec = _prec(r.dtype, mode != "fwd")
    kmode = {"fwd": 1, "bwd": 3, "bwd_d": 2}[mode]
    buf = new_empty((2 if mode == "bwd" else 1, S, H, K, V), torch.float32, dev) if out is None else out[None]
    gl = new_empty((S, H, K), torch.float32, dev)
    launch(_chunk_state_kernel)[(S, NV, H)](
        r, k, v, w, do, buf[0] if kmode & 1 else None, buf[-1] if kmode & 2 else None, gl, cu, cmap, scale, T, NT,
        _grid_bucket(S * NV * H), H=H, K=K, V=V, BT=bt, BK=BK, BV=BV, VARLEN=varlen, MODE=kmode, PREC=prec)
    ht = new_empty((N, H, K, V), torch.float32, dev) if mode == "fwd" else None
    dh0 = new_empty((N, H, K, V), torch.float32, dev) if mode != "fwd" else None
    h0 = h0 if kmode & 1 else None          # each direction reads its own start (one kernel variant per use)
    SBV = BV if scan_bv is None else min(scan_bv, BV)
    launch(_chunk_scan_kernel)[(N * H, _cdiv(V, SBV), 2 if mode == "bwd" else 1)](
        buf, gl, h0, dht, ht, dh0, cu, T, NT, S, H=H, K=K, V=V, BT=bt, BK=BK, BV=SBV, MODE=kmode,
        USE_H0=h0 is not None, USE_DHT=dht is not None, VARLEN=varlen, PIPE=pipe, num_warps=4)
    return buf, ht, dh0, S, NT, cmap, cu


def _par_state_shape(B, T, H, K, V, N, varlen, bt=BT_PAR):
    NT = _cdiv(T, bt)
    return ((NT + N) if varlen else B * NT, H, K, V)

