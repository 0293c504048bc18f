# session 29 call 2 (prepared in session 28): speed candidates beside the default, per-kernel GPU us at the four spec
# shapes — the backward's D_c in one kernel (chunk_bstates1, ``bwd_states`` "one": no ΔD round trip), the cross
# kernel's dw triangle dots in two tf32 passes (chunk_crossdwx2), the scores kernel capped at 128 registers / at 2
# warps (chunk_scores_cap128 / chunk_scores_w2), the step walk capped at 128 registers (chunk_walk_cap128: one wave); the candidates' CPU-form tests on the GPU; every wkv6 GPU test
. <scratch>/common.sh
export TRITON_CACHE_AUTOTUNING=1
WKV6_ALGOS=chunk_auto,chunk_bstates1,chunk_crossdwx2,chunk_walk_cap128,chunk_scores_cap128,chunk_scores_w2 WKV6_SHAPES=0,1,2,3 WKV6_CHECKS=0 \
  timeout 300 python3 -u scripts/gpu_wkv6.py --resources 2>&1 | tee $OUT/res.log | grep -A24 "summary"
echo "res after $(el)"
python3 -m pytest tests/test_wkv6.py -q -p no:cacheprovider -k "dw_span_dots or bwd_states_one" 2>&1 | tail -2
TRITON_CACHE_AUTOTUNING=0 timeout -s INT $(( 585 - $(date +%s) + T0 )) python3 -m pytest tests/test_wkv6.py -m gpu -n 15 -q -rfE \
  -p no:cacheprovider 2>&1 | tee $OUT/tests.log | tail -4
echo "tests after $(el)"
