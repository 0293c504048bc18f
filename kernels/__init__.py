"""Hand-written Triton kernels.

Importing this package decides how Triton runs: on a machine without CUDA, the kernels run through Triton's
interpreter (``TRITON_INTERPRET=1``), which must be set before any ``@triton.jit`` function is defined, so it is
set here, before any kernel module is imported. With CUDA present the variable is left alone.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
