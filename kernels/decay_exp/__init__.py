"""RWKV-6 log-decay lw = −exp(base + d): ``decay_exp`` (see kernels/decay_exp/decay_exp.py)."""
from kernels.decay_exp.decay_exp import decay_exp

__all__ = ["decay_exp"]
