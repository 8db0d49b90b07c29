"""The variance of per-sample Gauss–Newton matrices: non-uniformity away from exact minima."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.func import jacrev, vmap

from valleys.objective import Objective
from valleys.operators._algorithm_check import (
    CHECK_SAMPLES,
    first_agreeing,
    first_samples,
    warn_rejected,
)
from valleys.operators._base import ExpressionOperator
from valleys.operators._curvature import CurvatureOperator, vjp_rows
from valleys.operators._ggn import GGNOperator, output_hessian_product
from valleys.operators._registry import register_curvature

__all__ = ["GGNVarianceOperator", "ggn_variance"]

# Per-sample Jacobians materialize a (samples × outputs × p) block; keep it near this size.
_BLOCK_ELEMENTS = 2**24
# Per-sample Jacobian algorithms in the order tried; the last is plain autograd, row by row.
JACOBIAN_ALGORITHMS = ("vmap", "backward")


def _single_output(objective: Objective) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def single(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return objective.forward(t, x.unsqueeze(0))[0].reshape(-1)

    return single


def _jacobians_by_rows(objective: Objective, theta: torch.Tensor,
                       X: torch.Tensor) -> torch.Tensor:
    """``J_i`` of each sample by one backward pass per output (never under ``vmap``)."""
    single = _single_output(objective)
    out = []
    for x in X:
        leaf = theta.detach().requires_grad_(True)
        with torch.enable_grad():
            f = single(leaf, x)
            rows = [
                torch.autograd.grad(f[k], leaf, retain_graph=True, allow_unused=True,
                                    materialize_grads=True)[0]
                for k in range(f.numel())
            ]
        out.append(torch.stack(rows))
    return torch.stack(out)


def sample_output_grams(
    objective: Objective, theta: torch.Tensor, X: torch.Tensor, *, algorithm: str = "vmap"
) -> torch.Tensor:
    """``J_i J_iᵀ`` for every sample of ``X``: shape ``(b, K, K)``, ``K`` the flat output size.

    Per-sample Jacobians by ``vmap(jacrev)`` (``algorithm="vmap"``) or by one backward pass
    per output and sample (``"backward"``), in blocks of samples so that at most
    ``_BLOCK_ELEMENTS`` Jacobian entries exist at once.
    """
    if algorithm == "backward":
        def jac(t: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
            return _jacobians_by_rows(objective, t, X)
    else:
        jac = vmap(jacrev(_single_output(objective)), in_dims=(None, 0))
    theta = theta.detach()
    K = objective.forward(theta, X[:1]).numel()
    step = max(1, _BLOCK_ELEMENTS // (K * objective.dim))
    grams = []
    for start in range(0, X.shape[0], step):
        J = jac(theta, X[start : start + step])  # (s, K, p)
        grams.append(J @ J.transpose(1, 2))
    return torch.cat(grams)


def choose_jacobian_algorithm(objective: Objective, theta: torch.Tensor) -> str:
    """``"vmap"`` if ``vmap(jacrev)`` agrees with plain autograd on a few samples.

    The check compares ``J_iᵀ c_i`` for fixed random output cotangents ``c_i`` with one
    backward pass per sample. First-order Jacobians were right on every model tested, LayerNorm
    included, but a batching rule is not autograd; a mismatch, or a model ``vmap`` cannot
    trace, falls back to ``"backward"`` with a warning.
    """
    X, _ = first_samples(objective, CHECK_SAMPLES)
    theta = theta.detach()
    single = _single_output(objective)
    samples = 0 if X is None else X.shape[0]  # an empty shard still joins the vote
    reference = C = None
    if samples:
        K = objective.forward(theta, X[:1]).numel()
        gen = torch.Generator().manual_seed(15)
        C = torch.randn(samples, K, generator=gen, dtype=torch.float64).to(theta)
        rows = []
        for x, c in zip(X, C, strict=True):
            leaf = theta.detach().requires_grad_(True)
            with torch.enable_grad():
                rows.append(torch.autograd.grad(single(leaf, x), leaf, c, allow_unused=True,
                                                materialize_grads=True)[0])
        reference = torch.stack(rows)

    def vectorized() -> torch.Tensor:
        J = vmap(jacrev(single), in_dims=(None, 0))(theta, X)
        return torch.einsum("sk,skp->sp", C, J)

    chosen, rejected = first_agreeing(objective, [("vmap", vectorized)], reference, samples)
    chosen = chosen or JACOBIAN_ALGORITHMS[-1]
    if rejected:
        warn_rejected("ggn_variance: per-sample Jacobians", rejected, chosen, objective.model)
    return chosen


class _GGNSecondMoment(CurvatureOperator):
    r"""``(1/n) Σ_i G_i²`` with ``G_i = J_iᵀΛ_iJ_i``: ``G_i²v = J_iᵀΛ_i(J_iJ_iᵀ)Λ_iJ_iv``.

    The ``K × K`` blocks ``J_iJ_iᵀ`` are computed once per chunk and kept (``n·K²`` numbers);
    the graphs follow the usual caching rule of :class:`CurvatureOperator`.
    """

    def __init__(self, objective: Objective, theta: torch.Tensor | None, *,
                 cache: bool | None) -> None:
        super().__init__(objective, theta, cache=cache)
        self._grams: list[torch.Tensor] = []
        self.jacobian_algorithm: str | None = None  # chosen by a check at the first product

    def _graph(self, X: torch.Tensor, Y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        leaf = self._leaf()
        out = self.objective.forward(leaf, X)
        dual = torch.zeros_like(out, requires_grad=True)
        jt_dual = torch.autograd.grad(out, leaf, dual, create_graph=True)[0]
        return leaf, out, dual, jt_dual, Y

    def _states(self) -> Iterator[tuple[torch.Tensor, ...]]:
        if self.cache and self._cached is not None:
            yield from self._cached
            return
        if self.jacobian_algorithm is None:  # before the loop: every rank votes, even empty ones
            self.jacobian_algorithm = choose_jacobian_algorithm(self.objective, self.theta)
        states = []
        for index, (X, Y) in enumerate(self.objective.chunks()):
            if index == len(self._grams):
                self._grams.append(sample_output_grams(
                    self.objective, self.theta, X, algorithm=self.jacobian_algorithm
                ))
            state = (*self._graph(X, Y), self._grams[index])
            if self.cache:
                states.append(state)
            yield state
        if self.cache:
            self._cached = states

    def _apply(self, state: tuple[torch.Tensor, ...], V: torch.Tensor) -> torch.Tensor:
        leaf, out, dual, jt_dual, Y, grams = state
        k, b = V.shape[0], out.shape[0]
        outputs = out.detach()
        u = output_hessian_product(self.objective, outputs, Y, vjp_rows(jt_dual, dual, V))
        w = torch.einsum("bij,kbj->kbi", grams, u.reshape(k, b, -1)).reshape(u.shape)
        w = output_hessian_product(self.objective, outputs, Y, w)
        return vjp_rows(out, leaf, w / self.objective.n)


class GGNVarianceOperator(ExpressionOperator):
    r"""Variance of the per-sample generalized Gauss–Newton matrices,

    .. math::  Σ_G = \frac1n \sum_{i=1}^n G_i^2 − G^2, \qquad G_i = J_i^\top Λ_i J_i,
               \quad G = \frac1n \sum_i G_i ,

    with ``J_i = ∂f(x_i; θ)/∂θ`` and ``Λ_i`` the loss Hessian in the outputs (see
    :class:`~valleys.operators.GGNOperator`). It is the Hessian variance of Wu, Ma & E (2018)
    with every per-sample Hessian replaced by its Gauss–Newton part. At an interpolating minimum
    of the square loss ``G_i = H_i`` and the two operators coincide; near such a minimum (a
    trained network stops at a small but nonzero loss) the residual terms of ``H_i`` add small
    indefinite parts that make the exact-Hessian stability condition fail along directions of
    slightly negative curvature, while ``G_i ⪰ 0`` keeps the linearized dynamics of SGD on the
    Gauss–Newton model well posed. For ``"mse"`` its top eigenvalue equals the Gram-path
    non-uniformity of :func:`valleys.stability.gram_sharpness_nonuniformity` at any ``θ``.

    A product is ``Σ_G v = (1/n) Σ_i J_iᵀΛ_i D_i Λ_i J_i v − G(Gv)`` with the ``K × K`` blocks
    ``D_i = J_iJ_iᵀ`` computed once (``vmap`` of per-sample Jacobians, in blocks): one Jacobian
    product ``Jv`` and one transposed product per chunk, plus two GGN products. The ``vmap``
    Jacobians are first checked on a few samples against plain backward passes; on a mismatch,
    or a model ``vmap`` cannot trace, they come from one backward pass per output and sample,
    with a ``RuntimeWarning`` (attribute ``jacobian_algorithm``).

    Args:
        objective: the empirical risk.
        theta: parameters (default: the model's current ones, copied).
        cache: keep each chunk's graph between products (default: one chunk only).
    """

    def __init__(
        self, objective: Objective, theta: torch.Tensor | None = None, *, cache: bool | None = None
    ) -> None:
        self.ggn = GGNOperator(objective, theta, cache=cache)
        self._second = _GGNSecondMoment(objective, self.ggn.theta, cache=cache)
        # Σ_G = (1/n) Σ_i G_i² − G·G, written in the operator algebra (G @ G is symmetric).
        super().__init__(self._second - self.ggn @ self.ggn)
        self.objective = objective
        self.theta = self.ggn.theta

    @property
    def jacobian_algorithm(self) -> str | None:
        """``"vmap"`` or ``"backward"`` (per-sample Jacobians); ``None`` before a product."""
        return self._second.jacobian_algorithm


@register_curvature(GGNVarianceOperator)
def ggn_variance(
    objective: Objective, theta: torch.Tensor | None = None, *, cache: bool | None = None
) -> GGNVarianceOperator:
    """The variance of per-sample GGN matrices as an operator (see :class:`GGNVarianceOperator`)."""
    return GGNVarianceOperator(objective, theta, cache=cache)
