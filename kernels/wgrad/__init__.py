"""Weight-gradient GEMMs C = aᵀ b in one launch: ``wgrad`` (kernels/wgrad/wgrad.py)."""
from kernels.wgrad.wgrad import wgrad

__all__ = ["wgrad"]
