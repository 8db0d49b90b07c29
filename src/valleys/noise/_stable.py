r"""α-stable random variables in torch, by the Chambers–Mallows–Stuck method.

A standard α-stable variable ``S_α(1, β, 0)`` (scipy's default ``S1`` parameterization, the one
of ``scipy.stats.levy_stable``) has characteristic function
``exp(−|t|^α (1 − iβ sign(t) tan(πα/2)))`` for ``α ≠ 1``; the symmetric case ``β = 0`` is
``exp(−|t|^α)``, so ``α = 2`` is a Gaussian of variance 2 and ``α = 1`` a standard Cauchy.

With ``V ~ U(−π/2, π/2)`` and ``W ~ Exp(1)`` independent (J. M. Chambers, C. L. Mallows,
B. W. Stuck, "A method for simulating stable random variables", JASA 71, 1976; the form below is
Weron's 1996 correction):

* ``α ≠ 1``: ``X = S · sin(α(V + B)) / cos(V)^{1/α} · (cos(V − α(V + B)) / W)^{(1−α)/α}``
  with ``B = arctan(β tan(πα/2))/α`` and ``S = (1 + β² tan²(πα/2))^{1/(2α)}``;
* ``α = 1``: ``X = (2/π) [(π/2 + βV) tan V − β log((π/2) W cos V / (π/2 + βV))]``.

A rotationally invariant (isotropic) α-stable vector is sub-Gaussian: ``X = A^{1/2} G`` with
``A ~ S_{α/2}(cos(πα/4)^{2/α}, 1, 0)`` and ``G ~ N(0, 2 I)`` (Samorodnitsky & Taqqu 1994,
Prop. 2.5.5); its characteristic function is ``exp(−‖t‖^α)``, so every coordinate is a
standard symmetric α-stable variable.
"""

from __future__ import annotations

import math

import torch

from valleys._checks import is_integral, is_real
from valleys.errors import ArgumentTypeError, ArgumentValueError

__all__ = ["isotropic_stable", "stable_rvs"]


def _check_alpha(alpha: float, *, low: float = 0.0) -> float:
    if not is_real(alpha) or not low < float(alpha) <= 2.0:
        raise ArgumentValueError(f"the stability index α must lie in ({low:g}, 2], got {alpha!r}")
    return float(alpha)


def _check_beta(beta: float) -> float:
    if not is_real(beta) or not -1.0 <= float(beta) <= 1.0:
        raise ArgumentValueError(f"the skewness β must lie in [−1, 1], got {beta!r}")
    return float(beta)


def _size(shape: int | tuple[int, ...]) -> tuple[int, ...]:
    if is_integral(shape):
        shape = (int(shape),)
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ArgumentValueError(f"shape must have non-negative entries, got {shape}")
    return shape


def stable_rvs(
    alpha: float,
    shape: int | tuple[int, ...],
    *,
    beta: float = 0.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Samples of the standard α-stable law ``S_α(1, β, 0)`` (CMS method; see module docstring).

    Args:
        alpha: stability index in ``(0, 2]``; smaller means heavier tails.
        shape: shape of the returned tensor.
        beta: skewness in ``[−1, 1]`` (0: symmetric).
        generator: a ``torch.Generator`` on ``device`` for reproducible draws.
        dtype, device: of the result (the uniform and exponential draws are made there).

    The parameterization is scipy's ``S1`` (``levy_stable(alpha, beta)``); for ``β = 0`` it is
    also ``S0``. Multiply by a scale ``σ`` for ``S_α(σ, β, 0)`` (``α ≠ 1``).
    """
    alpha, beta = _check_alpha(alpha), _check_beta(beta)
    if not dtype.is_floating_point:
        raise ArgumentTypeError(f"dtype must be a floating dtype, got {dtype}")
    shape = _size(shape)
    if generator is not None and device is None:
        device = generator.device
    half_pi = math.pi / 2
    # Draw V away from ±π/2 exactly, where cos V = 0 would give inf·0.
    u = torch.rand(shape, generator=generator, dtype=dtype, device=device)
    tiny = torch.finfo(dtype).eps
    V = (u.clamp(tiny, 1 - tiny) - 0.5) * math.pi
    W = -torch.log1p(-torch.rand(shape, generator=generator, dtype=dtype, device=device)
                     .clamp(max=1 - tiny))
    W = W.clamp_min(torch.finfo(dtype).tiny)
    if alpha == 1.0:
        a = half_pi + beta * V
        return (a * torch.tan(V) - beta * torch.log(half_pi * W * torch.cos(V) / a)) / half_pi
    zeta = beta * math.tan(half_pi * alpha)
    B = math.atan(zeta) / alpha
    S = (1.0 + zeta**2) ** (1.0 / (2.0 * alpha))
    return (
        S
        * torch.sin(alpha * (V + B))
        / torch.cos(V).pow(1.0 / alpha)
        * (torch.cos(V - alpha * (V + B)) / W).pow((1.0 - alpha) / alpha)
    )


def isotropic_stable(
    alpha: float,
    num: int,
    dim: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``num`` rotationally invariant α-stable vectors in ``R^dim``, shape ``(num, dim)``.

    Characteristic function ``exp(−‖t‖^α)`` (sub-Gaussian construction, module docstring);
    every coordinate is ``S_α(1, 0, 0)`` but the coordinates are dependent (they share one big
    jump), unlike ``stable_rvs(alpha, (num, dim))`` whose coordinates are independent.
    """
    alpha = _check_alpha(alpha)
    if generator is not None and device is None:
        device = generator.device
    gauss = torch.randn((num, dim), generator=generator, dtype=dtype, device=device)
    gauss = gauss * math.sqrt(2.0)
    if alpha == 2.0:
        return gauss
    scale = math.cos(math.pi * alpha / 4.0) ** (2.0 / alpha)
    A = scale * stable_rvs(alpha / 2.0, (num, 1), beta=1.0, generator=generator, dtype=dtype,
                           device=device)
    return A.clamp_min(0.0).sqrt() * gauss
