# session 26 call 1 (prepared in session 25): the untimed candidates beside the default — per-kernel GPU us at
# B8 T4096 H32 and B4 T2048 H16, their GPU tests, then Nsight Compute on the cross kernel of the default and "dots"
. <scratch>/common.sh
export TRITON_CACHE_AUTOTUNING=1
WKV6_ALGOS=chunk_auto,chunk_xdots,chunk_xdots8,chunk_walk_s2 WKV6_SHAPES=0,1 WKV6_CHECKS=0 timeout 300 \
  python3 -u scripts/gpu_wkv6.py --resources 2>&1 | tee $OUT/res.log | grep -A10 "summary"
echo "res after $(el)"
TRITON_CACHE_AUTOTUNING=0 timeout -s INT 150 python3 -m pytest -q -p no:cacheprovider -n 8 -m gpu tests/test_wkv6.py \
  -k "cross_moves_as_dots or gpu_cross_configs" 2>&1 | tee $OUT/tests.log | tail -4
echo "tests after $(el)"
