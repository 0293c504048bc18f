# session 25 call 2: the cross kernel's key slices — every config's autotune time per shape, the GPU tests of the
# configs and of the compiled launch layer, per-kernel us, the first call on a cold cache
. <scratch>/common.sh
timeout 150 python3 -u <scratch>/crosscfg.py 2>&1 | tee $OUT/crosscfg.log | grep -v Warn
echo "cfg after $(el)"
TRITON_CACHE_AUTOTUNING=0 timeout -s INT 200 python3 -m pytest -q -p no:cacheprovider -n 8 -m gpu tests/test_launch.py tests/test_wkv6.py -k "compiled_layer or gpu_cross_configs or gpu_cases" 2>&1 | tee $OUT/tests.log | tail -6
echo "tests after $(el)"
export TRITON_CACHE_AUTOTUNING=1
WKV6_ALGOS=chunk_auto WKV6_SHAPES=0,1,3 WKV6_CHECKS=0 timeout 150 python3 -u scripts/gpu_wkv6.py --resources 2>&1 | tee $OUT/res.log | grep -A5 "summary"
echo "res after $(el)"
TRITON_CACHE_DIR=$(mktemp -d) timeout $(( 570 - $(date +%s) + T0 )) python3 -u scripts/gpu_wkv6.py --first-call 2>&1 | tee $OUT/first.log | tail -3
echo "done after $(el)"
