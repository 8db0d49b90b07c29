"""The edge-of-stability report: the results table and prose generated from the records."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from valleys.experiments.common import format_cell as fmt
from valleys.experiments.common import format_spread
from valleys.experiments.edge_of_stability.measure import (
    BAND,
    FLOW_DEPARTS,
    FLOW_TRACKS,
    HOVER_FRACTION,
    REACH,
    Preset,
    analysed,
    flow_analysis,
)
from valleys.experiments.protocol import Claim

__all__ = ["report", "table"]

_range = format_spread  # mean [min, max] over seeds


def table(records_by_seed: Mapping[int, Any], config: Preset) -> pd.DataFrame:
    """One row per (seed, run): its plan, status and the verdict quantities (for Adam the
    sharpness columns are λ₁(P⁻¹H))."""
    rows = []
    for seed, records in records_by_seed.items():
        for run in records["runs"]:
            run = analysed(run)
            row = {
                "seed": int(seed), "run": run["name"], "optimizer": run["optimizer"],
                "factor": run["factor"], "lr": run["lr"],
                "momentum": run.get("beta", run.get("beta1")), "threshold": run["threshold"],
                "a0": records["initial_sharpness"], "status": run["status"],
                "steps_done": run["steps_done"], "reached_step": run["reached_step"],
                "hover_fraction": run["hover_fraction"],
                "late_mean_over_threshold": run["late_mean_over_threshold"],
                "final_sharpness_over_threshold": run["final_sharpness_over_threshold"],
                "loss_rises": run["loss_rises"], "loss_ratio": run["loss_ratio"],
                "final_loss": run["loss"][-1] if run["loss"] else math.nan,
                "cpu_s": run["cpu_s"],
            }
            if run["flow"]:
                flow = flow_analysis(run)
                row.update(flow_crossing_step=flow["crossing_step"],
                           flow_relative_before=flow["relative_before"],
                           flow_growth=flow["growth"])
            rows.append(row)
    return pd.DataFrame(rows)



def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _setup(records_by_seed: Mapping[int, Any], config: Preset) -> list[str]:
    first = next(iter(records_by_seed.values()))
    a0 = [r["initial_sharpness"] for r in records_by_seed.values()]
    hb = [run["lr"] for r in records_by_seed.values() for run in r["runs"]
          if run["optimizer"] == "heavy_ball"]
    lines = [
        "## Set-up",
        "",
        f"* Data: the first n = {config.n} samples of the seeded digits training split (64 "
        "standardized pixels, one-hot targets); the seed also fixes the initialization.",
        f"* Model: tanh MLP {tuple(config.widths)}, {first['num_parameters']} parameters, "
        "float32; loss ½Σ_k (f_k − y_k)² averaged over samples (Cohen et al.'s `mse`).",
        f"* Initial sharpness a₀ = {_range(a0)} over seeds. GD: 2/η = factor·a₀ for factors "
        f"{fmt(list(config.gd_factors))}; heavy ball β = {config.hb_beta} with (2+2β)/η = "
        f"{config.hb_factor:g}·a₀, i.e. η = {_range(hb)} (effective rate η/(1−β) = "
        f"{_range([lr / (1 - config.hb_beta) for lr in hb])}), the factor chosen by the "
        "divergence scan in `measure.py`'s docstring; Adam η = "
        f"{config.adam_lr:g}, β₁ = {config.adam_beta1}, β₂ = 0.999, ε = 1e-8. "
        f"{config.steps} steps each.",
        f"* Sharpness every {config.sharpness_every} steps (relative residual tolerance "
        f"{config.tol}), warm-started from the previous top Ritz vectors; Adam's λ₁(P⁻¹H) "
        "through P^(-1/2) H P^(-1/2) with P from torch's optimizer state.",
        f"* Gradient flow for GD at factor {config.flow_factor:g}: RK4 with steps 1/|λ|_max, "
        f"up to {config.flow_fraction} of the run's time, compared at t = kη.",
        f"* Rules: a run reaches its threshold at sharpness ≥ {REACH}·threshold and hovers when "
        f"≥ {HOVER_FRACTION:.0%} of the evaluations from then on lie in [{BAND[0]}, "
        f"{BAND[1]}]·threshold; GD tracks the flow when ‖θ_GD − θ_flow‖ ≤ {FLOW_TRACKS}·‖θ_GD − "
        f"θ₀‖ before the first crossing and departs when the distance grows ≥ "
        f"{FLOW_DEPARTS:g}× after it. A diverged run tests no claim.",
        "",
    ]
    return lines


def _results(records_by_seed: Mapping[int, Any]) -> list[str]:
    runs = [analysed(run) for r in records_by_seed.values() for run in r["runs"]]
    lines = ["## Results", ""]
    for optimizer, what in (("gd", "GD"), ("heavy_ball", "heavy ball"), ("adam", "Adam")):
        mine = [r for r in runs if r["optimizer"] == optimizer]
        diverged = [r for r in mine if r["status"] == "diverged"]
        reached = [r for r in mine if r["reached"] and r["status"] != "diverged"]
        quantity = "λ₁(P⁻¹H)" if optimizer == "adam" else "λ_max(H)"
        lines.append(
            f"* {what}: {_count(len(mine), 'run')} over {_count(len(records_by_seed), 'seed')}, "
            f"{len(diverged)} "
            f"diverged, {len(reached)} reached {REACH}·threshold (at step "
            f"{_range([r['reached_step'] for r in reached])}). After reaching, the fraction of "
            f"{quantity} evaluations within the band is "
            f"{_range([r['hover_fraction'] for r in reached], 3)}; over the second half of the "
            f"run {quantity}/threshold averages "
            f"{_range([r['late_mean_over_threshold'] for r in reached])} and ends at "
            f"{_range([r['final_sharpness_over_threshold'] for r in reached])}.")
    flows = [flow_analysis(r) for r in runs if r["flow"]]
    crossed = [f for f in flows if f["tracks"] is not None]
    lines.append(
        f"* Gradient flow: {len(crossed)} of {_count(len(flows), 'flow run')} cross 2/η inside the "
        f"followed time, at step {_range([f['crossing_step'] for f in crossed])}; before it "
        f"the largest ‖θ_GD − θ_flow‖/‖θ_GD − θ₀‖ is "
        f"{_range([f['relative_before'] for f in crossed], 3)}, after it the distance grows "
        f"{_range([f['growth'] for f in crossed], 3)}×.")
    lines.append("")
    return lines


def _cost(records_by_seed: Mapping[int, Any]) -> list[str]:
    costs = [r["cost"] for r in records_by_seed.values() if r.get("cost")]
    if not costs:
        return ["## Cost of tracking", "",
                "Not measured in this preset (the full preset measures it; see also "
                "`benchmarks/bench_sharpness_tracking.py`).", ""]
    c = costs[0]
    return [
        "## Cost of tracking",
        "",
        f"A benchmark, not a claim. GD at the first factor, {c['steps']} steps, sharpness every "
        f"{c['sharpness_every']} steps ({c['evaluations']} evaluations, tolerance {c['tol']}), "
        f"CPU time of this process over {_count(len(costs), 'seed')}: untracked "
        f"{_range([x['untracked_cpu_s'] for x in costs], 3)} s, warm-started tracking "
        f"{_range([x['warm_cpu_s'] for x in costs], 3)} s (overhead "
        f"{_range([100 * x['overhead_warm'] for x in costs], 3)} %), cold-started Lanczos "
        f"{_range([x['cold_cpu_s'] for x in costs], 3)} s (overhead "
        f"{_range([100 * x['overhead_cold'] for x in costs], 3)} %). Hessian-vector products: "
        f"{_range([x['warm_matvecs'] for x in costs])} warm against "
        f"{_range([x['cold_matvecs'] for x in costs])} cold, "
        f"{_range([x['matvec_saving'] for x in costs], 3)}× fewer.",
        "",
    ]


def _discussion(records_by_seed: Mapping[int, Any], claims: Sequence[Claim]) -> list[str]:
    verdicts = {c.id: c.verdict for c in claims}
    runs = [run for r in records_by_seed.values() for run in r["runs"]]
    diverged = [r for r in runs if r["status"] == "diverged"]
    lines = ["## Discussion", ""]
    if diverged:
        names = ", ".join(sorted({r["name"] for r in diverged}))
        lines.append(f"{len(diverged)} run(s) diverged ({names}); they are recorded with status "
                     "`diverged` and count as not tested, never as disagreeing.")
    else:
        lines.append("No run diverged, so every claim was testable on every seed that reached "
                     "its threshold.")
    untested = [k for k, v in verdicts.items() if v == "not tested"]
    differ = [k for k, v in verdicts.items() if v == "disagrees"]
    if untested:
        lines.append(f"Not tested: {', '.join(f'`{k}`' for k in untested)} (no seed reached "
                     "the regime the criterion needs).")
    if differ:
        lines.append(f"The measurements disagree with {', '.join(f'`{k}`' for k in differ)} "
                     "under the stated criteria; the per-claim sentences above give the numbers.")
    lines += ["", f"The band [{BAND[0]}, {BAND[1]}]·threshold makes \"right at, or just "
                  "above\" numeric; it is the reference digest's choice, fixed before the "
                  "runs. Thresholds differ between seeds because each seed's η is set from its "
                  "own a₀.", ""]
    return lines


def report(records_by_seed: Mapping[int, Any], config: Preset, claims: Sequence[Claim]) -> str:
    """Markdown sections (set-up, results, cost, discussion) with numbers from the records."""
    lines = _setup(records_by_seed, config) + _results(records_by_seed)
    lines += _cost(records_by_seed) + _discussion(records_by_seed, claims)
    return "\n".join(lines)
