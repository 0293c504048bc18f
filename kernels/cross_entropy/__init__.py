"""Mean token cross-entropy, loss and dlogits in one pass: ``cross_entropy`` (kernels/cross_entropy/cross_entropy.py)."""
from kernels.cross_entropy.cross_entropy import cross_entropy

__all__ = ["cross_entropy"]
