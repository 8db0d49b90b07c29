"""The empirical Fisher (uncentered second moment of per-sample gradients)."""

from __future__ import annotations

import torch

from valleys.objective import Objective
from valleys.operators._curvature import CurvatureOperator, vjp_rows
from valleys.operators._registry import register_curvature

__all__ = ["EmpiricalFisherOperator", "empirical_fisher"]


class EmpiricalFisherOperator(CurvatureOperator):
    r"""Empirical Fisher matrix

    .. math::  F = \frac1n \sum_{i=1}^n g_i g_i^\top, \qquad g_i = ∇_θ\, ℓ_i(θ).

    Products never materialize the ``n × p`` per-sample gradients: ``d_i = g_i^\top v`` for all
    samples is one Jacobian-vector product of the vector of per-sample losses (double-vjp
    trick), and ``F v = J_ℓ^\top d / n`` one backward pass.
    """

    def _prepare(self, X: torch.Tensor, Y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        leaf = self._leaf()
        losses = self.objective.chunk_losses(leaf, X, Y)
        dual = torch.zeros_like(losses, requires_grad=True)
        jt_dual = torch.autograd.grad(losses, leaf, dual, create_graph=True)[0]
        return leaf, losses, dual, jt_dual

    def _apply(self, state: tuple[torch.Tensor, ...], V: torch.Tensor) -> torch.Tensor:
        leaf, losses, dual, jt_dual = state
        D = vjp_rows(jt_dual, dual, V)  # (k, batch): g_i · v
        return vjp_rows(losses, leaf, D / self.objective.n)


@register_curvature(EmpiricalFisherOperator)
def empirical_fisher(
    objective: Objective, theta: torch.Tensor | None = None, *, cache: bool | None = None
) -> EmpiricalFisherOperator:
    """The empirical Fisher ``(1/n) Σ g_i g_iᵀ`` as a linear operator."""
    return EmpiricalFisherOperator(objective, theta, cache=cache)
