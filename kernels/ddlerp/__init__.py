"""RWKV-6 data-dependent lerps (the five token-shift mixes): ``ddlerp`` (see kernels/ddlerp/ddlerp.py)."""
from kernels.ddlerp.ddlerp import ddlerp

__all__ = ["ddlerp"]
