# session 27 call 5: the state scans' ring of loads (no loop-carried register copy waiting on a load: call 4's
# Nsight Compute) at 1 / 2 (default) / 4 chunks, with and without narrow scan blocks, per-kernel GPU us at
# B1 T16384 H32, B4 T2048 H16, B8 T4096 H32; then the scan tests on the GPU
. <scratch>/common.sh
export TRITON_CACHE_AUTOTUNING=1
WKV6_ALGOS=chunk_auto,chunk_pipe1,chunk_pipe4,chunk_pipe2_fill1,chunk_pipe4_fill1 WKV6_SHAPES=3,1,0 WKV6_CHECKS=0 \
  timeout 240 python3 -u scripts/gpu_wkv6.py --resources 2>&1 | tee $OUT/res.log | grep -A20 "summary"
echo "res after $(el)"
timeout 120 python3 -m pytest tests/test_wkv6.py -q -p no:cacheprovider -k "scan_pipe_depths or memory_knobs" 2>&1 | tail -2
echo "done after $(el)"
