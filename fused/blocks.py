"""The mixers and the feed-forward of the hybrid: RWKV-6 time mix, Mamba-2 mixer, MLP.

Every mixer has ``forward(x, ops, state=None) -> (out, new_state)``:
* ``state=None`` — the parallel training path (zero initial states, no final state computed, new_state None);
* ``state`` given — the same computation continued from a carried state (prefill or one generation step,
  T = 1), returning the state after the last token. The two agree (tests/test_model.py).

The kernels come from ``ops`` (an ``OpSet`` from ``groundthink.registry.resolve``); nothing here imports kernels/.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from fused.configs import ModelConfig
from fused.projections import linear_pieces, split, stack, stacked_proj



def rms_norm(x, weight, eps):
    """RMSNorm x / √(mean(x²) + eps) ⊙ weight in float32 (float64 for float64 inputs); returns x's dtype.
    torch's ``F.rms_norm``: on CUDA one fused kernel each way (``aten._fused_rms_norm``; the element-wise
    formula was ~8 kernels forward and ~10 backward over [B, T, D] fp32: an estimated 0.2–0.3 ms of the large
    step), elsewhere its composite, the element-wise formula to the bit."""
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    return F.rms_norm(x.to(cdt), (x.shape[-1],), weight.to(cdt), eps).to(x.dtype)


def wgrad_of(ops):
    """The registry's ``wgrad`` of ``ops`` (None, i.e. torch.mm, for an op set without it)."""
    return getattr(ops, "wgrad", None)


class NormWeight(nn.Module):
    """Affine parameters of a norm whose computation happens inside ``ops.gate_norm_residual``."""

    def __init__(self, d, norm="rms"):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d)) if norm == "layer" else None


# ----------------------------------------------------------------------------------------------- RWKV-6
class RWKV6TimeMix(nn.Module):
    """RWKV-6 "Finch" time mix (RWKV-LM ``RWKV_Tmix_x060``).

    ddlerp token shift: xx = shift(x) − x; five data-dependent lerps x + xx ⊙ (maa_* + lora_*(x + xx ⊙ maa_x))
    (ops.shift_lerp for x + xx ⊙ maa_x, ops.lowrank for the five lora_* = tanh(· W1) W2, ops.ddlerp for the lerps);
    r, k, v and the gate pre-activation: ONE batched matmul of the stacked lerps [x_r, x_k, x_v, x_g] (written as
    one stack by ops.ddlerp(..., order=…): no copy) with
    ``rkvg`` [4, D_in, D_out] (W_rᵀ, W_kᵀ, W_vᵀ, W_gᵀ: transposed nn.Linear weights, so that the weight gradient
    comes out contiguous; one launch forward; a backward of eight per-slice GEMMs writing into one [4, …] gradient
    stack each instead of stacking dr, dk, dv, dgp first: ``fused.projections.stacked_proj``), g = silu(W_g x_g);
    decay w = time_decay + tanh(x_w W1) W2, log-decay lw = −exp(w) (ops.lowrank with base = time_decay);
    o = wkv6(r, k, v, lw, u, scale=1); out = W_o(GroupNorm(o) ⊙ g) (per-head GroupNorm and gate: ops.norm_gate).
    State: (last input row [B, D], wkv state [B, H, K, V] fp32).
    """

    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        D, H, K = cfg.d_model, cfg.n_head, cfg.head_size
        self.D, self.H, self.K = D, H, K
        L = cfg.n_layer
        r01 = layer_id / max(L - 1, 1)          # 0 → 1 over depth
        r1a0 = 1.0 - layer_id / L               # 1 → ~0
        ddd = torch.arange(D, dtype=torch.float32) / D
        self.time_maa_x = nn.Parameter(1.0 - ddd.pow(r1a0))
        self.time_maa_w = nn.Parameter(1.0 - ddd.pow(r1a0))
        self.time_maa_k = nn.Parameter(1.0 - ddd.pow(r1a0))
        self.time_maa_v = nn.Parameter(1.0 - (ddd.pow(r1a0) + 0.3 * r01))
        self.time_maa_r = nn.Parameter(1.0 - ddd.pow(0.5 * r1a0))
        self.time_maa_g = nn.Parameter(1.0 - ddd.pow(0.5 * r1a0))
        R = cfg.mix_lora
        self.time_maa_w1 = nn.Parameter(torch.empty(D, 5 * R).uniform_(-1e-4, 1e-4))
        self.time_maa_w2 = nn.Parameter(torch.empty(5, R, D).uniform_(-1e-4, 1e-4))
        n = torch.arange(D, dtype=torch.float32)
        decay_speed = -6 + 5 * (n / max(D - 1, 1)).pow(0.7 + 1.3 * r01)
        self.time_decay = nn.Parameter(decay_speed)                       # lw = −exp(w) ∈ [−0.37, −0.0025]
        self.time_decay_w1 = nn.Parameter(torch.zeros(D, cfg.decay_lora))
        self.time_decay_w2 = nn.Parameter(torch.empty(cfg.decay_lora, D).uniform_(-1e-2, 1e-2))
        zigzag = ((n + 1) % 3 - 1) * 0.1
        self.time_faaaa = nn.Parameter((r01 * (1 - n / max(D - 1, 1)) + zigzag).view(H, K))   # u
        self.rkvg = nn.Parameter(torch.empty(4, D, D))                    # W_rᵀ, W_kᵀ, W_vᵀ, W_gᵀ (HybridLM inits)
        self.output = nn.Linear(D, D, bias=False)
        self.ln_x = nn.GroupNorm(H, D, eps=64e-5)

    def forward(self, x, ops, state=None):
        B, T, D = x.shape
        H, K = self.H, self.K
        x_prev = None if state is None else state[0].to(x.dtype)       # token-shift state (last row)
        # x + (shift(x) − x) ⊙ maa_x; x comes back as a tee for ddlerp: shift_lerp's backward kernel adds ddlerp's
        # x-gradient into its own (no autograd add of the two)
        xxx, x = ops.shift_lerp(x, self.time_maa_x, x_prev, tee=True)
        # the five low-rank mixes tanh(xxx W1) W2 per group [5, B, T, D]: one fused op (ops.lowrank)
        m = ops.lowrank(xxx, self.time_maa_w1, self.time_maa_w2)
        # a view, no copy, in the training step (whose flat parameters lay the five end to end)
        maa = stack([self.time_maa_w, self.time_maa_k, self.time_maa_v, self.time_maa_r, self.time_maa_g])
        # the five lerps, one fused op: x_w alone, x_r, x_k, x_v, x_g written as one stack [4, B, T, D] (mixes
        # w, k, v, r, g = 0 … 4 in m and maa; order r, k, v, g as in rkvg): the batched projection reads it as is
        xw, xrkvg = ops.ddlerp(x, m, maa, x_prev, order=(0, 3, 1, 2, 4))
        # gp: the gate pre-activation; the backward writes the four input gradients into one [4, B·T, D] (which
        # ddlerp's backward reads as is) without stacking dr, dk, dv, dgp first (fused.projections)
        r, k, v, gp = (t.view(B, T, D) for t in stacked_proj(xrkvg.view(4, B * T, D), self.rkvg, wgrad_of(ops)))
        # the log-decay −exp(time_decay + tanh(xw W1) W2) ≤ 0 (fp32 math) in r's dtype: one fused op
        lw = ops.lowrank(xw, self.time_decay_w1, self.time_decay_w2, base=self.time_decay, dtype=r.dtype)
        r, k, v, lw = (t.view(B, T, H, K) for t in (r, k, v, lw))
        u = self.time_faaaa                                                 # kernels compute in fp32
        if state is None:
            o, _ = ops.wkv6(r, k, v, lw, u, scale=1.0)
            new_state = None
        else:
            o, S = ops.wkv6(r, k, v, lw, u, scale=1.0, initial_state=state[1], output_final_state=True)
            new_state = (x[:, -1].detach().clone(), S)
        # per-head GroupNorm(o) ⊙ silu(gp): one fused op (ln_x holds its affine parameters and eps)
        o = ops.norm_gate(o.reshape(B, T, D), gp, self.ln_x.weight, self.ln_x.bias, group_size=K,
                          eps=self.ln_x.eps, norm="layer", norm_before_gate=True)
        return self.output(o), new_state

    def init_state(self, batch_size, device, dtype):
        sdt = torch.float64 if dtype == torch.float64 else torch.float32
        return (torch.zeros(batch_size, self.D, device=device, dtype=dtype),
                torch.zeros(batch_size, self.H, self.K, self.K, device=device, dtype=sdt))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Checkpoints from before ``rkvg``: their four Linear weights [out, in] are stacked (transposed) into it."""
        old = [f"{prefix}{n}.weight" for n in ("receptance", "key", "value", "gate")]
        if f"{prefix}rkvg" not in state_dict and all(k in state_dict for k in old):
            state_dict[f"{prefix}rkvg"] = torch.stack([state_dict.pop(k).t() for k in old])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


# ----------------------------------------------------------------------------------------------- Mamba-2
MAMBA_OPS = ("mamba2", "causal_conv1d")    # the registry ops that only the Mamba-2 mixer calls (norm_gate is shared)


class Mamba2Mixer(nn.Module):
    """Mamba-2 mixer, mamba-ssm ``Mamba2`` parameterisation (ngroups groups, no conv/in/out bias flags beyond
    mamba-ssm's defaults: conv bias on, projection biases off).

    in_proj → [z, x, B, C, dt]; depthwise causal conv1d (width d_conv) + SiLU over (x, B, C);
    y = ops.mamba2(x, dt, A = −exp(A_log), B, C, chunk_size, D, dt_bias, dt_softplus=True);
    gated RMSNorm: RMSNorm(y ⊙ silu(z)) (norm_before_gate=False, ops.norm_gate); out_proj.
    State: (conv state [B, conv_dim, d_conv − 1], ssm state [B, nheads, headdim, d_state] fp32).
    """

    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        D = cfg.d_model
        self.d_inner, self.nheads, self.headdim = cfg.d_inner, cfg.mamba_nheads, cfg.headdim
        self.d_state, self.ngroups, self.d_conv = cfg.d_state, cfg.ngroups, cfg.d_conv
        self.chunk_size = cfg.chunk_size
        self.eps = cfg.norm_eps
        self.conv_dim = self.d_inner + 2 * self.ngroups * self.d_state
        self.in_proj = nn.Linear(D, 2 * self.d_inner + 2 * self.ngroups * self.d_state + self.nheads, bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, cfg.d_conv, groups=self.conv_dim, bias=True)
        dt = torch.exp(torch.rand(self.nheads) * (math.log(cfg.dt_max) - math.log(cfg.dt_min))
                       + math.log(cfg.dt_min)).clamp(min=cfg.dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))   # inverse softplus
        self.A_log = nn.Parameter(torch.log(torch.empty(self.nheads).uniform_(1, 16)))
        self.D = nn.Parameter(torch.ones(self.nheads))
        self.norm_weight = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, D, bias=False)

    def _conv(self, xBC, conv_state, ops):
        """xBC [B, T, conv_dim] → silu(causal conv) [B, T, conv_dim], new conv state (or None)."""
        xt = xBC.transpose(1, 2)                                          # [B, C, T]
        w = self.conv1d.weight                                            # [C, 1, W]
        if conv_state is None:
            out = ops.causal_conv1d(xt, w.squeeze(1), self.conv1d.bias, activation="silu")
            return out.transpose(1, 2), None
        full = torch.cat([conv_state.to(xt.dtype), xt], 2)               # [B, C, W-1+T]
        out = F.conv1d(full, w, self.conv1d.bias, groups=self.conv_dim)   # [B, C, T]
        return F.silu(out).transpose(1, 2), full[:, :, -(self.d_conv - 1):].detach().clone()

    def split_sizes(self) -> list[int]:
        """in_proj's output pieces: z, xBC, dt."""
        return [self.d_inner, self.conv_dim, self.nheads]

    def forward(self, u, ops, state=None, A=None, proj=None):
        """``A`` = −exp(A_log) [nheads] fp32 when the caller computed it (``HybridLM`` does, for all layers at
        once); else computed here. ``proj`` = (z, xBC, dt) when the caller ran in_proj (``HybridBlock`` does, in
        one GEMM with the fusion's gate projection); else in_proj(u) here."""
        Bsz, T, _ = u.shape
        h, p, n, g = self.nheads, self.headdim, self.d_state, self.ngroups
        # in_proj's pieces as column views of one GEMM (padded to 8 columns) whose backward reads their gradients
        # in place (fused.projections.linear_pieces) instead of concatenating them
        z, xBC, dt = proj if proj is not None else linear_pieces(u, [self.in_proj.weight], self.split_sizes(),
                                                                 wgrad=wgrad_of(ops))
        xBC, conv_state = self._conv(xBC, None if state is None else state[0], ops)
        x, Bm, Cm = split(xBC, [self.d_inner, g * n, g * n])     # no concatenation backward (fused.projections)
        x = x.reshape(Bsz, T, h, p)
        Bm = Bm.reshape(Bsz, T, g, n)
        Cm = Cm.reshape(Bsz, T, g, n)
        if A is None:
            A = -torch.exp(self.A_log.float())
        if state is None:
            y = ops.mamba2(x, dt, A, Bm, Cm, self.chunk_size, D=self.D, dt_bias=self.dt_bias, dt_softplus=True)
            new_state = None
        elif T == 1:   # generation: one step of the recurrence (pure PyTorch, tiny)
            y, S = ops.mamba2_step(state[1], x[:, 0], dt[:, 0], A, Bm[:, 0], Cm[:, 0], D=self.D,
                                        dt_bias=self.dt_bias, dt_softplus=True)
            y = y[:, None]
            new_state = (conv_state, S)
        else:
            y, S = ops.mamba2(x, dt, A, Bm, Cm, self.chunk_size, D=self.D, dt_bias=self.dt_bias,
                              dt_softplus=True, initial_states=state[1], return_final_states=True)
            new_state = (conv_state, S)
        y = y.reshape(Bsz, T, self.d_inner)
        # gated RMSNorm (norm_before_gate=False): RMSNorm(y ⊙ silu(z)) ⊙ weight per group of d_inner / ngroups
        # channels (mamba-ssm's RMSNormGated with group_size = d_ssm / ngroups), one fused op
        yg = ops.norm_gate(y, z, self.norm_weight, None, group_size=self.d_inner // self.ngroups, eps=self.eps,
                           norm="rms", norm_before_gate=False)
        return self.out_proj(yg.to(z.dtype)), new_state

    def init_state(self, batch_size, device, dtype):
        sdt = torch.float64 if dtype == torch.float64 else torch.float32
        return (torch.zeros(batch_size, self.conv_dim, self.d_conv - 1, device=device, dtype=dtype),
                torch.zeros(batch_size, self.nheads, self.headdim, self.d_state, device=device, dtype=sdt))


# ----------------------------------------------------------------------------------------------- FFN
class FFN(nn.Module):
    """4× MLP: down(act(up(x))), act = GELU (peer) or squared ReLU: ``ops.ffn`` (the act in the GEMMs' epilogues:
    kernels/ffn; the reference is the unfused chain). The weights stay nn.Linear's (names, init, checkpoints)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.up = nn.Linear(cfg.d_model, cfg.d_ffn, bias=False)
        self.down = nn.Linear(cfg.d_ffn, cfg.d_model, bias=False)
        self.act = cfg.ffn_act

    def forward(self, x, ops):
        return ops.ffn(x, self.up.weight, self.down.weight, act=self.act)
