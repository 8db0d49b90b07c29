r"""Mei–Montanari–Nguyen's isotropic-Gaussian example: particles versus a 1-D PDE in ``r = ‖w‖``.

**Model** (Mei, Montanari & Nguyen, "A mean field view of the landscape of two-layer neural
networks", PNAS 2018, §"isotropic Gaussians"). Labels ``y = ±1`` with probability ½ each and
``x | y ~ N(0, s_y² I_d)``, ``s_{±} = 1 ± Δ``. The network is ``ŷ(x) = (1/N) Σ_j σ(w_jᵀx)``
with a fixed bounded piecewise-linear ``σ``: ``σ(t) = s_0`` for ``t ≤ t_1``, ``s_1`` for
``t ≥ t_2``, linear in between. The risk is ``R = E(y − ŷ(x))²`` and, with
``V(w) = −E[y σ(wᵀx)]``, ``U(w,w') = E[σ(wᵀx) σ(w'ᵀx)]`` and
``Ψ(w; ρ) = V(w) + ∫ U(w,w') ρ(dw')``, the distributional dynamics (MMN eq. 7 with
``ξ = ½``) are ``∂_t ρ = ∇·(ρ ∇Ψ(·; ρ))``. Particles follow ``ẇ_j = −∇Ψ(w_j; ρ̂)`` with
``∇Ψ(w; ρ̂) = E[(ŷ(x) − y) σ'(wᵀx) x]`` (``N/2`` times the parameter gradient of ``R``),
estimated here from a fresh Gaussian batch every step (online SGD, as in MMN).

**Reduction to one dimension** (derived here; MMN state it but the formulas were not
available to us). Everything is invariant under rotations of ``w``, so a rotation-invariant
``ρ_0`` stays rotation-invariant; then ``∇Ψ(w; ρ) = ∂_rΨ̄(r; ρ̄) w/r`` is radial, each particle
moves along its ray with ``ṙ = −∂_rΨ̄(r; ρ̄)``, and the law ``ρ̄`` of ``r = ‖w‖`` (a density in
``r``; the ``r^{d−1}`` Jacobian is inside it) solves the 1-D continuity equation

    ∂_t ρ̄(r) = ∂_r( ρ̄(r) ∂_r Ψ̄(r; ρ̄) ),    Ψ̄(r; ρ̄) = V̄(r) + ∫ Ū(r, r') ρ̄(dr').

*The potentials.* For ``G ~ N(0,1)`` let ``E_k(t) = E[σ(tG) He_k(G)]`` (probabilists' Hermite
polynomials). Since ``wᵀx ~ N(0, s² r²)``: ``V̄(r) = −½ [E_0(s_+ r) − E_0(s_− r)]``. For two
neurons at radii ``r, r'`` with ``cos∠(w, w') = c``, ``(wᵀx/(sr), w'ᵀx/(sr'))`` is a standard
Gaussian pair with correlation ``c``, and Mehler's formula gives
``E[σ(srG_1) σ(sr'G_2)] = Σ_k c^k E_k(sr) E_k(sr')/k!``. Averaging ``c`` over an independent
uniform direction on ``S^{d−1}`` (odd moments vanish,
``M_{2j} = E c^{2j} = Π_{i<j} (2i+1)/(d+2i)``):

    Ū(r, r') = ½ Σ_{s ∈ {s_+, s_−}} Σ_{k even} M_k E_k(sr) E_k(sr') / k!,

exact for every ``d`` (the ``k = 0`` term alone is the ``d → ∞`` limit; the series is truncated
at ``max_order``). The risk is ``R = 1 + 2∫V̄ dρ̄ + ∫∫Ū dρ̄ dρ̄``.

*Closed form of E_k.* For ``t > 0`` put ``α = t_1/t``, ``β = t_2/t``,
``κ = (s_1 − s_0)/(t_2 − t_1)``. Then
``E_0(t) = s_0 Φ(α) + s_1 (1 − Φ(β)) + (s_0 − κ t_1)(Φ(β) − Φ(α)) + κ t (φ(α) − φ(β))``
and, by Gaussian integration by parts (``E[f(G) He_k(G)] = E[f'(G) He_{k−1}(G)]``) and
``(He_{j−1} φ)' = −He_j φ``: ``E_1(t) = κ t (Φ(β) − Φ(α))`` and, for ``k ≥ 2``,
``E_k(t) = κ t [He_{k−2}(α) φ(α) − He_{k−2}(β) φ(β)]``.

**PDE solver.** Finite volumes on ``[0, r_max]``: cell masses, the velocity
``−∂_rΨ̄`` on cell faces (``∂_r`` of the closed forms by central differences), first-order
upwind fluxes, zero flux at both ends, explicit Euler with a CFL-limited step. Mass is
conserved exactly. The initial law is that of ``r`` for ``w ~ N(0, r_0²/d · I)``:
``d r²/r_0² ~ χ²_d``.

The σ, Δ and d defaults below (``s_0 = −2.5``, ``s_1 = 7.5``, ``t_1 = 0.5``, ``t_2 = 1.5``,
``Δ = 0.5``, ``d = 40``) are our choice in the spirit of MMN's figures; the paper's exact values
were not available to us.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from valleys._records import record_to_dict
from valleys.errors import ArgumentValueError

__all__ = [
    "GaussianProblem",
    "PDEResult",
    "ParticleResult",
    "hermite_moments",
    "radial_potentials",
    "simulate_particles",
    "solve_pde",
]


@dataclass(frozen=True)
class GaussianProblem:
    """The isotropic-Gaussian classification problem and its activation (see module docstring)."""

    d: int = 40
    delta: float = 0.5
    s0: float = -2.5
    s1: float = 7.5
    t1: float = 0.5
    t2: float = 1.5

    def __post_init__(self) -> None:
        if self.d < 2 or not 0 < self.delta < 1 or not self.t2 > self.t1 > 0:
            raise ArgumentValueError("need d >= 2, 0 < delta < 1 and t2 > t1 > 0")

    @property
    def slope(self) -> float:
        return (self.s1 - self.s0) / (self.t2 - self.t1)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.s0 + self.slope * (t.clamp(self.t1, self.t2) - self.t1)

    def sigma_prime(self, t: torch.Tensor) -> torch.Tensor:
        return self.slope * ((t > self.t1) & (t < self.t2)).to(t.dtype)

    def sample(self, n: int, generator: torch.Generator, dtype: torch.dtype = torch.float64,
               device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` samples ``(x, y)`` (labels ±1 with probability ½)."""
        y = torch.randint(0, 2, (n,), generator=generator, device=device).to(dtype) * 2 - 1
        scale = 1 + self.delta * y
        x = torch.randn(n, self.d, generator=generator, dtype=dtype, device=device)
        return x * scale[:, None], y

    def to_dict(self) -> dict[str, Any]:
        return record_to_dict(self)


def _normal_pdf(t: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)


def _normal_cdf(t: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(t / math.sqrt(2)))


def hermite_moments(t: torch.Tensor, problem: GaussianProblem, max_order: int) -> torch.Tensor:
    """``E_k(t) = E[σ(tG) He_k(G)]`` for ``k = 0..max_order``, shape ``t.shape + (K+1,)``.

    Closed forms of the module docstring; ``t`` is clamped to ``>= 1e-12`` (``t = 0`` is the
    limit ``E_0 = s_0``, ``E_k = 0``).
    """
    t = t.clamp_min(1e-12)
    a, b = problem.t1 / t, problem.t2 / t
    pa, pb, Pa, Pb = _normal_pdf(a), _normal_pdf(b), _normal_cdf(a), _normal_cdf(b)
    kappa = problem.slope
    out = [problem.s0 * Pa + problem.s1 * (1 - Pb)
           + (problem.s0 - kappa * problem.t1) * (Pb - Pa) + kappa * t * (pa - pb)]
    if max_order >= 1:
        out.append(kappa * t * (Pb - Pa))
    he_a = [torch.ones_like(a), a]  # He_0, He_1 at α and β
    he_b = [torch.ones_like(b), b]
    for k in range(2, max_order + 1):
        j = k - 2  # E_k needs He_{k−2}
        if j >= 2:
            he_a.append(a * he_a[j - 1] - (j - 1) * he_a[j - 2])
            he_b.append(b * he_b[j - 1] - (j - 1) * he_b[j - 2])
        out.append(kappa * t * (he_a[j] * pa - he_b[j] * pb))
    return torch.stack(out, dim=-1)


def _sphere_moments(d: int, max_order: int) -> list[float]:
    """``E c^k`` for ``c`` the cosine between independent uniform directions on ``S^{d−1}``."""
    moments = []
    for k in range(max_order + 1):
        if k % 2:
            moments.append(0.0)
        else:
            moments.append(math.prod((2 * i + 1) / (d + 2 * i) for i in range(k // 2)))
    return moments


def radial_potentials(r: torch.Tensor, r_prime: torch.Tensor, problem: GaussianProblem,
                      max_order: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """``V̄(r)`` (shape ``r.shape``) and ``Ū(r, r')`` (shape ``(len(r), len(r'))``)."""
    scales = (1 + problem.delta, 1 - problem.delta)
    weights = torch.tensor(
        [mk / math.factorial(k) for k, mk in enumerate(_sphere_moments(problem.d, max_order))],
        dtype=r.dtype, device=r.device)
    V = -0.5 * (hermite_moments(scales[0] * r, problem, 0)[..., 0]
                - hermite_moments(scales[1] * r, problem, 0)[..., 0])
    U = torch.zeros(r.shape[0], r_prime.shape[0], dtype=r.dtype, device=r.device)
    for s in scales:
        left = hermite_moments(s * r, problem, max_order) * weights
        right = hermite_moments(s * r_prime, problem, max_order)
        U = U + 0.5 * left @ right.T
    return V, U


@dataclass(frozen=True)
class PDEResult:
    """The finite-volume solution of the radial PDE.

    Attributes:
        centers: ``(G,)`` cell centers in ``r``.
        times: ``(T,)`` output times.
        masses: ``(T, G)`` cell masses (each row sums to 1).
        risk: ``(T,)`` ``R(ρ̄_t)``.
        substeps: Euler steps taken.
    """

    centers: torch.Tensor
    times: torch.Tensor
    masses: torch.Tensor
    risk: torch.Tensor
    substeps: int
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return record_to_dict(self)

    def quantiles(self, levels: torch.Tensor) -> torch.Tensor:
        """Quantiles of ``r`` at each output time (linear inside cells), shape ``(T, L)``."""
        h = self.centers[1] - self.centers[0]
        edges = torch.cat([self.centers - h / 2, self.centers[-1:] + h / 2])
        cdf = torch.cat([self.masses.new_zeros(self.masses.shape[0], 1),
                         self.masses.cumsum(1)], dim=1)
        out = []
        for row in cdf:
            i = torch.searchsorted(row, levels.to(row.dtype)).clamp(1, len(edges) - 1)
            lo, hi = row[i - 1], row[i]
            frac = torch.where(hi > lo, (levels - lo) / (hi - lo), torch.zeros_like(lo))
            out.append(edges[i - 1] + frac * (edges[i] - edges[i - 1]))
        return torch.stack(out)


def initial_masses(edges: torch.Tensor, d: int, r0: float) -> torch.Tensor:
    """Cell masses of ``r = ‖w‖`` for ``w ~ N(0, r0²/d · I_d)`` (``d r²/r0² ~ χ²_d``)."""
    from scipy.special import gammainc  # deferred: `import valleys` loads no scipy (~0.2 s)

    cdf = gammainc(d / 2, (d * edges.double().cpu().numpy() ** 2) / (2 * r0**2))
    cdf[-1] = 1.0  # mass beyond r_max (negligible by construction) goes to the last cell
    masses = torch.as_tensor(cdf[1:] - cdf[:-1], dtype=edges.dtype, device=edges.device)
    return masses / masses.sum()


def solve_pde(problem: GaussianProblem, *, r0: float, times: torch.Tensor | list[float],
              r_max: float = 4.0, cells: int = 400, max_order: int = 8, cfl: float = 0.4,
              dtype: torch.dtype = torch.float64) -> PDEResult:
    """Solve ``∂_t ρ̄ = ∂_r(ρ̄ ∂_rΨ̄)`` from the Gaussian initialization of radius scale ``r0``."""
    times = torch.as_tensor(times, dtype=dtype)
    if times.ndim != 1 or bool((times[1:] < times[:-1]).any()) or bool((times < 0).any()):
        raise ArgumentValueError(
            "times must be a 1-D non-decreasing sequence of non-negative numbers")
    h = r_max / cells
    edges = torch.linspace(0, r_max, cells + 1, dtype=dtype)
    centers = (edges[1:] + edges[:-1]) / 2
    faces = edges[1:-1]  # interior faces; the two ends carry no flux
    eps = 1e-5
    V_c, U_cc = radial_potentials(centers, centers, problem, max_order)
    Vp, Up = radial_potentials(faces + eps, centers, problem, max_order)
    Vm, Um = radial_potentials(faces - eps, centers, problem, max_order)
    dV, dU = (Vp - Vm) / (2 * eps), (Up - Um) / (2 * eps)  # ∂_r at faces
    mass = initial_masses(edges, problem.d, r0)

    def risk_of(m: torch.Tensor) -> torch.Tensor:
        return 1 + 2 * V_c @ m + m @ U_cc @ m

    out_masses, out_risk, t, substeps = [], [], 0.0, 0
    for target in times.tolist():
        while t < target - 1e-12:
            u = -(dV + dU @ mass)  # velocity on interior faces
            dt = min(cfl * h / max(float(u.abs().max()), 1e-12), target - t)
            upwind = torch.where(u > 0, mass[:-1], mass[1:])
            flux = u * upwind / h  # density × velocity: mass per unit time through a face
            change = torch.zeros_like(mass)
            change[:-1] -= flux
            change[1:] += flux
            mass = mass + dt * change
            t += dt
            substeps += 1
        out_masses.append(mass.clone())
        out_risk.append(risk_of(mass))
    config = {"problem": problem.to_dict(), "r0": r0, "r_max": r_max, "cells": cells,
              "max_order": max_order, "cfl": cfl}
    return PDEResult(centers, times, torch.stack(out_masses), torch.stack(out_risk), substeps,
                     config)


@dataclass(frozen=True)
class ParticleResult:
    """Online-SGD particles of the MMN model.

    Attributes:
        times: ``(T,)`` output times (``step · lr``).
        radii: ``(T, N)`` particle norms ``‖w_j‖`` at those times.
        risk: ``(T,)`` Monte-Carlo risk on a fixed validation sample.
        status: ``"completed"`` or ``"diverged"``.
    """

    times: torch.Tensor
    radii: torch.Tensor
    risk: torch.Tensor
    status: str
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return record_to_dict(self)


def simulate_particles(problem: GaussianProblem, *, num_particles: int, r0: float, lr: float,
                       times: torch.Tensor | list[float], batch_size: int = 500,
                       validation_size: int = 20_000, seed: int = 0,
                       dtype: torch.dtype = torch.float64,
                       device: torch.device | str | None = None) -> ParticleResult:
    """Particles ``w_j ← w_j − lr · Ê[(ŷ(x) − y) σ'(w_jᵀx) x]`` on fresh batches.

    ``w_j ~ N(0, r0²/d · I)`` initially; ``times`` are rounded to whole steps of ``lr``.
    """
    times = torch.as_tensor(times, dtype=torch.float64)
    g = torch.Generator(device=device).manual_seed(seed)
    W = torch.randn(num_particles, problem.d, generator=g, dtype=dtype, device=device)
    W = W * (r0 / math.sqrt(problem.d))
    Xv, yv = problem.sample(validation_size, g, dtype, device)
    targets = [round(float(t) / lr) for t in times]

    def risk_of(W: torch.Tensor) -> float:
        return float((yv - problem.sigma(Xv @ W.T).mean(1)).pow(2).mean())

    radii, risks, step, status = [], [], 0, "completed"
    for target in targets:
        while step < target:
            X, y = problem.sample(batch_size, g, dtype, device)
            Z = X @ W.T
            residual = problem.sigma(Z).mean(1) - y
            grad = (problem.sigma_prime(Z) * residual[:, None]).T @ X / batch_size
            W = W - lr * grad
            step += 1
        if not bool(torch.isfinite(W).all()):
            status = "diverged"
            break
        radii.append(W.norm(dim=1))
        risks.append(risk_of(W))
    config = {"problem": problem.to_dict(), "num_particles": num_particles, "r0": r0, "lr": lr,
              "batch_size": batch_size, "validation_size": validation_size, "seed": seed}
    return ParticleResult(torch.tensor([t * lr for t in targets[:len(radii)]]),
                          torch.stack(radii) if radii else torch.empty(0, num_particles),
                          torch.tensor(risks), status, config)
