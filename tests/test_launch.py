"""``kernels._common.launch``: the autotuned launch without the autotuner's per-call dispatch, on a stand-in
autotuner (the interpreter gives every real kernel one config, where the launcher always defers)."""
import pytest
import torch

import kernels._common as kc


class _Config:
    def __init__(self, **kw):
        self.kw, self.pre_hook = kw, None

    def all_kwargs(self):
        return dict(self.kw)


class _Jit:
    def __init__(self, log, fail=False):
        self.log, self.fail = log, fail

    def __getitem__(self, grid):
        def run(*args, **meta):
            if self.fail:
                raise TypeError("drifted API")
            self.log.append(("direct", grid, meta.get("num_warps")))
        return run


class _Tuner:
    """What ``Launcher`` reads of ``triton.runtime.autotuner.Autotuner``: configs, fn, keys, arg_names,
    best_config and ``[grid](...)``; it "tunes" to 8 warps for N < 100, else 4."""

    def __init__(self, fail=False):
        self.log = []
        self.configs = [_Config(num_warps=4), _Config(num_warps=8)]
        self.fn, self.keys, self.arg_names = _Jit(self.log, fail), ["N"], ["x", "N", "BLOCK"]

    def __getitem__(self, grid):
        def run(x, N, **meta):
            self.best_config = self.configs[min(len(self.configs) - 1, int(N < 100))]
            self.log.append(("tuner", grid, self.best_config.kw["num_warps"]))
        return run


def _launcher(tuner, monkeypatch):
    monkeypatch.setattr(kc, "INTERPRET", False)
    return kc.Launcher(tuner)


def test_launch_keeps_the_autotuners_pick_per_key(monkeypatch):
    t = _Tuner()
    lau = _launcher(t, monkeypatch)
    x16, x32 = torch.zeros(4, dtype=torch.float16), torch.zeros(4)
    lau[(1,)](x16, 50, BLOCK=16)          # first of key (50, fp16): the autotuner
    lau[(2,)](x16, 50, BLOCK=16)          # then directly, with its pick
    lau[(3,)](x16, 500, BLOCK=16)         # another key value: the autotuner again
    lau[(4,)](x32, 500, BLOCK=16)         # another dtype: again
    lau[(5,)](x16, N=500, BLOCK=16)       # the key by name: direct
    assert t.log == [("tuner", (1,), 8), ("direct", (2,), 8), ("tuner", (3,), 4), ("tuner", (4,), 4),
                     ("direct", (5,), 4)]


def test_launch_defers_when_direct_launch_raises_and_for_single_configs(monkeypatch):
    t = _Tuner(fail=True)
    lau = _launcher(t, monkeypatch)
    x = torch.zeros(4)
    for _ in range(3):
        lau[(1,)](x, 50)
    assert [e[0] for e in t.log] == ["tuner", "tuner", "tuner"] and not lau.direct
    one = _Tuner()
    one.configs = one.configs[:1]
    lau = _launcher(one, monkeypatch)
    lau[(1,)](x, 50)
    lau[(1,)](x, 50)
    assert [e[0] for e in one.log] == ["tuner", "tuner"]


def test_forget_picks_clears_the_tuner_and_its_launcher(monkeypatch):
    t = _Tuner()
    t.cache = {"k": "cfg"}
    monkeypatch.setattr(kc, "INTERPRET", False)
    monkeypatch.setattr(kc, "_LAUNCHERS", {})
    lau = kc.launch(t)
    lau[(1,)](torch.zeros(4), 50)
    lau.kernels["x"] = object()
    assert lau.best and t.cache
    kc.forget_picks(t)
    assert not lau.best and not lau.kernels and not t.cache


def test_launch_is_one_launcher_per_kernel():
    t = _Tuner()
    assert kc.launch(t) is kc.launch(t)


def test_wkv6_through_forced_direct_launches_matches_fp64(monkeypatch):
    """Every autotuned wkv6 launch forced onto the direct path (the interpreter's one config; callable grids
    included): the second call of each forward mode launches the JIT functions with the cached configs and still
    matches the fp64 reference, output and every gradient."""
    import kernels.wkv6.chunk as chunk
    from groundthink.harness import check_op
    from reference.wkv6 import wkv6_chunked
    from tests.test_wkv6 import make_inputs
    init = kc.Launcher.__init__

    def forced(self, kernel):
        init(self, kernel)
        self.direct = hasattr(kernel, "fn") and hasattr(kernel, "keys")
    monkeypatch.setattr(kc.Launcher, "__init__", forced)
    monkeypatch.setattr(kc, "_LAUNCHERS", {})
    d = make_inputs(1, 40, 1, 16, 16, decay="strong", h0=True)
    for seq in (True, False):
        with chunk.forward_mode(seq):
            for _ in range(2):
                check_op(chunk.wkv6_chunk, lambda **kw: wkv6_chunked(**kw, chunk_size=64), d, bound=1e-5,
                         context=f"direct launches, seq={seq}")
    used = [lau for lau in kc._LAUNCHERS.values() if lau.best]
    assert len(used) >= 4 and all(lau.direct for lau in used), [lau.kernel for lau in kc._LAUNCHERS.values()]


# ---- the compiled-kernel layer (``Launcher.compiled``), on a stand-in JIT function and driver
class _Compiled:
    """A stand-in ``CompiledKernel``: ``run`` records the launch (or raises, as a drifted launcher would)."""

    def __init__(self, log, spec, fail=False):
        self.log, self.spec, self.fail = log, spec, fail
        self.function, self.packed_metadata = "fn", "meta"

    def launch_metadata(self, grid, stream, *args):
        return None

    def run(self, g0, g1, g2, stream, function, packed, launch_metadata, enter, exit_, *args):
        if self.fail:
            raise TypeError("drifted launcher")
        self.log.append(("compiled", (g0, g1, g2), stream, self.spec, args))


class _JitFn:
    """A stand-in ``JITFunction`` (x, N, BLOCK): its binder specializes x on 16-byte alignment (here: even
    ``x[0]``) and returns every parameter; ``fn[grid](...)`` "compiles", launches and returns the kernel."""

    def __init__(self, log, fail_run=False):
        self.log, self.fail_run = log, fail_run
        self.device_caches = {0: ({}, None, None, self._binder)}

    def _binder(self, x, N, BLOCK=8, **options):
        return {"x": x, "N": N, "BLOCK": BLOCK}, [("*fp32", "D" if int(x[0]) % 2 == 0 else None), ("i32", None),
                                                   ("constexpr", BLOCK)], options

    def __getitem__(self, grid):
        def run(*args, **kw):
            bound, spec, _ = self._binder(*args, **kw)
            self.log.append(("jit", grid if not callable(grid) else grid(bound), tuple(spec)))
            return _Compiled(self.log, tuple(spec), self.fail_run)
        return run


class _Driver:
    def get_current_device(self):
        return 0

    def get_current_stream(self, device):
        return 7


def _compiled_launcher(kernel, monkeypatch):
    monkeypatch.setattr(kc, "INTERPRET", False)
    monkeypatch.setattr(kc, "_driver", lambda: _Driver())
    return kc.Launcher(kernel)


def test_compiled_layer_keeps_a_kernel_per_specialization(monkeypatch):
    log = []
    lau = _compiled_launcher(_JitFn(log), monkeypatch)
    assert lau.compiled and lau.one == {}
    x, y = torch.zeros(4), torch.ones(4)           # "aligned" / "misaligned" for the stand-in binder
    lau[(2,)](x, 5)                                # first of its specialization: JITFunction.run, kept
    lau[(3, 2)](x, 6, BLOCK=8)                     # same specialization: the kept kernel, every argument in order
    lau[lambda b: (b["N"], 1, 1)](y, 9)            # misaligned: another specialization -> JITFunction.run
    lau[lambda b: (b["N"],)](y, 10)                # its kept kernel, the grid from the bound arguments
    lau[(1,)](x, 5, BLOCK=16)                      # another constexpr: JITFunction.run again
    spec_a = (("*fp32", "D"), ("i32", None), ("constexpr", 8))
    spec_b = (("*fp32", None), ("i32", None), ("constexpr", 8))
    assert [e[0] for e in log] == ["jit", "compiled", "jit", "compiled", "jit"]
    assert log[1][1:4] == ((3, 2, 1), 7, spec_a) and log[1][4][1:] == (6, 8) and log[1][4][0] is x
    assert log[2][1:] == ((9, 1, 1), spec_b) and log[3][1] == (10, 1, 1) and log[3][3] == spec_b


def test_compiled_layer_switches_off_when_the_launcher_drifts(monkeypatch):
    log = []
    lau = _compiled_launcher(_JitFn(log, fail_run=True), monkeypatch)
    x = torch.zeros(4)
    for _ in range(3):
        lau[(1,)](x, 5)
    assert [e[0] for e in log] == ["jit", "jit", "jit"] and not lau.compiled   # launched once per call, never twice


def test_compiled_layer_under_the_config_layer(monkeypatch):
    """An autotuned kernel: the autotuner's pick per key (``direct``), then the compiled kernel per specialization
    with that config's values bound."""
    t = _Tuner()
    jit_log = []
    t.fn = _JitFn(jit_log)
    t.arg_names = ["x", "N", "BLOCK"]
    lau = _compiled_launcher(t, monkeypatch)
    x = torch.zeros(4)
    for _ in range(3):
        lau[(1,)](x, 50, BLOCK=16)
    assert [e[0] for e in t.log] == ["tuner"]
    assert [e[0] for e in jit_log] == ["jit", "compiled"]


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(2, 300, 3, 64, 64), (1, 1100, 4, 32, 48)])
def test_compiled_layer_on_the_gpu_is_bitwise_the_jit_launch(shape):
    """wkv6 fwd+bwd with every launch through the compiled layer equals, bit for bit, the same with that layer off
    (the JIT function's own launch); r as a misaligned view (one element into its buffer: another alignment
    specialization, so another kernel) gives the same results as aligned r."""
    import kernels.wkv6 as kw
    from tests.test_wkv6 import make_inputs
    base = make_inputs(*shape, dtype=torch.bfloat16, decay="strong", device="cuda", grad=False)
    do = torch.randn(*shape[:3], shape[4], device="cuda").bfloat16()

    def run(misalign=False):
        d = {n: base[n].clone().requires_grad_(True) for n in "rkvwu"}
        r = d["r"]
        if misalign:
            buf = torch.empty(r.numel() + 1, dtype=r.dtype, device="cuda")
            r = buf[1:].view_as(r).copy_(r.detach()).requires_grad_(True)
            d["r"] = r
        o, _ = kw.wkv6(r, d["k"], d["v"], d["w"], d["u"])
        o.backward(do)
        return [o] + [d[n].grad for n in "rkvwu"]

    run()
    lau = [x for x in kc._LAUNCHERS.values() if x.compiled]
    assert lau and any(x.kernels for x in lau)
    on, mis = run(), run(misalign=True)
    for x in lau:
        x.compiled = False
    try:
        off = run()
    finally:
        for x in lau:
            x.compiled = True
    assert all(torch.equal(a, b) for a, b in zip(on, off)), "the compiled layer's results != the JIT launch's"
    assert all(torch.equal(a, b) for a, b in zip(on, mis)), "misaligned r's results != aligned r's"
