# session 25 call 1: the compiled launch layer (host ms, bitwise), per-kernel GPU us with the rounding (B8 T4096,
# B1 T16384 knob sweep), then the round-once b_dh patch in a second process
. <scratch>/common.sh
export TRITON_CACHE_AUTOTUNING=1
timeout 200 python3 -u <scratch>/hostbench.py 2>&1 | tee $OUT/hostbench.log | tail -14
echo "host after $(el)"
WKV6_ALGOS=chunk_auto,chunk_rows32,chunk_fill2,chunk_par_one WKV6_SHAPES=3 WKV6_CHECKS=0 timeout 200 python3 -u scripts/gpu_wkv6.py --resources 2>&1 | tee $OUT/res_t16k.log | grep -A8 "summary"
echo "t16k after $(el)"
WKV6_ALGOS=chunk_auto WKV6_SHAPES=0,1 WKV6_CHECKS=0 timeout 120 python3 -u scripts/gpu_wkv6.py --resources 2>&1 | tee $OUT/res_base.log | grep -A4 "summary"
echo "base after $(el)"
patch -p1 < <scratch>/roundonce.patch > /dev/null && WKV6_ALGOS=chunk_auto WKV6_SHAPES=0,1 WKV6_CHECKS=0 timeout $(( 560 - $(date +%s) + T0 )) python3 -u scripts/gpu_wkv6.py --resources 2>&1 | tee $OUT/res_once.log | grep -A4 "summary"
echo "done after $(el)"
