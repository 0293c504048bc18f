# session 29 call 4: fla warmed alone at the four spec shapes, then the new default (3a86bb4: the backward's D_c in
# one kernel where S_c is saved and T <= 4096) beside fla, one process
. <scratch>/common.sh
export PYTHONPATH=$S/fla-site:$PYTHONPATH TRITON_CACHE_AUTOTUNING=1 WKV6_FLA_SHAPES=0,1,2,3
timeout 345 python3 scripts/gpu_wkv6.py --warm-fla > $OUT/fla_warm.log 2>&1; echo "fla warm rc $? after $(el)"; tail -4 $OUT/fla_warm.log
WKV6_BUDGET_S=5 WKV6_ALGOS=chunk_auto WKV6_SHAPES=0,1,2,3 WKV6_CHECKS=0 \
  timeout -s INT $(( 555 - $(date +%s) + T0 )) python3 -u scripts/gpu_wkv6.py 2>&1 | tee $OUT/fla_vs_chunk.log | grep -E "time |\| |wait|fla"
echo "timed after $(el)"
