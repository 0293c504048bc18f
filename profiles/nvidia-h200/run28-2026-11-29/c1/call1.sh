# session 24 call 1 (cold): fla warm-up in the background; the GPU tests of mma and wkv6 (default: rounded dots);
# then the wkv6 GPU tests with the forward's dots truncated (FWD_PRECISION "tf32_trunc")
. .gt-scratch/s24/common.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
(PYTHONPATH=$S/fla-site:$S:. TRITON_CACHE_AUTOTUNING=1 WKV6_FLA_SHAPES=0,1,2,3 nice -n 5 python3 scripts/gpu_wkv6.py --warm-fla > $OUT/fla_warm.log 2>&1 &)
TRITON_CACHE_AUTOTUNING=0 timeout -s INT ${T1:-300} python3 -m pytest tests/test_dot.py tests/test_wkv6.py -m gpu -q -p no:cacheprovider -n 12 -rfE --durations=5 > $OUT/tests_default.log 2>&1
echo "default rc $? after $(el)"; grep -E "passed|failed|FAILED|ERROR" $OUT/tests_default.log | tail -12
TRITON_CACHE_AUTOTUNING=0 PYTHONPATH=.gt-scratch:$PYTHONPATH timeout -s INT $(( ${T2:-560} - $(date +%s) + T0 )) python3 -m pytest tests/test_wkv6.py -m gpu -q -p no:cacheprovider -n 12 -rfE -p fwdtrunc_plugin > $OUT/tests_fwdtrunc.log 2>&1
echo "fwdtrunc rc $? after $(el)"; grep -E "passed|failed|FAILED|ERROR" $OUT/tests_fwdtrunc.log | tail -12
tail -3 $OUT/fla_warm.log
