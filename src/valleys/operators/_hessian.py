"""The Hessian of the empirical risk."""

from __future__ import annotations

import torch
from torch.func import grad, jvp, vmap

from valleys.errors import ArgumentValueError
from valleys.objective import Objective
from valleys.operators._curvature import CurvatureOperator, vjp_rows
from valleys.operators._registry import register_curvature

__all__ = ["HessianOperator", "hessian"]

BACKENDS = ("double-backward", "forward-over-reverse")


class HessianOperator(CurvatureOperator):
    r"""Hessian of the empirical risk,

    .. math::  H = ∇^2 L(θ) = \frac1n \sum_{i=1}^n ∇^2_θ\, ℓ\big(f(x_i; θ), y_i\big).

    Products ``Hv`` come from one of two automatic-differentiation schemes:

    * ``"double-backward"`` (reverse over reverse, Pearlmutter 1994): ``Hv = ∇_θ⟨∇L(θ), v⟩``.
      With cached chunks the first-order graph ``∇L(θ)`` is built once, so each product is a
      single extra backward pass (about 1.2–2.4 gradients on small MLPs).
    * ``"forward-over-reverse"``: ``Hv = d/dε ∇L(θ + εv)|₀`` with :func:`torch.func.jvp` of
      :func:`torch.func.grad`. Never caches; needs forward-mode rules for every op.

    ``backend="auto"`` picks double-backward: on the built-in problems it was faster than
    forward-over-reverse in every configuration measured (see BENCHMARKS.md).
    """

    def __init__(
        self,
        objective: Objective,
        theta: torch.Tensor | None = None,
        *,
        backend: str = "auto",
        cache: bool | None = None,
    ) -> None:
        if backend == "auto":
            backend = "double-backward"
        if backend not in BACKENDS:
            raise ArgumentValueError(
                f"unknown Hessian backend {backend!r}; choose one of {BACKENDS}")
        if backend == "forward-over-reverse":
            cache = False
        super().__init__(objective, theta, cache=cache)
        self.backend = backend

    def _prepare(self, X: torch.Tensor, Y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.backend == "forward-over-reverse":
            return X, Y
        leaf = self._leaf()
        g = torch.autograd.grad(self.objective.chunk_risk(leaf, X, Y), leaf, create_graph=True)[0]
        return leaf, g

    def _apply(self, state: tuple[torch.Tensor, torch.Tensor], V: torch.Tensor) -> torch.Tensor:
        if self.backend == "forward-over-reverse":
            X, Y = state
            gradient = grad(lambda t: self.objective.chunk_risk(t, X, Y))
            return vmap(lambda v: jvp(gradient, (self.theta,), (v,))[1])(V)
        leaf, g = state
        return vjp_rows(g, leaf, V)


@register_curvature(HessianOperator)
def hessian(
    objective: Objective,
    theta: torch.Tensor | None = None,
    *,
    backend: str = "auto",
    cache: bool | None = None,
) -> HessianOperator:
    """The Hessian ``∇²L(θ)`` of an objective as an operator (see :class:`HessianOperator`)."""
    return HessianOperator(objective, theta, backend=backend, cache=cache)
