r"""Directions to look at the landscape along: top Hessian eigenvectors and random directions.

Random directions are rescaled so that plots of different networks are comparable. Li, Xu,
Taylor, Studer & Goldstein, "Visualizing the Loss Landscape of Neural Nets" (NeurIPS 2018),
normalize *per filter*: for every parameter tensor with at least two dimensions, each slice
along its first (output) dimension ``d_i`` is rescaled to the norm of the same slice of the
weights,

.. math::  d_i ← \frac{d_i}{‖d_i‖} ‖θ_i‖,

so a step ``t = 1`` changes every filter (a row of a Linear weight, an output channel of a
convolution) by as much as its own size, removing the scale invariance of ReLU/BatchNorm
networks. One-dimensional tensors (biases, BatchNorm weights and biases) have no filters; what
to do with them is a choice the caller must make (``bias_bn``):

* ``"zero"``: do not perturb them (the default of Li et al.'s code, ``ignore="biasbn"``);
* ``"weights"``: the direction equals the parameter itself (Li et al.'s code otherwise);
* ``"filter"``: treat the whole 1-D tensor as one filter, ``d ← d/‖d‖ · ‖θ‖``.

BatchNorm running statistics are buffers, not parameters: they stay at their stored values
everywhere on the line or plane (the model is evaluated in the mode the user put it in).
"""

from __future__ import annotations

import math

import torch

from valleys._checks import seed_value
from valleys.errors import ArgumentValueError
from valleys.landscape.evaluate import check_objective
from valleys.linalg import eigsh
from valleys.linalg._results import EigshResult
from valleys.objective import Objective
from valleys.operators import hessian

__all__ = [
    "BIAS_BN",
    "NORMALIZATIONS",
    "normalize_direction",
    "orthogonalize",
    "random_direction",
    "top_eigen_directions",
]

NORMALIZATIONS = ("filter", "layer", "none")
BIAS_BN = ("zero", "weights", "filter")


def top_eigen_directions(
    objective: Objective,
    k: int = 1,
    *,
    theta: torch.Tensor | None = None,
    tol: float = 1e-6,
    seed: int = 0,
) -> EigshResult:
    """The ``k`` largest (algebraic) Hessian eigenpairs at ``θ`` (unit vectors, ``(dim, k)``).

    Thick-restart Lanczos on Hessian-vector products (:func:`valleys.linalg.eigsh`). The sign
    of each eigenvector is arbitrary; it is fixed here so that its largest-magnitude entry is
    positive, which makes scans reproducible across solvers.
    """
    result = eigsh(hessian(objective, theta), k=k, which="largest", tol=tol, seed=seed)
    V = result.vectors
    idx = V.abs().argmax(dim=0)
    signs = torch.sign(V[idx, torch.arange(V.shape[1], device=V.device)])
    signs[signs == 0] = 1
    return EigshResult(
        values=result.values, vectors=V * signs, residuals=result.residuals,
        matvecs=result.matvecs, converged=result.converged, tol=result.tol, which=result.which,
        method=result.method, seed=result.seed, restarts=result.restarts,
        wall_time=result.wall_time,
    )


def _check_choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ArgumentValueError(f"{name} must be one of {choices}, got {value!r}")
    return str(value)


def normalize_direction(
    objective: Objective,
    direction: torch.Tensor,
    *,
    normalization: str,
    bias_bn: str,
    theta: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rescale a flat direction per filter (Li et al. 2018), per tensor, or not at all.

    Args:
        objective: gives the layout (names and shapes) of the flat vectors.
        direction: the raw direction (not modified).
        normalization: ``"filter"`` (each slice along dim 0 of every tensor with >= 2 dims gets
            the norm of the same slice of ``θ``), ``"layer"`` (each tensor gets the norm of the
            same tensor of ``θ``) or ``"none"``.
        bias_bn: what happens to tensors with fewer than two dimensions (biases, BatchNorm
            parameters): ``"zero"``, ``"weights"`` or ``"filter"`` (see the module docstring).
            Required: there is no default, because the choice changes the picture. Ignored when
            ``normalization="none"``, which leaves every entry as given.
        theta: the weights whose norms are matched (default: the model's current parameters).

    A filter whose direction slice is zero stays zero (there is nothing to rescale).
    """
    check_objective(objective)
    normalization = _check_choice(normalization, "normalization", NORMALIZATIONS)
    bias_bn = _check_choice(bias_bn, "bias_bn", BIAS_BN)
    weights = objective.resolve_theta(theta).detach()
    objective.check_vector(direction, "direction")
    d = direction.detach().to(weights.device).clone()
    if normalization == "none":
        return d
    out = []
    named_d = objective.unflatten(d)
    named_w = objective.unflatten(weights)
    for name in objective.names:
        dt, wt = named_d[name], named_w[name]
        if dt.ndim < 2:
            if bias_bn == "zero":
                out.append(torch.zeros_like(dt).reshape(-1))
                continue
            if bias_bn == "weights":
                out.append(wt.reshape(-1).clone())
                continue
            out.append(_rescale(dt.reshape(1, -1), wt.reshape(1, -1)).reshape(-1))
            continue
        if normalization == "layer":
            out.append(_rescale(dt.reshape(1, -1), wt.reshape(1, -1)).reshape(-1))
        else:
            out.append(_rescale(dt.reshape(dt.shape[0], -1), wt.reshape(wt.shape[0], -1))
                       .reshape(-1))
    return torch.cat(out)


def _rescale(d: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Rows of ``d`` rescaled to the norms of the rows of ``w`` (zero rows stay zero)."""
    dn = torch.linalg.vector_norm(d, dim=1, keepdim=True)
    wn = torch.linalg.vector_norm(w, dim=1, keepdim=True)
    scale = torch.where(dn > 0, wn / torch.where(dn > 0, dn, torch.ones_like(dn)),
                        torch.zeros_like(dn))
    return d * scale


def random_direction(
    objective: Objective,
    *,
    normalization: str,
    bias_bn: str,
    theta: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> torch.Tensor:
    """A Gaussian random direction, normalized by :func:`normalize_direction`.

    Exactly one of ``generator`` (a ``torch.Generator`` on the objective's device) or ``seed``
    must be given, so the direction is reproducible.
    """
    check_objective(objective)
    if (generator is None) == (seed is None):
        raise ArgumentValueError(
            "give exactly one of generator= or seed= (random directions are seeded)")
    if generator is None:
        generator = torch.Generator(device=objective.device).manual_seed(seed_value(seed))
    raw = torch.randn(objective.dim, generator=generator, dtype=objective.dtype,
                      device=objective.device)
    return normalize_direction(objective, raw, normalization=normalization, bias_bn=bias_bn,
                               theta=theta)


def orthogonalize(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``v`` minus its component along ``u``, rescaled to ``‖v‖`` (a second plane axis)."""
    for name, t in (("u", u), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.ndim != 1:
            raise ArgumentValueError(f"{name} must be a flat vector (1-D tensor), got "
                                     f"{tuple(getattr(t, 'shape', ())) or type(t).__name__}")
    if u.shape != v.shape:
        raise ArgumentValueError(f"u and v must have the same shape, got {tuple(u.shape)} and "
                                 f"{tuple(v.shape)}")
    uu = torch.dot(u, u)
    if uu == 0:
        return v.clone()
    w = v - torch.dot(u, v) / uu * u
    wn = torch.linalg.vector_norm(w)
    if wn == 0 or not math.isfinite(float(wn)):
        raise ArgumentValueError("v is parallel to u; choose another second direction")
    return w * (torch.linalg.vector_norm(v) / wn)
