"""One markdown row per kernel from an Nsight Compute details export: where a kernel's time goes (L1 / shared memory,
DRAM, issue), what limits its occupancy, its spills and its shared-memory bank conflicts.

    ncu --set full -k "regex:_bwd_cross|_fwd_walk" -o step python3 step.py      # on the GPU machine
    ncu -i step.ncu-rep --page details --csv > details.csv
    python3 scripts/ncu_summary.py details.csv                                   # anywhere

H200 run 29 (profiles/nvidia-h200/run29-2026-11-29/c6/): wkv6's cross, walk and own kernels at 60-81 % of their L1
throughput and 18-30 % of DRAM's — the reason this table reads L1 first.
"""
from __future__ import annotations

import csv
import re
import sys

# (column, section, metric) read from the export as it is
METRICS = [("ms", "GPU Speed Of Light Throughput", "Duration"),
           ("L1/TEX %", "GPU Speed Of Light Throughput", "L1/TEX Cache Throughput"),
           ("DRAM %", "GPU Speed Of Light Throughput", "DRAM Throughput"),
           ("issue busy %", "Compute Workload Analysis", "Issue Slots Busy"),
           ("cycles / issue", "Warp State Statistics", "Warp Cycles Per Issued Instruction"),
           ("instructions", "Instruction Statistics", "Executed Instructions"),
           ("registers", "Launch Statistics", "Registers Per Thread"),
           ("occupancy %", "Occupancy", "Achieved Occupancy"),
           ("CTAs by registers", "Occupancy", "Block Limit Registers"),
           ("spill requests", "Memory Workload Analysis", "Local Memory Spilling Requests")]
_CONFLICT = re.compile(r"causes on average a ([\d.]+) - way bank conflict across all (\d+) shared (load|store) requests"
                       r".*?overall (\d+) wavefronts")


def summarize(path: str) -> list[dict]:
    """Per kernel (in the export's order): the METRICS values (as ncu prints them) and, from its bank-conflict
    rules, "shared loads" / "shared stores" as "requests, n-way" with the wavefronts."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    head = rows[0]
    col = {n: head.index(n) for n in ("ID", "Kernel Name", "Section Name", "Metric Name", "Metric Value")}
    desc = head.index("Rule Description") if "Rule Description" in head else None
    out: dict = {}
    for r in rows[1:]:
        if len(r) <= col["Metric Value"]:
            continue
        k = out.setdefault(r[col["ID"]], {"kernel": r[col["Kernel Name"]].split("(")[0].strip()})
        for name, sec, met in METRICS:
            if r[col["Section Name"]] == sec and r[col["Metric Name"]] == met:
                k[name] = r[col["Metric Value"]]
        m = _CONFLICT.search(r[desc]) if desc is not None and len(r) > desc else None
        if m:
            k[f"shared {m.group(3)}s"] = f"{int(m.group(2)):,} req, {m.group(1)}-way, {int(m.group(4)):,} wavefronts"
    return list(out.values())


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python3 scripts/ncu_summary.py DETAILS.csv  (ncu -i REPORT --page details --csv > DETAILS.csv)")
        return 2
    try:
        kernels = summarize(argv[0])
    except (OSError, ValueError) as e:
        print(f"error: {argv[0]} is not an Nsight Compute details CSV ({e})")
        return 2
    cols = ["kernel"] + [c for c, _, _ in METRICS] + ["shared loads", "shared stores"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for k in kernels:
        print("| " + " | ".join(k.get(c, "-") for c in cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
