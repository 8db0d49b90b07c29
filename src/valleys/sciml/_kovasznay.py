r"""Kovasznay flow: an exact steady solution of the 2-D incompressible Navier–Stokes equations.

Nondimensional steady Navier–Stokes, ``(u·∇)u + ∇p − (1/Re) Δu = 0``, ``∇·u = 0``, has for
every Reynolds number ``Re`` the solution (Kovasznay 1948, "Laminar flow behind a
two-dimensional grid", Proc. Cambridge Philos. Soc. 44)

.. math::

    λ = \frac{Re}{2} − \sqrt{\frac{Re^2}{4} + 4π^2}, \quad
    u = 1 − e^{λx}\cos(2πy), \quad v = \frac{λ}{2π} e^{λx}\sin(2πy), \quad
    p = \tfrac12 (1 − e^{2λx}),

(``p`` up to a constant). The usual PINN box is ``[−0.5, 1] × [−0.5, 1.5]`` with ``Re = 20``
and Dirichlet data from the exact velocity (DeepXDE's example).
"""

from __future__ import annotations

import math

import torch

from valleys._checks import positive_real

__all__ = ["kovasznay_exact", "kovasznay_lambda"]


def kovasznay_lambda(re: float) -> float:
    """``λ = Re/2 − sqrt(Re²/4 + 4π²)`` (negative for every ``Re > 0``)."""
    re = positive_real(re, "re", hint="the Reynolds number must be > 0")
    return re / 2 - math.sqrt(re * re / 4 + 4 * math.pi ** 2)


def kovasznay_exact(x: torch.Tensor, y: torch.Tensor, re: float = 20.0,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The exact velocity ``(u, v)`` and pressure ``p`` at ``(x, y)`` (differentiable)."""
    lam = kovasznay_lambda(re)
    e = torch.exp(lam * x)
    u = 1 - e * torch.cos(2 * math.pi * y)
    v = lam / (2 * math.pi) * e * torch.sin(2 * math.pi * y)
    p = 0.5 * (1 - torch.exp(2 * lam * x))
    return u, v, p
