# session 29 call 7 (the command as it ran): the fused backward (32-row states) and LOWMEM beside the default
. <scratch>/common.sh; export TRITON_CACHE_AUTOTUNING=1; WKV6_ALGOS=chunk_auto,chunk_bfused,chunk_lowmem WKV6_SHAPES=0,1 WKV6_CHECKS=0 timeout -s INT 150 python3 -u scripts/gpu_wkv6.py --resources 2>&1 | tee $OUT/res_fused.log | grep -A8 "summary"; echo "after $(el)"
