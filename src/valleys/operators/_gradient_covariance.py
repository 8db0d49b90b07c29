"""The covariance of per-sample gradients (the covariance of SGD's gradient noise)."""

from __future__ import annotations

import torch

from valleys.objective import Objective
from valleys.operators._base import ExpressionOperator, LowRankOperator
from valleys.operators._fisher import EmpiricalFisherOperator
from valleys.operators._registry import register_curvature

__all__ = ["GradientCovarianceOperator", "gradient_covariance"]


class GradientCovarianceOperator(ExpressionOperator):
    r"""Per-sample gradient covariance

    .. math::  C = \frac1n \sum_{i=1}^n (g_i − g)(g_i − g)^\top = F − g g^\top,
               \qquad g = ∇L(θ),

    the empirical Fisher ``F`` minus the outer product of the full gradient. The gradient of a
    mini-batch of ``B`` samples drawn without replacement has covariance
    ``(n−B)/(B(n−1)) · C`` (with replacement: ``C/B``).
    """

    def __init__(
        self, objective: Objective, theta: torch.Tensor | None = None, *, cache: bool | None = None
    ) -> None:
        self.fisher = EmpiricalFisherOperator(objective, theta, cache=cache)
        self.objective = objective
        self.theta = self.fisher.theta
        self.mean_gradient = objective.gradient(self.theta)
        # C = F − g gᵀ in the operator algebra: the rank-one term is applied in O(p) per vector.
        super().__init__(self.fisher - LowRankOperator(self.mean_gradient.unsqueeze(1)))


@register_curvature(GradientCovarianceOperator)
def gradient_covariance(
    objective: Objective, theta: torch.Tensor | None = None, *, cache: bool | None = None
) -> GradientCovarianceOperator:
    """The per-sample gradient covariance ``(1/n) Σ (g_i−g)(g_i−g)ᵀ`` as a linear operator."""
    return GradientCovarianceOperator(objective, theta, cache=cache)
