"""The generalized Gauss–Newton matrix."""

from __future__ import annotations

import torch
from torch.func import grad, jvp

from valleys.objective import Objective
from valleys.operators._curvature import CurvatureOperator, vjp_rows
from valleys.operators._registry import register_curvature

__all__ = ["GGNOperator", "ggn", "output_hessian_product"]


class GGNOperator(CurvatureOperator):
    r"""Generalized Gauss–Newton matrix of the empirical risk,

    .. math::  G = \frac1n \sum_{i=1}^n J_i^\top Λ_i J_i, \qquad
               J_i = ∂f(x_i; θ)/∂θ, \quad Λ_i = ∇^2_f\, ℓ(f, y_i)\big|_{f = f(x_i; θ)}.

    ``G`` is the Hessian without the term that carries second derivatives of the model, so it
    is positive semi-definite for convex losses; for ``"mse"`` at an interpolating minimum it
    equals the Hessian. ``Jv`` is computed by the double-vector-Jacobian trick (a backward pass
    through ``v ↦ J^T u``), which needs no forward-mode rules; ``Λ`` is applied in closed form for
    ``"mse"`` (identity) and ``"ce"`` (``diag(p) − pp^T`` times the target mass) and by
    :func:`torch.func` otherwise.
    """

    def _prepare(self, X: torch.Tensor, Y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        leaf = self._leaf()
        out = self.objective.forward(leaf, X)
        dual = torch.zeros_like(out, requires_grad=True)
        jt_dual = torch.autograd.grad(out, leaf, dual, create_graph=True)[0]
        return leaf, out, dual, jt_dual, Y

    def _apply(self, state: tuple[torch.Tensor, ...], V: torch.Tensor) -> torch.Tensor:
        leaf, out, dual, jt_dual, Y = state
        JV = vjp_rows(jt_dual, dual, V)  # (k, batch, outputs...) = J v for each row v
        lam_JV = output_hessian_product(self.objective, out.detach(), Y, JV)
        return vjp_rows(out, leaf, lam_JV / self.objective.n)


def output_hessian_product(
    objective: Objective, outputs: torch.Tensor, targets: torch.Tensor, T: torch.Tensor
) -> torch.Tensor:
    """``Λ_i t_i`` for each sample: the loss Hessian w.r.t. the outputs applied to ``T``.

    ``T`` has shape ``(k, *outputs.shape)``; the loss of sample ``i`` depends on output ``i``
    only, so the Hessian of the summed loss is block diagonal and one product gives all blocks.
    """
    if objective.loss_name == "mse":
        return T
    if objective.loss_name == "ce":
        p = torch.softmax(outputs, dim=-1)
        mass = targets.sum(-1, keepdim=True) if targets.is_floating_point() else 1.0
        return mass * (p * T - p * (p * T).sum(-1, keepdim=True))
    summed = grad(lambda o: objective.loss_fn(o, targets).sum())
    return torch.stack([jvp(summed, (outputs,), (t,))[1] for t in T])


@register_curvature(GGNOperator)
def ggn(objective: Objective, theta: torch.Tensor | None = None, *,
        cache: bool | None = None) -> GGNOperator:
    """The generalized Gauss–Newton matrix as a linear operator (see :class:`GGNOperator`)."""
    return GGNOperator(objective, theta, cache=cache)
