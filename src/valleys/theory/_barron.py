"""Barron-norm estimates: finite ReLU ridge sums, spectral (Fourier) bounds, and from samples."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from valleys._checks import finite_real, integer, positive_real, seed_value
from valleys.errors import ArgumentTypeError, ArgumentValueError
from valleys.theory._fit import RegularizedFit, path_norm_regularized_fit
from valleys.theory._path_norm import two_layer_path_norm

__all__ = [
    "BarronEstimate",
    "SpectralMoments",
    "barron_norm_from_samples",
    "gaussian_fourier_transform",
    "gaussian_spectral_moments",
    "ridge_barron_norm",
    "spectral_barron_bound",
    "spectral_moments",
]


@dataclass(frozen=True)
class BarronEstimate:
    """Bounds ``lower ≤ ‖f‖_B ≤ upper`` on ``[-1, 1]^d``; ``exact`` when they meet (1e-12)."""

    lower: float
    upper: float

    @property
    def exact(self) -> bool:
        return self.lower >= self.upper * (1 - 1e-12)


def ridge_barron_norm(a: torch.Tensor, W: torch.Tensor, c: torch.Tensor | None = None, *,
                      points: torch.Tensor | None = None) -> BarronEstimate:
    r"""Bounds on the Barron norm of ``f(x) = Σ_j a_j σ(w_j·x + c_j)`` on ``[-1, 1]^d``.

    ``‖f‖_B = inf_ρ (E_ρ[a² (‖b‖_1 + |c|)²])^{1/2}`` over the probability measures with
    ``f = E_ρ[a σ(b·x + c)]`` (E, Ma & Wu 2019). Both bounds are derived here (docs/theory.md):

    * upper: the atoms ``(a_j/π_j, w_j, c_j)`` with masses ``π_j ∝ |a_j| (‖w_j‖_1 + |c_j|)``
      represent ``f`` with ``E_ρ[a² s²] = (Σ_j |a_j| s_j)²``, so ``‖f‖_B ≤ Σ_j |a_j| s_j``,
      the path norm;
    * lower: ``|f(x)| ≤ E_ρ|a| (‖b‖_1 ‖x‖_∞ + |c|) ≤ (E_ρ[a² s²])^{1/2}`` for every
      representation, so ``‖f‖_B ≥ max_x |f(x)|`` over ``[-1, 1]^d``; evaluated at the
      vertices ``±sign(w_j)`` (and ``points``, if given, which must lie in the cube).

    They meet, for example, when every ``a_j > 0``, ``c_j ≥ 0`` and the ``w_j`` share one
    orthant: then ``f(sign w) = Σ_j a_j (‖w_j‖_1 + c_j)``.
    """
    a, W = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(W, dtype=torch.float64)
    upper = two_layer_path_norm(a, W, c)
    cc = torch.zeros_like(a) if c is None else torch.as_tensor(c, dtype=torch.float64)
    signs = torch.where(W >= 0, 1.0, -1.0).to(torch.float64)
    candidates = [signs, -signs]
    if points is not None:
        pts = torch.as_tensor(points, dtype=torch.float64).reshape(-1, W.shape[1])
        if pts.abs().max() > 1:
            raise ArgumentValueError("points must lie in the cube [-1, 1]^d")
        candidates.append(pts)
    x = torch.cat(candidates)
    values = torch.relu(x @ W.T + cc) @ a
    return BarronEstimate(lower=float(values.abs().max()), upper=upper)


@dataclass(frozen=True)
class SpectralMoments:
    """Monte-Carlo spectral integrals of ``f(x) = ∫ f̂(ω) e^{iω·x} dω`` and standard errors.

    Attributes:
        gamma: ``γ(f) = ∫ ‖ω‖_1² |f̂(ω)| dω``.
        barron_first: Barron's ``C_f = ∫ ‖ω‖_2 |f̂(ω)| dω``.
        mass: ``∫ |f̂(ω)| dω``.
        gamma_stderr, barron_first_stderr, mass_stderr: their standard errors.
    """

    gamma: float
    barron_first: float
    mass: float
    gamma_stderr: float
    barron_first_stderr: float
    mass_stderr: float


def gaussian_fourier_transform(omega: torch.Tensor, s: float = 1.0) -> torch.Tensor:
    """``f̂(ω) = (s²/2π)^{d/2} exp(−s²‖ω‖²/2)`` of ``f(x) = exp(−‖x‖²/(2s²))`` in the
    convention ``f(x) = ∫ f̂(ω) e^{iω·x} dω``: the density of ``N(0, s^{-2} I)``."""
    s = positive_real(s, "s")
    d = omega.shape[-1]
    sq = omega.pow(2).sum(-1)
    return (s * s / (2 * math.pi)) ** (d / 2) * torch.exp(-0.5 * s * s * sq)


def gaussian_spectral_moments(d: int, s: float = 1.0) -> dict[str, float]:
    """Closed forms for ``f(x) = exp(−‖x‖²/(2s²))`` on ``R^d``: ``γ = (d + 2d(d−1)/π)/s²``,
    ``C_f = √2 Γ((d+1)/2)/(s Γ(d/2))`` and mass ``1`` (``f̂`` is a probability density)."""
    d = integer(d, "d", minimum=1)
    s = positive_real(s, "s")
    return {
        "gamma": (d + 2 * d * (d - 1) / math.pi) / s**2,
        "barron_first": math.sqrt(2) * math.exp(math.lgamma((d + 1) / 2) - math.lgamma(d / 2))
        / s,
        "mass": 1.0,
    }


def spectral_moments(fourier: Callable[[torch.Tensor], torch.Tensor], d: int, *,
                     samples: int = 100_000, proposal_scale: float = 1.0,
                     seed: int = 0) -> SpectralMoments:
    """Importance-sampling estimates of the spectral integrals (see :class:`SpectralMoments`).

    ``ω ~ N(0, proposal_scale² I)`` (drawn from ``seed``, float64) and the integrands are
    weighted by ``|f̂(ω)|/q(ω)``; choose ``proposal_scale`` near the spread of ``f̂`` (a
    proposal much narrower than ``f̂`` gives heavy-tailed weights).

    Args:
        fourier: ``ω (N, d) → f̂(ω) (N,)``, real or complex.
        d: input dimension.
        samples: Monte-Carlo samples (≥ 2).
        proposal_scale: standard deviation of the Gaussian proposal.
        seed: seeds the draws.
    """
    if not callable(fourier):
        raise ArgumentTypeError("fourier must be a callable omega -> f_hat(omega)")
    d = integer(d, "d", minimum=1)
    samples = integer(samples, "samples", minimum=2)
    scale = positive_real(proposal_scale, "proposal_scale")
    g = torch.Generator().manual_seed(seed_value(seed))
    omega = torch.randn(samples, d, generator=g, dtype=torch.float64) * scale
    log_q = (-0.5 * omega.pow(2).sum(1) / scale**2
             - d * math.log(scale) - 0.5 * d * math.log(2 * math.pi))
    values = torch.as_tensor(fourier(omega))
    if values.shape != (samples,):
        raise ArgumentValueError(f"fourier must return shape ({samples},), got "
                                 f"{tuple(values.shape)}")
    w = values.abs().to(torch.float64) / torch.exp(log_q)
    out = {}
    for key, factor in (("gamma", omega.abs().sum(1).pow(2)),
                        ("barron_first", omega.norm(dim=1)), ("mass", torch.ones(samples))):
        z = factor.to(torch.float64) * w
        out[key] = float(z.mean())
        out[key + "_stderr"] = float(z.std() / math.sqrt(samples))
    return SpectralMoments(**out)


def spectral_barron_bound(gamma: float, f0: float, grad0_l1: float) -> float:
    r"""``‖f‖_B ≤ 3 γ(f) + 2 ‖∇f(0)‖_1 + |f(0)|`` on ``[-1, 1]^d``.

    Derived here (docs/theory.md) from ``e^{iz} − iz − 1 = −∫_0^{c} [(z − u)_+ e^{iu} +
    (−z − u)_+ e^{−iu}] du`` for ``|z| ≤ c = ‖ω‖_1`` (the Klusowski–Barron ramp
    representation): the remainder ``f − f(0) − ∇f(0)·x`` is a ReLU integral of path mass
    ``≤ 2 ∫ ‖ω‖_1² |f̂| ∫_0^1 (1 + t) dt = 3γ``, the linear part costs ``2‖∇f(0)‖_1``
    (``z = σ(z) − σ(−z)``) and the constant ``|f(0)|`` (``σ(1)``); a representation of path
    mass ``P`` reweights to one with ``B_2`` norm ``P``. E, Ma & Wu quote a bound of this
    type with other constants (recalled, not checked), so this one is ours.
    """
    gamma = finite_real(gamma, "gamma")
    grad0_l1 = finite_real(grad0_l1, "grad0_l1")
    if gamma < 0 or grad0_l1 < 0:
        raise ArgumentValueError("gamma and grad0_l1 must be >= 0")
    return 3 * gamma + 2 * grad0_l1 + abs(finite_real(f0, "f0"))


def barron_norm_from_samples(X: torch.Tensor, y: torch.Tensor, *, width: int = 256,
                             lam: float = 0.05, steps: int = 3000, lr: float = 1e-2,
                             seed: int = 0) -> tuple[float, RegularizedFit]:
    """An estimate of ``‖f‖_B`` for a target known by samples: the path norm of a
    path-norm-regularized two-layer fit (:func:`path_norm_regularized_fit`, paper scaling).

    The path norm bounds the Barron norm of the *fitted* function (see
    :func:`ridge_barron_norm`), which matches the samples to ``fit.train_risk``; it estimates
    the target's norm when that risk is small and ``lam`` small enough not to shrink the fit.
    Returns ``(estimate, fit)``.
    """
    fit = path_norm_regularized_fit(X, y, width=width, lam=lam, steps=steps, lr=lr, seed=seed)
    return fit.path_norm, fit
