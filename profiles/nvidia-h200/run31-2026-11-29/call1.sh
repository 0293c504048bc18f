# session 27 call 1 (prepared in session 26): every wkv6 GPU test at HEAD (the state kernels' dots of 2d134dd ran
# only 47 tests), then the output kernel at 2 stages and the dw span dots in two passes beside the default at the four spec shapes (per-kernel GPU us)
. <scratch>/common.sh
TRITON_CACHE_AUTOTUNING=0 timeout -s INT 300 python3 -m pytest tests/test_wkv6.py -m gpu -n 15 -q -rfE \
  -p no:cacheprovider 2>&1 | tee $OUT/tests.log | tail -6
echo "tests after $(el)"
export TRITON_CACHE_AUTOTUNING=1
WKV6_ALGOS=chunk_auto,chunk_par_s2,chunk_dwx2 WKV6_SHAPES=0,1,2,3 WKV6_CHECKS=0 timeout 250 \
  python3 -u scripts/gpu_wkv6.py --resources 2>&1 | tee $OUT/res.log | grep -A20 "summary"
echo "res after $(el)"
