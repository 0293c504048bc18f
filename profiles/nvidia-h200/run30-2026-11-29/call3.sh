# session 26 call 3: the decay sums as dots (decay_sums "dots") and the walk at 2 stages beside the default:
# per-kernel GPU us at the four spec shapes, then the GPU tests of the dots path and of the step walk
. <scratch>/common.sh
export TRITON_CACHE_AUTOTUNING=1
WKV6_ALGOS=chunk_auto,chunk_sumdots,chunk_walk_s2,chunk_sumdots_s2 WKV6_SHAPES=0,1,2,3 WKV6_CHECKS=0 timeout 330 \
  python3 -u scripts/gpu_wkv6.py --resources 2>&1 | tee $OUT/res.log | grep -A20 "summary"
echo "res after $(el)"
TRITON_CACHE_AUTOTUNING=0 timeout -s INT 200 python3 -m pytest -q -p no:cacheprovider -n 8 -m gpu tests/test_wkv6.py \
  -k "decay_sums_as_dots or fwd_step" -rfE 2>&1 | tee $OUT/tests.log | tail -6
echo "tests after $(el)"
