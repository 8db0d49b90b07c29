"""The two headline numbers of a minimum: sharpness and non-uniformity."""

from __future__ import annotations

import math

from valleys.errors import ArgumentTypeError, ArgumentValueError, NotConvergedError
from valleys.linalg import EigshResult, eigsh
from valleys.objective import Objective
from valleys.operators import hessian, hessian_variance

__all__ = ["nonuniformity", "sharpness"]


def sharpness(
    objective: Objective,
    *,
    tol: float = 1e-4,
    accuracy: str = "residual",
    seed: int = 0,
    max_matvecs: int | None = None,
    return_result: bool = False,
) -> float | EigshResult:
    """Sharpness ``λ_max(∇²L(θ))``, the largest (algebraic) Hessian eigenvalue.

    Gradient descent with step ``η`` is linearly stable at a minimum only if the sharpness is at
    most ``2/η`` (Wu, Ma & E 2018; Cohen et al. 2021). Computed by Lanczos
    (:func:`valleys.eigsh`) to relative residual ``tol``, verified on fresh products; the
    residual bounds the distance to the nearest eigenvalue. ``accuracy="value"`` stops on the
    certified (Kato–Temple) error of the value instead: usually several times fewer products
    for the same accuracy of the number, with the caveat on gaps stated in :func:`valleys.eigsh`.

    Args:
        objective: the :class:`~valleys.Objective`.
        tol: relative tolerance (see :func:`valleys.eigsh`).
        accuracy: ``"residual"`` (default) or ``"value"``: what ``tol`` applies to.
        seed: Lanczos seed.
        max_matvecs: Hessian-vector product budget.
        return_result: return the :class:`~valleys.linalg.EigshResult` (value, vector,
            ``error_bounds``, ``converged``, ``message``) instead of the float, and do not
            raise when it did not converge.

    Raises:
        ValueError: (``return_result=False``) ``tol`` is below what the model's dtype resolves.
        RuntimeError: (``return_result=False``) Lanczos did not converge in its budget.
    """
    result = _top(hessian, objective, "sharpness", tol, accuracy, seed, max_matvecs,
                  return_result)
    return result if return_result else float(result.values[0])


def nonuniformity(
    objective: Objective,
    *,
    tol: float = 1e-4,
    accuracy: str = "residual",
    seed: int = 0,
    max_matvecs: int | None = None,
    return_result: bool = False,
) -> float | EigshResult:
    """Non-uniformity ``sqrt(λ_max(Σ))`` with ``Σ = (1/n) Σ_i H_i² − H²`` (Wu, Ma & E 2018).

    Together with the sharpness it decides whether SGD with learning rate ``η`` and batch size
    ``B`` can stay at a minimum. The square root follows the authors' code
    (``leiwu0/sgd.stability``), which gives it the units of the sharpness. With
    ``return_result=True`` the :class:`~valleys.linalg.EigshResult` of ``λ_max(Σ)`` (before
    the square root) is returned instead, without raising when it did not converge.
    ``tol`` and ``accuracy`` are those of :func:`sharpness`.
    """
    result = _top(hessian_variance, objective, "non-uniformity", tol, accuracy, seed,
                  max_matvecs, return_result)
    # Σ is PSD; a tiny negative value is round-off.
    return result if return_result else math.sqrt(max(float(result.values[0]), 0.0))


def _top(operator, objective: Objective, what: str, tol: float, accuracy: str, seed: int,
         max_matvecs: int | None, return_result: object) -> EigshResult:
    """The top eigenpair of ``operator(objective)``; raises unless converged or asked for the
    record."""
    if not isinstance(return_result, bool):
        raise ArgumentTypeError(f"return_result must be True or False, got {return_result!r}")
    result = eigsh(operator(objective), k=1, which="largest", tol=tol, accuracy=accuracy,
                   seed=seed, max_matvecs=max_matvecs)
    if not return_result:
        _require_converged(result, what)
    return result


def _require_converged(result: EigshResult, what: str) -> None:
    if not result.converged:
        # A tolerance the dtype cannot deliver is a bad argument; a spent budget is not.
        error = ArgumentValueError if result.message.startswith("tol=") else NotConvergedError
        raise error(
            f"{what}: {result.message} (after {result.matvecs} matvecs; value "
            f"{float(result.values[0]):.6g} ± {float(result.error_bounds[0]):.2g}). Pass "
            "return_result=True to get the record with its error bound instead."
        )
