#!/usr/bin/env bash
# THE GPU entry point of the lab (issues 12 and 13): thin parts over tests/, train.py, bench/ and the two dev
# scripts, each under its own time cap, all writing into ONE results folder $RUN as they go
# (default profiles/<gpu>/run-<UTC date>-<HHMM>/; GT_RUN names one, relative to the repository):
#
#   bash scripts/gpu_reports.sh first-use step bench   # a short lease: a newcomer's first run, the step, the bench
#   bash scripts/gpu_reports.sh tests wkv6             # the GPU tests; wkv6's compile report and per-kernel times
#   bash scripts/gpu_reports.sh study validity         # variant study + long context, kernels vs references
#   bash scripts/gpu_reports.sh ddp                    # two GPUs (device kind nvidia-h100-x2)
#   GT_RUN=profiles/<gpu>/run-... bash scripts/gpu_reports.sh report   # anywhere, a CPU is enough
#
# Parts (any subset, run in the order given; caps in seconds, each an environment knob):
#   tests      pytest tests -m gpu (GT_TESTS: files, default tests; GT_TESTS_K: -k filter) ≤ TESTS_S = 150;
#              $RUN/tests.xml (JUnit). Needs CUDA. With pytest-xdist installed: GT_TEST_JOBS processes
#              (default: the cores less one; 1: one), their autotune picks kept out of the disk cache; the wkv6 part's checks likewise.
#   first-use  a newcomer's `python3 train.py --no-progress` on this machine: a fresh, empty GROUNDTHINK_CACHE, so
#              the gate qualifies the lab kernels first (its per-item lines), then "first step launched" and the
#              summary; FIRST_USE_STEPS = 100 steps, ≤ FIRST_USE_S = 240. fla stays off its path (as for a user
#              without the peers: its minutes of autotuning would be the gate's; GT_FIRST_USE_FLA=1 puts it on).
#              $RUN/first_use.jsonl, $RUN/first_use_gates.json (the verdicts it wrote).
#   step       train.py --kernels triton, CUDA graph, profile window, at small (64 × 256) and large (16 × 1024):
#              summary line (tok/s, ms/step, peak, busy %, launches) and GPU time per step by op; STEP_STEPS =
#              100 steps each, ≤ STEP_SMALL_S = 150 and STEP_LARGE_S = 240; $RUN/step_<size>.jsonl.
#              STEP_KERNELS="triton auto" also runs each size with --kernels auto (the default path: the gate's
#              choice per op, e.g. mamba-ssm's scan where it wins): $RUN/step_<size>_auto.jsonl; an entry
#              kernels:size runs one size ("triton auto:large"); none: no train.py runs (STEP_TABLE's rows alone).
#              STEP_SIZES (default "small large"): the sizes of entries without one, e.g. STEP_SIZES=small.
#              STEP_TABLE="ours peer" adds python -m bench.bench_train --step-table (eager vs graph, the fla ∥
#              mamba-ssm peer model) ≤ STEP_TABLE_S = 300 each: $RUN/train_step.csv, $RUN/step_profile.csv;
#              STEP_TABLE_SIZES=large: its large rows only (fla's autotuning at two sizes overran 300 s once).
#   wkv6       scripts/gpu_wkv6.py --resources: compile report (registers, spills, shared memory), per-kernel GPU
#              time and do_bench table of WKV6_ALGOS (default chunk_seq,chunk_par = the default chunk algorithm's
#              two forward modes) at WKV6_SHAPES (default 0,4,5:
#              B8 T4096 H32 and the small and large models' shapes), then WKV6_CHECKS = 1: the wkv6 GPU tests
#              selected by WKV6_TESTS_K (default "gpu_cases and bf16_strong": the default knobs' two forward modes
#              vs fp64, bf16 — a knob variant named in WKV6_ALGOS is timed, not checked, unless WKV6_TESTS_K adds
#              e.g. "or chunk_knobs and bfloat16"; "" = all of tests/test_wkv6.py -m gpu, which the tests part runs
#              anyway: with tests in the same call, WKV6_CHECKS=0 saves the repeat); ≤ WKV6_S = 300. Without CUDA:
#              its WKV6_SMOKE mode (interpreter, tiny shapes; no checks).
#   ddp        scripts/gpu_ddp.sh (large GF-MH step on 1 and 2 GPUs, same global batch: losses, scaling)
#              ≤ DDP_S = 480 -> $RUN/ddp/. Needs 2 GPUs: says so and skips otherwise.
#   bench      pytest bench/ --benchmark (kernels vs the reference, fla, mamba-ssm, causal-conv1d, torch.compile;
#              training rows; the gate manifest $RUN/gates.json; pytest-benchmark's $RUN/bench.json).
#              TO FIT ≤ 10 MIN ON A COLD MACHINE IT SKIPS (said again when it starts):
#                * wkv6 at B1 T16384 H32, B4 T2048 H16 and B64 T256 H2 (the PyTorch reference loops in Python:
#                  ~20-40 s a row); kept: B8 T4096 H32 (the headline) and the models' own B64 T256 H4 K32 and
#                  B16 T1024 H8 (every lab kernel, fla chunk and fla recurrent)
#                * gate_norm_residual's add / vector / weights / res32 modes and D768 / D4096 rows; kept: N32768
#                  D2048 row and element, the models' N16384 D128 and D512 rows (peers at the row shapes)
#                * training rows other than GF-MH small (ours eager, ours CUDA graph, the reference) and the peer
#                  model at small — the variant study measures every variant's speed
#                * whatever the soft budget GT_BENCH_BUDGET_S (default 420 s) has not started: rows run in
#                  the order of bench/conftest.py (every op's reference and first lab kernel; the peers; the
#                  other lab kernels; wkv6 first within each; then training) and a skipped row says so; the
#                  hard cap BENCH_S (default 530 s) interrupts pytest, which still writes bench.csv (rewritten
#                  after every row) and the manifest
#              Raise it: GT_BENCH_K="" (no shape/row filter), GT_BENCH_BUDGET_S=0 (no soft budget), BENCH_S=3000,
#              GT_BENCH_QUICK=0 (every variant, shape and peer, more repetitions). fla's first call autotunes
#              for ~3 min (later shapes ~40 s); its cost is in each row's warmup_s column.
#   study      python -m bench.variants --quick --kernels triton (every variant, 200 steps at small, ≤ VARIANTS_S
#              = 250 s: --budget-s starts no variant after VARIANTS_S − 40 s; re-running with the same GT_RUN
#              resumes with the rest; STUDY_FULL=1: the full study, 1,000 steps a variant at batch 8, ~300 s on an
#              H100 — raise VARIANTS_S), then python -m bench.long_context --quick --kernels triton (GF-MH, rwkv6,
#              mamba2 at 8192 and 1024 characters, ≤ LONGCTX_S = 160 s, no new run after 100 s, same resume rule)
#   validity   python -m bench.bench_train --validity: train.py GF-MH small, same seed, data and schedule, four
#              runs: --kernels triton, --kernels reference, and two noise floors of the reference path:
#              reference-reordered (its Mamba-2 scan summed in chunks of 128 instead of 64: same function, other
#              roundings) and reference-bf16init (its seeded weights rounded to bf16 precision); VALIDITY_STEPS =
#              30 steps of VALIDITY_BATCH = 4 × 256 characters, loss logged every step, no profile window.
#              Prints the verdict: lab vs reference at every logged step ≤ max(1 %, floor), and which one
#              decided (exit 1 when it fails or a run failed). The reference steps run as CUDA graphs (~0.1-0.2 s
#              a step expected; ~2.4 s eager): ~90 s in all expected, ≤ VALIDITY_S = 240 (a floor run may be
#              cut if the captures fall back to eager; the verdict then uses the steps it logged)
#   report     python -m bench.report --dir $RUN: report.md with every kernel beside its peers, the variant
#              ranking, long context, validity, pytest-benchmark's table; plots and CSVs next to it
#
# Every part logs to $RUN/logs/<part>.log while it runs and writes its results into $RUN; machine paths are
# scrubbed from $RUN's text files after each part (scripts/scrub_paths.py --fix). Smoke mode (GT_SMOKE=1, or
# automatically without CUDA): the same commands at tiny sizes on a CPU, to check the plumbing (results in
# profiles/cpu/..., git-ignored; every figure labelled NOT A PERFORMANCE MEASUREMENT; tests and ddp say what
# they need and skip).
#
# Device tool: carry [".gpu-wheels"] (fla, mamba-ssm, causal-conv1d, the selective_scan_cuda stand-in; test/:
# pytest, pytest-benchmark, hypothesis, optionally pytest-xdist + execnet); the wheels go into a temporary site
# folder (fla into one of its own).
# Everything the parts wrote comes back as ONE archive $OUT/<parts>.tgz (the results folder with logs/; while
# the parts run, a snapshot $OUT/<parts>.partial.tgz every 20 s and after every part, so a lease cut short —
# the device limit can shrink below the requested timeout — still returns what was written); the last lines
# printed are a short table.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
T0=$(date +%s)
PARTS="tests first-use step wkv6 ddp bench study validity report"
[ $# -gt 0 ] || { echo "usage: bash scripts/gpu_reports.sh PART ... (parts: ${PARTS// /, })" >&2; exit 2; }
for p in "$@"; do
  case " $PARTS " in *" $p "*) ;; *) echo "error: unknown part '$p'; accepted: ${PARTS// /, }" >&2; exit 2;; esac
done

# ------------------------------------------------------------------------------------------------ set-up
SITE=${GT_SITE:-$(mktemp -d "${TMPDIR:-/tmp}/gt-site.XXXXXX")}
SITE_FLA="$SITE/fla-site"          # fla apart: on the path of the parts that time it, off a newcomer's first use
WHEELS=${GT_WHEELS:-.gpu-wheels}
PIP=($PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir)
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  OTHER=(); for w in "$WHEELS"/*.whl; do case "${w##*/}" in fla*|flash*) ;; *) OTHER+=("$w");; esac; done
  "${PIP[@]}" --target "$SITE" "${OTHER[@]}" "$WHEELS"/test/*.whl 2>&1 | grep -v "as the 'root'"
  ls "$WHEELS"/fla*.whl "$WHEELS"/flash*.whl >/dev/null 2>&1 &&
    "${PIP[@]}" --target "$SITE_FLA" "$WHEELS"/fla*.whl "$WHEELS"/flash*.whl 2>&1 | grep -v "as the 'root'"
fi
BASE_PATH="$SITE:.${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH="$SITE_FLA:$BASE_PATH" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
  TRITON_CACHE_AUTOTUNING=1 PYTHONWARNINGS=ignore::UserWarning GROUNDTHINK_CACHE=${GROUNDTHINK_CACHE:-.gt-cache}
SMOKE=${GT_SMOKE:-$($PY -c "import torch; print(0 if torch.cuda.is_available() else 1)")}
SLUG=$($PY -c "from groundthink.device import gpu_slug; print(gpu_slug())")
RUN=${GT_RUN:-profiles/$SLUG/run-$(date -u +%F-%H%M)}
if [ "${GT_BENCH_MERGE:-0}" = 1 ] && [[ " $* " == *" bench "* ]] && [ ! -e "$RUN/bench.csv" ]; then
  # run 18: a merge call on a device machine found no earlier rows (the device copies the checkout: unpack the
  # earlier call's archive into it first) and its partial bench replaced the folder's rows
  echo "error: GT_BENCH_MERGE=1 but $RUN/bench.csv does not exist: nothing to merge with; unpack the earlier" \
       "call's archive into $RUN first (accepted: GT_BENCH_MERGE=1 with an existing bench.csv, or GT_BENCH_MERGE=0)" >&2
  exit 2
fi
SCRATCH=.gt-scratch   # checkpoints and caches that are no result (relative: no machine path in the logs)
rm -rf "$SCRATCH"; mkdir -p "$SCRATCH" "$RUN/logs"
export GT_BENCH_OUT="$RUN"
echo "== gpu_reports $* -> $RUN (smoke=$SMOKE)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
$PY -c "from groundthink.device import versions; print('versions:', versions())"
FAILED=() TABLE=()
# the GPU tests in GT_TEST_JOBS processes (default: the cores less one) when pytest-xdist is installed
# (.gpu-wheels/test/): their kernels compile on the machine's cores side by side (run 25: 22 of wkv6's 101 GPU tests
# in 290 s, one process; run 27: all 183 GPU tests in 276 s, 15 processes on 16 cores, Triton's cache 90 % warm);
# their autotuning, contended, is not written to the disk cache (the timings after them autotune alone)
TEST_JOBS=() TEST_ENV=() JOBS=${GT_TEST_JOBS:-$(( $(nproc) > 2 ? $(nproc) - 1 : 2 ))}
if [ "$JOBS" -gt 1 ] && $PY -c "import xdist" 2>/dev/null; then
  TEST_JOBS=(-n "$JOBS") TEST_ENV=(TRITON_CACHE_AUTOTUNING=0)
fi
export WKV6_TEST_JOBS=${WKV6_TEST_JOBS:-${TEST_JOBS[1]:-1}}
NAME=$(IFS=-; echo "$*")

snapshot() {   # the results folder into $OUT (written aside, then renamed: a cut never leaves half an archive)
  [ -n "${OUT:-}" ] || return 0
  tar -czf "$OUT/$NAME.partial.tgz.tmp" -C "$(dirname "$RUN")" "$(basename "$RUN")" 2>/dev/null &&
    mv -f "$OUT/$NAME.partial.tgz.tmp" "$OUT/$NAME.partial.tgz"
}
if [ -n "${OUT:-}" ]; then   # every 20 s: a lease cut short still returns what was written
  ( while sleep 20 && kill -0 $$ 2>/dev/null; do snapshot; done ) &   # ends with this script, however it ends
  SNAP=$!
fi

# the tiny model of the smoke mode (a CPU runs each variant in seconds)
TINY=(--size tiny --override n_layer=2 --override d_model=32 --override head_size=16 --override headdim=16
      --override mix_lora=4 --override decay_lora=8 --override d_state=8 --override chunk_size=16)
# train.py without checkpoints, samples or progress bar (the parts read its summary and its JSONL log)
QUIET=(--no-progress --ckpt-interval 1000000 --sample-tokens 0)

run_part() {   # NAME CAP_S CMD...: the command under a hard cap, its output in $RUN/logs/NAME.log
  local name=$1 cap=$2; shift 2
  echo "== $name (cap ${cap} s): $*"
  local t=$(date +%s)
  timeout -s INT -k 10 "$cap" "$@" 2>&1 | tee "$RUN/logs/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $(( $(date +%s) - t )) s"
  TABLE+=("$(printf '%-16s exit %-4s %5s s' "$name" "$rc" "$(( $(date +%s) - t ))")")
  [ "$rc" = 0 ] || FAILED+=("$name($rc)")
  find "$RUN" -type f \( -name '*.log' -o -name '*.jsonl' -o -name '*.json' -o -name '*.csv' -o -name '*.md' \
    -o -name '*.xml' \) -exec $PY scripts/scrub_paths.py --fix {} + >/dev/null
  snapshot
}

skip_part() {  # NAME WHY: a part that cannot run here says so (in its log too)
  echo "== $1: skipped: $2" | tee "$RUN/logs/$1.log"
  TABLE+=("$(printf '%-16s skipped: %s' "$1" "$2")")
}

# ------------------------------------------------------------------------------------------------ parts
part_tests() {
  [ "$SMOKE" = 0 ] || { skip_part tests "needs CUDA (the GPU tests are @pytest.mark.gpu)"; return; }
  # shellcheck disable=SC2086   # GT_TESTS is a list of files
  run_part tests "${TESTS_S:-150}" env "${TEST_ENV[@]}" $PY -m pytest ${GT_TESTS:-tests} -m gpu -q -rs \
    -p no:cacheprovider --durations=8 --junitxml "$RUN/tests.xml" "${TEST_JOBS[@]}" ${GT_TESTS_K:+-k "$GT_TESTS_K"}
}

part_first-use() {
  local cache=$SCRATCH/first-use-cache args=(--steps "${FIRST_USE_STEPS:-100}" --eval-iters 2)
  [ "$SMOKE" = 1 ] && args=(--steps 3 --batch-size 2 --seq-len 16 --eval-interval 3 --eval-iters 1 "${TINY[@]}")
  local path=$BASE_PATH
  [ "${GT_FIRST_USE_FLA:-0}" = 1 ] && path=$PYTHONPATH
  echo "== first-use: empty GROUNDTHINK_CACHE; fla on the path: ${GT_FIRST_USE_FLA:-0} (GT_FIRST_USE_FLA)"
  run_part first-use "${FIRST_USE_S:-240}" env PYTHONPATH="$path" GROUNDTHINK_CACHE="$cache" $PY train.py \
    "${QUIET[@]}" "${args[@]}" --out-dir "$SCRATCH/ck-first-use" --log "$RUN/first_use.jsonl"
  cp "$cache"/*/gates.json "$RUN/first_use_gates.json" 2>/dev/null || echo "(first-use wrote no gate verdicts)"
}

part_step() {
  local size shape cap kern tag steps=${STEP_STEPS:-100}
  local entry sizes
  for entry in ${STEP_KERNELS:-triton}; do
  [ "$entry" = none ] && break       # STEP_KERNELS=none: the step table alone
  kern=${entry%%:*}; sizes=${STEP_SIZES:-small large}; [ "$entry" = "$kern" ] || sizes=${entry#*:}   # auto:large = large only
  for size in $sizes; do
    tag=$size; [ "$kern" = triton ] || tag=${size}_$kern     # step_small.jsonl (triton), step_large_auto.jsonl, ...
    if [ "$SMOKE" = 1 ]; then   # the interpreter runs a training step in ~20 s: the references, tiny model
      shape=(--kernels reference --steps 3 --batch-size 2 --seq-len 16 --eval-interval 3 --eval-iters 1 "${TINY[@]}")
    elif [ $size = small ]; then shape=(--kernels "$kern" --size small --batch-size 64 --seq-len 256)
    else shape=(--kernels "$kern" --size large --batch-size 16 --seq-len 1024); fi
    [ "$SMOKE" = 1 ] || shape+=(--steps "$steps" --eval-interval "$steps" --eval-iters 2 --log-interval 10)
    cap=${STEP_SMALL_S:-150}; [ $size = large ] && cap=${STEP_LARGE_S:-240}   # large: cold compiles at its shapes
    run_part "step-$tag" "$cap" $PY train.py "${QUIET[@]}" "${shape[@]}" \
      --out-dir "$SCRATCH/ck-step-$tag" --log "$RUN/step_$tag.jsonl"
    # the verdicts this run chose by (a --kernels auto run's per-machine manifest), beside its log
    if [ "$kern" = auto ]; then cp "${GROUNDTHINK_CACHE:-.gt-cache}"/*/gates.json "$RUN/step_${tag}_gates.json" 2>/dev/null; fi
  done
  [ "$SMOKE" = 1 ] && break
  done
  [ -z "${STEP_TABLE:-}" ] || [ "$SMOKE" = 0 ] || { skip_part step-table "STEP_TABLE needs CUDA"; return; }
  for who in ${STEP_TABLE:-}; do
    run_part "step-table-$who" "${STEP_TABLE_S:-300}" $PY -m bench.bench_train --step-table "$who" --out "$RUN" \
      --step-sizes "${STEP_TABLE_SIZES:-small,large}"
  done
}

part_wkv6() {   # WKV6_ALGOS from the environment wins
  local algos=chunk_seq,chunk_par shapes=0,4,5
  [ "$SMOKE" = 1 ] && shapes=0    # its smoke shapes: one tiny one
  run_part wkv6 "${WKV6_S:-300}" env WKV6_ALGOS="${WKV6_ALGOS:-$algos}" WKV6_SHAPES="${WKV6_SHAPES-$shapes}" \
    WKV6_CHECKS="${WKV6_CHECKS:-1}" WKV6_TESTS_K="${WKV6_TESTS_K-gpu_cases and bf16_strong}" WKV6_SMOKE="$SMOKE" \
    $PY scripts/gpu_wkv6.py --resources
}

part_ddp() {
  local n
  n=$($PY -c "import torch; print(torch.cuda.device_count())")
  [ "$SMOKE" = 0 ] || { skip_part ddp "needs 2 GPUs (smoke mode)"; return; }
  [ "$n" -ge 2 ] || { skip_part ddp "needs 2 GPUs, this machine has $n"; return; }
  run_part ddp "${DDP_S:-480}" env GT_DDP_OUT="$RUN/ddp" GT_SITE="$SITE" bash scripts/gpu_ddp.sh
}

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
  if [ "${GT_BENCH_MERGE:-0}" = 1 ]; then   # keep the earlier call's pytest-benchmark file and log (the report reads all)
    local n=1; while [ -e "$RUN/bench-$n.json" ] || [ -e "$RUN/logs/bench-$n.log" ]; do n=$((n + 1)); done
    [ -e "$RUN/bench.json" ] && mv "$RUN/bench.json" "$RUN/bench-$n.json"
    [ -e "$RUN/logs/bench.log" ] && mv "$RUN/logs/bench.log" "$RUN/logs/bench-$n.log"
  fi
  run_part bench "${BENCH_S:-530}" $PY "${args[@]}"
}

part_study() {
  local v=(--out "$RUN") l=(--quick --out "$RUN")
  [ "${STUDY_FULL:-0}" = 1 ] || v+=(--quick)   # STUDY_FULL=1: the full study (1,000 steps a variant, issue 12)
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

part_validity() {   # bench_train --validity: the lab, the reference and two noise floors of the reference
  local steps=${VALIDITY_STEPS:-30} size=small
  local extra="--batch-size ${VALIDITY_BATCH:-4} --seq-len 256 --eval-iters 2 --log-interval 1 --eval-interval $steps"
  if [ "$SMOKE" = 1 ]; then   # one interpreter run of the lab kernels (~1-2 min), the references in seconds
    steps=3; size=tiny
    extra="--batch-size 2 --seq-len 16 --eval-iters 1 --log-interval 1 --eval-interval 3 ${TINY[*]:2}"
  fi
  run_part validity "${VALIDITY_S:-240}" $PY -m bench.bench_train --validity --steps $steps --ref-steps 0 \
    --model GF-MH --size $size --out "$RUN/validity" --extra "$extra"
}

part_report() {
  run_part report "${REPORT_S:-120}" $PY -m bench.report --dir "$RUN" --summary
}

for p in "$@"; do "part_$p"; done
case " $* " in *" report "*|*" bench "*|*" study "*|*" validity "*)
  case " $* " in *" report "*) ;; *)    # the report part prints it already
    echo "== summary"; $PY -c "from bench.report import summary; print(summary('$RUN'))" 2>&1 | tail -40;; esac;;
esac

# ------------------------------------------------------------------------------------------------ results
if [ -n "${OUT:-}" ]; then
  kill "$SNAP" 2>/dev/null; wait "$SNAP" 2>/dev/null; rm -f "$OUT/$NAME.partial.tgz" "$OUT/$NAME.partial.tgz.tmp"
  tar -czf "$OUT/$NAME.tgz" -C "$(dirname "$RUN")" "$(basename "$RUN")" && echo "== results: \$OUT/$NAME.tgz"
fi
rm -rf "$SCRATCH"
echo "== headlines"
for f in "$RUN"/logs/{tests,first-use,step-small,step-large}.log; do
  [ -f "$f" ] && grep -e "first step launched" -e "^summary:" -e "GPU time per step by op" -e " passed\| failed" \
    "$f" | sed "s/^/$(basename "$f" .log): /" | cut -c1-220
done
echo "== parts"
printf '%s\n' "${TABLE[@]}"
echo "== done in $(( $(date +%s) - T0 )) s; results in $RUN${FAILED[*]:+; FAILED: ${FAILED[*]}}"
[ "${#FAILED[@]}" = 0 ]
