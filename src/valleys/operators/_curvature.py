"""Shared machinery of curvature operators built on an :class:`~valleys.Objective`.

A curvature matrix is a sum over data chunks. A subclass says how to prepare one chunk
(:meth:`CurvatureOperator._prepare`, typically a forward pass and a first-order graph) and how
to apply the chunk's share to a block of vectors (:meth:`CurvatureOperator._apply`). When the
data is a single chunk the prepared state is built once and reused by every product, which
removes the forward pass (and, for the Hessian, the first backward pass) from each matvec.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from valleys.errors import ArgumentTypeError, ArgumentValueError
from valleys.objective import Objective
from valleys.operators._base import LinearOperator

__all__ = ["CurvatureOperator"]

# A batched product over k vectors keeps k copies of a chunk's intermediate tensors alive, so
# blocks of vectors are sized to keep (vectors × samples per chunk) below this many.
_SAMPLE_VECTORS = 2**16


class CurvatureOperator(LinearOperator):
    """A symmetric operator defined by an objective at a fixed parameter vector ``θ``.

    Args:
        objective: the empirical risk.
        theta: flat parameters at which the operator is taken (default: the model's current
            parameters, copied now, so later training does not change the operator).
        cache: keep each chunk's prepared graph between products. Default: only when the data
            is one chunk (memory then scales with that chunk, as it already does for one pass).
    """

    def __init__(
        self,
        objective: Objective,
        theta: torch.Tensor | None = None,
        *,
        cache: bool | None = None,
    ) -> None:
        if not isinstance(objective, Objective):
            raise ArgumentTypeError(
                f"{type(self).__name__} needs a valleys.Objective, got {type(objective).__name__}; "
                "build one with valleys.Objective(model, loss, (X, Y))"
            )
        super().__init__(objective.dim, objective.dtype, objective.device, symmetric=True)
        self.objective = objective
        self.theta = objective.resolve_theta(theta).detach().clone()
        if not bool(torch.isfinite(self.theta).all()):
            raise ArgumentValueError(
                f"{type(self).__name__}: θ contains NaN or infinite values, so every curvature "
                "product would be meaningless; pass a finite θ (a diverged run's θ has no "
                "curvature to measure)"
            )
        self.cache = objective.num_chunks == 1 if cache is None else bool(cache)
        self._cached: list[Any] | None = None
        chunk_samples = min(objective.chunk_size or objective.n, objective.n)
        self.vector_block = max(1, _SAMPLE_VECTORS // chunk_samples)

    def _prepare(self, X: torch.Tensor, Y: torch.Tensor) -> Any:
        raise NotImplementedError

    def _prepare_chunk(self, index: int, X: torch.Tensor, Y: torch.Tensor) -> Any:
        """Prepare chunk number ``index`` (in the order of ``objective.chunks()``).

        Defaults to :meth:`_prepare`; an operator whose chunk state depends on more than the
        chunk's data (the Monte-Carlo Fisher draws labels from a per-chunk seed) overrides this.
        """
        return self._prepare(X, Y)

    def _apply(self, state: Any, V: torch.Tensor) -> torch.Tensor:
        """Apply one chunk's share to ``V`` of shape ``(k, p)`` (rows are vectors)."""
        raise NotImplementedError

    def _states(self) -> Iterator[Any]:
        if self.cache:
            if self._cached is None:
                self._cached = [self._prepare_chunk(index, X, Y)
                                for index, (X, Y) in enumerate(self.objective.chunks())]
            yield from self._cached
        else:
            for index, (X, Y) in enumerate(self.objective.chunks()):
                yield self._prepare_chunk(index, X, Y)

    def _rows(self, V: torch.Tensor) -> torch.Tensor:
        total = None
        for state in self._states():
            blocks = V.split(self.vector_block)
            part = torch.cat([self._apply(state, B) for B in blocks]) if len(blocks) > 1 else (
                self._apply(state, V)
            )
            total = part if total is None else total.add_(part)
        if total is None:  # every objective has at least one chunk of data
            raise RuntimeError("the curvature operator found no data to sum over")
        # A sharded objective sums the shards' partial products over ranks (one all-reduce).
        return self.objective.reduce(total, inputs=(V, self.theta))

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self._rows(V.T.contiguous()).T

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self._rows(v.unsqueeze(0)).squeeze(0)

    def _leaf(self) -> torch.Tensor:
        """A fresh autograd leaf holding ``θ`` (a view would tie graphs together)."""
        return self.theta.detach().requires_grad_(True)


def vjp_rows(
    outputs: torch.Tensor,
    inputs: torch.Tensor,
    cotangents: torch.Tensor,
    *,
    create_graph: bool = False,
) -> torch.Tensor:
    """Vector-Jacobian products for a block of cotangents (leading dimension ``k``).

    One cotangent goes through plain autograd; several through ``is_grads_batched`` (a vmap
    over the backward pass), which is much faster than a Python loop over them.
    """
    if cotangents.shape[0] == 1:
        out = torch.autograd.grad(
            outputs, inputs, cotangents[0], retain_graph=True, create_graph=create_graph
        )[0]
        return out.unsqueeze(0)
    return torch.autograd.grad(
        outputs,
        inputs,
        cotangents,
        retain_graph=True,
        create_graph=create_graph,
        is_grads_batched=True,
    )[0]
