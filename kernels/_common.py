"""Plumbing shared by every kernel module: output allocation, input validation, launch configs.

* ``new_empty`` is the one allocator kernels use for their outputs and workspaces. Tests switch it to a
  NaN-filled allocation (``groundthink.harness.nan_prefilled``) so that an element a kernel forgets to write
  fails the check instead of passing on leftover memory.
* ``check_*`` raise ``ValueError``/``TypeError`` naming the argument, before anything reaches Triton.
* ``autotune_configs`` gives Triton's autotuner a single config under the interpreter (a multi-config
  ``@triton.autotune`` fails with no GPU), the full list otherwise.
* ``launch(kernel)[grid](*args, **meta)`` launches an autotuned kernel like ``kernel[grid](...)`` with less host
  time once the autotuner has chosen (``Launcher``).
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import torch
import triton

from kernels import INTERPRET

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_NAN_FILL = False


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s input_precision for a kernel's inputs: "ieee" for fp32 (fp32-accurate), else "tf32" (fp16 / bf16
    dots run natively and ignore it; fp32 operands made inside such kernels take tf32)."""
    return "ieee" if dtype == torch.float32 else "tf32"


def new_empty(shape, dtype, device) -> torch.Tensor:
    """Allocate a kernel output. NaN-filled when tests ask for it (floating dtypes only)."""
    if _NAN_FILL and dtype.is_floating_point:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


@contextlib.contextmanager
def nan_prefill(enabled: bool = True):
    """Inside this context every ``new_empty`` output starts as NaN."""
    global _NAN_FILL
    old, _NAN_FILL = _NAN_FILL, enabled
    try:
        yield
    finally:
        _NAN_FILL = old


def check_tensor(name: str, t, *, ndim: int | None = None, dtypes: Sequence[torch.dtype] = _FLOAT_DTYPES,
                 device: torch.device | None = None, shape: Sequence[int | None] | None = None) -> None:
    """Validate one tensor argument and raise a clear error naming it."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if dtypes and t.dtype not in dtypes:
        raise TypeError(f"{name} has dtype {t.dtype}; expected one of {[str(d) for d in dtypes]}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device} but the other inputs are on {device}")
    if shape is not None:
        if len(shape) != t.dim() or any(s is not None and s != ts for s, ts in zip(shape, t.shape)):
            want = tuple("*" if s is None else s for s in shape)
            raise ValueError(f"{name} has shape {tuple(t.shape)}; expected {want}")
    if t.device.type != "cuda" and not INTERPRET:
        raise ValueError(f"{name} is on {t.device}: Triton kernels need CUDA tensors (or TRITON_INTERPRET=1)")


def check_same_dtype(**tensors: torch.Tensor) -> torch.dtype:
    """All named tensors share one dtype; return it."""
    dtypes = {n: t.dtype for n, t in tensors.items() if t is not None}
    if len(set(dtypes.values())) > 1:
        raise TypeError("dtype mismatch: " + ", ".join(f"{n}={d}" for n, d in dtypes.items()))
    return next(iter(dtypes.values()))


def autotune_configs(configs: list[triton.Config]) -> list[triton.Config]:
    """All configs on a GPU, only the first under the interpreter."""
    return configs[:1] if INTERPRET else configs


_SMS: dict = {}


def num_sms(device: torch.device) -> int:
    """The device's SM count (4 on the CPU), looked up once per device (``get_device_properties`` costs ~10 µs a
    call; the launchers ask several times per call)."""
    n = _SMS.get(device)
    if n is None:
        n = _SMS[device] = (torch.cuda.get_device_properties(device).multi_processor_count
                            if device.type == "cuda" else 4)
    return n


class Launcher:
    """``launch(kernel)[grid](*args, **meta)``: the same launch as ``kernel[grid](*args, **meta)`` (a JIT function,
    or one under ``@triton.autotune``), with less host time. Two layers, each reusing only what Triton itself would
    have chosen for the launch:

    * the config (``direct``): Triton's ``Autotuner.run`` builds its cache key on every call (dicts of every
      argument, ``hasattr`` and ``str(dtype)`` of each: ~20-40 µs a launch on the H200's host, run 26
      ``gpu_wkv6.py --host-gpu``); this keeps the config the autotuner chose per key (the values of its ``key``
      arguments and the dtypes of the tensor arguments) and launches the JIT function with it. The first launch of
      a key goes through the autotuner (benchmarking, its disk cache). A kernel with one config needs no choosing.
    * the compiled kernel (``compiled``): ``JITFunction.run`` re-derives on every call what its compiled kernel
      depends on (its binder's specialization: dtypes, 16-byte alignment of pointers, integers equal to 1 or
      multiples of 16, constexpr values), formats a string key from it, checks hooks and globals and builds launch
      metadata. This calls the same binder, keeps the ``CompiledKernel`` per specialization as it is (and config),
      and calls its launcher the way ``JITFunction.run`` does. A specialization not seen yet goes through
      ``JITFunction.run`` (compiling if needed), which returns the kernel to keep.

    Neither under the interpreter nor for configs with a ``pre_hook``. Each switches itself off for good if a
    launch through it raises before launching (Triton's API drifting); the layer below then serves it."""

    def __init__(self, kernel):
        self.kernel = kernel
        configs = getattr(kernel, "configs", None)
        tuned = configs is not None and hasattr(kernel, "fn")
        self.fn = kernel.fn if tuned else kernel                            # the JIT function
        hooks = tuned and any(c.pre_hook is not None for c in configs)
        self.one = {} if not tuned else configs[0].all_kwargs() if len(configs) == 1 and not hooks else None
        self.direct = not INTERPRET and tuned and len(configs) > 1 and not hooks and hasattr(kernel, "keys")
        self.compiled = not INTERPRET and not hooks and hasattr(self.fn, "device_caches")
        self.key_at = [(n, kernel.arg_names.index(n)) for n in getattr(kernel, "keys", ())]
        self.best: dict = {}
        self.kernels: dict = {}

    def __getitem__(self, grid):
        return lambda *args, **meta: self.run(grid, args, meta)

    def run(self, grid, args, meta):
        if self.compiled and self.one is not None:      # a plain JIT function or one config: nothing to choose
            return self._jit(grid, args, meta, self.one, ())
        if not self.direct:
            return self.kernel[grid](*args, **meta)
        key = (tuple(meta[n] if n in meta else args[i] if i < len(args) else None for n, i in self.key_at)
               + tuple(a.dtype for a in args if isinstance(a, torch.Tensor))
               + tuple(a.dtype for a in meta.values() if isinstance(a, torch.Tensor)))
        cfg = self.best.get(key)
        if cfg is not None:
            return self._jit(grid, args, meta, cfg, key)
        out = self.kernel[grid](*args, **meta)
        best = getattr(self.kernel, "best_config", None)
        if best is not None and best.pre_hook is None:
            self.best[key] = best.all_kwargs()
        return out

    def _jit(self, grid, args, meta, cfg, key):
        """The JIT function's launch with config ``cfg`` (autotune key ``key``)."""
        if self.compiled:
            try:
                return self._compiled(grid, args, {**meta, **cfg}, key)
            except Exception:  # noqa: BLE001 - raised before launching (API drift): the JIT function serves
                self.compiled = False
        if self.one is not None:
            return self.kernel[grid](*args, **meta)
        try:
            return self.fn[grid](*args, **meta, **cfg)
        except Exception:  # noqa: BLE001 - API drift: the autotuner serves this launch and every later one
            self.direct = False
            return self.kernel[grid](*args, **meta)

    def _compiled(self, grid, args, kw, key):
        device = _driver().get_current_device()
        bound, spec, _ = self.fn.device_caches[device][-1](*args, **kw)     # the JIT function's own binder
        ck_key = (device, key, *spec)
        ck = self.kernels.get(ck_key)
        if ck is None:      # first launch of this specialization: JITFunction.run compiles or loads it; kept
            ck = self.fn[grid](*args, **kw)
            if ck is not None:
                self.kernels[ck_key] = ck
            return ck
        if callable(grid):
            grid = grid(bound)
        stream = _driver().get_current_stream(device)
        vals = bound.values()
        rt = triton.knobs.runtime
        ck.run(grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1, stream, ck.function,
               ck.packed_metadata, ck.launch_metadata(grid, stream, *vals), rt.launch_enter_hook,
               rt.launch_exit_hook, *vals)
        return ck


def _driver():
    return triton.runtime.driver.active


_LAUNCHERS: dict = {}


def forget_picks(kernel) -> None:
    """Forget what launches of an autotuned ``kernel`` chose: the autotuner's cache and its launcher's kept configs
    and compiled kernels (after its ``configs`` were replaced: tests and dev scripts)."""
    kernel.cache.clear()
    lau = launch(kernel)
    lau.best.clear()
    lau.kernels.clear()


def launch(kernel) -> Launcher:
    """The kernel's one ``Launcher`` (made on first use)."""
    lau = _LAUNCHERS.get(kernel)
    if lau is None:
        lau = _LAUNCHERS[kernel] = Launcher(kernel)
    return lau


# host-side integer helpers: plain Python (recent Triton's cdiv / next_power_of_2 are constexpr functions that cost
# microseconds per host call)
def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def pow2(n: int) -> int:
    """The smallest power of 2 >= n (n >= 1)."""
    return 1 << max(n - 1, 0).bit_length()


def grid_bucket(programs: int) -> int:
    """Autotune key of the kernels whose best config depends on how full the GPU is (warps, stages, register
    caps): the launch's program count, coarsely (the power of two above it, at most 2^16), passed as an unused,
    unspecialized kernel argument (``GRID_BUCKET``, in ``do_not_specialize``) named in the autotune key. Without it
    the first shape to autotune decides for every shape (in the process, and on disk with
    TRITON_CACHE_AUTOTUNING=1): H200 run 25 timed wkv6's B8 T4096 H32 fwd+bwd at 6.93 ms after the GPU tests' small
    shapes had picked its backward's configs, 5.85 ms when it autotuned first, and 5.84 with this key after the
    same small tests. tests/test_structure.py checks that every multi-config autotuned kernel has a size key."""
    return min(pow2(max(1, programs)), 1 << 16)
