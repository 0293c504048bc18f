# session 26 call 2: Nsight Compute's source view of the cross, own and walk kernels (which lines issue the shared-memory
# wavefronts, the local-memory traffic and the stalls) at B8 T4096 H32, the default config
. <scratch>/common.sh
export TRITON_CACHE_AUTOTUNING=1
N=/usr/local/cuda/bin/ncu
$N --version | tail -1
timeout 240 $N --profile-from-start off -k "regex:_bwd_cross|_bwd_own|_fwd_walk" --set full --import-source yes \
  -o $OUT/cross python3 <scratch>/ncu_step.py 2>&1 | tail -3
echo "profiled after $(el)"
$N --help | grep -A6 -- "--print-source" | head -14
for src in sass cuda,sass cuda; do
  $N -i $OUT/cross.ncu-rep --page source --csv --print-source $src > $OUT/source_${src/,/_}.csv 2> $OUT/source_${src/,/_}.err
  echo "$src rc $? $(wc -l < $OUT/source_${src/,/_}.csv) lines"; head -c 600 $OUT/source_${src/,/_}.csv; echo
done
$N -i $OUT/cross.ncu-rep --page details --csv > $OUT/details.csv 2>&1
rm -f $OUT/cross.ncu-rep
echo "done after $(el)"
