# sourced by each call: the wheels into a temporary site folder (once per machine), PYTHONPATH
S=${GT_SITE:-/tmp/gts}; W=.gpu-wheels; P=(python3 -m pip install -q --no-index --no-deps --no-compile --target)
[ -d $S/fla-site ] || { "${P[@]}" $S $W/mamba*.whl $W/causal*.whl $W/selective*.whl $W/test/*.whl
                        "${P[@]}" $S/fla-site $W/fla*.whl $W/flash*.whl; } 2>&1 | grep -v root
export PYTHONPATH=$S:.
T0=$(date +%s)
el() { echo "$(( $(date +%s) - T0 )) s"; }
