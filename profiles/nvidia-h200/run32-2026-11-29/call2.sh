# session 28 call 2 (prepared in session 27): the own kernel's next key slice in flight (own_pipe), the cross kernel's
# block loads before its moves (chunk_xearly) and the backward in
# batch pieces (chunk_pieces, chunk_pieces_nosave: extra peak memory) beside the
# default, and the scored walk in 32-row steps (chunk_seq_step) where the default takes the split walk (B64 T256 H2:
# its intra kernel still sums by cumprods), per-kernel GPU us at the four spec shapes; then every wkv6 GPU test
. .gt-scratch/s28/common.sh
export TRITON_CACHE_AUTOTUNING=1
WKV6_ALGOS=chunk_auto,chunk_ownpipe,chunk_xearly,chunk_pieces,chunk_pieces_nosave,chunk_seq_step WKV6_SHAPES=0,1,2,3 WKV6_CHECKS=0 timeout 300 \
  python3 -u scripts/gpu_wkv6.py --resources 2>&1 | tee $OUT/res.log | grep -A30 "summary"
echo "res after $(el)"
TRITON_CACHE_AUTOTUNING=0 timeout -s INT $(( 585 - $(date +%s) + T0 )) python3 -m pytest tests/test_wkv6.py -m gpu -n 15 -q -rfE \
  -p no:cacheprovider 2>&1 | tee $OUT/tests.log | tail -4
echo "tests after $(el)"
