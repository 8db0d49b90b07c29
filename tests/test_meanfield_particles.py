"""Particle measures: moments and histograms against direct formulas; distances against oracles.

Oracles: sorted-sample (quantile) formula for 1-D Wasserstein, an independent assignment solver
(SciPy's Hungarian method) for equal-size uniform measures in several dimensions, the Bures
closed form between Gaussians, and the MMD computed from full kernel matrices.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from valleys.meanfield import (
    ParticleMeasure,
    gaussian_wasserstein2,
    kernel_sum,
    mmd,
    sinkhorn,
    wasserstein,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors: one thread is much faster on a shared machine (restored afterwards)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def sample(n, d, seed, shift=0.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype) + shift


def weights(n, seed):
    g = torch.Generator().manual_seed(seed + 100)
    return torch.rand(n, generator=g, dtype=torch.float64) + 0.1


def test_bad_input_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match=r"x\[:, None\]"):
        ParticleMeasure(torch.zeros(5, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating point"):
        ParticleMeasure(torch.zeros(5, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="shape"):
        ParticleMeasure(torch.zeros(5, 2), torch.ones(4))
    with pytest.raises(ValueError, match="non-negative"):
        ParticleMeasure(torch.zeros(3, 2), torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="match"):
        ParticleMeasure(torch.zeros(3, 2, dtype=torch.float64), torch.ones(3))
    mu, nu = ParticleMeasure(sample(4, 2, 0)), ParticleMeasure(sample(4, 3, 1))
    with pytest.raises(ValueError, match="dimensions"):
        wasserstein(mu, nu)
    with pytest.raises(ValueError, match="unknown kernel"):
        mmd(mu, mu, kernel="cosine")


def test_moments_match_weighted_formulas():
    x, w = sample(50, 3, 0), weights(50, 0)
    mu = ParticleMeasure(x, w)
    p = (w / w.sum()).numpy()
    xn = x.numpy()
    assert mu.mass == pytest.approx(float(w.sum()))
    assert torch.allclose(mu.probabilities.sum(), torch.tensor(1.0, dtype=torch.float64))
    np.testing.assert_allclose(mu.mean().numpy(), p @ xn, rtol=1e-12)
    np.testing.assert_allclose(mu.covariance().numpy(), np.cov(xn.T, aweights=p, bias=True),
                               rtol=1e-10)
    norms = np.linalg.norm(xn, axis=1)
    assert float(mu.moment(3)) == pytest.approx(float(p @ norms**3), rel=1e-12)
    assert float(mu.expect(lambda z: z.pow(2).sum(1))) == pytest.approx(float(p @ norms**2))
    assert ParticleMeasure(x).effective_sample_size() == pytest.approx(50)


def test_histogram_matches_numpy_and_integrates_to_one():
    x, w = sample(200, 2, 1), weights(200, 1)
    mu = ParticleMeasure(x, w)
    values, edges = mu.histogram(12, coordinate=1)
    ref, ref_edges = np.histogram(x[:, 1].numpy(), bins=12, weights=(w / w.sum()).numpy(),
                                  density=True)
    np.testing.assert_allclose(edges.numpy(), ref_edges, rtol=1e-12)
    np.testing.assert_allclose(values.numpy(), ref, rtol=1e-10)
    assert float((values * edges.diff()).sum()) == pytest.approx(1.0)
    radial, _ = mu.histogram(10, coordinate=None, density=False)
    assert float(radial.sum()) == pytest.approx(1.0)


def test_wasserstein_in_one_dimension_is_the_quantile_formula():
    x, y = sample(300, 1, 0), sample(300, 1, 1, shift=0.7)
    mu, nu = ParticleMeasure(x), ParticleMeasure(y)
    for p in (1.0, 2.0):
        expected = (x[:, 0].sort().values - y[:, 0].sort().values).abs().pow(p).mean() ** (1 / p)
        assert wasserstein(mu, nu, p=p) == pytest.approx(float(expected), rel=1e-10)


def test_wasserstein_in_several_dimensions_matches_an_assignment_solver():
    x, y = sample(40, 3, 2), sample(40, 3, 3, shift=0.3)
    cost = torch.cdist(x, y).pow(2).numpy()
    rows, cols = linear_sum_assignment(cost)
    expected = math.sqrt(cost[rows, cols].mean())
    assert wasserstein(ParticleMeasure(x), ParticleMeasure(y)) == pytest.approx(expected,
                                                                                rel=1e-9)


def test_wasserstein_of_a_translation_is_its_length():
    x = sample(60, 4, 4)
    v = torch.tensor([0.3, -1.0, 2.0, 0.5], dtype=torch.float64)
    assert wasserstein(ParticleMeasure(x), ParticleMeasure(x + v)) == pytest.approx(
        float(v.norm()), rel=1e-9)


def test_gaussian_closed_form_and_large_samples_agree():
    # 1-D: W2² = (m1 − m2)² + (s1 − s2)²; diagonal: Σ (√a − √b)² plus the means.
    m1, m2 = torch.tensor([0.0, 1.0]), torch.tensor([2.0, -1.0])
    S1, S2 = torch.diag(torch.tensor([1.0, 4.0])), torch.diag(torch.tensor([9.0, 1.0]))
    expected = math.sqrt(4 + 4 + (1 - 3) ** 2 + (2 - 1) ** 2)
    assert gaussian_wasserstein2(m1.double(), S1.double(), m2.double(), S2.double()) == \
        pytest.approx(expected, rel=1e-10)
    # 1-D samples from N(0, 1) and N(1, 2²): empirical W2 → sqrt(1 + 1) (statistical tolerance).
    x = sample(4000, 1, 5)
    y = 2 * sample(4000, 1, 6) + 1
    assert wasserstein(ParticleMeasure(x), ParticleMeasure(y)) == pytest.approx(math.sqrt(2),
                                                                                abs=0.08)


def test_weighted_measures_in_one_dimension():
    # μ = ½δ_0 + ½δ_1 vs ν = δ_{0.5}: W1 = 0.5; weights given unnormalized.
    mu = ParticleMeasure(torch.tensor([[0.0], [1.0]], dtype=torch.float64),
                         torch.tensor([3.0, 3.0], dtype=torch.float64))
    nu = ParticleMeasure(torch.tensor([[0.5]], dtype=torch.float64))
    assert wasserstein(mu, nu, p=1) == pytest.approx(0.5)
    assert wasserstein(mu, nu, p=2) == pytest.approx(0.5)
    mu2 = ParticleMeasure(torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=torch.float64),
                          torch.tensor([1.0, 3.0], dtype=torch.float64))
    nu2 = ParticleMeasure(torch.tensor([[0.0, 0.0]], dtype=torch.float64))
    assert wasserstein(mu2, nu2, p=2) == pytest.approx(math.sqrt(0.75))


def test_sinkhorn_approaches_the_exact_cost_and_is_debiased():
    x, y = sample(60, 2, 7), sample(50, 2, 8, shift=1.0)
    mu, nu = ParticleMeasure(x, weights(60, 7)), ParticleMeasure(y)
    exact = wasserstein(mu, nu) ** 2
    assert sinkhorn(mu, nu, reg=0.02, debiased=False) == pytest.approx(exact, rel=2e-2)
    assert sinkhorn(mu, mu, reg=0.1) == pytest.approx(0.0, abs=1e-8)
    assert sinkhorn(mu, nu, reg=0.1) > 0


def test_mmd_matches_the_full_kernel_matrix_formula():
    x, y = sample(70, 3, 9), sample(45, 3, 10, shift=0.4)
    wx, wy = weights(70, 9), weights(45, 10)
    px, py = wx / wx.sum(), wy / wy.sum()
    mu, nu = ParticleMeasure(x, wx), ParticleMeasure(y, wy)
    h = 1.3
    for kernel, k in {
        "gaussian": lambda a, b: torch.exp(-torch.cdist(a, b) ** 2 / (2 * h * h)),
        "laplace": lambda a, b: torch.exp(-torch.cdist(a, b) / h),
        "energy": lambda a, b: -torch.cdist(a, b),
    }.items():
        direct = px @ k(x, x) @ px - 2 * px @ k(x, y) @ py + py @ k(y, y) @ py
        got = mmd(mu, nu, kernel, bandwidth=h, squared=True, chunk_size=8)  # many chunks
        assert got == pytest.approx(float(direct), rel=1e-10)
        assert float(kernel_sum(mu, nu, kernel, h, chunk_size=7)) == pytest.approx(
            float(px @ k(x, y) @ py), rel=1e-12)
    assert mmd(mu, mu) == pytest.approx(0.0, abs=1e-7)


def test_float32_inputs_stay_float32():
    x = sample(30, 2, 11, dtype=torch.float32)
    mu = ParticleMeasure(x)
    assert mu.mean().dtype == torch.float32 and mu.probabilities.dtype == torch.float32
    assert mu.histogram(5)[0].dtype == torch.float32
    assert math.isfinite(mmd(mu, ParticleMeasure(x + 1)))
    assert wasserstein(mu, ParticleMeasure(x + 1)) == pytest.approx(math.sqrt(2), rel=1e-4)
