r"""Gradient flow ``dθ/dt = −∇L(θ)``: the continuous-time reference that GD leaves at the EoS.

Gradient descent with step ``η`` is the explicit Euler discretization of gradient flow, so GD's
iterate ``θ_k`` is compared with the flow at time ``t = k·η``. Cohen et al. (ICLR 2021, Sec. 3
and ``src/flow.py`` of ``locuslab/edge-of-stability``) integrate the flow with Runge–Kutta and a
step ``min(α / sharpness, max_step)``, re-estimating the sharpness as the flow moves; GD tracks
the flow until its sharpness first crosses ``2/η`` and then departs from it.

Here the integrator is the classical fourth-order Runge–Kutta method,

    ``k₁ = −∇L(θ), k₂ = −∇L(θ + h/2·k₁), k₃ = −∇L(θ + h/2·k₂), k₄ = −∇L(θ + h·k₃)``,
    ``θ ← θ + h/6·(k₁ + 2k₂ + 2k₃ + k₄)``,

with ``h = min(α / |λ|_max(∇²L), max_step)`` (``|λ|_max`` by warm-started Lanczos, refreshed every
``sharpness_every`` steps) and the last step of each segment shortened to land on the requested
time. RK4 is stable for ``h·λ`` up to about 2.78 on the negative real axis, so ``α = 1`` leaves
room for the sharpness to grow between two estimates.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from valleys._checks import is_real, positive_real
from valleys._records import record_to_dict
from valleys.errors import ArgumentTypeError, ArgumentValueError
from valleys.objective import Objective
from valleys.train.callbacks import SharpnessTracker

if TYPE_CHECKING:
    from valleys.train.loop import TrainContext

__all__ = ["FlowDistance", "FlowResult", "GradientFlow", "gradient_flow"]


class GradientFlow:
    """A Runge–Kutta integrator of ``dθ/dt = −∇L(θ)`` that can be advanced piece by piece.

    Args:
        objective: the empirical risk ``L``.
        theta: the initial point ``θ(0)`` (default: the model's current parameters).
        alpha: step size in units of ``1/|λ|_max``: ``h = α / |λ|_max`` (Cohen et al.: 1).
        max_step: cap on ``h`` (default: none, beyond the requested times).
        sharpness_every: RK4 steps between two Lanczos estimates of ``|λ|_max``.
        tol: relative tolerance of those estimates.
        seed: seed of the Lanczos start vectors.

    Attributes:
        time: the current flow time ``t``; ``theta``: ``θ(t)``.
        steps, gradient_evals, hvps: work done so far (4 gradients per RK4 step).
        sharpness: the latest ``|λ|_max`` estimate. ``diverged``: ``θ`` turned non-finite.
    """

    def __init__(
        self,
        objective: Objective,
        theta: torch.Tensor | None = None,
        *,
        alpha: float = 1.0,
        max_step: float | None = None,
        sharpness_every: int = 20,
        tol: float = 1e-3,
        seed: int = 0,
    ) -> None:
        if not isinstance(objective, Objective):
            raise ArgumentTypeError(
                f"GradientFlow needs a valleys.Objective, got {type(objective)}")
        self.objective = objective
        self.alpha = positive_real(alpha, "alpha")
        self.max_step = math.inf if max_step is None else positive_real(max_step, "max_step")
        if not isinstance(sharpness_every, int) or sharpness_every < 1:
            raise ArgumentValueError(
                f"sharpness_every must be a positive integer, got {sharpness_every!r}")
        self.sharpness_every = sharpness_every
        self.theta = objective.resolve_theta(theta).detach().clone()
        self.time = 0.0
        self.steps = 0
        self.gradient_evals = 0
        self.sharpness = math.nan
        self.diverged = False
        self._tracker = SharpnessTracker(objective, k=1, which="magnitude", tol=tol, seed=seed)

    @property
    def hvps(self) -> int:
        """Hessian-vector products spent on step-size estimates."""
        return self._tracker.total_matvecs

    def _velocity(self, theta: torch.Tensor) -> torch.Tensor:
        self.gradient_evals += 1
        return -self.objective.gradient(theta)

    def _refresh_sharpness(self) -> None:
        row = self._tracker(0, self.theta)
        if row is None:  # never: step 0 is due for any `every`
            raise RuntimeError("the sharpness tracker returned no row at step 0")
        self.sharpness = abs(row["sharpness"])

    def step_size(self) -> float:
        """``h = min(α / |λ|_max, max_step)``, refreshing ``|λ|_max`` when it is due."""
        if self.steps % self.sharpness_every == 0 or not math.isfinite(self.sharpness):
            self._refresh_sharpness()
        if self.sharpness == 0:
            return self.max_step
        return min(self.alpha / self.sharpness, self.max_step)

    def rk4_step(self, h: float) -> None:
        """One classical Runge–Kutta step of size ``h``."""
        theta = self.theta
        k1 = self._velocity(theta)
        k2 = self._velocity(theta + 0.5 * h * k1)
        k3 = self._velocity(theta + 0.5 * h * k2)
        k4 = self._velocity(theta + h * k3)
        self.theta = theta + (h / 6.0) * (k1 + 2 * k2 + 2 * k3 + k4)
        self.time += h
        self.steps += 1
        if not torch.isfinite(self.theta).all():
            self.diverged = True

    def advance(self, t: float) -> torch.Tensor:
        """Integrate up to flow time ``t`` (not before the current time) and return ``θ(t)``."""
        if not is_real(t) or not math.isfinite(t):
            raise ArgumentValueError(f"the flow time must be a finite number, got {t!r}")
        if t < self.time - 1e-12 * max(1.0, abs(self.time)):
            raise ArgumentValueError(
                f"the flow is at time {self.time:g}; it cannot go back to {t:g}")
        while not self.diverged and t - self.time > 1e-12 * max(1.0, t):
            h = min(self.step_size(), t - self.time)
            self.rk4_step(h)
        if not self.diverged:
            self.time = max(self.time, float(t))
        return self.theta


# eq=False: tensor fields.
@dataclass(frozen=True, eq=False)
class FlowResult:
    """Gradient flow sampled at requested times.

    Attributes:
        times: ``(m,)`` the requested times. ``thetas``: ``(m, p)`` ``θ(t)`` at those times.
        losses: ``(m,)`` ``L(θ(t))``. ``sharpness``: ``(m,)`` the latest ``|λ|_max`` estimate.
        steps, gradient_evals, hvps: work done. ``alpha``: the step factor.
        diverged: whether the integration produced non-finite values. ``wall_time``: seconds.
    """

    times: torch.Tensor
    thetas: torch.Tensor
    losses: torch.Tensor
    sharpness: torch.Tensor
    steps: int
    gradient_evals: int
    hvps: int
    alpha: float
    diverged: bool
    wall_time: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict of everything but ``thetas``."""
        return record_to_dict(self, drop=("thetas",))


def gradient_flow(
    objective: Objective,
    times: Sequence[float] | torch.Tensor,
    *,
    theta: torch.Tensor | None = None,
    alpha: float = 1.0,
    max_step: float | None = None,
    sharpness_every: int = 20,
    tol: float = 1e-3,
    seed: int = 0,
) -> FlowResult:
    """Integrate gradient flow from ``θ(0) = theta`` and return it at the (increasing) ``times``.

    See :class:`GradientFlow` for the integrator and its arguments. On a quadratic
    ``L = ½(θ−θ*)ᵀA(θ−θ*)`` the exact flow is ``θ(t) = θ* + exp(−tA)(θ(0) − θ*)``.
    """
    started = time.perf_counter()
    t = torch.as_tensor(times, dtype=torch.float64).reshape(-1)
    if t.numel() == 0 or not torch.isfinite(t).all() or (t < 0).any() or (t.diff() < 0).any():
        raise ArgumentValueError(
            "times must be a non-empty, non-decreasing sequence of finite times >= 0")
    flow = GradientFlow(objective, theta, alpha=alpha, max_step=max_step,
                        sharpness_every=sharpness_every, tol=tol, seed=seed)
    thetas, losses, sharp = [], [], []
    for value in t.tolist():
        theta_t = flow.advance(value).clone()
        thetas.append(theta_t)
        losses.append(float(objective.loss(theta_t)) if not flow.diverged else math.nan)
        sharp.append(flow.sharpness)
    return FlowResult(
        times=t, thetas=torch.stack(thetas), losses=torch.tensor(losses, dtype=torch.float64),
        sharpness=torch.tensor(sharp, dtype=torch.float64), steps=flow.steps,
        gradient_evals=flow.gradient_evals, hvps=flow.hvps, alpha=flow.alpha,
        diverged=flow.diverged, wall_time=time.perf_counter() - started,
    )


class FlowDistance:
    """Callback: the distance ``‖θ_k − θ_flow(k·η)‖`` of the GD iterate from gradient flow.

    The flow starts at the training's initial point (given by ``setup``, or ``theta``) and is
    advanced alongside the training to ``t = step · lr``. Records ``flow_time``,
    ``flow_distance``, ``flow_loss`` and ``flow_sharpness`` (``|λ|_max`` along the flow). Past
    ``max_time`` it records nothing (the flow gets expensive once its sharpness is high, since
    ``h = α/λ``).

    Args:
        objective: the objective being trained.
        lr: the step size ``η`` (default: the training config's).
        theta: the initial point (default: the training's, from ``setup``).
        max_time: stop following the flow beyond this time.
        alpha, max_step, sharpness_every, tol, seed: as in :class:`GradientFlow`.
    """

    def __init__(
        self,
        objective: Objective,
        *,
        lr: float | None = None,
        theta: torch.Tensor | None = None,
        max_time: float | None = None,
        alpha: float = 1.0,
        max_step: float | None = None,
        sharpness_every: int = 20,
        tol: float = 1e-3,
        seed: int = 0,
    ) -> None:
        self.objective = objective
        self.lr = None if lr is None else positive_real(lr, "lr")
        self.max_time = math.inf if max_time is None else positive_real(max_time, "max_time")
        self._options: dict[str, Any] = {"alpha": alpha, "max_step": max_step,
                                         "sharpness_every": sharpness_every, "tol": tol,
                                         "seed": seed}
        self.flow = None if theta is None else GradientFlow(objective, theta, **self._options)

    def setup(self, context: TrainContext) -> None:
        if self.lr is None:
            self.lr = float(context.config.lr)
        if self.flow is None:
            self.flow = GradientFlow(self.objective, context.param.detach().clone(),
                                     **self._options)

    def __call__(self, step: int, theta: torch.Tensor) -> dict[str, Any] | None:
        if self.flow is None or self.lr is None:
            raise RuntimeError("FlowDistance needs lr and a start: pass them, or use it in train")
        t = step * self.lr
        if t > self.max_time:
            return None
        flow_theta = self.flow.advance(t)
        if self.flow.diverged:
            return {"flow_time": t, "flow_distance": math.nan, "flow_loss": math.nan,
                    "flow_sharpness": math.nan}
        return {
            "flow_time": t,
            "flow_distance": float(torch.linalg.vector_norm(theta - flow_theta)),
            "flow_loss": float(self.objective.loss(flow_theta)),
            "flow_sharpness": self.flow.sharpness,
        }
