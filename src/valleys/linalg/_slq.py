"""Eigenvalue densities by stochastic Lanczos quadrature (SLQ)."""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from valleys._checks import is_real
from valleys.errors import ArgumentTypeError, ArgumentValueError
from valleys.linalg._certify import (
    _check_choice,
    _check_count,
    _check_operator,
    _check_seed,
    _generator,
)
from valleys.linalg._krylov import _Lanczos, _ShortLanczos
from valleys.linalg._results import SpectralDensity
from valleys.linalg._trace import _probes
from valleys.operators._base import LinearOperator

__all__ = ["spectral_density"]

_REORTHOGONALIZE = ("full", "selective", "none")
_GRID_CHUNK = 256  # grid points per kernel evaluation: bounds memory at chunk * probes * m


def _check_grid(grid: Any) -> torch.Tensor:
    try:
        g = torch.as_tensor(grid, dtype=torch.float64).cpu()
    except (TypeError, ValueError, RuntimeError) as err:
        raise ArgumentTypeError(
            f"grid must be a 1-D sequence of numbers, got {type(grid).__name__}"
        ) from err
    if g.ndim != 1 or g.numel() == 0 or not torch.isfinite(g).all():
        raise ArgumentValueError(
            f"grid must be a non-empty 1-D array of finite numbers, got {tuple(g.shape)}"
        )
    return g


def spectral_density(
    op: LinearOperator,
    *,
    num_probes: int = 10,
    lanczos_steps: int = 80,
    grid: Any = None,
    num_points: int = 1000,
    sigma: float | None = None,
    seed: int | None = 0,
    reorthogonalize: str = "full",
    basis_device: str | torch.device | None = None,
) -> SpectralDensity:
    """Smoothed eigenvalue density of a symmetric operator by stochastic Lanczos quadrature.

    For each probe ``v = z / ‖z‖`` with Rademacher ``z``, ``m`` Lanczos steps with full
    reorthogonalization give ``T_m = S diag(θ) Sᵀ``; the Ritz values ``θ_j`` and the weights
    ``τ_j² = S_{1j}²`` form the ``m``-point Gauss quadrature rule of the spectral measure
    ``Σ_i (vᵀu_i)² δ(λ − λ_i)`` of ``A`` seen from ``v`` (exact for polynomials of degree
    ``< 2m``). Averaged over probes, its expectation is the spectral density
    ``(1/p) Σ_i δ(λ − λ_i)``; smoothing with a Gaussian kernel gives

        ``density(t) = mean_probes Σ_j τ_j² N(t; θ_j, σ²)``,

    which integrates to 1 (S. Ubaru, J. Chen, Y. Saad, "Fast estimation of tr(f(A)) via
    stochastic Lanczos quadrature", SIAM J. Matrix Anal. Appl. 38(4), 2017; B. Ghorbani,
    S. Krishnan, Y. Xiao, "An investigation into neural net optimization via Hessian eigenvalue
    density", ICML 2019). If the Krylov space of a probe becomes invariant (always when
    ``m >= p``) its run stops early and the rule is exact for that probe.

    Args:
        op: a symmetric :class:`~valleys.operators.LinearOperator` of size ``p``.
        num_probes: number of random probes; the density's noise falls like
            ``1/sqrt(num_probes)``.
        lanczos_steps: Lanczos steps (quadrature nodes) per probe, capped at ``p``; costs one
            matvec each, and ``p x lanczos_steps`` memory for the basis.
        grid: points at which to evaluate the density. Default: ``num_points`` points
            spanning the nodes plus ``3σ`` and a 5% margin on each side.
        num_points: size of the default grid.
        sigma: kernel width. Default ``1e-2 x`` the span of the nodes.
        seed: seed for the probes; same seed, same density.
        reorthogonalize: how the Lanczos basis is kept orthogonal over ``m`` steps.
            ``"full"`` (default): against the whole stored basis, ``p × m`` numbers and ``j``
            inner products at step ``j``. ``"selective"``: against the Ritz vectors that have
            converged only (Parlett & Scott 1979); the basis is still stored (on
            ``basis_device``) but only read when a Ritz pair converges, and the nodes agree
            with ``"full"`` to ``sqrt(eps)``. ``"none"``: the three-term recurrence alone,
            three vectors whatever ``m``; converged Ritz values then reappear as copies
            ("ghosts") that share their weight, so the density and the moments stay
            estimates of the same measure (Greenbaum 1989; Meurant & Strakoš 2006) while
            ``nodes`` hold duplicates. For long runs on large models.
        basis_device: where ``"full"`` and ``"selective"`` keep the basis (e.g. ``"cpu"``
            for a model on an accelerator). Default: with the operator.

    Returns:
        A :class:`~valleys.linalg.SpectralDensity`; ``moments(k)`` gives the
        quadrature estimates of ``tr(A^k) / p``.
    """
    t0 = time.perf_counter()
    _check_operator(op, "spectral_density")
    num_probes = _check_count(num_probes, "num_probes", 1)
    m = min(_check_count(lanczos_steps, "lanczos_steps", 1), op.size)
    if sigma is not None and (
        not is_real(sigma) or isinstance(sigma, bool)
        or not math.isfinite(sigma) or sigma <= 0
    ):
        raise ArgumentValueError(f"sigma must be a positive finite number or None, got {sigma!r}")
    if grid is None:
        num_points = _check_count(num_points, "num_points", 2)
    else:
        grid = _check_grid(grid)
    _check_seed(seed)
    reorthogonalize = _check_choice(reorthogonalize, _REORTHOGONALIZE, "reorthogonalize")
    from valleys.linalg._lanczos import _check_basis_device

    home = _check_basis_device(basis_device)

    gen = _generator(op.device, seed)
    nodes = torch.zeros(num_probes, m, dtype=torch.float64)
    weights = torch.zeros(num_probes, m, dtype=torch.float64)
    matvecs = basis_bytes = 0
    for i in range(num_probes):
        start = _probes(op, 1, "rademacher", gen)[:, 0]
        lz: _Lanczos | _ShortLanczos
        if reorthogonalize == "full":
            lz = _Lanczos(op, m, start, gen, basis_device=home)
            while not lz.step() and lz.m < m:
                pass
            theta, S = lz.ritz()
        else:
            lz = _ShortLanczos(op, m, start, selective=reorthogonalize == "selective",
                               basis_device=home)
            while not lz.step():
                pass
            theta, S = torch.linalg.eigh(lz.tridiagonal())
        basis_bytes = lz.basis_bytes
        # A probe that broke down early is padded with zero-weight copies of a real node, so
        # the padding changes neither the density, nor the moments, nor the node range.
        nodes[i] = theta[0]
        nodes[i, : lz.m] = theta
        weights[i, : lz.m] = S[0] ** 2
        matvecs += lz.matvecs

    lo, hi = float(nodes.min()), float(nodes.max())
    span = hi - lo
    if sigma is None:
        sigma = 1e-2 * span if span > 0 else 1e-2 * max(abs(hi), 1.0)
    sigma = float(sigma)
    if grid is None:
        pad = 3 * sigma + 0.05 * span
        grid = torch.linspace(lo - pad, hi + pad, num_points, dtype=torch.float64)

    flat_nodes, flat_weights = nodes.reshape(-1), weights.reshape(-1)
    norm = num_probes * sigma * math.sqrt(2 * math.pi)
    density = (
        torch.cat(
            [
                (flat_weights * torch.exp(-0.5 * ((t[:, None] - flat_nodes) / sigma) ** 2)).sum(1)
                for t in grid.split(_GRID_CHUNK)
            ]
        )
        / norm
    )
    return SpectralDensity(
        grid=grid,
        density=density,
        nodes=nodes,
        weights=weights,
        sigma=sigma,
        matvecs=matvecs,
        seed=None if seed is None else int(seed),
        wall_time=time.perf_counter() - t0,
        reorthogonalize=reorthogonalize,
        basis_bytes=basis_bytes,
    )
