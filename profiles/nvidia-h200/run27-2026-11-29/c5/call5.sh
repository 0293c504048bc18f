# session 23 call 5: the backward's tf32 operands rounded, the forward's truncated or rounded, exact operands unrounded
S=${GT_SITE:?a folder for the wheels}; W=.gpu-wheels; P=(python3 -m pip install -q --no-index --no-deps --no-compile --target)
[ -d $S ] || "${P[@]}" $S $W/test/*.whl 2>&1 | grep -v root
export PYTHONPATH=$S:. TRITON_CACHE_AUTOTUNING=1
timeout -s INT ${PREC_S:-230} python3 -u .gt-scratch/prec3.py 2>&1 | grep -v "^\s\|^Traceback\|File \|^KeyboardInterrupt" | tee $OUT/prec3.log
