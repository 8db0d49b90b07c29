r"""Closed-form test games: payoffs ``K(x, y)`` with known (regularised) mixed Nash equilibria.

A payoff is any callable ``K(x, y)`` that takes particle batches ``x`` of shape ``(n, d)`` and
``y`` of shape ``(m, d')`` and returns the ``(n, m)`` matrix ``K(x_i, y_j)``; ``x`` minimises and
``y`` maximises. The entropy-regularised game at temperature ``τ`` is (Ma & Ying, ICLR 2022,
arXiv 2202.10947; Domingo-Enrich et al., NeurIPS 2020, arXiv 2002.06277)

.. math:: \min_p \max_q\; L(p, q) = ∬ K\,dp\,dq + τ∫p\log p − τ∫q\log q .

The games here are the oracles of the tests and of the reproduction:

* :class:`QuadraticBilinear`: ``K = xᵀAy + (a/2)|x|² − (b/2)|y|²`` on ``R^d × R^{d'}``. Its
  regularised equilibrium is ``N(0, τ/a·I) × N(0, τ/b·I)`` for any ``A``; the class derives the
  relaxation rates of the quasistatic flow and of Langevin descent–ascent, the exact NI error of
  any pair of measures and the exact regularised duality gap.
* :class:`TranslationGame`: ``K = Σ_k s·f(x_k − y_k)`` with ``f = sin`` or ``cos`` on the torus.
  ``∫K(x, y) dy`` is constant, so uniform × uniform is the (unique, for ``τ > 0``) regularised
  equilibrium; the NI error of any pair of measures is ``s Σ_k (|ĉ_x,k| + |ĉ_y,k|)`` with
  ``ĉ_k = ∫ e^{i x_k} dμ`` the first Fourier coefficient.
* :class:`SphereBilinear`: ``K = xᵀAy`` on ``S^{d-1} × S^{d'-1}``; uniform × uniform is an
  equilibrium (``∫ xᵀAy dσ(y) = 0``).
* :class:`MatrixGame`: a finite game ``K = xᵀMy`` played by weights on fixed one-hot particles
  (:func:`rock_paper_scissors`, equilibrium ``(1/3, 1/3, 1/3)²``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from valleys.errors import ArgumentValueError

__all__ = [
    "MatrixGame",
    "QuadraticBilinear",
    "SphereBilinear",
    "TranslationGame",
    "gaussian_kl_to_isotropic",
    "rock_paper_scissors",
]


def _as_matrix(A, name: str = "A") -> torch.Tensor:
    A = torch.as_tensor(A, dtype=torch.float64) if not isinstance(A, torch.Tensor) else A
    if A.ndim != 2:
        raise ArgumentValueError(f"{name} must be a matrix (2-D), got shape {tuple(A.shape)}")
    if not bool(torch.isfinite(A).all()):
        raise ArgumentValueError(f"{name} contains NaN or infinite values; a payoff must be finite")
    return A


def _weights(w: torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor:
    if w is None:
        return torch.full((n,), 1.0 / n, dtype=like.dtype, device=like.device)
    return w.to(like)


@dataclass(frozen=True)
class QuadraticBilinear:
    r"""``K(x, y) = xᵀAy + (a/2)|x|² − (b/2)|y|²`` with ``a, b > 0``.

    **Equilibrium.** The best response of ``q`` to ``p`` is the Gibbs measure
    ``q_p ∝ exp(φ_p/τ)`` with ``φ_p(y) = m_pᵀAy − (b/2)|y|² + const``, i.e.
    ``q_p = N(Aᵀm_p/b, τ/b·I)``; symmetrically ``p_q = N(−A m_q/a, τ/a·I)``. The fixed point is
    ``p* = N(0, τ/a·I)``, ``q* = N(0, τ/b·I)`` for any ``A`` (unique: ``L`` is strictly
    convex–concave).

    **Quasistatic flow, x slow** (``q = q_{p_t}`` at all times). The x-drift is
    ``−∇_x ∫K dq_p = −(A Aᵀ m_p / b + a x)``, so with ``Langevin`` noise ``sqrt(2τ) dW``

    * mean: ``dm_p/dt = −(aI + AAᵀ/b) m_p`` (rate ``λ_min(aI + AAᵀ/b)``);
    * covariance: ``dΣ_p/dt = −2aΣ_p + 2τI``, ``Σ_p(t) = τ/a·I + (Σ_p(0) − τ/a·I) e^{−2at}``.

    With ``y`` slow: ``dm_q/dt = −(bI + AᵀA/a) m_q`` and ``dΣ_q/dt = −2bΣ_q + 2τI``.

    **Langevin descent–ascent.** ``d(m_p, m_q)/dt = [[−aI, −A], [Aᵀ, −bI]] (m_p, m_q)``; the
    symmetric part is ``diag(−aI, −bI)``, so the means decay at rate ``>= min(a, b)`` and
    rotate when ``A`` dominates (damped cycling). Covariances relax at ``2a`` and ``2b`` as above.

    **Discrete time.** Euler–Maruyama with step ``η`` maps the covariance to
    ``(1 − ηa)²Σ + 2ητI``, whose fixed point is ``τ/(a(1 − ηa/2))``: an ``O(η)`` bias
    (:meth:`discrete_variance`).
    """

    A: torch.Tensor
    a: float = 1.0
    b: float = 1.0
    name: str = field(default="quadratic-bilinear")

    def __post_init__(self) -> None:
        object.__setattr__(self, "A", _as_matrix(self.A))
        if not (self.a > 0 and self.b > 0):
            raise ArgumentValueError(
                f"a and b must be > 0 (confinement), got a={self.a}, b={self.b}")

    @property
    def dims(self) -> tuple[int, int]:
        return int(self.A.shape[0]), int(self.A.shape[1])

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        A = self.A.to(device=x.device, dtype=x.dtype)
        return (x @ A @ y.T + 0.5 * self.a * (x * x).sum(1, keepdim=True)
                - 0.5 * self.b * (y * y).sum(1)[None, :])

    # -- equilibrium and rates ------------------------------------------------------------------
    def equilibrium_variances(self, temperature: float) -> tuple[float, float]:
        """``(τ/a, τ/b)``: the isotropic variances of ``p*`` and ``q*``."""
        return temperature / self.a, temperature / self.b

    def discrete_variance(self, temperature: float, lr: float, player: str = "x") -> float:
        """Stationary variance of Euler–Maruyama at step ``η``: ``τ/(c(1 − ηc/2))``, c = a or b."""
        c = self.a if player == "x" else self.b
        return temperature / (c * (1.0 - lr * c / 2.0))

    def quasistatic_mean_matrix(self, slow: str = "x") -> torch.Tensor:
        """``M`` with ``dm/dt = −M m`` for the slow player's mean under the quasistatic flow."""
        A = self.A
        if slow == "x":
            eye = torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
            return self.a * eye + A @ A.T / self.b
        eye = torch.eye(A.shape[1], dtype=A.dtype, device=A.device)
        return self.b * eye + A.T @ A / self.a

    def quasistatic_mean_rate(self, slow: str = "x") -> float:
        """Slowest mean-relaxation rate ``λ_min(aI + AAᵀ/b)`` (x slow) or ``λ_min(bI + AᵀA/a)``."""
        return float(torch.linalg.eigvalsh(self.quasistatic_mean_matrix(slow)).min())

    def covariance_rate(self, player: str = "x") -> float:
        """Relaxation rate of a player's covariance, ``2a`` (x) or ``2b`` (y), in either flow."""
        return 2.0 * (self.a if player == "x" else self.b)

    def descent_ascent_mean_matrix(self) -> torch.Tensor:
        """``J`` with ``d(m_p, m_q)/dt = J (m_p, m_q)`` under Langevin descent–ascent."""
        d, e = self.dims
        A = self.A
        top = torch.cat([-self.a * torch.eye(d, dtype=A.dtype, device=A.device), -A], 1)
        bottom = torch.cat([A.T, -self.b * torch.eye(e, dtype=A.dtype, device=A.device)], 1)
        return torch.cat([top, bottom], 0)

    # -- exact progress measures ----------------------------------------------------------------
    def ni_error(self, x: torch.Tensor, y: torch.Tensor, x_weights: torch.Tensor | None = None,
                 y_weights: torch.Tensor | None = None) -> float:
        r"""Exact (unregularised) Nikaidô–Isoda error of two weighted particle measures.

        ``sup_y' ∫K(x, y')dμ_x = |Aᵀm_x|²/(2b) + (a/2)E|x|²`` and
        ``inf_x' ∫K(x', y)dμ_y = −|Am_y|²/(2a) − (b/2)E|y|²``, so
        ``NI = |Aᵀm_x|²/(2b) + |Am_y|²/(2a) + (a/2)E_μx|x|² + (b/2)E_μy|y|²``. (Its minimiser is
        the unregularised equilibrium ``δ_0 × δ_0``.)
        """
        wx, wy = _weights(x_weights, x.shape[0], x), _weights(y_weights, y.shape[0], y)
        A = self.A.to(x)
        mx, my = wx @ x, wy @ y
        second_x, second_y = wx @ (x * x).sum(1), wy @ (y * y).sum(1)
        value = ((A.T @ mx).square().sum() / (2 * self.b) + (A @ my).square().sum() / (2 * self.a)
                 + 0.5 * self.a * second_x + 0.5 * self.b * second_y)
        return float(value)

    def regularized_gap(self, mean_x: torch.Tensor, cov_x: torch.Tensor, mean_y: torch.Tensor,
                        cov_y: torch.Tensor, temperature: float) -> float:
        r"""Exact entropy-regularised duality gap ``max_q' L(p, q') − min_p' L(p', q)``.

        For any ``p, q`` with finite entropy, completing squares gives

        .. math:: \mathrm{gap} = τ\,KL(p‖p^*) + τ\,KL(q‖q^*) + |Aᵀm_p|²/(2b) + |Am_q|²/(2a),

        which is evaluated here for Gaussian ``p = N(mean_x, cov_x)``, ``q = N(mean_y, cov_y)``
        (the Gaussian fits of particle clouds). It is ``>= 0`` and zero only at ``(p*, q*)``.
        """
        if not temperature > 0:
            raise ArgumentValueError("the regularised gap needs temperature > 0")
        A = self.A.to(mean_x)
        kl_x = gaussian_kl_to_isotropic(mean_x, cov_x, temperature / self.a)
        kl_y = gaussian_kl_to_isotropic(mean_y, cov_y, temperature / self.b)
        cross = ((A.T @ mean_x).square().sum() / (2 * self.b)
                 + (A @ mean_y).square().sum() / (2 * self.a))
        return float(temperature * (kl_x + kl_y) + cross)


def gaussian_kl_to_isotropic(mean: torch.Tensor, cov: torch.Tensor, variance: float) -> float:
    """``KL(N(mean, cov) ‖ N(0, variance·I)) = ½(tr Σ/s + |m|²/s − d + d log s − log det Σ)``."""
    d = mean.shape[0]
    logdet = torch.linalg.slogdet(cov)
    if logdet.sign <= 0:
        return math.inf
    value = 0.5 * (torch.trace(cov) / variance + mean.square().sum() / variance - d
                   + d * math.log(variance) - logdet.logabsdet)
    return float(value)


@dataclass(frozen=True)
class TranslationGame:
    r"""``K(x, y) = s Σ_k f(x_k − y_k)`` on the torus ``(R/2πZ)^d``, ``f = sin`` or ``cos``.

    ``∫K(x, y) dy = 0`` for every ``x``, so the uniform measures form an equilibrium, the unique
    regularised one for ``τ > 0`` (strict convexity–concavity). With ``ĉ_k = ∫ e^{i x_k} dμ``,
    ``∫ sin(x_k − y') dμ_x(x) = Im(ĉ_{x,k} e^{−iy'})`` has maximum ``|ĉ_{x,k}|`` over ``y'``, and
    likewise for ``cos``; hence ``NI(μ_x, μ_y) = s Σ_k (|ĉ_{x,k}| + |ĉ_{y,k}|)`` exactly.
    """

    kind: str = "sin"
    scale: float = 1.0
    name: str = field(default="torus-translation")

    def __post_init__(self) -> None:
        if self.kind not in ("sin", "cos"):
            raise ArgumentValueError(f"kind must be 'sin' or 'cos', got {self.kind!r}")

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        diff = x[:, None, :] - y[None, :, :]
        f = torch.sin if self.kind == "sin" else torch.cos
        return self.scale * f(diff).sum(-1)

    def ni_error(self, x: torch.Tensor, y: torch.Tensor, x_weights: torch.Tensor | None = None,
                 y_weights: torch.Tensor | None = None) -> float:
        """Exact NI error ``s Σ_k (|ĉ_{x,k}| + |ĉ_{y,k}|)``."""
        wx, wy = _weights(x_weights, x.shape[0], x), _weights(y_weights, y.shape[0], y)
        return float(abs(self.scale) * (_fourier(x, wx).sum() + _fourier(y, wy).sum()))


def _fourier(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``|Σ_i w_i e^{i x_ik}|`` per coordinate k."""
    return torch.sqrt((w @ torch.cos(x)) ** 2 + (w @ torch.sin(x)) ** 2)


@dataclass(frozen=True)
class SphereBilinear:
    """``K(x, y) = xᵀAy`` on ``S^{d-1} × S^{d'-1}``; uniform × uniform is an equilibrium."""

    A: torch.Tensor
    name: str = field(default="sphere-bilinear")

    def __post_init__(self) -> None:
        object.__setattr__(self, "A", _as_matrix(self.A))

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x @ self.A.to(device=x.device, dtype=x.dtype) @ y.T

    def ni_error(self, x: torch.Tensor, y: torch.Tensor, x_weights: torch.Tensor | None = None,
                 y_weights: torch.Tensor | None = None) -> float:
        """Exact NI error ``|Aᵀm_x| + |A m_y|`` (a linear function's max on the sphere)."""
        wx, wy = _weights(x_weights, x.shape[0], x), _weights(y_weights, y.shape[0], y)
        A = self.A.to(x)
        return float((A.T @ (wx @ x)).norm() + (A @ (wy @ y)).norm())


@dataclass(frozen=True)
class MatrixGame:
    """A finite zero-sum game ``K = xᵀMy`` on one-hot particles (row player minimises ``M``)."""

    M: torch.Tensor
    name: str = field(default="matrix-game")

    def __post_init__(self) -> None:
        object.__setattr__(self, "M", _as_matrix(self.M, "M"))

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x @ self.M.to(device=x.device, dtype=x.dtype) @ y.T

    def pure_strategies(self, *, dtype: torch.dtype = torch.float64,
                        device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The one-hot particles of both players (identity matrices)."""
        n, m = self.M.shape
        return (torch.eye(n, dtype=dtype, device=device), torch.eye(m, dtype=dtype, device=device))

    def ni_error(self, x_weights: torch.Tensor, y_weights: torch.Tensor) -> float:
        """``max_j (Mᵀw_x)_j − min_i (M w_y)_i`` (exact, pure best responses suffice)."""
        M = self.M.to(x_weights)
        return float((M.T @ x_weights).max() - (M @ y_weights).min())


def rock_paper_scissors() -> MatrixGame:
    """Rock–paper–scissors as a loss for the row player; equilibrium ``(1/3, 1/3, 1/3)²``."""
    M = torch.tensor([[0.0, 1.0, -1.0], [-1.0, 0.0, 1.0], [1.0, -1.0, 0.0]], dtype=torch.float64)
    return MatrixGame(M, name="rock-paper-scissors")
