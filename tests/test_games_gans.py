"""valleys.games.gans: particle networks, the WGAN payoff matrix and the GAN metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal
from torch import nn

from valleys.games import solve
from valleys.games.gans import (
    GANPayoff,
    ParticleMLP,
    gan_metrics,
    gaussian_mixture,
    sample_generators,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _as_module(net: ParticleMLP, theta: torch.Tensor) -> nn.Sequential:
    """The torch.nn network with one particle's parameters (the oracle)."""
    layers, offset = [], 0
    pairs = list(zip(net.widths[:-1], net.widths[1:], strict=True))
    for k, (a, b) in enumerate(pairs):
        lin = nn.Linear(a, b).double()
        with torch.no_grad():
            lin.weight.copy_(theta[offset:offset + a * b].reshape(b, a))
            offset += a * b
            lin.bias.copy_(theta[offset:offset + b])
            offset += b
        layers.append(lin)
        if k < len(pairs) - 1:
            layers.append(nn.ReLU() if net.activation == "relu" else nn.Tanh())
    return nn.Sequential(*layers)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_particle_mlp_matches_torch_modules(activation):
    net = ParticleMLP((3, 7, 5, 2), activation)
    g = torch.Generator().manual_seed(0)
    theta = net.init(4, generator=g, dtype=torch.float64)
    theta = theta + 0.1 * torch.randn(theta.shape, generator=g, dtype=torch.float64)
    assert theta.shape == (4, net.num_parameters)
    inputs = torch.randn(4, 6, 3, generator=g, dtype=torch.float64)
    out = net(theta, inputs)
    for p in range(4):
        assert torch.allclose(out[p], _as_module(net, theta[p])(inputs[p]), atol=1e-12)
    with pytest.raises(ValueError, match="parameters per particle"):
        net(theta[:, :-1], inputs)


def test_gan_payoff_matches_direct_computation():
    target = gaussian_mixture("8gaussians")
    G, D = ParticleMLP((2, 8, 2)), ParticleMLP((2, 8, 1))
    g = torch.Generator().manual_seed(1)
    x = G.init(3, generator=g, dtype=torch.float64)
    y = D.init(2, generator=g, dtype=torch.float64)
    payoff = GANPayoff(target, G, D, batch_size=50, generator_decay=0.01, critic_decay=0.1,
                       seed=7)
    K = payoff(x, y)
    assert K.shape == (3, 2)
    rng = torch.Generator().manual_seed(7)  # the same draws, in the same order
    real = target.sample(50, generator=rng, dtype=torch.float64)
    z = torch.randn(50, 2, generator=rng, dtype=torch.float64)
    for i in range(3):
        fake = _as_module(G, x[i])(z)
        for j in range(2):
            critic = _as_module(D, y[j])
            expected = (critic(real).mean() - critic(fake).mean()
                        + 0.005 * x[i].square().sum() - 0.05 * y[j].square().sum())
            assert K[i, j].item() == pytest.approx(expected.item(), rel=1e-10, abs=1e-12)


def test_mixture_log_prob_and_metrics_on_exact_samples():
    for name, k in (("8gaussians", 8), ("25gaussians", 25)):
        target = gaussian_mixture(name)
        pts = target.sample(3000, generator=torch.Generator().manual_seed(0),
                            dtype=torch.float64)
        cov = target.std**2 * np.eye(2)
        dens = sum(multivariate_normal(mu.numpy(), cov).pdf(pts[:5].numpy())
                   for mu in target.means) / k
        assert torch.allclose(target.log_prob(pts[:5]), torch.as_tensor(dens).log(), rtol=1e-9)
        metrics = gan_metrics(pts, target, w2_samples=500)
        assert metrics["modes_covered"] == k and metrics["mode_coverage"] == 1.0
        assert metrics["high_quality"] > 0.98  # 3-sigma disc in 2-D holds 98.9%
        assert metrics["log_likelihood"] == pytest.approx(float(target.log_prob(pts).mean()))
        assert metrics["w2"] < 1.5 * metrics["w2_floor"]
    collapsed = torch.zeros(1000, 2, dtype=torch.float64) + target.means[0]
    assert gan_metrics(collapsed, target, w2_samples=300)["modes_covered"] == 1
    bad = gan_metrics(torch.full((10, 2), math.nan), target)
    assert bad["modes_covered"] == 0 and math.isnan(bad["w2"])
    with pytest.raises(ValueError, match="unknown target"):
        gaussian_mixture("9gaussians")


def test_sampling_respects_weights_and_training_runs():
    target = gaussian_mixture("8gaussians")
    G, D = ParticleMLP((2, 16, 2)), ParticleMLP((2, 16, 1))
    g = torch.Generator().manual_seed(0)
    x0, y0 = G.init(3, generator=g), D.init(3, generator=g)
    only = sample_generators(G, x0, 200, weights=torch.tensor([0.0, 1.0, 0.0]), seed=0)
    rng = torch.Generator().manual_seed(0)  # the generator choice is drawn first, then z
    torch.multinomial(torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), 200,
                      replacement=True, generator=rng)
    z = torch.randn(200, 2, generator=rng)
    assert only.shape == (200, 2)
    assert torch.allclose(only, G(x0[1:2], z[None])[0], atol=1e-6)  # only G_1 is used
    payoff = GANPayoff(target, G, D, batch_size=32, seed=0)
    for method in ("quasistatic", "descent-ascent", "wfr"):
        result = solve(payoff, x0, y0, method, temperature=1e-6, steps=3, lr=0.01, seed=0)
        assert result.status == "finished" and torch.isfinite(result.x).all()
        assert not torch.equal(result.x, x0)
