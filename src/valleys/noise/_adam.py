r"""Adam's effective gradient noise: preconditioned and exponentially averaged.

Adam moves by ``−η m̂/(√v̂ + δ)`` with ``m ← β₁m + (1−β₁)g_b`` and ``v ← β₂v + (1−β₂)g_b²``.
Near a fixed θ, with the preconditioner ``P = diag(√v + δ)`` frozen (``v`` averages over
``~1/(1−β₂)`` steps, far longer than ``m``), the mini-batch noise ``ξ_b = g_b − g`` reaches the
update as ``P^{-1} m_ξ`` with ``m_ξ = (1−β₁) Σ_k β₁^k ξ_{t−k}``. For i.i.d. batches of covariance
``Σ_B = c·C`` (:mod:`valleys.noise._minibatch`) its stationary covariance is

.. math::  Σ_{Adam} = \frac{1−β₁}{1+β₁}\, P^{-1} Σ_B P^{-1}

(``Σ_k (1−β₁)²β₁^{2k} = (1−β₁)/(1+β₁)``), against ``Σ_B`` for SGD's update ``−η g_b``. Zhou et
al. (NeurIPS 2020) argue that ``P^{-1}`` makes the noise less anisotropic and the averaging
makes it lighter-tailed; :func:`adam_noise_samples` gives the samples to measure the latter with
:func:`valleys.noise.tail_index`.

``v`` itself: at a fixed θ the stationary value of the EMA of ``g_b²`` is
``E[g_b²] = g² + c·diag(C)`` (:func:`stationary_second_moment`), which stands in for the
optimizer's state when it is not available.
"""

from __future__ import annotations

import torch

from valleys._checks import is_real
from valleys.errors import ArgumentTypeError, ArgumentValueError
from valleys.noise._minibatch import noise_factor
from valleys.objective import Objective
from valleys.operators._base import LambdaOperator, LinearOperator

__all__ = [
    "adam_noise_covariance",
    "adam_noise_samples",
    "averaging_factor",
    "stationary_second_moment",
]


def averaging_factor(beta1: float) -> float:
    """``(1−β₁)/(1+β₁)``: the variance left by Adam's EMA of i.i.d. noise."""
    if (isinstance(beta1, bool) or not is_real(beta1)
            or not 0.0 <= beta1 < 1.0):
        raise ArgumentValueError(f"beta1 must lie in [0, 1), got {beta1!r}")
    return (1.0 - beta1) / (1.0 + beta1)


def stationary_second_moment(
    objective: Objective,
    theta: torch.Tensor | None = None,
    *,
    batch_size: int,
    replacement: bool = False,
) -> torch.Tensor:
    """``E[g_b²] = g² + c·diag(C)`` elementwise, the fixed point of Adam's ``v`` at θ."""
    theta = objective.resolve_theta(theta)
    factor = noise_factor(objective.n, batch_size, replacement=replacement)
    total = torch.zeros(objective.dim, dtype=objective.dtype, device=objective.device)
    squares = torch.zeros_like(total)
    for G in objective.iter_per_sample_gradients(theta):
        total += G.sum(0)
        squares += G.pow(2).sum(0)
    total, squares = objective.reduce(torch.stack([total, squares]), inputs=(theta,))
    g = total / objective.n
    variance = squares / objective.n - g**2
    return g**2 + factor * variance.clamp_min(0)


def _preconditioner(v: torch.Tensor, delta: float) -> torch.Tensor:
    if not isinstance(v, torch.Tensor) or v.ndim != 1:
        raise ArgumentTypeError(
            "v must be a 1-D tensor (Adam's second-moment estimate, one per parameter)")
    if bool((v < 0).any()):
        raise ArgumentValueError("v must be non-negative (it is an average of squared gradients)")
    if delta < 0:
        raise ArgumentValueError(f"delta must be non-negative, got {delta}")
    return v.sqrt() + delta


def adam_noise_covariance(
    noise_cov: LinearOperator, v: torch.Tensor, *, beta1: float = 0.9, delta: float = 1e-8
) -> LinearOperator:
    """``((1−β₁)/(1+β₁)) P^{-1} Σ_B P^{-1}``, ``P = diag(√v + δ)``, as a symmetric operator.

    ``noise_cov`` is SGD's ``Σ_B`` (:func:`valleys.noise.noise_covariance` or any operator).
    """
    if not isinstance(noise_cov, LinearOperator):
        raise ArgumentTypeError("noise_cov must be a valleys LinearOperator")
    if v.shape != (noise_cov.size,):
        raise ArgumentValueError(f"v must have shape ({noise_cov.size},), got {tuple(v.shape)}")
    inv = 1.0 / _preconditioner(v.to(noise_cov.device, noise_cov.dtype), delta)
    scale = averaging_factor(beta1)

    def matvec(x: torch.Tensor) -> torch.Tensor:
        return scale * inv * noise_cov.matvec(inv * x)

    return LambdaOperator(matvec, noise_cov.size, noise_cov.dtype, noise_cov.device)


def adam_noise_samples(
    noise: torch.Tensor,
    v: torch.Tensor | None = None,
    *,
    beta1: float = 0.9,
    delta: float = 1e-8,
    average: bool = True,
    burn_in: int | None = None,
) -> torch.Tensor:
    """Adam's effective noise from a sequence of i.i.d. mini-batch noise samples.

    Args:
        noise: ``(T, p)`` samples ``ξ_t = g_{b_t} − g`` in the order the batches are drawn.
        v: second moment for the preconditioner ``P = diag(√v + δ)`` (``None``: no
            preconditioning, only the averaging).
        beta1: the averaging ``m_t = β₁ m_{t−1} + (1−β₁) ξ_t`` (``m_0 = 0``).
        average: apply the averaging (``False``: only ``P^{-1} ξ_t``).
        burn_in: averaged states to drop at the start (default ``⌈5/(1−β₁)⌉``, so ``m_0 = 0`` is
            forgotten to ``β₁^{burn_in}``).

    Returns ``P^{-1} m_t`` (or ``P^{-1} ξ_t``) for the kept steps; consecutive averaged rows are
    correlated over about ``1/(1−β₁)`` steps.
    """
    if not isinstance(noise, torch.Tensor) or noise.ndim != 2:
        raise ArgumentValueError("noise must be a tensor of shape (steps, p)")
    out = noise
    if average:
        averaging_factor(beta1)
        burn = int(-(-5 // (1.0 - beta1))) if burn_in is None else int(burn_in)
        if burn >= noise.shape[0]:
            raise ArgumentValueError(
                f"burn_in={burn} leaves none of the {noise.shape[0]} steps; pass more noise samples"
            )
        out = _ema(noise, beta1)[burn:]
    if v is not None:
        if v.shape != (noise.shape[1],):
            raise ArgumentValueError(f"v must have shape ({noise.shape[1]},), got {tuple(v.shape)}")
        out = out / _preconditioner(v.to(out.device, out.dtype), delta)
    return out


def _ema(x: torch.Tensor, beta: float, block: int = 256) -> torch.Tensor:
    """``m_t = β m_{t−1} + (1−β) x_t`` from ``m_{−1} = 0``, in blocks of rows.

    Within a block ``m = K x_block + β^{1..L} m_prev`` with the lower-triangular kernel
    ``K_{ts} = (1−β) β^{t−s}``: one product per block instead of a Python step per row.
    """
    L = min(block, x.shape[0])
    steps = torch.arange(L, dtype=x.dtype, device=x.device)
    lag = steps[:, None] - steps[None, :]
    kernel = torch.where(lag >= 0, (1 - beta) * beta ** lag.clamp_min(0), 0.0)
    carry_weights = beta ** (steps + 1)
    out, prev = [], torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
    for start in range(0, x.shape[0], L):
        chunk = x[start : start + L]
        m = kernel[: len(chunk), : len(chunk)] @ chunk + carry_weights[: len(chunk), None] * prev
        out.append(m)
        prev = m[-1]
    return torch.cat(out)
