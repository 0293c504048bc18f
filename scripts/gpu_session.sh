#!/usr/bin/env bash
# One short GPU lease, everything that the session's claims rest on, in one call (device tool: carry
# [".gpu-wheels"]; results come back as $OUT/session.tgz):
#   0. wheels: mamba-ssm, causal-conv1d (+ the selective_scan_cuda stand-in) into .gt-site; fla into .gt-fla,
#      kept off the training runs' path (so the gate's first-use qualification does not spend minutes in fla's
#      autotuning) and used only by the wkv6 timing; fla's warm-up (its autotuning) runs in the background
#      while the GPU tests run;
#   1. GPU tests of every lab kernel and the captured step (pytest -m gpu);
#   2. a newcomer's default run: train.py with no kernel flag (auto -> gate on first use, CUDA graph);
#   3. the training-step headline: train.py --kernels triton (graph, profile window: busy %, launches/step);
#   4. wkv6 vs fla chunk_rwkv6, same process: do_bench medians at WKV6_SHAPES (scripts/gpu_wkv6.py).
# Every step has its own time cap (seconds: TESTS_S, AUTO_S, TRITON_S, WKV6_S). Relative paths only.
set -uo pipefail
cd "$(dirname "$0")/.."
R=${OUT:-.gt-out}/session; mkdir -p "$R"
PIP=(python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir)
"${PIP[@]}" --target .gt-site .gpu-wheels/mamba*.whl .gpu-wheels/causal*.whl .gpu-wheels/selective*.whl \
  .gpu-wheels/test/*.whl 2>&1 | grep -v "as the 'root'"
"${PIP[@]}" --target .gt-fla .gpu-wheels/fla*.whl .gpu-wheels/flash*.whl 2>&1 | grep -v "as the 'root'"
export PYTHONPATH=.gt-site:. PYTHONUNBUFFERED=1 TRITON_CACHE_AUTOTUNING=1 GROUNDTHINK_CACHE=.gt-cache \
  PYTHONWARNINGS=ignore::UserWarning
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
FLA="PYTHONPATH=.gt-site:.gt-fla:. WKV6_SHAPES=${WKV6_SHAPES:-0,2}"
timeout "${WARM_S:-300}" env $FLA python3 scripts/gpu_wkv6.py --warm-fla > "$R/fla_warm.log" 2>&1 &
echo "== 1. GPU tests"
timeout -s INT "${TESTS_S:-150}" python3 -m pytest -m gpu -q -rs -p no:cacheprovider --durations=6 \
  tests/test_wkv6.py tests/test_step.py tests/test_norm_gate.py tests/test_ddlerp.py tests/test_decay_exp.py \
  tests/test_gate_norm_residual.py 2>&1 | tee "$R/gpu_tests.log" | tail -25
echo "== 2. default run (python train.py: --kernels auto, gate on first use)"
timeout "${AUTO_S:-150}" python3 train.py --steps 100 --eval-interval 100 --eval-iters 2 --log-interval 20 \
  --ckpt-interval 1000 --sample-tokens 80 --profile-steps 0 --no-progress --out-dir .ck-auto 2>&1 \
  | tee "$R/train_auto.log" | tail -30
cp .gt-cache/*/gates.json "$R/gates_first_use.json" 2>/dev/null
wait
echo "== 3. training step: --kernels triton, CUDA graph, profile window"
timeout "${TRITON_S:-120}" python3 train.py --kernels triton --steps 300 --eval-interval 300 --eval-iters 4 \
  --log-interval 50 --ckpt-interval 1000 --sample-tokens 0 --no-progress --out-dir .ck-tri 2>&1 \
  | tee "$R/train_triton.log" | tail -12
cp .ck-tri/*/log_*.jsonl "$R/train_triton.jsonl" 2>/dev/null
echo "== 4. wkv6 vs fla"
env $FLA WKV6_CHECKS=0 WKV6_ALGOS=chunk_seq,chunk_par,fused WKV6_BUDGET_S=5 timeout "${WKV6_S:-150}" \
  python3 scripts/gpu_wkv6.py 2>&1 | tee "$R/wkv6_vs_fla.log" | tail -8
tail -4 "$R/fla_warm.log"
tar -czf "${OUT:-.gt-out}/session.tgz" -C "$(dirname "$R")" session
