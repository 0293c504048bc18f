"""Offline sm_90 compile reports (no GPU needed): a Triton kernel compiled for an H100 / H200 on this machine,
then its resource usage and SASS read with the cuobjdump that ships with Triton. Used by the GPU scripts' register
reports (``scripts/gpu_wkv6.py --regs``, ``scripts/gpu_ffn.py --regs``).

    usage = sm90_usage(src, num_warps=4, num_stages=3, maxnreg=None)
        src: a ``triton.compiler.ASTSource``; returns {"regs", "stack" (spill bytes), "shared" (dynamic shared
        memory bytes), "sass" (the disassembly), "ttgir"}; regs / stack are None when cuobjdump's report has none.
    sass_ops(usage["sass"])                -> Counter of SASS opcodes (static: a loop body counts once)
    sass_digest(usage["sass"])             -> 12 hex digits naming the instruction stream (addresses and
                                              encodings dropped): equal digests = the same compiled kernel, e.g.
                                              a default unchanged by a default-off candidate beside it
    MEMORY_OPS                             the opcodes of shared (STS, LDS, LDSM) and local (STL, LDL) memory,
                                           shuffles and barriers: where an L1-bound kernel's traffic comes from

The H200's Nsight Compute (run 29) put wkv6's backward cross kernel, own kernel and forward walk at 60-81 % of
their L1 / shared-memory throughput and 18-30 % of DRAM's: layout conversions through shared memory (dot operands,
dot results to the loads' and stores' layouts, reductions) and register spills, not HBM, set their time. The
static counts of these opcodes are the offline proxy for that traffic (a difference, not a timing).
"""
from __future__ import annotations

import collections
import hashlib
import os
import re
import subprocess
import tempfile

MEMORY_OPS = ("STS", "LDS", "LDSM", "STL", "LDL", "SHFL", "BAR")


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
            "shared": kern.metadata.shared, "sass": sass, "ttgir": kern.asm.get("ttgir", "")}


def sass_ops(sass: str) -> collections.Counter:
    """Opcode counts of a cuobjdump SASS listing (predicates and modifiers dropped: ``@P0 STS.128`` counts as STS)."""
    ops = collections.Counter()
    for ln in sass.splitlines():
        m = re.match(r"\s+/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", ln)
        if m:
            ops[m.group(1)] += 1
    return ops


def sass_digest(sass: str) -> str:
    """SHA-1 (first 12 hex digits) of a cuobjdump SASS listing's instructions in order, without the addresses and
    the encoding comments: two compiles with equal digests run the same instructions."""
    ins = re.findall(r"/\*[0-9a-f]{4,}\*/\s+([^;]*;)", sass)
    return hashlib.sha1("\n".join(" ".join(i.split()) for i in ins).encode()).hexdigest()[:12]

