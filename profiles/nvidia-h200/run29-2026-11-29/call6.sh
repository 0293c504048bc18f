# session 25 call 6: Nsight Compute on one fwd+bwd at B8 T4096 H32 (the cross, own and walk kernels)
. <scratch>/common.sh
export TRITON_CACHE_AUTOTUNING=1
timeout 200 /usr/local/cuda/bin/ncu --profile-from-start off -k "regex:_bwd_cross|_bwd_own|_fwd_walk" --set full \
  -o $OUT/step python3 <scratch>/ncu_step.py 2>&1 | tail -5
/usr/local/cuda/bin/ncu -i $OUT/step.ncu-rep --page details --csv > $OUT/details.csv 2>&1
/usr/local/cuda/bin/ncu -i $OUT/step.ncu-rep --page details 2>&1 | grep -E "^  [a-z_]|Duration|Throughput|Registers|Achieved Occupancy|Theoretical Occupancy|Warp Cycles Per Issued|Issue Slots|Executed Ipc|Stall|L1/TEX Hit|L2 Hit|Block Limit|Local" | head -120
echo "done after $(el)"
