#!/usr/bin/env bash
# The training-step evidence on one GPU (issue 10), in one go:
#   1. the GPU test of the captured step (tests/test_step.py -m gpu);
#   2. the step table, ours: GF-MH --kernels triton, eager vs CUDA graph, small and large (bench/bench_train.py);
#   3. a short train.py run (graph auto, profile window): its summary line;
#   4. the step table, peer (fla RWKV6Attention ∥ mamba-ssm Mamba2), capped at PEER_S seconds (its first steps
#      autotune fla for minutes on a cold machine).
# Usage: scripts/gpu_step.sh OUT_DIR   (train_step.csv, step_profile.csv, train_run.jsonl land there).
# Cold machine: ~3 min of compiling/autotuning for ours (small + large), several minutes for the peer (fla).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:?usage: scripts/gpu_step.sh OUT_DIR}
mkdir -p "$OUT_DIR"
CK=.gpu-step-ck            # relative: no machine path in the committed log
export PYTHONWARNINGS=ignore::UserWarning
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "from groundthink.device import versions; print(versions())"
echo "== 1. captured-step GPU test"
timeout "${TEST_S:-90}" python3 -m pytest tests/test_step.py -q -m gpu -p no:cacheprovider
echo "== 2. step table: ours"
timeout "${OURS_S:-300}" python3 -m bench.bench_train --step-table ours --out "$OUT_DIR"
echo "== 3. train.py (GF-MH small, --kernels triton, 60 steps)"
timeout "${TRAIN_S:-90}" python3 train.py --kernels triton --steps 60 --log-interval 10 --eval-interval 60 \
  --eval-iters 2 --ckpt-interval 1000 --sample-tokens 0 --no-progress --out-dir "$CK" && cp "$CK"/log_GF-MH.jsonl \
  "$OUT_DIR/train_run.jsonl"
rm -rf "$CK"
echo "== 4. step table: peer (capped at ${PEER_S:-420} s)"
timeout "${PEER_S:-420}" python3 -m bench.bench_train --step-table peer --out "$OUT_DIR" \
  || echo "peer rows stopped by the ${PEER_S:-420} s cap (fla/mamba-ssm autotuning on a cold machine)"
echo "== table"
cut -d, -f2-14 "$OUT_DIR/train_step.csv"
