#!/usr/bin/env bash
# The one command to run on a GPU machine (no network needed):
#   bash scripts/gpu_bench.sh [extra pytest args, e.g. -k wkv6]
#   bash scripts/gpu_bench.sh --validity [--steps 300 --ref-steps 100]   (only the validity run + report; a
#                                       separate call: the reference model needs seconds per step)
# 1. installs the peer wheels ($GT_WHEELS or .gpu-wheels/: fla, mamba-ssm, causal-conv1d, the
#    selective_scan_cuda stand-in) into $GT_SITE (default: a fresh temporary folder);
# 2. pytest bench/ --benchmark --benchmark-json profiles/<gpu>/bench.json  (kernels vs references and peers,
#    training tok/s; writes profiles/<gpu>/bench.csv and the gate manifest profiles/<gpu>/gates.json);
# 3. validity run (--validity, or GT_BENCH_VALIDITY=1 after the benchmarks): train.py GF-MH small,
#    --kernels triton vs reference, same seed -> profiles/<gpu>/validity/*.jsonl;
# 4. python -m bench.report -> profiles/<gpu>/report.md + plots;
# 5. copies profiles/<gpu>/ to $OUT/ when OUT is set.
# Before committing a log of this script: python scripts/scrub_paths.py --fix LOG (machine paths out, numbers kept).
# Knobs: GT_BENCH_QUICK (1: bounded grid, default), GT_BENCH_BUDGET_S (soft budget for starting new rows, 400 s),
# GT_BENCH_TIMEOUT (hard limit of the pytest step, SIGINT -> results and manifest still written; 500 s),
# GT_VALIDITY_STEPS (300), GT_VALIDITY_REF_STEPS (100), GT_BENCH_CUDAGRAPH (1: also CUDA-graph timings of µs
# forward rows), GT_BENCH_MERGE (1: a partial re-run, e.g. `GT_BENCH_MERGE=1 GT_BENCH_BUDGET_S=0
# bash scripts/gpu_bench.sh -k "train and peer"`, keeps the earlier run's other rows in bench.csv / gates.json).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-python3}
T0=$(date +%s)
MODE=bench
if [ "${1:-}" = "--validity" ]; then MODE=validity; shift; fi

GT_SITE=${GT_SITE:-$(mktemp -d "${TMPDIR:-/tmp}/groundthink-site.XXXXXX")}
WHEELS=""
for d in "${GT_WHEELS:-}" "$REPO/.gpu-wheels"; do
  if [ -n "$d" ] && ls "$d"/*.whl >/dev/null 2>&1; then WHEELS="$d"; break; fi
done
if [ -n "$WHEELS" ]; then
  echo "== installing peer wheels from ${WHEELS#"$REPO"/} into \$GT_SITE"
  PIP=($PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$GT_SITE" --upgrade)
  # all together (fla_core and flash_linear_attention both ship fla/); if a platform wheel does not fit this
  # Python, install the pure-Python ones together and each platform wheel on its own
  "${PIP[@]}" "$WHEELS"/*.whl 2>&1 | grep -v "Running pip as the 'root'" || true
  if ! PYTHONPATH="$GT_SITE:$REPO" $PY -c "import fla.ops.rwkv6, mamba_ssm" 2>/dev/null; then
    "${PIP[@]}" "$WHEELS"/*-none-any.whl || echo "!! pure-Python peer wheels failed to install"
    for w in "$WHEELS"/*.whl; do
      case "$w" in *-none-any.whl) ;; *) "${PIP[@]}" "$w" || echo "!! $w does not install here";; esac
    done
  fi
else
  echo "!! no wheels found (\$GT_WHEELS, .gpu-wheels/): fla / mamba-ssm peers will be skipped if not installed"
fi
export PYTHONPATH="$GT_SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
# keep Triton autotuning results on disk (triton >= 3.4): a second run on a warm machine skips the minutes of
# autotuning of fla / mamba-ssm / the lab's kernels
export TRITON_CACHE_AUTOTUNING=${TRITON_CACHE_AUTOTUNING:-1}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
$PY - <<'PY'
from groundthink.device import versions, gpu_name
print("== gpu:", gpu_name(), "| versions:", versions())
PY
SLUG=$($PY -c "from groundthink.device import gpu_slug; print(gpu_slug())")
PROF="$REPO/profiles/$SLUG"
mkdir -p "$PROF"

for m in pytest pytest_benchmark pandas matplotlib; do
  $PY -c "import $m" 2>/dev/null || echo "!! python module $m missing on this machine" \
    "(pytest: nothing runs; pytest_benchmark: no bench.json; pandas/matplotlib: no report)"
done

JSON_ARGS=()
if [ "${GT_BENCH_JSON:-1}" = "0" ]; then
  echo "== GT_BENCH_JSON=0: no pytest-benchmark JSON (bench.csv, bench_rows.json and the manifest are still written)"
elif $PY -c "import pytest_benchmark" 2>/dev/null; then
  JSON_ARGS=(--benchmark-json "$PROF/bench.json" --benchmark-columns=median,rounds --benchmark-sort=name)
else
  echo "!! pytest-benchmark not installed: no bench.json (bench.csv and the manifest are still written)"
fi

RC=0
if [ "$MODE" = bench ]; then
  echo "== pytest bench/ --benchmark (quick=${GT_BENCH_QUICK:-1}, budget ${GT_BENCH_BUDGET_S:-400}s)"
  timeout -s INT -k 30 "${GT_BENCH_TIMEOUT:-500}" \
    $PY -m pytest bench/ --benchmark "${JSON_ARGS[@]}" -q -rs -p no:cacheprovider "$@"
  RC=$?
  echo "== pytest exit code $RC after $(( $(date +%s) - T0 )) s"
fi

if [ "$MODE" = validity ] || [ "${GT_BENCH_VALIDITY:-0}" = "1" ]; then
  echo "== validity run: train.py GF-MH small, --kernels triton then reference (same seed/schedule)"
  VARGS=("$@"); [ "$MODE" = bench ] && VARGS=()
  timeout -s INT -k 30 "${GT_VALIDITY_TIMEOUT:-540}" \
    $PY -m bench.bench_train --validity "${VARGS[@]}" || { RC=$?; echo "!! validity run incomplete (rc $RC)"; }
fi

echo "== report"
$PY -m bench.report --gpu "$SLUG" || echo "!! report failed"
[ -f "$PROF/gates.json" ] && $PY -c "
import json; d = json.load(open('$PROF/gates.json'))
for op, impls in d['ops'].items():
    for impl, e in impls.items(): print(f'gate {op}/{impl}: {e[\"reason\"]}')"

if [ -n "${OUT:-}" ]; then
  # the device tool brings back at most 8 files, 2 folders deep: one archive of the whole profile folder
  tar -czf "$OUT/profiles-$SLUG.tgz" -C "$REPO/profiles" "$SLUG" && echo "== results archived to \$OUT/profiles-$SLUG.tgz"
fi
echo "== done in $(( $(date +%s) - T0 )) s"
exit $RC
