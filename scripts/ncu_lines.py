"""Where a kernel's instructions, stalls, shared-memory wavefronts and spills come from, by source line: a table per
kernel from Nsight Compute's source view (the SASS correlated with the Triton source's line info).

    ncu --set full --import-source yes -k "regex:_bwd_cross" -o step python3 step.py      # on the GPU machine
    ncu -i step.ncu-rep --page source --csv --print-source cuda,sass > source.csv
    python3 scripts/ncu_lines.py source.csv [--top 25] [--kernel _bwd_cross_kernel]      # anywhere

Triton's line info is the innermost line of an inlined call, so a line of a shared helper (``tl.cumsum``'s
``return a + b`` in triton/language/standard.py, ``_dot.mma``) sums over every call site. Files print relative to
their package (``kernels/wkv6/chunk.py``, ``triton/language/standard.py``): no machine's paths in the table.
Columns: samples (warp-stall samples, all), their share, instructions executed (warp-level), shared wavefronts (and
the share of them beyond the ideal: bank conflicts), spill instructions executed (STL / LDL, warp-level) and the
line's two largest stall reasons.

H200 run 30 (profiles/nvidia-h200/run30-2026-11-29/c2/ncu_lines.md): wkv6's cross, own and walk kernels at B8
T4096 H32 before the decay-sum dots — 47 % of the walk's stall samples in scans, the cross kernel's column sums
70 M of its 219 M shared wavefronts.
"""
from __future__ import annotations

import argparse
import csv
import re
import sys

_STALL = re.compile(r"^stall_([a-z_]+)$")
_PKG = re.compile(r"^.*?/((?:kernels|triton|groundthink|reference|torch)/.*)$")


def _num(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        return 0.0


def _short(path: str) -> str:
    if "site-packages/" in path:
        return path.rsplit("site-packages/", 1)[1]
    m = _PKG.match(path)
    return m.group(1) if m else path.rsplit("/", 1)[-1]


def read_lines(path: str) -> dict[str, dict[tuple[str, int], dict]]:
    """{kernel: {(file, line): {"source", "samples", "instructions", "shared", "shared_ideal", "spills", "stalls":
    {reason: samples}}}} from a ``--page source --print-source cuda,sass`` CSV export."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    out: dict = {}
    file = kernel = head = cur = None
    for r in rows:
        if not r:
            continue
        if r[0] == "File Path":
            file, head = _short(r[1]), None
            continue
        if r[0] == "Function Name":
            kernel = r[1]
            continue
        if r[0] == "Line No":
            head = {n: i for i, n in reversed(list(enumerate(r)))}    # the first "Source" is the line's text
            stalls = {m.group(1): i for i, n in enumerate(r) if (m := _STALL.match(n))}
            continue
        if head is None or kernel is None:
            continue
        if r[0]:                                                       # a source line's aggregate row
            cur = out.setdefault(kernel, {}).setdefault((file, int(r[0])), {
                "source": r[1].strip(), "samples": 0.0, "instructions": 0.0, "shared": 0.0, "shared_ideal": 0.0,
                "spills": 0.0, "stalls": {}})
            cur["samples"] += _num(r[head["Warp Stall Sampling (All Samples)"]])
            cur["instructions"] += _num(r[head["Instructions Executed"]])
            for key, col in (("shared", "L1 Wavefronts Shared"), ("shared_ideal", "L1 Wavefronts Shared Ideal")):
                if col in head:         # absent from a kernel that touches no shared memory
                    cur[key] += _num(r[head[col]])
            for name, i in stalls.items():
                cur["stalls"][name] = cur["stalls"].get(name, 0.0) + _num(r[i])
        elif cur is not None and len(r) > 3 and re.search(r"\b(STL|LDL)\b", r[3]):   # a SASS row of that line
            cur["spills"] += _num(r[head["Instructions Executed"]])
    return out


def table(lines: dict[tuple[str, int], dict], top: int) -> str:
    """A markdown table of the ``top`` lines by stall samples, and a total row."""
    tot = {k: sum(v[k] for v in lines.values()) for k in ("samples", "instructions", "shared", "spills")}
    rows = ["| file:line | source | samples (share) | instructions | shared wavefronts (conflict excess) | spill "
            "instr | top stalls |", "|---|---|---|---|---|---|---|"]
    for (file, line), v in sorted(lines.items(), key=lambda kv: -kv[1]["samples"])[:top]:
        excess = (f" ({(v['shared'] - v['shared_ideal']) / v['shared']:.0%})" if v["shared"] else "")
        stalls = ", ".join(f"{n} {s / max(v['samples'], 1):.0%}"
                           for n, s in sorted(v["stalls"].items(), key=lambda kv: -kv[1])[:2] if s)
        src = v["source"].replace("|", "\\|")[:60]
        rows.append(f"| {file}:{line} | `{src}` | {v['samples']:,.0f} ({v['samples'] / max(tot['samples'], 1):.1%}) "
                    f"| {v['instructions']:,.0f} | {v['shared']:,.0f}{excess} | {v['spills']:,.0f} | {stalls} |")
    rows.append(f"| all {len(lines)} lines | | {tot['samples']:,.0f} | {tot['instructions']:,.0f} | "
                f"{tot['shared']:,.0f} | {tot['spills']:,.0f} | |")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv", help="ncu -i REPORT --page source --csv --print-source cuda,sass > CSV")
    ap.add_argument("--top", type=int, default=25, help="lines per kernel, by stall samples (default 25)")
    ap.add_argument("--kernel", action="append", help="only these kernels (repeatable; default all)")
    a = ap.parse_args(argv)
    try:
        kernels = read_lines(a.csv)
    except (OSError, KeyError, ValueError) as e:
        print(f"ncu_lines: cannot read {a.csv} as a source-view export ({type(e).__name__}: {e}); expected "
              "`ncu -i REPORT --page source --csv --print-source cuda,sass`")
        return 1
    if not kernels:
        print(f"ncu_lines: no source lines in {a.csv}; expected `--print-source cuda,sass` (with line info)")
        return 1
    for name, lines in kernels.items():
        if a.kernel and name not in a.kernel:
            continue
        print(f"### {name}\n\n{table(lines, a.top)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
