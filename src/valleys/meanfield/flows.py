r"""Gradient flows of a risk over measures, simulated with particles.

Let ``R(μ)`` be a risk over probability measures and ``δR/δρ(x)`` its first variation. Three
flows are provided, each as one explicit (forward Euler / Euler–Maruyama) step on a
:class:`~valleys.meanfield.particles.ParticleMeasure` ``μ = Σ_j p_j δ_{x_j}``:

* **Wasserstein gradient flow** ``∂_t ρ = ∇·(ρ ∇ δR/δρ)`` (Mei–Montanari–Nguyen 2018;
  Chizat–Bach 2018; Rotskoff–Vanden-Eijnden 2018): each particle moves with the velocity
  ``−∇_x δR/δρ(x_j)``, ``x_j ← x_j − η ∇_x δR/δρ(x_j)``. The step ``η`` is a step in flow
  time and does **not** depend on the number of particles.
* **Langevin** (entropy-regularized) flow ``∂_t ρ = ∇·(ρ ∇ δR/δρ) + τ Δρ``, the Wasserstein
  flow of the free energy ``F = R + τ ∫ ρ log ρ``:
  ``x_j ← x_j − η ∇_x δR/δρ(x_j) + sqrt(2ητ) ξ_j`` with ``ξ_j ~ N(0, I)``.
* **Wasserstein–Fisher–Rao** flow ``∂_t ρ = α ∇·(ρ ∇ δR/δρ) − γ ρ (δR/δρ − ∫ δR/δρ dρ)``
  (Chizat et al. 2018; Rotskoff et al. 2019; Domingo-Enrich et al. 2020): transport at rate
  ``α`` plus mass reweighting at rate ``γ``. The reaction part is stepped multiplicatively
  (mirror descent on the weights, which keeps them positive):
  ``p_j ← p_j exp(−ηγ (g_j − Σ_k p_k g_k)) / Z`` with ``g_j = δR/δρ(x_j)``; the total mass
  stays 1 (the probability-measure version of WFR).

**Fields.** A field is a callable ``field(μ) -> FieldValue`` returning the velocity
``∇_x δR/δρ(x_j)`` at every particle, and (for WFR) the first variation ``δR/δρ(x_j)``.
:func:`autograd_field` builds one from a risk written as a function of the particles,
``risk(positions, probabilities)``: if ``R_n(x, p) = R(Σ_j p_j δ_{x_j})`` then
``∂R_n/∂x_j = p_j ∇_x δR/δρ(x_j)`` and ``∂R_n/∂p_j = δR/δρ(x_j)`` (plus a constant that the
WFR step removes), so the velocity is the autograd gradient divided by ``p_j`` — ``n`` times
the gradient for uniform weights: the mean-field scaling.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from valleys._checks import positive_real
from valleys._records import record_to_dict
from valleys.errors import ArgumentTypeError, ArgumentValueError
from valleys.meanfield.particles import ParticleMeasure

__all__ = [
    "METHODS",
    "FieldValue",
    "FlowResult",
    "autograd_field",
    "knn_entropy",
    "langevin_step",
    "simulate",
    "wasserstein_step",
    "wfr_step",
]

METHODS = ("wasserstein", "langevin", "wfr")


@dataclass(frozen=True)
class FieldValue:
    """What a field returns at a measure ``μ = Σ_j p_j δ_{x_j}``.

    Attributes:
        velocity: ``(n, D)``, ``∇_x δR/δρ(x_j)`` (particles move along ``−velocity``).
        first_variation: ``(n,)``, ``δR/δρ(x_j)`` up to an additive constant (needed by WFR).
        risk: ``R(μ)`` when the field computes it on the way (for records), else ``None``.
    """

    velocity: torch.Tensor
    first_variation: torch.Tensor | None = None
    risk: float | None = None


Field = Callable[[ParticleMeasure], FieldValue]


def autograd_field(risk: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Field:
    """A field from ``risk(positions, probabilities) -> scalar`` by automatic differentiation.

    Returns ``velocity_j = (∂R/∂x_j) / p_j`` and ``first_variation_j = ∂R/∂p_j`` (see the module
    docstring). ``risk`` must treat ``probabilities`` as the weights of the empirical measure,
    e.g. ``R = Σ_j p_j V(x_j)`` for a potential energy.
    """

    def field(measure: ParticleMeasure) -> FieldValue:
        with torch.enable_grad():
            x = measure.positions.detach().requires_grad_(True)
            p = measure.probabilities.detach().requires_grad_(True)
            value = risk(x, p)
            if value.ndim != 0:
                raise ArgumentValueError(
                    f"risk must return a scalar, got shape {tuple(value.shape)}")
            gx, gp = torch.autograd.grad(value, (x, p), allow_unused=True)
        gx = torch.zeros_like(x) if gx is None else gx
        gp = torch.zeros_like(p) if gp is None else gp
        return FieldValue(gx.detach() / p.detach()[:, None], gp.detach(), float(value.detach()))

    return field


def _evaluate(measure: ParticleMeasure, field: Field) -> FieldValue:
    value = field(measure)
    if not isinstance(value, FieldValue):
        raise ArgumentTypeError(f"a field must return a FieldValue, got {type(value).__name__}")
    if value.velocity.shape != measure.positions.shape:
        raise ArgumentValueError(
            f"field velocity has shape {tuple(value.velocity.shape)}, expected "
            f"{tuple(measure.positions.shape)}"
        )
    return value


def wasserstein_step(measure: ParticleMeasure, field: Field,
                     lr: float) -> tuple[ParticleMeasure, FieldValue]:
    """One forward-Euler step ``x_j ← x_j − η ∇_x δR/δρ(x_j)`` (weights unchanged).

    Returns the new measure and the field value at the old one (its ``risk`` is ``R`` before
    the step).
    """
    positive_real(lr, "lr")
    value = _evaluate(measure, field)
    return measure.with_positions(measure.positions - lr * value.velocity), value


def langevin_step(measure: ParticleMeasure, field: Field, lr: float, temperature: float,
                  generator: torch.Generator | None = None) -> tuple[ParticleMeasure, FieldValue]:
    """One Euler–Maruyama step ``x_j ← x_j − η ∇_x δR/δρ(x_j) + sqrt(2ητ) ξ_j``."""
    positive_real(lr, "lr")
    if temperature < 0:
        raise ArgumentValueError(f"temperature must be >= 0, got {temperature}")
    value = _evaluate(measure, field)
    x = measure.positions
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    moved = x - lr * value.velocity + math.sqrt(2 * lr * temperature) * noise
    return measure.with_positions(moved), value


def wfr_step(measure: ParticleMeasure, field: Field, lr: float, *, reaction_rate: float = 1.0,
             transport_rate: float = 1.0) -> tuple[ParticleMeasure, FieldValue]:
    """One Wasserstein–Fisher–Rao step: transport at rate ``α``, reweighting at rate ``γ``.

    ``x_j ← x_j − ηα ∇_x δR/δρ(x_j)`` and ``p_j ← p_j exp(−ηγ (g_j − ḡ)) / Z`` with
    ``g_j = δR/δρ(x_j)``, ``ḡ = Σ_k p_k g_k`` and ``Z`` the normalization (both parts use the
    field at the old measure). To first order in ``η`` the weights follow
    ``dp_j/dt = −γ p_j (g_j − ḡ)``, the Fisher–Rao gradient flow restricted to probabilities.
    """
    positive_real(lr, "lr")
    if reaction_rate < 0 or transport_rate < 0:
        raise ArgumentValueError("reaction_rate and transport_rate must be >= 0")
    value = _evaluate(measure, field)
    if value.first_variation is None:
        raise ArgumentValueError(
            "the WFR step needs the field's first_variation (δR/δρ at particles)")
    p = measure.probabilities
    g = value.first_variation
    logits = torch.log(p) - lr * reaction_rate * (g - p @ g)
    weights = torch.softmax(logits, dim=0)  # normalized in a numerically safe way
    if not bool(torch.isfinite(weights).all()):
        raise FloatingPointError("WFR weights became non-finite (the flow diverged)")
    moved = measure.positions - lr * transport_rate * value.velocity
    return ParticleMeasure(moved, weights), value


def knn_entropy(measure: ParticleMeasure, *, chunk_size: int = 2048) -> float:
    """Kozachenko–Leonenko estimate of the differential entropy ``−∫ ρ log ρ`` (uniform weights).

    ``Ĥ = ψ(n) − ψ(1) + log V_D + (D/n) Σ_j log ε_j`` with ``ε_j`` the distance from ``x_j``
    to its nearest other particle and ``V_D = π^{D/2}/Γ(D/2 + 1)`` the unit-ball volume
    (Kozachenko & Leonenko 1987). Consistent as ``n → ∞``; biased for small ``n`` or large
    ``D``. Distances are computed in row chunks (memory ``O(chunk · n)``).
    """
    if measure.weights is not None:
        raise ArgumentValueError("knn_entropy needs an unweighted measure (weights=None)")
    n, D = measure.n, measure.dim
    if n < 2:
        raise ArgumentValueError("knn_entropy needs at least 2 particles")
    x = measure.positions
    logs = []
    for start in range(0, n, chunk_size):
        dist = torch.cdist(x[start:start + chunk_size], x)
        rows = torch.arange(dist.shape[0], device=x.device)
        dist[rows, rows + start] = math.inf
        logs.append(dist.min(dim=1).values.clamp_min(torch.finfo(x.dtype).tiny).log())
    log_eps = torch.cat(logs)
    log_ball = 0.5 * D * math.log(math.pi) - math.lgamma(0.5 * D + 1)
    digamma_n = float(torch.special.digamma(torch.tensor(float(n), dtype=torch.float64)))
    return digamma_n + 0.5772156649015329 + log_ball + D * float(log_eps.mean())


@dataclass(frozen=True)
class FlowResult:
    """A simulated flow.

    Attributes:
        measure: the final particle measure.
        status: ``"completed"`` or ``"diverged"`` (non-finite positions, weights or risk).
        steps: steps taken.
        records: one dict per record: ``step``, ``time`` (flow time ``step·η``), ``risk`` when
            the field reports it, ``effective_sample_size`` for WFR, plus what ``callback``
            adds.
        snapshots: ``(step, measure)`` pairs kept every ``snapshot_every`` steps.
        config: the arguments of :func:`simulate`.
        wall_time: seconds.
    """

    measure: ParticleMeasure
    status: str
    steps: int
    records: tuple[dict[str, Any], ...]
    snapshots: tuple[tuple[int, ParticleMeasure], ...] = field(default_factory=tuple)
    config: dict[str, Any] = field(default_factory=dict)
    wall_time: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return record_to_dict(self, drop=("measure", "snapshots"))

    def series(self, key: str) -> list[float]:
        """The values of ``key`` over the records (NaN where missing)."""
        return [float(r.get(key, math.nan)) for r in self.records]


def simulate(
    measure: ParticleMeasure,
    field: Field,
    *,
    lr: float,
    steps: int,
    method: str = "wasserstein",
    temperature: float = 0.0,
    reaction_rate: float = 1.0,
    transport_rate: float = 1.0,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    record_every: int = 1,
    snapshot_every: int | None = None,
    callback: Callable[[int, ParticleMeasure], dict[str, Any] | None] | None = None,
    free_energy: bool = False,
) -> FlowResult:
    """Run ``steps`` steps of one of :data:`METHODS` from ``measure``.

    Records are taken at step 0, every ``record_every`` steps and at the end; the risk of a
    record is the field's ``risk`` at that measure. Divergence is data: the run stops with
    ``status="diverged"`` at the first non-finite position, weight or risk.

    Args:
        method: ``"wasserstein"``, ``"langevin"`` (uses ``temperature``) or ``"wfr"`` (uses
            ``reaction_rate`` and ``transport_rate``).
        seed, generator: the Langevin noise (a generator on the positions' device is created
            from ``seed`` when none is given).
        free_energy: also record ``entropy`` (:func:`knn_entropy`, unweighted measures only)
            and ``free_energy = risk − τ·entropy``, the Lyapunov function of the Langevin
            flow (costs ``O(n²)`` per record).
    """
    if not isinstance(measure, ParticleMeasure):
        raise ArgumentTypeError(f"measure must be a valleys.meanfield.ParticleMeasure, got "
                                f"{type(measure).__name__}; wrap positions as ParticleMeasure(x)")
    if not bool(torch.isfinite(measure.positions).all()):
        raise ArgumentValueError(
            "the initial measure's positions contain NaN or infinite values; start "
            "the flow from finite particles")
    if method not in METHODS:
        raise ArgumentValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if steps < 0 or record_every < 1 or (snapshot_every is not None and snapshot_every < 1):
        raise ArgumentValueError("steps must be >= 0 and record_every, snapshot_every >= 1")
    positive_real(lr, "lr")
    if method == "langevin" and generator is None:
        generator = torch.Generator(device=measure.positions.device)
        generator.manual_seed(0 if seed is None else seed)
    config = {"method": method, "lr": lr, "steps": steps, "temperature": temperature,
              "reaction_rate": reaction_rate, "transport_rate": transport_rate, "seed": seed,
              "n": measure.n, "dim": measure.dim}
    started = time.perf_counter()
    records: list[dict[str, Any]] = []
    snapshots: list[tuple[int, ParticleMeasure]] = []
    status, current, step = "completed", measure, 0

    def record(k: int, value: FieldValue | None, m: ParticleMeasure) -> None:
        if value is None:
            value = _evaluate(m, field)
        entry: dict[str, Any] = {"step": k, "time": k * lr}
        if value.risk is not None:
            entry["risk"] = value.risk
        if free_energy:
            entry["entropy"] = knn_entropy(m)
            if value.risk is not None:
                entry["free_energy"] = value.risk - temperature * entry["entropy"]
        if method == "wfr":
            entry["effective_sample_size"] = m.effective_sample_size()
        if callback is not None:
            entry.update(callback(k, m) or {})
        records.append(entry)

    for step in range(steps):
        try:
            if method == "wasserstein":
                new, value = wasserstein_step(current, field, lr)
            elif method == "langevin":
                new, value = langevin_step(current, field, lr, temperature, generator)
            else:
                new, value = wfr_step(current, field, lr, reaction_rate=reaction_rate,
                                      transport_rate=transport_rate)
        except FloatingPointError:
            status = "diverged"
            break
        if step % record_every == 0:
            record(step, value, current)
        if snapshot_every is not None and step % snapshot_every == 0:
            snapshots.append((step, current))
        if _diverged(new, value):
            status, current = "diverged", new
            break
        current = new
    else:
        step = steps
    if status == "completed":
        record(step, None, current)
        if snapshot_every is not None:
            snapshots.append((step, current))
    else:
        records.append({"step": step + 1, "time": (step + 1) * lr, "risk": math.nan})
        step += 1
    return FlowResult(current, status, step, tuple(records), tuple(snapshots), config,
                      time.perf_counter() - started)


def _diverged(measure: ParticleMeasure, value: FieldValue) -> bool:
    if value.risk is not None and not math.isfinite(value.risk):
        return True
    if not bool(torch.isfinite(measure.positions).all()):
        return True
    return measure.weights is not None and not bool(torch.isfinite(measure.weights).all())
