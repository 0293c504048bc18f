# session 26 call 6: the chunk-parallel output kernel's (and the 16-row scored walk's) decay sums as dots: GPU us at
# B4 T2048 H16 and B1 T16384 H32 before (3095814's chunk.py) and after, then the GPU tests of the scored forward
. <scratch>/common.sh
export TRITON_CACHE_AUTOTUNING=1
for v in old new; do
  cp <scratch>/chunk_$v.py kernels/wkv6/chunk.py
  WKV6_ALGOS=chunk_auto WKV6_SHAPES=1,3 WKV6_CHECKS=0 timeout 150 python3 -u scripts/gpu_wkv6.py --resources 2>&1 \
    | tee $OUT/res_$v.log | grep -A3 "summary" | tail -2
  echo "$v after $(el)"
done
TRITON_CACHE_AUTOTUNING=0 timeout -s INT 240 python3 -m pytest -q -p no:cacheprovider -n 15 -m gpu tests/test_wkv6.py \
  -k "scores or fwd_step or chunk_knobs or large_bf16 or gpu_cases" -rfE 2>&1 | tee $OUT/tests.log | tail -5
echo "tests after $(el)"
