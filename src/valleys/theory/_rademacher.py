"""Rademacher complexity of path-norm balls and the a priori estimate's terms."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from valleys._checks import finite_real, integer, positive_real, seed_value
from valleys.errors import ArgumentValueError

__all__ = ["APrioriTerms", "a_priori_terms", "l1_rademacher", "massart_bound",
           "rademacher_bound"]


def massart_bound(n: int, d: int, *, x_max: float = 1.0) -> float:
    """``x_max sqrt(2 log(2d)/n)``: Massart's bound on ``E sup_{‖b‖_1 ≤ 1} (1/n) Σ ε_i b·x_i
    = E ‖(1/n) Σ ε_i x_i‖_∞`` for ``‖x_i‖_∞ ≤ x_max`` (finite class of the ``2d`` vertices)."""
    n = integer(n, "n (samples)", minimum=1)
    d = integer(d, "d (input dimension)", minimum=1)
    return positive_real(x_max, "x_max") * math.sqrt(2 * math.log(2 * d) / n)


def rademacher_bound(Q: float, n: int, d: int, *, x_max: float = 1.0) -> float:
    """``Rad_n(F_Q) ≤ 2 Q x_max sqrt(2 log(2d)/n)`` for ``F_Q = {f_θ : ‖θ‖_P ≤ Q}``.

    Derived (docs/theory.md) along E, Ma & Wu (2019): ``F_Q ⊂ Q conv(±σ(b·x̃))`` with
    ``‖b‖_1 ≤ 1``; the hull keeps the complexity; Ledoux–Talagrand contraction for the
    1-Lipschitz σ (factor 2 with the symmetrized class); Massart on the ℓ1 ball
    (:func:`massart_bound`). With biases, ``x̃ = (x, 1)`` and ``d`` must count that
    coordinate.
    """
    Q = finite_real(Q, "Q")
    if Q < 0:
        raise ArgumentValueError(f"Q (a path-norm radius) must be >= 0, got {Q}")
    return 2 * Q * massart_bound(n, d, x_max=x_max)


def l1_rademacher(X: torch.Tensor, *, draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Monte-Carlo ``E_ε ‖(1/n) Σ_i ε_i x_i‖_∞`` (the empirical Rademacher complexity of the
    unit ℓ1 ball of linear functions on ``X``) and its standard error; ``ε`` from ``seed``."""
    if X.ndim != 2 or X.shape[0] == 0:
        raise ArgumentValueError(f"X must have shape (n, d) with n >= 1, got {tuple(X.shape)}")
    draws = integer(draws, "draws", minimum=2)
    g = torch.Generator().manual_seed(seed_value(seed))
    eps = torch.randint(0, 2, (draws, X.shape[0]), generator=g).to(torch.float64) * 2 - 1
    sup = (eps @ X.to(torch.float64) / X.shape[0]).abs().amax(dim=1)
    return float(sup.mean()), float(sup.std() / math.sqrt(draws))


@dataclass(frozen=True)
class APrioriTerms:
    """The terms of E, Ma & Wu's a priori estimate (absolute constants dropped).

    ``approximation = ‖f*‖_B²/m``, ``estimation = λ ‖f*‖_B sqrt(log(2d)/n)``,
    ``confidence = sqrt(log(n/δ)/n)``, ``total`` their sum.
    """

    approximation: float
    estimation: float
    confidence: float

    @property
    def total(self) -> float:
        return self.approximation + self.estimation + self.confidence


def a_priori_terms(barron_norm: float, m: int, n: int, d: int, *, lam: float = 4.0,
                   delta: float = 0.05) -> APrioriTerms:
    r"""``L(θ̂) ≲ ‖f*‖_B²/m + λ ‖f*‖_B sqrt(log(2d)/n) + sqrt(log(n/δ)/n)`` term by term.

    E, Ma & Wu, "A priori estimates of the population risk for two-layer neural networks"
    (CMS 2019): the population risk of the path-norm-regularized estimator
    (:func:`~valleys.theory.path_norm_regularized_fit`), with probability ``≥ 1 − δ``, up to
    absolute constants. The rates ``1/m`` and ``1/√n`` are in the abstract; the form of the
    terms and ``λ ≥ 4`` are recalled, not checked against the theorem (docs/theory.md).
    """
    beta = finite_real(barron_norm, "barron_norm")
    if beta < 0:
        raise ArgumentValueError(f"barron_norm must be >= 0, got {beta}")
    m = integer(m, "m (width)", minimum=1)
    n = integer(n, "n (samples)", minimum=1)
    d = integer(d, "d (input dimension)", minimum=1)
    lam = finite_real(lam, "lam")
    if lam < 0:
        raise ArgumentValueError(f"lam must be >= 0, got {lam}")
    delta = positive_real(delta, "delta")
    if delta >= 1:
        raise ArgumentValueError(f"delta must be in (0, 1), got {delta}")
    return APrioriTerms(approximation=beta**2 / m,
                        estimation=lam * beta * math.sqrt(math.log(2 * d) / n),
                        confidence=math.sqrt(math.log(n / delta) / n))
