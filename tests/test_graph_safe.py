"""The reference path must be CUDA-graph capturable (issue 12, run 6): no host→device copy in forward or backward.

A capture fails at the first copy from unpinned host memory ("Cannot copy between CPU and CUDA tensors during
CUDA graph capture unless the CPU tensor is pinned"). Without a GPU the copies are found on the meta device,
where a host→device copy still shows as an operation whose inputs mix ``cpu`` and ``meta``:

* ``_HostCopies`` (a TorchFunctionMode) sees the Python-level calls that build a device tensor from host data
  before any aten op runs — indexing a device tensor with a list/tuple or a CPU tensor (``x[[1, 2]]``: the index
  is made on the host and copied), ``torch.tensor``/``as_tensor`` with a device, ``.to``/``copy_`` of a CPU
  tensor onto the device — and every torch call whose tensor arguments mix CPU and device tensors (0-d CPU
  tensors excepted: CUDA reads them as scalars, no copy).
* the model's forward and backward run under it (autograd's backward ops are reached through the Python calls of
  the forward's autograd Functions and C++ formulas that stay on the device).
* host syncs, the other thing a capture refuses, fail on the meta device by themselves (``.item()``, ``bool``,
  ``nonzero``, ``.tolist()``, ``.cpu()`` raise there), so the same run guards them.
A Python dispatch mode alone would miss the list index: PyTorch builds it below the Python dispatch key.
"""
from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

import fused
from groundthink.registry import resolve

GETITEM = {torch.Tensor.__getitem__, torch.Tensor.__setitem__, torch.Tensor.index_put, torch.Tensor.index_put_}
FROM_HOST = {torch.tensor, torch.as_tensor, torch.Tensor.new_tensor}


def _tensors(obj):
    return [t for t in torch.utils._pytree.tree_leaves(obj) if isinstance(t, torch.Tensor)]


def _host_index(idx) -> bool:
    """An index that is materialised on the host: a list/tuple of ints or a CPU tensor of more than 0-d."""
    items = idx if isinstance(idx, tuple) else (idx,)
    for it in items:
        if isinstance(it, list):
            return True
        if isinstance(it, torch.Tensor) and it.device.type == "cpu" and it.dim() > 0:
            return True
    return False


class _HostCopies(TorchFunctionMode):
    """Records (what, where) for every host→device copy made while active, on a device other than the CPU."""

    def __init__(self):
        super().__init__()
        self.hits: list[str] = []

    def _hit(self, what: str):
        import traceback
        frames = [f for f in traceback.extract_stack()[:-2]
                  if "/torch/" not in f.filename.replace("\\", "/") and not f.filename.endswith(__file__[-20:])]
        where = "/".join(frames[-1].filename.replace("\\", "/").split("/")[-2:]) + f":{frames[-1].lineno}" \
            if frames else "?"
        self.hits.append(f"{what} at {where}")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        ts = _tensors((args, kwargs))
        dev = [t for t in ts if t.device.type != "cpu"]
        if func in GETITEM and dev and len(args) > 1 and _host_index(args[1]):
            self._hit(f"{func.__name__} with a host index ({type(args[1]).__name__})")
        elif func in FROM_HOST and str(kwargs.get("device", "cpu")) != "cpu":
            self._hit(f"{func.__name__}(..., device={kwargs['device']})")
        elif dev and any(t.device.type == "cpu" and t.dim() > 0 for t in ts):
            self._hit(f"{getattr(func, '__name__', func)} mixes CPU and device tensors")
        return func(*args, **kwargs)


def _reference_step_on_meta(variant: str):
    torch.manual_seed(0)
    model = fused.get_model(variant, "tiny", vocab_size=97, ops=resolve("reference"), n_layer=1).to("meta")
    idx = torch.randint(0, 97, (2, 32)).to("meta")
    with _HostCopies() as mode:
        out = model(idx, idx, with_stats=True)
        out[1].backward()
    return mode.hits


def test_detector_sees_a_list_index():
    x = torch.zeros(5, 3, device="meta")
    with _HostCopies() as mode:
        x[[1, 2]]
        x[1:3]
        torch.tensor([1.0], device="meta")
    assert len(mode.hits) == 2, mode.hits


def test_reference_ddlerp_order_values():
    from reference.ddlerp import ddlerp
    g = torch.Generator().manual_seed(3)
    x, m, maa = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((2, 5, 7), (5, 2, 5, 7), (5, 7)))
    every = ddlerp(x, m, maa)
    first, rest = ddlerp(x, m, maa, order=(4, 0, 2, 1, 3))
    assert torch.equal(first, every[4])
    assert torch.equal(rest, torch.stack([every[i] for i in (0, 2, 1, 3)]))


def test_reference_model_step_has_no_host_copy():
    """GF-MH (the validity run's model): forward with stats and backward (every variant was checked once by
    hand: ``python -c "from tests.test_graph_safe import sweep; print(sweep())"``)."""
    hits = _reference_step_on_meta("GF-MH")
    assert not hits, f"GF-MH: host→device copies on the reference path: {sorted(set(hits))}"


def sweep() -> dict:
    """{variant: its host→device copies} over every fusion variant (slow: not a test)."""
    return {v: sorted(set(_reference_step_on_meta(v))) for v in fused.list_models()}
