r"""Particle dynamics for mixed Nash equilibria of mean-field zero-sum games.

The players hold particle measures ``μ_x = Σ_i w_i δ_{x_i}`` and ``μ_y = Σ_j v_j δ_{y_j}`` (uniform
weights unless the method moves them). With ``K`` the ``(n, m)`` payoff matrix, the potentials are
``ψ(x_i) = Σ_j v_j K(x_i, y_j)`` (what ``x_i`` pays against ``μ_y``) and
``φ(y_j) = Σ_i w_i K(x_i, y_j)``. A Langevin step at temperature ``τ`` and step ``η`` is

.. math:: x_i ← R\big(x_i − η P_{x_i}∇ψ(x_i) + \sqrt{2ητ}\, P_{x_i} ξ_i\big), \qquad
          y_j ← R\big(y_j + η P_{y_j}∇φ(y_j) + \sqrt{2ητ}\, P_{y_j} ξ_j\big)

with ``P`` the tangent projection and ``R`` the retraction of the strategy space
(:mod:`valleys.games.spaces`: identity, wrapping on the torus, renormalising on the sphere).

Methods:

* ``"quasistatic"``: quasistatic Langevin gradient descent (Ma & Ying, ICLR 2022, arXiv
  2202.10947). The fast player runs ``inner_steps`` Langevin steps (step ``inner_lr``),
  warm-started from its previous particles, to re-equilibrate at the Gibbs best response; then
  the slow player (``slow="x"`` or ``"y"``) takes one Langevin step (step ``lr``). This
  discretises the quasistatic Wasserstein flow of ``F(p) = max_q L(p, q)``, which is convex.
* ``"descent-ascent"``: simultaneous Langevin descent–ascent (Domingo-Enrich, Jelassi, Mensch,
  Rotskoff & Bruna, NeurIPS 2020, arXiv 2002.06277, Algorithm 1); ``x`` steps with ``lr``,
  ``y`` with ``lr_y`` (default ``lr``).
* ``"wfr"``: Wasserstein–Fisher–Rao descent–ascent (same paper): the transport step above
  (noise only if ``τ > 0``; ``transport=False`` freezes positions) plus mirror steps on the
  weights, ``log w_i ← log w_i − γ(ψ(x_i) − Σ_k w_k ψ(x_k))`` and
  ``log v_j ← log v_j + γ(φ(y_j) − Σ_k v_k φ(y_k))``, renormalised (``γ = mirror_lr``, as in
  the mixed-GAN code ``arthurmensch/multi_gan``). The running averages of the weights are kept.

Everything is vectorised over particles: one payoff matrix per gradient evaluation, and
``∇ψ``/``∇φ`` by autograd of ``Σ_i ψ(x_i)`` and ``Σ_j φ(y_j)`` (row ``i`` of ``K`` depends on
``x_i`` only). Divergence (a non-finite particle or weight) stops the run with status
``"diverged"`` and returns the last finite state.

On request (``snapshot_every``) the solver keeps copies of both clouds (and the weights for
``"wfr"``) along the run, for animations; their number is capped (``max_snapshots``) by
thinning, so memory stays bounded even for runs stopped by a time budget.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from tqdm.auto import tqdm

from valleys._checks import is_integral, is_real, positive_real
from valleys._records import record_to_dict
from valleys.errors import ArgumentTypeError, ArgumentValueError
from valleys.games.spaces import Space, resolve_space

__all__ = ["METHODS", "GameResult", "GameState", "solve"]

METHODS = ("quasistatic", "descent-ascent", "wfr")
Payoff = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Monitor = Callable[["GameState"], dict[str, float]]

_OPTIONS = {
    "x_space", "y_space", "lr_y", "inner_steps", "inner_lr", "slow", "mirror_lr", "transport",
    "x_weights", "y_weights", "monitor", "record_every", "time_budget", "progress",
    "snapshot_every", "max_snapshots",
}
DEFAULT_MAX_SNAPSHOTS = 100


@dataclass(frozen=True)
class GameState:
    """What a monitor sees (and what a snapshot holds): particles, weights (``None`` if
    uniform), step and evaluations."""

    x: torch.Tensor
    y: torch.Tensor
    x_weights: torch.Tensor | None
    y_weights: torch.Tensor | None
    x_weights_avg: torch.Tensor | None
    y_weights_avg: torch.Tensor | None
    step: int
    evaluations: int


_STATE_FIELDS = tuple(f.name for f in fields(GameState))


@dataclass(frozen=True)
class GameResult:
    """Final particles of :func:`solve` and how they were obtained.

    Attributes:
        x, y: final particles ``(n, d)`` and ``(m, d')``.
        x_weights, y_weights: final weights (``"wfr"``), else ``None`` (uniform).
        x_weights_avg, y_weights_avg: running averages of the weights over steps (``"wfr"``).
        method, temperature, lr, seed: the call's settings.
        steps: outer steps completed; ``status`` is ``"finished"``, ``"time_budget"`` or
            ``"diverged"``.
        evaluations: payoff-matrix evaluations (each with its backward pass), the unit of
            compute: ``inner_steps + 1`` per quasistatic step, 1 for the others.
        history: one dict per record (``step``, ``evaluations``, ``time`` and the monitor's keys).
        wall_time: seconds.
        snapshots: copies of the state (:class:`GameState`, weights only for ``"wfr"``) at
            increasing steps, from step 0 to the final state, if ``snapshot_every`` was given;
            else empty. Not included in :meth:`to_dict`.
    """

    # The state fields repeat GameState's on purpose: a flat record, positional order kept.
    x: torch.Tensor
    y: torch.Tensor
    x_weights: torch.Tensor | None
    y_weights: torch.Tensor | None
    x_weights_avg: torch.Tensor | None
    y_weights_avg: torch.Tensor | None
    method: str
    temperature: float
    lr: float
    seed: int
    steps: int
    status: str
    evaluations: int
    history: tuple[dict[str, float], ...]
    wall_time: float
    snapshots: tuple[GameState, ...] = ()

    @property
    def diverged(self) -> bool:
        return self.status == "diverged"

    def to_dict(self) -> dict[str, Any]:
        return record_to_dict(self, drop=("snapshots",))


# ------------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------------


def _check_weights(w: torch.Tensor | None, n: int, like: torch.Tensor, who: str):
    if w is None:
        return None
    if not isinstance(w, torch.Tensor) or w.shape != (n,):
        raise ArgumentValueError(f"{who} must be a tensor of shape ({n},), one weight per particle")
    if bool((w < 0).any()) or not bool(torch.isfinite(w).all()):
        raise ArgumentValueError(f"{who} must be finite and non-negative")
    if abs(float(w.sum()) - 1.0) > 1e-6:
        raise ArgumentValueError(
            f"{who} must sum to 1 (got {float(w.sum()):.6g}); divide by its sum")
    return w.to(device=like.device, dtype=like.dtype)


def _validate(payoff, x0, y0, method, temperature, steps, lr, seed, options):
    if not callable(payoff):
        raise ArgumentTypeError("payoff must be a callable payoff(x, y) -> (n, m) matrix")
    if method not in METHODS:
        raise ArgumentValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    unknown = set(options) - _OPTIONS
    if unknown:
        raise ArgumentTypeError(f"unknown option(s) {sorted(unknown)}; known: {sorted(_OPTIONS)}")
    if isinstance(temperature, bool) or not is_real(temperature) \
            or not temperature >= 0 or not math.isfinite(temperature):
        raise ArgumentValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if isinstance(steps, bool) or not is_integral(steps) or steps < 1:
        raise ArgumentValueError(f"steps must be an integer >= 1, got {steps!r}")
    positive_real(lr, "lr")
    if isinstance(seed, bool) or not is_integral(seed):
        raise ArgumentTypeError(f"seed must be an int, got {seed!r}")
    x_space = resolve_space(options.get("x_space", "euclidean"))
    y_space = resolve_space(options.get("y_space", "euclidean"))
    x_space.check(x0, "x0")
    y_space.check(y0, "y0")
    if x0.dtype != y0.dtype or x0.device != y0.device:
        raise ArgumentValueError(
            f"x0 and y0 must share dtype and device, got {x0.dtype}/{x0.device} "
            f"and {y0.dtype}/{y0.device}")
    if method != "wfr":
        for key in ("x_weights", "y_weights", "mirror_lr", "transport"):
            if options.get(key) is not None:
                raise ArgumentValueError(f"{key} is only used by method='wfr'")
    if method != "quasistatic":
        for key in ("inner_steps", "inner_lr", "slow"):
            if options.get(key) is not None:
                raise ArgumentValueError(f"{key} is only used by method='quasistatic'")
    return x_space, y_space


# ------------------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------------------


def _potential_gradients(payoff: Payoff, x, y, wx, wy, need_x: bool, need_y: bool):
    """``(K, ∇ψ(x_i), ∇φ(y_j))``; gradients are ``None`` where not needed."""
    with torch.enable_grad():
        xr = x.detach().requires_grad_(need_x)
        yr = y.detach().requires_grad_(need_y)
        K = payoff(xr, yr)
        if not isinstance(K, torch.Tensor) or K.shape != (x.shape[0], y.shape[0]):
            got = tuple(K.shape) if isinstance(K, torch.Tensor) else type(K).__name__
            raise ArgumentValueError(f"payoff(x, y) must return the ({x.shape[0]}, {y.shape[0]}) "
                                     f"matrix K(x_i, y_j), got {got}")
        gx = gy = None
        if K.requires_grad:
            if need_x:
                (gx,) = torch.autograd.grad(K @ wy, xr, torch.ones_like(K[:, 0]),
                                            retain_graph=need_y, allow_unused=True)
            if need_y:
                (gy,) = torch.autograd.grad(wx @ K, yr, torch.ones_like(K[0]),
                                            allow_unused=True)
        gx = torch.zeros_like(x) if need_x and gx is None else gx
        gy = torch.zeros_like(y) if need_y and gy is None else gy
    return K.detach(), gx, gy


def _langevin(space: Space, z, drift, lr: float, temperature: float, generator):
    """One projected Langevin step ``R(z + η P drift + sqrt(2ητ) P ξ)``."""
    step = lr * space.tangent(z, drift)
    if temperature > 0:
        noise = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
        step = step + math.sqrt(2.0 * lr * temperature) * space.tangent(z, noise)
    return space.retract(z + step)


def _finite(*tensors) -> bool:
    return all(t is None or bool(torch.isfinite(t).all()) for t in tensors)


# ------------------------------------------------------------------------------------------------
# The solver
# ------------------------------------------------------------------------------------------------


def solve(payoff: Payoff, x0: torch.Tensor, y0: torch.Tensor, method: str, *,
          temperature: float, steps: int, lr: float, seed: int = 0,
          **options: Any) -> GameResult:
    r"""Run particle dynamics for the mixed equilibrium of ``min_μx max_μy ∬K dμx dμy``.

    Args:
        payoff: ``K(x, y)`` taking ``(n, d)`` and ``(m, d')`` batches and returning the
            ``(n, m)`` matrix; ``x`` minimises, ``y`` maximises. Differentiable in both.
        x0, y0: initial particles (same dtype and device; on the strategy space).
        method: ``"quasistatic"``, ``"descent-ascent"`` or ``"wfr"`` (see the module docs).
        temperature: entropy temperature ``τ >= 0`` (Langevin noise ``sqrt(2ητ)``).
        steps: outer steps (one slow-player step, or one simultaneous step).
        lr: step ``η`` of the slow player (quasistatic) or of ``x`` (the others).
        seed: seeds the Langevin noise (a ``torch.Generator`` on the particles' device).

    Keyword options:
        x_space, y_space: ``"euclidean"`` (default), ``"torus"``, ``"sphere"`` or a space.
        lr_y: step of ``y`` for ``"descent-ascent"``/``"wfr"`` (default ``lr``).
        slow: ``"x"`` (default) or ``"y"``, the quasistatic player that moves slowly.
        inner_steps: fast-player Langevin steps per outer step (default 10).
        inner_lr: fast-player step (default ``lr``).
        mirror_lr: ``"wfr"`` weight step ``γ`` (default ``lr``); ``transport``: move positions
            (default ``True``; ``False`` is mirror descent–ascent on the weights alone).
        x_weights, y_weights: ``"wfr"`` initial weights (default uniform).
        monitor: ``f(GameState) -> dict`` recorded at step 0, every ``record_every`` steps
            (default ``max(1, steps // 50)``) and at the end.
        time_budget: stop after this many seconds (status ``"time_budget"``).
        progress: tqdm progress bar (default ``False``).
        snapshot_every: keep a copy of both clouds (and weights, ``"wfr"``) at step 0, every
            ``snapshot_every`` steps and at the end, in ``result.snapshots`` (default ``None``:
            none kept).
        max_snapshots: cap on the snapshots kept (default 100, at least 2). When a new one
            would exceed it, every other one is dropped and the interval doubles, so the kept
            ones stay evenly spaced (steps ``0, s', 2s', ...`` with ``s'`` a power-of-two
            multiple of ``snapshot_every``) plus the final state (which replaces the last
            in-between one if the cap is reached); memory is at most ``max_snapshots`` copies
            of the particles, whatever the number of steps (or the time budget).

    Returns:
        A :class:`GameResult` with ``.x``, ``.y`` (and weights for ``"wfr"``).
    """
    x_space, y_space = _validate(payoff, x0, y0, method, temperature, steps, lr, seed, options)
    steps, seed, temperature = int(steps), int(seed), float(temperature)
    lr_y = (positive_real(options["lr_y"], "lr_y") if options.get("lr_y") is not None
            else float(lr))
    inner_steps = 10 if options.get("inner_steps") is None else options["inner_steps"]
    if isinstance(inner_steps, bool) or not isinstance(inner_steps, int) or inner_steps < 1:
        raise ArgumentValueError(f"inner_steps must be an integer >= 1, got {inner_steps!r}")
    inner_lr = (positive_real(options["inner_lr"], "inner_lr")
                if options.get("inner_lr") is not None else float(lr))
    slow = options.get("slow") or "x"
    if slow not in ("x", "y"):
        raise ArgumentValueError(f"slow must be 'x' or 'y', got {slow!r}")
    mirror_lr = options.get("mirror_lr")
    mirror_lr = float(lr) if mirror_lr is None else float(mirror_lr)
    if not (mirror_lr >= 0 and math.isfinite(mirror_lr)):
        raise ArgumentValueError(f"mirror_lr must be a finite number >= 0, got {mirror_lr!r}")
    transport = True if options.get("transport") is None else bool(options["transport"])
    record_every = options.get("record_every")
    record_every = max(1, steps // 50) if record_every is None else record_every
    if isinstance(record_every, bool) or not isinstance(record_every, int) or record_every < 1:
        raise ArgumentValueError(f"record_every must be an integer >= 1, got {record_every!r}")
    time_budget = options.get("time_budget")
    if time_budget is not None:
        positive_real(time_budget, "time_budget")
    snapshot_every = options.get("snapshot_every")
    if snapshot_every is not None and (isinstance(snapshot_every, bool)
                                       or not isinstance(snapshot_every, int)
                                       or snapshot_every < 1):
        raise ArgumentValueError(
            f"snapshot_every must be an integer >= 1 or None, got {snapshot_every!r}")
    max_snapshots = options.get("max_snapshots")
    max_snapshots = DEFAULT_MAX_SNAPSHOTS if max_snapshots is None else max_snapshots
    if isinstance(max_snapshots, bool) or not isinstance(max_snapshots, int) or max_snapshots < 2:
        raise ArgumentValueError(
            f"max_snapshots must be an integer >= 2 (step 0 and the final state), "
            f"got {max_snapshots!r}")
    monitor: Monitor | None = options.get("monitor")
    if monitor is not None and not callable(monitor):
        raise ArgumentTypeError("monitor must be a callable f(GameState) -> dict")

    x, y = x_space.retract(x0.detach().clone()), y_space.retract(y0.detach().clone())
    n, m = x.shape[0], y.shape[0]
    uniform_x = torch.full((n,), 1.0 / n, dtype=x.dtype, device=x.device)
    uniform_y = torch.full((m,), 1.0 / m, dtype=y.dtype, device=y.device)
    weighted = method == "wfr"
    wx0 = _check_weights(options.get("x_weights"), n, x, "x_weights")
    wy0 = _check_weights(options.get("y_weights"), m, y, "y_weights")
    log_wx = torch.log(wx0 if wx0 is not None else uniform_x) if weighted else None
    log_wy = torch.log(wy0 if wy0 is not None else uniform_y) if weighted else None
    avg_x = torch.zeros_like(uniform_x) if weighted else None
    avg_y = torch.zeros_like(uniform_y) if weighted else None

    generator = torch.Generator(device=x.device).manual_seed(seed)
    started = time.perf_counter()
    history: list[dict[str, float]] = []
    evaluations = 0
    status = "finished"

    def weights():
        if not weighted:
            return uniform_x, uniform_y
        return torch.exp(log_wx), torch.exp(log_wy)

    def state(step: int) -> GameState:
        wx, wy = weights()
        return GameState(x, y, wx if weighted else None, wy if weighted else None,
                         avg_x if weighted and step > 0 else None,
                         avg_y if weighted and step > 0 else None, step, evaluations)

    snapshots: list[GameState] = []
    snap_interval = snapshot_every

    def snapshot(step: int) -> None:
        nonlocal snap_interval
        if snap_interval is None or step % snap_interval:
            return
        # Copies: the monitor and the caller must not be able to alter a kept state.
        current = state(step)
        snapshots.append(replace(current, **{
            f: getattr(current, f).detach().clone() for f in _STATE_FIELDS
            if isinstance(getattr(current, f), torch.Tensor)}))
        if len(snapshots) > max_snapshots:  # thin: keep multiples of twice the interval
            snap_interval *= 2
            snapshots[:] = [kept for kept in snapshots if kept.step % snap_interval == 0]

    def record(step: int) -> None:
        if monitor is None:
            return
        state_now = state(step)
        entry = {"step": step, "evaluations": evaluations,
                 "time": time.perf_counter() - started}
        entry.update({k: float(v) for k, v in monitor(state_now).items()})
        history.append(entry)

    record(0)
    snapshot(0)
    bar = None
    if options.get("progress"):
        bar = tqdm(total=steps, desc=f"games:{method}", leave=False)
    done = 0
    for k in range(1, steps + 1):
        wx, wy = weights()
        if method == "quasistatic":
            fast_x = slow == "y"
            new_x, new_y = x, y
            for _ in range(inner_steps):
                _, gx, gy = _potential_gradients(payoff, new_x, new_y, wx, wy, fast_x, not fast_x)
                evaluations += 1
                if fast_x:
                    new_x = _langevin(x_space, new_x, -gx, inner_lr, temperature, generator)
                else:
                    new_y = _langevin(y_space, new_y, gy, inner_lr, temperature, generator)
            _, gx, gy = _potential_gradients(payoff, new_x, new_y, wx, wy, not fast_x, fast_x)
            evaluations += 1
            if fast_x:
                new_y = _langevin(y_space, new_y, gy, lr, temperature, generator)
            else:
                new_x = _langevin(x_space, new_x, -gx, lr, temperature, generator)
            new_lwx = new_lwy = None
        else:
            move = method == "descent-ascent" or transport
            K, gx, gy = _potential_gradients(payoff, x, y, wx, wy, move, move)
            evaluations += 1
            new_x, new_y = x, y
            if move:
                new_x = _langevin(x_space, x, -gx, lr, temperature, generator)
                new_y = _langevin(y_space, y, gy, lr_y, temperature, generator)
            new_lwx = new_lwy = None
            if weighted:
                psi, phi = K @ wy, wx @ K
                new_lwx = log_wx - mirror_lr * (psi - wx @ psi)
                new_lwy = log_wy + mirror_lr * (phi - wy @ phi)
                new_lwx = new_lwx - torch.logsumexp(new_lwx, 0)
                new_lwy = new_lwy - torch.logsumexp(new_lwy, 0)
        if not _finite(new_x, new_y, new_lwx, new_lwy):
            status = "diverged"
            break
        x, y = new_x, new_y
        if weighted:
            log_wx, log_wy = new_lwx, new_lwy
            avg_x = avg_x + (torch.exp(log_wx) - avg_x) / k
            avg_y = avg_y + (torch.exp(log_wy) - avg_y) / k
        done = k
        if bar is not None:
            bar.update(1)
        out_of_time = time_budget is not None and time.perf_counter() - started > time_budget
        if k % record_every == 0 or k == steps or out_of_time:
            record(k)
        snapshot(k)
        if out_of_time and k < steps:
            status = "time_budget"
            break
    if bar is not None:
        bar.close()
    if status == "diverged":
        record(done)
    if snap_interval is not None and snapshots[-1].step != done:
        if len(snapshots) == max_snapshots:  # the final state replaces the last in-between one
            snapshots.pop()
        snap_interval = 1
        snapshot(done)
    wx, wy = weights()
    return GameResult(
        x=x, y=y, x_weights=wx if weighted else None, y_weights=wy if weighted else None,
        x_weights_avg=avg_x if weighted and done > 0 else None,
        y_weights_avg=avg_y if weighted and done > 0 else None,
        method=method, temperature=float(temperature), lr=float(lr), seed=seed, steps=done,
        status=status, evaluations=evaluations, history=tuple(history),
        wall_time=time.perf_counter() - started, snapshots=tuple(snapshots),
    )
