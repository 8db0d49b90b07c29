r"""Mixtures of GANs as a mean-field zero-sum game between network particles.

Each particle is one small network: ``x_i ∈ R^{p_G}`` the flat parameters of a generator
``G_i: R^{k} → R²`` and ``y_j ∈ R^{p_D}`` those of a critic ``D_j: R² → R``. The mixed
generator is ``Σ_i w_i G_i`` (pick ``G_i`` with probability ``w_i``), the mixed critic
``Σ_j v_j D_j``. The payoff is the Wasserstein-GAN objective with weight decay on both players
(the decay on the critics replaces WGAN's clipping by a confining term, so the game lives on
Euclidean space, as in Ma & Ying, ICLR 2022, arXiv 2202.10947):

.. math:: K(x_i, y_j) = \mathbb{E}_{P}[D_j] − \mathbb{E}_{z}[D_j(G_i(z))]
          + \frac{λ_G}{2}|x_i|² − \frac{λ_D}{2}|y_j|²,

estimated on fresh mini-batches at each call (the same real batch and noise for all pairs).
Generators minimise ``K``, critics maximise it, so :func:`valleys.games.solve` trains mixtures
of GANs with any of its methods; the mixed-GAN code of Domingo-Enrich et al. (NeurIPS 2020,
``arthurmensch/multi_gan``) trains 5 generators against 5 discriminators this way with weights.

Targets: 8 Gaussians on the unit circle (std 0.1, the ``8gmm`` data of ``multi_gan``) and 25
Gaussians on the grid ``{−2, …, 2}²`` (std 0.05). Metrics (:func:`gan_metrics`): mode coverage,
the fraction of high-quality samples, the mean log-likelihood of generated samples under the
true mixture, and the exact W2 distance between generated and target samples (POT).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from valleys.errors import ArgumentValueError
from valleys.games.progress import wasserstein2

__all__ = [
    "GANPayoff",
    "GaussianMixture",
    "ParticleMLP",
    "gan_metrics",
    "gaussian_mixture",
    "sample_generators",
]


@dataclass(frozen=True)
class GaussianMixture:
    """An equal-weight isotropic Gaussian mixture in the plane."""

    means: torch.Tensor
    std: float
    name: str

    def sample(self, n: int, *, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
        k = self.means.shape[0]
        idx = torch.randint(k, (n,), generator=generator, device=device)
        noise = torch.randn(n, 2, generator=generator, dtype=dtype, device=device)
        return self.means.to(dtype=dtype, device=device)[idx] + self.std * noise

    def log_prob(self, points: torch.Tensor) -> torch.Tensor:
        """``log (1/k) Σ_c N(points; μ_c, σ²I)`` (with the correct normaliser)."""
        means = self.means.to(points)
        sq = (points[:, None, :] - means[None]).square().sum(-1)
        log_norm = math.log(2 * math.pi * self.std**2)
        return torch.logsumexp(-sq / (2 * self.std**2), 1) - log_norm - math.log(means.shape[0])


def gaussian_mixture(name: str) -> GaussianMixture:
    """``"8gaussians"`` (unit circle, std 0.1) or ``"25gaussians"`` (grid {−2..2}², std 0.05)."""
    if name == "8gaussians":
        angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
        return GaussianMixture(torch.stack([angles.cos(), angles.sin()], 1), 0.1, name)
    if name == "25gaussians":
        ticks = torch.arange(-2, 3, dtype=torch.float64)
        grid = torch.cartesian_prod(ticks, ticks)
        return GaussianMixture(grid, 0.05, name)
    raise ArgumentValueError(f"unknown target {name!r}; use '8gaussians' or '25gaussians'")


@dataclass(frozen=True)
class ParticleMLP:
    """An MLP evaluated for many parameter particles at once (flat vectors, one per row)."""

    widths: tuple[int, ...]
    activation: str = "relu"

    def __post_init__(self) -> None:
        if len(self.widths) < 2 or self.activation not in ("relu", "tanh"):
            raise ArgumentValueError("widths needs >= 2 entries and activation 'relu' or 'tanh'")

    @property
    def num_parameters(self) -> int:
        return sum(a * b + b for a, b in zip(self.widths[:-1], self.widths[1:], strict=True))

    def init(self, n: int, *, generator: torch.Generator, dtype: torch.dtype = torch.float32,
             device=None) -> torch.Tensor:
        """``n`` independent particles: weights ``N(0, 1/fan_in)``, biases 0."""
        parts = []
        for a, b in zip(self.widths[:-1], self.widths[1:], strict=True):
            parts.append(torch.randn(n, b * a, generator=generator, dtype=dtype, device=device)
                         / math.sqrt(a))
            parts.append(torch.zeros(n, b, dtype=dtype, device=device))
        return torch.cat(parts, 1)

    def __call__(self, theta: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """``theta (P, p)``, ``inputs (P, B, d_in)`` → ``(P, B, d_out)``."""
        if theta.shape[1] != self.num_parameters:
            raise ArgumentValueError(f"expected {self.num_parameters} parameters per particle, "
                                     f"got {theta.shape[1]}")
        h, offset = inputs, 0
        pairs = list(zip(self.widths[:-1], self.widths[1:], strict=True))
        for layer, (a, b) in enumerate(pairs):
            W = theta[:, offset:offset + a * b].reshape(-1, b, a)
            offset += a * b
            bias = theta[:, offset:offset + b]
            offset += b
            h = torch.einsum("pbi,poi->pbo", h, W) + bias[:, None, :]
            if layer < len(pairs) - 1:
                h = torch.relu(h) if self.activation == "relu" else torch.tanh(h)
        return h


class GANPayoff:
    """The WGAN payoff matrix ``K(x_i, y_j)`` of generator and critic particles (see module)."""

    def __init__(self, target: GaussianMixture, generator_net: ParticleMLP,
                 critic_net: ParticleMLP, *, batch_size: int = 256, generator_decay: float = 1e-4,
                 critic_decay: float = 1e-2, seed: int = 0) -> None:
        if generator_net.widths[-1] != 2 or critic_net.widths[0] != 2 or \
                critic_net.widths[-1] != 1:
            raise ArgumentValueError(
                "generators must output 2-D points; critics map 2-D points to 1")
        if batch_size < 1:
            raise ArgumentValueError("batch_size must be >= 1")
        self.target, self.generator_net, self.critic_net = target, generator_net, critic_net
        self.batch_size = batch_size
        self.generator_decay, self.critic_decay = generator_decay, critic_decay
        self.noise_dim = generator_net.widths[0]
        self.rng = torch.Generator().manual_seed(seed)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        B = self.batch_size
        real = self.target.sample(B, generator=self.rng, dtype=x.dtype).to(x.device)
        z = torch.randn(B, self.noise_dim, generator=self.rng, dtype=x.dtype).to(x.device)
        fake = self.generator_net(x, z.expand(x.shape[0], B, -1))           # (n, B, 2)
        points = torch.cat([real, fake.reshape(-1, 2)], 0)                  # (B + nB, 2)
        scores = self.critic_net(y, points.expand(y.shape[0], -1, -1))[..., 0]   # (m, B + nB)
        real_score = scores[:, :B].mean(1)                                   # (m,)
        fake_score = scores[:, B:].reshape(y.shape[0], x.shape[0], B).mean(2)    # (m, n)
        return (real_score[None, :] - fake_score.T
                + 0.5 * self.generator_decay * x.square().sum(1, keepdim=True)
                - 0.5 * self.critic_decay * y.square().sum(1)[None, :])


def sample_generators(generator_net: ParticleMLP, x: torch.Tensor, n: int, *,
                      weights: torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:
    """``n`` samples of the mixed generator: pick ``G_i`` with probability ``w_i``, then ``z``."""
    rng = torch.Generator().manual_seed(seed)
    w = (torch.full((x.shape[0],), 1.0 / x.shape[0]) if weights is None
         else weights.detach().cpu().double())
    which = torch.multinomial(w, n, replacement=True, generator=rng)
    z = torch.randn(n, generator_net.widths[0], generator=rng, dtype=x.dtype).to(x.device)
    with torch.no_grad():
        out = generator_net(x[which.to(x.device)], z[:, None, :])
    return out[:, 0, :]


def gan_metrics(samples: torch.Tensor, target: GaussianMixture, *, w2_samples: int = 1000,
                seed: int = 0) -> dict[str, Any]:
    """Mode coverage, high-quality fraction, log-likelihood and W2 of generated samples.

    A sample is *high quality* if it lies within 3 std of a mode; a mode is *covered* if at
    least a quarter of its expected share of samples (``n/k``) lands within 3 std of it.
    ``log_likelihood`` is the mean of ``log p_target(sample)``. ``w2`` is the exact W2 between
    ``w2_samples`` generated points and as many fresh target samples; ``w2_floor`` is the W2
    between two independent target samples of that size (what a perfect generator gets).
    """
    samples = samples.detach().double().cpu()
    if not bool(torch.isfinite(samples).all()):
        return {"modes_covered": 0, "num_modes": int(target.means.shape[0]),
                "mode_coverage": 0.0, "high_quality": 0.0, "log_likelihood": math.nan,
                "w2": math.nan, "w2_floor": math.nan}
    means = target.means.double()
    k = means.shape[0]
    dist = torch.cdist(samples, means)
    nearest = dist.argmin(1)
    good = dist.min(1).values <= 3 * target.std
    counts = torch.bincount(nearest[good], minlength=k)
    covered = int((counts >= 0.25 * samples.shape[0] / k).sum())
    rng = torch.Generator().manual_seed(seed)
    ref = target.sample(2 * w2_samples, generator=rng, dtype=torch.float64)
    m = min(w2_samples, samples.shape[0])
    return {
        "modes_covered": covered, "num_modes": k, "mode_coverage": covered / k,
        "high_quality": float(good.double().mean()),
        "log_likelihood": float(target.log_prob(samples).mean()),
        "w2": wasserstein2(samples[:m], ref[:w2_samples]),
        "w2_floor": wasserstein2(ref[w2_samples:], ref[:w2_samples]),
    }
