# session 28 call 4: every wkv6 GPU test at the new default; then the scored walk below T = 1024 at the small
# model's shape (4) and B64 T256 H2 (2) against the level walks it replaced (chunk_walk1: one level walk kernel;
# chunk_split: the split level walk), per-kernel GPU us
. .gt-scratch/s28/common.sh
TRITON_CACHE_AUTOTUNING=0 timeout -s INT 240 python3 -m pytest tests/test_wkv6.py -m gpu -n 15 -q -rfE \
  -p no:cacheprovider 2>&1 | tee $OUT/tests.log | tail -4
echo "tests after $(el)"
export TRITON_CACHE_AUTOTUNING=1
WKV6_ALGOS=chunk_auto,chunk_walk1,chunk_split WKV6_SHAPES=4,2 WKV6_CHECKS=0 timeout -s INT $(( 420 - $(date +%s) + T0 )) \
  python3 -u scripts/gpu_wkv6.py --resources 2>&1 | tee $OUT/res.log | grep -A8 "summary"
echo "res after $(el)"
