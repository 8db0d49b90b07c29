"""Figures of the meanfield-batchnorm reproduction: seed bands of every curve, one point per
seed and neuron where the quantity is per neuron."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from valleys.experiments.meanfield_batchnorm.measure import MISMATCH_TOL, Preset
from valleys.experiments.plotting import LEGEND_OUTSIDE, seed_band
from valleys.experiments.protocol import Figure


def _positive(values) -> np.ndarray:
    """Values for a log axis: exact zeros (identical numbers) become NaN, i.e. not drawn."""
    v = np.asarray(values, dtype=float)
    return np.where(v > 0, v, np.nan)


def _trajectories(records_by_seed, config: Preset, out) -> Figure:
    fig, (ax_loss, ax_mm) = plt.subplots(1, 2, figsize=(12, 3.8))
    for i, act in enumerate(config.activations):
        runs = [r["comparison"][act] for r in records_by_seed.values()]
        steps = np.arange(len(runs[0]["loss_bn"]))
        seed_band(ax_loss, steps, [run["loss_bn"] for run in runs], label=f"GD with BN ({act})",
                  color=f"C{2 * i}")
        seed_band(ax_loss, steps, [run["loss_riemannian"] for run in runs],
                  label=f"Riemannian GD, no BN ({act})", color=f"C{2 * i + 1}")
        ax_loss.lines[-1].set_linestyle("--")
        seed_band(ax_mm, np.arange(len(runs[0]["mismatch"])),
                  [_positive(run["mismatch"]) for run in runs], label=act, color=f"C{2 * i}")
    ax_mm.axhline(MISMATCH_TOL, color="k", ls=":", lw=0.8, label="criterion tolerance")
    for ax in (ax_loss, ax_mm):
        ax.set_yscale("log")
        ax.set_xlabel("GD step (count)")
        ax.legend(**LEGEND_OUTSIDE)
    ax_loss.set_ylabel("training loss (square loss, target units²)")
    ax_mm.set_ylabel("largest relative difference (dimensionless)")
    fig.tight_layout()
    out.save_figure(fig, "trajectories")
    return Figure("trajectories",
                  "GD with BN against Riemannian GD without BN from the same point: training "
                  "losses (left) and their largest relative difference per step (right; exact "
                  "zeros not drawn); line = mean, band = min–max over seeds.")


def _norm_growth(records_by_seed, config: Preset, out) -> Figure:
    act = config.activations[0]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for i, (seed, r) in enumerate(records_by_seed.items()):
        run = r["comparison"][act]
        steps = np.asarray(run["norm_steps"], dtype=float)
        measured = np.asarray(run["norm_growth"], dtype=float)
        predicted = np.asarray(run["norm_growth_predicted"], dtype=float)
        for k in range(measured.shape[1]):
            ax.plot(steps, measured[:, k], color=f"C{i}", lw=2.0, alpha=0.5,
                    label=f"seed {seed}: measured (one line per neuron)" if k == 0 else None)
            ax.plot(steps, predicted[:, k], color="k", ls=":", lw=0.8,
                    label="Σ_s (ηm)²‖∇L_s‖² / ‖w₀‖² (identity)" if i == k == 0 else None)
    ax.set_xlabel("GD step (count)")
    ax.set_ylabel("‖w_k‖² / ‖w_k(0)‖² − 1 (dimensionless)")
    ax.set_title(f"Norm growth under GD with BN ({act}, first neurons)", fontsize=9)
    ax.legend(**LEGEND_OUTSIDE)
    fig.tight_layout()
    out.save_figure(fig, "norm_growth")
    return Figure("norm_growth",
                  "Relative growth of the first neurons' squared norms under GD with BN "
                  "(coloured, one colour per seed) and the growth identity (dotted).")


def _flow(records_by_seed, out) -> Figure:
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for i, (seed, r) in enumerate(records_by_seed.items()):
        flow = r["flow"]
        lr = np.asarray(flow["lr"], dtype=float)
        drift = np.asarray(flow["max_relative_norm_drift"], dtype=float)
        ax.plot(lr, drift, "o-", color=f"C{i}", label=f"seed {seed} (slope {flow['slope']:.3f})")
        if i == 0:
            ax.plot(lr, drift[0] * lr / lr[0], "k--", lw=0.8, label="slope 1")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("step η at fixed flow time (dimensionless)")
    ax.set_ylabel("max_k relative drift of ‖w_k‖² (dimensionless)")
    ax.set_title("‖w‖ is conserved by the flow: the drift falls like η", fontsize=9)
    ax.legend(**LEGEND_OUTSIDE)
    fig.tight_layout()
    out.save_figure(fig, "flow_conservation")
    return Figure("flow_conservation",
                  "GD over a fixed flow time with shrinking steps: the largest relative drift of "
                  "the squared norms against η, one line per seed, and a slope-1 reference.")


def _widths(records_by_seed, config: Preset, out) -> Figure:
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for i, m in enumerate(config.widths):
        curves = [r["widths"][str(m)] for r in records_by_seed.values()]
        seed_band(ax, np.arange(len(curves[0])), curves, label=f"m = {m}", color=f"C{i}")
    ax.set_yscale("log")
    ax.set_xlabel("GD step (count; particles move by ηm)")
    ax.set_ylabel("training loss (square loss, target units²)")
    ax.set_title("BN networks in the mean-field scaling", fontsize=9)
    ax.legend(**LEGEND_OUTSIDE)
    fig.tight_layout()
    out.save_figure(fig, "width_curves")
    return Figure("width_curves",
                  "Training loss of mean-field-scaled GD with BN at several widths (shown, not "
                  "judged); line = mean, band = min–max over seeds.")


def figures(records_by_seed: dict[int, dict[str, Any]], config: Preset, out) -> list[Figure]:
    """The four figures, each checked on save."""
    return [_trajectories(records_by_seed, config, out),
            _norm_growth(records_by_seed, config, out), _flow(records_by_seed, out),
            _widths(records_by_seed, config, out)]
