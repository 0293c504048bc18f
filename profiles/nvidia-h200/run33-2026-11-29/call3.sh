# session 29 call 3: the new default (the backward's D_c in one kernel where S_c is saved and T <= 4096; one
# config) — first call on a cold cache, every wkv6 GPU test, then the bf16 gradient errors over many draws (dw's
# failure in call 2: 2.0e-3 at B1 T300 H3 K60 V100 strong)
. <scratch>/common.sh
TRITON_CACHE_DIR=/tmp/tc-first timeout 120 python3 scripts/gpu_wkv6.py --first-call 2>&1 | tee $OUT/first_call.log | tail -2
echo "first call after $(el)"
export TRITON_CACHE_AUTOTUNING=1
TRITON_CACHE_AUTOTUNING=0 timeout 330 python3 -m pytest tests/test_wkv6.py -m gpu -n 15 -q -rfE \
  -p no:cacheprovider 2>&1 | tee $OUT/tests.log | tail -4
echo "tests after $(el)"
timeout -s INT $(( 585 - $(date +%s) + T0 )) python3 -u <scratch>/dw_study.py 2>&1 | tee $OUT/dw_study.log
echo "study after $(el)"
