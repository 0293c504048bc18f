"""Compile the glue ops' Triton kernels for an H100 (sm_90) on a machine without a GPU: the Triton front end and
ptxas catch what the interpreter lets through (e.g. a loop-carried variable that changes type). Prints "ok" or
"FAIL" per kernel (with its registers per thread and spill bytes from cuobjdump, where Triton ships it: a kernel
whose registers × threads leave fewer programs per SM than its persistent grid assumes, or that spills, is slow on
the GPU) and exits 1 on any failure. Run with TRITON_INTERPRET=0:
    TRITON_INTERPRET=0 PYTHONPATH=. python scripts/glue_compile_check.py
"""
import importlib
import os
import sys

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    sys.exit("run with TRITON_INTERPRET=0 (the kernels must be real JIT functions)")
import torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
NG, DL, SL, DE, CE = (importlib.import_module(f"kernels.{m}.{m}")
                      for m in ("norm_gate", "ddlerp", "shift_lerp", "decay_exp", "cross_entropy"))
GNR = importlib.import_module("kernels.gate_norm_residual.kernel")
FF = importlib.import_module("kernels.ffn.ffn")
WG = importlib.import_module("kernels.wgrad.wgrad")
tgt = GPUTarget("cuda", 90, 32)
def sig(fn, types, consts):
    names = fn.arg_names
    s = {}
    for n in names:
        if n in consts: s[n] = "constexpr"
        elif n in ("p_count", "p_epoch"): s[n] = "*i32"
        elif n.startswith("p_"): s[n] = types.get(n, "*bf16")
        elif n in types: s[n] = types[n]
        elif n == "eps": s[n] = "fp32"
        else: s[n] = "i32"
    return s
cases = [
 (NG._norm_gate_fwd_kernel, {"p_w": "*fp32", "p_b": "*fp32"}, dict(LAYER=True, BEFORE=True, HAS_BIAS=True, BR=8, BG=4, BS=32)),
 (NG._norm_gate_bwd_kernel, {"p_w": "*fp32", "p_b": "*fp32", "p_part": "*fp32", "p_dw": "*fp32", "p_db": "*fp32"}, dict(LAYER=True, BEFORE=True, HAS_BIAS=True, BR=8, BG=4, BS=32, BP=32, BC=128)),
 (NG._norm_gate_bwd_kernel, {"p_w": "*fp32", "p_b": "*fp32", "p_part": "*fp32", "p_dw": "*fp32", "p_db": "*fp32"}, dict(LAYER=False, BEFORE=False, HAS_BIAS=False, BR=8, BG=1, BS=256, BP=16, BC=256)),
 (DL._ddlerp_fwd_kernel, {"p_maa": "*fp32"}, dict(HAS_PREV=True, BR=16, BD=128)),
 (DL._ddlerp_bwd_rows_kernel, {"p_maa": "*fp32", "p_part": "*fp32", "p_dmaa": "*fp32"}, dict(HAS_PREV=True, BD=128, BP=8)),
 (SL._shift_lerp_fwd_kernel, {"p_mu": "*fp32"}, dict(HAS_PREV=False, BR=16, BD=128)),
 (SL._shift_lerp_bwd_kernel, {"p_mu": "*fp32", "p_part": "*fp32", "p_dmu": "*fp32"}, dict(HAS_PREV=True, HAS_DXIN=False, BR=16, BD=128, BP=32)),
 (SL._shift_lerp_bwd_kernel, {"p_mu": "*fp32", "p_part": "*fp32", "p_dmu": "*fp32"}, dict(HAS_PREV=False, HAS_DXIN=True, BR=16, BD=128, BP=32)),
 (DE._decay_exp_fwd_kernel, {"p_base": "*fp32"}, dict(BR=16, BD=128)),
 (DE._decay_exp_bwd_kernel, {"p_base": "*fp32", "p_part": "*fp32", "p_dbase": "*fp32"}, dict(BR=16, BD=128, BP=32)),
 (GNR._gnr_bwd_kernel.fn, {"p_h": "*fp32", "p_g": "*fp32", "p_w": "*fp32", "p_stats": "*fp32", "p_dx": "*fp32", "p_dg": "*fp32", "p_part": "*fp32", "p_dw": "*fp32", "p_dbias": "*fp32"},
  dict(MODE=1, LAYER=True, GATE_LOGITS=True, HAS_DH=True, HAS_BIAS=True, HAS_GB=False, BR=16, BD=128, BP=32)),
 (GNR._gnr_bwd_kernel.fn, {"p_h": "*fp32", "p_g": "*bf16", "p_w": "*fp32", "p_stats": "*fp32", "p_dx": "*fp32", "p_dg": "*bf16", "p_part": "*fp32", "p_dw": "*fp32", "p_dbias": "*fp32"},
  dict(MODE=2, LAYER=False, GATE_LOGITS=True, HAS_DH=True, HAS_BIAS=False, HAS_GB=False, BR=16, BD=128, BP=32)),
 (GNR._gnr_bwd_kernel.fn, {"p_h": "*fp32", "p_g": "*bf16", "p_gb": "*fp32", "p_w": "*fp32", "p_stats": "*fp32", "p_dx": "*fp32", "p_dg": "*bf16", "p_part": "*fp32", "p_dw": "*fp32", "p_dbias": "*fp32", "p_dgb": "*fp32"},
  dict(MODE=2, LAYER=False, GATE_LOGITS=True, HAS_DH=True, HAS_BIAS=False, HAS_GB=True, BR=16, BD=128, BP=32)),
 (GNR._gnr_bwd_kernel.fn, {"p_h": "*fp32", "p_g": "*bf16", "p_gb": "*fp32", "p_w": "*fp32", "p_stats": "*fp32", "p_dx": "*fp32", "p_dg": "*bf16", "p_part": "*fp32", "p_dw": "*fp32", "p_dbias": "*fp32", "p_dgb": "*fp32"},
  dict(MODE=3, LAYER=False, GATE_LOGITS=True, HAS_DH=True, HAS_BIAS=False, HAS_GB=True, BR=16, BD=128, BP=32)),
 (GNR._gnr_fwd_kernel.fn, {"p_x": "*fp32", "p_gb": "*fp32", "p_w": "*fp32", "p_h": "*fp32", "p_stats": "*fp32"},
  dict(MODE=2, LAYER=False, GATE_LOGITS=True, HAS_BIAS=False, HAS_GB=True, BR=16, BD=128)),
 (CE._ce_fwd_kernel, {"p_t": "*i64", "p_stats": "*fp32", "p_tot": "*fp32", "p_loss": "*fp32"}, dict(GRAD=True, BV=128, BP=64)),
 (CE._ce_fwd_kernel, {"p_t": "*i64", "p_stats": "*fp32", "p_tot": "*fp32", "p_loss": "*fp32"}, dict(GRAD=False, BV=4096, BP=64)),
 (CE._ce_bwd_kernel, {"p_dloss": "*fp32", "p_tot": "*fp32"}, dict(BLOCK=4096)),
 (WG._wgrad_kernel, {"p_part": "*fp32"}, dict(ONE=False, PREC="tf32", BM=128, BN=128, BR=64, COOP=True, TWO=False, RP=8, BF=1024, CW=128, RB=64, PH=0, SPIN=1 << 15)),
 (WG._wgrad_kernel, {"p_part": "*fp32"}, dict(ONE=False, PREC="tf32", BM=64, BN=64, BR=64, COOP=False, TWO=True, RP=8, BF=1024, CW=128, RB=64, PH=0, SPIN=1 << 15)),
 (WG._wgrad_kernel, {"p_part": "*fp32"}, dict(ONE=False, PREC="tf32", BM=64, BN=64, BR=64, COOP=False, TWO=False, RP=8, BF=1024, CW=128, RB=64, PH=0, SPIN=1 << 15)),
 (WG._wgrad_kernel, {"p_part": "*fp32"}, dict(ONE=False, PREC="tf32", BM=64, BN=64, BR=64, COOP=True, TWO=False, RP=8, BF=1024, CW=128, RB=64, PH=0, SPIN=1 << 15)),
 (WG._wgrad_kernel, {"p_part": "*fp32"}, dict(ONE=True, PREC="tf32", BM=16, BN=64, BR=64, COOP=False, TWO=False, RP=8, BF=1024, CW=128, RB=64, PH=0, SPIN=1 << 15)),
 (WG._wgrad_kernel, {"p_a": "*fp32", "p_b": "*fp32", "p_c": "*fp32", "p_part": "*fp32"}, dict(ONE=False, PREC="ieee", BM=32, BN=64, BR=32, COOP=False, TWO=True, RP=8, BF=1024, CW=128, RB=64, PH=0, SPIN=1 << 15)),
 (WG._wgrad_kernel, {"p_a": "*fp32", "p_b": "*fp32", "p_c": "*fp32", "p_part": "*fp32"}, dict(ONE=False, PREC="tf32x3", BM=64, BN=64, BR=64, COOP=True, TWO=False, RP=8, BF=1024, CW=128, RB=64, PH=0, SPIN=1 << 15)),
 (FF._ffn_up_kernel.fn, {}, dict(ACT=0, PREC="tf32", BM=64, BN=64, BK=64)),
 (FF._ffn_dact_kernel.fn, {}, dict(ACT=0, PREC="tf32", BM=64, BN=128, BK=64, HE=1)),
]
def usage(cubin):
    """'regs=R spill=S' of a compiled kernel (cuobjdump --dump-resource-usage), '' without cuobjdump."""
    import re, subprocess, tempfile
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return ""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", out)
    return f"regs={m.group(1)} spill={m.group(2)}" if m else ""
failed = False
for fn, types, consts in cases:
    src = ASTSource(fn, sig(fn, types, consts), constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
    try:
        k = triton.compile(src, target=tgt)
        print("ok", fn.__name__, consts, usage(k.asm["cubin"]))
    except Exception as e:
        msg = str(e).splitlines()
        print("FAIL", fn.__name__, type(e).__name__, [l for l in msg if l.strip()][-3:])
        failed = True
sys.exit(1 if failed else 0)
