# session 23 call 1: whole GPU suite (launcher), tf32x3 dw experiment, host profile at the small shapes
S=${GT_SITE:?a folder for the wheels}; W=.gpu-wheels; P=(python3 -m pip install -q --no-index --no-deps --no-compile --target)
[ -d $S/fla-site ] || { "${P[@]}" $S $W/mamba*.whl $W/causal*.whl $W/selective*.whl $W/test/*.whl
                        "${P[@]}" $S/fla-site $W/fla*.whl $W/flash*.whl; } 2>&1 | grep -v root
export PYTHONPATH=$S:.
T0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
TRITON_CACHE_AUTOTUNING=0 timeout ${TESTS_S:-330} python3 -m pytest tests -m gpu -q -p no:cacheprovider -n 8 \
  --durations=10 -rfE > $OUT/tests.log 2>&1
echo "tests rc $? after $(( $(date +%s) - T0 )) s"; tail -25 $OUT/tests.log | grep -v "^$"
export TRITON_CACHE_AUTOTUNING=1
timeout 120 python3 -u .gt-scratch/prec.py > $OUT/prec.log 2>&1; echo "prec rc $?"; grep -A8 "== prec" $OUT/prec.log || tail -5 $OUT/prec.log
echo "prec done after $(( $(date +%s) - T0 )) s"
WKV6_ALGOS=chunk_auto WKV6_SHAPES=2,1 timeout 80 python3 scripts/gpu_wkv6.py --host-gpu > $OUT/host.log 2>&1
grep "host " $OUT/host.log; echo "all done after $(( $(date +%s) - T0 )) s"
