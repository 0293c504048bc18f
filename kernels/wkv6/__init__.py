"""RWKV-6 wkv in hand-written Triton: two chunked algorithms (forward + backward), recurrent decode path, custom ops.

    wkv6(r, k, v, w, u, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None)
        -> (o [B, T, H, V] in r's dtype, final_state [N, H, K, V] fp32 or None)

r, k, w ``[B, T, H, K]``, v ``[B, T, H, V]`` (one dtype: fp32/fp16/bf16), u ``[H, K]``, w = log-decay (positive
entries act as 0 with zero gradient; NaN propagates to the outputs), ``scale`` multiplies r·k (default K**-0.5),
``initial_state`` ``[N, H, K, V]`` (computed in fp32), ``cu_seqlens`` int32/int64 ``[N+1]`` with B = 1: offsets
0 = cu[0] <= cu[1] <= ... <= cu[N] = T, checked with one small device-to-host copy (a sync; skipped while a
CUDA graph is captured or torch.compile traces). Differentiable in r, k, v, w, u and initial_state (and through
the final state). Deterministic (no atomics); without cu_seqlens CUDA-graph capturable once autotuned.

* ``wkv6`` (default, also ``wkv6_chunk``): the tensor-core chunk algorithm (``chunk.py``: 16-row blocks, the pairs
  inside a block by level as masked dots of decayed operands, states carried every 16 rows; at 1024 ≤ T ≤ 4096 the
  forward takes every block's scores from a 1-warp scores kernel whose level decays are span-sum dots, and its walk
  goes 32 rows a step; see its docstring), custom ops ``groundthink::wkv6_fwd`` / ``_bwd``;
* ``wkv6_chunk_lowmem``: the same kernels with nothing saved between forward and backward, the fused backward (one
  program per chunk, no fp32 partials) run in batch slices (≤ 128 MiB of fp32 state buffers each): at B8 T4096 H32
  (H100 run 17) 0.76 vs 2.68 GiB extra memory for 9.07 vs 6.23 ms fwd+bwd; custom ops
  ``groundthink::wkv6_lowmem_fwd`` / ``_bwd``;
* ``wkv6_fused``: the sequential chunked algorithm (``fused.py``; one program walks a whole sequence), custom ops
  ``groundthink::wkv6_fused_fwd`` / ``_bwd``;
* ``wkv6_recurrent``: token by token, forward only (decode; ``recurrent.py``).
Shared @triton.jit helpers, launch helpers and the custom-op factory: ``common.py``; the chunk-state pass of the
chunk algorithm: ``states.py``. (The earlier chunk-parallel algorithm with exact per-key loops, ``parallel.py``,
was retired in run 4: the 16-row chunk algorithm has its structure and was as fast or faster at every shape timed.)

Math (per sequence and head; state S ∈ R^{K×V}; log-decay w_t ≤ 0 per key channel; bonus u ∈ R^K;
q_t = scale · r_t):

    o_t = q_t · (S_{t-1} + diag(u) k_tᵀ v_t)
    S_t = diag(exp(w_t)) S_{t-1} + k_tᵀ v_t                 (S_{-1} = initial_state, final state = S_{T-1})

Layouts (fla style): r, k, w ``[B, T, H, K]``; v ``[B, T, H, V]``; u ``[H, K]``; initial/final state
``[N, H, K, V]`` fp32 (N = B, or the number of packed sequences with ``cu_seqlens`` and B = 1). All inputs are
made contiguous; a token is row ``bos + t`` of the flattened ``[B·T, H, *]`` tensors.

Sequential chunked algorithm (``wkv6_fused``; chunk BT = 16 tokens, one program per (V-block, sequence·head) walking
its sequence chunk by chunk with the K×BV state in registers, fp32). Inside a chunk, G_t = Σ_{j≤t} w_j
(chunk-local cumsum, fp32), Gp_t = G_{t-1} = G_t − w_t, G_L = G of the last row:

* inter-chunk:  o_t += (q_t ⊙ exp(Gp_t)) · S                    (exponent ≤ 0)
* intra-chunk:  A_ts = Σ_k q_tk k_sk E_tsk (s < t), E_ts = exp(Gp_t − G_s) = Π_{s<i<t} exp(w_i);
  A_tt = Σ_k q_tk u_k k_tk;  o_t += Σ_s A_ts v_s (a dot).
  The chunk is a single 16-row "diagonal sub-block" computed *exactly*, no factorization: a loop over the keys j
  (downwards) keeps the decay column P = E[:, j] ([BT, BK], fp32) and updates it by products of the per-step
  decays exp(w) ≤ 1 (no exponent anywhere can be positive), A[:, j] = Σ_k q ⊙ k_j ⊙ P. Any decay works
  (w = −40 per step and beyond: the products underflow to the correct 0).
* state:        S ← diag(exp(G_L)) S + Σ_s (k_s ⊙ exp(G_L − G_s))ᵀ v_s   (exponents ≤ 0)
* with autograd, the forward also stores the state at every CKPT-th chunk start (fp32 checkpoints for the
  backward; K·V·4 bytes per 64 tokens and head).

Backward (one launch, two with several V-blocks; a checkpoint pass first if the forward did not save them; no
atomics, deterministic): a reverse walk carrying D_t = ∂L/∂S_t (D_{T-1} = dS_final,
D_{t-1} = diag(exp(w_t)) D_t + q_tᵀ do_t, dh0 = D_{-1}); at the end of each group of CKPT chunks it recomputes the
group's chunk-start states S0 from the checkpoint into a small per-program scratch (L2-resident):
   dq_t = S_{t-1} do_t + u k_t (v_t·do_t), dk_t = D_t v_t + u q_t (v_t·do_t), dv_t = k_t D_t + (Σ_k q_t u k_t) do_t,
   du = Σ_t q_t k_t (v_t·do_t) (per-program fp32 rows, summed once), each split into the S0/D parts (dots) and
   the exact intra-chunk parts (``_intra_bwd``: a loop over keys j upwards with exp columns
   E[:, j] = exp(Σ_{j<i<t} w_i), t > j, exponent ≤ 0, summed directly rather than as Gp_t − G_j).
   With several V-blocks dq, dk, dw are per-V-block fp32 partials summed by a second kernel.

dw without cancellation. The usual formula dw_j = Σ_{t>j} q_t⊙dq^s_t − Σ_{t≥j} k_t⊙dk^s_t (+ S_final⊙dS_final)
subtracts O(1) terms of nearby (undecayed) pairs to get a result that is tiny where the decay is strong, which
amplifies rounding (fp32 rel err ~1e-5 on CPU, far worse with tf32 dots). Instead each pair (key s, query t)
contributes to dw_j exactly when s < j < t (its decay exp(G_{t-1} − G_s) contains w_j), so for j in chunk c:

    dw_j = Σ_{t>j, s<j, both in c} q_t k_s E_ts (do_t·v_s)                    (exact, running sum over keys s < j)
         + Σ_{t>j in c} q_t ⊙ exp(Gp_t) ⊙ (S0_c do_t)                          (earlier keys, queries here)
         + Σ_{s<j in c} k_s ⊙ exp(G_L − G_s) ⊙ (D_c v_s)                       (keys here, later queries)
         + exp(G_L) ⊙ Σ_v S0_c ⊙ D_c                                            (earlier keys, later queries)

with D_c = ∂L/∂S at the chunk's last row (dS_final included): no structured cancellation. Hence w of the last
step only acts through the final state. This needs S0_c in the reverse walk, hence the checkpoints.

Numerics: state, decay sums and every accumulation in fp32. The decay sums of the default paths (the scored walk,
the chunk-parallel output, the state passes, the split backward's cross kernel; the scores and own kernels' level
sums) are dots of 0/1 patterns with the raw w tile (``common._decay_sums``: exact products, fp32 accumulation; a
NaN w is marked so that exactly the sums over it come out NaN); the other paths take cumsums. The dots
(``kernels._dot.mma``) run on fp32 operands with ``input_precision`` = "ieee" for fp32 inputs (≤ 1e-5 vs fp64) and
"tf32" for bf16/fp16 inputs. In the
backward each operand that is not a raw input value is rounded to nearest tf32 first (the tensor cores would
truncate it: a biased error that reached dw 2.15e-3 at bf16 K32 V96 strong decay; rounded 1.83e-3, against a bf16
rounding floor of 1.82e-3; H200 run 27); the forward's are read truncated ("tf32_trunc": every gradient the same to
four digits, o 1.79e-3 instead of 1.70e-3, the forward 8 % faster; every GPU test passes so, H200 run 28).
``common.FWD_PRECISION`` / ``BWD_PRECISION`` / ``CROSS_PRECISION`` (the split backward's cross kernel) override the
choice for half inputs ("tf32", "tf32_trunc", "ieee" or "tf32x3"). One dot of the
chunk backward, B = do vᵀ, multiplies two input values: with half inputs it runs on them in their own dtype (exact:
a product of two bf16/fp16 values fits the fp32 accumulator; fewer live fp32 copies, ``common._half_dot``).

Host path: eager calls run the impls through a plain ``torch.autograd.Function`` (the custom ops only while
torch.compile traces; a call that needs no gradient runs the forward impl alone); shapes, dtypes and devices are
validated once per argument signature (the values of ``cu_seqlens`` on every call).

Positive log-decay: w is clamped to ≤ 0 (decay ≤ 1) inside the kernels and dw is 0 where w > 0 (the gradient of
``min(w, 0)``), i.e. the op computes exactly ``reference(min(w, 0))``. The clamp keeps NaN (``tl.where``, not
``tl.minimum``): a NaN in w makes the outputs that depend on it NaN (no host check, no sync); the decay-sum dots
floor w at −256 (exp of any sum holding such a term is 0 in fp32 either way).
"""
from kernels.wkv6.chunk import wkv6_chunk, wkv6_chunk_lowmem
from kernels.wkv6.fused import wkv6_fused
from kernels.wkv6.recurrent import wkv6_recurrent

wkv6 = wkv6_chunk

__all__ = ["wkv6", "wkv6_chunk", "wkv6_chunk_lowmem", "wkv6_fused", "wkv6_recurrent"]
