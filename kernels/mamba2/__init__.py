"""Mamba-2 SSD chunk scan: the lab's Triton kernels (``ssd.py``), mamba-ssm's ``mamba_chunk_scan_combined``
signature."""
from kernels.mamba2.ssd import mamba_chunk_scan_combined

__all__ = ["mamba_chunk_scan_combined"]
