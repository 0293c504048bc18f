"""RWKV-6's low-rank terms tanh(x W1) W2 (optionally −exp(base + ·)): ``lowrank`` (kernels/lowrank/lowrank.py)."""
from kernels.lowrank.lowrank import lowrank

__all__ = ["lowrank"]
