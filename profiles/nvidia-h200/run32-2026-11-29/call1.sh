# session 28 call 1 (prepared in session 27): fla warmed alone, then the default at HEAD (session 27's scans' ring
# of two, output kernel at 2 stages, dw in two passes) beside fla at the four benchmark shapes, one process; then
# the GPU tests of the session-27 changes with the time left
. .gt-scratch/s28/common.sh
export PYTHONPATH=$S/fla-site:$PYTHONPATH TRITON_CACHE_AUTOTUNING=1 WKV6_FLA_SHAPES=0,1,2,3
timeout 320 python3 scripts/gpu_wkv6.py --warm-fla > $OUT/fla_warm.log 2>&1; echo "fla warm rc $? after $(el)"; tail -2 $OUT/fla_warm.log
WKV6_BUDGET_S=5 WKV6_ALGOS=chunk_auto WKV6_SHAPES=0,1,2,3 WKV6_CHECKS=0 \
  timeout -s INT $(( 470 - $(date +%s) + T0 )) python3 -u scripts/gpu_wkv6.py 2>&1 | tee $OUT/fla_vs_chunk.log | grep -E "time |\| |wait|fla"
echo "timed after $(el)"
TRITON_CACHE_AUTOTUNING=0 timeout -s INT $(( 585 - $(date +%s) + T0 )) python3 -m pytest tests/test_wkv6.py -m gpu -n 15 -q -rfE \
  -p no:cacheprovider -k "scan_pipe or load_order or gpu_cases or large_bf16 or states" 2>&1 | tee $OUT/tests.log | tail -4
echo "tests after $(el)"
