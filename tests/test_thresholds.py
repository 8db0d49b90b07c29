"""Optimizer stability thresholds against simulations of the updates as PyTorch implements them.

Each simulation runs one optimizer on many decoupled 1-D quadratics ``½ a θ²`` at once (a grid
of curvatures ``a``; torch.optim's updates act coordinate-wise) and locates the curvature where
the iterates stop decaying and start growing, refining the grid around it. The envelope test
(peak of ``|θ|`` over the last quarter of the run against the quarter before) resolves the
spectral radius crossing 1 far below the 1e-3 relative tolerance asked of the formulas.
"""

from __future__ import annotations

import math

import pytest
import torch

from valleys.stability.thresholds import OPTIMIZER_THRESHOLDS, threshold

STEPS = 2000


def _growing(update, curvatures: torch.Tensor) -> torch.Tensor:
    """Whether ``|θ|`` still grows at the end of ``STEPS`` updates, per curvature."""
    theta = torch.nn.Parameter(torch.ones_like(curvatures))
    step = update(theta, curvatures)
    peaks = torch.zeros(4, curvatures.numel(), dtype=curvatures.dtype)
    for t in range(STEPS):
        step()
        quarter = 4 * t // STEPS
        peaks[quarter] = torch.maximum(peaks[quarter], theta.detach().abs())
    late, earlier = peaks[3], peaks[2]
    return ~torch.isfinite(late) | (late > earlier)


def _torch_sgd(lr: float, momentum: float = 0.0, nesterov: bool = False):
    def make(theta, a):
        opt = torch.optim.SGD([theta], lr=lr, momentum=momentum, nesterov=nesterov)

        def step():
            theta.grad = a * theta.detach()
            opt.step()

        return step

    return make


def _frozen_adam(lr: float, beta1: float, precond: torch.Tensor):
    """torch.optim.Adam's update with the denominator ``sqrt(v̂) + ε`` frozen at ``precond``."""

    def make(theta, a):
        m = torch.zeros_like(a)
        t = [0]

        def step():
            t[0] += 1
            g = a * theta.detach()
            m.mul_(beta1).add_(g, alpha=1 - beta1)  # exp_avg.lerp_(grad, 1 - beta1)
            with torch.no_grad():
                theta.sub_(lr / (1 - beta1 ** t[0]) * m / precond)

        return step

    return make


def critical_curvature(make_update, lo: float, hi: float, rounds: int = 3, points: int = 33):
    """The curvature where the simulated optimizer starts to diverge (geometric grid search)."""
    for _ in range(rounds):
        grid = torch.logspace(math.log10(lo), math.log10(hi), points, dtype=torch.float64)
        growing = _growing(make_update, grid)
        assert not growing[0] and growing[-1], "the bracket must contain the threshold"
        first = int(torch.nonzero(growing)[0])
        assert bool(growing[first:].all()), "divergence must be monotone in the curvature"
        lo, hi = float(grid[first - 1]), float(grid[first])
    return math.sqrt(lo * hi)


@pytest.mark.parametrize("lr", [0.01, 0.3])
def test_gd_threshold_matches_simulated_torch_sgd(lr):
    found = critical_curvature(_torch_sgd(lr), 0.1 / lr, 100 / lr)
    assert found == pytest.approx(threshold("gd", lr), rel=1e-3)
    assert threshold("gd", lr) == pytest.approx(2 / lr)


@pytest.mark.parametrize(("lr", "beta"), [(0.01, 0.9), (0.1, 0.5), (0.05, 0.0)])
def test_heavy_ball_threshold_matches_torch_sgd_momentum(lr, beta):
    found = critical_curvature(_torch_sgd(lr, beta), 0.1 / lr, 100 / lr)
    assert found == pytest.approx(threshold("heavy_ball", lr, beta=beta), rel=1e-3)


@pytest.mark.parametrize(("lr", "beta"), [(0.01, 0.9), (0.1, 0.5)])
def test_nesterov_threshold_matches_torch_sgd_nesterov(lr, beta):
    found = critical_curvature(_torch_sgd(lr, beta, nesterov=True), 0.1 / lr, 100 / lr)
    assert found == pytest.approx(threshold("nesterov", lr, beta=beta), rel=1e-3)


@pytest.mark.parametrize(("lr", "beta1"), [(0.01, 0.9), (0.001, 0.8)])
def test_adam_threshold_bounds_the_preconditioned_curvature(lr, beta1):
    # With a frozen preconditioner P the threshold applies to a / P: a P twice as large
    # doubles the critical curvature.
    for p in (1.0, 2.0):
        precond = torch.tensor(p, dtype=torch.float64)
        found = critical_curvature(_frozen_adam(lr, beta1, precond), 1 / lr, 1e4 / lr)
        assert found / p == pytest.approx(threshold("adam", lr, beta1=beta1), rel=1e-3)


def test_adam_is_38_over_lr_at_default_beta1():
    assert threshold("adam", 0.01) == pytest.approx(3800.0)
    assert threshold("adam", 1e-3, beta1=0.9) == pytest.approx(38 / 1e-3)
    assert threshold("heavy_ball", 0.01) == pytest.approx(380.0)
    assert threshold("nesterov", 0.01, beta=0.9) == pytest.approx(3.8 / (0.01 * 2.8))
    # β = 0: every momentum method is gradient descent.
    for name, key in (("heavy_ball", "beta"), ("nesterov", "beta"), ("adam", "beta1")):
        assert threshold(name, 0.1, **{key: 0.0}) == pytest.approx(20.0)


def test_bad_arguments_are_refused_with_the_options():
    with pytest.raises(ValueError, match="gd, heavy_ball, nesterov, adam"):
        threshold("lbfgs", 0.1)
    for lr in (0.0, -1.0, math.nan, math.inf, True):
        with pytest.raises(ValueError, match="lr must be"):
            threshold("gd", lr)
    for beta in (-0.1, 1.0, 1.5, math.nan):
        with pytest.raises(ValueError, match="beta must"):
            threshold("heavy_ball", 0.1, beta=beta)
    with pytest.raises(ValueError, match="beta1 must"):
        threshold("adam", 0.1, beta1=1.0)
    with pytest.raises(ValueError, match="takes only 'beta1'"):
        threshold("adam", 0.1, beta=0.9)
    with pytest.raises(ValueError, match="no hyperparameters"):
        threshold("gd", 0.1, beta=0.9)
    assert set(OPTIMIZER_THRESHOLDS) == {"gd", "heavy_ball", "nesterov", "adam"}


def test_momentum_is_heavy_ball_under_the_name_train_uses():
    from valleys.stability.thresholds import OPTIMIZER_ALIASES
    from valleys.train import OPTIMIZERS

    assert OPTIMIZER_ALIASES == {"momentum": "heavy_ball"}
    for lr, beta in ((0.01, 0.9), (0.1, 0.5), (0.05, 0.0)):
        assert threshold("momentum", lr, beta=beta) == threshold("heavy_ball", lr, beta=beta)
    assert threshold("momentum", 0.01) == threshold("heavy_ball", 0.01)
    with pytest.raises(ValueError, match="takes only 'beta'"):
        threshold("momentum", 0.1, beta1=0.9)
    with pytest.raises(ValueError, match="aliases: momentum = heavy_ball"):
        threshold("heavy-ball", 0.1)
    # Every optimizer train() runs that has a threshold is known under train()'s name.
    assert "momentum" in OPTIMIZERS
    assert {"nesterov", "adam"} <= set(OPTIMIZERS) & set(OPTIMIZER_THRESHOLDS)
