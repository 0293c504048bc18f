# session 23 call 2: the whole GPU suite to the end (SIGINT at the deadline so pytest still prints its failures)
S=${GT_SITE:?a folder for the wheels}; W=.gpu-wheels; P=(python3 -m pip install -q --no-index --no-deps --no-compile --target)
[ -d $S/fla-site ] || { "${P[@]}" $S $W/mamba*.whl $W/causal*.whl $W/selective*.whl $W/test/*.whl
                        "${P[@]}" $S/fla-site $W/fla*.whl $W/flash*.whl; } 2>&1 | grep -v root
export PYTHONPATH=$S:.
T0=$(date +%s)
TRITON_CACHE_AUTOTUNING=0 timeout -s INT -k 30 ${TESTS_S:-480} python3 -m pytest tests -m gpu -q -p no:cacheprovider \
  -n ${JOBS:-15} --durations=10 -rfE --tb=short > $OUT/tests.log 2>&1
echo "tests rc $? after $(( $(date +%s) - T0 )) s"; grep -E "^(FAILED|ERROR)|passed|failed" $OUT/tests.log | tail -20
