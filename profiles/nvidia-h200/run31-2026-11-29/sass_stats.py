"""Offline sm_90 compile of _bwd_cross_kernel (bf16, K = V = 64, BT 32, 4 warps, cap 168 as picked): SASS opcode
counts (shared / local / shuffles / mma) and the TTGIR layout conversions by source line."""
import os, re, sys, collections
os.environ["TRITON_INTERPRET"] = "0"
sys.path.insert(0, ".")
import triton
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction
from triton.backends.compiler import GPUTarget
import kernels.wkv6.chunk as kc
from bench.sm90 import cuobjdump
import subprocess, tempfile

name = sys.argv[1] if len(sys.argv) > 1 else "_bwd_cross_kernel"
PREC = os.environ.get("PREC", "tf32")
fn = getattr(kc, name)
while not isinstance(fn, JITFunction):
    fn = fn.fn
kv = 64
half = {"q_ptr", "k_ptr", "v_ptr", "w_ptr", "u_ptr", "do_ptr", "dq_ptr", "dk_ptr", "dv_ptr", "dw_ptr"}
consts = dict(H=32, K=kv, V=kv, BT=32, SB=16, BK=kv, BV=kv, VARLEN=False, PREC=PREC, FINISH_DU=True, cu_ptr=None,
              cmap_ptr=None)
if name == "_bwd_own_kernel":
    consts = dict(H=32, K=kv, V=kv, BT=32, SB=16, BK=kv, BV=kv, BKC=16, LOG=4, VARLEN=False, PREC=PREC, HALF_B=True,
                  FAST=True, DWP="tf32x3", HAS_A=True, pa_ptr=None, cu_ptr=None, cmap_ptr=None)
if name == "_fwd_step_kernel":
    consts = dict(H=32, K=kv, V=kv, BT=32, SB=16, BK=kv, BV=kv, LOG=4, USE_H0=False, VARLEN=False, SAVE=True,
                  SPLIT=False, SCORES=True, PREC="tf32_trunc", PIPE=False, STEP=True, FAST=True,
                  qh_ptr=None, kh_ptr=None, oi_ptr=None, h0_ptr=None, cu_ptr=None)
    half |= {"o_ptr"}
if name == "_fwd_scores_kernel":
    consts = dict(H=32, K=kv, BT=64, SB=16, BK=kv, LOG=4, VARLEN=False, PREC="tf32_trunc", FAST=True, cu_ptr=None,
                  cmap_ptr=None)
if name == "_fwd_par_scored_kernel":
    consts = dict(H=32, K=kv, V=kv, BT=64, SB=16, BK=kv, BV=kv, LOG=4, VARLEN=False, SCORES=True, PREC="tf32_trunc",
                  cu_ptr=None, cmap_ptr=None)
    half |= {"o_ptr"}
consts.update({k: eval(v) for k, v in (a.split("=") for a in sys.argv[2:])})
types = {n: "constexpr" if n in consts else "*bf16" if n in half else "*fp32" if n.endswith("_ptr")
         else "fp32" if n == "scale" else "i32" for n in fn.arg_names}
src = ASTSource(fn, types, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
nw = int(os.environ.get("NW", "4")); cap = int(os.environ.get("CAP", "168")) or None
kern = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": nw, "num_stages": int(os.environ.get("STAGES", "1")),
                                                                    **({"maxnreg": cap} if cap else {})})
with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
    f.write(kern.asm["cubin"]); f.flush()
    res = subprocess.run([cuobjdump(), "-res-usage", f.name], capture_output=True, text=True).stdout
    sass = subprocess.run([cuobjdump(), "-sass", f.name], capture_output=True, text=True).stdout
m = re.search(r"REG:(\d+) STACK:(\d+)", res)
ops = collections.Counter()
for ln in sass.splitlines():
    mm = re.match(r"\s+/\*[0-9a-f]{4,}\*/\s+(@!?U?P\w+\s+)?([A-Z0-9_]+)(\.[A-Z0-9_.]+)?", ln)
    if mm:
        ops[mm.group(2)] += 1
tot = sum(ops.values())
pick = ["STS", "LDS", "LDSM", "STL", "LDL", "SHFL", "BAR", "HMMA", "LDG", "STG", "FFMA", "FMUL", "FADD", "MUFU"]
print(f"{name} PREC={PREC} nw={nw} cap={cap}: regs {m.group(1)} stack {m.group(2)} shared {kern.metadata.shared} "
      f"SASS {tot}: " + " ".join(f"{k} {ops[k]}" for k in pick))
ttgir = kern.asm["ttgir"]
locs = dict(re.findall(r"^#(loc\d*) = loc\(\"[^\"]*?([\w.]+)\":(\d+)", ttgir, flags=re.M) and
            [(a, f"{b}:{c}") for a, b, c in re.findall(r"^#(loc\d*) = loc\(\"[^\"]*?([\w.]+)\":(\d+)", ttgir, flags=re.M)])
cv = collections.Counter()
for ln in ttgir.splitlines():
    if "ttg.convert_layout" in ln or "ttg.local_alloc" in ln:
        kind = "convert" if "convert_layout" in ln else "alloc"
        shp = re.search(r"tensor<([0-9x]+)x(f32|bf16|i1|i32|f16)", ln)
        lc = re.search(r"loc\((#loc\d*)\)", ln)
        cv[(kind, shp.group(1) + shp.group(2) if shp else "?", locs.get(lc.group(1)[1:], lc.group(1)) if lc else "?")] += 1
print("layout conversions / shared allocs in TTGIR (kind, shape, source line): count")
for k, n in sorted(cv.items(), key=lambda kv: (kv[0][2], kv[0][0])):
    print("   ", k, n)
if os.environ.get("DUMP"):
    open(os.environ["DUMP"], "w").write(ttgir)
import hashlib
print("sass sha", hashlib.sha1(re.sub(r"/\*[0-9a-f]+\*/", "", sass).encode()).hexdigest()[:12])
