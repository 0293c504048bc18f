# session 29 call 6 (the command as it ran): the 16-row scored walk with / without its next block's loads in flight
. <scratch>/common.sh; export TRITON_CACHE_AUTOTUNING=1; WKV6_ALGOS=chunk_seq_scores,chunk_seq_pipe WKV6_SHAPES=0,2 WKV6_CHECKS=0 timeout 150 python3 -u scripts/gpu_wkv6.py --resources 2>&1 | tee $OUT/res_pipe.log | grep -A6 "summary"; echo "after $(el)"
