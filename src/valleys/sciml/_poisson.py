r"""The Poisson equation's manufactured solution and the Deep Ritz energy.

Problem: ``−Δu = f`` on ``Ω = [0, 1]^d``, ``u = 0`` on ``∂Ω``, with the manufactured solution
``u*(x) = Π_i sin(π x_i)`` and ``f = d π² u*`` (for ``d = 2`` the usual
``f = 2π² sin(πx) sin(πy)``).

Deep Ritz (E & Yu 2018, "The Deep Ritz method", arXiv 1710.00211) minimises the energy

.. math::  I(u) = ∫_Ω \big(\tfrac12 |∇u|^2 − f u\big)\,dx + β ∫_{∂Ω} (u − g)^2\, ds ,

whose minimiser over functions with ``u = g`` on ``∂Ω`` solves the PDE; at it
``I(u*) = −½ ∫_Ω f u* = −d π² / 2^{d+1}`` (``−π²/4`` for ``d = 2``). The integrals are
Monte-Carlo (or grid) means times ``|Ω|`` and ``|∂Ω|``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from valleys._checks import finite_real

__all__ = ["poisson_exact", "poisson_source", "ritz_energy", "ritz_energy_density"]


def poisson_exact(x: torch.Tensor) -> torch.Tensor:
    """``u*(x) = Π_i sin(π x_i)`` for points ``x`` of shape ``(n, d)``."""
    return torch.sin(math.pi * x).prod(dim=1)


def poisson_source(x: torch.Tensor) -> torch.Tensor:
    """``f = −Δu* = d π² u*``."""
    return x.shape[1] * math.pi ** 2 * poisson_exact(x)


def gradient_of(u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``∇_x u`` per point (``u`` of shape ``(n,)`` computed from ``x``), kept differentiable."""
    return torch.autograd.grad(u.sum(), x, create_graph=True)[0]


def laplacian_of(u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``Δu`` per point by nested autograd (``d`` extra backward passes)."""
    g = gradient_of(u, x)
    return sum(torch.autograd.grad(g[:, i].sum(), x, create_graph=True)[0][:, i]
               for i in range(x.shape[1]))


def ritz_energy_density(u_fn: Callable[[torch.Tensor], torch.Tensor],
                        x: torch.Tensor) -> torch.Tensor:
    """Per-point ``½|∇u|² − f u`` of the Deep Ritz energy (differentiable)."""
    x = x.detach().clone().requires_grad_(True)
    u = u_fn(x).reshape(-1)
    g = gradient_of(u, x)
    return 0.5 * (g * g).sum(1) - poisson_source(x.detach()) * u


def ritz_energy(u_fn: Callable[[torch.Tensor], torch.Tensor], interior: torch.Tensor,
                boundary: torch.Tensor | None = None, *, beta: float = 500.0,
                volume: float = 1.0, surface: float | None = None) -> torch.Tensor:
    r"""The Deep Ritz energy ``|Ω| mean_i(½|∇u|² − f u) + β |∂Ω| mean_j u(x_j)²`` of a function.

    ``u_fn`` maps points ``(n, d)`` to values ``(n,)`` or ``(n, 1)``; the interior points give
    the quadrature of the energy (Monte-Carlo samples or a midpoint grid), the boundary points
    that of the penalty (``g = 0``). ``surface`` defaults to ``2d`` (the unit cube).
    """
    beta = finite_real(beta, "beta")
    energy = volume * ritz_energy_density(u_fn, interior).mean()
    if boundary is None:
        return energy
    surface = 2.0 * interior.shape[1] if surface is None else surface
    return energy + beta * surface * (u_fn(boundary).reshape(-1) ** 2).mean()
