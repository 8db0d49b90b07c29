r"""How fast the loss grows away from a point: fitted and local growth exponents.

Ma, Kunin, Wu & Ying, "Beyond the Quadratic Approximation: the Multiscale Structure of Neural
Network Loss Landscapes" (J. Mach. Learn. 2022, arXiv 2204.11326) observe that a quadratic
model ``L(θ + t u) − L(θ) ≈ ½ λ t²`` holds only in a tiny neighbourhood of a minimum, and that
beyond it the loss grows *sub-quadratically*. With increments ``ΔL(t) = L(θ + t u) − L(θ)``:

* the **growth exponent** over a range of ``t`` is the least-squares slope ``p`` of
  ``log ΔL`` against ``log |t|``, i.e. the fit ``ΔL ∝ |t|^p`` (``p = 2``: quadratic);
* the **local exponent** at scale ``t`` is ``d log ΔL / d log |t|``, here the slope between
  consecutive points of a log grid (exact for a pure power law), placed at their geometric
  mean. Where it leaves ``2`` the quadratic approximation stops holding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from valleys._records import jsonable, record_to_dict
from valleys.errors import ArgumentTypeError, ArgumentValueError

__all__ = ["GrowthProfile", "growth_exponent", "growth_profile"]

ArrayLike = Sequence[float] | np.ndarray | torch.Tensor


def _as_array(values: Any, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ArgumentTypeError(f"{name} must be a 1-D sequence of real numbers") from err
    if arr.ndim != 1:
        raise ArgumentValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


def _increments(ts: Any, losses: Any, baseline: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(|t|, ΔL)`` (see :func:`growth_exponent` for the rules)."""
    t = _as_array(ts, "ts")
    y = _as_array(losses, "losses")
    if t.shape != y.shape:
        raise ArgumentValueError(
            f"ts and losses must have the same shape, got {t.shape} and {y.shape}")
    if t.size < 2:
        raise ArgumentValueError(f"a growth exponent needs at least 2 points, got {t.size}")
    if not (np.isfinite(t).all() and np.isfinite(y).all()):
        raise ArgumentValueError(
            "ts and losses must be finite (drop diverged points before fitting)")
    if baseline is not None:
        if not (isinstance(baseline, int | float) and math.isfinite(baseline)):
            raise ArgumentValueError(f"baseline must be a finite number, got {baseline!r}")
        y = y - float(baseline)
    a = np.abs(t)
    if (a == 0).any():
        raise ArgumentValueError("every t must be non-zero: log|t| is undefined at t = 0 (pass the "
                                 "loss at t = 0 as baseline= instead)")
    if (y <= 0).any():
        bad = int((y <= 0).sum())
        raise ArgumentValueError(
            f"{bad} increment(s) L(θ+tu) − L(θ) are not positive; the power-law fit needs "
            "ΔL > 0 (is θ a minimum along u? at float32 precision tiny t can round to ΔL = 0; "
            "restrict the range or use float64)"
        )
    if np.unique(a).size < 2:
        raise ArgumentValueError("ts must contain at least two distinct values of |t|")
    return a, y


def growth_exponent(
    ts: ArrayLike,
    losses: ArrayLike,
    *,
    baseline: float | None = None,
) -> float:
    """The exponent ``p`` of ``L(θ + t u) − L(θ) ∝ |t|^p`` fitted over the given points.

    Least squares of ``log ΔL`` on ``log |t|`` (slope of the regression line).

    Args:
        ts: the non-zero coefficients ``t`` (both signs allowed; only ``|t|`` enters).
        losses: the increments ``ΔL(t) = L(θ + t u) − L(θ)`` (all positive), or the raw losses
            ``L(θ + t u)`` together with ``baseline=L(θ)``.
        baseline: ``L(θ)``, subtracted from ``losses`` when given.

    Raises:
        ValueError: shapes differ, fewer than 2 points or fewer than 2 distinct ``|t|``,
            a ``t = 0``, a non-finite value, or a non-positive increment.
    """
    a, y = _increments(ts, losses, baseline)
    slope = np.polyfit(np.log(a), np.log(y), 1)[0]
    return float(slope)


@dataclass(frozen=True, eq=False)
class GrowthProfile:
    """Local growth exponents over scales of ``t`` (see :func:`growth_profile`).

    Attributes:
        scales: ``(m−1,)`` geometric means of consecutive ``|t|`` (ascending).
        exponents: ``(m−1,)`` local exponents ``d log ΔL / d log |t|`` at those scales.
        fitted: the exponent fitted over all points (:func:`growth_exponent`).
        quadratic_radius: the largest scale up to which every local exponent (from the smallest
            scale on) lies within ``tolerance`` of 2; ``0.0`` when the first one already does
            not, ``scales[-1]`` when all do (then it is only a lower bound).
        quadratic_everywhere: all local exponents lie within the tolerance of 2.
        tolerance: the allowed ``|p − 2|``.
    """

    scales: np.ndarray
    exponents: np.ndarray
    fitted: float
    quadratic_radius: float
    quadratic_everywhere: bool
    tolerance: float

    def to_dict(self) -> dict[str, Any]:
        out = record_to_dict(self, drop=("scales", "exponents"))
        return {"scales": jsonable(self.scales.tolist()),
                "exponents": jsonable(self.exponents.tolist()), **out}


def growth_profile(
    ts: ArrayLike,
    losses: ArrayLike,
    *,
    baseline: float | None = None,
    tolerance: float = 0.2,
) -> GrowthProfile:
    """Local exponents ``d log ΔL / d log |t|`` across scales, and where ``p = 2`` stops.

    Inputs as for :func:`growth_exponent`, but every ``|t|`` must be distinct (scan the two
    sides of ``θ``, ``t > 0`` and ``t < 0``, separately: they may differ). The local exponent
    between consecutive points ``|t_i| < |t_{i+1}|`` (after sorting) is
    ``(log ΔL_{i+1} − log ΔL_i) / (log|t_{i+1}| − log|t_i|)``, at scale ``sqrt(|t_i||t_{i+1}|)``.

    Args:
        tolerance: how far from 2 a local exponent may be and still count as quadratic.
    """
    if not (isinstance(tolerance, int | float) and math.isfinite(tolerance) and tolerance > 0):
        raise ArgumentValueError(f"tolerance must be a positive number, got {tolerance!r}")
    a, y = _increments(ts, losses, baseline)
    if np.unique(a).size != a.size:
        raise ArgumentValueError(
            "growth_profile needs distinct |t| values; profile t > 0 and t < 0 "
            "separately")
    order = np.argsort(a)
    la, ly = np.log(a[order]), np.log(y[order])
    exponents = np.diff(ly) / np.diff(la)
    scales = np.exp(0.5 * (la[1:] + la[:-1]))
    ok = np.abs(exponents - 2.0) <= tolerance
    if ok.all():
        radius = float(scales[-1])
    elif not ok[0]:
        radius = 0.0
    else:
        radius = float(scales[int(np.argmin(ok)) - 1])
    return GrowthProfile(
        scales=scales,
        exponents=exponents,
        fitted=float(np.polyfit(la, ly, 1)[0]),
        quadratic_radius=radius,
        quadratic_everywhere=bool(ok.all()),
        tolerance=float(tolerance),
    )
