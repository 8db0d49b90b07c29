"""Figures of the mean-field ResNet reproduction: Euler errors, training schemes, block order."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from valleys.experiments.meanfield_resnet.measure import (
    CONFIDENCE,
    Preset,
    loss_ratio,
    ratio_stats,
    relative_order_sensitivity,
)
from valleys.experiments.plotting import LEGEND_OUTSIDE, seed_band
from valleys.experiments.protocol import Figure
from valleys.meanfield.resnet import SCHEMES

__all__ = ["figures"]

COLORS = {"plain": "C0", "shuffle": "C1", "refine": "C2"}
LABELS = {"plain": "plain", "shuffle": "block switching", "refine": "coarse-to-fine"}


def _euler_panel(ax, depths, errors, label: str, ylabel: str) -> None:
    """Seed band of one error against depth, with the 1/L reference through its first point."""
    L = np.asarray(depths, float)
    ys = np.array([[np.nan if e is None else e for e in row] for row in errors], float)
    keep = np.isfinite(ys).any(axis=0)
    L, ys = L[keep], ys[:, keep]
    seed_band(ax, L, ys, label=label, marker="o")
    first = np.nanmean(ys[:, 0])
    ax.plot(L, first * L[0] / L, "k:", lw=1.0, label="∝ 1/L")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("depth L (blocks)")
    ax.set_ylabel(ylabel)
    ax.legend(loc="lower left", fontsize=8)


def _fig_euler(records: dict[int, Any], out) -> Figure:
    first = next(iter(records.values()))["euler"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    _euler_panel(axes[0], first["depths"], [r["euler"]["output_error"] for r in records.values()],
                 "output state X(1)", "RMS error of X(1) vs the ODE (state units)")
    _euler_panel(axes[1], first["depths"],
                 [r["euler"]["velocity_error"] for r in records.values()],
                 "particle velocity", "relative error of the velocity (dimensionless)")
    axes[0].set_title("output: ResNet vs RK4 reference")
    axes[1].set_title("velocity: LM ∂E/∂θ vs ∇_θ δE/δρ")
    fig.tight_layout()
    out.save_figure(fig, "euler_error")
    return Figure("euler_error", "Euler in depth, one quantity per panel: left, the RMS distance "
                  "between the L-block ResNet's output and the ODE's; right, the relative "
                  "distance between the particle velocities and the continuous velocity; mean "
                  f"over {len(records)} seeds with the min–max band, dotted: ∝ 1/L.")


def _ratio_panel(ax, records: dict[int, Any], scheme: str) -> None:
    """Per-seed test-loss ratios of ``scheme`` to plain (points) and their interval."""
    ratios = [x for r in records.values() if (x := loss_ratio(r, scheme)) is not None]
    jitter = np.linspace(-0.15, 0.15, len(ratios)) if len(ratios) > 1 else np.zeros(len(ratios))
    ax.scatter(jitter, ratios, color=COLORS[scheme], s=18, zorder=3, label="one seed")
    stats_ = ratio_stats(records, scheme)
    if stats_["low"] is not None:
        mid = stats_["ratio"]
        ax.errorbar([0.4], [mid], yerr=[[mid - stats_["low"]], [stats_["high"] - mid]],
                    color="k", marker="D", capsize=4, ms=4,
                    label=f"geometric mean,\n{CONFIDENCE:.0%} interval")
    ax.plot([-0.4, 0.8], [1.0, 1.0], color="grey", lw=0.8, ls="--", label="equal loss")
    ax.set_xlim(-0.4, 0.8)
    ax.set_xticks([])
    ax.set_xlabel(f"{LABELS[scheme]} (seeds)")
    ax.set_ylabel(f"test loss ratio {LABELS[scheme]} / plain")


def _fig_training(records: dict[int, Any], out) -> Figure:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), gridspec_kw={"width_ratios": [3, 1.3, 1.3]})
    ax = axes[0]
    for scheme in SCHEMES:
        curves = [r["schemes"][scheme]["curve"] for r in records.values()]
        cost = curves[0]["cost"]
        if all(c["cost"] == cost for c in curves):
            ys = np.array([[v if np.isfinite(v) and v > 0 else np.nan for v in c["loss"]]
                           for c in curves], float)
            seed_band(ax, cost, ys, label=LABELS[scheme], color=COLORS[scheme])
    ax.set_yscale("log")
    ax.set_xlabel("cost (block passes)")
    ax.set_ylabel("training loss (natural order)")
    ax.legend(loc="upper right", fontsize=8)
    _ratio_panel(axes[1], records, "shuffle")
    _ratio_panel(axes[2], records, "refine")
    axes[2].legend(**LEGEND_OUTSIDE)
    fig.tight_layout()
    out.save_figure(fig, "training_schemes")
    return Figure("training_schemes", "Training schemes at equal cost. Left: training loss "
                  "against block passes, mean over seeds with the min–max band. Middle and "
                  "right: each seed's test-loss ratio to plain training (points) and the "
                  f"geometric mean with its {CONFIDENCE:.0%} Student-t interval, one scheme per "
                  "panel; dashed: equal loss.")


def _fig_order(records: dict[int, Any], out) -> Figure:
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for i, scheme in enumerate(SCHEMES):
        vals = [relative_order_sensitivity(r, scheme) for r in records.values()]
        vals = [v for v in vals if v is not None]
        jitter = np.linspace(-0.12, 0.12, len(vals)) if len(vals) > 1 else np.zeros(len(vals))
        ax.scatter(i + jitter, vals, color=COLORS[scheme], s=18)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(range(len(SCHEMES)), [LABELS[s] for s in SCHEMES])
    ax.set_xlabel("training scheme (one point per seed)")
    ax.set_ylabel("(random-order − trained-order loss)\n/ trained-order loss (ratio)")
    fig.tight_layout()
    out.save_figure(fig, "order_sensitivity")
    return Figure("order_sensitivity", "Sensitivity of the trained networks to the order of "
                  "their blocks: mean training loss over random block orders minus the loss in "
                  "the trained order, relative to the latter, one point per seed.")


def figures(records_by_seed: dict[int, Any], config: Preset, out) -> list[Figure]:
    """The three figures of the reproduction, saved in ``out``."""
    return [_fig_euler(records_by_seed, out), _fig_training(records_by_seed, out),
            _fig_order(records_by_seed, out)]
