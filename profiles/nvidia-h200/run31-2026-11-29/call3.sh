# session 27 call 3: the state scans two chunks ahead (scan_pipe 2) and narrow scan blocks (scan_fill 1 / 2) beside
# the default, per-kernel GPU us, at B1 T16384 H32 (256 chunks, 32 programs per scan), B4 T2048 H16, B8 T4096 H32
. <scratch>/common.sh
export TRITON_CACHE_AUTOTUNING=1
WKV6_ALGOS=chunk_auto,chunk_pipe2,chunk_fill1,chunk_pipe2_fill1,chunk_fill2 WKV6_SHAPES=3,1,0 WKV6_CHECKS=0 timeout 300 \
  python3 -u scripts/gpu_wkv6.py --resources 2>&1 | tee $OUT/res.log | grep -A20 "summary"
echo "res after $(el)"
timeout 120 python3 -m pytest tests/test_wkv6.py -q -p no:cacheprovider -k "scan_pipe_depths or memory_knobs" 2>&1 | tail -2
echo "done after $(el)"
