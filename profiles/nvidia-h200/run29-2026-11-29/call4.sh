# session 25 call 4: the whole GPU suite (every op's GPU tests: the compiled launch layer serves every launch())
. <scratch>/common.sh
TRITON_CACHE_AUTOTUNING=0 timeout -s INT 540 python3 -m pytest tests -m gpu -n 15 -q -rfE -p no:cacheprovider 2>&1 | tee $OUT/tests.log | tail -15
echo "done after $(el)"
