"""The diagonal estimator against dense diagonals (exact) and statistically (Hutchinson)."""

from __future__ import annotations

import math

import pytest
import torch
from _oracles import sample_hessians
from conftest import make_data, make_model, sym_matrix

import valleys
from valleys.linalg import DiagonalResult, diagonal
from valleys.operators import DenseOperator, LambdaOperator

pytestmark = pytest.mark.usefixtures("one_thread")


def random_matrix(p: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(p, p, generator=g, dtype=torch.float64) + 3 * torch.eye(p).double()


def test_exact_is_the_dense_diagonal():
    A = random_matrix(150, 0)  # not symmetric; 150 > one block of 64 unit vectors
    res = diagonal(DenseOperator(A), "exact")
    assert isinstance(res, DiagonalResult) and res.method == "exact"
    assert torch.equal(res.values, A.diagonal())
    assert torch.equal(res.stderr, torch.zeros(150, dtype=torch.float64))
    assert res.matvecs == 150 and res.seed is None
    assert len(res.to_dict()["values"]) == 150


def test_exact_diagonal_of_a_hessian_matches_the_oracle():
    X, Y = make_data("ce")
    obj = valleys.Objective(make_model("mlp-tanh"), "ce", (X, Y))
    H = sample_hessians(obj).mean(0)
    res = diagonal(valleys.hessian(obj), "exact")
    assert float((res.values - H.diagonal()).abs().max()) <= 1e-10 * float(H.abs().max())


def test_hutchinson_is_exact_on_a_diagonal_matrix():
    d = torch.linspace(-2, 5, 40, dtype=torch.float64)
    res = diagonal(DenseOperator(torch.diag(d)), "hutchinson", num_matvecs=10, seed=1)
    assert torch.allclose(res.values, d, rtol=0, atol=1e-15)
    assert float(res.stderr.max()) <= 1e-15  # every term is A_jj exactly


def test_hutchinson_errors_are_within_a_few_standard_errors():
    p, m = 30, 400
    A = sym_matrix(torch.linspace(-1, 4, p), seed=3) + torch.diag(torch.linspace(0, 3, p)).double()
    z_all = []
    for seed in range(5):
        res = diagonal(DenseOperator(A), num_matvecs=m, seed=seed)
        assert res.matvecs == m and res.seed == seed and res.method == "hutchinson"
        z = (res.values - A.diagonal()) / res.stderr
        assert float(z.abs().max()) < 5.0
        z_all.append(z)
        # The standard error estimates the true one, sqrt(Σ_{l≠j} A_jl² / m).
        off = A - torch.diag(A.diagonal())
        true = (off.pow(2).sum(1) / m).sqrt()
        assert float((res.stderr / true - 1).abs().max()) < 0.35
    assert 0.5 < float(torch.cat(z_all).pow(2).mean()) < 1.6  # calibrated


def test_hutchinson_blocks_give_the_plain_mean_and_standard_deviation():
    """150 probes in blocks of 64, 64, 22: the merged moments equal those of all terms at once."""
    p, m, seed = 12, 150, 7
    A = random_matrix(p, 1)
    res = diagonal(DenseOperator(A), num_matvecs=m, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    terms = []
    for b in (64, 64, 22):
        Z = (2 * torch.randint(0, 2, (p, b), generator=gen) - 1).double()
        terms.append(Z * (A @ Z))
    terms = torch.cat(terms, 1)
    assert torch.allclose(res.values, terms.mean(1), rtol=0, atol=1e-13)
    assert torch.allclose(res.stderr, terms.std(1) / math.sqrt(m), rtol=1e-12, atol=0)
    again = diagonal(DenseOperator(A), num_matvecs=m, seed=seed)
    assert torch.equal(again.values, res.values)
    assert not torch.equal(diagonal(DenseOperator(A), num_matvecs=m, seed=8).values, res.values)


def test_bad_arguments_are_refused():
    op = DenseOperator(torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="num_matvecs"):
        diagonal(op, num_matvecs=1)
    with pytest.raises(ValueError, match="num_matvecs"):
        diagonal(op, num_matvecs=2.0)
    with pytest.raises(ValueError, match="method must be one of"):
        diagonal(op, "hutch++")
    with pytest.raises(TypeError, match="seed must be an int"):
        diagonal(op, seed=True)
    with pytest.raises(TypeError, match="LinearOperator"):
        diagonal(torch.eye(3))
    bad = LambdaOperator(lambda v: v * math.nan, 3, torch.float64)
    with pytest.raises(ValueError, match="NaN"):
        diagonal(bad, "exact")
    with pytest.raises(ValueError, match="NaN"):
        diagonal(bad, num_matvecs=4)


def test_trace_of_hessian_squared_through_the_operator_algebra():
    """tr(H²) = ‖H‖_F², exact by unit vectors and by Hutch++ within its error bar."""
    X, Y = make_data("ce")
    obj = valleys.Objective(make_model("mlp-tanh"), "ce", (X, Y))
    H = sample_hessians(obj).mean(0)
    op = valleys.hessian(obj)
    squared = op @ op
    exact = float((H * H).sum())
    assert valleys.trace(squared, "exact").value == pytest.approx(exact, rel=1e-10)
    estimate = valleys.trace(squared, "hutch++", num_matvecs=90, seed=0)
    assert abs(estimate.value - exact) <= 4 * estimate.stderr + 1e-9 * exact
