import kernels.wkv6.common as c
c.FWD_PRECISION = "tf32_trunc"   # pytest -p fwdtrunc_plugin: the GPU tests with the forward truncated
