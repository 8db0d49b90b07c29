r"""Seeded collocation samplers on boxes ``[a_1, b_1] × … × [a_d, b_d]``.

Every draw takes a seed (or a ``torch.Generator``) and returns float64 (or the given dtype)
points of shape ``(n, d)``; the same seed gives the same points. ``method="latin"`` is Latin
hypercube sampling (McKay, Beckman & Conover 1979), as in Raissi et al.'s PINN scripts: each
coordinate's ``n`` equal strata hold exactly one point, placed uniformly inside its stratum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from valleys._checks import finite_real, integer, seed_value
from valleys.errors import ArgumentTypeError, ArgumentValueError

__all__ = ["Box", "relative_l2"]

METHODS = ("uniform", "latin")


def _generator(seed: int | torch.Generator) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    return torch.Generator().manual_seed(seed_value(seed))


class Box:
    """An axis-aligned box with seeded samplers for its interior and its faces.

    Args:
        lower: lower corner ``(a_1, …, a_d)``.
        upper: upper corner ``(b_1, …, b_d)``, each ``b_i > a_i``.

    Raises:
        ValueError: empty corners, different lengths, non-finite values or a side of zero (or
            negative) width.
    """

    def __init__(self, lower: Sequence[float], upper: Sequence[float]) -> None:
        if isinstance(lower, str | bytes) or isinstance(upper, str | bytes):
            raise ArgumentTypeError("lower and upper must be sequences of numbers")
        lower = [finite_real(a, "lower corner") for a in lower]
        upper = [finite_real(b, "upper corner") for b in upper]
        if not lower or len(lower) != len(upper):
            raise ArgumentValueError(
                f"lower and upper must have the same non-zero length, got {len(lower)} and "
                f"{len(upper)}")
        for i, (a, b) in enumerate(zip(lower, upper, strict=True)):
            if not b > a:
                raise ArgumentValueError(
                    f"side {i} of the domain has zero or negative width ([{a}, {b}]); every "
                    "side needs upper > lower")
        self.lower, self.upper = tuple(lower), tuple(upper)

    @property
    def dim(self) -> int:
        return len(self.lower)

    @property
    def volume(self) -> float:
        """``Π (b_i − a_i)``."""
        return math.prod(b - a for a, b in zip(self.lower, self.upper, strict=True))

    def face_area(self, axis: int) -> float:
        """The ``(d−1)``-measure of a face normal to ``axis`` (1 for a 1-D box)."""
        return self.volume / (self.upper[axis] - self.lower[axis])

    @property
    def surface(self) -> float:
        """Total measure of the boundary, ``2 Σ_i face_area(i)``."""
        return 2 * sum(self.face_area(i) for i in range(self.dim))

    def _unit(self, n: int, d: int, method: str, gen: torch.Generator,
              dtype: torch.dtype) -> torch.Tensor:
        if method not in METHODS:
            raise ArgumentValueError(f"method must be one of {METHODS}, got {method!r}")
        u = torch.rand(n, d, generator=gen, dtype=torch.float64)
        if method == "latin" and n > 0:
            strata = torch.stack([torch.randperm(n, generator=gen) for _ in range(d)], dim=1)
            u = (strata.to(torch.float64) + u) / n
        return u.to(dtype)

    def interior(self, n: int, seed: int | torch.Generator = 0, *, method: str = "uniform",
                 dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """``n`` points drawn in the box, shape ``(n, d)``.

        Raises:
            ValueError: ``n < 1`` (zero collocation points), an unknown method.
        """
        n = integer(n, "n", minimum=1, hint="a PINN term needs at least one collocation point")
        u = self._unit(n, self.dim, method, _generator(seed), dtype)
        lo = torch.tensor(self.lower, dtype=dtype)
        hi = torch.tensor(self.upper, dtype=dtype)
        return lo + (hi - lo) * u

    def face(self, axis: int, side: int, n: int, seed: int | torch.Generator = 0, *,
             method: str = "uniform", dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """``n`` points on the face ``x_axis = lower`` (``side=0``) or ``upper`` (``side=1``)."""
        axis = integer(axis, "axis", minimum=0)
        if axis >= self.dim or side not in (0, 1):
            raise ArgumentValueError(f"no face (axis={axis}, side={side}) in {self.dim} dims")
        pts = self.interior(n, seed, method=method, dtype=dtype)
        pts[:, axis] = self.upper[axis] if side else self.lower[axis]
        return pts

    def boundary(self, n: int, seed: int | torch.Generator = 0, *,
                 axes: Sequence[int] | None = None, method: str = "uniform",
                 dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """``n`` points on the faces normal to ``axes`` (default all), split among the faces in
        proportion to their measure (largest remainders), face by face."""
        n = integer(n, "n", minimum=1, hint="a PINN term needs at least one boundary point")
        gen = _generator(seed)
        axes = list(range(self.dim)) if axes is None else [integer(a, "axis") for a in axes]
        faces = [(a, s) for a in axes for s in (0, 1)]
        areas = [self.face_area(a) for a, _ in faces]
        share = [n * w / sum(areas) for w in areas]
        counts = [math.floor(c) for c in share]
        order = sorted(range(len(faces)), key=lambda i: share[i] - counts[i], reverse=True)
        for i in order[: n - sum(counts)]:
            counts[i] += 1
        parts = [self.face(a, s, c, gen, method=method, dtype=dtype)
                 for (a, s), c in zip(faces, counts, strict=True) if c > 0]
        return torch.cat(parts)

    def grid(self, sizes: Sequence[int], *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """A tensor grid with ``sizes[i]`` equispaced points per axis (ends included), shape
        ``(Π sizes, d)``, the first axis varying slowest."""
        if len(sizes) != self.dim:
            raise ArgumentValueError(f"need {self.dim} grid sizes, got {len(sizes)}")
        axes = [torch.linspace(a, b, integer(m, "grid size", minimum=2), dtype=dtype)
                for a, b, m in zip(self.lower, self.upper, sizes, strict=True)]
        mesh = torch.meshgrid(*axes, indexing="ij")
        return torch.stack([m.reshape(-1) for m in mesh], dim=1)

    def __repr__(self) -> str:
        return f"Box(lower={self.lower}, upper={self.upper})"


def relative_l2(prediction: torch.Tensor, exact: torch.Tensor) -> float:
    r"""Relative L2 error ``‖prediction − exact‖₂ / ‖exact‖₂`` over all entries.

    Raises:
        ValueError: different shapes, no entries, non-finite values or ``‖exact‖ = 0``.
    """
    if not isinstance(prediction, torch.Tensor) or not isinstance(exact, torch.Tensor):
        raise ArgumentTypeError("prediction and exact must be tensors")
    if prediction.shape != exact.shape:
        raise ArgumentValueError(
            f"prediction and exact have different shapes {tuple(prediction.shape)} and "
            f"{tuple(exact.shape)}")
    if exact.numel() == 0:
        raise ArgumentValueError("relative_l2 needs at least one entry")
    exact = exact.detach().to(torch.float64)
    diff = prediction.detach().to(torch.float64) - exact
    if not (torch.isfinite(diff).all() and torch.isfinite(exact).all()):
        raise ArgumentValueError("relative_l2 got non-finite values")
    norm = exact.norm()
    if norm == 0:
        raise ArgumentValueError("the exact solution is zero; a relative error is undefined")
    return float(diff.norm() / norm)
