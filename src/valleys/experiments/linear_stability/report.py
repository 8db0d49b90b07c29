"""The prose and the results table of the linear-stability reproduction.

Every number below is formatted from the records; verdicts appear only through the claims.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from valleys.experiments.common import format_cell as fmt
from valleys.experiments.common import markdown_table
from valleys.experiments.linear_stability.measure import (
    ESCAPE_MIN_CRITERION,
    EXACT_DIRECTIONS,
    SETTLE_FACTOR,
    SPIKE_FACTOR,
    Preset,
    point_inside,
)
from valleys.experiments.protocol import Claim

__all__ = ["report", "table"]

_POINT_KEYS = ("sharpness", "sharpness_error", "nonuniformity", "nonuniformity_error",
               "max_sharpness", "max_nonuniformity", "criterion_1d", "max_stable_lr",
               "rho_subspace", "max_residual")


def _row(part: str, seed: int, run: Mapping[str, Any], point: Mapping[str, Any] | None,
         **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"part": part, "seed": int(seed), "factor": run.get("factor"),
                           "lr": run["lr"], "batch_size": run["batch_size"],
                           "status": run["status"], "steps": run.get("steps"),
                           "final_loss": run.get("final_loss")}
    for key in _POINT_KEYS:
        row[key] = None if point is None else point.get(key, 0.0 if key.endswith("_error")
                                                        else None)
    if point is not None:
        row["sufficient_stable"] = bool(run["lr"] <= point["max_stable_lr"] * (1 + 1e-9))
        row["inside_beyond_error"] = point_inside(point)
    row.update(extra)
    return row


def table(records_by_seed: Mapping[int, Any], config: Preset) -> pd.DataFrame:
    """One row per run: GD (a), SGD (b), and per escape batch size its start and landing (c)."""
    rows = []
    for seed, rec in records_by_seed.items():
        for run in rec["gd"]:
            rows.append(_row("gd", seed, run, run if run["status"] == "converged" else None))
        for run in rec["sgd"]:
            rows.append(_row("sgd", seed, run, run if run["status"] == "converged" else None))
        escape = rec["escape"]
        for run in escape["runs"]:
            base = {"lr": escape["lr"], "factor": escape["factor"],
                    "batch_size": run["batch_size"]}
            rows.append(_row("escape-start", seed, {**base, "status": "gd-minimum",
                                                    "final_loss": escape["gd"]["final_loss"]},
                             run["start"], loss_spike=None))
            rows.append(_row("escape-landing", seed, {**base, **run}, run.get("landing"),
                             loss_spike=run["spike"]))
    return pd.DataFrame(rows)


def _gd_lines(records_by_seed: Mapping[int, Any]) -> str:
    rows = []
    for seed, rec in records_by_seed.items():
        for run in rec["gd"]:
            done = run["status"] == "converged"
            rows.append({"seed": seed, "η": run["lr"], "η·a₀/2": run["factor"],
                         "2/η": 2 / run["lr"], "a": run.get("sharpness") if done else None,
                         "a·η/2": run["sharpness"] * run["lr"] / 2 if done else None,
                         "status": run["status"], "steps": run["steps"]})
    return markdown_table(rows, ["seed", "η", "η·a₀/2", "2/η", "a", "a·η/2", "status", "steps"])


def _sgd_text(records_by_seed: Mapping[int, Any]) -> str:
    runs = [(seed, r) for seed, rec in records_by_seed.items() for r in rec["sgd"]]
    done = [(s, r) for s, r in runs if r["status"] == "converged"]
    count = {status: sum(r["status"] == status for _, r in runs)
             for status in ("converged", "diverged", "max_steps")}
    raw_out = [(s, r) for s, r in done if r["nonuniformity"] > r["max_nonuniformity"]
               or r["sharpness"] > r["max_sharpness"]]
    beyond = [(s, r) for s, r in done if not point_inside(r)]
    sufficient = sum(r["lr"] <= r["max_stable_lr"] * (1 + 1e-9) for _, r in done)
    rho_ok = sum(r["rho_subspace"] <= 1 + 1e-7 for _, r in done)
    lines = [
        f"SGD runs: {len(runs)} ({count['converged']} converged, {count['diverged']} diverged, "
        f"{count['max_steps']} stopped at the step cap).",
        "",
        f"* Outside a bound at face value: {len(raw_out)} of {len(done)}; outside beyond "
        f"the error of the estimate: {len(beyond)} of {len(done)}.",
        f"* The sufficient condition (η ≤ η*) holds at {sufficient} of {len(done)} solutions; "
        f"the compressed exact test gives ρ_Q ≤ 1 at {rho_ok} of {len(done)}.",
    ]
    for seed, r in raw_out:
        lines.append(
            f"* seed {seed}, η = {fmt(r['lr'])}, B = {r['batch_size']}: s = "
            f"{fmt(r['nonuniformity'])} ± {fmt(r['nonuniformity_error'])} against the bound "
            f"{fmt(r['max_nonuniformity'])} (s/bound = "
            f"{fmt(r['nonuniformity'] / r['max_nonuniformity'])}); a = {fmt(r['sharpness'])} ± "
            f"{fmt(r['sharpness_error'])} against 2/η = {fmt(r['max_sharpness'])}; "
            f"{'inside' if point_inside(r) else 'outside'} beyond the error; "
            f"ρ_Q = {fmt(r['rho_subspace'])}.")
    return "\n".join(lines)


def _escape_rows(records_by_seed: Mapping[int, Any]) -> list[dict[str, Any]]:
    rows = []
    for seed, rec in records_by_seed.items():
        escape = rec["escape"]
        for start in escape.get("candidates", []):
            run = next((r for r in escape["runs"] if r["batch_size"] == start["batch_size"]),
                       None)
            landing = (run or {}).get("landing") or {}
            rows.append({
                "seed": seed, "B": start["batch_size"], "criterion": start["criterion_1d"],
                "ρ_Q before": start["rho_subspace"], "run": "yes" if run else "no",
                "spike": run["spike"] if run else None,
                "a before": start["sharpness"], "a after": landing.get("sharpness"),
                "s before": start["nonuniformity"], "s after": landing.get("nonuniformity"),
                "± s": landing.get("nonuniformity_error"),
                "s-bound": start["max_nonuniformity"],
                "final loss": run["final_loss"] if run else None,
                "status": run["status"] if run else "not run",
            })
    return rows


def _escape_text(records_by_seed: Mapping[int, Any], config: Preset) -> str:
    lines = []
    for seed, rec in records_by_seed.items():
        escape = rec["escape"]
        gd = escape["gd"]
        if escape["outcome"] == "gd-not-converged":
            lines.append(f"* seed {seed}: GD at η = {fmt(escape['lr'])} ended `{gd['status']}` "
                         "and gave no minimum to start from.")
            continue
        control = escape["control"]
        lines.append(
            f"* seed {seed}: GD minimum at η = {fmt(escape['lr'])} with loss "
            f"{fmt(gd['final_loss'])}, a = {fmt(gd['sharpness'])} (2/η = "
            f"{fmt(2 / escape['lr'])}), s = {fmt(gd['nonuniformity'])}; GD continued for "
            f"{config.control_steps} steps reached a peak loss "
            f"{fmt(control['peak_loss'] / gd['final_loss'])}× the minimum's and moved "
            f"‖Δθ‖ = {fmt(control['distance'])}.")
    rows = _escape_rows(records_by_seed)
    text = "\n".join(lines)
    if rows:
        most = ("" if config.escape_max_runs is None
                else f", the {config.escape_max_runs} largest such at most")
        text += ("\n\nEvery candidate batch size, with its 1-D criterion at the GD minimum "
                 f"(run when ≥ {ESCAPE_MIN_CRITERION:g}{most}):\n\n"
                 + markdown_table(rows, list(rows[0])))
    return text


def _factors(values: Sequence[float]) -> str:
    return ", ".join(fmt(v, 3) for v in values)


def _discussion(records_by_seed: Mapping[int, Any]) -> str:
    done = [r for rec in records_by_seed.values() for r in rec["sgd"]
            if r["status"] == "converged"]
    over = [r for r in done if r["nonuniformity"] > r["max_nonuniformity"]]
    over_ok = [r for r in over if r["rho_subspace"] <= 1 + 1e-7]
    runs = [run for rec in records_by_seed.values() for run in rec["escape"]["runs"]]
    starts = [run["start"] for run in runs]
    certified = sum(s["rho_subspace"] > 1 for s in starts)
    diverged = [run for run in runs if "landing" not in run]
    parts = [
        "The s-bound follows from the sufficient condition λ_max{(I − ηH)² + η²cΣ} ≤ 1, which "
        "is not necessary for mean-square stability when the per-sample Hessians do not "
        "commute (Mulayoff & Michaeli 2023); the exact condition is ρ(T) ≤ 1 for the "
        "second-moment map T. Its compression onto the top "
        f"{EXACT_DIRECTIONS} eigenvectors of H and of Σ gives a lower bound ρ_Q ≤ ρ(T).",
    ]
    if over:
        parts.append(
            f"{len(over)} of the {len(done)} converged SGD solutions have s above the s-bound "
            f"at face value, and {len(over_ok)} of those have ρ_Q ≤ 1 (no instability found "
            "in the compressed space).")
    else:
        parts.append(f"None of the {len(done)} converged SGD solutions has s above the "
                     "s-bound at face value.")
    if starts:
        parts.append(
            f"At the escape's starting points the compressed exact test gives ρ_Q > 1 for "
            f"{certified} of {len(starts)} (seed, B) pairs: ρ_Q ranges over "
            f"[{fmt(min(s['rho_subspace'] for s in starts))}, "
            f"{fmt(max(s['rho_subspace'] for s in starts))}], against 1-D criteria "
            f"[{fmt(min(s['criterion_1d'] for s in starts))}, "
            f"{fmt(max(s['criterion_1d'] for s in starts))}].")
    if diverged:
        cases = "; ".join(f"B = {run['batch_size']} at criterion "
                          f"{fmt(run['start']['criterion_1d'])}" for run in diverged)
        parts.append(
            f"{len(diverged)} of {len(runs)} escape runs diverged instead of settling ({cases}); "
            "the criterion counts a diverged run as not tested, since it lands nowhere.")
    return " ".join(parts)


def report(records_by_seed: Mapping[int, Any], config: Preset, claims: Sequence[Claim]) -> str:
    """Set-up, results per part and a discussion, every number from the records."""
    first = next(iter(records_by_seed.values()))
    a0 = ", ".join(f"{fmt(rec['initial_sharpness'])} (seed {s})"
                   for s, rec in records_by_seed.items())
    setup = f"""## Set-up

* Data: the first n = {first['n']} samples of the seeded digits training split (64
  standardized pixels, one-hot targets). Model: ReLU MLP {tuple(config.widths)},
  {first['num_parameters']} parameters, float64. Loss ½Σ_k (f_k − y_k)², averaged over samples.
* Sharpness at the initialization a₀ = {a0}. Learning rates are multiples of 2/a₀: GD
  ({_factors(config.gd_factors)}), SGD ({_factors(config.sgd_factors)}) with batch sizes
  {tuple(config.batch_sizes)} (without replacement); loss goal {config.loss_goal:g}; step cap
  ⌈{config.flow_time:g}/η⌉.
* Each SGD solution (and escape landing) is the mean of (a, s) over {config.tail_points}
  iterates spread over {config.tail_steps} further SGD steps; its error is their standard
  deviation. a, s and η* come from the Gauss–Newton per-sample Hessians; ρ_Q is the exact
  mean-square test compressed onto the top {EXACT_DIRECTIONS} eigenvectors of H and of Σ (a
  lower bound of the exact ρ; the full test needs p ≤ 200).
* Escape: from the GD minimum at {config.escape_factor:g}·2/a₀, every batch size of
  {tuple(config.escape_batch_sizes)} whose 1-D criterion is ≥ {ESCAPE_MIN_CRITERION:g}
  ({"all of them" if config.escape_max_runs is None else
    f"the {config.escape_max_runs} largest"});
  {config.burn_in} burn-in steps with the loss at every step, then on to the goal; spike
  criterion {SPIKE_FACTOR:g}×, settled at ≤ {SETTLE_FACTOR:g}× the goal.
"""
    results = f"""## Results

### (a) GD: final sharpness against 2/η

{_gd_lines(records_by_seed)}

### (b) SGD solutions in the (a, s) plane

{_sgd_text(records_by_seed)}

### (c) Escape from a GD minimum

{_escape_text(records_by_seed, config)}
"""
    return f"{setup}\n{results}\n## Discussion\n\n{_discussion(records_by_seed)}\n"
