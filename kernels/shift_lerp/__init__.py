"""RWKV-6 token-shift lerp: ``shift_lerp`` (see kernels/shift_lerp/shift_lerp.py)."""
from kernels.shift_lerp.shift_lerp import shift_lerp

__all__ = ["shift_lerp"]
