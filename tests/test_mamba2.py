"""reference.mamba2: the chunked SSD scan against the step-by-step recurrence (float64), and gradients.

The chunked form (segment sums inside chunks, state passing between chunks) and the direct recurrence are two
independent algorithms for the same function; they must agree to float64 round-off for every option.
"""
import pytest
import torch

from reference.mamba2 import mamba_chunk_scan, ssd_recurrence

F64 = torch.float64


def _inputs(b=2, l=37, h=4, p=3, g=2, n=5, seed=0, dtype=F64, strong=False):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    A = -(torch.rand(h, generator=gen, dtype=dtype) * (8.0 if strong else 2.0) + 0.05)
    return dict(x=r(b, l, h, p), dt=r(b, l, h), A=A, B=r(b, l, g, n), C=r(b, l, g, n))


def _close(a, b, tol=1e-10):
    err = (a - b).norm() / b.norm().clamp_min(1e-30)
    assert err < tol, f"relative error {err:.3g}"


@pytest.mark.parametrize("l", [1, 7, 16, 37, 64])
@pytest.mark.parametrize("chunk", [1, 8, 16, 64])
def test_chunked_matches_recurrence_plain(l, chunk):
    t = _inputs(l=l)
    t["dt"] = torch.nn.functional.softplus(t["dt"])          # positive Δ without dt_softplus
    y1, s1 = mamba_chunk_scan(**t, chunk_size=chunk, return_final_states=True)
    y2, s2 = ssd_recurrence(**t, return_final_states=True)
    _close(y1, y2)
    _close(s1, s2)


@pytest.mark.parametrize("D_shape", ["h", "hp", None])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_chunked_matches_recurrence_options(D_shape, groups):
    t = _inputs(l=29, h=4, g=groups, seed=groups)
    h, p, n = 4, 3, 5
    gen = torch.Generator().manual_seed(7)
    D = {"h": torch.randn(h, dtype=F64, generator=gen), "hp": torch.randn(h, p, dtype=F64, generator=gen),
         None: None}[D_shape]
    kw = dict(D=D, z=torch.randn(2, 29, h, p, dtype=F64, generator=gen),
              dt_bias=torch.randn(h, dtype=F64, generator=gen), dt_softplus=True,
              initial_states=torch.randn(2, h, p, n, dtype=F64, generator=gen))
    y1, s1 = mamba_chunk_scan(**t, chunk_size=8, return_final_states=True, **kw)
    y2, s2 = ssd_recurrence(**t, return_final_states=True, **kw)
    _close(y1, y2)
    _close(s1, s2)


def test_strong_decay_and_large_dt():
    t = _inputs(l=50, strong=True)
    t["dt"] = t["dt"] * 10                                    # Δ up to ~30 through softplus: exp(ΔA) ≈ 1e-100
    y1, s1 = mamba_chunk_scan(**t, chunk_size=16, dt_softplus=True, return_final_states=True)
    y2, s2 = ssd_recurrence(**t, dt_softplus=True, return_final_states=True)
    assert torch.isfinite(y1).all()
    _close(y1, y2)
    _close(s1, s2)


def test_padding_invariance_and_state_passing():
    """Splitting a sequence in two with the final state carried over equals one pass."""
    t = _inputs(l=45)
    kw = dict(dt_softplus=True, D=torch.ones(4, dtype=F64))
    y, s = mamba_chunk_scan(**t, chunk_size=16, return_final_states=True, **kw)
    first = {k: (v[:, :20] if v.dim() > 1 else v) for k, v in t.items()}
    second = {k: (v[:, 20:] if v.dim() > 1 else v) for k, v in t.items()}
    ya, sa = mamba_chunk_scan(**first, chunk_size=16, return_final_states=True, **kw)
    yb, sb = mamba_chunk_scan(**second, chunk_size=16, initial_states=sa, return_final_states=True, **kw)
    _close(torch.cat([ya, yb], 1), y)
    _close(sb, s)


def test_dtypes_fp32_and_bf16():
    t64 = _inputs(l=33)
    ref = ssd_recurrence(**t64, dt_softplus=True)
    for dt_, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        t = {k: v.to(dt_) for k, v in t64.items()}
        y, s = mamba_chunk_scan(**t, chunk_size=16, dt_softplus=True, return_final_states=True)
        assert y.dtype == dt_ and s.dtype == torch.float32
        _close(y.double(), ref, tol)


def test_bad_shapes_raise():
    t = _inputs(l=8, h=4, g=3)
    with pytest.raises(ValueError, match="groups"):
        mamba_chunk_scan(**t, chunk_size=4)
    t = _inputs(l=8)
    with pytest.raises(ValueError, match="dt"):
        mamba_chunk_scan(t["x"], t["dt"][:, :, :2], t["A"], t["B"], t["C"], 4)


def test_gradcheck_chunked():
    t = _inputs(b=1, l=6, h=2, p=2, g=1, n=3)
    gen = torch.Generator().manual_seed(3)
    extra = dict(D=torch.randn(2, dtype=F64, generator=gen), dt_bias=torch.randn(2, dtype=F64, generator=gen),
                 init=torch.randn(1, 2, 2, 3, dtype=F64, generator=gen),
                 z=torch.randn(1, 6, 2, 2, dtype=F64, generator=gen))
    args = [t["x"], t["dt"], t["A"], t["B"], t["C"], extra["D"], extra["dt_bias"], extra["init"], extra["z"]]
    args = [a.clone().requires_grad_() for a in args]

    def f(x, dt, A, B, C, D, dtb, init, z):
        y, s = mamba_chunk_scan(x, dt, A, B, C, 4, D=D, z=z, dt_bias=dtb, dt_softplus=True, initial_states=init,
                                return_final_states=True)
        return y, s

    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-6)


def test_chunked_gradients_match_recurrence():
    t = {k: v.clone().requires_grad_() for k, v in _inputs(l=21).items()}
    g1 = torch.autograd.grad(mamba_chunk_scan(**t, chunk_size=8, dt_softplus=True).pow(2).sum(), list(t.values()))
    g2 = torch.autograd.grad(ssd_recurrence(**t, dt_softplus=True).pow(2).sum(), list(t.values()))
    for a, b in zip(g1, g2):
        _close(a, b, 1e-9)
