"""eigsh with a Krylov basis stored in bfloat16/float16 (``basis_dtype``), value-mode bounds
with half-precision products, and the convergence-tail estimate ``_Trend`` on its own."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from _oracles import dense_hessian
from conftest import sym_matrix

import valleys
from valleys.linalg import eigsh
from valleys.linalg._certify import _Trend
from valleys.linalg._krylov import _Lanczos
from valleys.operators._base import DenseOperator, LambdaOperator

SEPARATED = torch.cat(
    [torch.tensor([10, 8, 6.5, 5, 4, 3.2, 2.5, 2, 1.6, 1.3]), torch.linspace(-1, 1, 390)])
CLUSTERED = torch.cat([1 - 1e-3 * torch.arange(12.0), torch.linspace(0, 0.9, 288)])
LOW = [torch.bfloat16, torch.float16]


def _network():
    """A float32 tanh MLP on cross-entropy, p = 143, and its dense float64 Hessian."""
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 5))
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=g))
    X, Y = torch.randn(60, 6, generator=g), torch.randint(0, 5, (60,), generator=g)
    obj = valleys.Objective(model, "ce", (X, Y))
    exact = valleys.Objective(copy.deepcopy(model).double(), "ce", (X.double(), Y))
    Xe, Ye = next(iter(exact.chunks()))
    H = dense_hessian(lambda t: exact.chunk_losses(t, Xe, Ye).mean(), exact.parameters_vector())
    return obj, H


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_a_low_basis_certifies_the_sharpness_of_a_network_at_half_the_basis_memory(dtype):
    obj, H = _network()
    truth = float(torch.linalg.eigvalsh(H)[-1])
    op = valleys.hessian(obj)
    full = eigsh(op, k=1, tol=1e-4, accuracy="value")
    low = eigsh(op, k=1, tol=1e-4, accuracy="value", basis_dtype=dtype)
    assert low.converged and low.message == ""
    err = abs(float(low.values[0]) - truth)
    bound = float(low.error_bounds[0])
    assert err <= bound <= 1e-4 * abs(truth), (err, bound)
    assert low.basis_bytes == full.basis_bytes // 2 == (20 + 1) * obj.dim * 2
    assert low.values.dtype == low.vectors.dtype == torch.float32  # results in the work dtype
    assert low.matvecs <= full.matvecs + 4  # 2 measure the noise, the rest is rounding


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_value_mode_reaches_a_tolerance_below_the_basis_rounding_where_a_gap_exists(dtype):
    A = sym_matrix(SEPARATED).float()
    truth = float(torch.linalg.eigvalsh(A.double())[-1])
    res = eigsh(DenseOperator(A), k=1, tol=1e-5, accuracy="value", basis_dtype=dtype)
    assert res.converged
    assert abs(float(res.values[0]) - truth) <= float(res.error_bounds[0]) <= 1e-5 * truth


def test_a_residual_below_the_basis_rounding_is_flagged_not_converged():
    A = sym_matrix(SEPARATED).float()
    truth = float(torch.linalg.eigvalsh(A.double())[-1])
    with pytest.warns(RuntimeWarning, match="torch.bfloat16 Krylov basis resolves"):
        res = eigsh(DenseOperator(A), k=1, tol=1e-5, basis_dtype=torch.bfloat16)
    assert not res.converged and "accuracy='value'" in res.message
    assert abs(float(res.values[0]) - truth) <= float(res.error_bounds[0])
    assert res.matvecs < 30  # it stops at the floor instead of spending the budget


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("accuracy", ["residual", "value"])
def test_bounds_hold_through_restarts_and_on_a_cluster_the_basis_cannot_resolve(dtype,
                                                                                 accuracy):
    for spectrum in (SEPARATED, CLUSTERED):
        A = sym_matrix(spectrum).float()
        truth = torch.linalg.eigvalsh(A.double())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = eigsh(DenseOperator(A), k=3, ncv=8, tol=1e-5, accuracy=accuracy,
                        basis_dtype=dtype, seed=1)
        err = (res.values.double()[:, None] - truth[None, :]).abs().min(dim=1).values
        assert bool((err <= res.error_bounds.double()).all()), (err, res.error_bounds)
        assert res.restarts >= 1 and res.matvecs < 200  # gives up at the floor, not the budget
        if res.converged:
            criterion = res.error_bounds if accuracy == "value" else res.residuals
            assert bool((criterion.double() <= 1e-5 * res.values.double().abs()).all())


def test_a_low_basis_stores_scaled_vectors_so_float16_does_not_underflow():
    """Unit vectors of p = 10⁸ parameters have entries near 1e-4, where float16 loses digits
    (its smallest normal number is 6e-5); the basis stores sqrt(p)·q instead."""
    p = 4096
    op = DenseOperator(torch.diag(torch.linspace(0, 1, p)))
    start = torch.randn(p, generator=torch.Generator().manual_seed(0))
    lz = _Lanczos(op, 5, start, torch.Generator().manual_seed(0), basis_dtype=torch.float16)
    lz.step()
    stored = lz.Q[:, :2].float()
    assert torch.allclose(stored.norm(dim=0), torch.full((2,), math.sqrt(p)), rtol=1e-3)
    assert abs(float(lz.G[0, 0]) - 1) < 1e-3 and abs(float(lz.G[0, 1])) < 1e-3


def test_basis_dtype_is_checked():
    A = DenseOperator(sym_matrix(SEPARATED).float())
    with pytest.raises(ValueError, match="wider than the work dtype"):
        eigsh(A, basis_dtype=torch.float64)
    with pytest.raises(TypeError, match=r"real floating torch\.dtype"):
        eigsh(A, basis_dtype="bfloat16")
    with pytest.raises(TypeError, match=r"real floating torch\.dtype"):
        eigsh(A, basis_dtype=torch.int8)
    with pytest.raises(ValueError, match="not supported with inner"):
        eigsh(A, basis_dtype=torch.float16, inner=DenseOperator(torch.eye(400)))
    # The work dtype itself is the default basis: the same numbers.
    same = eigsh(A, k=2, basis_dtype=torch.float32)
    default = eigsh(A, k=2)
    assert torch.equal(same.values, default.values) and same.matvecs == default.matvecs


# -- value mode with half-precision products ----------------------------------------------------
@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_value_bounds_of_half_precision_products_contain_the_truth(dtype):
    """Products rounded like a half-precision model's (matrix and vector in ``dtype``): the
    measured noise enters the value bound, which holds, and tol = 1e-4 is flagged out of reach
    while 5e-2 converges."""
    A = sym_matrix(SEPARATED)
    rounded = A.to(dtype)
    op = LambdaOperator(lambda v: rounded @ v, A.shape[0], dtype)
    truth = torch.linalg.eigvalsh(rounded.double()).flip(0)
    with pytest.warns(RuntimeWarning, match=f"below what {dtype} products resolve"):
        tight = eigsh(op, k=2, tol=1e-4, accuracy="value")
    loose = eigsh(op, k=2, tol=5e-2, accuracy="value")
    assert loose.converged and not tight.converged
    for res in (tight, loose):
        err = (res.values.double() - truth[:2]).abs()
        assert bool((err <= res.error_bounds.double()).all()), (err, res.error_bounds)
        assert res.noise > 10 * torch.finfo(torch.float32).eps * float(truth[0])


# -- the tail estimate --------------------------------------------------------------------------
def _trend(values: list[float]) -> _Trend:
    trend = _Trend()
    for v in values:
        trend.update(torch.tensor([v], dtype=torch.float64))
    return trend


def test_trend_extrapolates_a_geometric_convergence_exactly():
    # θ_t = 1 − 0.5^t: the remaining change after t = 4 is 0.5^4 = 0.0625.
    tail = _trend([1 - 0.5**t for t in range(1, 5)]).tail(1e-12)
    assert tail is not None and math.isclose(float(tail[0]), 0.5**4, rel_tol=1e-9)


def test_trend_uses_the_slower_ratio_and_refuses_without_a_geometric_history():
    # Changes 0.1, 0.01, 0.005: ratios 0.1 and 0.5; the slower gives 0.005·0.5/0.5 = 0.005.
    tail = _trend([0.0, 0.1, 0.11, 0.115]).tail(1e-12)
    assert tail is not None and math.isclose(float(tail[0]), 0.005, rel_tol=1e-9)
    assert _trend([0.0, 0.1, 0.2]).tail(1e-12) is None  # fewer than four values
    assert float(_trend([0.0, 0.1, 0.2, 0.35]).tail(1e-12)[0]) == math.inf  # not converging
    assert float(_trend([0.0, 1e-13, 0.1, 0.15]).tail(1e-12)[0]) == math.inf  # a jump
    assert float(_trend([0.0, 0.1, 0.11, 0.11 + 1e-13]).tail(1e-12)[0]) == 0.0  # settled


def test_trend_starts_over_when_the_number_of_wanted_values_changes():
    trend = _trend([0.0, 0.1, 0.11, 0.111])
    trend.update(torch.tensor([0.1, 0.2], dtype=torch.float64))
    assert trend.tail(1e-12) is None
