# session 28 call 3: the new default (own kernel's next key slice in flight; the walk scored at T < 1024; cross_early
# removed) — its first call on a cold cache, then beside fla at the four spec shapes, one process
. .gt-scratch/s28/common.sh
TRITON_CACHE_DIR=/tmp/tc-first timeout 120 python3 scripts/gpu_wkv6.py --first-call 2>&1 | tee $OUT/first_call.log | tail -2
echo "first call after $(el)"
export PYTHONPATH=$S/fla-site:$PYTHONPATH TRITON_CACHE_AUTOTUNING=1 WKV6_FLA_SHAPES=0,1,2,3
timeout 320 python3 scripts/gpu_wkv6.py --warm-fla > $OUT/fla_warm.log 2>&1; echo "fla warm rc $? after $(el)"; tail -2 $OUT/fla_warm.log
WKV6_BUDGET_S=5 WKV6_ALGOS=chunk_auto WKV6_SHAPES=0,1,2,3 WKV6_CHECKS=0 \
  timeout -s INT $(( 585 - $(date +%s) + T0 )) python3 -u scripts/gpu_wkv6.py 2>&1 | tee $OUT/fla_vs_chunk.log | grep -E "time |\| |wait|fla"
echo "timed after $(el)"
