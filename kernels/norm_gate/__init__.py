"""Per-group norm and SiLU gate: ``norm_gate`` (see kernels/norm_gate/norm_gate.py)."""
from kernels.norm_gate.norm_gate import norm_gate

__all__ = ["norm_gate"]
