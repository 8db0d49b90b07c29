"""The two headline numbers of a minimum: sharpness and non-uniformity."""

from __future__ import annotations

import math

from valleys.linalg import eigsh
from valleys.objective import Objective
from valleys.operators import hessian, hessian_variance

__all__ = ["nonuniformity", "sharpness"]


def sharpness(
    objective: Objective, *, tol: float = 1e-4, seed: int = 0, max_matvecs: int | None = None
) -> float:
    """Sharpness ``λ_max(∇²L(θ))``, the largest (algebraic) Hessian eigenvalue.

    Gradient descent with step ``η`` is linearly stable at a minimum only if the sharpness is at
    most ``2/η`` (Wu, Ma & E 2018; Cohen et al. 2021). Computed by Lanczos to relative residual
    ``tol``; call :func:`valleys.eigsh` on :func:`valleys.hessian` for the vector, the residual
    and the matvec count. Raises ``RuntimeError`` if Lanczos does not converge in its budget.
    """
    result = eigsh(hessian(objective), k=1, which="largest", tol=tol, seed=seed,
                   max_matvecs=max_matvecs)
    _require_converged(result, "sharpness")
    return float(result.values[0])


def nonuniformity(
    objective: Objective, *, tol: float = 1e-4, seed: int = 0, max_matvecs: int | None = None
) -> float:
    """Non-uniformity ``sqrt(λ_max(Σ))`` with ``Σ = (1/n) Σ_i H_i² − H²`` (Wu, Ma & E 2018).

    Together with the sharpness it decides whether SGD with learning rate ``η`` and batch size
    ``B`` can stay at a minimum. The square root follows the authors' code
    (``leiwu0/sgd.stability``), which gives it the units of the sharpness.
    """
    result = eigsh(hessian_variance(objective), k=1, which="largest", tol=tol, seed=seed,
                   max_matvecs=max_matvecs)
    _require_converged(result, "non-uniformity")
    # Σ is PSD; a tiny negative value is round-off.
    return math.sqrt(max(float(result.values[0]), 0.0))


def _require_converged(result, what: str) -> None:
    if not result.converged:
        raise RuntimeError(
            f"{what}: Lanczos did not reach tol={result.tol:g} within {result.matvecs} matvecs "
            f"(residual {float(result.residuals.max()):.3g}); raise max_matvecs or tol, or call "
            "valleys.eigsh directly to inspect the partial result"
        )
