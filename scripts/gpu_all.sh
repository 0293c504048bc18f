#!/usr/bin/env bash
# Everything the lab checks on a GPU, in one call (for a time-limited GPU lease):
#   1. the test wheels (.gpu-wheels/test: pytest, pytest-benchmark, hypothesis) when the machine lacks them;
#   2. the GPU tests: pytest tests -m gpu [-k $GT_TESTS_K]  -> profiles/<gpu>/gpu_tests.log;
#   3. the benchmarks, manifest and report: scripts/gpu_bench.sh (arguments pass through).
# With the device tool: carry [".gpu-wheels"]; results come back as $OUT/profiles-<gpu>.tgz.
# Wheels go to $GT_SITE (default: a fresh temporary folder; exported, so gpu_bench.sh uses the same one).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export GT_SITE=${GT_SITE:-$(mktemp -d "${TMPDIR:-/tmp}/groundthink-site.XXXXXX")}
if ls .gpu-wheels/test/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$GT_SITE" --upgrade \
    .gpu-wheels/test/*.whl 2>&1 | grep -v "Running pip as the 'root'"
fi
export PYTHONPATH="$GT_SITE:$(pwd)${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
SLUG=$($PY -c "from groundthink.device import gpu_slug; print(gpu_slug())")
mkdir -p "profiles/$SLUG"
echo "== GPU tests (pytest tests -m gpu)"
timeout -s INT -k 20 "${GT_TESTS_TIMEOUT:-150}" $PY -m pytest tests -m gpu -q -rs -p no:cacheprovider \
  --durations=8 ${GT_TESTS_K:+-k "$GT_TESTS_K"} 2>&1 | tee "profiles/$SLUG/gpu_tests.log"
bash scripts/gpu_bench.sh "$@"
