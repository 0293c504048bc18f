# session 26 call 7: the state kernels' decay sums as dots (_chunk_state_kernel, _fwd_states_kernel): GPU us before
# (5093dde's states.py) and after at B8 T4096 H32, B4 T2048 H16, B1 T16384 H32; then GPU tests of the state passes
. <scratch>/common.sh
export TRITON_CACHE_AUTOTUNING=1
for v in old new; do
  cp <scratch>/states_$v.py kernels/wkv6/states.py
  WKV6_ALGOS=chunk_auto WKV6_SHAPES=0,1,3 WKV6_CHECKS=0 timeout 75 python3 -u scripts/gpu_wkv6.py --resources 2>&1 \
    | tee $OUT/res_$v.log | grep -A4 "summary" | tail -3
  echo "$v after $(el)"
done
TRITON_CACHE_AUTOTUNING=0 timeout -s INT 100 python3 -m pytest -q -p no:cacheprovider -n 15 -m gpu tests/test_wkv6.py \
  -k "gpu_cases or chunk_knobs or states or large_bf16" -rfE 2>&1 | tee $OUT/tests.log | tail -4
echo "tests after $(el)"
