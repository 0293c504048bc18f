"""The FFN act(x W_upᵀ) W_downᵀ with the activation in its GEMMs' epilogues: ``ffn`` (kernels/ffn/ffn.py)."""
from kernels.ffn.ffn import ffn

__all__ = ["ffn"]
