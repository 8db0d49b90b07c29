"""The diagonal of an operator from matvecs: Hutchinson's estimator and exact unit vectors."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from valleys._checks import integer, seed_value
from valleys._records import record_to_dict
from valleys.errors import ArgumentTypeError, ArgumentValueError
from valleys.operators._base import LinearOperator

__all__ = ["DiagonalResult", "diagonal"]

_METHODS = ("hutchinson", "exact")
_BLOCK = 64  # vectors per matmat: bounds the memory of a block at 64 p-vectors
_MAX_EXACT = 20_000


# eq=False: the fields hold tensors, whose elementwise == would make the generated __eq__ raise.
@dataclass(frozen=True, eq=False)
class DiagonalResult:
    """An estimate of ``diag(A)``.

    Attributes:
        values: ``(p,)`` float64 estimate of the diagonal, on the operator's device.
        stderr: ``(p,)`` float64 standard error of each entry: the sample standard deviation of
            its ``m`` terms over ``sqrt(m)`` for ``"hutchinson"``; zeros for ``"exact"``.
        matvecs: operator applications used.
        method: ``"hutchinson"`` or ``"exact"``.
        seed: seed of the random probes (``None``: unseeded or ``"exact"``).
        wall_time: seconds spent.
    """

    values: torch.Tensor
    stderr: torch.Tensor
    matvecs: int
    method: str
    seed: int | None
    wall_time: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict of all fields (tensors become lists)."""
        return record_to_dict(self)


def _products(op: LinearOperator, V: torch.Tensor) -> torch.Tensor:
    """``A V`` for a block, refused when the operator returns NaN/inf."""
    out = op.matmat(V.clone(memory_format=torch.contiguous_format))
    if not bool(torch.isfinite(out).all()):
        raise ArgumentValueError(f"the operator {op!r} produced NaN/inf; fix the model/loss first")
    return out


def diagonal(
    op: LinearOperator,
    method: str = "hutchinson",
    *,
    num_matvecs: int = 100,
    seed: int | None = 0,
) -> DiagonalResult:
    r"""Estimate the diagonal of a square operator from matvecs.

    The methods:
        ``"hutchinson"``: with ``m = num_matvecs`` Rademacher probes ``z_k`` (independent random
        signs, so ``z_k ⊙ z_k = 1``),

        .. math::  \widehat{\operatorname{diag}}(A) = \frac1m \sum_{k=1}^m z_k ⊙ (A z_k),

        (Bekas, Kokiopoulou & Saad, "An estimator for the diagonal of a matrix", Applied
        Numerical Mathematics 57, 2007). Entry ``j`` of one term is
        ``A_jj + Σ_{l≠j} A_jl z_j z_l``: unbiased, with variance ``Σ_{l≠j} A_jl²``, so the error
        is ``O(‖A_{j,:}‖ / sqrt(m))`` per entry and small where ``A`` is diagonally dominant.
        ``stderr`` is each entry's sample standard deviation over ``sqrt(m)``.

        ``"exact"``: ``A_jj = e_jᵀ A e_j`` from the ``p`` unit vectors, applied in blocks;
        ``stderr = 0``. Refused for ``p > 20000``.

    Args:
        op: a square :class:`~valleys.operators.LinearOperator` (symmetry is not required).
        method: ``"hutchinson"`` or ``"exact"``.
        num_matvecs: number of probes ``m >= 2`` of ``"hutchinson"`` (a standard error needs two);
            ignored by ``"exact"``.
        seed: seed for the probes (drawn on the operator's device); same seed, same estimate.

    Returns:
        A :class:`DiagonalResult`.
    """
    t0 = time.perf_counter()
    if not isinstance(op, LinearOperator) or not op.dtype.is_floating_point:
        raise ArgumentTypeError(
            f"diagonal needs a valleys LinearOperator with a real floating dtype, got {op!r}; "
            "wrap a matrix in valleys.operators.DenseOperator or a function in LambdaOperator")
    if method not in _METHODS:
        raise ArgumentValueError(f"method must be one of {_METHODS}, got {method!r}")
    p = op.size
    if method == "exact":
        if p > _MAX_EXACT:
            raise ArgumentValueError(
                f"method='exact' needs p = {p} matvecs, more than the limit {_MAX_EXACT}; use "
                "method='hutchinson' with a num_matvecs budget instead")
        values = torch.empty(p, dtype=torch.float64, device=op.device)
        for j in range(0, p, _BLOCK):
            idx = torch.arange(min(_BLOCK, p - j), device=op.device)
            E = torch.zeros(p, idx.numel(), dtype=op.dtype, device=op.device)
            E[j + idx, idx] = 1
            values[j + idx] = _products(op, E)[j + idx, idx].double()
        return DiagonalResult(values, torch.zeros_like(values), p, method, None,
                              time.perf_counter() - t0)

    m = integer(num_matvecs, "num_matvecs (hutchinson)", minimum=2)
    if seed is not None:
        seed = seed_value(seed)
    gen = torch.Generator(device=op.device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    # Mean and sum of squared deviations per entry, merged block by block (Chan, Golub &
    # LeVeque's pairwise update): no (p × m) array, and no cancellation when |mean| ≫ spread.
    count = 0
    mean = torch.zeros(p, dtype=torch.float64, device=op.device)
    m2 = torch.zeros(p, dtype=torch.float64, device=op.device)
    for j in range(0, m, _BLOCK):
        b = min(_BLOCK, m - j)
        Z = (2 * torch.randint(0, 2, (p, b), generator=gen, device=op.device) - 1).to(op.dtype)
        terms = (Z * _products(op, Z)).double()  # (p, b): z_k ⊙ A z_k
        block_mean = terms.mean(1)
        block_m2 = ((terms - block_mean[:, None]) ** 2).sum(1)
        delta = block_mean - mean
        total = count + b
        mean = mean + delta * (b / total)
        m2 = m2 + block_m2 + delta**2 * (count * b / total)
        count = total
    stderr = (m2 / (m - 1)).sqrt() / math.sqrt(m)
    return DiagonalResult(mean, stderr, m, method, seed, time.perf_counter() - t0)
