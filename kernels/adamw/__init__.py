"""AdamW over the training step's flat buffers, clipping and skip flag included: ``adamw`` (see
kernels/adamw/adamw.py)."""
from kernels.adamw.adamw import adamw

__all__ = ["adamw"]
