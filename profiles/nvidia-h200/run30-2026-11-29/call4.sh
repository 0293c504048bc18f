# session 26 call 4: the decay-sum dots and the 2-stage walk as the default: the first call at B8 T4096 H32 on a
# cold cache, then every wkv6 GPU test
. <scratch>/common.sh
TRITON_CACHE_DIR=$(mktemp -d) timeout 120 python3 -u scripts/gpu_wkv6.py --first-call 2>&1 | tee $OUT/first_call.log | tail -2
echo "first call after $(el)"
TRITON_CACHE_AUTOTUNING=0 timeout -s INT 420 python3 -m pytest tests/test_wkv6.py tests/test_dot.py tests/test_launch.py \
  -m gpu -n 15 -q -rfE -p no:cacheprovider --durations=8 2>&1 | tee $OUT/tests.log | tail -14
echo "done after $(el)"
