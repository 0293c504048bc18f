# session 24 call 2 (warm): the default (rounded dots), the forward truncated, the cross kernel truncated, every dot
# truncated, and fla, at the four benchmark shapes, same process (gpu_wkv6.py's main mode waits for fla's warm-up)
. .gt-scratch/s24/common.sh
PYTHONPATH=$S/fla-site:$PYTHONPATH TRITON_CACHE_AUTOTUNING=1 WKV6_FLA_SHAPES=0,1,2,3 WKV6_BUDGET_S=${B:-480} \
  WKV6_ALGOS=${ALGOS:-chunk_auto,chunk_fwdtrunc,chunk_crosstrunc,chunk_trunc} WKV6_SHAPES=0,1,2,3 WKV6_CHECKS=0 \
  timeout -s INT 560 python3 -u scripts/gpu_wkv6.py 2>&1 | tee $OUT/fla_vs_chunk.log | grep -E "time |\| |wait"
echo "done after $(el)"
