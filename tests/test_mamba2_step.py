"""reference.mamba2_step: one recurrence step on a carried state, token after token, equals the chunked SSD scan
over the whole sequence (outputs and final state, float64) — the decode path agrees with the training path."""
import torch

from reference.mamba2 import mamba_chunk_scan
from reference.mamba2_step import mamba2_step

F64 = torch.float64


def test_steps_equal_the_chunked_scan():
    gen = torch.Generator().manual_seed(0)
    b, l, h, p, g, n = 2, 9, 4, 3, 2, 5
    r = lambda *s: torch.randn(*s, generator=gen, dtype=F64)  # noqa: E731
    t = dict(x=r(b, l, h, p), dt=r(b, l, h), A=-(torch.rand(h, generator=gen, dtype=F64) * 2 + 0.05),
             B=r(b, l, g, n), C=r(b, l, g, n))
    kw = dict(dt_softplus=True, D=r(h), dt_bias=r(h))
    y, s = mamba_chunk_scan(**t, chunk_size=4, return_final_states=True, **kw)
    state, ys = torch.zeros_like(s), []
    for i in range(l):
        yi, state = mamba2_step(state, t["x"][:, i], t["dt"][:, i], t["A"], t["B"][:, i], t["C"][:, i], **kw)
        ys.append(yi)
    torch.testing.assert_close(torch.stack(ys, 1), y, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(state, s, rtol=1e-10, atol=1e-12)
