"""α-stable sampling (Chambers–Mallows–Stuck) against scipy's levy_stable."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from valleys.noise import isotropic_stable, stable_rvs


@pytest.mark.parametrize(
    ("alpha", "beta"),
    [(0.8, 0.0), (1.0, 0.0), (1.2, 0.0), (1.5, 0.0), (1.8, 0.0), (2.0, 0.0), (1.5, 0.5),
     (0.75, 1.0), (1.0, 0.5)],
)
def test_cms_matches_scipy_levy_stable(alpha, beta):
    g = torch.Generator().manual_seed(0)
    x = stable_rvs(alpha, 800, beta=beta, generator=g).numpy()
    # One-sample KS against scipy's cdf (S1 parameterization), fixed seed.
    p = stats.kstest(x, lambda t: stats.levy_stable.cdf(t, alpha, beta)).pvalue
    assert p > 0.01
    # The right law fits better than a clearly different α (±0.5) on the same samples.
    wrong = alpha - 0.5 if alpha > 1.1 else alpha + 0.5
    right_stat = stats.kstest(x, lambda t: stats.levy_stable.cdf(t, alpha, beta)).statistic
    assert right_stat < stats.kstest(x, lambda t: stats.levy_stable.cdf(t, wrong, beta)).statistic


def test_gaussian_case_has_variance_two():
    x = stable_rvs(2.0, 200_000, generator=torch.Generator().manual_seed(1))
    assert float(x.var()) == pytest.approx(2.0, rel=0.02)


def test_isotropic_vectors_have_stable_marginals_and_rotation_invariance():
    g = torch.Generator().manual_seed(2)
    X = isotropic_stable(1.5, 4000, 3, generator=g)
    assert X.shape == (4000, 3)
    for j in range(3):
        p = stats.kstest(X[:800, j].numpy(), lambda t: stats.levy_stable.cdf(t, 1.5, 0)).pvalue
        assert p > 0.01
    # Rotation invariance: a rotated copy has the same first-coordinate law.
    Q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    Y = X @ Q.T
    assert stats.ks_2samp(X[:, 0].numpy(), Y[:, 0].numpy()).pvalue > 0.01
    # Dependence: coordinates share the big jumps (independent coordinates would not).
    big = X.abs().max(1).values > 20
    assert float((X[big].abs() > 2).float().mean()) > 0.5


def test_reproducible_and_dtype_device():
    a = stable_rvs(1.3, (4, 5), generator=torch.Generator().manual_seed(3), dtype=torch.float32)
    b = stable_rvs(1.3, (4, 5), generator=torch.Generator().manual_seed(3), dtype=torch.float32)
    assert a.dtype == torch.float32 and a.shape == (4, 5)
    assert torch.equal(a, b)
    assert torch.isfinite(stable_rvs(0.5, 10_000, generator=torch.Generator().manual_seed(0))).all()


@pytest.mark.parametrize("alpha", [0.0, -1.0, 2.5, math.nan])
def test_bad_alpha_is_refused(alpha):
    with pytest.raises(ValueError, match="α"):
        stable_rvs(alpha, 3)


def test_bad_beta_is_refused():
    with pytest.raises(ValueError, match="β"):
        stable_rvs(1.5, 3, beta=2.0)
    with pytest.raises(TypeError, match="floating"):
        stable_rvs(1.5, 3, dtype=torch.int64)


def test_scale_of_sum_is_n_to_one_over_alpha():
    # Stability: the sum of K i.i.d. copies is K^{1/α} times one copy (in law).
    g = torch.Generator().manual_seed(4)
    K, alpha = 16, 1.4
    sums = stable_rvs(alpha, (5000, K), generator=g).sum(1) / K ** (1 / alpha)
    single = stable_rvs(alpha, 5000, generator=g)
    assert stats.ks_2samp(sums.numpy(), single.numpy()).pvalue > 0.01
    assert np.isfinite(sums.numpy()).all()
