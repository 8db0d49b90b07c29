r"""Strategy spaces of a mean-field game: Euclidean space, the flat torus and the unit sphere.

A space says how a Langevin step is taken on it (Ma & Ying, ICLR 2022, arXiv 2202.10947;
Domingo-Enrich et al., NeurIPS 2020, arXiv 2002.06277):

* **Euclidean** ``R^d``: ``x ← x + η v + sqrt(2ητ) ξ``.
* **Torus** ``(R / LZ)^d`` (period ``L = 2π`` by default): the same step, then every coordinate
  is wrapped into ``[0, L)``. Payoffs on the torus must be ``L``-periodic.
* **Sphere** ``S^{d-1} ⊂ R^d``: the projected Langevin step. Drift and noise are projected
  onto the tangent space ``T_x = {v : vᵀx = 0}`` (``P_x v = v − (vᵀx) x``), the step is taken,
  and the point is renormalised (the retraction ``x ↦ x/|x|``). Rotation invariance makes the
  uniform measure invariant when the drift vanishes.

Every space is a small frozen dataclass with ``tangent`` (project a drift), ``retract``
(bring a point back onto the space), ``check`` (validate initial particles) and ``uniform``
(seeded samples of the uniform measure, where it exists).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from valleys.errors import ArgumentTypeError, ArgumentValueError

__all__ = ["Euclidean", "Space", "Sphere", "Torus", "resolve_space"]


@dataclass(frozen=True)
class Euclidean:
    """``R^d`` with its flat metric (no constraint)."""

    name: str = "euclidean"

    def tangent(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return v

    def retract(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def check(self, x: torch.Tensor, who: str) -> None:
        _check_matrix(x, who)

    def uniform(self, n: int, d: int, *, generator: torch.Generator | None = None,
                dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
        raise ArgumentValueError(
            "R^d has no uniform probability measure; sample particles yourself")


@dataclass(frozen=True)
class Torus:
    """The flat torus ``(R / period·Z)^d``; coordinates are kept in ``[0, period)``."""

    period: float = 2 * math.pi
    name: str = "torus"

    def __post_init__(self) -> None:
        if not self.period > 0:
            raise ArgumentValueError(f"the torus period must be > 0, got {self.period}")

    def tangent(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return v

    def retract(self, x: torch.Tensor) -> torch.Tensor:
        return torch.remainder(x, self.period)

    def check(self, x: torch.Tensor, who: str) -> None:
        _check_matrix(x, who)

    def uniform(self, n: int, d: int, *, generator: torch.Generator | None = None,
                dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
        return self.period * torch.rand(n, d, generator=generator, dtype=dtype, device=device)


@dataclass(frozen=True)
class Sphere:
    """The unit sphere ``S^{d-1}`` in ``R^d`` (particles are unit vectors, ``d >= 2``)."""

    name: str = "sphere"
    atol: float = 1e-6

    def tangent(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return v - (v * x).sum(-1, keepdim=True) * x

    def retract(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.norm(dim=-1, keepdim=True)

    def check(self, x: torch.Tensor, who: str) -> None:
        _check_matrix(x, who)
        if x.shape[1] < 2:
            raise ArgumentValueError(f"{who}: points on a sphere need d >= 2 coordinates")
        norms = x.detach().norm(dim=1)
        if not torch.allclose(norms, torch.ones_like(norms), atol=max(self.atol, 1e-3)):
            raise ArgumentValueError(
                f"{who}: particles on the sphere must be unit vectors "
                f"(norms range {float(norms.min()):.3g}..{float(norms.max()):.3g}); "
                "normalise them first, e.g. x / x.norm(dim=1, keepdim=True)")

    def uniform(self, n: int, d: int, *, generator: torch.Generator | None = None,
                dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
        return self.retract(torch.randn(n, d, generator=generator, dtype=dtype, device=device))


Space = Euclidean | Torus | Sphere
_NAMES = {"euclidean": Euclidean, "torus": Torus, "sphere": Sphere}


def resolve_space(space: str | Space) -> Space:
    """A space from its name (``"euclidean"``, ``"torus"``, ``"sphere"``) or itself."""
    if isinstance(space, Euclidean | Torus | Sphere):
        return space
    if isinstance(space, str) and space in _NAMES:
        return _NAMES[space]()
    raise ArgumentValueError(f"unknown strategy space {space!r}; use one of {sorted(_NAMES)} "
                             "or an instance of Euclidean, Torus, Sphere")


def _check_matrix(x: torch.Tensor, who: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ArgumentTypeError(
            f"{who} must be a torch.Tensor of shape (n, d), got {type(x).__name__}")
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ArgumentValueError(
            f"{who} must have shape (n, d) with n, d >= 1, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ArgumentTypeError(f"{who} must be a floating-point tensor, got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ArgumentValueError(f"{who} contains NaN or inf")
