"""The shared dense-oracle case of every registered curvature matrix.

One entry of :data:`CASES` per name in :data:`valleys.operators.CURVATURES`:
``test_curvature_registry.py`` checks every registered operator against its dense float64
oracle (``to_dense``, ``matvec``, ``matmat``, symmetry) on each problem of :data:`PROBLEMS`, and
fails for a registered matrix that has no case here. Oracles are built by plain autograd, one
backward pass per row and sample (``tests/_oracles.py`` says why not ``torch.func``), from the
definition of the matrix, never from the operator's own algorithm. Adding a curvature matrix
adds one entry (CONTRIBUTING.md, "Add a curvature matrix").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from _oracles import dense_hessian, sample_ggns, sample_hessians
from conftest import input_dim, make_data, make_model

import valleys

#: (model kind, loss, chunk size): small models of ``conftest.py``; ``5`` splits 13 samples into
#: chunks of 5, 5 and 3, which exercises the sum over chunks.
PROBLEMS = [("mlp-tanh", "mse", None), ("mlp-tanh", "ce", 5), ("residual", "ce", None)]


class Problem:
    """An objective and its per-sample quantities, each computed once (float64, plain autograd)."""

    def __init__(self, kind: str, loss: str, chunk_size: int | None) -> None:
        self.X, self.Y = make_data(loss, d=input_dim(kind))
        self.obj = valleys.Objective(make_model(kind), loss, (self.X, self.Y),
                                     chunk_size=chunk_size)
        self.theta = self.obj.parameters_vector().detach()

    def loss_gradient(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``∇_θ ℓ(f(x; θ), y)`` for one sample and any target ``y``."""
        leaf = self.theta.clone().requires_grad_(True)
        with torch.enable_grad():
            loss = self.obj.loss_fn(self.obj.forward(leaf, x.unsqueeze(0)), y.unsqueeze(0))
            return torch.autograd.grad(loss.sum(), leaf)[0]

    @cached_property
    def sample_hessians(self) -> torch.Tensor:
        return sample_hessians(self.obj, self.theta)

    @cached_property
    def sample_gradients(self) -> torch.Tensor:
        return torch.stack([self.loss_gradient(x, y) for x, y in zip(self.X, self.Y, strict=True)])

    @cached_property
    def sample_ggns(self) -> torch.Tensor:
        return sample_ggns(self.obj, self.theta)

    def hessian(self) -> torch.Tensor:
        def risk(t: torch.Tensor) -> torch.Tensor:
            return self.obj.chunk_losses(t, self.X, self.Y).mean()

        return dense_hessian(risk, self.theta)


def _variance(Ms: torch.Tensor) -> torch.Tensor:
    """``(1/n) Σ M_i² − M²`` with ``M`` the mean of the ``M_i``."""
    M = Ms.mean(0)
    return (Ms @ Ms).mean(0) - M @ M


def _empirical_fisher(P: Problem, op: Any) -> torch.Tensor:
    G = P.sample_gradients
    return G.T @ G / P.obj.n


def _gradient_covariance(P: Problem, op: Any) -> torch.Tensor:
    G = P.sample_gradients
    centered = G - G.mean(0)
    return centered.T @ centered / P.obj.n


def _mc_fisher(P: Problem, op: Any) -> torch.Tensor:
    """``(1/(nS)) Σ_{i,s} g_is g_isᵀ`` at the labels the operator drew (its sampling is tested
    statistically in test_mc_fisher.py; here the products are checked)."""
    labels = torch.cat(op.sampled_targets(), dim=1)  # (S, n, ...): chunks in order
    G = torch.stack([P.loss_gradient(x, y) for draw in labels
                     for x, y in zip(P.X, draw, strict=True)])
    return G.T @ G / G.shape[0]


@dataclass(frozen=True)
class Case:
    """How to check one registered curvature matrix.

    Attributes:
        oracle: ``oracle(problem, operator) -> (p, p)`` float64 matrix from the definition.
        options: keyword arguments of the factory in the test (beyond the objective).
        rtol: tolerance on the largest entry, relative to the oracle's largest entry.
    """

    oracle: Callable[[Problem, Any], torch.Tensor]
    options: dict[str, Any] = field(default_factory=dict)
    rtol: float = 1e-9


CASES: dict[str, Case] = {
    "hessian": Case(lambda P, op: P.hessian()),
    "ggn": Case(lambda P, op: P.sample_ggns.mean(0)),
    "empirical_fisher": Case(_empirical_fisher),
    "gradient_covariance": Case(_gradient_covariance),
    "hessian_variance": Case(lambda P, op: _variance(P.sample_hessians)),
    "ggn_variance": Case(lambda P, op: _variance(P.sample_ggns)),
    "mc_fisher": Case(_mc_fisher, {"samples": 2, "seed": 3}),
}
