# session 25 call 3: the cross configs' dw over 8 draws (call 2's failure), then fla warmed alone and the default
# (compiled launch layer) beside fla at the four benchmark shapes, one process
. <scratch>/common.sh
timeout 90 python3 -u <scratch>/dwdraws.py 2>&1 | tee $OUT/dwdraws.log | grep -v Warn
echo "draws after $(el)"
export PYTHONPATH=$S/fla-site:$PYTHONPATH TRITON_CACHE_AUTOTUNING=1 WKV6_FLA_SHAPES=0,1,2,3
timeout 330 python3 scripts/gpu_wkv6.py --warm-fla > $OUT/fla_warm.log 2>&1; echo "fla warm rc $? after $(el)"; tail -2 $OUT/fla_warm.log
WKV6_BUDGET_S=5 WKV6_ALGOS=chunk_auto WKV6_SHAPES=0,1,2,3 WKV6_CHECKS=0 \
  timeout -s INT $(( 575 - $(date +%s) + T0 )) python3 -u scripts/gpu_wkv6.py 2>&1 | tee $OUT/fla_vs_chunk.log | grep -E "time |\| |wait|fla"
echo "done after $(el)"
