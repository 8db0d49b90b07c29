r"""Gradient descent, heavy ball and Adam at the edge of stability.

**Claim** (Cohen, Kaur, Li, Kolter & Talwalkar, ICLR 2021; Cohen et al., arXiv 2207.14484).
Full-batch GD with step ``η`` on a neural network shows *progressive sharpening*: the sharpness
``λ_max(∇²L)`` rises while it is below ``2/η``; once it reaches ``2/η`` it *hovers* at, or just
above, ``2/η`` (the *edge of stability*) while the training loss keeps decreasing over long
times but non-monotonically over short ones; GD tracks gradient flow until the sharpness first
crosses ``2/η`` and departs from it afterwards. Heavy ball equilibrates at its own threshold
``(2+2β)/η``, and Adam's *preconditioned* sharpness ``λ₁(P⁻¹H)`` equilibrates at
``(2+2β₁)/(η(1−β₁))`` (``38/η`` at ``β₁ = 0.9``), the threshold of heavy ball with step
``η(1−β₁)`` and momentum ``β₁`` (:func:`valleys.stability.thresholds.threshold`).

**Set-up.** A tanh MLP on the first ``n`` samples of the seeded digits training split, square
loss ``½Σ_k (f_k − y_k)²`` against one-hot targets averaged over samples (Cohen et al.'s
``mse``), float32 as in their code. The seed fixes the split, the initialization and the
eigensolver's start vectors, hence the initial sharpness ``a₀``; every learning rate is set per
seed from ``a₀`` (rounded to 4 digits):

* GD: ``2/η = factor · a₀`` for each of ``gd_factors`` (all > 1: the network has to sharpen);
* heavy ball (``torch.optim.SGD(momentum=β)``): ``(2+2β)/η = hb_factor · a₀``;
* Adam: a fixed ``η`` (``β₂ = 0.999``, ``ε = 1e-8``).

The sharpness (for Adam also ``λ₁(P⁻¹H)`` through ``P^{-1/2} H P^{-1/2}``) is tracked every
``sharpness_every`` steps, warm-started from the previous top Ritz vectors
(:class:`~valleys.train.SharpnessTracker`). For the GD run at ``flow_factor`` the distance
``‖θ_k − θ_flow(kη)‖`` from gradient flow (RK4, :class:`~valleys.train.FlowDistance`) is
followed up to the time ``flow_fraction · steps · η``. A run whose loss becomes non-finite or
grows 10⁶-fold has status ``diverged``; it cannot test any claim (``not tested``).

**Heavy ball's step, from a scan of the regime** (issue #14). Preset factor 3 gave η = 0.3875 on
the full set-up (effective rate η/(1−β) = 3.9) and diverged. The factor is therefore chosen by
a scan (a scratch script: the preset's data, model and steps; β = 0.9; sharpness every 50
steps; seeds 0–4) with a rule about the regime only, not about hovering:

    F₀ = the smallest scanned factor from which on (F₀ and every larger scanned factor) no
    scanned seed diverges; the preset uses F₀ + 1 (one grid step of margin, because near F₀
    divergence depends on the seed), provided every scanned seed reaches 0.95 · (2+2β)/η there
    within the preset's steps (else the run could not test the claim).

Diverged seeds out of 5, by factor:

* quick (n = 500, widths 64-64-64-10, 1000 steps): factor 2: 4/5, 3: 2/5, 4: 0/5, 5: 0/5,
  6: 0/5, 8: 0/5 (factor 8 reaches the threshold on no seed within 1000 steps). F₀ = 4, so the
  quick preset uses factor 5 (every seed reaches 0.95 · threshold, by step 150–650).
* full (n = 1000, widths 64-128-128-10, 4000 steps): factor 3: 3/5 (η/(1−β) = 3.3–4.4),
  4: 1/5 (seed 2, at step 159), 5: 0/5, 6: 0/5, 7: 0/5. F₀ = 5, so the full preset uses
  factor 6 (η/(1−β) = 1.6–2.2; every seed reaches 0.95 · threshold by step 150–550 of 4000).

The scan took 33 s (quick) and 264 s (full) of CPU time on one thread.

**Cost of tracking** (a benchmark, not a claim; full preset only): the first GD factor's run,
``cost_steps`` steps untracked, tracked with warm starts and with cold-started Lanczos at the
same tolerance, in CPU time of this process and Hessian-vector products.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from valleys import Objective, eigsh, hessian
from valleys.data import load_digits
from valleys.errors import ArgumentValueError
from valleys.experiments.protocol import Claim, ClaimSpec, spread
from valleys.models import MLP
from valleys.stability.thresholds import threshold
from valleys.train import FlowDistance, SharpnessTracker, train

__all__ = [
    "CLAIMS",
    "NAME",
    "PAPER",
    "PRESETS",
    "Preset",
    "analyse_run",
    "claims",
    "flow_analysis",
    "measure",
    "summary",
]

NAME = "edge-of-stability"

PAPER = (
    "Cohen, Kaur, Li, Kolter & Talwalkar, \"Gradient Descent on Neural Networks Typically "
    "Occurs at the Edge of Stability\", ICLR 2021; Cohen et al., \"Adaptive Gradient Methods at "
    "the Edge of Stability\", arXiv 2207.14484"
)

# --- criteria, fixed before the runs --------------------------------------------------------------

#: A run *reaches* its threshold once its sharpness is at least REACH · threshold.
REACH = 0.95
#: "Hovers at or just above": sharpness / threshold within BAND (Cohen et al.'s "right at, or
#: just above"; the band of the reference digest) ...
BAND = (0.9, 1.2)
#: ... for at least this fraction of the sharpness evaluations from the reaching step on.
HOVER_FRACTION = 0.8
#: GD tracks the flow: ‖θ_GD − θ_flow‖ ≤ FLOW_TRACKS · ‖θ_GD − θ₀‖ at every record before the
#: first crossing of 2/η ...
FLOW_TRACKS = 0.1
#: ... and departs: the distance grows to at least FLOW_DEPARTS × its value at the crossing.
FLOW_DEPARTS = 2.0

_HOVER = (f"every run of the seed that reached {REACH}·threshold has at least "
          f"{HOVER_FRACTION:.0%} of its sharpness evaluations from then on within "
          f"[{BAND[0]}, {BAND[1]}]·threshold; a run that diverged or never reached "
          f"{REACH}·threshold is not tested; every tested seed must pass")

CLAIMS = (
    ClaimSpec(
        "gd-sharpening",
        "While its sharpness is below 2/η, GD's sharpness rises (progressive sharpening) until "
        "it reaches 2/η.",
        f"every GD run of the seed starts at a₀ = 2/(factor·η) with factor ≥ 1.5 and its "
        f"sharpness reaches {REACH}·2/η within the run (a rise by ≥ {REACH}·factor); diverged "
        "runs are not tested; every tested seed must pass",
    ),
    ClaimSpec(
        "gd-hovers",
        "Once it reaches 2/η, GD's sharpness hovers right at, or just above, 2/η.",
        _HOVER + " (threshold 2/η)",
    ),
    ClaimSpec(
        "gd-loss",
        "At the edge of stability GD's training loss is non-monotone over short times but keeps "
        "decreasing over long times.",
        f"every GD run of the seed that reached {REACH}·2/η has, after reaching, at least one "
        "rise of the full-batch loss between consecutive records and a final loss below its "
        "loss at reaching; every tested seed must pass",
    ),
    ClaimSpec(
        "gd-flow",
        "GD tracks gradient flow until its sharpness first crosses 2/η and departs from it "
        "afterwards.",
        f"‖θ_GD − θ_flow‖ ≤ {FLOW_TRACKS}·‖θ_GD − θ₀‖ at every record before the first "
        f"crossing, and ‖θ_GD − θ_flow‖ grows to ≥ {FLOW_DEPARTS:g}× its value at the crossing "
        "within the followed flow time; a run without a crossing in that time is not tested; "
        "every tested seed must pass",
    ),
    ClaimSpec(
        "heavy-ball-hovers",
        "Heavy ball's sharpness equilibrates at its threshold (2+2β)/η.",
        _HOVER + " (threshold (2+2β)/η)",
    ),
    ClaimSpec(
        "adam-hovers",
        "Adam's preconditioned sharpness λ₁(P⁻¹H) equilibrates at (2+2β₁)/(η(1−β₁)) "
        "(38/η at β₁ = 0.9).",
        _HOVER + " (λ₁(P⁻¹H) against (2+2β₁)/(η(1−β₁)))",
    ),
)
_SPECS = {spec.id: spec for spec in CLAIMS}


# --- presets ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    """Everything that sizes the reproduction.

    Attributes:
        n: training samples (the first ``n`` of the seeded digits training split).
        widths: MLP widths (tanh; 64 inputs, 10 outputs).
        gd_factors: GD runs with ``2/η = factor · a₀`` (``a₀`` the initial sharpness).
        hb_beta, hb_factor: heavy ball's momentum and threshold ``(2+2β)/η = hb_factor · a₀``
            (``hb_factor`` from the scan in the module docstring).
        adam_lr, adam_beta1: Adam's step and β₁ (β₂ = 0.999, ε = 1e-8, torch's defaults).
        steps: steps of every run. record_every: steps between records (loss, distances).
        sharpness_every: steps between sharpness evaluations. tol: eigensolver tolerance.
        flow_factor: the GD factor whose run is compared with gradient flow.
        flow_fraction: follow the flow up to this fraction of that run's time ``steps · η``.
        cost_steps: steps of the tracking-cost benchmark (0: not measured).
        threads: torch threads (``None``: torch's default).
    """

    n: int
    widths: tuple[int, ...]
    gd_factors: tuple[float, ...]
    hb_beta: float
    hb_factor: float
    adam_lr: float
    adam_beta1: float
    steps: int
    record_every: int
    sharpness_every: int
    tol: float
    flow_factor: float
    flow_fraction: float
    cost_steps: int = 0
    threads: int | None = 1


PRESETS: dict[str, Preset] = {
    # CI: ~20 s of CPU time per seed on one thread.
    "quick": Preset(
        n=500, widths=(64, 64, 64, 10), gd_factors=(2.0, 3.0), hb_beta=0.9, hb_factor=5.0,
        adam_lr=2e-3, adam_beta1=0.9, steps=1000, record_every=10, sharpness_every=10,
        tol=1e-3, flow_factor=3.0, flow_fraction=0.6,
    ),
    # More data, a wider net, four GD step sizes, longer runs, and the tracking-cost benchmark.
    "full": Preset(
        n=1000, widths=(64, 128, 128, 10), gd_factors=(1.5, 2.0, 3.0, 4.0), hb_beta=0.9,
        hb_factor=6.0, adam_lr=1e-3, adam_beta1=0.9, steps=4000, record_every=10,
        sharpness_every=10, tol=1e-3, flow_factor=3.0, flow_fraction=0.4, cost_steps=1000,
    ),
}


# --- the problem and the runs -------------------------------------------------------------------


def objective(config: Preset, seed: int, device: torch.device | str = "cpu") -> Objective:
    """The square loss of the tanh MLP on the first ``n`` seeded digits training samples."""
    X, Y = load_digits(seed=seed, one_hot=True, dtype=torch.float32, device=device).train
    if config.n > X.shape[0]:
        raise ArgumentValueError(f"n={config.n} exceeds the {X.shape[0]} digits training samples")
    model = MLP(config.widths, "tanh", seed=seed).float().to(device)
    return Objective(model, "mse", (X[: config.n].contiguous(), Y[: config.n].contiguous()))


def _round(x: float) -> float:
    return float(f"{x:.4g}")


def plan(config: Preset, a0: float) -> list[dict[str, Any]]:
    """The runs of one seed: GD at each factor, heavy ball, Adam.

    GD: ``η = 2/(factor·a₀)``; heavy ball: ``η = (2+2β)/(hb_factor·a₀)``; Adam: ``adam_lr``;
    learning rates rounded to 4 significant digits, thresholds computed from the rounded ``η``.
    """
    runs = []
    for factor in config.gd_factors:
        lr = _round(2.0 / (factor * a0))
        runs.append({"name": f"gd-{factor:g}", "optimizer": "gd", "lr": lr, "factor": factor,
                     "threshold": threshold("gd", lr), "flow": factor == config.flow_factor})
    beta = config.hb_beta
    lr = _round(threshold("heavy_ball", 1.0, beta=beta) / (config.hb_factor * a0))
    runs.append({"name": f"heavy_ball-{config.hb_factor:g}", "optimizer": "heavy_ball", "lr": lr,
                 "beta": beta, "factor": config.hb_factor,
                 "threshold": threshold("heavy_ball", lr, beta=beta), "flow": False})
    beta1 = config.adam_beta1
    runs.append({"name": "adam", "optimizer": "adam", "lr": config.adam_lr, "beta1": beta1,
                 "factor": None, "threshold": threshold("adam", config.adam_lr, beta1=beta1),
                 "flow": False})
    return runs


def _train_kwargs(run: Mapping[str, Any], steps: int, record_every: int, seed: int) -> dict:
    kwargs: dict[str, Any] = {"lr": run["lr"], "steps": steps, "record_every": record_every,
                              "seed": seed}
    if run["optimizer"] == "heavy_ball":
        kwargs.update(optimizer="momentum", momentum=run["beta"])
    elif run["optimizer"] == "adam":
        kwargs.update(optimizer="adam", betas=(run["beta1"], 0.999))
    return kwargs


def _trajectory(records: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the records holding a finite ``key``."""
    pairs = [(int(r["step"]), float(r[key])) for r in records
             if r.get(key) is not None and math.isfinite(r[key])]
    return [s for s, _ in pairs], [v for _, v in pairs]


_STATUS = {"converged": "target", "max_steps": "max_steps", "diverged": "diverged"}


def _one_run(obj: Objective, run: dict[str, Any], config: Preset, seed: int) -> dict[str, Any]:
    """Train one planned run with its trackers; its trajectories and status."""
    adam = run["optimizer"] == "adam"
    callbacks: list = [SharpnessTracker(obj, every=config.sharpness_every, tol=config.tol,
                                        seed=seed)]
    if adam:
        callbacks.append(SharpnessTracker(obj, every=config.sharpness_every, tol=config.tol,
                                          preconditioned=True, seed=seed))
    if run["flow"]:
        max_time = config.flow_fraction * config.steps * run["lr"]
        callbacks.append(FlowDistance(obj, max_time=max_time, seed=seed, tol=config.tol))
    cpu = time.process_time()
    result = train(obj, callbacks=callbacks,
                   **_train_kwargs(run, config.steps, config.record_every, seed))
    cpu = time.process_time() - cpu
    key = "precond_sharpness" if adam else "sharpness"
    sharp_steps, sharp = _trajectory(result.records, key)
    loss_steps, losses = _trajectory(result.records, "loss")
    out = {**run, "status": _STATUS[result.status], "steps_done": result.steps,
           "sharpness_steps": sharp_steps, "sharpness": sharp, "loss_steps": loss_steps,
           "loss": losses, "cpu_s": cpu,
           "matvecs": int(sum(r.get("matvecs", 0) + r.get("precond_matvecs", 0)
                              for r in result.records))}
    if adam:
        raw = dict(zip(*_trajectory(result.records, "sharpness"), strict=True))
        out["raw_sharpness"] = [raw.get(s, math.nan) for s in sharp_steps]
    if run["flow"]:
        steps, flow = _trajectory(result.records, "flow_distance")
        travelled = dict(zip(*_trajectory(result.records, "distance"), strict=True))
        out["flow_distance"] = {"steps": steps, "distance": flow,
                                "travelled": [travelled[s] for s in steps]}
    return out


def tracking_cost(obj: Objective, run: Mapping[str, Any], config: Preset,
                  seed: int) -> dict[str, Any]:
    """CPU time and Hessian-vector products of sharpness tracking on ``cost_steps`` steps of
    ``run``: untracked, tracked with warm starts (the default) and with cold-started Lanczos."""
    kwargs = _train_kwargs(run, config.cost_steps, config.record_every, seed)
    out: dict[str, Any] = {"lr": run["lr"], "steps": config.cost_steps,
                           "sharpness_every": config.sharpness_every, "tol": config.tol}
    cpu = time.process_time()
    train(obj, **kwargs)
    out["untracked_cpu_s"] = time.process_time() - cpu
    for kind, warm in (("warm", True), ("cold", False)):
        tracker = SharpnessTracker(obj, every=config.sharpness_every, tol=config.tol,
                                   warm_start=warm, seed=seed)
        cpu = time.process_time()
        train(obj, callbacks=[tracker], **kwargs)
        out[f"{kind}_cpu_s"] = time.process_time() - cpu
        out[f"{kind}_matvecs"] = tracker.total_matvecs
        out["evaluations"] = len(tracker.history)
    out["overhead_warm"] = out["warm_cpu_s"] / out["untracked_cpu_s"] - 1
    out["overhead_cold"] = out["cold_cpu_s"] / out["untracked_cpu_s"] - 1
    out["matvec_saving"] = out["cold_matvecs"] / max(out["warm_matvecs"], 1)
    return out


def measure(config: Preset, seed: int, device: torch.device | str = "cpu") -> dict[str, Any]:
    """One seed: the initial sharpness ``a₀``, then every planned run (and the cost benchmark).

    Returns ``{"initial_sharpness", "num_parameters", "runs": [...], "cost": {...} | None}``;
    each run carries its plan (``optimizer``, ``lr``, ``threshold``, ...), ``status`` and its
    trajectories (``sharpness`` at ``sharpness_steps``, ``loss`` at ``loss_steps``).
    """
    obj = objective(config, seed, device)
    a0 = float(eigsh(hessian(obj), k=1, tol=1e-6, seed=seed).values[0])
    runs = [_one_run(obj, run, config, seed) for run in plan(config, a0)]
    cost = None
    if config.cost_steps > 0:
        first_gd = next(r for r in runs if r["optimizer"] == "gd")
        cost = tracking_cost(obj, first_gd, config, seed)
    return {"initial_sharpness": a0, "num_parameters": obj.dim, "runs": runs, "cost": cost}


# --- analysis (pure functions of the records) -----------------------------------------------------


def analyse_run(steps: Sequence[int], sharpness: Sequence[float], loss_steps: Sequence[int],
                losses: Sequence[float], threshold: float) -> dict[str, Any]:
    """The verdict quantities of one run from its trajectories.

    With ``r_j = sharpness_j / threshold``: *reached* at the first ``j`` with ``r_j ≥ REACH``;
    ``hover_fraction`` = the fraction of ``r_j`` from then on inside ``BAND``;
    ``late_mean_over_threshold`` = the mean of ``r_j`` over the second half of the run;
    ``loss_rises`` = the number of consecutive loss records after reaching with
    ``L_{i+1} > L_i``; ``loss_ratio`` = final loss / loss at reaching.
    """
    ratios = [s / threshold for s in sharpness]
    out: dict[str, Any] = {
        "initial_sharpness": sharpness[0] if sharpness else math.nan,
        "max_over_threshold": max(ratios) if ratios else math.nan,
        "final_sharpness_over_threshold": ratios[-1] if ratios else math.nan,
        "late_mean_over_threshold": (sum(ratios[len(ratios) // 2:])
                                     / len(ratios[len(ratios) // 2:])) if ratios else math.nan,
    }
    reach = next((i for i, r in enumerate(ratios) if r >= REACH), None)
    out["reached"] = reach is not None
    out["reached_step"] = None if reach is None else int(steps[reach])
    if reach is None:
        out.update(hover_fraction=math.nan, loss_rises=None, loss_ratio=math.nan)
        return out
    after = ratios[reach:]
    out["hover_fraction"] = sum(BAND[0] <= r <= BAND[1] for r in after) / len(after)
    tail = [v for s, v in zip(loss_steps, losses, strict=True) if s >= steps[reach]]
    out["loss_rises"] = sum(b > a for a, b in itertools.pairwise(tail))
    out["loss_ratio"] = tail[-1] / tail[0] if tail and tail[0] > 0 else math.nan
    return out


def analysed(run: Mapping[str, Any]) -> dict[str, Any]:
    """A stored run with :func:`analyse_run`'s quantities merged in."""
    return {**run, **analyse_run(run["sharpness_steps"], run["sharpness"], run["loss_steps"],
                                 run["loss"], run["threshold"])}


def reaches(run: Mapping[str, Any]) -> bool | None:
    """Sharpening criterion of one analysed run (None: diverged, cannot test)."""
    return None if run["status"] == "diverged" else bool(run["reached"])


def hovers(run: Mapping[str, Any]) -> bool | None:
    """Hovering criterion of one analysed run (None: diverged or never reached)."""
    if run["status"] == "diverged" or not run["reached"]:
        return None
    return run["hover_fraction"] >= HOVER_FRACTION


def loss_non_monotone(run: Mapping[str, Any]) -> bool | None:
    """Loss criterion of one analysed run (None: diverged or never reached)."""
    if run["status"] == "diverged" or not run["reached"]:
        return None
    return run["loss_rises"] > 0 and run["loss_ratio"] < 1


def flow_analysis(run: Mapping[str, Any]) -> dict[str, Any]:
    """GD against gradient flow: tracking before the first crossing of 2/η, departure after.

    The crossing is the first sharpness evaluation with ``λ_max > 2/η``; ``relative_before`` =
    max over records ``0 < k ≤ crossing`` of ``‖θ_k − θ_flow(kη)‖ / ‖θ_k − θ₀‖``; ``growth`` =
    max over records ``k ≥ crossing`` of the distance / its value at the crossing.
    ``tracks``/``departs`` are None when no crossing lies inside the followed flow time.
    """
    flow = run.get("flow_distance") or {"steps": [], "distance": [], "travelled": []}
    cross = next((s for s, v in zip(run["sharpness_steps"], run["sharpness"], strict=True)
                  if v > run["threshold"]), None)
    out: dict[str, Any] = {"crossing_step": cross, "relative_before": math.nan,
                           "distance_at_crossing": math.nan, "growth": math.nan,
                           "tracks": None, "departs": None}
    if run["status"] == "diverged" or cross is None or not flow["steps"] \
            or flow["steps"][-1] <= cross:
        return out
    rows = list(zip(flow["steps"], flow["distance"], flow["travelled"], strict=True))
    before = [d / t for s, d, t in rows if 0 < s <= cross and t > 0]
    after = [d for s, d, _ in rows if s >= cross]
    at_cross = after[0]
    out["relative_before"] = max(before) if before else math.nan
    out["distance_at_crossing"] = at_cross
    out["growth"] = max(after) / at_cross if at_cross > 0 else math.inf
    out["tracks"] = bool(out["relative_before"] <= FLOW_TRACKS)
    out["departs"] = bool(out["growth"] >= FLOW_DEPARTS)
    return out


def _all_tested(outcomes: Sequence[bool | None]) -> bool | None:
    """A seed's outcome over its runs: None if no run could test it, else all tested pass."""
    tested = [o for o in outcomes if o is not None]
    return all(tested) if tested else None


def runs_of(records: Mapping[str, Any], optimizer: str) -> list[dict[str, Any]]:
    """The analysed runs of one seed's records for one optimizer."""
    return [analysed(r) for r in records["runs"] if r["optimizer"] == optimizer]


def _hover_claim(spec: ClaimSpec, records_by_seed: Mapping[int, Any], optimizer: str) -> Claim:
    by_seed = {s: runs_of(r, optimizer) for s, r in records_by_seed.items()}
    everything = [run for runs in by_seed.values() for run in runs]
    tested = [run for run in everything if hovers(run) is not None]
    measured = {
        "fraction in band": spread([run["hover_fraction"] for run in tested]),
        "late mean / threshold": spread([run["late_mean_over_threshold"] for run in tested]),
        "tested runs": len(tested),
        "runs": len(everything),
    }
    diverged = sum(run["status"] == "diverged" for run in everything)
    note = f"{diverged} run(s) diverged and were not tested" if diverged else ""
    return spec.judge_per_seed({s: _all_tested([hovers(r) for r in runs])
                                for s, runs in by_seed.items()}, measured, note=note)


def claims(records_by_seed: Mapping[int, Any], config: Preset) -> list[Claim]:
    """One verdict per claim in :data:`CLAIMS`, from per-seed outcomes (see their criteria)."""
    gd = {s: runs_of(r, "gd") for s, r in records_by_seed.items()}
    everything = [run for runs in gd.values() for run in runs]
    sharpening = _SPECS["gd-sharpening"].judge_per_seed(
        {s: _all_tested([reaches(r) for r in runs]) for s, runs in gd.items()},
        {"sharpness at reaching / a₀": spread([
            r["sharpness"][r["sharpness_steps"].index(r["reached_step"])] / r["sharpness"][0]
            for r in everything if r["reached"]]),
         "reaching step": spread([r["reached_step"] for r in everything if r["reached"]]),
         "runs reaching": sum(bool(r["reached"]) for r in everything),
         "runs": len(everything)})
    tested_loss = [r for r in everything if loss_non_monotone(r) is not None]
    loss = _SPECS["gd-loss"].judge_per_seed(
        {s: _all_tested([loss_non_monotone(r) for r in runs]) for s, runs in gd.items()},
        {"loss rises after reaching": spread([r["loss_rises"] for r in tested_loss]),
         "final loss / loss at reaching": spread([r["loss_ratio"] for r in tested_loss])})
    flows = {s: [flow_analysis(r) for r in runs if r["flow"]] for s, runs in gd.items()}
    flat = [f for fs in flows.values() for f in fs if f["tracks"] is not None]
    flow = _SPECS["gd-flow"].judge_per_seed(
        {s: _all_tested([None if f["tracks"] is None else f["tracks"] and f["departs"]
                         for f in fs]) for s, fs in flows.items()},
        {"max relative distance before crossing": spread([f["relative_before"] for f in flat]),
         "growth after crossing": spread([f["growth"] for f in flat]),
         "crossing step": spread([f["crossing_step"] for f in flat])})
    return [
        sharpening,
        _hover_claim(_SPECS["gd-hovers"], records_by_seed, "gd"),
        loss,
        flow,
        _hover_claim(_SPECS["heavy-ball-hovers"], records_by_seed, "heavy_ball"),
        _hover_claim(_SPECS["adam-hovers"], records_by_seed, "adam"),
    ]


_SUMMARY_KEYS = ("name", "optimizer", "lr", "beta", "beta1", "factor", "threshold", "status",
                 "steps_done", "sharpness_steps", "sharpness", "final_sharpness_over_threshold",
                 "reached", "reached_step", "hover_fraction", "late_mean_over_threshold")


def summary(records_by_seed: Mapping[int, Any], config: Preset) -> dict[str, Any]:
    """``runs``: one item per (run, seed) with its plan, status and sharpness trajectory (for
    Adam the preconditioned one, the quantity compared with its threshold)."""
    items = []
    for seed, records in records_by_seed.items():
        for run in records["runs"]:
            run = analysed(run)
            item = {k: run[k] for k in _SUMMARY_KEYS if k in run}
            item["seed"] = int(seed)
            item["initial_sharpness_a0"] = records["initial_sharpness"]
            items.append(item)
    return {"runs": items}
