"""The harness itself: relative error, NaN handling, gradient comparison."""
import math

import pytest
import torch

from groundthink.harness import assert_close_all, compare, rel_err


def test_rel_err_basic():
    r = torch.randn(100, dtype=torch.float64)
    assert rel_err(r, r) == 0.0
    assert rel_err(r * (1 + 1e-3), r) == pytest.approx(1e-3, rel=1e-6)


def test_rel_err_nan_and_inf_are_infinite():
    r = torch.randn(10)
    o = r.clone()
    o[3] = float("nan")
    assert math.isinf(rel_err(o, r))
    o[3] = float("inf")
    assert math.isinf(rel_err(o, r))


def test_compare_catches_wrong_gradient():
    class Bad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            return g * 3

    x = torch.randn(5, 4, requires_grad=True)
    errs = compare(lambda x: Bad.apply(x), lambda x: x * 2, {"x": x})
    assert errs["out0"] < 1e-12 and errs["dx"] > 0.4
    with pytest.raises(AssertionError, match="dx"):
        assert_close_all(errs, 1e-5)


def test_compare_runs_the_oracle_in_float64_output_dtype_included():
    """An output-dtype argument (decay_exp's ``dtype``) is float64 in the oracle's call, the caller's in the
    implementation's: the oracle is never rounded to the implementation's output dtype."""
    seen = []

    def fn(x, dtype):
        seen.append(dtype)
        return (x * 3).to(dtype)

    errs = compare(fn, fn, {"x": torch.randn(64, requires_grad=True), "dtype": torch.float16})
    assert seen == [torch.float16, torch.float64] and 1e-5 < errs["out0"] < 1e-3, (seen, errs)
