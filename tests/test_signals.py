"""valleys.signals: phase retrieval, Burer–Monteiro sensing, diagonal networks and TV denoising,
each against an exact oracle (autograd, a closed form, a linear programme, a duality gap)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import valleys
from valleys import signals
from valleys.errors import ArgumentValueError, NotConvergedError

# ---------------------------------------------------------------------------------------------
# Phase retrieval
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["real", "complex"])
def test_wf_gradient_matches_autograd_of_the_objective(field):
    p = signals.phase_retrieval_problem(12, 5, field=field, seed=3)
    g = torch.Generator().manual_seed(1)
    z = torch.randn(12, generator=g, dtype=torch.float64)
    if field == "complex":
        z = torch.complex(z, torch.randn(12, generator=g, dtype=torch.float64))
    obj = p.objective(z)
    expected = signals.wf_gradient(p.A, p.y, z)
    if field == "complex":
        expected = torch.cat([expected.real, expected.imag])
    torch.testing.assert_close(obj.gradient(), expected, rtol=1e-12, atol=1e-12)
    # and the loss is (1/m) Σ ¼(|a* z|² − y)²
    manual = ((p.A @ z).abs() ** 2 - p.y).pow(2).mean() / 4
    assert float(obj.loss()) == pytest.approx(float(manual), rel=1e-12)


@pytest.mark.parametrize("field", ["real", "complex"])
def test_spectral_init_finds_the_direction_at_large_ratio(field):
    # m/n = 30, n = 40, seed 0: the top eigenvector of Y aligns with x (|cos| ≥ 0.9 stated here;
    # the concentration of Y around E Y makes the angle shrink like sqrt(n/m)).
    p = signals.phase_retrieval_problem(40, 30, field=field, seed=0)
    z0 = signals.spectral_init(p.A, p.y)
    cos = float(torch.vdot(p.x, z0).abs() / torch.linalg.vector_norm(z0))
    assert cos >= 0.9
    # scaled to λ0 = sqrt(Σy/m)
    assert float(torch.linalg.vector_norm(z0)) == pytest.approx(math.sqrt(float(p.y.mean())))
    # truncated variant too
    zt = signals.spectral_init(p.A, p.y, truncate=3.0)
    assert float(torch.vdot(p.x, zt).abs() / torch.linalg.vector_norm(zt)) >= 0.9


@pytest.mark.parametrize(("field", "mu_max"), [("real", 0.1), ("complex", 0.2)])
def test_wirtinger_flow_recovers_up_to_global_phase(field, mu_max):
    p = signals.phase_retrieval_problem(50, 8, field=field, seed=0)
    res = signals.wirtinger_flow(p.A, p.y, steps=2500, mu_max=mu_max)
    assert signals.phase_distance(res.x, p.x) < 1e-8
    assert res.losses[-1] < res.losses[0]
    # a global phase is invisible: e^{iφ}x is recovered by the same run
    if field == "complex":
        assert signals.phase_distance(res.x, p.x * complex(0.6, 0.8)) < 1e-8
    else:
        assert signals.phase_distance(res.x, -p.x) < 1e-8


def test_truncated_wirtinger_flow_recovers():
    p = signals.phase_retrieval_problem(50, 8, seed=1)
    res = signals.truncated_wirtinger_flow(p.A, p.y, steps=1000)
    assert signals.phase_distance(res.x, p.x) < 1e-8


def test_phase_retrieval_objective_has_zero_gradient_at_the_signal():
    p = signals.phase_retrieval_problem(10, 6, seed=2)
    obj = p.objective()
    assert float(obj.gradient().abs().max()) < 1e-13
    # Hessian at x is (1/m) Σ 2 (a aᵀ x)(a aᵀ x)ᵀ ... its top eigenvalue through valleys.sharpness
    H = valleys.hessian(obj).to_dense()
    assert valleys.sharpness(obj, tol=1e-8) == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]),
                                                              rel=1e-6)


# ---------------------------------------------------------------------------------------------
# Burer–Monteiro matrix sensing
# ---------------------------------------------------------------------------------------------


def test_bm_gradient_matches_autograd():
    p = signals.matrix_sensing_problem(6, 2, 20, seed=0)
    U = torch.randn(6, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    obj = p.objective(U)
    torch.testing.assert_close(obj.gradient(), signals.bm_gradient(p.A, p.y, U).reshape(-1),
                               rtol=1e-12, atol=1e-12)


def test_small_init_gd_recovers_a_rank_one_matrix():
    p = signals.matrix_sensing_problem(8, 1, 30, seed=0)  # 30 < d(d+1)/2 = 36
    res = p.gradient_descent(1e-4, lr=0.01, steps=3000)
    assert res.rank == 1
    assert res.relative_error < 1e-2
    assert signals.numerical_rank(p.X_star) == 1


def test_numerical_rank():
    M = torch.diag(torch.tensor([1.0, 0.5, 1e-3, 0.0], dtype=torch.float64))
    assert signals.numerical_rank(M) == 2
    assert signals.numerical_rank(M, rtol=1e-4) == 3
    assert signals.numerical_rank(torch.zeros(3, 3)) == 0


# ---------------------------------------------------------------------------------------------
# Diagonal linear networks
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sparse():
    return signals.sparse_regression_problem(10, 30, 3, seed=0)


def test_hypentropy_limits():
    # q(z) ≈ z²/4 for small z, ≈ z log z − z for large z (α = 1: Q = Σ q)
    assert signals.hypentropy(np.array([1e-3]), 1.0) == pytest.approx(2.5e-7, rel=1e-6)
    assert signals.hypentropy(np.array([1e6]), 1.0) == pytest.approx(1.281551e7, rel=1e-6)
    # q'(z) = arcsinh(z/2): central difference
    z, h = 0.7, 1e-6
    slope = (signals.hypentropy(np.array([z + h]), 1.0)
             - signals.hypentropy(np.array([z - h]), 1.0)) / (2 * h)
    assert slope == pytest.approx(math.asinh(z / 2), rel=1e-7)


def test_limit_is_min_l2_at_large_scale(sparse):
    w = signals.diagonal_net_limit(sparse.X, sparse.y, 100.0)
    np.testing.assert_allclose(w, signals.min_l2_interpolant(sparse.X, sparse.y), atol=1e-8)


def test_limit_is_min_l1_at_small_scale(sparse):
    l1 = signals.min_l1_interpolant(sparse.X, sparse.y)
    np.testing.assert_allclose(l1, sparse.w_star.numpy(), atol=1e-10)  # the LP recovers w*
    gaps = [np.linalg.norm(signals.diagonal_net_limit(sparse.X, sparse.y, a) - l1)
            for a in (1e-3, 1e-6, 1e-10, 1e-20, 1e-40)]
    assert all(a > b for a, b in itertools.pairwise(gaps))  # logarithmically fast
    assert gaps[-1] < 1e-8


@pytest.mark.parametrize("alpha", [1e-6, 0.1, 1.0, 10.0])
def test_limit_satisfies_kkt(sparse, alpha):
    X, y = sparse.X.numpy(), sparse.y.numpy()
    w = signals.diagonal_net_limit(X, y, alpha)
    assert np.linalg.norm(X @ w - y) <= 1e-10 * np.linalg.norm(y)  # feasible
    grad = np.arcsinh(w / (2 * alpha ** 2))                        # ∇Q_α(w)
    mu = np.linalg.lstsq(X.T, grad, rcond=None)[0]
    assert np.linalg.norm(X.T @ mu - grad) <= 1e-8 * max(1.0, np.linalg.norm(grad))
    # and it beats feasible perturbations along the null space of X
    null = np.linalg.svd(X)[2][X.shape[0]:]
    rng = np.random.default_rng(0)
    for _ in range(5):
        dw = null.T @ rng.standard_normal(null.shape[0]) * 1e-3
        assert signals.hypentropy(w + dw, alpha) >= signals.hypentropy(w, alpha)


def test_gd_converges_to_the_limit(sparse):
    # Discrete GD differs from the flow by O(η): measured 1.0e-3 (η = 0.005) and 3.9e-3
    # (η = 0.02) at α = 0.1 for this seed; the tolerance 2e-3 at η = 0.005 is twice that, and
    # the ratio of the two gaps must be that of the steps (first order), within [2.5, 6].
    limit = signals.diagonal_net_limit(sparse.X, sparse.y, 0.1)
    gaps = []
    for lr in (0.005, 0.02):
        run = sparse.train(0.1, lr=lr, steps=round(200 / lr))
        assert not run.diverged and run.losses[-1] < 1e-20
        gaps.append(float(np.linalg.norm(run.w.numpy() - limit)))
    assert gaps[0] < 2e-3
    assert 2.5 < gaps[1] / gaps[0] < 6


def test_diagonal_objective_and_sgd(sparse):
    run = sparse.train(0.1, lr=0.05, steps=4000, batch_size=2, seed=1)
    again = sparse.train(0.1, lr=0.05, steps=4000, batch_size=2, seed=1)
    assert torch.equal(run.w, again.w)  # seeded
    obj = sparse.objective(run.u, run.v)
    assert float(obj.loss()) == pytest.approx(run.losses[-1], rel=1e-9, abs=1e-30)
    H = valleys.hessian(obj).to_dense()
    assert valleys.sharpness(obj, tol=1e-8) == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]),
                                                              rel=1e-6)
    # at an interpolating point the Hessian is the Gauss–Newton (1/n) JᵀJ, J = X [2u, −2v]
    J = torch.cat([sparse.X * 2 * run.u, -sparse.X * 2 * run.v], dim=1)
    torch.testing.assert_close(H, J.T @ J / sparse.X.shape[0], atol=1e-8, rtol=1e-6)
    assert valleys.nonuniformity(obj, tol=1e-6) > 0


# ---------------------------------------------------------------------------------------------
# TV denoising
# ---------------------------------------------------------------------------------------------


def test_divergence_is_minus_the_adjoint_of_the_gradient():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(7, 9, generator=g, dtype=torch.float64)
    p = torch.randn(2, 7, 9, generator=g, dtype=torch.float64)
    lhs = float((signals.gradient_2d(u) * p).sum())
    rhs = -float((u * signals.divergence(p)).sum())
    assert lhs == pytest.approx(rhs, abs=1e-12)


def test_tv_denoising_decreases_energy_and_approaches_the_clean_image():
    prob = signals.denoising_problem(48, sigma=0.2, seed=0)
    res = signals.tv_denoise(prob.noisy, 0.25, iterations=600, record_every=100)
    assert all(a >= b for a, b in itertools.pairwise(res.gap))
    assert res.gap[-1] < 0.1 and res.gap[-1] >= -1e-9  # weak duality
    assert res.primal[-1] < res.primal[0]
    rmse = lambda u: float((u - prob.clean).pow(2).mean().sqrt())  # noqa: E731
    assert rmse(res.u) < 0.5 * rmse(prob.noisy)


def test_smoothed_tv_objective_descends():
    prob = signals.denoising_problem(16, seed=1)
    obj = prob.objective(0.25, eps=0.05)
    theta = obj.parameters_vector().detach()
    start = float(obj.loss(theta))
    for _ in range(100):
        theta = theta - 0.05 * obj.gradient(theta)
    assert float(obj.loss(theta)) < start
    assert float(obj.loss(theta)) == pytest.approx(
        signals.tv_energy(theta.reshape(16, 16), prob.noisy, 0.25, eps=0.05), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clearly(sparse):
    with pytest.raises(ArgumentValueError, match="ratio"):
        signals.phase_retrieval_problem(10, 0)
    with pytest.raises(ArgumentValueError, match="ratio"):
        signals.phase_retrieval_problem(10, -2.0)
    with pytest.raises(ArgumentValueError, match="rank"):
        signals.matrix_sensing_problem(4, 5, 10)
    with pytest.raises(ArgumentValueError, match="init_scale"):
        signals.diagonal_net_limit(sparse.X, sparse.y, 0.0)
    with pytest.raises(ArgumentValueError, match="init_scale"):
        sparse.train(-1.0, lr=0.01, steps=1)
    with pytest.raises(ArgumentValueError, match="same m"):
        signals.wirtinger_flow(torch.randn(5, 3), torch.rand(4))
    with pytest.raises(ArgumentValueError, match=r"X must be \(n, d\)"):
        signals.diagonal_net_limit(sparse.X, sparse.y[:-1], 0.1)
    with pytest.raises(ArgumentValueError, match="shape"):
        sparse.objective(torch.ones(3), torch.ones(3))
    with pytest.raises(ArgumentValueError, match="width"):
        signals.matrix_sensing_problem(4, 1, 10).gradient_descent(0.1, lr=0.1, steps=1, width=5)
    with pytest.raises(NotConvergedError):  # y outside the range of X: no interpolant
        signals.diagonal_net_limit(np.ones((2, 3)), np.array([1.0, 2.0]), 0.1)


def test_matrix_completion_from_small_init_recovers_the_low_rank_target():
    problem = signals.matrix_completion_problem(12, 1, 60, seed=0)
    # Every measurement reads one entry of the target.
    entries = torch.einsum("mij,ij->m", problem.A, problem.X_star)
    torch.testing.assert_close(entries, problem.y, rtol=0, atol=1e-15)
    U = 0.3 * torch.randn(12, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    obj = problem.objective(U)
    torch.testing.assert_close(obj.gradient().reshape(12, 12),
                               signals.bm_gradient(problem.A, problem.y, U), rtol=1e-12,
                               atol=1e-14)
    result = problem.gradient_descent(1e-4, lr=2.0, steps=6000)
    assert result.rank == 1 and result.relative_error < 1e-2, result


def test_matrix_completion_refuses_more_entries_than_exist():
    with pytest.raises(ValueError, match="distinct entries"):
        signals.matrix_completion_problem(3, 1, 7)
