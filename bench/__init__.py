"""Benchmarks: kernels vs references and peers, end-to-end training tok/s, the gate manifest, the report.

Run (GPU machine, no network needed; installs the peer wheels from .gpu-wheels/ into $GT_SITE):

    bash scripts/gpu_reports.sh bench report  # = pytest bench/ --benchmark --benchmark-json ... + python -m bench.report

or by hand:

    pytest bench/ --benchmark [-k gate_norm_residual] [--benchmark-json out.json]
    python -m bench.report [--gpu SLUG | --dir DIR]
    python -m bench.bench_train --validity [--steps 300 --ref-steps 100]    # train.py triton vs reference curves

Without ``--benchmark`` every benchmark is skipped (``pytest bench/`` takes about a second). Outputs go to
``profiles/<gpu-slug>/`` (``GT_BENCH_OUT`` overrides): ``bench.csv`` (one row per op × implementation × shape ×
pass, rewritten after every row), ``bench_rows.json``, ``gates.json`` (GPU only), ``report.md`` + PNGs + pivots.

Modules: ``common`` (timing, bandwidth, memory, rows, cases from the op specs), ``conftest`` (the flag, run
order, session-end writers: CSV, JSON, the gate manifest through ``groundthink.gate``), ``bench_<op>`` (one per op whose
spec declares a benchmark: ``test_<op> = common.spec_test(op)``), ``bench_train``, ``peer_model`` (fla RWKV6Attention ∥
mamba-ssm Mamba2), ``report``.
Environment: GT_BENCH_QUICK (1 default: bounded grid), GT_BENCH_BUDGET_S (soft budget, 400 s quick),
GT_BENCH_GRAPH=0 (skip the CUDA-graph timings ``ms_graph`` of graph-safe implementations), GT_BENCH_OUT.
"""
