r"""Closed-form, one-dimensional pieces of the linear stability of SGD (Wu, Ma & E 2018).

Near a minimum ``x*`` where every per-sample gradient vanishes (an interpolating minimum), SGD
with learning rate ``η`` and mini-batches ``ξ`` of ``B`` samples drawn *without replacement*
from ``n`` is, to first order, the random linear map ``x_{t+1} = (I − ηH_ξ) x_t`` with
``H_ξ = (1/B) Σ_{i∈ξ} H_i``. It is *linearly (mean-square) stable* if ``E‖x_t‖²`` stays bounded.
Averaging over batches gives the identity (Wu, Ma & E, NeurIPS 2018, eq. (4))

.. math::  E_ξ[(I − ηH_ξ)^2] = (I − ηH)^2 + η^2 c\,Σ, \qquad
           c = \frac{n − B}{B(n − 1)}, \qquad Σ = \frac1n \sum_i H_i^2 − H^2 .

In one dimension (``H_i = a_i`` scalars, sharpness ``a = mean a_i``, non-uniformity
``s = sqrt(mean a_i² − a²)``) this is the exact growth factor of ``E[x_t²]``, so SGD is stable
if and only if

.. math::  (1 − ηa)^2 + η^2 c\, s^2 \le 1 .

The region is the ellipse centred at ``(a, s) = (1/η, 0)`` with semi-axes ``1/η`` and
``1/(η sqrt c)``; it lies inside the rectangle of the two necessary conditions
``0 <= a <= 2/η`` and ``s <= 1/(η sqrt c) = (1/η) sqrt(B(n−1)/(n−B))`` (≈ ``sqrt(B)/η`` for
``B << n``): the learning rate shrinks both sides, the batch size only the ``s`` side. The
multi-dimensional condition (``valleys.stability.condition``) reduces to these formulas when the
``H_i`` commute. Non-uniformity follows the authors' code: ``s = sqrt(λ_max(Σ))``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from valleys._checks import integer
from valleys._records import record_to_dict
from valleys.stability._common import (
    check_batch_size,
    check_finite,
    check_lr,
    check_n,
)

__all__ = [
    "NecessaryBounds",
    "StabilityRegion",
    "critical_lr",
    "necessary_bounds",
    "sgd_criterion",
    "sgd_noise_factor",
    "stability_region",
]


def sgd_noise_factor(n: int, batch_size: int) -> float:
    """The mini-batch noise factor ``c = (n − B) / (B (n − 1))`` of sampling without replacement.

    ``c = 1`` for ``B = 1`` and ``c = 0`` for full-batch GD (``B = n``; also ``n = B = 1``). It is
    the variance of a mean of ``B`` of ``n`` numbers drawn without replacement, relative to the
    population variance (the finite-population correction): ``Var(mean_ξ a) = c · Var(a)``.

    Raises:
        ValueError: unless ``n >= 1`` and ``1 <= B <= n`` are integers.
    """
    n = check_n(n)
    batch_size = check_batch_size(batch_size, n)
    if batch_size == n:
        return 0.0
    return (n - batch_size) / (batch_size * (n - 1))


def sgd_criterion(
    sharpness: float, nonuniformity: float, lr: float, batch_size: int, n: int
) -> float:
    r"""Left-hand side of the 1-D linear-stability criterion of SGD (Wu, Ma & E 2018),

    .. math::  (1 − ηa)^2 + η^2 \frac{n − B}{B(n − 1)} s^2 ,

    the exact factor by which one SGD step multiplies ``E[x²]`` in one dimension. SGD is linearly
    stable if and only if it is ``<= 1``.

    Args:
        sharpness: ``a`` (mean of the per-sample curvatures; any finite real).
        nonuniformity: ``s >= 0`` (their standard deviation, ``sqrt(mean a_i² − a²)``).
        lr: learning rate ``η > 0``.
        batch_size: ``B`` with ``1 <= B <= n`` (without replacement; ``B = n`` is GD).
        n: number of training samples (``n = 1`` forces ``B = 1``, a noise factor of 0).

    Raises:
        ValueError: on a non-positive or non-finite ``lr``, a batch size outside ``[1, n]``,
            or a non-finite ``a`` / negative or non-finite ``s``.
    """
    a = check_finite(sharpness, "sharpness")
    s = check_finite(nonuniformity, "nonuniformity", nonnegative=True)
    lr = check_lr(lr)
    c = sgd_noise_factor(n, batch_size)
    return (1.0 - lr * a) ** 2 + lr**2 * c * s**2


@dataclass(frozen=True)
class NecessaryBounds:
    """The two necessary conditions for linear stability of SGD (Wu, Ma & E 2018).

    Unpacks as ``max_sharpness, max_nonuniformity = necessary_bounds(...)``.

    Attributes:
        max_sharpness: ``2/η``.
        max_nonuniformity: ``(1/η) sqrt(B(n−1)/(n−B))``; ``inf`` for GD (``B = n``).
        lr, batch_size, n: the inputs. noise_factor: ``c = (n−B)/(B(n−1))``.
    """

    max_sharpness: float
    max_nonuniformity: float
    lr: float
    batch_size: int
    n: int
    noise_factor: float

    def __iter__(self) -> Iterator[float]:
        yield self.max_sharpness
        yield self.max_nonuniformity

    def contains(self, sharpness: float, nonuniformity: float) -> bool:
        """Whether ``(a, s)`` satisfies both necessary conditions (``0 <= a`` not included)."""
        return sharpness <= self.max_sharpness and nonuniformity <= self.max_nonuniformity

    def to_dict(self) -> dict[str, Any]:
        return record_to_dict(self)


def necessary_bounds(lr: float, batch_size: int, n: int) -> NecessaryBounds:
    r"""The necessary conditions ``a <= 2/η`` and ``s <= (1/η) sqrt(B(n−1)/(n−B))``.

    Each follows from ``λ_max{(I − ηH)² + η²cΣ} <= 1`` because, for PSD ``P, Q``,
    ``λ_max(P + cQ) >= max(λ_max P, c λ_max Q)`` (Wu, Ma & E 2018, the "rectangle" of their
    sharpness–non-uniformity diagram). For GD (``B = n``) the second bound is ``inf``.
    """
    lr = check_lr(lr)
    c = sgd_noise_factor(n, batch_size)
    s_max = math.inf if c == 0 else 1.0 / (lr * math.sqrt(c))
    return NecessaryBounds(2.0 / lr, s_max, lr, int(batch_size), int(n), c)


def critical_lr(
    sharpness: float, nonuniformity: float, batch_size: int | Sequence[int], n: int
) -> float | np.ndarray:
    r"""Largest stable learning rate of the 1-D criterion, ``η* = 2a / (a² + c s²)``.

    Solves ``(1 − ηa)² + η² c s² <= 1``, i.e. ``η (η (a² + c s²) − 2a) <= 0``. Conventions: ``inf``
    when ``a² + c s² = 0`` and ``a >= 0`` (no curvature: every step is stable), ``0`` when
    ``a <= 0`` otherwise (no positive step is stable). For GD (``B = n``) it is ``2/a``.

    Args:
        sharpness, nonuniformity: ``a`` and ``s >= 0``.
        batch_size: one ``B`` (returns a float) or a sequence of them (returns an array, for
            plotting the predicted ``η*`` against ``B``).
        n: number of samples.
    """
    a = check_finite(sharpness, "sharpness")
    s = check_finite(nonuniformity, "nonuniformity", nonnegative=True)
    if isinstance(batch_size, Sequence | np.ndarray):
        return np.array([critical_lr(a, s, b, n) for b in batch_size], dtype=float)
    c = sgd_noise_factor(n, batch_size)
    denominator = a * a + c * s * s
    if denominator == 0:
        return math.inf if a >= 0 else 0.0
    return max(2.0 * a / denominator, 0.0)


@dataclass(frozen=True, eq=False)
class StabilityRegion:
    """Boundary of the 1-D stable region in the (sharpness, non-uniformity) plane.

    The region is ``{(a, s): s <= boundary(a), 0 <= a <= 2/η}``; plot it with
    ``ax.fill_between(r.sharpness, 0, r.nonuniformity)`` (with GD the boundary is ``inf``).

    Attributes:
        sharpness: grid of ``a`` on ``[0, 2/η]``.
        nonuniformity: the boundary ``s_max(a) = sqrt(a (2 − ηa) / (η c))`` on that grid.
        max_sharpness, max_nonuniformity: the necessary bounds (the bounding rectangle).
        lr, batch_size, n, noise_factor: the inputs and ``c``.
    """

    # The fields after the grid repeat NecessaryBounds' on purpose: one flat record (to_dict).
    sharpness: np.ndarray
    nonuniformity: np.ndarray
    max_sharpness: float
    max_nonuniformity: float
    lr: float
    batch_size: int
    n: int
    noise_factor: float

    def to_dict(self) -> dict[str, Any]:
        out = record_to_dict(self, drop=("sharpness", "nonuniformity"))
        out["sharpness"] = [float(x) for x in self.sharpness]
        out["nonuniformity"] = [float(x) if math.isfinite(x) else None for x in self.nonuniformity]
        return out


def stability_region(lr: float, batch_size: int, n: int, *, num: int = 201) -> StabilityRegion:
    r"""The 1-D stable region ``(1 − ηa)² + η² c s² <= 1`` as a curve ``s_max(a)``, for plots.

    Solving for ``s`` gives ``s_max(a) = sqrt(ηa (2 − ηa)) / (η sqrt c)`` on ``0 <= a <= 2/η``:
    half an ellipse peaking at ``a = 1/η`` with ``s = 1/(η sqrt c)``, the necessary bound.

    Args:
        lr: ``η > 0``. batch_size: ``1 <= B <= n``. n: number of samples.
        num: number of grid points (>= 2).
    """
    bounds = necessary_bounds(lr, batch_size, n)
    num = integer(num, "num", minimum=2)
    a = np.linspace(0.0, 2.0 / bounds.lr, num)
    inside = np.clip(bounds.lr * a * (2.0 - bounds.lr * a), 0.0, None)
    if bounds.noise_factor == 0:
        s = np.full_like(a, np.inf)
    else:
        s = np.sqrt(inside / bounds.noise_factor) / bounds.lr
    return StabilityRegion(
        a, s, bounds.max_sharpness, bounds.max_nonuniformity, bounds.lr, bounds.batch_size,
        bounds.n, bounds.noise_factor,
    )
