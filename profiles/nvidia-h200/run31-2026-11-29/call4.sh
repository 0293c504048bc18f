# session 27 call 4: Nsight Compute's source view of the state scans (two chunks ahead), the cross and the own kernel
# at B1 T16384 H32 (the scans: 256 serial chunks, 32 programs; 0.73 us per chunk whatever the look-ahead or the
# programs), then the GPU run of the scan-depth test
. <scratch>/common.sh
export TRITON_CACHE_AUTOTUNING=1
N=/usr/local/cuda/bin/ncu
timeout 260 $N --profile-from-start off -k "regex:_chunk_scan|_bwd_cross|_bwd_own" --set full --import-source yes \
  -o $OUT/prof python3 <scratch>/ncu_step.py 1 16384 32 2>&1 | tail -3
echo "profiled after $(el)"
$N -i $OUT/prof.ncu-rep --page source --csv --print-source cuda,sass > $OUT/source.csv 2> $OUT/source.err
$N -i $OUT/prof.ncu-rep --page details --csv > $OUT/details.csv 2>&1
rm -f $OUT/prof.ncu-rep
python3 scripts/ncu_summary.py $OUT/details.csv > $OUT/ncu_summary.md 2>&1; head -40 $OUT/ncu_summary.md
python3 scripts/ncu_lines.py $OUT/source.csv --top 20 > $OUT/ncu_lines.md 2>&1; echo "lines rc $?"
echo "ncu done after $(el)"
timeout 150 python3 -m pytest tests/test_wkv6.py -q -p no:cacheprovider -k "scan_pipe_depths or memory_knobs" 2>&1 | tail -2
echo "done after $(el)"
