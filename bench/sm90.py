"""Offline sm_90 compile reports (no GPU needed): a Triton kernel compiled for an H100 / H200 on this machine,
then its resource usage and SASS read with the cuobjdump that ships with Triton. Used by the GPU scripts' register
reports (``scripts/gpu_wkv6.py --regs``, ``scripts/gpu_ffn.py --regs``).

    usage = sm90_usage(src, num_warps=4, num_stages=3, maxnreg=None)
        src: a ``triton.compiler.ASTSource``; returns {"regs", "stack" (spill bytes), "shared" (dynamic shared
        memory bytes), "sass" (the disassembly)}; regs / stack are None when cuobjdump's report has none.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile


def cuobjdump() -> str:
    import triton
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def sm90_usage(src, num_warps: int, num_stages: int, maxnreg: int | None = None) -> dict:
    """Compile ``src`` for sm_90 and read back its registers, spill stack, shared memory and SASS."""
    import triton
    from triton.backends.compiler import GPUTarget
    kern = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={
        "num_warps": num_warps, "num_stages": num_stages, **({"maxnreg": maxnreg} if maxnreg else {})})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kern.asm["cubin"])
        f.flush()
        res = subprocess.run([cuobjdump(), "-res-usage", f.name], capture_output=True, text=True).stdout
        sass = subprocess.run([cuobjdump(), "-sass", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", res)
    return {"regs": int(m.group(1)) if m else None, "stack": int(m.group(2)) if m else None,
            "shared": kern.metadata.shared, "sass": sass}
