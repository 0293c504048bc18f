"""``kernels._common.launch``: the autotuned launch without the autotuner's per-call dispatch, on a stand-in
autotuner (the interpreter gives every real kernel one config, where the launcher always defers)."""
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
