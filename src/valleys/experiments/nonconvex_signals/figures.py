"""Figures of the nonconvex-signals reproduction: seed bands over instances, one marker per
seed and run where the quantity is per run."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from valleys.experiments.nonconvex_signals.measure import PR_HIGH, PR_LOW, Preset
from valleys.experiments.plotting import LEGEND_OUTSIDE, seed_band
from valleys.experiments.protocol import Figure


def _phase(records_by_seed, config: Preset, out) -> Figure:
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for i, field in enumerate(config.pr_fields):
        rates = [r["phase"][field]["rate"] for r in records_by_seed.values()]
        seed_band(ax, list(config.pr_ratios), rates, label=f"{field} Gaussian", color=f"C{i}",
                  marker="o")
    ax.axhline(PR_LOW, color="k", ls=":", lw=0.8, label="criterion bounds")
    ax.axhline(PR_HIGH, color="k", ls=":", lw=0.8)
    ax.set_xlabel("sampling ratio m/n (dimensionless)")
    ax.set_ylabel("recovery rate (fraction of instances)")
    ax.set_title(f"Wirtinger flow, n = {config.pr_n}, {config.pr_steps} iterations", fontsize=9)
    ax.legend(**LEGEND_OUTSIDE)
    fig.tight_layout()
    out.save_figure(fig, "phase_transition")
    return Figure("phase_transition",
                  "Fraction of instances recovered by spectral initialisation + Wirtinger flow "
                  "against m/n; line = mean, band = min–max over seeds.")


def _matrix(records_by_seed, config: Preset, out) -> Figure:
    fig, (ax_r, ax_e) = plt.subplots(1, 2, figsize=(12, 3.8))
    scales = list(config.bm_scales)
    ranks = [[run["rank"] for run in r["matrix"]["runs"]] for r in records_by_seed.values()]
    errors = [[run["relative_error"] for run in r["matrix"]["runs"]]
              for r in records_by_seed.values()]
    seed_band(ax_r, scales, ranks, label="numerical rank of UUᵀ", color="C0", marker="o")
    ax_r.axhline(config.bm_rank, color="k", ls=":", lw=0.8, label=f"true rank r = {config.bm_rank}")
    seed_band(ax_e, scales, errors, label="‖UUᵀ − X*‖_F / ‖X*‖_F", color="C1", marker="o")
    for ax in (ax_r, ax_e):
        ax.set_xscale("log")
        ax.set_xlabel("initialisation scale α of U₀ = αI (dimensionless)")
        ax.legend(**LEGEND_OUTSIDE)
    ax_e.set_yscale("log")
    ax_r.set_ylabel("rank (count)")
    ax_e.set_ylabel("relative error (dimensionless)")
    fig.tight_layout()
    out.save_figure(fig, "matrix_rank")
    return Figure("matrix_rank",
                  "Burer–Monteiro GD from U₀ = αI: numerical rank (left) and relative error "
                  "(right) of the matrix found, against α; line = mean, band = min–max over "
                  "seeds.")


def _diagonal_scale(records_by_seed, config: Preset, out) -> Figure:
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    scales = list(config.dn_scales)

    def rel(r, key):  # ℓ1 relative to the min-ℓ1 value of the seed's problem
        return [s[key] / r["diagonal"]["l1_min"] for s in r["diagonal"]["sweep"]]

    records = list(records_by_seed.values())
    seed_band(ax, scales, [rel(r, "l1") for r in records], label="GD, small step",
              color="C0", marker="o")
    seed_band(ax, scales, [rel(r, "limit_l1") for r in records],
              label="closed form argmin Q_α", color="k")
    ax.lines[-1].set_linestyle("--")
    l2 = [r["diagonal"]["l2_interpolant_l1"] / r["diagonal"]["l1_min"] for r in records]
    ax.axhline(float(np.mean(l2)), color="C3", ls=":", lw=0.8,
               label="min-ℓ2 interpolant (seed mean)")
    ax.axhline(1.0, color="C2", ls=":", lw=0.8, label="min-ℓ1 interpolant")
    ax.set_xscale("log")
    ax.set_xlabel("initialisation scale α (u₀ = v₀ = α1; dimensionless)")
    ax.set_ylabel("‖w‖₁ / min-ℓ1 value (dimensionless)")
    ax.legend(**LEGEND_OUTSIDE)
    fig.tight_layout()
    out.save_figure(fig, "diagonal_scale")
    return Figure("diagonal_scale",
                  "Diagonal network: ℓ1 norm of the GD solution and of Woodworth et al.'s closed "
                  "form against α, relative to the min-ℓ1 interpolant; band = min–max over seeds.")


def _diagonal_grid(records_by_seed, config: Preset, out) -> Figure:
    fig, (ax_l, ax_s) = plt.subplots(1, 2, figsize=(12, 3.8))
    lrs = list(config.sgd_lrs)
    records = list(records_by_seed.values())
    for i, batch in enumerate(config.sgd_batches):
        curves = []
        for r in records:
            flow = r["diagonal"]["flow_l1"]
            rows = {row["lr"]: row for row in r["diagonal"]["grid"] if row["batch"] == batch}
            curves.append([rows[lr]["l1"] / flow if rows[lr]["converged"] else np.nan
                           for lr in lrs])
        label = "GD" if batch == records[0]["diagonal"]["n"] else f"SGD, B = {batch}"
        seed_band(ax_l, lrs, curves, label=label, color=f"C{i}", marker="o")
    ax_l.axhline(1.0, color="k", ls=":", lw=0.8, label="gradient flow (closed form)")
    ax_l.set_xscale("log")
    ax_l.set_xlabel("step η (dimensionless)")
    ax_l.set_ylabel("‖w‖₁ / gradient-flow ‖w‖₁ (dimensionless)")
    ax_l.legend(**LEGEND_OUTSIDE)
    for j, (seed, r) in enumerate(records_by_seed.items()):
        rows = [row for row in r["diagonal"]["grid"] if row["converged"]]
        flow = r["diagonal"]["flow_l1"]
        stable = [row for row in rows if row["flow_rho"] <= 1 + 1e-6]
        unstable = [row for row in rows if row["flow_rho"] > 1 + 1e-6]
        ax_s.scatter([row["l1"] / flow for row in stable],
                     [row["sharpness"] for row in stable], color=f"C{j}", marker="o",
                     label=f"seed {seed}: flow solution stable at (η, B)")
        ax_s.scatter([row["l1"] / flow for row in unstable],
                     [row["sharpness"] for row in unstable], color=f"C{j}", marker="x",
                     label=f"seed {seed}: flow solution unstable at (η, B)")
    ax_s.set_xlabel("‖w‖₁ / gradient-flow ‖w‖₁ (dimensionless)")
    ax_s.set_ylabel("sharpness λ_max(∇²L) (loss units)")
    ax_s.legend(**LEGEND_OUTSIDE)
    fig.tight_layout()
    out.save_figure(fig, "diagonal_sgd")
    return Figure("diagonal_sgd",
                  f"Diagonal network at α = {config.sgd_scale:g}: ℓ1 norm of the solution "
                  "against the step for each batch size, relative to gradient flow (left; "
                  "missing = did not converge), and sharpness against ℓ1 per converged run, "
                  "marked by whether the gradient-flow solution is mean-square stable at that "
                  "run's (η, B) (right).")


def figures(records_by_seed: dict[int, dict[str, Any]], config: Preset, out) -> list[Figure]:
    """The four figures, each checked on save."""
    return [_phase(records_by_seed, config, out), _matrix(records_by_seed, config, out),
            _diagonal_scale(records_by_seed, config, out),
            _diagonal_grid(records_by_seed, config, out)]
