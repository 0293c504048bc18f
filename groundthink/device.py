"""Facts about the machine (which GPU, its slug for profiles/<slug>/, library versions, the autocast dtype in force) and
the side-stream warm-up that precedes every CUDA-graph capture (the training step's and the gate's), and what holds
CUDA memory as Python sees it (``live_cuda``)."""
from __future__ import annotations

import functools
import gc
import re
import warnings
from pathlib import Path

import torch

PROFILES = Path(__file__).resolve().parent.parent / "profiles"   # the checkout's results folders, one per machine


def autocast_dtype(device_type: str):
    """The dtype autocast casts matmul inputs to on ``device_type``, None when it is off (or unknown: meta)."""
    try:
        return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    except RuntimeError:
        return None


def gpu_name(device=None) -> str | None:
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(device)


def gpu_slug(device=None) -> str:
    """'nvidia-h100-80gb-hbm3' for an H100, 'cpu' without CUDA: the folder name under profiles/."""
    name = gpu_name(device)
    if name is None:
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def profiles_dir(slug: str | None = None) -> Path:
    """profiles/<slug>/ (default: this machine's, ``gpu_slug()``): where the benchmarks, the studies and the
    reports write and read by default."""
    return PROFILES / (slug or gpu_slug())


def versions() -> dict[str, str]:
    """torch, triton, CUDA and every installed peer package (``groundthink.spec.peer_packages``)."""
    import triton

    from groundthink.spec import peer_packages
    out = {"torch": torch.__version__, "triton": triton.__version__,
           "cuda": torch.version.cuda or "none"}
    for mod in peer_packages():
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional peers: absent or broken both mean "not here"
            pass
    return out


@functools.lru_cache(maxsize=None)
def _side_stream(index: int) -> torch.cuda.Stream:
    """The device's one side stream for warm-ups (``warm_on_side_stream``)."""
    return torch.cuda.Stream(device=index)


def warm_on_side_stream(fn, n: int = 1) -> None:
    """Run ``fn`` ``n`` times on a side stream, then make the current stream wait for it: what a CUDA-graph
    capture needs first (compilation, autotuning, lazy initialisation and workspaces kept out of the graph). One
    side stream per device for every call: cuBLAS keeps a workspace (32 MiB on Hopper) per stream it ran on until
    the process ends, and the gate's many warm-ups on fresh pool streams left ~700 MB of them held through the
    training (run 21)."""
    side = _side_stream(torch.cuda.current_device())
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(n):
            fn()
    torch.cuda.current_stream().wait_stream(side)


def live_cuda(top: int = 6) -> str:
    """What holds CUDA memory now, as Python sees it: the live CUDA tensors (distinct storages, the largest first)
    and CUDA graphs (their private pools hold memory that no tensor shows)."""
    stores, graphs = {}, 0
    with warnings.catch_warnings():     # (isinstance touches deprecated module attributes among gc's objects)
        warnings.simplefilter("ignore")
        for o in gc.get_objects():
            try:
                if isinstance(o, torch.Tensor) and o.is_cuda:
                    st = o.untyped_storage()
                    stores.setdefault(st.data_ptr(), (st.nbytes(), f"{list(o.shape)} {str(o.dtype)[6:]}"))
                elif isinstance(o, torch.cuda.CUDAGraph):
                    graphs += 1
            except Exception:       # a tensor subclass or a freed storage: not counted
                continue
    big = sorted(stores.values(), reverse=True)
    mb = sum(n for n, _ in big) / 2**20
    return (f"live: {len(big)} CUDA storages {mb:,.0f} MB (largest: "
            + ", ".join(f"{n / 2**20:,.0f} MB {what}" for n, what in big[:top]) + f"), {graphs} CUDA graphs")
