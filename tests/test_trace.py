"""Trace estimators: exactness, unbiasedness, error rates and calibrated standard errors."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from conftest import sym_matrix

from valleys.linalg import TraceResult, trace
from valleys.operators._base import DenseOperator, LambdaOperator

NUM_SEEDS = 200


# A decaying (PSD) spectrum, where deflation pays off, and a flat indefinite one.
DECAYING = sym_matrix(1.0 / (1.0 + torch.arange(200.0)) ** 1.5, seed=1)
FLAT = sym_matrix(torch.linspace(-1.0, 2.0, 200), seed=2)


def errors(A: torch.Tensor, method: str, m: int, distribution: str = "rademacher"):
    op = DenseOperator(A)
    truth = float(torch.trace(A))
    results = [
        trace(op, method, num_matvecs=m, seed=s, distribution=distribution)
        for s in range(NUM_SEEDS)
    ]
    err = np.array([r.value - truth for r in results])
    stderr = np.array([r.stderr for r in results])
    return err, stderr, results


def test_exact_matches_torch_trace():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(130, 130, generator=g, dtype=torch.float64)  # not symmetric, not a block
    res = trace(DenseOperator(A), "exact")
    assert isinstance(res, TraceResult)
    assert res.value == pytest.approx(float(torch.trace(A)), rel=1e-12, abs=1e-12)
    assert res.stderr == 0.0 and res.matvecs == 130 and res.num_samples == 0


@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_unbiased_and_calibrated(method, distribution):
    for A in (DECAYING, FLAT):
        err, stderr, results = errors(A, method, 30, distribution)
        assert all(r.matvecs == 30 for r in results)
        # Unbiased: the mean error is within a few standard errors of the mean.
        assert abs(err.mean()) <= 4 * err.std(ddof=1) / math.sqrt(NUM_SEEDS)
        # Calibrated: the reported stderr matches the spread of the estimates...
        assert 0.7 <= np.sqrt(np.mean(err**2)) / np.mean(stderr) <= 1.4
        # ...so ~95% of the estimates fall within two reported standard errors.
        assert 0.85 <= np.mean(np.abs(err) <= 2 * stderr) <= 1.0


def test_hutchinson_error_shrinks_like_inverse_sqrt():
    rmse = [np.sqrt(np.mean(errors(FLAT, "hutchinson", m)[0] ** 2)) for m in (20, 80)]
    assert 1.5 <= rmse[0] / rmse[1] <= 2.7  # theory: sqrt(80 / 20) = 2


def test_hutchpp_beats_hutchinson_on_a_decaying_spectrum():
    rmse = {
        method: np.sqrt(np.mean(errors(DECAYING, method, 90)[0] ** 2))
        for method in ("hutchinson", "hutch++")
    }
    assert rmse["hutch++"] < rmse["hutchinson"] / 5
    # Hutch++ converges like 1/m on PSD matrices: tripling the budget gains well over sqrt(3).
    small = np.sqrt(np.mean(errors(DECAYING, "hutch++", 30)[0] ** 2))
    assert small / rmse["hutch++"] > 2.5


def test_hutchpp_is_exact_on_low_rank():
    A = sym_matrix(torch.cat([torch.arange(1.0, 6.0), torch.zeros(95)]))
    res = trace(DenseOperator(A), "hutch++", num_matvecs=30)
    assert res.value == pytest.approx(15.0, abs=1e-10)
    assert res.stderr < 1e-10 and res.num_samples == 10


def test_seed_and_float32():
    op = DenseOperator(FLAT.float())
    a, b = trace(op, seed=3), trace(op, seed=3)
    assert a.value == b.value and a.stderr == b.stderr
    assert trace(op, seed=4).value != a.value
    assert abs(a.value - float(torch.trace(FLAT))) < 5 * a.stderr
    assert trace(op, "exact").value == pytest.approx(float(torch.trace(FLAT)), rel=1e-5)


def test_single_sample_stderr_is_nan_and_json_safe():
    res = trace(DenseOperator(FLAT), "hutch++", num_matvecs=3)
    assert math.isnan(res.stderr) and res.matvecs == 3
    d = res.to_dict()
    assert d["stderr"] is None
    json.dumps(d, allow_nan=False)


def test_bad_inputs():
    op = DenseOperator(FLAT)
    with pytest.raises(TypeError, match="LinearOperator"):
        trace(FLAT)
    with pytest.raises(ValueError, match="method"):
        trace(op, "girard")
    with pytest.raises(ValueError, match="distribution"):
        trace(op, distribution="uniform")
    with pytest.raises(ValueError, match="num_matvecs"):
        trace(op, "hutchinson", num_matvecs=1)
    with pytest.raises(ValueError, match="num_matvecs"):
        trace(op, "hutch++", num_matvecs=2)
    with pytest.raises(ValueError, match="num_matvecs"):
        trace(op, num_matvecs=10.5)
    with pytest.raises(TypeError, match="seed"):
        trace(op, seed="0")
    huge = LambdaOperator(lambda v: v, 20_001, torch.float32)
    with pytest.raises(ValueError, match="hutch"):
        trace(huge, "exact")
    assert huge.num_matvecs == 0
    nan_op = LambdaOperator(lambda v: v * float("inf"), 10, torch.float64)
    with pytest.raises(ValueError, match="NaN/inf"):
        trace(nan_op, "hutchinson", num_matvecs=4)


def test_operator_that_mutates_its_input():
    def rude(v):
        out = FLAT @ v
        v.zero_()
        return out

    op = LambdaOperator(rude, 200, torch.float64)
    assert trace(op, "exact").value == pytest.approx(float(torch.trace(FLAT)), rel=1e-12)
    res = trace(op, "hutch++", num_matvecs=60)
    assert abs(res.value - float(torch.trace(FLAT))) < 5 * res.stderr


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_hutchpp_runs_on_half_precision_operators(dtype):
    import valleys
    from valleys import Objective

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    X, Y = torch.randn(64, 5, generator=g), torch.randn(64, 2, generator=g)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    half = Objective(copy.deepcopy(model).to(dtype), "mse", (X.to(dtype), Y.to(dtype)))
    exact = Objective(model.double(), "mse", (X.double(), Y.double()))
    truth = float(torch.trace(valleys.hessian(exact).to_dense()))
    result = valleys.trace(valleys.hessian(half), method="hutch++", num_matvecs=150, seed=0)
    # The estimator's own error plus the operator's rounding (half precision: ~1e-2).
    assert abs(result.value - truth) <= 4 * result.stderr + 0.05 * abs(truth)
