"""Trace estimation from matvecs: Hutchinson, Hutch++ and the exact diagonal sum."""

from __future__ import annotations

import math
import time

import torch

from valleys.errors import ArgumentTypeError, ArgumentValueError
from valleys.linalg._certify import _check_choice, _check_count, _check_seed, _generator
from valleys.linalg._results import TraceResult
from valleys.operators._base import LinearOperator

__all__ = ["TRACE_METHODS", "TRACE_MIN_MATVECS", "trace"]

#: The trace estimators, and the fewest matvecs each random one needs (``exact`` uses ``p``).
TRACE_METHODS = ("hutch++", "hutchinson", "exact")
TRACE_MIN_MATVECS: dict[str, int] = {"hutch++": 3, "hutchinson": 2}
_DISTRIBUTIONS = ("rademacher", "gaussian")
_BLOCK = 64  # columns per matmat: bounds the memory of a block at 64 p-vectors
_MAX_EXACT = 20_000


def _probes(op: LinearOperator, n: int, distribution: str, gen: torch.Generator) -> torch.Tensor:
    shape = (op.size, n)
    if distribution == "gaussian":
        return torch.randn(shape, generator=gen, dtype=op.dtype, device=op.device)
    signs = torch.randint(0, 2, shape, generator=gen, device=op.device)
    return (2 * signs - 1).to(op.dtype)


def _matmat(op: LinearOperator, V: torch.Tensor) -> torch.Tensor:
    """``A V`` in blocks of at most ``_BLOCK`` columns, with a NaN/inf check.

    Each block is passed as a contiguous copy, so an operator that writes into its input cannot
    change the probes the estimate is formed with.
    """
    blocks = (V[:, j : j + _BLOCK] for j in range(0, V.shape[1], _BLOCK))
    out = torch.cat([op.matmat(B.clone(memory_format=torch.contiguous_format)) for B in blocks], 1)
    if not torch.isfinite(out).all():
        raise ArgumentValueError(f"the operator {op!r} produced NaN/inf; fix the model/loss first")
    return out


def _quadratic_forms(
    op: LinearOperator, n: int, distribution: str, gen: torch.Generator, Q: torch.Tensor | None
) -> torch.Tensor:
    """``n`` samples ``gᵀ P A P g`` (float64) with ``P = I − QQᵀ`` (``P = I`` when Q is None).

    Probes are drawn block by block so memory stays at a few blocks of p-vectors.
    """
    samples = []
    for j in range(0, n, _BLOCK):
        G = _probes(op, min(_BLOCK, n - j), distribution, gen)
        if Q is not None:
            W = G.to(Q.dtype)
            G = (W - Q @ (Q.T @ W)).to(op.dtype)
        samples.append((G * _matmat(op, G)).sum(dim=0, dtype=torch.float64))
    return torch.cat(samples).cpu()


def _mean_stderr(x: torch.Tensor) -> tuple[float, float]:
    n = x.numel()
    stderr = float(x.std(correction=1)) / math.sqrt(n) if n > 1 else math.nan
    return float(x.mean()), stderr


def trace(
    op: LinearOperator,
    method: str = "hutch++",
    *,
    num_matvecs: int = 100,
    seed: int | None = 0,
    distribution: str = "rademacher",
) -> TraceResult:
    """Estimate ``tr(A)`` of a square operator from matvecs.

    The methods:
        ``"hutchinson"``: ``mean_i z_iᵀ A z_i`` over ``num_matvecs`` random probes with
        ``E[z zᵀ] = I`` (M. F. Hutchinson, "A stochastic estimator of the trace of the influence
        matrix for Laplacian smoothing splines", 1989). Error ``O(‖A‖_F / sqrt(m))``; ``stderr``
        is the sample standard deviation over ``sqrt(m)``.

        ``"hutch++"``: the budget is split in thirds (R. A. Meyer, C. Musco, C. Musco,
        D. P. Woodruff, "Hutch++: Optimal stochastic trace estimation", SOSA 2021): a sketch
        ``S`` gives ``Q = qr(A S)``, ``tr(Qᵀ A Q)`` is computed exactly, and Hutchinson estimates
        the trace of the deflated ``(I − QQᵀ) A (I − QQᵀ)``. Error ``O(1/m)`` for PSD matrices
        and far smaller than Hutchinson's whenever the spectrum decays. ``stderr`` is that of
        the Hutchinson part (conditional on ``Q``), NaN when only one sample is left
        (``num_matvecs = 3``).

        ``"exact"``: the diagonal from ``p`` unit vectors applied in blocks; ``stderr = 0``.
        Refused for ``p > 20000``.

    Args:
        op: a square :class:`~valleys.operators.LinearOperator` (Hutch++ and the
            calibration of ``stderr`` assume nothing; symmetry is not required).
        method: ``"hutch++"``, ``"hutchinson"`` or ``"exact"``.
        num_matvecs: total matvec budget (ignored by ``"exact"``): ``>= 3`` for Hutch++,
            ``>= 2`` for Hutchinson (a standard error needs two samples).
        seed: seed for the probes; same seed, same estimate.
        distribution: ``"rademacher"`` (random signs, the lower-variance default) or
            ``"gaussian"``.

    Returns:
        A :class:`~valleys.linalg.TraceResult`.
    """
    t0 = time.perf_counter()
    if not isinstance(op, LinearOperator) or not op.dtype.is_floating_point:
        raise ArgumentTypeError(
            f"trace needs a valleys LinearOperator with a real floating dtype, got {op!r}; wrap "
            "a matrix in valleys.operators.DenseOperator or a function in LambdaOperator"
        )
    method = _check_choice(method, TRACE_METHODS, "method")
    distribution = _check_choice(distribution, _DISTRIBUTIONS, "distribution")
    _check_seed(seed)
    seed = None if seed is None else int(seed)
    p = op.size

    if method == "exact":
        if p > _MAX_EXACT:
            raise ArgumentValueError(
                f"method='exact' needs p = {p} matvecs, more than the limit {_MAX_EXACT}; "
                "use method='hutch++' with a num_matvecs budget instead"
            )
        total = torch.zeros((), dtype=torch.float64, device=op.device)
        for j in range(0, p, _BLOCK):
            idx = torch.arange(min(_BLOCK, p - j), device=op.device)
            E = torch.zeros(p, idx.numel(), dtype=op.dtype, device=op.device)
            E[j + idx, idx] = 1
            total += _matmat(op, E)[j + idx, idx].sum(dtype=torch.float64)
        return TraceResult(float(total), 0.0, p, method, seed, 0, time.perf_counter() - t0)

    gen = _generator(op.device, seed)
    if method == "hutchinson":
        m = _check_count(num_matvecs, "num_matvecs (hutchinson)", TRACE_MIN_MATVECS["hutchinson"])
        value, stderr = _mean_stderr(_quadratic_forms(op, m, distribution, gen, None))
        return TraceResult(value, stderr, m, method, seed, m, time.perf_counter() - t0)

    m = _check_count(num_matvecs, "num_matvecs (hutch++)", TRACE_MIN_MATVECS["hutch++"])
    n_sketch = m // 3
    n_hutch = m - 2 * n_sketch
    # Q = qr(A S): an orthonormal basis of A's dominant range (reduced QR; if n_sketch > p it
    # is a full basis, the deflated part is zero and the estimate is exact).
    # The QR runs in at least float32: half-precision operators have no QR kernel on the CPU,
    # and an orthonormal basis needs more digits than bfloat16 keeps.
    work = torch.promote_types(op.dtype, torch.float32)
    Q = torch.linalg.qr(_matmat(op, _probes(op, n_sketch, distribution, gen)).to(work)).Q
    low_rank = float((Q * _matmat(op, Q.to(op.dtype))).sum(dtype=torch.float64))
    residual, stderr = _mean_stderr(_quadratic_forms(op, n_hutch, distribution, gen, Q))
    return TraceResult(
        low_rank + residual,
        stderr,
        n_sketch + Q.shape[1] + n_hutch,
        method,
        seed,
        n_hutch,
        time.perf_counter() - t0,
    )
