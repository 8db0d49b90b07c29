"""Batch normalization as a change of metric: invariances and the Riemannian formulation.

Oracles: autograd in float64 (gradients, directional derivatives), the exact algebra of the
scale invariance, and a step-by-step comparison of GD with BN against Riemannian GD without BN.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.func import jvp

from valleys.meanfield import batchnorm as bn

DT = torch.float64


def _problem(seed=0, n=40, d=4, m=5, centred=False):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=DT)  # anisotropic data: Σ ≠ I
    X = torch.randn(n, d, generator=g, dtype=DT) @ mix + (0.0 if centred else 0.7)
    y = torch.tanh(X[:, 0] - X[:, 1]) + 0.3 * X[:, 2]
    a = torch.randn(m, generator=g, dtype=DT)
    W = torch.randn(m, d, generator=g, dtype=DT)
    return X, y, a, W


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_scale_invariance_positive_only(activation):
    X, _, a, W = _problem()
    c = torch.tensor([0.3, 2.0, 7.5, 1.0, 0.01], dtype=DT)[:, None]
    f = bn.bn_forward(X, a, W, activation=activation)
    torch.testing.assert_close(bn.bn_forward(X, a, c * W, activation=activation), f,
                               rtol=1e-12, atol=1e-12)
    flipped = W.clone()
    flipped[0] = -flipped[0]
    if activation == "relu":  # ReLU is not odd: a sign flip is a different network
        assert (bn.bn_forward(X, a, flipped, activation=activation) - f).abs().max() > 1e-3


def test_bn_matches_torch_batchnorm():
    X, _, a, W = _problem()
    layer = torch.nn.BatchNorm1d(W.shape[0], affine=False, eps=1e-5, dtype=DT)
    ref = torch.relu(layer(X @ W.T)) @ a / a.shape[0]  # train mode: batch statistics
    torch.testing.assert_close(bn.bn_forward(X, a, W, eps=1e-5), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_euler_identity(activation):
    X, y, a, W = _problem(seed=1)
    W = W.requires_grad_(True)
    (grad,) = torch.autograd.grad(bn.bn_loss(X, y, a, W, activation=activation), W)
    inner = (grad * W.detach()).sum(1)
    scale = grad.norm(dim=1) * W.detach().norm(dim=1)
    assert (inner.abs() / scale).max() < 1e-12
    assert grad.norm() > 1e-3  # not trivially zero


def test_eps_breaks_invariance_and_bad_input():
    X, _, a, W = _problem()
    f1 = bn.bn_forward(X, a, W, eps=1e-1)
    f2 = bn.bn_forward(X, a, 0.1 * W, eps=1e-1)
    assert (f1 - f2).abs().max() > 1e-4
    with pytest.raises(ValueError, match="eps"):
        bn.bn_forward(X, a, W, eps=-1.0)
    with pytest.raises(ValueError, match="zero pre-activation variance"):
        bn.bn_forward(X, a, torch.zeros_like(W))
    with pytest.raises(ValueError, match="shape"):
        bn.bn_forward(X, a[:-1], W)
    with pytest.raises(TypeError):
        bn.bn_forward(X[0], a, W)
    with pytest.raises(ValueError, match="activation"):
        bn.bn_forward(X, a, W, activation="gelu")


def test_norm_growth_under_gd_is_exact():
    X, y, a, W = _problem(seed=2)
    lr = 0.2
    _, W1, _, grad = bn.bn_gd_step(X, y, a, W, lr)
    step = lr * a.shape[0]
    torch.testing.assert_close((W1 * W1).sum(1), (W * W).sum(1) + step**2 * (grad * grad).sum(1),
                               rtol=1e-13, atol=0)
    assert ((W1 * W1).sum(1) > (W * W).sum(1)).all()


def test_norm_conserved_by_the_flow():
    """GD at fixed flow time T: the norm drift is O(η), so it vanishes for the flow."""
    X, y, a, W = _problem(seed=3)
    drifts = []
    for steps in (20, 40, 80):
        lr = 0.4 / steps
        a_, W_ = a, W
        for _ in range(steps):
            a_, W_, _, _ = bn.bn_gd_step(X, y, a_, W_, lr)
        drifts.append(float(((W_ * W_).sum(1) - (W * W).sum(1)).abs().max()))
    assert drifts[0] > 0
    for coarse, fine in itertools.pairwise(drifts):
        assert fine / coarse == pytest.approx(0.5, abs=0.08)


def test_effective_step_is_lr_over_norm_squared():
    """First layer only: GD from c·w with c²η moves the directions exactly as GD from w with η."""
    X, y, a, W = _problem(seed=4)
    c = 3.0
    W1, W2 = W, c * W
    for _ in range(15):
        _, W1, _, _ = bn.bn_gd_step(X, y, a, W1, 0.05, train_a=False)
        _, W2, _, _ = bn.bn_gd_step(X, y, a, W2, 0.05 * c**2, train_a=False)
    _, cov = bn.bn_statistics(X)
    U1, r1 = bn.to_manifold(W1, cov)
    U2, r2 = bn.to_manifold(W2, cov)
    torch.testing.assert_close(U2, U1, rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(r2, c * r1, rtol=1e-12, atol=0)


def test_manifold_network_equals_bn_network():
    X, _, a, W = _problem(seed=5)
    mean, cov = bn.bn_statistics(X)
    U, r = bn.to_manifold(W, cov)
    torch.testing.assert_close(torch.einsum("ki,ij,kj->k", U, cov, U), torch.ones(5, dtype=DT))
    torch.testing.assert_close(r, W.norm(dim=1))
    torch.testing.assert_close(bn.manifold_forward(X, a, U, mean), bn.bn_forward(X, a, W),
                               rtol=1e-12, atol=1e-12)


def test_riemannian_gradient_definition():
    """⟨grad_g G, ξ⟩_g = dG[ξ] for tangent ξ (dG by jvp), grad_g is tangent, and its
    horizontal lift is the BN gradient ∇_w L."""
    X, y, a, W = _problem(seed=6)
    mean, cov = bn.bn_statistics(X)
    U, r = bn.to_manifold(W, cov)
    Ur = U.clone().requires_grad_(True)
    (egrad,) = torch.autograd.grad(bn.manifold_loss(X, y, a, Ur, mean), Ur)
    rgrad = bn.riemannian_gradient(U, egrad, cov, r)
    assert ((U @ cov) * rgrad).sum(1).abs().max() < 1e-12  # tangent
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        xi = bn.tangent_projection(U, torch.randn(U.shape, generator=g, dtype=DT), cov)
        # per-neuron directional derivative: perturb one neuron at a time
        for k in range(U.shape[0]):
            V = torch.zeros_like(U)
            V[k] = xi[k]
            _, dG = jvp(lambda u: bn.manifold_loss(X, y, a, u, mean), (U,), (V,))
            lhs = bn.metric_inner(U, rgrad, V, r)[k]
            torch.testing.assert_close(lhs, dG, rtol=1e-10, atol=1e-14)
    Wr = W.clone().requires_grad_(True)
    (bgrad,) = torch.autograd.grad(bn.bn_loss(X, y, a, Wr), Wr)
    torch.testing.assert_close(bn.horizontal_lift(U, rgrad, r), bgrad, rtol=1e-10, atol=1e-14)
    # the lift is an isometry: ‖∇_w L‖² = ‖grad_g G‖_g²
    torch.testing.assert_close((bgrad * bgrad).sum(1), bn.metric_inner(U, rgrad, rgrad, r),
                               rtol=1e-10, atol=1e-16)


def test_metric_on_the_sphere_for_whitened_data():
    """Σ = I: the metric is r² times the round metric of the unit sphere."""
    X, _, _, W = _problem(seed=7)
    Xc = X - X.mean(0)
    L = torch.linalg.cholesky(Xc.T @ Xc / X.shape[0])
    Xw = torch.linalg.solve_triangular(L, Xc.T, upper=False).T  # whitened: Σ = I
    _, cov = bn.bn_statistics(Xw)
    torch.testing.assert_close(cov, torch.eye(4, dtype=DT), rtol=1e-12, atol=1e-12)
    U, r = bn.to_manifold(W, cov)
    torch.testing.assert_close(U.norm(dim=1), torch.ones(5, dtype=DT))
    xi = bn.tangent_projection(U, torch.randn(U.shape, dtype=DT), cov)
    torch.testing.assert_close(bn.metric_inner(U, xi, xi, r), r**2 * (xi * xi).sum(1))


def test_retraction():
    X, _, _, W = _problem(seed=8)
    _, cov = bn.bn_statistics(X)
    U, _ = bn.to_manifold(W, cov)
    xi = bn.tangent_projection(U, torch.randn(U.shape, dtype=DT), cov)
    torch.testing.assert_close(bn.retract(U, torch.zeros_like(U), cov), U)
    R = bn.retract(U, 0.7 * xi, cov)
    torch.testing.assert_close(torch.einsum("ki,ij,kj->k", R, cov, R), torch.ones(5, dtype=DT))
    _, dR = jvp(lambda t: bn.retract(U, t * xi, cov), (torch.zeros((), dtype=DT),),
                (torch.ones((), dtype=DT),))
    torch.testing.assert_close(dR, xi, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_gd_with_bn_equals_riemannian_gd_without_bn(activation):
    X, y, a, W = _problem(seed=9, m=8)
    c = bn.compare_bn_riemannian(X, y, a, W, lr=0.05, steps=100, activation=activation)
    assert not c.diverged
    assert c.max_relative_mismatch < 1e-11
    assert c.loss_bn[-1] < 0.5 * c.loss_bn[0]  # it trains: the comparison is not vacuous
    torch.testing.assert_close(c.loss_bn, c.loss_riemannian, rtol=1e-11, atol=1e-14)
    torch.testing.assert_close(c.norm_sq, c.norm_sq_predicted, rtol=1e-12, atol=0)
    assert c.euler_inner.max() < 1e-11
    assert (c.norm_sq[-1] > c.norm_sq[0]).all()
    assert set(c.to_dict()) >= {"max_relative_mismatch", "mismatch", "loss_bn"}


def test_wrong_metric_does_not_match():
    """Negative control: the same steps with the Euclidean (projected) gradient disagree."""
    X, y, a, W = _problem(seed=9, m=8)
    mean, cov = bn.bn_statistics(X)
    U, r = bn.to_manifold(W, cov)
    Ur = U.clone().requires_grad_(True)
    (egrad,) = torch.autograd.grad(bn.manifold_loss(X, y, a, Ur, mean), Ur)
    step = 0.05 * a.shape[0]
    wrong = bn.retract(U, -step * bn.tangent_projection(U, egrad, cov), cov)
    _, W1, _, _ = bn.bn_gd_step(X, y, a, W, 0.05)
    U1, _ = bn.to_manifold(W1, cov)
    _, right, _, _ = bn.riemannian_gd_step(X, y, a, U, r, 0.05, mean, cov)
    torch.testing.assert_close(right, U1, rtol=1e-12, atol=1e-13)
    assert (wrong - U1).norm() > 1e-4 * U1.norm()


def test_mean_field_step_does_not_depend_on_width():
    """Duplicating every neuron (m → 2m, same measure) leaves the GD trajectory unchanged."""
    X, y, a, W = _problem(seed=10)
    a2, W2 = a.repeat(2), W.repeat(2, 1)
    c1 = bn.compare_bn_riemannian(X, y, a, W, 0.05, 20)
    c2 = bn.compare_bn_riemannian(X, y, a2, W2, 0.05, 20)
    torch.testing.assert_close(c1.loss_bn, c2.loss_bn, rtol=1e-12, atol=1e-14)


def test_float32_device_agnostic():
    X, y, a, W = (t.float() for t in _problem(seed=11))
    c = bn.compare_bn_riemannian(X, y, a, W, 0.05, 10)
    assert c.loss_bn.dtype == torch.float32
    assert c.max_relative_mismatch < 1e-4


def test_divergence_is_recorded_not_raised():
    X, y, a, W = _problem(seed=12)
    c = bn.compare_bn_riemannian(X, y, a, W, 1e6, 100)
    assert c.diverged
    assert len(c.loss_bn) == len(c.mismatch) < 101
