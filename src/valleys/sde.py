r"""Lévy-driven SDEs for SGD-like and Adam-like dynamics, and first-exit times from basins.

Following Zhou, Feng, Ma, Xiong, Hoi & E ("Towards theoretically understanding why SGD
generalizes better than Adam in deep learning", NeurIPS 2020) and Şimşekli et al. (ICML 2019):

* **SGD-like**: ``dθ = −∇F(θ) dt + ε Σ dL^α_t`` with ``L^α`` an α-stable Lévy motion
  (independent coordinates or rotationally invariant, :mod:`valleys.noise._stable`) and ``Σ`` a
  diagonal or full scale (anisotropy). Euler–Maruyama: ``θ ← θ − ∇F(θ) Δt + ε Δt^{1/α} Σ S``
  with ``S`` standard α-stable (``L^α_{t+Δt} − L^α_t`` has the law of ``Δt^{1/α} S``).
  With ``α = 2`` the increments are ``N(0, 2Δt)``: ``dθ = −∇F dt + ε√2 dW``, i.e. overdamped
  Langevin at temperature ``D = ε²``.
* **Adam-like**: exponential averaging and diagonal preconditioning,

  .. math::  dm = β_1(∇F(θ) − m)\,dt + β_1 ε Σ\,dL^α_t, \qquad
             dv = β_2(∇F(θ)^2 + ε^2 \mathrm{diag}(ΣΣ^\top) − v)\,dt, \qquad
             dθ = −Q^{-1} m\,dt, \quad Q = \mathrm{diag}(\sqrt v + δ),

  i.e. the noisy gradient is averaged into ``m`` (``averaging=True``), or the noise enters
  ``θ`` through the preconditioner, ``dθ = −Q^{-1} m dt + ε Q^{-1} Σ dL`` with a noise-free
  ``m`` (``averaging=False``, the form recalled for Zhou et al.'s Adam SDE). ``ε² diag(ΣΣᵀ)``
  stands in for the noise's second moment (infinite for ``α < 2``). With ``normalize=True`` the
  preconditioner is rescaled to mean 1 per trajectory, so Adam-like and SGD-like runs have the
  same average step and only the *shape* of ``Q`` differs.

**Exit times.** From a point of a basin ``W`` (an interval of the first coordinate), the first
time the path leaves ``W``. Theory for ``α < 2`` (Imkeller & Pavlyukevich, "First exit times of
SDEs driven by stable Lévy processes", Stoch. Proc. Appl. 116, 2006): as ``ε → 0``,
``E τ ≈ 1/(ε^α m(W))`` with the Radon measure of the jumps that leave the basin
``m(W) = (c_α/α)(d_−^{−α} + d_+^{−α})``, ``d_±`` the distances from the minimum to the ends of
``W`` and ``c_α = Γ(1+α) sin(πα/2)/π`` the Lévy-measure constant of ``S_α(1,0,0)``. For
``α = 2`` Kramers: ``E τ ∝ exp(ΔV/ε²)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from valleys._checks import is_real
from valleys._records import record_to_dict
from valleys.errors import ArgumentTypeError, ArgumentValueError
from valleys.noise._stable import isotropic_stable, stable_rvs

__all__ = [
    "AdamLike",
    "DoubleWell",
    "ExitTimes",
    "exit_times",
    "levy_constant",
    "levy_exit_time",
    "simulate",
]

Grad = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class DoubleWell:
    """A double well in the first coordinate and a quadratic valley in the others.

    ``F(θ) = φ(θ_1) + ½ Σ_{j≥2} κ_j θ_j²`` with ``φ(x) = h_L((x/a_L)² − 1)² − h_L`` for
    ``x < 0`` and ``h_R((x/a_R)² − 1)² − h_R`` for ``x ≥ 0``: minima at ``−a_L`` and ``a_R`` of
    depths ``h_L``, ``h_R`` below the barrier ``φ(0) = 0``; ``φ`` and ``φ'`` are continuous.
    The curvature at the left minimum is ``8h_L/a_L²`` and at the barrier ``−4h/a²``.
    """

    width_left: float = 1.0
    depth_left: float = 1.0
    width_right: float = 1.0
    depth_right: float = 1.0
    stiffness: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        for name in ("width_left", "depth_left", "width_right", "depth_right"):
            value = getattr(self, name)
            if not is_real(value) or not value > 0:
                raise ArgumentValueError(
                    f"DoubleWell.{name} must be a positive number, got {value!r}")
        if any(k <= 0 for k in self.stiffness):
            raise ArgumentValueError(f"stiffness values must be positive, got {self.stiffness}")

    @property
    def dim(self) -> int:
        return 1 + len(self.stiffness)

    def left_minimum(self, dtype=torch.float64, device=None) -> torch.Tensor:
        x = torch.zeros(self.dim, dtype=dtype, device=device)
        x[0] = -self.width_left
        return x

    def basin(self, outer: float = 1.0) -> tuple[float, float]:
        """The left basin cut at ``−(1+outer)·a_L``: ``W = (−(1+outer)a_L, 0)``."""
        return (-(1.0 + outer) * self.width_left, 0.0)

    def _sides(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        left = x < 0
        # new_tensor: python floats in torch.where would be float32 (precision loss)
        return (torch.where(left, x.new_tensor(self.width_left), x.new_tensor(self.width_right)),
                torch.where(left, x.new_tensor(self.depth_left), x.new_tensor(self.depth_right)))

    def value(self, theta: torch.Tensor) -> torch.Tensor:
        """``F`` for a batch ``(M, dim)`` of points, shape ``(M,)``."""
        x = theta[..., 0]
        a, h = self._sides(x)
        out = h * ((x / a) ** 2 - 1) ** 2 - h
        if self.stiffness:
            k = torch.as_tensor(self.stiffness, dtype=theta.dtype, device=theta.device)
            out = out + 0.5 * (k * theta[..., 1:] ** 2).sum(-1)
        return out

    def grad(self, theta: torch.Tensor) -> torch.Tensor:
        """``∇F`` for a batch ``(M, dim)`` of points."""
        x = theta[..., :1]
        a, h = self._sides(x)
        gx = 4 * h * ((x / a) ** 2 - 1) * x / a**2
        if not self.stiffness:
            return gx
        k = torch.as_tensor(self.stiffness, dtype=theta.dtype, device=theta.device)
        return torch.cat([gx, k * theta[..., 1:]], dim=-1)


def levy_constant(alpha: float) -> float:
    """``c_α = Γ(1+α) sin(πα/2)/π``: the Lévy measure of ``S_α(1,0,0)`` is ``c_α|y|^{−1−α}dy``."""
    if (isinstance(alpha, bool) or not is_real(alpha)
            or not 0 < alpha <= 2):
        raise ArgumentValueError(f"the stability index α must lie in (0, 2], got {alpha!r}")
    return math.gamma(1.0 + alpha) * math.sin(math.pi * alpha / 2.0) / math.pi


def levy_exit_time(alpha: float, epsilon: float, distances: tuple[float, float]) -> float:
    """Small-noise mean exit time ``1/(ε^α m(W))``, ``m(W) = (c_α/α) Σ d^{−α}`` (α < 2)."""
    if isinstance(alpha, bool) or not is_real(alpha) or not 0 < alpha < 2:
        raise ArgumentValueError(f"the Lévy exit-time law needs 0 < α < 2, got {alpha!r}")
    if (isinstance(epsilon, bool) or not is_real(epsilon)
            or not (math.isfinite(epsilon) and epsilon > 0)):
        raise ArgumentValueError(f"epsilon (the noise scale) must be a positive finite number, got "
                                 f"{epsilon!r}")
    if not all(is_real(d) and not isinstance(d, bool)
               and math.isfinite(d) and d > 0 for d in distances):
        raise ArgumentValueError(
            f"distances must be the positive finite distances from the minimum to "
            f"the two ends of the basin, got {distances!r}")
    measure = levy_constant(alpha) / alpha * sum(d ** (-alpha) for d in distances)
    return 1.0 / (epsilon**alpha * measure)


@dataclass(frozen=True)
class AdamLike:
    """Settings of the Adam-like SDE (module docstring).

    ``beta1``, ``beta2``: averaging rates (per unit time) of ``m`` and ``v``; ``delta``: the
    ``ε`` of Adam in ``√v + δ``; ``averaging``: noise enters ``m`` (True) or ``θ`` through
    ``Q^{-1}`` (False); ``normalize``: rescale ``Q`` to mean 1 per trajectory.
    """

    beta1: float = 10.0
    beta2: float = 1.0
    delta: float = 1e-8
    averaging: bool = True
    normalize: bool = True

    def __post_init__(self) -> None:
        if self.beta1 <= 0 or self.beta2 <= 0 or self.delta < 0:
            raise ArgumentValueError("AdamLike needs beta1 > 0, beta2 > 0 and delta >= 0")


class _Noise:
    """Increments ``ε Δt^{1/α} Σ S`` for ``M`` paths in ``R^d``."""

    def __init__(self, alpha, epsilon, dt, dim, kind, scale, generator, dtype, device):
        if kind not in ("independent", "isotropic"):
            raise ArgumentValueError(f"noise must be 'independent' or 'isotropic', got {kind!r}")
        self.alpha, self.kind, self.dim = alpha, kind, dim
        self.generator, self.dtype, self.device = generator, dtype, device
        self.factor = epsilon * dt ** (1.0 / alpha)
        self.block, self._buffer, self._next = 256, None, 0
        self.scale = None
        if scale is not None:
            s = torch.as_tensor(scale, dtype=dtype, device=device)
            if s.shape not in ((dim,), (dim, dim)):
                raise ArgumentValueError(
                    f"scale must be a vector ({dim},) or a matrix ({dim}, {dim}), got "
                    f"{tuple(s.shape)}"
                )
            self.scale = s

    def second_moment(self) -> torch.Tensor:
        """``diag(ΣΣᵀ)`` (ones without a scale)."""
        if self.scale is None:
            return torch.ones(self.dim, dtype=self.dtype, device=self.device)
        return self.scale**2 if self.scale.ndim == 1 else (self.scale**2).sum(1)

    def _draw(self, shape: tuple[int, ...]) -> torch.Tensor:
        if self.kind == "isotropic":
            S = isotropic_stable(self.alpha, math.prod(shape[:-1]), self.dim,
                                 generator=self.generator, dtype=self.dtype, device=self.device)
            S = S.reshape(shape)
        else:
            S = stable_rvs(self.alpha, shape, generator=self.generator, dtype=self.dtype,
                           device=self.device)
        if self.scale is not None:
            S = S * self.scale if self.scale.ndim == 1 else S @ self.scale.T
        return self.factor * S

    def __call__(self, M: int) -> torch.Tensor:
        """The next increment for ``M`` paths; drawn in blocks of steps (fewer small ops)."""
        if self._buffer is None or self._next == self._buffer.shape[0] or (
            self._buffer.shape[1] != M
        ):
            block = max(1, min(self.block, (1 << 22) // max(M * self.dim, 1)))
            self._buffer = self._draw((block, M, self.dim))
            self._next = 0
        self._next += 1
        return self._buffer[self._next - 1]

    def keep(self, mask: torch.Tensor) -> None:
        """Drop the stopped paths' rows from the pre-drawn block."""
        if self._buffer is not None:
            self._buffer = self._buffer[:, mask]


def _check_common(alpha, epsilon, dt) -> None:
    if not is_real(alpha) or not 0 < alpha <= 2:
        raise ArgumentValueError(f"alpha must lie in (0, 2], got {alpha!r}")
    if not is_real(epsilon) or epsilon < 0:
        raise ArgumentValueError(f"epsilon must be a non-negative number, got {epsilon!r}")
    if not is_real(dt) or not dt > 0:
        raise ArgumentValueError(f"dt must be a positive number, got {dt!r}")


class _Stepper:
    """One Euler step of the SGD-like or Adam-like SDE for the currently active paths."""

    def __init__(self, grad: Grad, noise: _Noise, dt: float, adam: AdamLike | None,
                 theta: torch.Tensor, epsilon: float) -> None:
        self.grad, self.noise, self.dt, self.adam = grad, noise, dt, adam
        if adam is not None:
            g = grad(theta)
            self.m = g.clone()
            self.extra = epsilon**2 * noise.second_moment()
            self.v = g**2 + self.extra

    def keep(self, mask: torch.Tensor) -> None:
        self.noise.keep(mask)
        if self.adam is not None:
            self.m, self.v = self.m[mask], self.v[mask]

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        g = self.grad(theta)
        if g.shape != theta.shape:
            raise ArgumentValueError(
                f"grad returned shape {tuple(g.shape)} for θ of {tuple(theta.shape)}")
        xi = self.noise(theta.shape[0])
        if self.adam is None:
            return theta - self.dt * g + xi
        a, dt = self.adam, self.dt
        q = self.v.sqrt() + a.delta
        if a.normalize:
            q = q / q.mean(dim=1, keepdim=True)
        if a.averaging:
            self.m = self.m + a.beta1 * (g - self.m) * dt + a.beta1 * xi
            new = theta - dt * self.m / q
        else:
            self.m = self.m + a.beta1 * (g - self.m) * dt
            new = theta - dt * self.m / q + xi / q
        self.v = self.v + a.beta2 * (g**2 + self.extra - self.v) * dt
        return new


def simulate(
    grad: Grad,
    theta0: torch.Tensor,
    *,
    steps: int,
    dt: float,
    alpha: float = 2.0,
    epsilon: float = 0.1,
    noise: str = "independent",
    scale: torch.Tensor | None = None,
    adam: AdamLike | None = None,
    record_every: int | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Simulate ``theta0.shape[0]`` independent paths for ``steps`` Euler steps of size ``dt``.

    Args:
        grad: batched ``∇F``, mapping ``(M, d)`` to ``(M, d)``.
        theta0: starting points ``(M, d)`` (dtype and device of the simulation).
        alpha, epsilon: tail index and noise scale of ``ε dL^α``.
        noise: ``"independent"`` coordinates or ``"isotropic"`` (rotationally invariant).
        scale: ``Σ``, a vector (diagonal) or a ``(d, d)`` matrix; ``None`` is the identity.
        adam: :class:`AdamLike` settings for the Adam-like SDE, ``None`` for the SGD-like one.
        record_every: keep every ``record_every``-th state in ``"path"`` (shape ``(T, M, d)``).
        generator: ``torch.Generator`` on the device of ``theta0`` (reproducible noise).

    Returns ``{"theta": final states, "times": recorded times, "path": recorded states}``.
    """
    _check_common(alpha, epsilon, dt)
    if not isinstance(theta0, torch.Tensor) or theta0.ndim != 2:
        raise ArgumentValueError("theta0 must be a tensor of shape (paths, dim)")
    if not theta0.dtype.is_floating_point:
        raise ArgumentTypeError(f"theta0 must be floating point, got {theta0.dtype}")
    if not bool(torch.isfinite(theta0).all()):
        raise ArgumentValueError("theta0 contains NaN or infinite values; start from finite states")
    if not isinstance(steps, int) or steps < 0:
        raise ArgumentValueError(f"steps must be a non-negative integer, got {steps!r}")
    if record_every is not None and (not isinstance(record_every, int) or record_every < 1):
        raise ArgumentValueError(
            f"record_every must be a positive integer or None, got {record_every!r}")
    theta = theta0.detach().clone()
    shaper = _Noise(alpha, epsilon, dt, theta.shape[1], noise, scale, generator, theta.dtype,
                    theta.device)
    step = _Stepper(grad, shaper, dt, adam, theta, epsilon)
    path, times = [theta.clone()], [0.0]
    for k in range(1, steps + 1):
        theta = step(theta)
        if record_every and k % record_every == 0:
            path.append(theta.clone())
            times.append(k * dt)
    return {
        "theta": theta,
        "times": torch.tensor(times, dtype=theta.dtype, device=theta.device),
        "path": torch.stack(path),
    }


@dataclass(frozen=True, eq=False)
class ExitTimes:
    """First-exit times of many paths from a basin.

    Attributes:
        times: ``(M,)`` exit times; ``inf`` where a path had not left by ``horizon``.
        mean: mean exit time estimated with censoring as ``total time in W / number of exits``
            (the maximum-likelihood mean of an exponential law, the metastable exit law);
            equal to the plain mean when every path exits.
        stderr: its standard error ``mean/√exits``.
        exited: number of paths that left; ``horizon``: simulated time.
        alpha: the tail index, with ``epsilon``, ``dt``, ``seed``, ``kind`` (``"sgd"`` or
            ``"adam"``) and ``wall_time`` as in the call.
    """

    times: torch.Tensor
    mean: float
    stderr: float
    exited: int
    horizon: float
    alpha: float
    epsilon: float
    dt: float
    seed: int
    kind: str
    wall_time: float
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return record_to_dict(self, drop=("times",))


def exit_times(
    grad: Grad,
    start: torch.Tensor,
    basin: tuple[float, float],
    *,
    num_paths: int = 1000,
    alpha: float = 2.0,
    epsilon: float = 0.1,
    dt: float = 1e-2,
    max_steps: int = 100_000,
    noise: str = "independent",
    scale: torch.Tensor | None = None,
    adam: AdamLike | None = None,
    seed: int = 0,
) -> ExitTimes:
    """First exit times from ``W = {θ : basin[0] < θ_1 < basin[1]}`` of paths started at ``start``.

    ``num_paths`` paths of the SGD-like (or, with ``adam``, the Adam-like) SDE are advanced
    together; a path stops at the first step where its first coordinate is outside ``W`` and
    the time ``k·dt`` is recorded. Paths still inside after ``max_steps`` are censored.
    The noise comes from a ``torch.Generator`` seeded with ``seed`` on ``start``'s device.
    """
    _check_common(alpha, epsilon, dt)
    if not isinstance(start, torch.Tensor) or start.ndim != 1 or not start.dtype.is_floating_point:
        raise ArgumentValueError("start must be a 1-D floating tensor (one point in R^d)")
    low, high = float(basin[0]), float(basin[1])
    if not low < float(start[0]) < high:
        raise ArgumentValueError(f"start[0] = {float(start[0])} is not inside the basin {basin}")
    if not isinstance(num_paths, int) or num_paths < 1:
        raise ArgumentValueError(f"num_paths must be a positive integer, got {num_paths!r}")
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ArgumentValueError(f"max_steps must be a positive integer, got {max_steps!r}")
    started = time.perf_counter()
    generator = torch.Generator(device=start.device).manual_seed(seed)
    theta = start.detach().expand(num_paths, -1).clone()
    shaper = _Noise(alpha, epsilon, dt, theta.shape[1], noise, scale, generator, theta.dtype,
                    theta.device)
    step = _Stepper(grad, shaper, dt, adam, theta, epsilon)
    times = torch.full((num_paths,), math.inf, dtype=theta.dtype, device=theta.device)
    active = torch.arange(num_paths, device=theta.device)
    for k in range(1, max_steps + 1):
        theta = step(theta)
        x = theta[:, 0]
        out = (x <= low) | (x >= high) | ~torch.isfinite(x)
        if bool(out.any()):
            times[active[out]] = k * dt
            keep = ~out
            active, theta = active[keep], theta[keep]
            step.keep(keep)
            if active.numel() == 0:
                break
    horizon = k * dt
    exited = int(torch.isfinite(times).sum())
    at_risk = float(torch.where(torch.isfinite(times), times, torch.full_like(times, horizon))
                    .sum())
    mean = at_risk / exited if exited else math.inf
    return ExitTimes(
        times=times, mean=mean, stderr=mean / math.sqrt(exited) if exited else math.inf,
        exited=exited, horizon=horizon, alpha=float(alpha), epsilon=float(epsilon), dt=float(dt),
        seed=seed, kind="sgd" if adam is None else "adam", wall_time=time.perf_counter() - started,
        settings={"basin": (low, high), "noise": noise, "num_paths": num_paths,
                  "adam": None if adam is None else adam.__dict__.copy()},
    )
