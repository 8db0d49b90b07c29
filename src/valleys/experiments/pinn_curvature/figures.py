"""Figures of the pinn-curvature reproduction: SLQ densities of the loss terms, their top
eigenvalues along Adam→L-BFGS, the optimisers' loss curves and GD's sharpness against 2/η."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from valleys.experiments.pinn_curvature.measure import CHECKPOINTS, EOS_BAND, TERMS, Preset
from valleys.experiments.plotting import LEGEND_OUTSIDE, seed_band
from valleys.experiments.protocol import Figure

LABELS = {"pde": "PDE term", "bc": "boundary + initial terms", "total": "whole loss"}
WHEN = {"init": "initialization", "adam": "after Adam", "lbfgs": "after Adam→L-BFGS"}


def _positive(values) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    return np.where(v > 0, v, np.nan)


def _densities(records_by_seed, out) -> Figure:
    seed, record = next(iter(records_by_seed.items()))
    fig, axes = plt.subplots(1, len(CHECKPOINTS), figsize=(14, 3.8))
    for ax, when in zip(axes, CHECKPOINTS, strict=True):
        peak = 0.0
        for i, name in enumerate(TERMS):
            s = record["spectra"][when][name]
            density = _positive(s["density"])
            peak = max(peak, float(np.nanmax(density)))
            ax.plot(np.asarray(s["density_grid"], float), density, color=f"C{i}",
                    label=LABELS[name])
        ax.set_yscale("log")
        ax.set_ylim(peak * 1e-8, peak * 3)  # the Gaussian kernels' far tails are not drawn
        ax.set_xlabel("Hessian eigenvalue (loss units)")
        ax.set_ylabel("SLQ density (1/loss units)")
        ax.set_title(WHEN[when], fontsize=9)
    axes[-1].legend(**LEGEND_OUTSIDE)
    fig.tight_layout()
    out.save_figure(fig, "densities")
    return Figure("densities",
                  f"Hessian eigenvalue densities (stochastic Lanczos quadrature, seed {seed}) of "
                  "the PDE term, the boundary + initial terms and the whole loss, at "
                  "initialization, after Adam and after Adam→L-BFGS.")


def _top(records_by_seed, config: Preset, out) -> Figure:
    fig, ax = plt.subplots(figsize=(7, 3.8))
    runs = list(records_by_seed.values())
    for i, name in enumerate(TERMS):
        its, ys = [], []
        for r in runs:
            a, b = r["runs"]["adam"]["trace"], r["runs"]["adam_lbfgs"]["trace"]
            its = list(a["iteration"]) + [config.adam_steps + t for t in b["iteration"][1:]]
            ys.append(list(a[name]) + list(b[name][1:]))
        seed_band(ax, its, [_positive(y) for y in ys], label=LABELS[name], color=f"C{i}")
    ax.axvline(config.adam_steps, color="k", ls=":", lw=0.8, label="Adam → L-BFGS")
    ax.set_yscale("log")
    ax.set_xlabel("iteration (count)")
    ax.set_ylabel("λ_max of the Hessian (loss units)")
    ax.legend(**LEGEND_OUTSIDE)
    fig.tight_layout()
    out.save_figure(fig, "top_eigenvalues")
    return Figure("top_eigenvalues",
                  "Top Hessian eigenvalue of each loss term and of the whole loss along Adam "
                  "then L-BFGS; line = mean, band = min–max over seeds.")


def _losses(records_by_seed, config: Preset, out) -> Figure:
    fig, ax = plt.subplots(figsize=(7, 3.8))
    runs = [r["runs"] for r in records_by_seed.values()]
    combined = [r["adam"]["loss"] + r["adam_lbfgs"]["loss"][1:] for r in runs]
    n = min(len(c) for c in combined)
    seed_band(ax, np.arange(n), [_positive(c[:n]) for c in combined], label="Adam → L-BFGS",
              color="C0")
    cont = [r["adam_only"]["loss"] for r in runs]
    m = min(len(c) for c in cont)
    seed_band(ax, config.adam_steps + np.arange(m), [_positive(c[:m]) for c in cont],
              label="Adam alone (continued)", color="C1")
    lb = [r["lbfgs_only"]["loss"] for r in runs]
    k = min(len(c) for c in lb)
    seed_band(ax, np.arange(k), [_positive(c[:k]) for c in lb], label="L-BFGS alone",
              color="C2")
    ax.set_yscale("log")
    ax.set_xlabel("iteration (count)")
    ax.set_ylabel("PINN loss (dimensionless)")
    ax.legend(**LEGEND_OUTSIDE)
    fig.tight_layout()
    out.save_figure(fig, "losses")
    return Figure("losses", "Training loss of Adam→L-BFGS, Adam alone and L-BFGS alone from "
                            "the same initialization; line = mean, band = min–max over seeds.")


def _gd(records_by_seed, config: Preset, out) -> Figure:
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for i, c in enumerate(config.gd_fractions):
        runs = [next(g for g in r["gd"] if g["fraction"] == c) for r in records_by_seed.values()]
        n = max(len(g["sharpness"]) for g in runs)
        steps = next(g["sharpness_step"] for g in runs if len(g["sharpness"]) == n)
        ys = [np.pad(np.asarray(g["sharpness"], float) * g["lr"] / 2,
                     (0, n - len(g["sharpness"])), constant_values=np.nan) for g in runs]
        seed_band(ax, steps, ys, label=f"η = {c:g} · 2/λ_max(init)", color=f"C{i}")
    ax.axhline(1.0, color="k", ls=":", lw=0.8, label="λ_max = 2/η")
    ax.axhspan(*EOS_BAND, color="grey", alpha=0.15, lw=0, label="criterion band")
    ax.set_xlabel("GD step (count)")
    ax.set_ylabel("λ_max · η / 2 (dimensionless)")
    ax.legend(**LEGEND_OUTSIDE)
    fig.tight_layout()
    out.save_figure(fig, "gd_sharpness")
    return Figure("gd_sharpness",
                  "Full-batch GD at three step sizes: sharpness in units of the stability "
                  "threshold 2/η; line = mean, band = min–max over seeds.")


def figures(records_by_seed: dict[int, dict[str, Any]], config: Preset, out) -> list[Figure]:
    """The four figures, each checked on save."""
    return [_densities(records_by_seed, out), _top(records_by_seed, config, out),
            _losses(records_by_seed, config, out), _gd(records_by_seed, config, out)]
