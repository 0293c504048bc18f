# session 23 call 3: tf32 operands rounded (kernels._dot) vs truncated: errors and time; then every wkv6 GPU test
S=${GT_SITE:?a folder for the wheels}; W=.gpu-wheels; P=(python3 -m pip install -q --no-index --no-deps --no-compile --target)
[ -d $S/fla-site ] || { "${P[@]}" $S $W/mamba*.whl $W/causal*.whl $W/selective*.whl $W/test/*.whl
                        "${P[@]}" $S/fla-site $W/fla*.whl $W/flash*.whl; } 2>&1 | grep -v root
export PYTHONPATH=$S:.
T0=$(date +%s)
TRITON_CACHE_AUTOTUNING=1 timeout -s INT ${PREC_S:-230} python3 -u .gt-scratch/prec2.py > $OUT/prec2.log 2>&1
echo "prec2 rc $? after $(( $(date +%s) - T0 )) s"; sed -n '/== errors/,$p' $OUT/prec2.log; tail -3 $OUT/prec2.log
TRITON_CACHE_AUTOTUNING=0 timeout -s INT -k 20 ${TESTS_S:-250} python3 -m pytest tests/test_wkv6.py -m gpu -q -p no:cacheprovider \
  -n ${JOBS:-15} --durations=5 -rfE --tb=short > $OUT/tests.log 2>&1
echo "tests rc $? after $(( $(date +%s) - T0 )) s"; grep -E "^(FAILED|ERROR)|passed|failed|^E " $OUT/tests.log | tail -12
