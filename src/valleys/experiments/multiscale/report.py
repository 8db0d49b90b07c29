"""Results table and prose of the multiscale reproduction (every number from the records)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from valleys.experiments.common import format_cell as fmt
from valleys.experiments.multiscale.measure import (
    AMPLITUDE_TOL,
    CYCLE_FACTORS,
    INIT_SCALE,
    MIN_SCALE_RATIO,
    RANGE_DECADES,
    Preset,
    decay_stats,
    plateau_stats,
)
from valleys.experiments.protocol import Claim

__all__ = ["report", "table"]


def table(records_by_seed: dict[int, Any], config: Preset) -> pd.DataFrame:
    """One row per (seed, part, item): growth sides, restricted-GD factors, origin arms."""
    rows: list[dict[str, Any]] = []
    for seed, rec in records_by_seed.items():
        a, b = rec["growth"], rec["origin"]
        for side, g in a.get("growth", {}).items():
            rows.append({"seed": seed, "part": "growth", "item": side,
                         "eos_ratio": a["eos_ratio"], "t_min": g["t_min"], "t_max": g["t_max"],
                         "outer_exponent": g["outer_exponent"],
                         "quadratic_radius": g["quadratic_radius"],
                         "gd_amplitude": a["amplitude"]})
        for c in a.get("cycles", []):
            rows.append({"seed": seed, "part": "cycle", "item": f"r={c['factor']:g}",
                         "period": c["period"], "amplitude": c["amplitude"],
                         "toy_amplitude": c["toy_amplitude"]})
        row = {"seed": seed, "part": "origin", "item": "phase 1", "lr": b["lr1"],
               "scale_ratio": b["scale_ratio"], "final_loss": None}
        if "phase1" in b and b["phase1"]["status"] != "diverged":
            row["final_loss"] = plateau_stats(b)["late"]
        rows.append(row)
        for arm, v in b.get("arms", {}).items():
            rows.append({"seed": seed, "part": "origin", "item": arm, "lr": v["lr"],
                         "final_loss": v["final_loss"], "final_loss_large": v["final_loss_large"],
                         "final_loss_small": v["final_loss_small"],
                         "sharpness_end": v["sharpness_end"]})
    return pd.DataFrame(rows)


def _mean(values: list[float | None]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _range(values: list[float | None]) -> str:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return "–"
    return f"{fmt(min(finite), 3)}–{fmt(max(finite), 3)}"


def _amplitude_sentence(amp: list[float], radius: list[float]) -> str:
    """Where the EoS run's own oscillation lies relative to the quadratic core (per seed)."""
    if not amp or not radius:
        return ""
    inside = max(amp) < min(radius)
    factor = fmt(min(radius) / max(amp), 3) if max(amp) > 0 else "∞"
    if inside:
        return (f"Every seed's EoS amplitude A lies inside every quadratic core (smallest "
                f"core / largest A = {factor}): the EoS runs oscillate where the walls are still "
                "quadratic, so sub-quadratic walls do not set their amplitude.")
    return ("On some seed the EoS amplitude A reaches beyond the quadratic core, into the "
            "sub-quadratic walls.")


def report(records_by_seed: dict[int, Any], config: Preset, claims: list[Claim]) -> str:
    """Set-up, results and discussion (the driver adds the claims, figures and table)."""
    p = config
    verdict = {c.id: c.verdict for c in claims}
    A = [r["growth"] for r in records_by_seed.values()]
    B = [r["origin"] for r in records_by_seed.values()]
    landscapes = [a for a in A if "growth" in a]
    radius = [g["quadratic_radius"] for a in landscapes for g in a["growth"].values()]
    t_max = [g["t_max"] for a in landscapes for g in a["growth"].values()]
    outer = [g["outer_exponent"] for a in landscapes for g in a["growth"].values()]
    amp = [a["amplitude"] for a in landscapes]
    lam = [a["floor_curvature"] for a in landscapes]
    n_cycles = sum(c["period"] == 2 for a in landscapes for c in a["cycles"])
    n_runs = sum(len(a["cycles"]) for a in landscapes)
    other = sorted({c["period"] for a in landscapes for c in a["cycles"] if c["period"] != 2})
    ratios = [c["amplitude"] / c["toy_amplitude"] for a in landscapes for c in a["cycles"]
              if c["period"] == 2 and c["toy_amplitude"] > 0]
    sep = [b["scale_ratio"] for b in B]
    with_arms = [b for b in B if "arms" in b]
    plateau = [plateau_stats(b) for b in with_arms]
    decay = [decay_stats(b) for b in with_arms]
    lines = [
        "## Set-up",
        "",
        f"**(A)** First n = {p.n} digits samples, tanh MLP {tuple(p.widths)}, square loss "
        f"½Σ_k(f_k − y_k)², float64; full-batch GD at η = 2/({p.eos_factor:g}·a₀) for "
        f"{p.eos_steps} steps, sharpness every {p.check_every}. At the last iterate: top "
        f"Hessian eigenvector u, valley floor θ_c (line minimizer along u), floor curvature "
        f"λ = uᵀH(θ_c)u; ΔL(t) on |t| ∈ [{p.t_min:g}, {p.t_max:g}] ({p.per_decade} points per "
        f"decade, both signs). Per side, t_max is the first |t| where the local exponent p(t) "
        f"falls below 1 (the loss has reached the height of its scale); p(t) is reported over "
        f"[t_max/10^{RANGE_DECADES:g}, t_max]. GD restricted to the line θ_c + tu runs at "
        f"η = r·2/λ for r ∈ {list(CYCLE_FACTORS)}.",
        "",
        f"**(B)** d = {p.d}; {p.n_per_group} inputs with ‖x‖ ≈ 1 and {p.n_per_group} with "
        f"‖x‖ ≈ {p.scale:g}; two-layer tanh net of width {p.width} (input layer trained, "
        f"readout frozen), input layer initialized at {INIT_SCALE:g}× PyTorch's default; "
        f"realizable targets from a teacher drawn the same way. η₁ = 2/sqrt(a_small·a_large) "
        f"from the groups' curvature at the minimum, η₂ = 1/λ*; {p.phase1_steps} steps at η₁, "
        f"then {p.phase2_steps} steps decayed (η₂) or control (η₁). Changed from the previous "
        "version (issue 14): the first-layer scale (was PyTorch's default: tanh saturated on the "
        "large inputs and the two scales merged), the width (was 32–128: a flat zero-loss "
        "solution existed and the loss converged before any decay), and both learning rates "
        "are anchored at the minimum's curvature.",
        "",
        "## Results",
        "",
        f"**Growth.** The floor curvature was λ = {_range(lam)} and the EoS oscillation "
        f"amplitude along u A = {_range(amp)}. The quadratic core (|p − 2| ≤ 0.2) extends to "
        f"|t| = {_range(radius)}, the saturation scale is t_max = {_range(t_max)}, and the "
        f"growth exponent over [t_max/10, t_max] is {_range(outer)} (verdict "
        f"`{verdict['subquadratic-growth']}`). " + _amplitude_sentence(amp, radius),
        "",
        f"**2-cycles.** {n_cycles} of {n_runs} restricted GD runs ended on a 2-cycle "
        f"(verdict `{verdict['two-cycles']}`)"
        + (f"; the others ended with period {other} (0: none up to 16)" if other else "")
        + f". Measured/toy amplitude over the 2-cycles: {_range(ratios)} (tolerance factor "
        f"{AMPLITUDE_TOL:g}; verdict `{verdict['cycle-amplitude']}`).",
        "",
        f"**Origin.** Loss-scale ratio {_range(sep)} (precondition ≥ {MIN_SCALE_RATIO:g}; "
        f"verdict `{verdict['separate-scales']}`). In the last quarter of phase 1 the loss kept "
        f"{_range([s['ratio'] for s in plateau])} of its value of the quarter before, at "
        f"{_range([s['over_init'] for s in plateau])} of the initial loss (verdict "
        f"`{verdict['plateau-before-decay']}`). The decay lowered the final loss "
        f"{_range([s['drop'] for s in decay])}-fold against the control, the large-input group "
        f"carried {_range([s['large_share'] for s in decay])} of the drop, and the decayed arm "
        f"ended at a sharpness {_range([s['sharpness_over_edge'] for s in decay])} × 2/η₁ "
        f"(verdict `{verdict['decay-enters-small-scale']}`).",
        "",
        "## Discussion",
        "",
        "The growth exponent is measured over absolute decades of t up to the saturation scale "
        "(issue 14), not relative to the EoS amplitude A; both are reported because they answer "
        "different questions: whether the loss grows sub-quadratically beyond a core (the "
        "range rule), and whether GD's own oscillation reaches that region (A against the core "
        "radius). The 2-cycle comparison uses the one-parameter toy λs²(sqrt(1 + (t/s)²) − 1), "
        "whose s is fitted to the symmetrized ΔL before GD runs; the real line is not even, so "
        "the cycle is off-centre and can period-double where the toy's would not.",
        "",
        "In (B) the loss scales are saturation scales along the top eigenvector at the "
        "zero-loss minimum θ* (the teacher); a grid of "
        f"{p.per_decade} points per decade quantizes the ratio to steps of "
        f"{fmt(10 ** (1 / p.per_decade), 3)}×. Only the paper's abstract was available to us "
        "(not its figures or numbers), so every set-up here is our operationalization of it.",
    ]
    return "\n".join(lines)
