"""Mean-field ResNet: forward/adjoint ODEs, discrete adjoint = backprop, Euler O(1/L).

Oracles: autograd (float64) on the discrete network; autograd through an RK4 solve for the
continuous gradient; central finite differences; the Euler convergence rate.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from valleys.meanfield import resnet as rn

DT = torch.float64


def _problem(seed=0, n=24, d=3, D=5, M=4, L=6, k=2):
    g = torch.Generator().manual_seed(seed)
    X0 = rn.embed(torch.randn(n, d, generator=g, dtype=DT), D)
    Y = torch.randn(n, k, generator=g, dtype=DT)
    H = torch.randn(D, k, generator=g, dtype=DT)
    params = rn.ResNetParams.random(L, M, D, generator=g)
    return X0, Y, H, params, g


def _autograd(X0, Y, H, params, activation, order=None):
    ts = [t.clone().requires_grad_(True) for t in params.tensors()]
    loss = rn.resnet_loss(X0, Y, rn.ResNetParams(*ts), H, activation=activation, order=order)
    return loss, torch.autograd.grad(loss, ts)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("shuffled", [False, True])
def test_discrete_adjoint_equals_backprop(activation, shuffled):
    X0, Y, H, params, g = _problem()
    order = torch.randperm(params.depth, generator=g) if shuffled else None
    loss, grads = _autograd(X0, Y, H, params, activation, order)
    loss2, adj = rn.discrete_adjoint(X0, Y, params, H, activation=activation, order=order)
    torch.testing.assert_close(loss2, loss.detach(), rtol=1e-14, atol=0)
    for a, b in zip(grads, adj.tensors(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-15)


def test_adjoint_matches_finite_differences():
    X0, Y, H, params, _ = _problem(seed=1)
    _, adj = rn.discrete_adjoint(X0, Y, params, H)
    h = 1e-6
    for tensor, grad, idx in ((0, adj.A, (2, 1, 3)), (1, adj.W, (4, 0, 0)), (2, adj.B, (1, 2))):
        plus = [t.clone() for t in params.tensors()]
        minus = [t.clone() for t in params.tensors()]
        plus[tensor][idx] += h
        minus[tensor][idx] -= h
        fd = (rn.resnet_loss(X0, Y, rn.ResNetParams(*plus), H)
              - rn.resnet_loss(X0, Y, rn.ResNetParams(*minus), H)) / (2 * h)
        torch.testing.assert_close(grad[idx], fd, rtol=1e-7, atol=1e-12)


def test_particle_velocity_is_scaled_gradient_and_depth_independent():
    """LM∇E is the same for a network and its refinement (same measure) up to O(1/L)."""
    X0, Y, H, _, g = _problem(seed=2)
    profile = rn.DepthProfile.random(3, 4, 5, generator=g)
    errs = []
    for L in (8, 16, 32):
        _, v = rn.particle_velocity(X0, Y, profile.discretize(L), H)
        _, v2 = rn.particle_velocity(X0, Y, profile.discretize(2 * L), H)
        errs.append(float((v.A - v2.A[::2]).norm() / v.A.norm()))
    assert errs[0] > errs[1] > errs[2]
    slope = np.polyfit(np.log([8, 16, 32]), np.log(errs), 1)[0]
    assert -1.3 < slope < -0.7


def test_euler_error_is_first_order():
    X0, _, _, _, g = _problem(seed=3)
    profile = rn.DepthProfile.random(3, 4, 5, generator=g)
    ref = rn.ode_forward(X0, profile, steps=512)
    assert (ref - rn.ode_forward(X0, profile, steps=256)).abs().max() < 1e-10  # RK4 converged
    depths = [8, 16, 32, 64, 128]
    errs = [float(((rn.resnet_forward(X0, profile.discretize(L)) - ref) ** 2).sum(1)
                  .mean().sqrt()) for L in depths]
    slope = np.polyfit(np.log(depths), np.log(errs), 1)[0]
    assert slope == pytest.approx(-1.0, abs=0.1)
    assert errs[-1] > 1e-8  # the reference is not the Euler scheme itself


def test_continuous_adjoint_gives_the_gradient():
    """dE/dc by the adjoint ODE (RK4 + Simpson) equals autograd through the RK4 forward."""
    X0, Y, H, _, g = _problem(seed=4, n=12)
    profile = rn.DepthProfile.random(2, 3, 5, generator=g)
    cs = [t.clone().requires_grad_(True) for t in (profile.A, profile.W, profile.B)]
    X1 = rn.ode_forward(X0, rn.DepthProfile(*cs), steps=64)
    r = X1 @ H - Y
    grads = torch.autograd.grad(0.5 * (r * r).sum(1).mean(), cs)
    _, vel, dE = rn.continuous_gradient(X0, Y, profile, H, steps=64)
    assert vel.A.shape == (65, 3, 5)
    for a, b in zip(grads, (dE.A, dE.W, dE.B), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-8)
    with pytest.raises(ValueError, match="even"):
        rn.continuous_gradient(X0, Y, profile, H, steps=63)


def test_refine_and_permute():
    X0, _, _, params, g = _problem(seed=5)
    fine = rn.refine_depth(params, 2)
    assert fine.depth == 2 * params.depth
    torch.testing.assert_close(fine.A[1], params.A[0])
    identity = torch.arange(params.depth)
    torch.testing.assert_close(rn.resnet_forward(X0, rn.permute_blocks(params, identity)),
                               rn.resnet_forward(X0, params))
    order = torch.randperm(params.depth, generator=g)
    torch.testing.assert_close(rn.resnet_forward(X0, params, order=order),
                               rn.resnet_forward(X0, rn.permute_blocks(params, order)))
    # same measure on a finer grid: O(1/L) change
    prof = rn.DepthProfile.random(1, 4, 5, generator=g)  # depth-independent measure
    base = rn.resnet_forward(X0, prof.discretize(16))
    assert (rn.resnet_forward(X0, rn.refine_depth(prof.discretize(16))) - base).abs().max() < 0.05


def test_depth_independent_measure_is_order_independent():
    X0, Y, H, _, g = _problem(seed=6)
    prof = rn.DepthProfile.random(1, 4, 5, generator=g)
    params = prof.discretize(12)
    assert abs(rn.order_sensitivity(X0, Y, params, H, generator=g)) < 1e-12


@pytest.mark.parametrize("scheme", rn.SCHEMES)
def test_training_schemes_reduce_loss_within_budget(scheme):
    X0, Y, H, _, g = _problem(seed=7, L=8)
    Y = Y * 0.3
    params = rn.ResNetParams.random(8, 4, 5, generator=g, scale=0.5)
    trained, run = rn.train_resnet(X0, Y, params, H, lr=0.05, budget=8 * 30, scheme=scheme,
                                   generator=torch.Generator().manual_seed(0))
    assert not run.diverged
    assert run.cost[-1] <= 8 * 30
    assert run.cost[-1] >= 8 * 30 - 8
    assert trained.depth == 8
    assert run.train_loss[-1] < run.train_loss[0]
    torch.testing.assert_close(rn.resnet_loss(X0, Y, trained, H).item(), run.train_loss[-1])


def test_bad_input():
    X0, Y, H, params, _ = _problem()
    with pytest.raises(ValueError, match="shape"):
        rn.ResNetParams(params.A, params.W[:, :2], params.B)
    with pytest.raises(ValueError, match="X0"):
        rn.resnet_forward(X0[:, :3], params)
    with pytest.raises(ValueError, match="activation"):
        rn.resnet_forward(X0, params, activation="gelu")
    with pytest.raises(ValueError, match="scheme"):
        rn.train_resnet(X0, Y, params, H, 0.1, 10, scheme="sgd")
    with pytest.raises(ValueError, match="divisible"):
        rn.train_resnet(X0, Y, rn.ResNetParams.random(6, 2, 5), H, 0.1, 60, scheme="refine")
    with pytest.raises(ValueError):
        rn.embed(torch.zeros(3, 7, dtype=DT), 5)


def test_float32():
    X0, Y, H, params, _ = _problem()
    f = [t.float() for t in (X0, Y, H)]
    p32 = rn.ResNetParams(*(t.float() for t in params.tensors()))
    loss, adj = rn.discrete_adjoint(*f[:2], p32, f[2])
    assert loss.dtype == torch.float32 and adj.A.dtype == torch.float32


def test_divergence_is_recorded_not_raised():
    X0, Y, H, params, _ = _problem(seed=8)
    _, run = rn.train_resnet(X0, Y, params, H, lr=1e4, budget=params.depth * 200)
    assert run.diverged
    assert len(run.train_loss) < 201
