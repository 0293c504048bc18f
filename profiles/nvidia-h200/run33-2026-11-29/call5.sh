# session 29 call 5 (the command as it ran): the extra-peak settings at B8 T4096 H32 with the new default
. <scratch>/common.sh; export TRITON_CACHE_AUTOTUNING=1; WKV6_ALGOS=chunk_auto,chunk_pieces,chunk_pieces_nosave,chunk_bstates1_nosave WKV6_SHAPES=0 WKV6_CHECKS=0 timeout 190 python3 -u scripts/gpu_wkv6.py --resources 2>&1 | tee $OUT/res_mem.log | grep -A6 "summary"; echo "after $(el)"
