"""Gradient slots (kernels/_slots.py): consumers write their input gradients into the producer's buffer, the
producer skips its copy, the values are the same — and every way it could go wrong falls back to the copy."""
import pytest
import torch

import kernels._slots as slots
from fused.projections import stacked_proj


class _Consumer(torch.autograd.Function):
    """y = 2·x (a stand-in for a lab op): its backward writes dx into the gradient slot when there is one."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return 2 * x

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        dx = slots.grad_slot(x)
        dx = torch.empty_like(x) if dx is None else dx
        torch.mul(dy, 2, out=dx)
        return dx


def _run(monkeypatch, enabled, consume_twice=False):
    monkeypatch.setenv("GROUNDTHINK_GRAD_SLOTS", "1" if enabled else "0")
    torch.manual_seed(0)
    xs = torch.randn(4, 13, 24, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 24, 40, dtype=torch.float64, requires_grad=True)
    outs = [t.view(13, 5, 8) for t in stacked_proj(xs, w)]
    loss = sum((_Consumer.apply(o) * (i + 1)).sum() for i, o in enumerate(outs))
    if consume_twice:                          # the first piece read by a second consumer: autograd sums two grads
        loss = loss + (_Consumer.apply(outs[0]) ** 2).sum()
    taken = _spy(monkeypatch)
    loss.backward()
    return xs.grad, w.grad, taken


def _spy(monkeypatch):
    """Record, for each stacked backward, whether it found its gradients in place."""
    taken, orig = [], slots.take

    def spy(*a):
        buf = orig(*a)
        taken.append(buf is not None)
        return buf

    monkeypatch.setattr("fused.projections.take", spy)
    return taken


@pytest.mark.parametrize("twice", [False, True])
def test_slots_same_gradients_without_the_copy(monkeypatch, twice):
    """With slots the stacked backward finds every gradient in place (no stack) and the gradients equal the
    copying path's bit for bit; a piece consumed twice falls back to the copy (its slot is handed out once),
    with the same gradients; the registry is empty afterwards."""
    want = _run(monkeypatch, False, twice)
    got = _run(monkeypatch, True, twice)
    assert got[2] == [not twice]
    assert want[2] == [False]
    for a, b in zip(got[:2], want[:2]):
        assert torch.equal(a, b)
    assert not slots._GROUPS


def test_slot_matching_rules():
    """A slot is a view of one buffer laid out like the offered tensor; tensors outside it, of another dtype,
    non-contiguous slots when contiguity is asked, and a range handed out before get None."""
    y = torch.randn(3, 8, 6)
    s = slots.offer(y)
    try:
        assert slots.grad_slot(torch.randn(8, 6)) is None                 # another storage
        d = slots.grad_slot(y[1])
        assert d is not None and d.shape == (8, 6) and d.data_ptr() == s.buf[1].data_ptr()
        assert slots.grad_slot(y[1, :4]) is None                         # overlaps a range handed out
        assert slots.grad_slot(y[2, :, :3]) is None                      # its slot would not be contiguous
        assert slots.grad_slot(y[2, :, :3], contiguous=False).stride() == y[2, :, :3].stride()
        assert slots.take(s, [d], lambda buf: [buf[0]]) is None          # not where the producer expects it
    finally:
        slots.take(s, (), lambda buf: ())
    assert s not in slots._GROUPS


def test_slots_wkv6_and_norm_gate_fill_the_stack(monkeypatch):
    """The time mix's pattern: r, k, v into wkv6, the gate pre-activation into norm_gate, all four from one
    stacked_proj (interpreter, fp32): the lab kernels write dr, dk, dv, dz into the slots, the stack copy goes, the
    gradients equal the copying path's."""
    from kernels.norm_gate import norm_gate
    from kernels.wkv6 import wkv6

    def run(flag):
        monkeypatch.setenv("GROUNDTHINK_GRAD_SLOTS", flag)
        torch.manual_seed(0)
        B, T, H, K = 1, 20, 2, 16
        D = H * K
        xs = torch.randn(4, B * T, D, requires_grad=True)
        w = (torch.randn(4, D, D) * 0.2).requires_grad_()
        r, k, v, gp = (t.view(B, T, D) for t in stacked_proj(xs, w))
        o, _ = wkv6(r.view(B, T, H, K), k.view(B, T, H, K), v.view(B, T, H, K), -torch.rand(B, T, H, K),
                    torch.randn(H, K) * 0.3, scale=1.0)
        y = norm_gate(o.reshape(B, T, D), gp, torch.ones(D), torch.zeros(D), group_size=K, eps=1e-5, norm="layer",
                      norm_before_gate=True)
        taken = _spy(monkeypatch)
        y.square().sum().backward()
        return xs.grad, w.grad, taken

    want, got = run("0"), run("1")
    assert (want[2], got[2]) == ([False], [True])
    for a, b in zip(got[:2], want[:2]):
        assert torch.equal(a, b)


def test_slots_mamba2_split_without_the_concatenation(monkeypatch):
    """The Mamba-2 mixer's pattern: the conv output split into x, B, C (fused.projections.split) for the lab's
    SSD scan (interpreter, fp32, batch 2, T not a multiple of its chunk): the scan's backward writes dx, dB, dC
    into the split's slots (strided: rows of the whole conv width), the concatenation goes, the gradients equal
    the concatenating path's bit for bit; the slots off, the split's backward concatenates."""
    import fused.projections as proj
    from kernels.mamba2 import mamba_chunk_scan_combined

    def run(flag):
        monkeypatch.setenv("GROUNDTHINK_GRAD_SLOTS", flag)
        torch.manual_seed(0)
        Bsz, T, H, P, G, N = 2, 37, 2, 8, 1, 16
        xbc = torch.randn(Bsz, T, H * P + 2 * G * N, requires_grad=True)
        dt = (torch.randn(Bsz, T, H) * 0.1).requires_grad_()
        A = -torch.rand(H) * 4 - 1
        x, Bm, Cm = proj.split(xbc, [H * P, G * N, G * N])
        y = mamba_chunk_scan_combined(x.reshape(Bsz, T, H, P), dt, A, Bm.reshape(Bsz, T, G, N),
                                      Cm.reshape(Bsz, T, G, N), 64, D=torch.ones(H), dt_softplus=True)
        taken, orig = [], slots.take
        monkeypatch.setattr(proj, "take", lambda *a: taken.append(orig(*a)) or taken[-1])
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        return xbc.grad, dt.grad, [t is not None for t in taken]

    want, got = run("0"), run("1")
    assert (want[2], got[2]) == ([False], [True])
    for a, b in zip(got[:2], want[:2]):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="split: sizes"):
        proj.split(torch.zeros(2, 5), [2, 2])
