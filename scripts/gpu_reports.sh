#!/usr/bin/env bash
# Issue 12's runs, in parts that fit a ≤ 10-minute GPU call each, all writing into ONE results folder $RUN
# (default profiles/<gpu>/run4-<UTC date>/; GT_RUN sets it, relative to the repository):
#
#   bash scripts/gpu_reports.sh bench            # call 1 (≤ 9.5 min): pytest bench/ --benchmark with the peers
#   bash scripts/gpu_reports.sh study validity   # call 2 (≤ 9.5 min): variant study + long context + validity
#   bash scripts/gpu_reports.sh report           # anywhere, CPU is enough: report.md, plots, CSVs from $RUN
#
# Parts (any number, run in the order given):
#   bench     pytest bench/ --benchmark (kernels vs the reference, fla, mamba-ssm, causal-conv1d, torch.compile;
#             training rows; the gate manifest $RUN/gates.json; pytest-benchmark's $RUN/bench.json).
#             TO FIT ≤ 10 MIN ON A COLD MACHINE IT SKIPS (said again when it starts):
#               * wkv6 at B1 T16384 H32, B4 T2048 H16 and B64 T256 H2 (the PyTorch reference loops in Python:
#                 ~20-40 s a row); kept: B8 T4096 H32 (the headline) and the models' own B64 T256 H4 K32 and
#                 B16 T1024 H8 (every lab kernel, fla chunk and fla recurrent)
#               * gate_norm_residual's add / vector / weights / res32 modes and D768 / D4096 rows; kept: N32768
#                 D2048 row and element, the models' N16384 D128 and D512 rows (peers at the row shapes)
#               * training rows other than GF-MH small (ours eager, ours CUDA graph, the reference) and the peer
#                 model at small — the variant study measures every variant's speed
#               * whatever the soft budget GT_BENCH_BUDGET_S (default 420 s) has not started: rows run in
#                 the order of bench/conftest.py (every op's reference and first lab kernel; the peers; the
#                 other lab kernels; wkv6 first within each; then training) and a skipped row says so; the
#                 hard cap BENCH_S (default 530 s) interrupts pytest, which still writes bench.csv (rewritten
#                 after every row) and the manifest
#             Raise it: GT_BENCH_K="" (no shape/row filter), GT_BENCH_BUDGET_S=0 (no soft budget), BENCH_S=3000,
#             GT_BENCH_QUICK=0 (every variant, shape and peer, more repetitions). fla's first call autotunes
#             for ~3 min (later shapes ~40 s); its cost is in each row's warmup_s column.
#   study     python -m bench.variants --quick --kernels triton (every variant, 200 steps at small, ≤ VARIANTS_S
#             = 250 s: --budget-s starts no variant after VARIANTS_S − 40 s; re-running resumes with the rest),
#             then python -m bench.long_context --quick --kernels triton (GF-MH, rwkv6, mamba2 at 8192 and
#             1024 characters, ≤ LONGCTX_S = 160 s, no new run after 100 s, same resume rule)
#   validity  bench.bench_train.run_validity: train.py GF-MH small, --kernels triton vs --kernels reference,
#             same seed, data and schedule, VALIDITY_STEPS = 30 steps of VALIDITY_BATCH = 4 × 256 characters (the
#             PyTorch reference wkv6 loops over sequences and chunks in Python: ~2 s a step at batch 4), loss
#             logged every step; ≤ VALIDITY_S = 120 s
#   report    python -m bench.report --dir $RUN: report.md with every kernel beside its peers, the variant
#             ranking, long context, validity, pytest-benchmark's table; plots and CSVs next to it
#
# Smoke mode (GT_SMOKE=1, or automatically without CUDA): the same commands at tiny sizes on a CPU, to check
# the plumbing (results in profiles/cpu/..., git-ignored; every figure labelled NOT A PERFORMANCE MEASUREMENT).
#
# Device tool: carry [".gpu-wheels"] (fla, mamba-ssm, causal-conv1d, the selective_scan_cuda stand-in; test/:
# pytest, pytest-benchmark, hypothesis); the wheels go into a temporary site folder. Everything the parts wrote
# comes back as ONE archive $OUT/<parts>.tgz (the results folder with logs/; while the parts run, a snapshot
# $OUT/<parts>.partial.tgz every 20 s, so a lease cut short still returns what was written); the last lines
# printed are a short table. Before committing logs: python scripts/scrub_paths.py --fix <files>.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
T0=$(date +%s)
[ $# -gt 0 ] || { echo "usage: bash scripts/gpu_reports.sh bench|study|validity|report ..." >&2; exit 2; }
for p in "$@"; do
  case "$p" in bench|study|validity|report) ;; *)
    echo "error: unknown part '$p'; accepted: bench, study, validity, report" >&2; exit 2;; esac
done

# ------------------------------------------------------------------------------------------------ set-up
SITE=${GT_SITE:-$(mktemp -d "${TMPDIR:-/tmp}/gt-site.XXXXXX")}
WHEELS=${GT_WHEELS:-.gpu-wheels}
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl \
    "$WHEELS"/test/*.whl 2>&1 | grep -v "as the 'root'"
fi
export PYTHONPATH="$SITE:.${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
  TRITON_CACHE_AUTOTUNING=1 PYTHONWARNINGS=ignore::UserWarning GROUNDTHINK_CACHE=${GROUNDTHINK_CACHE:-.gt-cache}
SMOKE=${GT_SMOKE:-$($PY -c "import torch; print(0 if torch.cuda.is_available() else 1)")}
SLUG=$($PY -c "from groundthink.device import gpu_slug; print(gpu_slug())")
RUN=${GT_RUN:-profiles/$SLUG/run4-$(date -u +%F)}
mkdir -p "$RUN/logs"
export GT_BENCH_OUT="$RUN"
echo "== gpu_reports $* -> $RUN (smoke=$SMOKE)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
$PY -c "from groundthink.device import versions; print('versions:', versions())"
FAILED=()
NAME=$(IFS=-; echo "$*")
if [ -n "${OUT:-}" ]; then   # a snapshot of the results folder every 20 s: a lease cut short still returns what was written
  ( while sleep 20; do tar -czf "$OUT/$NAME.partial.tgz" -C "$(dirname "$RUN")" "$(basename "$RUN")" 2>/dev/null; done ) &
  SNAP=$!
fi

# the tiny model of the smoke mode (a CPU runs each variant in seconds)
TINY=(--size tiny --override n_layer=2 --override d_model=32 --override head_size=16 --override headdim=16
      --override mix_lora=4 --override decay_lora=8 --override d_state=8 --override chunk_size=16)

run_part() {   # NAME CAP_S CMD...: the command under a hard cap, its output in $RUN/logs/NAME.log
  local name=$1 cap=$2; shift 2
  echo "== $name (cap ${cap} s): $*"
  local t=$(date +%s)
  timeout -s INT -k 10 "$cap" "$@" 2>&1 | tee "$RUN/logs/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $(( $(date +%s) - t )) s"
  [ "$rc" = 0 ] || FAILED+=("$name($rc)")
}

# ------------------------------------------------------------------------------------------------ parts
part_bench() {
  local k=${GT_BENCH_K-"not T16384 and not B4_T2048 and not B64_T256_H2_ and not (test_gate_norm_residual and (_add \
or vector or weights or res32 or D768 or D4096)) and (not test_train or GF-MH-small or GF-MH-tiny or peer-small)"}
  echo "== bench: skipped to fit (GT_BENCH_K): ${k:-nothing}; soft budget ${GT_BENCH_BUDGET_S:-420} s" \
       "(GT_BENCH_BUDGET_S), hard cap ${BENCH_S:-530} s (BENCH_S); fla's first call autotunes ~3 min"
  local args=(-m pytest bench/ --benchmark -q -rs -p no:cacheprovider)
  if $PY -c "import pytest_benchmark" 2>/dev/null; then
    args+=(--benchmark-json "$RUN/bench.json" --benchmark-columns=min,median,max,rounds --benchmark-sort=name)
  else
    echo "!! pytest-benchmark not installed (.gpu-wheels/test/): no bench.json; bench.csv and the manifest still"
  fi
  [ -n "$k" ] && args+=(-k "$k")
  export GT_BENCH_BUDGET_S=${GT_BENCH_BUDGET_S:-420}
  run_part bench "${BENCH_S:-530}" $PY "${args[@]}"
}

part_study() {
  local v=(--quick --out "$RUN") l=(--quick --out "$RUN")
  if [ "$SMOKE" = 0 ]; then
    v+=(--kernels triton); l+=(--kernels triton)
  else           # the interpreter runs a training step in ~20 s: the references (tests cover the kernels there)
    v+=(--kernels reference); l+=(--kernels reference)
    v+=(--steps 3 --batch-size 4 --seq-len 32 --eval-interval 2 --eval-iters 1 --variants GF-MH rwkv6 "${TINY[@]}")
    l+=(--steps 2 --contexts 64 16 --tokens-per-step 128 --eval-windows 4 --eval-interval 2 --eval-iters 1
        --variants GF-MH "${TINY[@]}")
  fi
  local vs=${VARIANTS_S:-250} ls=${LONGCTX_S:-160}
  run_part variants "$vs" $PY -m bench.variants "${v[@]}" --budget-s $(( vs > 80 ? vs - 40 : vs / 2 ))
  run_part long_context "$ls" $PY -m bench.long_context "${l[@]}" --budget-s $(( ls > 120 ? ls - 60 : ls / 2 ))
}

part_validity() {   # bench_train.run_validity at a batch the PyTorch reference (a Python loop per sequence) can afford
  local steps=${VALIDITY_STEPS:-30} size=small
  local extra="--batch-size ${VALIDITY_BATCH:-4} --seq-len 256 --eval-iters 2 --log-interval 1"
  if [ "$SMOKE" = 1 ]; then
    steps=3; size=tiny; extra="--batch-size 2 --seq-len 16 --eval-iters 1 --log-interval 1 ${TINY[*]:2}"
  fi
  run_part validity "${VALIDITY_S:-120}" $PY -c "from bench.bench_train import run_validity as r
res = r($steps, 'GF-MH', '$size', out='$RUN/validity', extra='--eval-interval $steps $extra'.split())
raise SystemExit(0 if res and all(isinstance(v, dict) for v in res.values()) else 1)"
}

part_report() {
  run_part report "${REPORT_S:-120}" $PY -m bench.report --dir "$RUN" --summary
}

for p in "$@"; do "part_$p"; done
case " $* " in *" report "*) ;; *)    # the report part prints it already
  echo "== summary"; $PY -c "from bench.report import summary; print(summary('$RUN'))" 2>&1 | tail -40;; esac

# ------------------------------------------------------------------------------------------------ results
if [ -n "${OUT:-}" ]; then
  kill "$SNAP" 2>/dev/null; wait "$SNAP" 2>/dev/null; rm -f "$OUT/$NAME.partial.tgz"
  tar -czf "$OUT/$NAME.tgz" -C "$(dirname "$RUN")" "$(basename "$RUN")" && echo "== results: \$OUT/$NAME.tgz"
fi
echo "== done in $(( $(date +%s) - T0 )) s; results in $RUN${FAILED[*]:+; FAILED: ${FAILED[*]}}"
[ "${#FAILED[@]}" = 0 ]
