"""valleys.games.progress: NI error, regularised gaps and distances against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from valleys.games import (
    QuadraticBilinear,
    SphereBilinear,
    Torus,
    TranslationGame,
    gaussian_fit,
    gaussian_w2,
    ni_error,
    regularized_gap_grid,
    torus_histogram,
    wasserstein2,
)
from valleys.games.payoffs import gaussian_kl_to_isotropic

A = torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=torch.float64)
GAME = QuadraticBilinear(A, a=1.0, b=2.0)


pytestmark = pytest.mark.usefixtures("one_thread")


def _cloud(n, d, seed, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) + shift


def test_ni_optimized_matches_closed_form_quadratic():
    x, y = _cloud(30, 2, 0, 1.0), _cloud(40, 2, 1, -0.5)
    wx = torch.softmax(_cloud(30, 1, 2)[:, 0], 0)
    exact = GAME.ni_error(x, y, wx)
    found = ni_error(GAME, x, y, wx, restarts=4, steps=50)
    assert found.value == pytest.approx(exact, rel=1e-8)
    assert found.value == pytest.approx(found.x_exploitability + found.y_exploitability)
    # best responses: y' = Aᵀm_x/b and x' = −A m_y/a
    assert torch.allclose(found.best_y, A.T @ (wx @ x) / GAME.b, atol=1e-6)
    assert torch.allclose(found.best_x, -A @ y.mean(0) / GAME.a, atol=1e-6)


def test_ni_torus_grid_and_optimized_match_fourier_formula():
    game = TranslationGame("sin", scale=1.5)
    g = torch.Generator().manual_seed(0)
    x = torch.remainder(0.7 * torch.randn(50, 1, generator=g, dtype=torch.float64) + 1, 2 * math.pi)
    y = torch.remainder(1.2 * torch.randn(60, 1, generator=g, dtype=torch.float64), 2 * math.pi)
    exact = game.ni_error(x, y)
    grid = torch.linspace(0, 2 * math.pi, 2001, dtype=torch.float64)[:-1, None]
    on_grid = ni_error(game, x, y, x_space="torus", y_space="torus", x_grid=grid, y_grid=grid,
                       steps=0)
    refined = ni_error(game, x, y, x_space="torus", y_space="torus", x_grid=grid, y_grid=grid,
                       restarts=3, steps=30)
    optimized = ni_error(game, x, y, x_space="torus", y_space="torus", restarts=8, steps=50)
    # a grid of spacing h misses the max by at most ~ s h²/2 per player
    assert exact - 1e-5 < on_grid.value <= exact + 1e-12
    assert refined.value == pytest.approx(exact, abs=1e-9)
    assert optimized.value == pytest.approx(exact, abs=1e-9)
    assert on_grid.how == "grid" and refined.how == "grid+optimize"


def test_ni_sphere_matches_closed_form_and_is_zero_at_equilibrium():
    g = torch.Generator().manual_seed(0)
    B = torch.randn(3, 3, generator=g, dtype=torch.float64)
    game = SphereBilinear(B)
    x = _cloud(20, 3, 1, 0.5)
    x = x / x.norm(dim=1, keepdim=True)
    y = _cloud(25, 3, 2)
    y = y / y.norm(dim=1, keepdim=True)
    found = ni_error(game, x, y, x_space="sphere", y_space="sphere", restarts=8, steps=60)
    assert found.value == pytest.approx(game.ni_error(x, y), rel=1e-8)
    assert found.best_y.norm().item() == pytest.approx(1.0)
    # antipodal pairs: every mean is zero, so this symmetric measure is an exact equilibrium
    sym = torch.cat([x, -x])
    assert ni_error(game, sym, torch.cat([y, -y]), x_space="sphere", y_space="sphere",
                    restarts=4, steps=30).value == pytest.approx(0.0, abs=1e-10)


def test_regularized_gap_gaussian_closed_form():
    tau = 0.5
    px, py = GAME.equilibrium_variances(tau)
    eye = torch.eye(2, dtype=torch.float64)
    zero = torch.zeros(2, dtype=torch.float64)
    assert GAME.regularized_gap(zero, px * eye, zero, py * eye, tau) == pytest.approx(0, abs=1e-12)
    m = torch.tensor([0.3, -0.2], dtype=torch.float64)
    gap = GAME.regularized_gap(m, 2 * px * eye, zero, py * eye, tau)
    expected = tau * gaussian_kl_to_isotropic(m, 2 * px * eye, px) + (A.T @ m).square().sum() / 4
    assert gap == pytest.approx(float(expected)) and gap > 0


def test_regularized_gap_grid_matches_gaussian_closed_form_in_1d():
    """A fine grid's gap of discretised Gaussians equals the closed form (d = d' = 1)."""
    game = QuadraticBilinear(torch.tensor([[1.5]], dtype=torch.float64), a=1.0, b=2.0)
    tau, h = 0.5, 0.01
    grid = torch.arange(-10, 10, h, dtype=torch.float64)[:, None]
    mx, vx, my, vy = 0.4, 0.3, -0.2, 0.4

    def masses(mean, var):
        dens = torch.exp(-(grid[:, 0] - mean) ** 2 / (2 * var))
        return dens / dens.sum()

    gap = regularized_gap_grid(game, masses(mx, vx), masses(my, vy), grid, grid, tau, h, h)
    closed = game.regularized_gap(torch.tensor([mx], dtype=torch.float64),
                                  torch.tensor([[vx]], dtype=torch.float64),
                                  torch.tensor([my], dtype=torch.float64),
                                  torch.tensor([[vy]], dtype=torch.float64), tau)
    assert gap == pytest.approx(closed, rel=1e-4)


def test_regularized_gap_grid_torus_zero_at_uniform_positive_elsewhere():
    game = TranslationGame("cos")
    bins = 64
    uniform = torch.full((bins,), 1 / bins, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x = torch.remainder(torch.randn(500, 1, generator=g, dtype=torch.float64), 2 * math.pi)
    masses, centres, h = torus_histogram(x, bins)
    assert masses.sum().item() == pytest.approx(1.0)
    assert regularized_gap_grid(game, uniform, uniform, centres, centres, 0.3, h, h) == \
        pytest.approx(0.0, abs=1e-12)
    assert regularized_gap_grid(game, masses, uniform, centres, centres, 0.3, h, h) > 0.01
    with pytest.raises(ValueError, match="summing to 1"):
        regularized_gap_grid(game, 2 * uniform, uniform, centres, centres, 0.3, h, h)
    with pytest.raises(ValueError, match="1-D"):
        torus_histogram(torch.zeros(3, 2), 4)
    assert Torus().retract(torch.tensor([[-0.1]])).item() == pytest.approx(2 * math.pi - 0.1)


def test_gaussian_w2_and_emd():
    x = _cloud(2000, 2, 0)
    mean, cov = gaussian_fit(x)
    assert gaussian_w2(x, mean, cov) == pytest.approx(0.0, abs=1e-6)
    # isotropic Gaussians: W2² = |Δm|² + d(σ1 − σ2)²
    target_mean = mean + torch.tensor([1.0, 0.0], dtype=torch.float64)
    scaled = gaussian_w2(x, target_mean, 4 * cov)
    assert scaled ** 2 == pytest.approx(1.0 + torch.trace(cov).item(), rel=1e-6)
    # 1-D: W2 between equal-size clouds is the sorted matching
    a, b = _cloud(200, 1, 1), _cloud(200, 1, 2, 0.5)
    sorted_w2 = (torch.sort(a[:, 0]).values - torch.sort(b[:, 0]).values).square().mean().sqrt()
    assert wasserstein2(a, b) == pytest.approx(float(sorted_w2), rel=1e-9)
