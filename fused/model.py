"""The parallel RWKV-6 ∥ Mamba-2 hybrid language model.

    h = emb(idx);  y = RMSNorm₀(h)
    per layer:  a = RWKV6TimeMix(y),  b = Mamba2Mixer(y)                 (RF: b = Mamba2Mixer(y + a))
                (GF/HGF: Mamba's in_proj and the gate projection of y are one GEMM; every layer's Mamba
                A = −exp(A_log) is computed once per forward for all layers)
                h, y = ops.gate_norm_residual(h, a, b, gate, mode=variant)  blend + residual + norm, one call
                h, y = ops.gate_norm_residual(h, ops.ffn(y), mode="add")
    logits = head(y);  loss = ops.cross_entropy(logits, targets)    (mean token CE; the fused op never makes fp32 logits)

API (train.py and the benchmarks rely on it):
    model(idx, targets=None) -> (logits, loss)
    model(idx, targets, with_stats=True) -> (logits, loss, probes): probes = {"gate_mean", "rms_rwkv",
        "rms_mamba"} as 0-d fp32 device tensors, means over the layers (None when the variant has no gate / no
        such branch); reduced for all layers at once at the end of the forward (a few kernels, not a few per
        layer), nothing is stored on the modules (groundthink/monitor.py)
    model.param_groups() -> {"rwkv": [...], "mamba": [...], "other": [...]}   (each parameter once)
    model.init_state(B), model.step(idx_t, state) -> (logits [B, V], state), model.generate(...)
    model.ops / model.set_ops(opset), model.config, model.num_params(), model.describe()
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn as nn

from fused.blocks import FFN, Mamba2Mixer, NormWeight, RWKV6TimeMix, rms_norm, wgrad_of
from fused.configs import ModelConfig
from fused.projections import embedding, linear_pieces, pack_weights, stack
from groundthink.device import autocast_dtype
from fused.variants import VARIANTS, Fusion
from groundthink import monitor


def _tee_ygrad() -> bool:
    """GF/HGF blocks hand y to the time-mix through ``linear_pieces(tee=True)``, so the time-mix's y-gradient is
    added by in_proj's first dx GEMM (C operand) instead of an autograd add: one launch fewer per layer; bf16 rounds
    once less (fp64: equal to 1e-14). On by default since session 15 (issue 10: launches);
    ``GROUNDTHINK_TEE_YGRAD=0`` restores the autograd add."""
    return os.environ.get("GROUNDTHINK_TEE_YGRAD", "1") != "0"


class HybridBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        branches = VARIANTS[cfg.name]["branches"]
        self.tmix = RWKV6TimeMix(cfg, layer_id) if branches != "mamba" else None
        self.mamba = Mamba2Mixer(cfg, layer_id) if branches != "rwkv" else None
        self.sequential = branches == "sequential"
        self.fusion = Fusion(cfg, cfg.name)
        self.norm1 = NormWeight(cfg.d_model, cfg.norm)
        self.ffn = FFN(cfg)
        self.norm2 = NormWeight(cfg.d_model, cfg.norm)
        self.cfg = cfg
        # Mamba's in_proj and a learned gate projection read the same y (not in RF): one GEMM (_in_and_gate_proj)
        self.fold_gate = self.mamba is not None and not self.sequential and self.fusion.kind == "linear"
        self.tee = self.fold_gate and self.tmix is not None and _tee_ygrad()   # read once, at build time

    def forward(self, h, y, ops, state=None, probes: list | None = None, A=None, packed=None):
        """(h, y, new_state); with ``probes`` (a list) appends this layer's (gate probe, a, b) (detached; the
        model reduces all layers' probes at once). ``A``: the Mamba mixer's −exp(A_log), when computed outside."""
        st_a = st_b = None
        a = b = None
        proj = gproj = None
        y_t = y
        if self.tee:                                     # the y-gradient add folded (GROUNDTHINK_TEE_YGRAD)
            *proj, gproj, y_t = self._in_and_gate_proj(y, ops, tee=True, packed=packed)
        if self.tmix is not None:
            a, st_a = self.tmix(y_t, ops, None if state is None else state["rwkv"])
        if self.fold_gate and proj is None:
            *proj, gproj = self._in_and_gate_proj(y, ops, packed=packed)
        if self.mamba is not None:
            xin = y + a if self.sequential else y
            b, st_b = self.mamba(xin, ops, None if state is None else state["mamba"], A=A, proj=proj)
        h, y2, gate = self.fusion(h, a, b, y, ops, self.norm1, self.cfg, probes is not None, proj=gproj)
        if probes is not None:
            probes.append((gate, None if a is None else a.detach(), None if b is None else b.detach()))
        f = self.ffn(y2, ops)
        h, y3 = ops.gate_norm_residual(h, f, weight=self.norm2.weight, bias=self.norm2.bias, mode="add",
                                       norm=self.cfg.norm, eps=self.cfg.norm_eps,
                                       residual_fp32=self.cfg.residual_fp32)
        new_state = None if state is None else {"rwkv": st_a, "mamba": st_b}
        return h, y3, new_state

    def in_and_gate_weights(self) -> list:
        """[W_in, W_gate]: the weights of ``_in_and_gate_proj``'s one GEMM."""
        return [self.mamba.in_proj.weight, self.fusion.gate_proj.weight]

    def _in_and_gate_proj(self, y, ops, tee: bool = False, packed=None):
        """(z, xBC, dt, gate product) = y [W_in; W_gate]ᵀ split: ONE GEMM for Mamba's in_proj and the gate
        projection (without its bias), instead of a GEMM and a gemv (row gate) or two GEMMs (HGF), and one
        y-gradient add fewer in the backward (``fused.projections.linear_pieces``: zero rows pad the product to a
        multiple of 8 columns — 16-byte aligned rows for cuBLAS and causal_conv1d's channel-last path — and the
        backward reads each piece's gradient in place instead of concatenating them). Under autocast the weights
        are cast before the product, so they stay weights of the step's bf16 copy (no cast per step).
        ``tee``: y is returned last, for the time-mix: its gradient enters the backward's first dx GEMM as C
        (``linear_pieces(tee=True)``), one autograd add of y's gradients fewer per layer."""
        ws = self.in_and_gate_weights()
        sizes = self.mamba.split_sizes() + [ws[1].shape[0]]
        return linear_pieces(y, ws, sizes, tee=tee, wgrad=wgrad_of(ops), packed=packed)    # dW by ops.wgrad


class HybridLM(nn.Module):
    def __init__(self, cfg: ModelConfig, ops=None):
        super().__init__()
        self.config = cfg
        self.emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.norm0 = nn.Parameter(torch.ones(cfg.d_model))
        self.blocks = nn.ModuleList([HybridBlock(cfg, i) for i in range(cfg.n_layer)])
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self._init_weights()
        if cfg.tie_embeddings:
            self.head.weight = self.emb.weight
        if ops is None:
            from groundthink.registry import resolve
            ops = resolve("auto")
        self.ops = ops

    # ------------------------------------------------------------------ init / ops
    def _init_weights(self):
        cfg = self.config
        std = cfg.init_std
        out_std = std / math.sqrt(2 * cfg.n_layer)
        nn.init.normal_(self.emb.weight, std=std)
        nn.init.normal_(self.head.weight, std=std)
        for blk in self.blocks:
            if blk.tmix is not None:
                # RWKV-LM scales (orthogonal gains r 1, k 0.1, v 1, g 0.1) as normal stds over sqrt(D); the gate
                # at gain 1 rather than 0.1 so that both branches start with comparable output and gradient
                d = cfg.d_model ** -0.5
                for w, gain in zip(blk.tmix.rkvg, (1.0, 0.1, 1.0, 1.0)):      # r, k, v, g
                    nn.init.normal_(w, std=gain * d)
                nn.init.normal_(blk.tmix.output.weight, std=out_std)
            if blk.mamba is not None:
                nn.init.normal_(blk.mamba.in_proj.weight, std=std)
                nn.init.normal_(blk.mamba.out_proj.weight, std=out_std)
            nn.init.normal_(blk.ffn.up.weight, std=std)
            nn.init.normal_(blk.ffn.down.weight, std=out_std)

    def set_ops(self, ops):
        """Switch kernel implementations (an ``OpSet`` from ``groundthink.registry.resolve``)."""
        self.ops = ops
        return self

    # ------------------------------------------------------------------ forward
    def _mamba_A(self) -> list:
        """Every layer's Mamba A = −exp(A_log) [nheads] in one stack, exp and negation (3 launches forward, 2
        backward, instead of 2 + 2 per layer; the same elementwise exp of the same values), None per layer
        without a Mamba mixer. In the training step the A_log lie evenly spaced in its flat buffer: the stack is a
        view (``fused.projections.stack``; session 16: one copy kernel fewer each way)."""
        logs = [blk.mamba.A_log for blk in self.blocks if blk.mamba is not None]
        if not logs:
            return [None] * len(self.blocks)
        got = iter(stack(logs).float().exp().neg().unbind(0))    # the stack: a view in the training step
        return [None if blk.mamba is None else next(got) for blk in self.blocks]

    def _packed(self, y) -> list:
        """Per block, its [W_in; W_gate; 0] for the fused in_proj + gate GEMM, every layer's made by ONE
        concatenation (``fused.projections.pack_weights``: one copy kernel a step instead of one a layer; issue 10),
        or None (a block without that GEMM, ``GROUNDTHINK_PACK_WEIGHTS=0``, or weights not in the matmul dtype)."""
        folded = [blk for blk in self.blocks if blk.fold_gate]
        got = None
        if folded and os.environ.get("GROUNDTHINK_PACK_WEIGHTS", "1") != "0":
            got = pack_weights([blk.in_and_gate_weights() for blk in folded], y.device.type)
        it = iter(got or [None] * len(folded))
        return [next(it) if blk.fold_gate else None for blk in self.blocks]

    def _run(self, idx, state=None, probes=None):
        h = embedding(idx, self.emb.weight, getattr(self.ops, "wgrad", None))    # dW: one ops.wgrad GEMM
        y = rms_norm(h, self.norm0, self.config.norm_eps)
        amp = autocast_dtype(y.device.type)
        if amp is not None:
            # the first block reads y in the matmul dtype, as every later block does (gate_norm_residual gives
            # them y in the branches' dtype): one cast here instead of one per consumer (the r/k/v/g stack, the
            # low-rank mixes, in_proj: 4 casts and 4 widening gradient copies in the backward, ≈ 0.3 ms at large)
            y = y.to(amp)
        new_states = []
        for i, (blk, A, packed) in enumerate(zip(self.blocks, self._mamba_A(), self._packed(y))):
            h, y, st = blk(h, y, self.ops, None if state is None else state[i], probes, A=A, packed=packed)
            new_states.append(st)
        return self.head(y), (new_states if state is not None else None)

    def forward(self, idx, targets=None, with_stats: bool = False):
        probes = [] if with_stats else None
        logits, _ = self._run(idx, probes=probes)
        loss = None
        if targets is not None:
            loss = self.ops.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        if not with_stats:
            return logits, loss
        gates, ra, rb = zip(*probes)
        rms_a, rms_b = monitor.branch_rms(ra, rb)
        return logits, loss, {"gate_mean": monitor.gate_mean(gates), "rms_rwkv": rms_a, "rms_mamba": rms_b}

    def forward_with_state(self, idx, state):
        """Parallel forward continued from ``state`` (prefill); returns (logits [B, T, V], new state)."""
        return self._run(idx, state)

    # ------------------------------------------------------------------ recurrent path
    def init_state(self, batch_size: int):
        """Zero state: per layer {"rwkv": (last x [B, D], wkv [B, H, K, V]),
        "mamba": (conv [B, conv_dim, d_conv−1], ssm [B, nheads, headdim, d_state])} (None for absent branches)."""
        p = self.emb.weight
        return [{"rwkv": None if blk.tmix is None else blk.tmix.init_state(batch_size, p.device, p.dtype),
                 "mamba": None if blk.mamba is None else blk.mamba.init_state(batch_size, p.device, p.dtype)}
                for blk in self.blocks]

    def step(self, idx_t, state):
        """One token per sequence: idx_t Long [B] → (logits [B, V], new state)."""
        logits, state = self._run(idx_t[:, None], state)
        return logits[:, 0], state

    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None, ops=None):
        """Sample ``max_new_tokens`` after the prompt ``idx`` [B, T]: the prompt is prefilled in parallel from a
        zero state (``forward_with_state``), then every new token goes through ``step``. temperature 0 = greedy.
        ``ops``: the implementations to generate with (default the model's own), e.g. the references after
        training on a GPU: generation runs at B = 1, T = 1 in fp32, a shape and dtype family the training
        step's Triton kernels were never compiled or autotuned for (run 5: still in ptxas 200 s later), while the
        references compile nothing and cost little at one token."""
        if ops is not None:
            own = self.ops
            try:
                return self.set_ops(ops).generate(idx, max_new_tokens, temperature, top_k)
            finally:
                self.set_ops(own)
        state = self.init_state(idx.shape[0])
        logits, state = self.forward_with_state(idx, state)     # prefill: parallel path continued with state
        logits = logits[:, -1]
        out = [idx]
        for _ in range(max_new_tokens):
            lg = logits.float() / max(temperature, 1e-8)
            if top_k is not None:
                kth = torch.topk(lg, min(top_k, lg.shape[-1]), dim=-1).values[:, -1:]
                lg = lg.masked_fill(lg < kth, -float("inf"))
            if temperature == 0:
                nxt = lg.argmax(-1)
            else:
                nxt = torch.multinomial(torch.softmax(lg, -1), 1)[:, 0]
            out.append(nxt[:, None])
            logits, state = self.step(nxt, state)
        return torch.cat(out, 1)

    # ------------------------------------------------------------------ introspection
    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        groups = {"rwkv": [], "mamba": [], "other": []}
        for name, p in self.named_parameters():   # named_parameters deduplicates tied weights
            key = "rwkv" if ".tmix." in name else "mamba" if ".mamba." in name else "other"
            groups[key].append(p)
        return groups

    def num_params(self, group: str | None = None) -> int:
        ps = self.parameters() if group is None else self.param_groups()[group]
        return sum(p.numel() for p in ps)

    def describe(self) -> str:
        c = self.config
        g = {k: self.num_params(k) for k in ("rwkv", "mamba", "other")}
        return (f"{c.name}/{c.size}: {self.num_params() / 1e6:.2f}M params (rwkv {g['rwkv'] / 1e6:.2f}M, "
                f"mamba {g['mamba'] / 1e6:.2f}M, other {g['other'] / 1e6:.2f}M); D{c.d_model} L{c.n_layer} "
                f"rwkv heads {c.n_head}x{c.head_size}, mamba heads {c.mamba_nheads}x{c.headdim} "
                f"d_state {c.d_state}, vocab {c.vocab_size}; ops {self.ops.impls()}")
