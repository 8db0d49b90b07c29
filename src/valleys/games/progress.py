r"""Measures of progress toward a mixed Nash equilibrium.

* **Nikaidô–Isoda error** (:func:`ni_error`) of weighted particle measures,

  .. math:: NI(μ_x, μ_y) = \sup_{y'} ∫K(x, y')\,dμ_x(x) − \inf_{x'} ∫K(x', y)\,dμ_y(y) \ge 0,

  zero exactly at a mixed Nash equilibrium (Domingo-Enrich et al., NeurIPS 2020, arXiv
  2002.06277). The split ``sup − ∬K`` and ``∬K − inf`` are the two players' exploitabilities.
  The sup and inf are found by L-BFGS from many starting points at once (restarts), or on a
  grid in low dimension (optionally refined). An optimiser can only miss a better response, so
  the optimised value is a *lower bound* of the true error; grids and restarts tighten it.
* **Entropy-regularised duality gap** on a grid (:func:`regularized_gap_grid`), the gap
  ``max_q' L(p, q') − min_p' L(p', q)`` of the game at temperature ``τ`` (Ma & Ying, ICLR 2022,
  arXiv 2202.10947):
  ``τ log∫e^{φ_p/τ}dy + τ∫p log p + τ log∫e^{−ψ_q/τ}dx + τ∫q log q``; the closed form for the
  quadratic–bilinear game is :meth:`~valleys.games.payoffs.QuadraticBilinear.regularized_gap`.
* **Distances to a known equilibrium**: the Wasserstein-2 (Bures) distance between the
  Gaussian fit of a cloud and a Gaussian (:func:`gaussian_w2`), the first Fourier amplitude on
  the torus (:func:`fourier_amplitude`, zero for the uniform measure), and the exact W2 between
  two weighted point clouds via POT (:func:`wasserstein2`).
* **Exploitability curves**: :func:`ni_monitor` turns :func:`ni_error` into a monitor for
  :func:`valleys.games.solve`, so ``result.history`` holds the curve.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from valleys._checks import integer, positive_real
from valleys._records import record_to_dict
from valleys.errors import ArgumentValueError
from valleys.games.spaces import Euclidean, Space, Sphere, resolve_space

__all__ = [
    "NIError",
    "fourier_amplitude",
    "gaussian_fit",
    "gaussian_w2",
    "ni_error",
    "ni_monitor",
    "regularized_gap_grid",
    "torus_histogram",
    "wasserstein2",
]


@dataclass(frozen=True)
class NIError:
    """Nikaidô–Isoda error of two (weighted) particle measures.

    Attributes:
        value: ``sup_value − inf_value`` (a lower bound when found by optimisation).
        sup_value: ``sup_y' ∫K(x, y') dμ_x``; ``inf_value``: ``inf_x' ∫K(x', y) dμ_y``.
        payoff_value: ``∬K dμ_x dμ_y``.
        x_exploitability: ``sup_value − payoff_value`` (how much y gains by deviating).
        y_exploitability: ``payoff_value − inf_value`` (how much x gains by deviating).
        best_x, best_y: the best responses found.
        how: ``"optimize"`` or ``"grid"`` (``"grid+optimize"`` when refined).
    """

    value: float
    sup_value: float
    inf_value: float
    payoff_value: float
    x_exploitability: float
    y_exploitability: float
    best_x: torch.Tensor
    best_y: torch.Tensor
    how: str

    def to_dict(self) -> dict[str, Any]:
        return record_to_dict(self)


def _weights(w: torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor:
    if w is None:
        return torch.full((n,), 1.0 / n, dtype=like.dtype, device=like.device)
    if w.shape != (n,):
        raise ArgumentValueError(f"weights must have shape ({n},), got {tuple(w.shape)}")
    return w.to(like)


def _parametrize(space: Space, z: torch.Tensor) -> torch.Tensor:
    """Unconstrained ``z`` to a point of the space (the sphere by normalising)."""
    return z / z.norm(dim=-1, keepdim=True) if isinstance(space, Sphere) else z


def _starts(space: Space, particles: torch.Tensor, restarts: int,
            generator: torch.Generator) -> torch.Tensor:
    """Starting points: up to ``restarts`` particles plus as many random points."""
    n, d = particles.shape
    pick = torch.randperm(n, generator=generator, device=particles.device)[:restarts]
    own = particles[pick]
    if isinstance(space, Euclidean):
        spread = particles.std(0, unbiased=False) if n > 1 else torch.ones_like(particles[0])
        noise = torch.randn(restarts, d, generator=generator, dtype=particles.dtype,
                            device=particles.device)
        rand = particles.mean(0) + 2.0 * (spread + 1.0) * noise
    else:
        rand = space.uniform(restarts, d, generator=generator, dtype=particles.dtype,
                             device=particles.device)
    return torch.cat([own, rand], 0)


def _best_response(value_of: Callable[[torch.Tensor], torch.Tensor], space: Space,
                   starts: torch.Tensor, steps: int, sign: float) -> tuple[float, torch.Tensor]:
    """``max`` (sign=+1) or ``min`` (sign=−1) of ``value_of`` by batched L-BFGS from ``starts``."""
    with torch.no_grad():
        initial = value_of(_parametrize(space, starts))
    best_i = int(torch.argmax(sign * initial))
    best_value, best_point = float(initial[best_i]), _parametrize(space, starts)[best_i]
    if steps > 0:
        z = starts.detach().clone().requires_grad_(True)
        optimizer = torch.optim.LBFGS([z], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe",
                                      tolerance_grad=1e-12, tolerance_change=1e-15)

        def closure():
            optimizer.zero_grad()
            loss = -sign * value_of(_parametrize(space, z)).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            optimizer.step(closure)
        with torch.no_grad():
            points = space.retract(_parametrize(space, z.detach()))
            final = value_of(points)
        finite = torch.isfinite(final)
        if bool(finite.any()):
            masked = torch.where(finite, sign * final, torch.full_like(final, -math.inf))
            i = int(torch.argmax(masked))
            if sign * float(final[i]) > sign * best_value:
                best_value, best_point = float(final[i]), points[i]
    return best_value, best_point.detach()


def ni_error(payoff: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
             y: torch.Tensor, x_weights: torch.Tensor | None = None,
             y_weights: torch.Tensor | None = None, *, x_space: str | Space = "euclidean",
             y_space: str | Space = "euclidean", x_grid: torch.Tensor | None = None,
             y_grid: torch.Tensor | None = None, restarts: int = 16, steps: int = 50,
             seed: int = 0) -> NIError:
    """Nikaidô–Isoda error of ``(μ_x, μ_y)`` by best responses (see the module docs).

    Args:
        payoff: ``K(x, y) -> (n, m)``; ``x`` minimises.
        x, y: particles; ``x_weights``, ``y_weights``: their weights (default uniform).
        x_space, y_space: strategy spaces (best responses stay on them).
        x_grid, y_grid: candidate points ``(G, d)``; if given, the best response is taken over
            the grid and then refined by ``steps`` L-BFGS iterations from the ``restarts`` best
            grid points (``steps=0``: grid only).
        restarts: starting points drawn from the particles, plus as many random ones.
        steps: L-BFGS iterations (all starts move together).
        seed: seeds the random starting points.
    """
    if restarts < 1 or steps < 0:
        raise ArgumentValueError("restarts must be >= 1 and steps >= 0")
    xs, ys = resolve_space(x_space), resolve_space(y_space)
    x, y = x.detach(), y.detach()
    wx, wy = _weights(x_weights, x.shape[0], x), _weights(y_weights, y.shape[0], y)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    with torch.no_grad():
        payoff_value = float(wx @ payoff(x, y) @ wy)

    def against_x(candidates):  # ∫K(x, y') dμ_x for each candidate y'
        return wx @ payoff(x, candidates)

    def against_y(candidates):  # ∫K(x', y) dμ_y for each candidate x'
        return payoff(candidates, y) @ wy

    how = "optimize"
    if y_grid is not None or x_grid is not None:
        if y_grid is None or x_grid is None:
            raise ArgumentValueError("pass both x_grid and y_grid, or neither")
        how = "grid" if steps == 0 else "grid+optimize"
        with torch.no_grad():
            top_y = torch.topk(against_x(y_grid), min(restarts, y_grid.shape[0])).indices
            top_x = torch.topk(-against_y(x_grid), min(restarts, x_grid.shape[0])).indices
        y_starts, x_starts = y_grid[top_y], x_grid[top_x]
    else:
        y_starts = _starts(ys, y, restarts, generator)
        x_starts = _starts(xs, x, restarts, generator)
    sup_value, best_y = _best_response(against_x, ys, y_starts, steps, +1.0)
    inf_value, best_x = _best_response(against_y, xs, x_starts, steps, -1.0)
    return NIError(
        value=sup_value - inf_value, sup_value=sup_value, inf_value=inf_value,
        payoff_value=payoff_value, x_exploitability=sup_value - payoff_value,
        y_exploitability=payoff_value - inf_value, best_x=best_x, best_y=best_y, how=how,
    )


def ni_monitor(payoff, **kwargs: Any) -> Callable[[Any], dict[str, float]]:
    """A :func:`~valleys.games.solve` monitor recording the NI error and both exploitabilities.

    ``kwargs`` go to :func:`ni_error` (spaces, grids, restarts, steps, seed).
    """

    def monitor(state) -> dict[str, float]:
        result = ni_error(payoff, state.x, state.y, state.x_weights, state.y_weights, **kwargs)
        return {"ni_error": result.value, "x_exploitability": result.x_exploitability,
                "y_exploitability": result.y_exploitability}

    return monitor


def regularized_gap_grid(payoff, p: torch.Tensor, q: torch.Tensor, x_grid: torch.Tensor,
                         y_grid: torch.Tensor, temperature: float, x_cell: float,
                         y_cell: float) -> float:
    r"""Entropy-regularised duality gap of cell masses ``p``, ``q`` on grids (midpoint rule).

    With densities ``p_i/h_x`` and ``q_j/h_y`` (cell volumes ``h``), ``φ_j = Σ_i p_i K_ij``,
    ``ψ_i = Σ_j K_ij q_j``:

    .. math:: τ\log Σ_j h_y e^{φ_j/τ} + τΣ_i p_i\log\frac{p_i}{h_x}
              + τ\log Σ_i h_x e^{−ψ_i/τ} + τΣ_j q_j\log\frac{q_j}{h_y} .

    This is exactly ``max_q' L − min_p' L`` of the discretised game, hence ``>= 0``, and zero
    only at its equilibrium.
    """
    if not temperature > 0:
        raise ArgumentValueError("the regularised gap needs temperature > 0")
    if not (x_cell > 0 and y_cell > 0):
        raise ArgumentValueError("cell volumes must be > 0")
    for name, mass, grid in (("p", p, x_grid), ("q", q, y_grid)):
        if mass.shape != (grid.shape[0],):
            raise ArgumentValueError(f"{name} must hold one mass per grid point ({grid.shape[0]})")
        if bool((mass < 0).any()) or abs(float(mass.sum()) - 1.0) > 1e-6:
            raise ArgumentValueError(f"{name} must be non-negative masses summing to 1")
    tau = float(temperature)
    with torch.no_grad():
        K = payoff(x_grid, y_grid)
        phi, psi = p @ K, K @ q
        gap = (tau * (torch.logsumexp(phi / tau, 0) + math.log(y_cell))
               + tau * torch.special.xlogy(p, p / x_cell).sum()
               + tau * (torch.logsumexp(-psi / tau, 0) + math.log(x_cell))
               + tau * torch.special.xlogy(q, q / y_cell).sum())
    return float(gap)


def torus_histogram(x: torch.Tensor, bins: int, weights: torch.Tensor | None = None, *,
                    period: float = 2 * math.pi) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Cell masses of 1-D torus particles on ``bins`` equal cells: ``(masses, centres, h)``."""
    if x.ndim != 2 or x.shape[1] != 1:
        raise ArgumentValueError(
            f"torus_histogram handles 1-D particles (n, 1), got {tuple(x.shape)}")
    bins = integer(bins, "bins", minimum=1)
    period = positive_real(period, "period")
    w = _weights(weights, x.shape[0], x)
    h = period / bins
    index = torch.clamp((torch.remainder(x[:, 0], period) / h).long(), 0, bins - 1)
    masses = torch.zeros(bins, dtype=x.dtype, device=x.device).index_add_(0, index, w)
    centres = (torch.arange(bins, dtype=x.dtype, device=x.device) + 0.5) * h
    return masses, centres[:, None], h


def gaussian_fit(x: torch.Tensor, weights: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean and covariance ``(m, Σ)`` of a cloud (the population covariance)."""
    w = _weights(weights, x.shape[0], x)
    mean = w @ x
    centred = x - mean
    return mean, (centred * w[:, None]).T @ centred


def _sqrtm_psd(S: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(S)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def gaussian_w2(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor,
                weights: torch.Tensor | None = None) -> float:
    r"""W2 between the Gaussian fit ``N(m, Σ)`` of a cloud and ``N(mean, cov)`` (Bures formula).

    ``W2² = |m − mean|² + tr(Σ + C − 2(C^{1/2} Σ C^{1/2})^{1/2})``.
    """
    m, S = gaussian_fit(x, weights)
    mean, cov = mean.to(x), cov.to(x)
    root = _sqrtm_psd(cov)
    cross = _sqrtm_psd(root @ S @ root)
    value = (m - mean).square().sum() + torch.trace(S + cov - 2 * cross)
    return float(value.clamp_min(0).sqrt())


def fourier_amplitude(x: torch.Tensor, weights: torch.Tensor | None = None, *,
                      period: float = 2 * math.pi) -> float:
    """``(Σ_k |Σ_i w_i e^{2πi x_ik/period}|²)^{1/2}``: zero for the uniform measure on the torus."""
    w = _weights(weights, x.shape[0], x)
    angle = 2 * math.pi * x / period
    return float(((w @ torch.cos(angle)) ** 2 + (w @ torch.sin(angle)) ** 2).sum().sqrt())


def wasserstein2(x: torch.Tensor, target: torch.Tensor, x_weights: torch.Tensor | None = None,
                 target_weights: torch.Tensor | None = None) -> float:
    """Exact W2 between two weighted point clouds (POT's network simplex, ``ot.emd2``)."""
    import ot  # deferred: POT takes ~0.3-1 s to import, too much for `import valleys`

    a = _weights(x_weights, x.shape[0], x).detach().cpu().double().numpy()
    b = _weights(target_weights, target.shape[0], target).detach().cpu().double().numpy()
    a, b = a / a.sum(), b / b.sum()
    cost = ot.dist(x.detach().cpu().double().numpy(), target.detach().cpu().double().numpy())
    return float(math.sqrt(max(ot.emd2(a, b, cost, numItermax=1_000_000), 0.0)))

