# session 24 call 3 (cold): the cvt.rna / dot diagnosis; fla warmed alone, then the default (forward truncated)
# and the forward rounded (session 23's default) beside fla at the four benchmark shapes, one process
. .gt-scratch/s24/common.sh
timeout 60 python3 .gt-scratch/s24/dotdiag.py 2>&1 | tee $OUT/dotdiag.log | tail -20
echo "diag after $(el)"
export PYTHONPATH=$S/fla-site:$PYTHONPATH TRITON_CACHE_AUTOTUNING=1 WKV6_FLA_SHAPES=0,1,2,3
timeout 330 python3 scripts/gpu_wkv6.py --warm-fla > $OUT/fla_warm.log 2>&1; echo "fla warm rc $? after $(el)"; tail -4 $OUT/fla_warm.log
WKV6_BUDGET_S=5 WKV6_ALGOS=${ALGOS:-chunk_auto,chunk_fwdround} WKV6_SHAPES=0,1,2,3 WKV6_CHECKS=0 \
  timeout -s INT $(( 570 - $(date +%s) + T0 )) python3 -u scripts/gpu_wkv6.py 2>&1 | tee $OUT/fla_vs_chunk.log | grep -E "time |\| |wait|fla"
echo "done after $(el)"
