"""Result records returned by the solvers in :mod:`valleys.linalg`.

All records are frozen dataclasses. ``to_dict()`` gives a JSON-friendly view: tensors become
lists of floats, non-finite floats become ``None`` (JSON has no NaN) and eigenvectors are dropped
(they are large and rarely worth serializing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from valleys._records import record_to_dict
from valleys.errors import ArgumentValueError

__all__ = ["EigshResult", "SpectralDensity", "TraceResult"]


# eq=False: the fields hold tensors, whose elementwise == would make the generated __eq__ raise.
@dataclass(frozen=True, eq=False)
class EigshResult:
    """Eigenpairs of a symmetric operator.

    Attributes:
        values: ``(k,)`` eigenvalue estimates (Ritz values): descending for ``which="largest"``,
            ascending for ``"smallest"``, by descending ``|λ|`` for ``"magnitude"``.
        vectors: ``(p, k)`` orthonormal eigenvector estimates, in the operator's dtype and device.
        residuals: ``(k,)`` residual norms ``‖A v_i − λ_i v_i‖``, recomputed from fresh products
            of the returned vectors (not the Lanczos recurrence, which low-precision products
            make lie), in the units of the values.
        error_bounds: ``(k,)`` bounds on the distance from each returned value to the nearest
            eigenvalue of the exact operator, in the units of the values, with the products'
            own rounding noise included: the smaller of the residual bound ``ρ_i`` (rigorous)
            and, where a gap is established from the Ritz values, the Kato–Temple bound
            ``ρ_i² / gap_i`` (not rigorous against eigenvalues the Krylov space has not
            separated yet; see :func:`~valleys.linalg.eigsh`), in either ``accuracy``.
        matvecs: operator applications the solver made (including the verification products).
        converged: whether every value met the requested accuracy: its residual
            (``accuracy="residual"``) or its Kato–Temple bound (``accuracy="value"``) within
            ``tol · |λ_i|``. A RuntimeWarning with :attr:`message` is issued when not.
        tol: the requested relative tolerance.
        which: ``"largest"``, ``"smallest"`` or ``"magnitude"``.
        method: ``"lanczos"``, ``"power"``, ``"dense"`` (every eigenpair, from the matrix) or
            ``"block-davidson"`` (:func:`~valleys.linalg.block_eigsh`).
        seed: seed of the random start vector (``None``: unseeded).
        restarts: number of thick restarts.
        wall_time: seconds spent in the solver.
        accuracy: what ``tol`` applied to, ``"residual"`` or ``"value"``.
        noise: the estimated rounding noise ``ν`` of one product with a unit vector (absolute),
            the floor below which no bound can go in the operator's dtype.
        message: why the solver stopped without converging (empty when it converged).
        basis_bytes: memory the solver's Krylov basis held (``(ncv + 1) · p`` entries of the
            basis dtype, twice that with an inner product), on ``basis_device``; 0 where no
            basis is kept (dense and power methods).
        basis_device: where the basis lived (``None``: with the operator).
    """

    values: torch.Tensor
    vectors: torch.Tensor
    residuals: torch.Tensor
    matvecs: int
    converged: bool
    tol: float
    which: str
    method: str
    seed: int | None
    restarts: int
    wall_time: float
    error_bounds: torch.Tensor | None = None
    accuracy: str = "residual"
    noise: float = 0.0
    message: str = ""
    basis_bytes: int = 0
    basis_device: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict of everything but ``vectors``."""
        return record_to_dict(self, drop=("vectors",))


@dataclass(frozen=True, eq=False)
class TraceResult:
    """A (stochastic) trace estimate.

    Attributes:
        value: the estimate of ``tr(A)``.
        stderr: its standard error (0 for ``"exact"``; NaN when a single random sample leaves
            no spread to measure).
        matvecs: operator applications used.
        method: ``"hutchinson"``, ``"hutch++"`` or ``"exact"``.
        seed: seed of the random probes.
        num_samples: number of random quadratic forms averaged (0 for ``"exact"``).
        wall_time: seconds spent.
    """

    value: float
    stderr: float
    matvecs: int
    method: str
    seed: int | None
    num_samples: int
    wall_time: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict of all fields."""
        return record_to_dict(self)


@dataclass(frozen=True, eq=False)
class SpectralDensity:
    """A smoothed eigenvalue density from stochastic Lanczos quadrature.

    Attributes:
        grid: ``(n,)`` points where the density is evaluated.
        density: ``(n,)`` density values; integrates to ~1 over a grid covering the spectrum.
        nodes: ``(num_probes, m)`` Gauss quadrature nodes (Ritz values) per probe.
        weights: ``(num_probes, m)`` quadrature weights per probe; each row sums to 1. Rows of
            probes whose Lanczos run stopped early are padded with zero weights.
        sigma: standard deviation of the Gaussian kernel.
        matvecs: operator applications used.
        seed: seed of the random probes.
        wall_time: seconds spent.
        reorthogonalize: ``"full"``, ``"selective"`` or ``"none"``, as run.
        basis_bytes: memory of one probe's stored basis (0 without one).
    """

    grid: torch.Tensor
    density: torch.Tensor
    nodes: torch.Tensor
    weights: torch.Tensor
    sigma: float
    matvecs: int
    seed: int | None
    wall_time: float
    reorthogonalize: str = "full"
    basis_bytes: int = 0

    def moments(self, k: int) -> float:
        """Quadrature estimate of the normalized spectral moment ``tr(A^k) / p``.

        Each probe's Gauss rule is exact for polynomials of degree ``< 2m``, so for small ``k``
        this is exactly the Hutchinson estimate ``mean_i v_iᵀ A^k v_i`` with unit probes.
        """
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise ArgumentValueError(f"moment order must be a non-negative integer, got {k!r}")
        per_probe = (self.weights * self.nodes.pow(k)).sum(dim=1)
        return float(per_probe.mean())

    def plot(self, ax: Any = None, log: bool = False, **kwargs: Any) -> Any:
        """Plot the density on ``ax`` (a new figure when ``None``) and return the Axes.

        Args:
            ax: a matplotlib Axes.
            log: use a logarithmic density axis (floored at 1e-8 of the peak, since the
                Gaussian tails underflow).
            **kwargs: passed to ``ax.plot``.
        """
        import matplotlib.pyplot as plt  # lazily: importing pyplot is slow and needs a backend

        if ax is None:
            _, ax = plt.subplots()
        grid = self.grid.detach().cpu().double().numpy()
        density = self.density.detach().cpu().double().numpy()
        ax.plot(grid, density, **kwargs)
        if log:
            peak = float(density.max()) if density.size else 1.0
            ax.set_yscale("log")
            ax.set_ylim(bottom=max(peak, 1e-300) * 1e-8)
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("density")
        return ax

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict of all fields."""
        return record_to_dict(self)
