"""Flows over measures: autograd fields, exact discrete solutions, energy decay, divergence.

Oracles: the Wasserstein gradient of an interaction energy in closed form; the forward-Euler
solution of a quadratic potential; the exact stationary covariance of Euler–Maruyama for an
Ornstein–Uhlenbeck flow (statistical, fixed seed); the multiplicative-weights solution of
pure Fisher–Rao reweighting; the entropy of a Gaussian.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from valleys.meanfield import (
    FieldValue,
    ParticleMeasure,
    autograd_field,
    knn_entropy,
    langevin_step,
    simulate,
    wasserstein_step,
    wfr_step,
)


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def cloud(n=64, d=2, seed=0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) + shift


def quadratic(a=1.5):
    """R(μ) = ∫ (a/2)‖x‖² dμ: velocity a·x, first variation (a/2)‖x‖²."""
    return autograd_field(lambda x, p: p @ (0.5 * a * x.pow(2).sum(1)))


def interaction_risk(x, p):
    """R = ∫ V dμ + ½ ∫∫ W(x − y) dμ dμ with V = ¼‖x‖⁴ and W(z) = −exp(−‖z‖²/2)."""
    V = 0.25 * x.pow(2).sum(1).pow(2)
    W = -torch.exp(-0.5 * torch.cdist(x, x).pow(2))
    return p @ V + 0.5 * p @ W @ p


def test_autograd_field_is_the_wasserstein_gradient_of_an_interaction_energy():
    x = cloud(20, 3, seed=1)
    w = torch.rand(20, generator=torch.Generator().manual_seed(2), dtype=torch.float64) + 0.2
    mu = ParticleMeasure(x, w)
    p = mu.probabilities
    value = autograd_field(interaction_risk)(mu)
    # ∇ δR/δρ(x_i) = ∇V(x_i) + Σ_j p_j ∇W(x_i − x_j), ∇W(z) = z exp(−‖z‖²/2)
    diff = x[:, None, :] - x[None, :, :]
    kernel = torch.exp(-0.5 * diff.pow(2).sum(-1))
    expected = x.pow(2).sum(1, keepdim=True) * x + (p[None, :, None] * diff
                                                    * kernel[..., None]).sum(1)
    torch.testing.assert_close(value.velocity, expected, rtol=1e-12, atol=1e-12)
    # δR/δρ(x_i) = V(x_i) + Σ_j p_j W(x_i − x_j) (the ½ disappears by symmetry)
    first = 0.25 * x.pow(2).sum(1).pow(2) - kernel @ p
    torch.testing.assert_close(value.first_variation, first, rtol=1e-12, atol=1e-12)
    assert value.risk == pytest.approx(float(interaction_risk(x, p)))


def test_uniform_weights_give_n_times_the_parameter_gradient():
    x = cloud(30, 2, seed=3)
    value = autograd_field(interaction_risk)(ParticleMeasure(x))
    xr = x.clone().requires_grad_(True)
    p = torch.full((30,), 1 / 30, dtype=torch.float64)
    (grad,) = torch.autograd.grad(interaction_risk(xr, p), xr)
    torch.testing.assert_close(value.velocity, 30 * grad, rtol=1e-12, atol=1e-14)


def test_wasserstein_step_on_a_quadratic_is_exact_forward_euler():
    x = cloud()
    result = simulate(ParticleMeasure(x), quadratic(1.5), lr=0.1, steps=7, record_every=3)
    torch.testing.assert_close(result.measure.positions, (1 - 0.15) ** 7 * x)
    assert result.status == "completed" and result.steps == 7
    assert [r["step"] for r in result.records] == [0, 3, 6, 7]
    assert result.records[-1]["time"] == pytest.approx(0.7)
    risks = result.series("risk")
    assert all(b < a for a, b in itertools.pairwise(risks))


def test_step_does_not_depend_on_the_number_of_particles():
    # The same i.i.d. cloud at two sizes follows the same mean-field dynamics: the empirical
    # means of the interaction flow stay within sampling error of each other.
    big = cloud(1200, 2, seed=4, shift=1.0)
    small = big[:300]
    f = autograd_field(interaction_risk)
    r_big = simulate(ParticleMeasure(big), f, lr=0.05, steps=20, record_every=20)
    r_small = simulate(ParticleMeasure(small), f, lr=0.05, steps=20, record_every=20)
    moved = (r_big.measure.mean() - big.mean(0)).norm()
    gap = (r_big.measure.mean() - r_small.measure.mean()).norm()
    start_gap = (big.mean(0) - small.mean(0)).norm()
    assert float(moved) > 0.3  # the flow did something
    assert float(gap) < 2 * float(start_gap) + 0.05


def test_energy_is_non_increasing_for_small_steps():
    f = autograd_field(interaction_risk)
    result = simulate(ParticleMeasure(cloud(50, 2, seed=5, shift=0.5)), f, lr=0.02, steps=60)
    risks = result.series("risk")
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(risks))
    assert risks[-1] < risks[0]


def test_langevin_reaches_the_exact_discrete_stationary_covariance():
    # Euler–Maruyama on the OU flow: Σ_{k+1} = (1 − ηa)² Σ_k + 2ητ I, so the stationary
    # covariance is τ / (a (1 − ηa/2)) I exactly.
    a, tau, lr = 2.0, 0.3, 0.05
    mu = ParticleMeasure(cloud(4000, 2, seed=6, shift=3.0))
    result = simulate(mu, quadratic(a), method="langevin", lr=lr, steps=300, temperature=tau,
                      seed=0, record_every=100)
    expected = tau / (a * (1 - lr * a / 2))
    cov = result.measure.covariance()
    # Sampling error of a variance from 4000 points: sqrt(2/4000) ≈ 2.2%; allow 4 sigmas.
    assert torch.allclose(torch.diag(cov), torch.full((2,), expected, dtype=torch.float64),
                          rtol=0.09)
    assert float(cov[0, 1].abs()) < 0.09 * expected
    assert float(result.measure.mean().norm()) < 0.05
    again = simulate(mu, quadratic(a), method="langevin", lr=lr, steps=300, temperature=tau,
                     seed=0, record_every=100)
    assert torch.equal(again.measure.positions, result.measure.positions)


def test_langevin_step_with_zero_temperature_is_the_wasserstein_step():
    mu = ParticleMeasure(cloud(10, 3, seed=7))
    a, _ = langevin_step(mu, quadratic(), 0.1, 0.0, torch.Generator().manual_seed(0))
    b, _ = wasserstein_step(mu, quadratic(), 0.1)
    torch.testing.assert_close(a.positions, b.positions)


def test_fisher_rao_reweighting_is_multiplicative_weights():
    # No transport, R = ∫V dμ: p_j(k) ∝ p_j(0) exp(−k η γ V(x_j)).
    x = cloud(40, 2, seed=8)
    mu = ParticleMeasure(x)
    result = simulate(mu, quadratic(1.0), method="wfr", lr=0.1, steps=15, reaction_rate=2.0,
                      transport_rate=0.0)
    V = 0.5 * x.pow(2).sum(1)
    expected = torch.softmax(-15 * 0.1 * 2.0 * V, dim=0)
    torch.testing.assert_close(result.measure.probabilities, expected, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(result.measure.positions, x)
    ess = result.series("effective_sample_size")
    assert ess[0] == pytest.approx(40) and ess[-1] < ess[0]


def test_wfr_decreases_the_risk_faster_than_transport_alone():
    f = autograd_field(interaction_risk)
    mu = ParticleMeasure(cloud(60, 2, seed=9, shift=1.0))
    wfr = simulate(mu, f, method="wfr", lr=0.02, steps=50, reaction_rate=1.0)
    w2 = simulate(mu, f, method="wasserstein", lr=0.02, steps=50)
    risks = wfr.series("risk")
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(risks))
    assert risks[-1] < w2.series("risk")[-1]
    assert float(wfr.measure.probabilities.sum()) == pytest.approx(1.0)


def test_wfr_needs_the_first_variation():
    def velocity_only(m):
        return FieldValue(m.positions.clone())

    with pytest.raises(ValueError, match="first_variation"):
        wfr_step(ParticleMeasure(cloud(5)), velocity_only, 0.1)


def test_divergence_is_recorded_not_raised():
    f = autograd_field(lambda x, p: p @ x.pow(4).sum(1))
    result = simulate(ParticleMeasure(cloud(10, 2, seed=10, shift=3.0)), f, lr=10.0, steps=50)
    assert result.status == "diverged"
    assert result.steps < 50
    assert math.isnan(result.records[-1]["risk"])
    assert result.to_dict()["status"] == "diverged"


def test_bad_arguments_are_refused():
    mu = ParticleMeasure(cloud(5))
    with pytest.raises(ValueError, match="lr"):
        simulate(mu, quadratic(), lr=-1.0, steps=3)
    with pytest.raises(ValueError, match="unknown method"):
        simulate(mu, quadratic(), lr=0.1, steps=3, method="adam")
    with pytest.raises(ValueError, match="temperature"):
        langevin_step(mu, quadratic(), 0.1, -1.0)


def test_knn_entropy_of_a_gaussian():
    # H(N(0, s² I_2)) = log(2πe s²)
    s = 1.7
    x = s * cloud(3000, 2, seed=11)
    assert knn_entropy(ParticleMeasure(x), chunk_size=500) == pytest.approx(
        math.log(2 * math.pi * math.e * s * s), abs=0.06)


def test_langevin_free_energy_decreases_to_the_gaussian_minimum():
    # F(ρ) = ∫ (a/2)‖x‖² dρ − τ H(ρ) is minimized by N(0, τ/a I): F* = Dτ/2 − (Dτ/2) log(2πeτ/a).
    a, tau, D = 1.0, 0.5, 2
    mu = ParticleMeasure(0.3 * cloud(1500, D, seed=12, shift=2.0))
    result = simulate(mu, quadratic(a), method="langevin", lr=0.02, steps=300, temperature=tau,
                      record_every=15, free_energy=True)
    F = result.series("free_energy")
    expected = D * tau / 2 - D * tau / 2 * math.log(2 * math.pi * math.e * tau / a)
    assert F[0] > F[1] > F[2] > expected + 0.1  # decreasing while far from equilibrium
    # then it fluctuates (estimator noise) around the minimum, never far below it
    assert sum(F[-5:]) / 5 == pytest.approx(expected, abs=0.05)
    assert min(F) > expected - 0.08
