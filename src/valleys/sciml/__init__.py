r"""Scientific machine learning: PDE problems with exact solutions and physics-informed losses.

Exact solutions (float64 oracles):

* :func:`burgers_exact` — viscous Burgers ``u_t + u u_x = ν u_xx``, ``u(x, 0) = −sin(πx)``, by
  the Cole–Hopf transform with a max-shifted trapezoid quadrature (stable for small ``ν``);
* :func:`kovasznay_exact` — Kovasznay's steady Navier–Stokes flow (Kovasznay 1948);
* :func:`poisson_exact` / :func:`poisson_source` — the manufactured solution
  ``u* = Π sin(πx_i)`` of ``−Δu = f`` on ``[0, 1]^d``, and the Deep Ritz energy
  :func:`ritz_energy` (E & Yu 2018).

Training objectives: a :class:`PINN` problem (:class:`BurgersPINN`, :class:`PoissonPINN`,
:class:`KovasznayPINN`) holds a model, seeded collocation points (:class:`Box`) and explicit
term weights; ``problem.objective()`` is the whole loss ``Σ_k w_k mean(r_k²)`` as a
:class:`valleys.Objective`, and ``problem.objective(terms=("pde",))`` one term, on the same
model, so that Hessian spectra of the terms can be compared. :func:`relative_l2` and
``problem.relative_l2()`` measure the error against the exact solution. See docs/sciml.md.
"""

from valleys.sciml._burgers import burgers_exact
from valleys.sciml._kovasznay import kovasznay_exact, kovasznay_lambda
from valleys.sciml._pinn import (
    PINN,
    BurgersPINN,
    KovasznayPINN,
    PoissonPINN,
    mlp,
    navier_stokes_residuals,
)
from valleys.sciml._poisson import poisson_exact, poisson_source, ritz_energy
from valleys.sciml._sampling import Box, relative_l2

__all__ = [
    "PINN",
    "Box",
    "BurgersPINN",
    "KovasznayPINN",
    "PoissonPINN",
    "burgers_exact",
    "kovasznay_exact",
    "kovasznay_lambda",
    "mlp",
    "navier_stokes_residuals",
    "poisson_exact",
    "poisson_source",
    "relative_l2",
    "ritz_energy",
]
