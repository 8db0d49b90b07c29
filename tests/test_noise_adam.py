"""Adam's effective noise: preconditioning, averaging factor and the stationary second moment."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import DenseOracle, make_data, make_model

from valleys import Objective
from valleys.noise import (
    adam_noise_covariance,
    adam_noise_samples,
    averaging_factor,
    minibatch_gradients,
    noise_covariance,
    noise_factor,
)
from valleys.noise._adam import stationary_second_moment


def _problem(n=6):
    X, Y = make_data("ce", n=n)
    return Objective(make_model("mlp-tanh"), "ce", (X, Y)), X, Y


def test_averaging_factor_matches_simulation():
    beta = 0.9
    assert averaging_factor(beta) == pytest.approx(0.1 / 1.9)
    g = torch.Generator().manual_seed(0)
    xi = torch.randn(60_000, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.5])
    m = adam_noise_samples(xi, beta1=beta)
    var = m.var(0) / xi.var(0)
    torch.testing.assert_close(var, torch.full((3,), averaging_factor(beta), dtype=torch.float64),
                               rtol=0.05, atol=0)


def test_samples_match_the_recursion():
    g = torch.Generator().manual_seed(1)
    xi = torch.randn(40, 4, generator=g, dtype=torch.float64)
    v = torch.rand(4, generator=g, dtype=torch.float64) + 0.1
    out = adam_noise_samples(xi, v, beta1=0.8, delta=1e-3, burn_in=5)
    m, rows = torch.zeros(4, dtype=torch.float64), []
    for t in range(40):
        m = 0.8 * m + 0.2 * xi[t]
        rows.append(m / (v.sqrt() + 1e-3))
    torch.testing.assert_close(out, torch.stack(rows)[5:])
    torch.testing.assert_close(adam_noise_samples(xi, v, delta=0.0, average=False), xi / v.sqrt())


def test_covariance_operator_against_dense():
    obj, X, Y = _problem()
    G = DenseOracle(obj, X, Y).sample_gradients()
    D = G - G.mean(0)
    Sigma = noise_factor(6, 2) * D.T @ D / 6
    v = torch.rand(obj.dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    P_inv = 1 / (v.sqrt() + 1e-8)
    op = adam_noise_covariance(noise_covariance(obj, batch_size=2), v, beta1=0.9)
    expected = averaging_factor(0.9) * P_inv[:, None] * Sigma * P_inv[None, :]
    torch.testing.assert_close(op.to_dense(), expected, rtol=1e-8, atol=1e-10)


def test_stationary_second_moment_is_the_mean_over_batches():
    obj, _, _ = _problem()
    subsets = torch.tensor(list(itertools.combinations(range(6), 2)))
    Gb = minibatch_gradients(obj, subsets)
    torch.testing.assert_close(stationary_second_moment(obj, batch_size=2), Gb.pow(2).mean(0),
                               rtol=1e-9, atol=1e-12)


def test_bad_input():
    with pytest.raises(ValueError, match="beta1"):
        averaging_factor(1.0)
    with pytest.raises(ValueError, match="burn_in"):
        adam_noise_samples(torch.zeros(10, 2), burn_in=10)
    with pytest.raises(ValueError, match="non-negative"):
        adam_noise_samples(torch.zeros(100, 2), -torch.ones(2))
    obj, _, _ = _problem()
    with pytest.raises(ValueError, match="shape"):
        adam_noise_covariance(noise_covariance(obj, batch_size=2), torch.ones(3))
