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


def test_floors_hold_half_precision_results_to_their_rounding_floor():
    """``compare(floors=...)`` gives each bf16 output / gradient the error of the exact value merely rounded to bf16;
    ``assert_close_all`` lets a correctly rounded result pass a bound below that floor and still fails a wrong one."""
    x = torch.randn(4096, dtype=torch.float64).to(torch.bfloat16).requires_grad_()
    floors = {}
    errs = compare(lambda x: x * 3, lambda x: x * 3, {"x": x}, floors=floors)
    assert set(floors) == {"out0", "dx"} and all(1e-4 < f < 3e-3 for f in floors.values()), floors
    assert errs["out0"] == pytest.approx(floors["out0"], rel=1e-6) and errs["dx"] == pytest.approx(floors["dx"], rel=1e-6)
    with pytest.raises(AssertionError, match="out0"):
        assert_close_all(errs, 1e-5)
    assert_close_all(errs, 1e-5, floors=floors)
    wrong = compare(lambda x: x * 3.05, lambda x: x * 3, {"x": x}, floors=floors)
    with pytest.raises(AssertionError, match=r"floor"):
        assert_close_all(wrong, 1e-5, floors=floors)
    fp32 = {}
    compare(lambda x: x * 3, lambda x: x * 3, {"x": torch.randn(8, requires_grad=True)}, floors=fp32)
    assert fp32 == {}
