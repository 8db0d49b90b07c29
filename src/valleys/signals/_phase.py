"""Phase retrieval: Wirtinger flow, spectral initialisation and the truncated variant."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from valleys._checks import integer, positive_real, seed_value
from valleys.errors import ArgumentTypeError, ArgumentValueError
from valleys.objective import Objective

__all__ = [
    "PhaseRetrieval",
    "WirtingerFlowResult",
    "phase_distance",
    "phase_retrieval_problem",
    "spectral_init",
    "truncated_wirtinger_flow",
    "wf_gradient",
    "wirtinger_flow",
]


def _check_measurements(A: torch.Tensor, y: torch.Tensor) -> None:
    if not isinstance(A, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ArgumentTypeError("A and y must be torch tensors")
    if A.ndim != 2 or y.ndim != 1 or A.shape[0] != y.shape[0]:
        raise ArgumentValueError(
            f"A must be (m, n) and y must be (m,) with the same m, got A {tuple(A.shape)} and "
            f"y {tuple(y.shape)}")
    if y.is_complex() or not y.is_floating_point():
        raise ArgumentTypeError(f"y must be a real floating tensor (intensities), got {y.dtype}")
    if not (A.is_floating_point() or A.is_complex()):
        raise ArgumentTypeError(f"A must be a floating or complex tensor, got {A.dtype}")


def _check_vector(z: torch.Tensor, A: torch.Tensor, name: str) -> None:
    if not isinstance(z, torch.Tensor) or z.shape != (A.shape[1],):
        raise ArgumentValueError(f"{name} must be a tensor of shape ({A.shape[1]},), got "
                                 f"{getattr(z, 'shape', type(z).__name__)}")


def wf_gradient(A: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    r"""The Wirtinger-flow gradient ``∇f(z) = (1/m) Σ_r (|a_r^* z|² − y_r) a_r a_r^* z``.

    Rows of ``A`` are ``a_r^*`` (so ``A z`` is the vector of ``a_r^* z``). It is the Wirtinger
    gradient ``∂f/∂z̄`` of ``f = (1/2m) Σ (|a_r^* z|² − y_r)²`` (Candès, Li & Soltanolkotabi
    2015) and equals the ordinary real gradient of ``(1/4m) Σ (|a_r^* z|² − y_r)²`` taken in
    ``(Re z, Im z)`` (for real data: in ``z``), which is what :meth:`PhaseRetrieval.objective`
    computes.
    """
    _check_measurements(A, y)
    _check_vector(z, A, "z")
    Az = A @ z
    return A.conj().T @ ((Az.abs() ** 2 - y) * Az) / A.shape[0]


def spectral_init(A: torch.Tensor, y: torch.Tensor, *, power_iters: int = 50,
                  truncate: float | None = None, seed: int = 0) -> torch.Tensor:
    r"""Spectral initialisation: the top eigenvector of ``Y = (1/m) Σ_r y_r a_r a_r^*`` by
    ``power_iters`` power iterations from a seeded random start, scaled to
    ``λ₀ = sqrt(Σ_r y_r / m)`` (Candès, Li & Soltanolkotabi 2015, WF code).

    ``truncate = α_y`` keeps only ``y_r ≤ α_y² λ₀²`` in ``Y`` (truncated spectral init of Chen &
    Candès 2017, ``α_y = 3``).
    """
    _check_measurements(A, y)
    power_iters = integer(power_iters, "power_iters", minimum=1)
    g = torch.Generator(device="cpu").manual_seed(seed_value(seed))
    lam0 = math.sqrt(float(y.sum()) / A.shape[0])
    weights = y
    if truncate is not None:
        a_y = positive_real(truncate, "truncate")
        weights = torch.where(y <= a_y ** 2 * lam0 ** 2, y, torch.zeros_like(y))
    z = torch.randn(A.shape[1], generator=g, dtype=torch.float64)
    if A.is_complex():
        z = torch.complex(z, torch.randn(A.shape[1], generator=g, dtype=torch.float64))
    z = z.to(device=A.device, dtype=A.dtype)
    z = z / torch.linalg.vector_norm(z)
    for _ in range(power_iters):
        z = A.conj().T @ (weights * (A @ z)) / A.shape[0]
        z = z / torch.linalg.vector_norm(z)
    return lam0 * z


def phase_distance(z: torch.Tensor, x: torch.Tensor) -> float:
    r"""``min_φ ‖z − e^{iφ} x‖`` (real data: ``min(‖z − x‖, ‖z + x‖)``); the optimal phase is
    that of ``x^* z``."""
    if z.shape != x.shape:
        raise ArgumentValueError(f"z and x must have the same shape, got {tuple(z.shape)} and "
                                 f"{tuple(x.shape)}")
    inner = torch.vdot(x, z)  # x^* z
    if inner.abs() == 0:
        return float(torch.linalg.vector_norm(z - x))
    phase = inner / inner.abs()
    return float(torch.linalg.vector_norm(z - phase * x))


@dataclass(frozen=True, eq=False)
class WirtingerFlowResult:
    """Outcome of :func:`wirtinger_flow` / :func:`truncated_wirtinger_flow`.

    Attributes:
        x: the final iterate.
        z0: the (spectral) initial point.
        losses: ``f(z_t) = (1/2m) Σ (|a^* z_t|² − y)²`` every ``record_every`` steps (first and
            last included).
        steps: iterations run.
    """

    x: torch.Tensor
    z0: torch.Tensor
    losses: list[float]
    steps: int


def _wf_loss(A: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> float:
    return float(((A @ z).abs() ** 2 - y).pow(2).mean() / 2)


def wirtinger_flow(A: torch.Tensor, y: torch.Tensor, *, steps: int = 2500, mu_max: float = 0.2,
                   tau0: float = 330.0, z0: torch.Tensor | None = None, power_iters: int = 50,
                   seed: int = 0, record_every: int = 100) -> WirtingerFlowResult:
    r"""Wirtinger flow (Candès, Li & Soltanolkotabi, IEEE T-IT 2015).

    ``z_{τ+1} = z_τ − (μ_{τ+1}/‖z_0‖²) ∇f(z_τ)`` with ``∇f`` of :func:`wf_gradient` and the
    schedule ``μ_τ = min(1 − e^{−τ/τ₀}, μ_max)``, ``τ₀ = 330``; ``z_0`` is
    :func:`spectral_init` unless given. The authors' Gaussian code uses ``μ_max = 0.2``; for
    real Gaussian data a smaller ``μ_max`` (0.1) avoids stalls (see ``docs/signals.md``).
    Recovery is up to a global phase: measure with :func:`phase_distance`.
    """
    _check_measurements(A, y)
    steps = integer(steps, "steps", minimum=0)
    mu_max = positive_real(mu_max, "mu_max")
    tau0 = positive_real(tau0, "tau0")
    record_every = integer(record_every, "record_every", minimum=1)
    if z0 is None:
        z0 = spectral_init(A, y, power_iters=power_iters, seed=seed)
    _check_vector(z0, A, "z0")
    z = z0.clone()
    scale = float(torch.linalg.vector_norm(z0)) ** 2
    if scale == 0:
        raise ArgumentValueError("z0 is zero: Wirtinger flow's step is normalised by ‖z0‖²")
    losses = [_wf_loss(A, y, z)]
    for t in range(1, steps + 1):
        mu = min(1.0 - math.exp(-t / tau0), mu_max)
        Az = A @ z
        z = z - (mu / scale) * (A.conj().T @ ((Az.abs() ** 2 - y) * Az) / A.shape[0])
        if t % record_every == 0 or t == steps:
            losses.append(_wf_loss(A, y, z))
    return WirtingerFlowResult(z, z0, losses, steps)


def truncated_wirtinger_flow(A: torch.Tensor, y: torch.Tensor, *, steps: int = 1000,
                             mu: float = 0.2, alpha_lb: float = 0.3, alpha_ub: float = 5.0,
                             alpha_h: float = 5.0, alpha_y: float = 3.0, power_iters: int = 50,
                             seed: int = 0, record_every: int = 100) -> WirtingerFlowResult:
    r"""Truncated Wirtinger flow (Chen & Candès, CPAM 2017), real or complex data.

    Poisson loss ``ℓ_i(z) = |a_i^* z|² − y_i log|a_i^* z|²`` with the per-sample gradient
    ``2 (|a_i^* z|² − y_i)/|a_i^* z|² · a_i a_i^* z``; step ``z ← z − μ (1/m) Σ_{i∈E} ∇ℓ_i``
    (constant ``μ``, no ``‖z₀‖²`` normalisation), where ``E`` keeps the samples with
    ``α_lb ≤ |a_i^* z|/‖z‖ ≤ α_ub`` and ``|y_i − |a_i^* z|²| ≤ α_h K_t |a_i^* z|/‖z‖``,
    ``K_t = (1/m) Σ | |a_i^* z|² − y_i |``; initialised by the truncated spectral method
    (:func:`spectral_init` with ``truncate=α_y``). Defaults are the authors' code's.
    """
    _check_measurements(A, y)
    steps = integer(steps, "steps", minimum=0)
    mu = positive_real(mu, "mu")
    alpha_lb, alpha_ub = positive_real(alpha_lb, "alpha_lb"), positive_real(alpha_ub, "alpha_ub")
    alpha_h = positive_real(alpha_h, "alpha_h")
    record_every = integer(record_every, "record_every", minimum=1)
    z0 = spectral_init(A, y, power_iters=power_iters, truncate=alpha_y, seed=seed)
    z = z0.clone()
    m = A.shape[0]
    losses = [_wf_loss(A, y, z)]
    for t in range(1, steps + 1):
        Az = A @ z
        absz = Az.abs()
        ratio = absz / torch.linalg.vector_norm(z)
        residual = absz ** 2 - y
        K = residual.abs().mean()
        keep = ((ratio >= alpha_lb) & (ratio <= alpha_ub)
                & (residual.abs() <= alpha_h * K * ratio))
        coef = torch.where(keep, 2 * residual / absz.clamp_min(1e-300) ** 2,
                           torch.zeros_like(residual))
        z = z - mu * (A.conj().T @ (coef * Az)) / m
        if t % record_every == 0 or t == steps:
            losses.append(_wf_loss(A, y, z))
    return WirtingerFlowResult(z, z0, losses, steps)


class _PhaseModel(nn.Module):
    """``z`` as a real parameter (``(n,)`` for real data, ``(2, n)`` = ``(Re z, Im z)`` for
    complex data); the forward pass maps stacked measurement rows to ``a^* z``."""

    def __init__(self, z: torch.Tensor) -> None:
        super().__init__()
        self.complex = z.is_complex()
        self.x = nn.Parameter(torch.stack([z.real, z.imag]) if self.complex else z.clone())

    def forward(self, A: torch.Tensor) -> torch.Tensor:
        # A: (b, n) real rows, or (b, 2, n) = (Re a^*, Im a^*) rows; output (b, 2) = (Re, Im).
        if not self.complex:
            return (A @ self.x)[:, None]
        re = A[:, 0] @ self.x[0] - A[:, 1] @ self.x[1]
        im = A[:, 0] @ self.x[1] + A[:, 1] @ self.x[0]
        return torch.stack([re, im], dim=1)


def _intensity_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample ``¼ (|a^* z|² − y)²``: its mean has the gradient :func:`wf_gradient`."""
    return (outputs.pow(2).sum(dim=1) - targets) ** 2 / 4


@dataclass(frozen=True, eq=False)
class PhaseRetrieval:
    """A phase-retrieval instance ``y_r = |a_r^* x|²`` with the signal ``x``.

    Attributes:
        A: ``(m, n)`` measurement rows ``a_r^*`` (real or complex).
        y: ``(m,)`` intensities.
        x: ``(n,)`` the signal (unit norm).
    """

    A: torch.Tensor
    y: torch.Tensor
    x: torch.Tensor

    def objective(self, z: torch.Tensor | None = None) -> Objective:
        r"""``L(z) = (1/m) Σ_r ¼ (|a_r^* z|² − y_r)²`` as an :class:`~valleys.Objective` whose
        parameter ``x`` is ``z`` (complex ``z`` as the real pair ``(Re z, Im z)``), at ``z``
        (default: the signal, a global minimum). Its gradient is :func:`wf_gradient`."""
        z = self.x if z is None else z
        _check_vector(z, self.A, "z")
        model = _PhaseModel(z.to(self.A.dtype))
        if self.A.is_complex():
            # rows a_r^* as the real pair (Re, Im)
            data = torch.stack([self.A.real, self.A.imag], dim=1)
        else:
            data = self.A
        return Objective(model, _intensity_loss, (data, self.y))


def phase_retrieval_problem(n: int, ratio: float, *, field: str = "real", seed: int = 0,
                            dtype: torch.dtype = torch.float64,
                            device: str | torch.device = "cpu") -> PhaseRetrieval:
    """Gaussian phase retrieval with ``m = round(ratio · n)`` measurements: real ``a ~ N(0, I)``
    or complex ``a = (N(0, I) + i N(0, I))/√2``, signal uniform on the unit sphere."""
    n = integer(n, "n", minimum=1)
    ratio = positive_real(ratio, "ratio", hint="the sampling ratio m/n must be > 0")
    if field not in ("real", "complex"):
        raise ArgumentValueError(f"field must be 'real' or 'complex', got {field!r}")
    m = round(ratio * n)
    if m < 1:
        raise ArgumentValueError(f"ratio {ratio} gives no measurement for n = {n}")
    if dtype not in (torch.float32, torch.float64):
        raise ArgumentTypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    g = torch.Generator(device="cpu").manual_seed(seed_value(seed))
    A = torch.randn(m, n, generator=g, dtype=torch.float64)
    x = torch.randn(n, generator=g, dtype=torch.float64)
    if field == "complex":
        A = torch.complex(A, torch.randn(m, n, generator=g, dtype=torch.float64)) / math.sqrt(2)
        x = torch.complex(x, torch.randn(n, generator=g, dtype=torch.float64))
    x = x / torch.linalg.vector_norm(x)
    y = (A @ x).abs() ** 2
    cdtype = dtype if field == "real" else (torch.complex128 if dtype == torch.float64
                                            else torch.complex64)
    return PhaseRetrieval(A.to(device, cdtype), y.to(device, dtype), x.to(device, cdtype))
