r"""The sharpness measures of the flat-minima literature, each as a bracket ``lower ≤ S ≤ upper``.

All of them are worst-case loss increases in a neighbourhood ``𝒩`` of ``θ``:

.. math::  S(θ) = \max_{δ ∈ 𝒩} L(θ + δ) − L(θ).

* **SAM's ε-sharpness** (Foret et al., "Sharpness-aware minimization for efficiently improving
  generalization", ICLR 2021): ``𝒩 = {‖δ‖₂ ≤ ρ}``.
* **Adaptive sharpness** (ASAM; Kwon et al., ICML 2021): ``𝒩 = {‖T_θ⁻¹δ‖₂ ≤ ρ}`` with
  ``T_θ = diag(|θ| + η)``, invariant to the rescalings of ReLU networks that leave ``f`` fixed.
* **m-sharpness** (Foret et al. 2021; Andriushchenko & Flammarion, ICML 2022): the mean over
  disjoint mini-batches of size ``m`` of each batch's ε-sharpness, each batch with its own ``δ``.
* **Keskar's box sharpness** (Keskar et al., "On large-batch training for deep learning",
  ICLR 2017): ``𝒩 = {|δ_i| ≤ ε(|θ_i| + 1)}``, reported as ``100·S/(1 + L(θ))``.

The maximum is a nonconvex problem, so a number alone would be either a guess or an unstated
lower bound. Each measure is returned as a bracket:

* ``lower``: ``L(θ + δ*) − L(θ)`` at the best feasible ``δ*`` found by projected, normalized
  gradient ascent (started at the first-order maximizer, SAM's step, or at the top Hessian
  eigenvector where the gradient vanishes). It is *achieved*, hence a certified lower bound.
* ``upper``: Taylor's theorem with a Lipschitz remainder. If ``∇²L`` is ``M``-Lipschitz,
  ``L(θ+δ) − L(θ) ≤ gᵀδ + ½δᵀHδ + M‖δ‖³/6``, and over the neighbourhood
  ``gᵀδ ≤ h_𝒩(g)`` (its support function) and ``½δᵀHδ ≤ ½ max(λ_max(H), 0) r²`` with
  ``r = max_{δ∈𝒩} ‖δ‖``. If ``∇L`` is ``β``-Lipschitz, ``L(θ+δ) − L(θ) ≤ gᵀδ + β‖δ‖²/2``.
  The smaller of the two that apply is returned. Without either constant only the quadratic
  model's maximum is available: it is exact for quadratic losses and is returned with
  ``certified=False``.

``λ_max`` is Lanczos' top Ritz value plus its residual error bound (:func:`valleys.eigsh`), the
usual Krylov caveat applying: a start vector orthogonal to the top eigenvector would miss it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from valleys._checks import finite_real, integer, positive_real, seed_value
from valleys.errors import ArgumentTypeError, ArgumentValueError
from valleys.linalg import eigsh
from valleys.objective import Objective
from valleys.operators import LambdaOperator, hessian

__all__ = [
    "EpsilonSharpness",
    "adaptive_sharpness",
    "box_sharpness",
    "m_sharpness",
    "sam_sharpness",
]


@dataclass(frozen=True)
class EpsilonSharpness:
    """A bracket ``lower ≤ S ≤ upper`` on a worst-case loss increase (see the module docstring).

    Attributes:
        lower: ``L(θ+δ*) − L(θ)`` at the best feasible ``δ*`` found (achieved, so certified).
        upper: an upper bound on ``S``; rigorous when ``certified``, else the quadratic model's.
        certified: whether ``upper`` rests on a Lipschitz constant the caller supplied.
        loss: ``L(θ)``.
        radius: ``ρ`` (``ε`` for the box).
        kind: ``"sam"``, ``"asam"``, ``"m-sharpness"`` or ``"keskar"``.
        delta: the maximizer found (a flat parameter vector; ``None`` for m-sharpness).
        gradient_evaluations: full-batch (or per-batch) loss-and-gradient evaluations spent.
        matvecs: Hessian-vector products spent on ``λ_max``.
        keskar: ``100·lower/(1 + L)`` and ``100·upper/(1 + L)`` for the box measure.
        note: what the upper bound rests on.
    """

    lower: float
    upper: float
    certified: bool
    loss: float
    radius: float
    kind: str
    delta: torch.Tensor | None = field(repr=False)
    gradient_evaluations: int
    matvecs: int
    keskar: tuple[float, float] | None = None
    note: str = ""


# -- neighbourhoods ------------------------------------------------------------------------------
class _Ball:
    """``{δ = T u : ‖u‖₂ ≤ ρ}`` for a positive diagonal scaling ``T`` (``T = I`` for SAM)."""

    def __init__(self, rho: float, scale: torch.Tensor | None) -> None:
        self.rho, self.scale = rho, scale

    def _t(self, v: torch.Tensor) -> torch.Tensor:
        return v if self.scale is None else v * self.scale

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        u = delta if self.scale is None else delta / self.scale
        norm = float(torch.linalg.vector_norm(u))
        return delta if norm <= self.rho else delta * (self.rho / norm)

    def ascent_direction(self, g: torch.Tensor) -> torch.Tensor:
        """The maximizer of ``gᵀδ`` over the neighbourhood: ``ρ T²g/‖Tg‖``."""
        tg = self._t(g)
        norm = float(torch.linalg.vector_norm(tg))
        return torch.zeros_like(g) if norm == 0 else self._t(tg) * (self.rho / norm)

    def support(self, g: torch.Tensor) -> float:
        return self.rho * float(torch.linalg.vector_norm(self._t(g)))

    def max_norm(self) -> float:
        top = 1.0 if self.scale is None else float(self.scale.abs().max())
        return self.rho * top

    def quadratic_radius(self) -> float:
        """``max ‖u‖`` for the quadratic term written in ``u`` (``½uᵀ(THT)u``)."""
        return self.rho

    def eigen_start(self, v: torch.Tensor) -> torch.Tensor:
        """The point of the boundary along the top eigenvector ``v`` of ``THT``: ``ρ T v/‖v‖``."""
        return self._t(v) * (self.rho / float(torch.linalg.vector_norm(v)))


class _Box:
    """``{|δ_i| ≤ w_i}``."""

    def __init__(self, widths: torch.Tensor) -> None:
        self.widths = widths

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        return torch.clamp(delta, -self.widths, self.widths)

    def ascent_direction(self, g: torch.Tensor) -> torch.Tensor:
        return torch.sign(g) * self.widths

    def support(self, g: torch.Tensor) -> float:
        return float((g.abs() * self.widths).sum())

    def max_norm(self) -> float:
        return float(torch.linalg.vector_norm(self.widths))

    def quadratic_radius(self) -> float:
        return self.max_norm()

    def eigen_start(self, v: torch.Tensor) -> torch.Tensor:
        """The vertex of the box that best aligns with the top eigenvector ``v``."""
        return torch.where(v >= 0, self.widths, -self.widths)


# -- the shared computation ---------------------------------------------------------------------
def _check_objective(objective: object) -> Objective:
    if not isinstance(objective, Objective):
        raise ArgumentTypeError(
            f"objective must be a valleys.Objective, got {type(objective).__name__}")
    return objective


def _optional_constant(value: object, name: str) -> float | None:
    if value is None:
        return None
    constant = finite_real(value, name)
    if constant < 0:
        raise ArgumentValueError(f"{name} must be >= 0 (a Lipschitz constant), got {value!r}")
    return constant


def _top_eigenvalue(objective: Objective, theta: torch.Tensor, scale: torch.Tensor | None,
                    tol: float, seed: int) -> tuple[float, torch.Tensor, int]:
    """``λ_max(H)`` (of ``THT`` when scaled) plus its error bound; the eigenvector; matvecs."""
    op = hessian(objective, theta)
    if scale is not None:
        inner = op
        op = LambdaOperator(lambda v: scale * inner.matvec(scale * v),
                            inner.size, inner.dtype, inner.device)
    result = eigsh(op, k=1, which="largest", tol=tol, seed=seed)
    value = float(result.values[0]) + float(result.error_bounds[0])
    return value, result.vectors[:, 0], int(result.matvecs)


def _bracket(objective: Objective, theta: torch.Tensor, region: _Ball | _Box, *, steps: int,
             hessian_lipschitz: float | None, gradient_lipschitz: float | None, tol: float,
             seed: int, scale: torch.Tensor | None,
             ) -> tuple[float, float, bool, float, torch.Tensor, int, int, str]:
    """``(lower, upper, certified, L(θ), δ*, evaluations, matvecs, note)``."""
    loss0_t, g = objective.loss_and_gradient(theta)
    loss0 = float(loss0_t)
    lam, top, matvecs = _top_eigenvalue(objective, theta, scale, tol, seed)
    r = region.max_norm()
    linear = region.support(g)
    quadratic = linear + 0.5 * max(lam, 0.0) * region.quadratic_radius() ** 2
    candidates = []
    if hessian_lipschitz is not None:
        candidates.append((quadratic + hessian_lipschitz * r**3 / 6,
                           "quadratic model + Hessian-Lipschitz remainder "
                           f"(M = {hessian_lipschitz:g})"))
    if gradient_lipschitz is not None:
        candidates.append((linear + 0.5 * gradient_lipschitz * r * r,
                           f"gradient-Lipschitz bound (β = {gradient_lipschitz:g})"))
    if candidates:
        upper, note = min(candidates)
        certified = True
    else:
        upper, note, certified = quadratic, (
            "the quadratic model's maximum: exact for quadratic losses; pass hessian_lipschitz "
            "or gradient_lipschitz for a rigorous bound"), False

    # Start at the first-order maximizer; where the gradient vanishes, along ±(top eigenvector).
    starts = [region.ascent_direction(g)] if float(g.abs().max()) > 0 else []
    starts += [region.eigen_start(top), region.eigen_start(-top)]
    best, best_delta, evaluations = -math.inf, torch.zeros_like(theta), 1
    for start in starts:
        delta = start
        for step in range(steps):
            value_t, grad = objective.loss_and_gradient(theta + delta)
            evaluations += 1
            value = float(value_t) - loss0
            if value > best:
                best, best_delta = value, delta
            # Normalized ascent with a decaying step: scale-free, and it settles on the boundary.
            move = region.ascent_direction(grad)
            delta = region.project(delta + move / math.sqrt(step + 1))
    return best, upper, certified, loss0, best_delta, evaluations, matvecs, note


def _common(objective: object, theta: torch.Tensor | None, steps: object, tol: object,
            seed: object, hessian_lipschitz: object, gradient_lipschitz: object):
    objective = _check_objective(objective)
    theta = objective.resolve_theta(theta).detach()
    steps = integer(steps, "steps", minimum=1)
    tol = positive_real(tol, "tol")
    if tol >= 1:
        raise ArgumentValueError(f"tol must lie in (0, 1), got {tol!r}")
    return (objective, theta, steps, tol, seed_value(seed),
            _optional_constant(hessian_lipschitz, "hessian_lipschitz"),
            _optional_constant(gradient_lipschitz, "gradient_lipschitz"))


# -- public measures ------------------------------------------------------------------------------
def sam_sharpness(
    objective: Objective,
    rho: float,
    theta: torch.Tensor | None = None,
    *,
    steps: int = 20,
    hessian_lipschitz: float | None = None,
    gradient_lipschitz: float | None = None,
    tol: float = 1e-6,
    seed: int = 0,
) -> EpsilonSharpness:
    """SAM's ε-sharpness ``max_{‖δ‖₂≤ρ} L(θ+δ) − L(θ)`` (Foret et al. 2021) as a bracket.

    Args:
        objective: the empirical risk ``L``.
        rho: the radius ``ρ > 0``.
        theta: where (default: the model's parameters).
        steps: projected-ascent steps per start (each one loss-and-gradient evaluation).
        hessian_lipschitz: a Lipschitz constant ``M`` of ``∇²L`` on the ball, if known.
        gradient_lipschitz: a Lipschitz constant ``β`` of ``∇L`` on the ball, if known.
        tol: relative accuracy of ``λ_max`` (Lanczos).
        seed: Lanczos' start vector.
    """
    objective, theta, steps, tol, seed, m3, beta = _common(
        objective, theta, steps, tol, seed, hessian_lipschitz, gradient_lipschitz)
    rho = positive_real(rho, "rho")
    lower, upper, cert, loss, delta, evals, mv, note = _bracket(
        objective, theta, _Ball(rho, None), steps=steps, hessian_lipschitz=m3,
        gradient_lipschitz=beta, tol=tol, seed=seed, scale=None)
    return EpsilonSharpness(lower, upper, cert, loss, rho, "sam", delta, evals, mv, note=note)


def adaptive_sharpness(
    objective: Objective,
    rho: float,
    theta: torch.Tensor | None = None,
    *,
    eta: float = 0.01,
    steps: int = 20,
    hessian_lipschitz: float | None = None,
    tol: float = 1e-6,
    seed: int = 0,
) -> EpsilonSharpness:
    """ASAM's adaptive sharpness ``max_{‖T⁻¹δ‖₂≤ρ} L(θ+δ) − L(θ)``, ``T = diag(|θ| + η)``
    (Kwon et al., "ASAM: adaptive sharpness-aware minimization", ICML 2021), as a bracket.

    With ``δ = Tu`` the quadratic term is ``½uᵀ(THT)u``, so ``λ_max`` is that of ``THT``; the
    Hessian-Lipschitz remainder uses ``‖δ‖ ≤ ρ·max_i T_ii``.
    """
    objective, theta, steps, tol, seed, m3, _ = _common(
        objective, theta, steps, tol, seed, hessian_lipschitz, None)
    rho = positive_real(rho, "rho")
    eta = finite_real(eta, "eta")
    if eta < 0:
        raise ArgumentValueError(f"eta must be >= 0, got {eta!r}")
    scale = theta.abs() + eta
    if float(scale.min()) <= 0:
        raise ArgumentValueError("T = |θ| + η has a zero entry (θ_i = 0 with eta = 0); use eta > 0")
    lower, upper, cert, loss, delta, evals, mv, note = _bracket(
        objective, theta, _Ball(rho, scale), steps=steps, hessian_lipschitz=m3,
        gradient_lipschitz=None, tol=tol, seed=seed, scale=scale)
    return EpsilonSharpness(lower, upper, cert, loss, rho, "asam", delta, evals, mv, note=note)


def box_sharpness(
    objective: Objective,
    epsilon: float = 1e-3,
    theta: torch.Tensor | None = None,
    *,
    steps: int = 20,
    hessian_lipschitz: float | None = None,
    gradient_lipschitz: float | None = None,
    tol: float = 1e-6,
    seed: int = 0,
) -> EpsilonSharpness:
    """Keskar et al.'s sharpness over the box ``|δ_i| ≤ ε(|θ_i| + 1)`` (ICLR 2017, full space,
    ``A = I``) as a bracket on ``S``; ``.keskar`` holds their ``100·S/(1 + L(θ))``.

    The box's support function is ``Σ_i |g_i| w_i`` and its largest ``‖δ‖₂`` is ``‖w‖₂``.
    """
    objective, theta, steps, tol, seed, m3, beta = _common(
        objective, theta, steps, tol, seed, hessian_lipschitz, gradient_lipschitz)
    epsilon = positive_real(epsilon, "epsilon")
    widths = epsilon * (theta.abs() + 1)
    lower, upper, cert, loss, delta, evals, mv, note = _bracket(
        objective, theta, _Box(widths), steps=steps, hessian_lipschitz=m3,
        gradient_lipschitz=beta, tol=tol, seed=seed, scale=None)
    scale = 100.0 / (1.0 + loss)
    return EpsilonSharpness(lower, upper, cert, loss, epsilon, "keskar", delta, evals, mv,
                            keskar=(scale * lower, scale * upper), note=note)


def m_sharpness(
    objective: Objective,
    rho: float,
    m: int,
    theta: torch.Tensor | None = None,
    *,
    batches: int | None = None,
    steps: int = 20,
    hessian_lipschitz: float | None = None,
    tol: float = 1e-6,
    seed: int = 0,
) -> EpsilonSharpness:
    """m-sharpness: the mean over disjoint batches ``B`` of size ``m`` of
    ``max_{‖δ_B‖≤ρ} L_B(θ+δ_B) − L_B(θ)`` (Foret et al. 2021, Sec. 4; Andriushchenko &
    Flammarion 2022), as the mean of the per-batch brackets.

    The batches are a seeded permutation of the samples cut into ``⌊n/m⌋`` pieces (the first
    ``batches`` of them if given). ``hessian_lipschitz`` must hold for every batch loss. Needs
    an objective built from a pair of tensors.
    """
    objective, theta, steps, tol, seed, m3, _ = _common(
        objective, theta, steps, tol, seed, hessian_lipschitz, None)
    rho = positive_real(rho, "rho")
    m = integer(m, "m", minimum=1)
    if m > objective.n:
        raise ArgumentValueError(f"m = {m} exceeds the {objective.n} samples of the objective")
    count = objective.n // m
    if batches is not None:
        count = min(count, integer(batches, "batches", minimum=1))
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(objective.n, generator=generator)
    totals = [0.0, 0.0, 0.0]
    evaluations = matvecs = 0
    certified = True
    note = ""
    for b in range(count):
        X, Y = objective.batch(order[b * m:(b + 1) * m])
        piece = Objective(objective.model, objective.loss_fn, (X, Y), params=objective.names,
                          allow_train_mode=objective.allow_train_mode)
        lower, upper, cert, loss, _, evals, mv, note = _bracket(
            piece, theta, _Ball(rho, None), steps=steps, hessian_lipschitz=m3,
            gradient_lipschitz=None, tol=tol, seed=seed, scale=None)
        totals[0] += lower
        totals[1] += upper
        totals[2] += loss
        evaluations += evals
        matvecs += mv
        certified &= cert
    return EpsilonSharpness(totals[0] / count, totals[1] / count, certified, totals[2] / count,
                            rho, "m-sharpness", None, evaluations, matvecs, note=note)
