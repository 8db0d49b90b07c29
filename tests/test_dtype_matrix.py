"""The dtype matrix: in float64, float32, bfloat16 and float16 the top Hessian eigenvalue, the
non-uniformity's ``λ_max(Σ)`` and the trace are within their reported error of the float64 truth
of the same (rounded) model and data, or flagged as not converged (issue 15)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from _oracles import dense_hessian, hessian_variance, sample_hessians

import valleys
from valleys.linalg import trace
from valleys.operators import hessian

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def _problem(dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.Tanh(), torch.nn.Linear(10, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    X = torch.randn(40, 6, generator=g)
    Y = torch.randint(0, 3, (40,), generator=g)
    low = copy.deepcopy(model).to(dtype)
    # The truth: the same rounded weights and inputs, evaluated in float64.
    exact = valleys.Objective(copy.deepcopy(low).double(), "ce", (X.to(dtype).double(), Y))
    return valleys.Objective(low, "ce", (X.to(dtype), Y)), exact




def _truths(dtype):
    obj, exact = _problem(dtype)
    theta = exact.parameters_vector()
    X, Y = next(iter(exact.chunks()))
    H = dense_hessian(lambda t: exact.chunk_losses(t, X, Y).mean(), theta)
    sigma = hessian_variance(sample_hessians(exact))
    return obj, H, sigma


def _honest(record, truth: float, tol: float) -> None:
    err = abs(float(record.values[0]) - truth)
    bound = float(record.error_bounds[0])
    assert err <= bound, (err, bound, record.message)
    if record.converged:
        assert bound <= tol * abs(truth) * (1 + 1e-6)
    else:
        assert record.message


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_sharpness_and_nonuniformity_are_within_their_bounds_or_flagged(dtype):
    obj, H, sigma = _truths(dtype)
    tol = 1e-4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the not-converged notes of half dtypes
        top = valleys.sharpness(obj, tol=tol, return_result=True)
        var = valleys.nonuniformity(obj, tol=tol, return_result=True)
    _honest(top, float(torch.linalg.eigvalsh(H)[-1]), tol)
    _honest(var, float(torch.linalg.eigvalsh(sigma)[-1]), tol)
    if dtype in (torch.float64, torch.float32):
        assert top.converged and var.converged
    else:  # 1e-4 is out of reach of half-precision products: flagged, never "converged"
        assert not top.converged and not var.converged


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_trace_runs_in_every_dtype_and_its_exact_diagonal_is_close(dtype):
    obj, H, _ = _truths(dtype)
    truth = float(torch.trace(H))
    exact = trace(hessian(obj), method="exact")
    hutchpp = trace(hessian(obj), method="hutch++", num_matvecs=30)
    # The exact method's only error is rounding: a few ulps of the dtype, relative to ‖H‖_F·sqrt(p).
    slack = 50 * torch.finfo(dtype).eps * float(torch.linalg.matrix_norm(H)) * H.shape[0] ** 0.5
    assert abs(exact.value - truth) <= slack
    assert abs(hutchpp.value - truth) <= 6 * hutchpp.stderr + slack
