"""Fused gate blend + residual add + RMSNorm/LayerNorm (``kernel.py``: the Triton kernels, launchers and the
custom ops; ``peers.py``: the peers it is benchmarked against; ``spec.py``: the op's declaration)."""
from kernels.gate_norm_residual.kernel import gate_norm_residual

__all__ = ["gate_norm_residual"]
