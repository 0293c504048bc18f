"""Session 25 call 2: the autotuner's own timing of every cross-kernel config (configs_timings) per shape."""
import os, sys
sys.path.insert(0, ".")
os.environ["TRITON_CACHE_AUTOTUNING"] = "0"
import torch, triton
import kernels.wkv6 as kw
import kernels.wkv6.chunk as kc
from groundthink.spec import get
SPEC = get("wkv6")
print("triton", triton.__version__, torch.cuda.get_device_name())
shapes = [(8, 4096, 32, 64, 64), (4, 2048, 16, 64, 64), (1, 16384, 32, 64, 64), (16, 1024, 8, 64, 64),
          (64, 256, 2, 64, 64), (64, 256, 4, 32, 32)]
for sh in shapes:
    x = {**SPEC.bench.make_inputs(*sh, True, dtype=torch.bfloat16, device="cuda"), "scale": 1.0}
    o, _ = kw.wkv6(**{n: x[n] for n in ("r", "k", "v", "w", "u", "scale")})
    o.backward(torch.randn_like(o))
    torch.cuda.synchronize()
    t = getattr(kc._bwd_cross_kernel, "configs_timings", None) or {}
    rows = sorted(((v[0] if isinstance(v, (list, tuple)) else v) * 1e3, str(c)) for c, v in t.items())
    print(f"B{sh[0]} T{sh[1]} H{sh[2]} K{sh[3]}: best {kc._bwd_cross_kernel.best_config}")
    for us, c in rows:
        print(f"    {us:8.1f} us  {c}")
    kc._bwd_cross_kernel.configs_timings = {}
