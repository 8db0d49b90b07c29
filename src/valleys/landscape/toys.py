r"""Toy landscapes with exact answers: sub-quadratic growth and the edge of stability.

These are the mechanism of Ma, Kunin, Wu & Ying (2022, arXiv 2204.11326) in closed form; the
explicit functions are constructed here (the paper's own toy functions were not available to
us).

**1-D.** ``f(x) = κ (sqrt(1 + x²) − 1)`` has curvature ``f''(0) = κ`` at its minimum and grows
like ``κ x²/2`` for ``|x| ≪ 1`` but only like ``κ|x|`` for ``|x| ≫ 1``; its local growth
exponent is exactly ``d log f / d log|x| = 1 + 1/sqrt(1 + x²)``. Gradient descent
``x ← x − η f'(x)`` with ``f'(x) = κ x / sqrt(1 + x²)``:

* for ``ηκ < 2`` converges to 0;
* for ``ηκ > 2`` the minimum is linearly unstable, but GD does not diverge (a quadratic with
  the same curvature would): a symmetric 2-cycle ``x → −x`` needs ``x − ηf'(x) = −x``, i.e.
  ``ηκ / sqrt(1 + x²) = 2``, so its amplitude is ``x* = sqrt((ηκ/2)² − 1)``. Since the GD map
  ``g`` is odd, the cycle's multiplier is ``g'(x*)² = (1 − ηf''(x*))²`` with
  ``f''(x*) = κ (1 + x*²)^{−3/2} = κ (2/(ηκ))³``, so ``ηf''(x*) = 8/(ηκ)² ∈ (0, 2)``: the cycle
  is attracting for every ``ηκ > 2``.

**2-D valley.** ``F(x, y) = c(y) φ(x)`` with ``φ(x) = sqrt(1 + x²) − 1`` across the valley and
``c(y) = c₀ exp(ε y)`` along it. On the floor ``x = 0`` the Hessian is ``diag(c(y), 0)``, so the
sharpness is ``c(y)``. When ``c(y) > 2/η`` the cross-valley coordinate ``x`` oscillates on the
2-cycle of the 1-D toy with ``κ = c(y)``, and the gradient along the valley,
``∂F/∂y = ε c(y) φ(x) > 0``, makes ``y`` drift towards smaller ``c``: per step, adiabatically,
``Δ log c = −η ε² c φ(x*)`` with ``x*`` the current cycle amplitude. The drift stops only when
the cycle collapses, at ``c(y) = 2/η``: GD's own oscillation pulls the floor's sharpness down to
the stability threshold (the edge of stability). GD cannot converge to a floor point with
``c > 2/η`` (it is linearly unstable there), so the limit satisfies ``c·η/2 <= 1``; for a slow
valley (small ``ε``) it undershoots 1 only by ``O(ε²)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from valleys._checks import positive_real
from valleys.errors import ArgumentValueError

__all__ = ["SqrtLoss", "SqrtValley"]


def _steps(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ArgumentValueError(f"steps must be a non-negative integer, got {value!r}")
    return value


@dataclass(frozen=True)
class SqrtLoss:
    """The 1-D sub-quadratic loss ``f(x) = κ (sqrt(1 + x²) − 1)`` (``κ = curvature``)."""

    curvature: float = 1.0

    def __post_init__(self) -> None:
        positive_real(self.curvature, "curvature")

    def value(self, x):
        """``f(x)``, written as ``κ x² / (sqrt(1 + x²) + 1)`` (no cancellation at small x)."""
        x = np.asarray(x, dtype=np.float64)
        return self.curvature * x * x / (np.sqrt(1.0 + x * x) + 1.0)

    def grad(self, x):
        """``f'(x) = κ x / sqrt(1 + x²)``."""
        x = np.asarray(x, dtype=np.float64)
        return self.curvature * x / np.sqrt(1.0 + x * x)

    def hess(self, x):
        """``f''(x) = κ (1 + x²)^{−3/2}``."""
        x = np.asarray(x, dtype=np.float64)
        return self.curvature * (1.0 + x * x) ** -1.5

    @staticmethod
    def local_exponent(x):
        """Exact ``d log f / d log|x| = x f'(x) / f(x) = 1 + 1/sqrt(1 + x²)``."""
        x = np.asarray(x, dtype=np.float64)
        return 1.0 + 1.0 / np.sqrt(1.0 + x * x)

    def two_cycle_amplitude(self, lr: float) -> float:
        """``x* = sqrt((ηκ/2)² − 1)`` for ``ηκ > 2``; ``0.0`` (GD converges) for ``ηκ <= 2``."""
        r = positive_real(lr, "lr") * self.curvature / 2.0
        return math.sqrt(r * r - 1.0) if r > 1.0 else 0.0

    def two_cycle_multiplier(self, lr: float) -> float:
        """Derivative of the two-step GD map at the cycle, ``(1 − 8/(ηκ)²)²`` (``< 1``: stable)."""
        r = positive_real(lr, "lr") * self.curvature
        if r <= 2.0:
            raise ArgumentValueError(
                f"no 2-cycle for lr·curvature = {r:g} <= 2 (GD converges to 0)")
        return (1.0 - 8.0 / (r * r)) ** 2

    def gd(self, x0: float, lr: float, steps: int) -> np.ndarray:
        """The GD trajectory ``x_0, …, x_steps`` (float64)."""
        lr, steps = positive_real(lr, "lr"), _steps(steps)
        xs = np.empty(steps + 1)
        xs[0] = x = float(x0)
        for k in range(steps):
            x = x - lr * float(self.grad(x))
            xs[k + 1] = x
        return xs


@dataclass(frozen=True)
class SqrtValley:
    """The valley ``F(x, y) = c₀ exp(ε y) (sqrt(1 + x²) − 1)`` (see the module docstring)."""

    c0: float = 1.0
    eps: float = 0.05

    def __post_init__(self) -> None:
        positive_real(self.c0, "c0")
        positive_real(self.eps, "eps")

    def floor_sharpness(self, y):
        """``c(y) = c₀ exp(ε y)``, the top Hessian eigenvalue at the floor point ``(0, y)``."""
        return self.c0 * np.exp(self.eps * np.asarray(y, dtype=np.float64))

    def y_for_sharpness(self, c: float) -> float:
        """The ``y`` whose floor sharpness is ``c``."""
        return math.log(positive_real(c, "c") / self.c0) / self.eps

    def value(self, x, y):
        x = np.asarray(x, dtype=np.float64)
        return self.floor_sharpness(y) * x * x / (np.sqrt(1.0 + x * x) + 1.0)

    def grad(self, x, y) -> tuple:
        """``(c(y) x / sqrt(1 + x²), ε c(y) φ(x))``."""
        x = np.asarray(x, dtype=np.float64)
        c = self.floor_sharpness(y)
        phi = x * x / (np.sqrt(1.0 + x * x) + 1.0)
        return c * x / np.sqrt(1.0 + x * x), self.eps * c * phi

    def hessian(self, x: float, y: float) -> np.ndarray:
        """The exact 2×2 Hessian ``[[c φ'', ε c φ'], [ε c φ', ε² c φ]]``."""
        c = float(self.floor_sharpness(y))
        s = math.sqrt(1.0 + x * x)
        phi, dphi, ddphi = x * x / (s + 1.0), x / s, s ** -3
        e = self.eps
        return np.array([[c * ddphi, e * c * dphi], [e * c * dphi, e * e * c * phi]])

    def gd(self, x0: float, y0: float, lr: float, steps: int) -> np.ndarray:
        """The GD trajectory as an ``(steps + 1, 2)`` array of ``(x, y)``."""
        lr, steps = positive_real(lr, "lr"), _steps(steps)
        out = np.empty((steps + 1, 2))
        x, y = float(x0), float(y0)
        out[0] = x, y
        for k in range(steps):
            gx, gy = self.grad(x, y)
            x, y = x - lr * float(gx), y - lr * float(gy)
            out[k + 1] = x, y
        return out

    def adiabatic_drift(self, y: float, lr: float) -> float:
        """Predicted ``Δ log c`` per step while ``x`` sits on its 2-cycle: ``−η ε² c φ(x*)``."""
        c = float(self.floor_sharpness(y))
        amp = SqrtLoss(c).two_cycle_amplitude(lr)
        phi = amp * amp / (math.sqrt(1.0 + amp * amp) + 1.0)
        return -lr * self.eps ** 2 * c * phi
