r"""How SGD selects its minima: linear (mean-square) stability.

**Claim** (Wu, Ma & E, NeurIPS 2018). A global minimum ``θ*`` is reachable by an optimizer only
if it is linearly (mean-square) stable for it. For SGD with learning rate ``η`` and batches of
``B`` drawn without replacement from ``n`` samples the sufficient condition is
``λ_max{(I − ηH)² + η²cΣ} <= 1`` with ``c = (n − B)/(B(n − 1))``, which implies the
"rectangle" ``a <= 2/η`` and ``s <= (1/η) sqrt(B(n − 1)/(n − B))`` for the sharpness
``a = λ_max(H)`` and the non-uniformity ``s = sqrt(λ_max(Σ))``. Consequences shown in the paper:
(a) GD's final sharpness sits just below ``2/η`` when ``η`` is large (poster Table 1);
(b) SGD's solutions lie inside the region of their ``(η, B)`` (poster Fig. 3); (c) a minimum
found by GD that is stable for GD but not for SGD at the same ``η`` is left as soon as SGD takes
over, and SGD settles at another minimum that satisfies its condition (poster Fig. 1).

**Set-up** (one seed: the digits split, the initialization and every batch come from it).
ReLU MLPs on the first ``n`` samples of the seeded scikit-learn digits training split
(standardized pixels, one-hot targets), square loss ``½ Σ_k (f_k − y_k)²`` averaged over
samples, float64. Learning rates are multiples (``*_factors``) of ``2/a₀``, ``a₀`` the
sharpness at the seed's initialization (rounded to 4 digits), so the grid straddles the GD
threshold of the starting point by the same factors on every seed. A run stops at the loss goal
or at the step cap ``⌈flow_time/η⌉``; a run whose loss grows 10⁶-fold is ``diverged``.

* (a) GD at each ``gd_factors`` learning rate; ``a`` at the final iterate.
* (b) SGD (``sampling="subset"``) at each ``sgd_factors`` × ``batch_sizes``. **Error of a point.**
  A run that reaches the loss goal keeps going for ``tail_steps`` steps at the same ``(η, B)``;
  ``(a, s)`` are measured at ``tail_points`` iterates evenly spaced over that tail (the first at
  the goal). The point is their mean, its error their standard deviation (ddof = 1): how much
  the solution SGD sits at moves between iterates. A point counts as outside a bound only when
  it exceeds the bound by more than its error.
* (c) Escape: start from the GD minimum of (a) at ``escape_factor``. The batch sizes are
  chosen by a rule about the regime, not the outcome: every ``B`` of ``escape_batch_sizes``
  whose 1-D criterion ``(1 − ηa)² + η²c s²`` at the GD minimum is at least
  ``ESCAPE_MIN_CRITERION`` (clearly SGD-unstable; the criterion is 1 on the boundary), or the
  ``escape_max_runs`` largest of them (the quick preset's budget). For each,
  SGD runs ``burn_in`` steps recording the full-batch loss at every step (its peak is the
  spike), then on to the loss goal, then the same tail as (b). GD continued from the same
  minimum for ``control_steps`` steps is the control.

**How ``(a, s)`` and stability are measured.** At each point
:func:`~valleys.stability.gram_sharpness_nonuniformity` gives ``a``, ``s`` and ``η*`` of the
sufficient condition from the Gauss–Newton per-sample Hessians ``H_i = J_iᵀJ_i`` (the theorem's
interpolating-minimum setting; the true Hessian at a loss-goal minimum carries small negative
residual terms). The *exact* mean-square test (the spectral radius ``ρ(T)`` of the
second-moment map, :func:`~valleys.stability.exact_mean_square`) needs ``p <= 200`` parameters;
our networks have thousands, so it is applied to the compression of the per-sample Hessians
onto the span ``Q`` of the top ``EXACT_DIRECTIONS`` eigenvectors of ``H`` and of ``Σ``
(``(J_iQ)ᵀ(J_iQ)``, by forward-mode products). Its ``ρ_Q`` is a lower bound of the exact ``ρ``
(the compression's Rayleigh quotients are ``T``'s on matrices supported in ``Q``), while
``η <= η*`` certifies stability: ``ρ_Q > 1`` certifies instability.

**Criteria** (module constants, fixed before any run; per seed, aggregated over seeds by
:func:`~valleys.experiments.protocol.judge_seeds`; no claim defines "partly"):

* ``gd-edge``: every converged GD run has ``a <= (1 + GD_EDGE_SLACK)·2/η``, and every converged
  run with ``η >= 2/a₀`` (GD cannot stay in the initial region) has
  ``a >= GD_EDGE_BAND·2/η``; a seed without such a run is not tested.
* ``sgd-region``: every converged SGD run has ``a − err_a <= 2/η`` and
  ``s − err_s <= s-bound``; runs that diverged or missed the goal are not tested.
* ``escape``: for every chosen ``B`` the loss spikes at least ``SPIKE_FACTOR``-fold above the
  GD minimum's within the burn-in (escaped), SGD ends at a loss ``<= SETTLE_FACTOR``·goal
  (settled) and its landing point is inside the bounds of its ``(η, B)`` beyond its error; a
  batch size whose SGD diverged is not tested, and so is a seed whose GD run did not converge
  or that has no tested batch size.
"""

from __future__ import annotations

import functools
import math
import statistics
import warnings
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.func import jvp

from valleys import Objective, eigsh, ggn, ggn_variance, sharpness
from valleys.data import load_digits
from valleys.errors import ArgumentValueError
from valleys.experiments.protocol import Claim, ClaimSpec, spread
from valleys.models import MLP
from valleys.stability import (
    exact_mean_square,
    gram_sharpness_nonuniformity,
    necessary_bounds,
    sgd_criterion,
)
from valleys.train import train

__all__ = [
    "CLAIMS",
    "NAME",
    "PAPER",
    "PRESETS",
    "Preset",
    "claims",
    "edge_outcome",
    "escape_outcome",
    "measure",
    "point_inside",
    "region_outcome",
    "summary",
]

NAME = "linear-stability"

PAPER = (
    "Wu, Ma & E, \"How SGD selects the global minima in over-parameterized learning: a "
    "dynamical stability perspective\", NeurIPS 2018"
)

# --- criteria, fixed before the runs ----------------------------------------------------------

#: A GD solution may exceed 2/η by 5% (it is a loss-goal minimum, not an exact one) ...
GD_EDGE_SLACK = 0.05
#: ... and for η >= 2/a₀ "just below 2/η" means a >= 0.8 · 2/η.
GD_EDGE_BAND = 0.8
#: Escape batch sizes: the 1-D criterion at the GD minimum is at least this (1 = boundary).
ESCAPE_MIN_CRITERION = 1.5
#: An escape raises the full-batch loss at least tenfold above the GD minimum's ...
SPIKE_FACTOR = 10.0
#: ... and SGD settles again below 10 × the loss goal.
SETTLE_FACTOR = 10.0
#: Eigenvectors of H and of Σ spanning the subspace of the compressed exact test.
EXACT_DIRECTIONS = 3


@dataclass(frozen=True)
class Preset:
    """Everything that sizes the reproduction besides the seed.

    Attributes:
        n: training samples (the first ``n`` of the seeded digits training split).
        widths: MLP layer widths (ReLU, 64 inputs, 10 outputs).
        gd_factors: GD learning rates as multiples of ``2/a₀``.
        sgd_factors: SGD learning rates as multiples of ``2/a₀`` (a subset of ``gd_factors``).
        batch_sizes: SGD batch sizes of (b) (sampling without replacement).
        escape_factor: (c)'s learning rate as a multiple of ``2/a₀`` (one of ``gd_factors``).
        escape_batch_sizes: candidate batch sizes of (c); those with a 1-D criterion
            ``>= ESCAPE_MIN_CRITERION`` at the GD minimum are run ...
        escape_max_runs: ... at most this many of them, the largest (the mildest noise that is
            still clearly unstable); ``None``: all.
        loss_goal: training loss at which a run counts as converged.
        flow_time: step cap ``⌈flow_time/η⌉`` (the same gradient-flow time for every η).
        burn_in: SGD steps after the switch with the loss recorded at every step.
        control_steps: GD steps continued from the GD minimum (the control).
        tail_steps, tail_points: the tail after the goal over which ``(a, s)`` are averaged.
        record_every: steps between loss records.
        threads: torch threads.
    """

    n: int
    widths: tuple[int, ...]
    gd_factors: tuple[float, ...]
    sgd_factors: tuple[float, ...]
    batch_sizes: tuple[int, ...]
    escape_factor: float
    escape_batch_sizes: tuple[int, ...]
    loss_goal: float
    flow_time: float
    burn_in: int
    control_steps: int
    tail_steps: int
    tail_points: int
    record_every: int
    escape_max_runs: int | None = None
    threads: int | None = 1


PRESETS: dict[str, Preset] = {
    # CI: the paper's three parts on a 256-sample, one-hidden-layer set-up.
    "quick": Preset(
        n=256,
        widths=(64, 64, 10),
        gd_factors=(0.5, 1.0, 2.0, 4.0),
        sgd_factors=(0.5, 1.0),
        # n/8 and n/2 (B = 8 diverged or stalled at the step cap on both seeds, 6 s of CPU)
        batch_sizes=(32, 128),
        escape_factor=0.5,
        escape_batch_sizes=(8, 16, 32, 64, 128),
        escape_max_runs=2,
        loss_goal=1e-3,
        flow_time=1000.0,
        burn_in=300,
        control_steps=300,
        tail_steps=200,
        tail_points=3,
        record_every=20,
    ),
    # n ≈ 1000 like the paper's FashionMNIST-1k. The loss goal is 5e-3 because with 1e-3 no
    # run of a first full run reached it within its step cap (losses stalled at 2e-3 to 4e-3).
    # The learning rates below 2/a₀ stop at 0.5·2/a₀ (the escape's): each halving of η doubles
    # the steps, and a seed must fit in about 5 minutes of one CPU core.
    "full": Preset(
        n=1024,
        widths=(64, 128, 10),
        gd_factors=(0.5, 1.0, 2.0**0.5, 2.0, 2.0**1.5, 4.0),
        sgd_factors=(0.5, 1.0),
        batch_sizes=(4, 16, 64, 256),  # the paper's small batches (4, 10, 25 of 1000) and more
        escape_factor=0.5,
        escape_batch_sizes=(16, 64, 128, 256),
        loss_goal=5e-3,
        flow_time=3000.0,
        burn_in=600,
        control_steps=600,
        tail_steps=400,
        tail_points=4,
        record_every=50,
    ),
}

CLAIMS = (
    ClaimSpec(
        "gd-edge",
        "GD ends at the sharpest minimum it can stay in: its final sharpness is at most 2/η and, "
        "for learning rates large enough to leave the initial region, close to 2/η "
        "(poster Table 1).",
        f"per seed: every converged GD run has a ≤ {1 + GD_EDGE_SLACK:g}·2/η, and every "
        f"converged run with η ≥ 2/a₀ has a ≥ {GD_EDGE_BAND:g}·2/η; a seed without a converged "
        "run at η ≥ 2/a₀ is not tested; every tested seed must pass",
    ),
    ClaimSpec(
        "sgd-region",
        "SGD's solutions lie inside the stability region of their (η, B): a ≤ 2/η and "
        "s ≤ (1/η)·sqrt(B(n−1)/(n−B)) (poster Fig. 3).",
        "per seed: every converged SGD run has a − err_a ≤ 2/η and s − err_s ≤ "
        "(1/η)·sqrt(B(n−1)/(n−B)), err the standard deviation of the estimate over the tail "
        "iterates; diverged or unconverged runs are not tested; every tested seed must pass",
    ),
    ClaimSpec(
        "escape",
        "A GD minimum that is stable for GD but unstable for SGD at the same η is left as soon "
        "as SGD takes over, and SGD settles at another minimum inside its stability region "
        "(poster Fig. 1).",
        f"per seed, at every batch size run (those of the grid whose 1-D criterion at the GD "
        f"minimum is ≥ {ESCAPE_MIN_CRITERION:g}; at most the preset's escape_max_runs largest "
        f"of them): the loss spikes ≥ {SPIKE_FACTOR:g}× the GD minimum's "
        f"within the burn-in, SGD ends at a loss ≤ {SETTLE_FACTOR:g}× the goal, and its "
        "landing point is inside the bounds beyond its error; a batch size whose SGD diverged "
        "is not tested, and so is a seed whose GD run did not converge or without a tested "
        "batch size; every tested seed must pass",
    ),
)

_SPECS = {spec.id: spec for spec in CLAIMS}

SEEDS = {"quick": (0, 1), "full": (0, 1, 2)}


# --- problem ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` samples of the seeded digits training split (float64, one-hot)."""
    X, Y = load_digits(seed=seed, one_hot=True, dtype=torch.float64).train
    if n > X.shape[0]:
        raise ArgumentValueError(f"n={n} exceeds the {X.shape[0]} digits training samples")
    return X[:n].contiguous(), Y[:n].contiguous()


def _objective(config: Preset, seed: int, device: torch.device) -> Objective:
    """The square-loss objective of the seed's MLP at its initialization, on ``device``."""
    model = MLP(tuple(config.widths), "relu", seed=seed).double().eval().to(device)
    X, Y = _data(config.n, seed)
    return Objective(model, "mse", (X.to(device), Y.to(device)))


def _stream(seed: int, *tags: Any) -> int:
    """A batch-sampling seed for one run, derived from the seed and the run's role."""
    return (seed * 1_000_003 + zlib.crc32(repr(tags).encode())) % 2**31


def _lr(factor: float, a0: float) -> float:
    """``factor · 2/a₀`` rounded to 4 significant digits."""
    return float(f"{factor * 2.0 / a0:.4g}")


def _step_cap(config: Preset, lr: float) -> int:
    return math.ceil(config.flow_time / lr)


# --- measurements at a point --------------------------------------------------------------------


def _point(obj: Objective, theta: torch.Tensor, lr: float, batch_size: int) -> dict[str, Any]:
    """``a``, ``s``, ``η*`` (sufficient condition) and the bounds at ``θ`` for ``(η, B)``.

    Gauss–Newton per-sample Hessians ``J_iᵀJ_i``
    (:func:`~valleys.stability.gram_sharpness_nonuniformity`); at a loss-goal minimum the
    library warns that θ is not interpolating, which the record states as ``max_residual``.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = gram_sharpness_nonuniformity(obj, batch_size=batch_size, theta=theta)
    bounds = necessary_bounds(lr, batch_size, obj.n)
    a, s = result.sharpness, result.nonuniformity
    return {
        "sharpness": a,
        "nonuniformity": s,
        "max_stable_lr": float(result.max_stable_lr),
        "criterion_1d": sgd_criterion(a, s, lr, batch_size, obj.n),
        "max_sharpness": bounds.max_sharpness,
        "max_nonuniformity": bounds.max_nonuniformity,
        "max_residual": result.max_residual,
    }


def _subspace_hessians(obj: Objective, theta: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Per-sample Gauss–Newton Hessians compressed onto ``Q``: ``(J_iQ)ᵀ(J_iQ)``, ``(n, m, m)``.

    ``Q`` is an orthonormal basis of the top ``k`` eigenvectors of ``H`` (GGN) and of ``Σ``
    (the GGN variance); ``J_iQ`` comes from one forward-mode product per column.
    """
    vectors = [eigsh(ggn(obj, theta), k=k, tol=1e-4, seed=seed).vectors,
               eigsh(ggn_variance(obj, theta), k=k, tol=1e-4, seed=seed).vectors]
    Q, _ = torch.linalg.qr(torch.cat(vectors, dim=1))
    X = torch.cat([X for X, _ in obj.chunks()])
    columns = [jvp(lambda t: obj.forward(t, X), (theta,), (Q[:, j],))[1]
               for j in range(Q.shape[1])]
    JQ = torch.stack(columns, dim=-1)  # (n, K, m)
    return torch.einsum("nkm,nkl->nml", JQ, JQ)


def _exact(hessians: torch.Tensor, lr: float, batch_size: int) -> dict[str, float]:
    """The exact mean-square test on the compressed Hessians: ``ρ_Q <= ρ``."""
    result = exact_mean_square(hessians, lr, batch_size, method="dense")
    return {"rho_subspace": result.spectral_radius,
            "sufficient_subspace": result.sufficient_lambda_max}


def _tail(obj: Objective, theta: torch.Tensor, lr: float, batch_size: int, config: Preset,
          seed: int, tag: Sequence[Any]) -> dict[str, Any]:
    """SGD continued for ``tail_steps`` after the goal, ``(a, s)`` at ``tail_points`` iterates.

    The estimate is the mean over the iterates, its error the standard deviation (ddof = 1);
    the compressed exact test is taken at the last iterate.
    """
    points = [_point(obj, theta, lr, batch_size)]
    chunk = max(1, config.tail_steps // max(config.tail_points - 1, 1))
    losses = []
    for j in range(config.tail_points - 1):
        run = train(obj, theta=theta, lr=lr, steps=chunk, batch_size=batch_size,
                    sampling="subset", seed=_stream(seed, *tag, "tail", j),
                    record_every=chunk)
        if run.status == "diverged":
            break
        theta = run.theta
        losses.append(run.final_loss)
        points.append(_point(obj, theta, lr, batch_size))
    hessians = _subspace_hessians(obj, theta, EXACT_DIRECTIONS, seed)
    out = dict(points[-1])
    for key in ("sharpness", "nonuniformity"):
        values = [p[key] for p in points]
        out[key] = statistics.fmean(values)
        out[f"{key}_error"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out[f"{key}_samples"] = values
    out["tail_losses"] = losses
    out.update(_exact(hessians, lr, batch_size))
    return out


# --- (a) and (b) --------------------------------------------------------------------------------


def _gd_run(obj: Objective, lr: float, factor: float, config: Preset,
            seed: int) -> tuple[dict[str, Any], torch.Tensor | None]:
    result = train(obj, lr=lr, steps=_step_cap(config, lr), seed=seed,
                   loss_goal=config.loss_goal, record_every=config.record_every)
    record: dict[str, Any] = {"factor": factor, "lr": lr, "batch_size": obj.n,
                              "status": result.status, "steps": result.steps,
                              "final_loss": result.final_loss}
    if result.status != "converged":
        return record, None
    record.update(_point(obj, result.theta, lr, obj.n))
    record.update(_exact(_subspace_hessians(obj, result.theta, EXACT_DIRECTIONS, seed), lr,
                         obj.n))
    return record, result.theta


def _sgd_run(obj: Objective, lr: float, factor: float, batch_size: int, config: Preset,
             seed: int) -> dict[str, Any]:
    result = train(obj, lr=lr, steps=_step_cap(config, lr), batch_size=batch_size,
                   sampling="subset", seed=_stream(seed, "sgd", factor, batch_size),
                   loss_goal=config.loss_goal, record_every=config.record_every)
    record: dict[str, Any] = {"factor": factor, "lr": lr, "batch_size": batch_size,
                              "status": result.status, "steps": result.steps,
                              "final_loss": result.final_loss}
    if result.status == "converged":
        record.update(_tail(obj, result.theta, lr, batch_size, config, seed,
                            ("sgd", factor, batch_size)))
    return record


# --- (c) ----------------------------------------------------------------------------------------


def _losses(records: Sequence[Mapping[str, Any]], offset: int = 0) -> list[list[float]]:
    return [[r["step"] + offset, r["loss"]] for r in records]


def _escape_batch(obj: Objective, theta: torch.Tensor, start: Mapping[str, Any], lr: float,
                  batch_size: int, config: Preset, seed: int) -> dict[str, Any]:
    """SGD from the GD minimum: burn-in (loss at every step), on to the goal, then the tail."""
    tag = ("escape", batch_size)
    first = train(obj, theta=theta, lr=lr, steps=config.burn_in, batch_size=batch_size,
                  sampling="subset", seed=_stream(seed, *tag, "burn"), record_every=1)
    out: dict[str, Any] = {
        "batch_size": batch_size,
        "peak_loss": max(r["loss"] for r in first.records),
        "trajectory": _losses(first.records),
    }
    out["spike"] = out["peak_loss"] / start["final_loss"]
    if first.status == "diverged":
        return {**out, "status": "diverged", "final_loss": first.final_loss}
    second = train(obj, theta=first.theta, lr=lr, steps=_step_cap(config, lr),
                   batch_size=batch_size, sampling="subset", seed=_stream(seed, *tag, "rest"),
                   loss_goal=config.loss_goal, record_every=config.record_every)
    out["trajectory"] += _losses(second.records[1:], first.steps)
    out.update(status=second.status, steps=first.steps + second.steps,
               final_loss=second.final_loss,
               distance=float(torch.linalg.vector_norm(second.theta - theta)))
    if second.status == "diverged":
        return out
    out["landing"] = _tail(obj, second.theta, lr, batch_size, config, seed, tag)
    return out


def _escape(obj: Objective, theta: torch.Tensor | None, gd: Mapping[str, Any], config: Preset,
            seed: int) -> dict[str, Any]:
    """Part (c) from the GD minimum ``theta`` of the run ``gd`` (``None``: GD did not converge)."""
    lr = gd["lr"]
    out: dict[str, Any] = {"lr": lr, "factor": config.escape_factor, "gd": dict(gd)}
    if theta is None:
        return {**out, "outcome": "gd-not-converged", "runs": []}
    hessians = _subspace_hessians(obj, theta, EXACT_DIRECTIONS, seed)
    candidates = []
    for B in config.escape_batch_sizes:
        start = {**_point(obj, theta, lr, B), **_exact(hessians, lr, B), "batch_size": B,
                 "final_loss": gd["final_loss"]}
        start["chosen"] = start["criterion_1d"] >= ESCAPE_MIN_CRITERION
        candidates.append(start)
    unstable = sorted((c["batch_size"] for c in candidates if c["chosen"]), reverse=True)
    kept = set(unstable[: config.escape_max_runs])
    for start in candidates:
        start["chosen"] = start["batch_size"] in kept
    out["candidates"] = candidates
    control = train(obj, theta=theta, lr=lr, steps=config.control_steps,
                    record_every=config.record_every)
    out["control"] = {"trajectory": _losses(control.records), "final_loss": control.final_loss,
                      "peak_loss": max(r["loss"] for r in control.records),
                      "distance": float(torch.linalg.vector_norm(control.theta - theta))}
    chosen = [c for c in candidates if c["chosen"]]
    out["runs"] = [{"start": c, **_escape_batch(obj, theta, c, lr, c["batch_size"], config,
                                                   seed)} for c in chosen]
    out["outcome"] = "switched" if chosen else "no-unstable-batch"
    return out


# --- measure ------------------------------------------------------------------------------------


def measure(config: Preset, seed: int, device: torch.device) -> dict[str, Any]:
    """All three parts for one seed (see the module docstring)."""
    if config.escape_factor not in config.gd_factors:
        raise ArgumentValueError(
            "escape_factor must be one of gd_factors (the escape starts from that "
            "GD minimum)")
    obj = _objective(config, seed, device)
    a0 = float(sharpness(obj, tol=1e-6, seed=seed))
    gd, minima = [], {}
    for factor in config.gd_factors:
        record, theta = _gd_run(obj, _lr(factor, a0), factor, config, seed)
        gd.append(record)
        minima[factor] = theta
    sgd = [_sgd_run(obj, _lr(f, a0), f, B, config, seed)
           for f in config.sgd_factors for B in config.batch_sizes]
    escape_gd = next(r for r in gd if r["factor"] == config.escape_factor)
    escape = _escape(obj, minima[config.escape_factor], escape_gd, config, seed)
    return {"initial_sharpness": a0, "num_parameters": obj.dim, "n": obj.n, "gd": gd,
            "sgd": sgd, "escape": escape}


# --- verdicts -----------------------------------------------------------------------------------


def point_inside(point: Mapping[str, Any]) -> bool:
    """Inside both bounds unless beyond its error: ``a − err_a <= 2/η`` and
    ``s − err_s <= s-bound``."""
    a_ok = point["sharpness"] - point.get("sharpness_error", 0.0) <= point["max_sharpness"]
    s_ok = (point["nonuniformity"] - point.get("nonuniformity_error", 0.0)
            <= point["max_nonuniformity"])
    return bool(a_ok and s_ok)


def edge_outcome(gd: Sequence[Mapping[str, Any]], a0: float) -> bool | None:
    """(a) for one seed: ``None`` without a converged run at ``η >= 2/a₀``."""
    converged = [r for r in gd if r["status"] == "converged"]
    edge = [r for r in converged if r["lr"] >= 0.999 * 2.0 / a0]
    if not edge:
        return None
    below = all(r["sharpness"] <= (1 + GD_EDGE_SLACK) * 2.0 / r["lr"] for r in converged)
    near = all(r["sharpness"] >= GD_EDGE_BAND * 2.0 / r["lr"] for r in edge)
    return below and near


def region_outcome(sgd: Sequence[Mapping[str, Any]]) -> bool | None:
    """(b) for one seed: ``None`` without a converged SGD run."""
    converged = [r for r in sgd if r["status"] == "converged"]
    if not converged:
        return None
    return all(point_inside(r) for r in converged)


def escape_passes(run: Mapping[str, Any], loss_goal: float) -> bool | None:
    """(c) for one batch size: ``None`` when SGD diverged."""
    if run["status"] == "diverged" or "landing" not in run:
        return None
    return bool(run["spike"] >= SPIKE_FACTOR and run["final_loss"] <= SETTLE_FACTOR * loss_goal
                and point_inside(run["landing"]))


def escape_outcome(escape: Mapping[str, Any], loss_goal: float) -> bool | None:
    """(c) for one seed: every tested batch size passes; a batch size whose SGD diverged is
    not tested, and a seed without a tested batch size is ``None``."""
    if escape["outcome"] != "switched":
        return None
    passes = [p for p in (escape_passes(run, loss_goal) for run in escape["runs"])
              if p is not None]
    return all(passes) if passes else None


def _ratio(run: Mapping[str, Any], key: str, bound: str) -> float | None:
    if run.get(key) is None or not math.isfinite(run.get(bound, math.inf)):
        return None
    return run[key] / run[bound]


def claims(records_by_seed: Mapping[int, Any], config: Preset) -> list[Claim]:
    """One verdict per claim in :data:`CLAIMS`, from per-seed outcomes (see their criteria)."""
    gd = [r | {"a0": rec["initial_sharpness"]} for rec in records_by_seed.values()
          for r in rec["gd"] if r["status"] == "converged"]
    edge = [r for r in gd if r["lr"] >= 0.999 * 2.0 / r["a0"]]
    gd_claim = _SPECS["gd-edge"].judge_per_seed(
        {s: edge_outcome(rec["gd"], rec["initial_sharpness"])
         for s, rec in records_by_seed.items()},
        {"a·η/2, η ≥ 2/a₀": spread([r["sharpness"] * r["lr"] / 2 for r in edge]),
         "a·η/2, all converged": spread([r["sharpness"] * r["lr"] / 2 for r in gd]),
         "converged GD runs": len(gd)})
    sgd = [r for rec in records_by_seed.values() for r in rec["sgd"]]
    done = [r for r in sgd if r["status"] == "converged"]
    outside = [r for r in done if not point_inside(r)]
    region = _SPECS["sgd-region"].judge_per_seed(
        {s: region_outcome(rec["sgd"]) for s, rec in records_by_seed.items()},
        {"s / s-bound": spread([_ratio(r, "nonuniformity", "max_nonuniformity") for r in done]),
         "a·η/2": spread([r["sharpness"] * r["lr"] / 2 for r in done]),
         "relative error of s": spread([r["nonuniformity_error"] / r["nonuniformity"]
                                        for r in done]),
         "points outside beyond their error": f"{len(outside)} of {len(done)}",
         "diverged runs": sum(r["status"] == "diverged" for r in sgd)})
    runs = [run for rec in records_by_seed.values() for run in rec["escape"]["runs"]]
    landed = [run for run in runs if "landing" in run]
    escape = _SPECS["escape"].judge_per_seed(
        {s: escape_outcome(rec["escape"], config.loss_goal)
         for s, rec in records_by_seed.items()},
        {"criterion at the GD minimum": spread([run["start"]["criterion_1d"] for run in runs]),
         "loss spike": spread([run["spike"] for run in landed]),
         "s after / s before": spread([run["landing"]["nonuniformity"]
                                       / run["start"]["nonuniformity"] for run in landed]),
         "s after / s-bound": spread([run["landing"]["nonuniformity"]
                                      / run["landing"]["max_nonuniformity"] for run in landed]),
         "batch sizes": ", ".join(str(b) for b in sorted({run["batch_size"] for run in runs}))
         or "none",
         "escape runs that diverged": f"{len(runs) - len(landed)} of {len(runs)}"})
    return [gd_claim, region, escape]


def escape_items(records_by_seed: Mapping[int, Any], loss_goal: float) -> list[dict[str, Any]]:
    """One item per (seed, escape batch size) for ``summary.json``'s ``escape``."""
    items = []
    for seed, rec in records_by_seed.items():
        for run in rec["escape"]["runs"]:
            landing = run.get("landing") or {}
            items.append({
                "seed": int(seed),
                "batch_size": run["batch_size"],
                "lr": rec["escape"]["lr"],
                "criterion": run["start"]["criterion_1d"],
                "rho_subspace_before": run["start"]["rho_subspace"],
                "escaped": bool(run["spike"] >= SPIKE_FACTOR),
                "loss_spike": run["spike"],
                "status": run["status"],
                "settled": bool(run["final_loss"] <= SETTLE_FACTOR * loss_goal),
                "sharpness_before": run["start"]["sharpness"],
                "nonuniformity_before": run["start"]["nonuniformity"],
                "sharpness_after": landing.get("sharpness"),
                "sharpness_after_error": landing.get("sharpness_error"),
                "nonuniformity_after": landing.get("nonuniformity"),
                "nonuniformity_after_error": landing.get("nonuniformity_error"),
                "max_nonuniformity": run["start"]["max_nonuniformity"],
                "inside_after": point_inside(landing) if landing else None,
            })
    return items


def summary(records_by_seed: Mapping[int, Any], config: Preset) -> dict[str, Any]:
    """``escape``: one item per (seed, batch size) of part (c)."""
    return {"escape": escape_items(records_by_seed, config.loss_goal)}
