"""Offline sm_90 compile of states._chunk_scan_kernel (fp32 buffers, K = V = 64, BV 64, 4 warps, MODE 2) at PIPE
argv[1]: registers, SASS size, and the loop's instructions between its back-edge branch target and the branch."""
import os, re, sys, subprocess, tempfile
os.environ["TRITON_INTERPRET"] = "0"
sys.path.insert(0, ".")
import triton
from triton.compiler import ASTSource
from triton.backends.compiler import GPUTarget
import kernels.wkv6.states as ks
from bench.sm90 import cuobjdump
fn = ks._chunk_scan_kernel
pipe = int(sys.argv[1])
BV = int(os.environ.get("BV", "64"))
consts = dict(H=32, K=64, V=64, BT=64, BK=64, BV=BV, MODE=2, USE_H0=False, USE_DHT=False, VARLEN=False, PIPE=bool(pipe) if os.environ.get("BOOL") else pipe,
              h0_ptr=None, dht_ptr=None, ht_ptr=None, cu_ptr=None)
types = {n: "constexpr" if n in consts else "*fp32" if n.endswith("_ptr") else "i32" for n in fn.arg_names}
src = ASTSource(fn, types, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
kern = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "num_stages": 1})
with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
    f.write(kern.asm["cubin"]); f.flush()
    res = subprocess.run([cuobjdump(), "-res-usage", f.name], capture_output=True, text=True).stdout
    sass = subprocess.run([cuobjdump(), "-sass", f.name], capture_output=True, text=True).stdout
m = re.search(r"REG:(\d+) STACK:(\d+)", res)
ins = [(int(a, 16), b.strip()) for a, b in re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
print(f"PIPE {pipe}: regs {m.group(1)} stack {m.group(2)} SASS {len(ins)}")
for addr, op in ins:      # backward branches: the loops
    mm = re.search(r"BRA (?:`\(\.L_x_\d+\)|0x([0-9a-f]+))", op)
    t = re.search(r"BRA\s+(0x[0-9a-f]+)", op)
    if t and int(t.group(1), 16) < addr:
        body = [o for a, o in ins if int(t.group(1), 16) <= a <= addr]
        cnt = lambda p: sum(1 for o in body if re.search(p, o))
        print(f"  loop {int(t.group(1),16):#x}-{addr:#x}: {len(body)} instr, LDG {cnt(r'LDG')}, STG {cnt(r'STG')}, "
              f"MOV {cnt(r'MOV')}, DEPBAR {cnt('DEPBAR')}")
import hashlib
print("  sass sha", hashlib.sha1(re.sub(r"/\*[0-9a-f]+\*/", "", sass).encode()).hexdigest()[:12])
