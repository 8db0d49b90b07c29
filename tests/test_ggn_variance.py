"""The GGN-variance operator against dense per-sample Gauss–Newton matrices, and its use in the
stability condition away from exact minima (where it must equal the Gram path)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from _oracles import sample_ggns
from conftest import MODEL_KINDS, input_dim, interpolating_problem, make_data, make_model

import valleys
from valleys.operators import ggn_variance
from valleys.stability import (
    gram_sharpness_nonuniformity,
    is_stable,
    max_stable_lr_analysis,
    stability_analysis,
)


def dense_sample_ggns(obj, X):
    """Per-sample ``J_iᵀΛ_iJ_i`` with Jacobians by plain backward passes (see ``_oracles``),
    independent of the ``vmap(jacrev)`` the operator uses."""
    return sample_ggns(obj)


@pytest.mark.parametrize("kind", MODEL_KINDS)
@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("chunk_size", [None, 5])
def test_ggn_variance_matches_dense(kind, loss, chunk_size):
    X, Y = make_data(loss, d=input_dim(kind))
    obj = valleys.Objective(make_model(kind), loss, (X, Y), chunk_size=chunk_size)
    Gs = dense_sample_ggns(obj, X)
    G = Gs.mean(0)
    Sigma = (Gs @ Gs).mean(0) - G @ G
    op = ggn_variance(obj)
    assert torch.allclose(op.to_dense(), Sigma, rtol=1e-9, atol=1e-12 * float(Sigma.abs().max()))
    assert torch.allclose(op.ggn.to_dense(), G, rtol=1e-9, atol=1e-13)
    V = torch.randn(obj.dim, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(op.matmat(V), Sigma @ V, rtol=1e-9, atol=1e-12)
    assert op.jacobian_algorithm == "vmap"  # passed its check against autograd


@pytest.fixture(scope="module")
def near_minimum():
    """The interpolating teacher–student problem, moved off its minimum (loss ~1e-4)."""
    obj, _ = interpolating_problem()
    g = torch.Generator().manual_seed(3)
    theta = obj.parameters_vector() + 1e-2 * torch.randn(obj.dim, generator=g, dtype=torch.float64)
    return obj, theta


def test_ggn_condition_equals_the_gram_path_off_the_minimum(near_minimum):
    obj, theta = near_minimum
    assert obj.loss(theta).item() > 1e-8
    for batch_size in (1, 3, obj.n):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "not an interpolating minimum"
            gram = gram_sharpness_nonuniformity(obj, theta=theta, batch_size=batch_size, tol=1e-10)
        res = stability_analysis(obj, 0.1, batch_size, theta=theta, curvature="ggn", tol=1e-10)
        assert res.curvature == "ggn"
        assert res.sharpness == pytest.approx(gram.sharpness, rel=1e-7)
        assert res.nonuniformity == pytest.approx(gram.nonuniformity, rel=1e-6)
        lr = max_stable_lr_analysis(obj, batch_size, theta=theta, curvature="ggn", tol=1e-10)
        assert lr.converged and lr.curvature == "ggn"
        assert lr.lr == pytest.approx(gram.max_stable_lr, rel=1e-6)
        # The verdict flips at the threshold.
        assert is_stable(obj, 0.99 * lr.lr, batch_size, theta=theta, curvature="ggn")
        assert not is_stable(obj, 1.01 * lr.lr, batch_size, theta=theta, curvature="ggn")


def test_ggn_and_hessian_conditions_agree_at_an_interpolating_minimum():
    obj, _ = interpolating_problem()
    for batch_size in (2, obj.n):
        h = max_stable_lr_analysis(obj, batch_size, tol=1e-10).lr
        g = max_stable_lr_analysis(obj, batch_size, tol=1e-10, curvature="ggn").lr
        assert g == pytest.approx(h, rel=1e-6) and math.isfinite(g)


def test_curvature_is_validated(near_minimum):
    obj, _ = near_minimum
    with pytest.raises(ValueError, match="curvature must be one of"):
        is_stable(obj, 0.1, 2, curvature="fisher")
    with pytest.raises(ValueError, match="leave method='auto'"):
        stability_analysis(obj, 0.1, 2, curvature="ggn", method="vmap")


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_algebra_form_gives_the_numbers_of_the_explicit_formulas(loss):
    """Σ_G = M − G·G and C = F − g gᵀ are written in the operator algebra; their products must
    equal the explicit formulas they replaced."""
    X, Y = make_data(loss)
    obj = valleys.Objective(make_model("mlp-tanh"), loss, (X, Y), chunk_size=5)
    V = torch.randn(obj.dim, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    op = ggn_variance(obj)
    explicit = op._second.matmat(V) - op.ggn.matmat(op.ggn.matmat(V))
    assert float((op.matmat(V) - explicit).abs().max()) <= 1e-12 * float(explicit.abs().max())
    assert float((op.matvec(V[:, 0]) - explicit[:, 0]).abs().max()) <= (
        1e-12 * float(explicit.abs().max()))
    assert op.symmetric
    cov = valleys.gradient_covariance(obj)
    g = cov.mean_gradient
    explicit = cov.fisher.matmat(V) - torch.outer(g, g @ V)
    assert float((cov.matmat(V) - explicit).abs().max()) <= 1e-12 * float(explicit.abs().max())
    assert float((cov.matvec(V[:, 0]) - explicit[:, 0]).abs().max()) <= (
        1e-12 * float(explicit.abs().max()))
    assert cov.symmetric
