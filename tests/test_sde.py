"""Lévy-driven SDE simulators and first-exit times against closed forms (fixed seeds)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from valleys.sde import AdamLike, DoubleWell, exit_times, levy_constant, levy_exit_time, simulate


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is faster and fair to neighbours
    yield
    torch.set_num_threads(previous)


def _zero(theta):
    return torch.zeros_like(theta)


def test_double_well_gradient_and_geometry():
    dw = DoubleWell(width_left=0.7, depth_left=2.0, width_right=1.3, depth_right=0.5,
                    stiffness=(3.0,))
    theta = torch.tensor([[-1.1, 0.3], [-0.2, -1.0], [0.4, 2.0], [2.0, 0.0]], dtype=torch.float64,
                         requires_grad=True)
    (auto,) = torch.autograd.grad(dw.value(theta).sum(), theta)
    torch.testing.assert_close(dw.grad(theta.detach()), auto)
    minima = torch.tensor([[-0.7, 0.0], [1.3, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(dw.value(minima), torch.tensor([-2.0, -0.5], dtype=torch.float64))
    assert float(dw.grad(minima).abs().max()) < 1e-12
    assert dw.basin() == (-1.4, 0.0)
    with pytest.raises(ValueError, match="positive"):
        DoubleWell(width_left=0.0)


def test_increments_scale_as_dt_to_one_over_alpha():
    # F = 0: θ_T = ε Σ_k Δt^{1/α} S_k has the law of ε T^{1/α} S (stability).
    T, dt, alpha, eps = 1.0, 0.01, 1.5, 0.3
    gen = torch.Generator().manual_seed(0)
    out = simulate(_zero, torch.zeros(3000, 1, dtype=torch.float64), steps=int(T / dt), dt=dt,
                   alpha=alpha, epsilon=eps, generator=gen)
    z = (out["theta"][:, 0] / (eps * T ** (1 / alpha))).numpy()
    assert stats.kstest(z[:800], lambda t: stats.levy_stable.cdf(t, alpha, 0)).pvalue > 0.01


def test_gaussian_case_is_brownian_with_variance_two_eps_squared():
    T, dt, eps = 2.0, 0.01, 0.5
    out = simulate(_zero, torch.zeros(20_000, 2, dtype=torch.float64), steps=int(T / dt), dt=dt,
                   alpha=2.0, epsilon=eps, generator=torch.Generator().manual_seed(1))
    var = out["theta"].var(0)
    torch.testing.assert_close(var, torch.full((2,), 2 * eps**2 * T, dtype=torch.float64),
                               rtol=0.03, atol=0)


def test_anisotropic_scale_and_isotropic_noise():
    scale = torch.tensor([[2.0, 0.0], [1.0, 0.5]], dtype=torch.float64)
    out = simulate(_zero, torch.zeros(20_000, 2, dtype=torch.float64), steps=50, dt=0.02,
                   alpha=2.0, epsilon=1.0, scale=scale, generator=torch.Generator().manual_seed(2))
    cov = torch.cov(out["theta"].T)
    torch.testing.assert_close(cov, 2 * 1.0 * scale @ scale.T, rtol=0.05, atol=0.03)
    iso = simulate(_zero, torch.zeros(4000, 3, dtype=torch.float64), steps=10, dt=0.1, alpha=1.3,
                   epsilon=1.0, noise="isotropic", generator=torch.Generator().manual_seed(3))
    assert torch.isfinite(iso["theta"]).all()
    with pytest.raises(ValueError, match="scale"):
        simulate(_zero, torch.zeros(2, 2, dtype=torch.float64), steps=1, dt=0.1,
                 scale=torch.ones(3))
    with pytest.raises(ValueError, match="noise"):
        simulate(_zero, torch.zeros(2, 2, dtype=torch.float64), steps=1, dt=0.1, noise="pink")


@pytest.mark.parametrize("adam", [None, AdamLike(), AdamLike(averaging=False, normalize=False)])
def test_noise_free_dynamics_reach_the_minimum(adam):
    dw = DoubleWell(stiffness=(2.0,))
    start = torch.tensor([[-0.3, 0.5], [-1.8, -0.4]], dtype=torch.float64)
    out = simulate(dw.grad, start, steps=4000, dt=0.005, epsilon=0.0, adam=adam, record_every=100)
    torch.testing.assert_close(out["theta"], dw.left_minimum().expand(2, -1), atol=1e-3, rtol=0)
    assert out["path"].shape == (41, 2, 2) and float(out["times"][-1]) == pytest.approx(20.0)


def test_gaussian_exit_time_follows_kramers():
    # α = 2: dθ = −φ'(θ)dt + ε√2 dW, temperature ε²; log E τ is linear in ΔV/ε² with slope 1.
    dw = DoubleWell()
    start = dw.left_minimum()
    inv_temperatures = np.array([2.0, 3.0, 4.0])
    logs = []
    for beta in inv_temperatures:
        res = exit_times(dw.grad, start, (-3.0, 0.0), num_paths=400, alpha=2.0,
                         epsilon=1 / math.sqrt(beta), dt=0.01, max_steps=12_000, seed=0)
        assert res.exited > 300  # most paths exit; the rest are censored, not dropped
        logs.append(math.log(res.mean))
    slope = np.polyfit(inv_temperatures * 1.0, logs, 1)[0]  # ΔV = 1
    assert 0.85 < slope < 1.15


def test_levy_exit_time_is_a_power_law_in_epsilon():
    # α < 2: E τ ≈ 1/(ε^α m(W)) (Imkeller–Pavlyukevich): log-log slope −α, and the prefactor.
    dw, alpha = DoubleWell(), 1.5
    start, basin = dw.left_minimum(), dw.basin()  # W = (−2, 0): distance 1 on either side
    eps = np.array([0.2, 0.1, 0.05])
    means = []
    for e in eps:
        predicted = levy_exit_time(alpha, e, (1.0, 1.0))
        res = exit_times(dw.grad, start, basin, num_paths=300, alpha=alpha, epsilon=float(e),
                         dt=0.01, max_steps=int(2 * predicted / 0.01), seed=1)
        means.append(res.mean)
        assert res.mean == pytest.approx(predicted, rel=0.25)
    exponent = -np.polyfit(np.log(eps), np.log(means), 1)[0]
    assert abs(exponent - alpha) < 0.15


def test_exit_times_are_reproducible_and_validated():
    dw = DoubleWell()
    kwargs = dict(num_paths=50, alpha=1.2, epsilon=0.3, dt=0.01, max_steps=2000)
    a = exit_times(dw.grad, dw.left_minimum(), dw.basin(), seed=3, **kwargs)
    b = exit_times(dw.grad, dw.left_minimum(), dw.basin(), seed=3, **kwargs)
    assert torch.equal(a.times, b.times)
    assert a.to_dict()["kind"] == "sgd" and "times" not in a.to_dict()
    with pytest.raises(ValueError, match="inside the basin"):
        exit_times(dw.grad, torch.tensor([0.5], dtype=torch.float64), dw.basin())
    with pytest.raises(ValueError, match="alpha"):
        exit_times(dw.grad, dw.left_minimum(), dw.basin(), alpha=2.5)
    assert levy_constant(1.0) == pytest.approx(1 / math.pi)
    with pytest.raises(ValueError, match="0 < α < 2"):
        levy_exit_time(2.0, 0.1, (1.0, 1.0))


def test_step_counts_are_validated():
    dw = DoubleWell()
    with pytest.raises(ValueError, match="max_steps"):
        exit_times(dw.grad, dw.left_minimum(), dw.basin(), max_steps=0)
    with pytest.raises(ValueError, match="record_every"):
        simulate(dw.grad, torch.zeros(2, 1, dtype=torch.float64) - 1, steps=3, dt=0.1,
                 record_every=0)
    with pytest.raises(ValueError, match="shape"):
        simulate(dw.grad, torch.zeros(3, dtype=torch.float64), steps=3, dt=0.1)
