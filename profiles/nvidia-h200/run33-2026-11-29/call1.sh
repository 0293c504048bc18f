# session 29 call 1 (prepared in session 28): fla warmed alone (run 32: its first shape took 217 s on a cold machine,
# 320 s ran out), then the default at HEAD (own slices in flight, the walk scored at any T) beside fla at the four
# spec shapes and the small model's (4: B64 T256 H4 K32), one process
. <scratch>/common.sh
export PYTHONPATH=$S/fla-site:$PYTHONPATH TRITON_CACHE_AUTOTUNING=1 WKV6_FLA_SHAPES=0,1,2,3,4
timeout 400 python3 scripts/gpu_wkv6.py --warm-fla > $OUT/fla_warm.log 2>&1; echo "fla warm rc $? after $(el)"; tail -3 $OUT/fla_warm.log
WKV6_BUDGET_S=5 WKV6_ALGOS=chunk_auto WKV6_SHAPES=0,1,2,3,4 WKV6_CHECKS=0 \
  timeout -s INT $(( 585 - $(date +%s) + T0 )) python3 -u scripts/gpu_wkv6.py 2>&1 | tee $OUT/fla_vs_chunk.log | grep -E "time |\| |wait|fla"
echo "timed after $(el)"
