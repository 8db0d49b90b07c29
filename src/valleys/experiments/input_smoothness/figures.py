"""Figures of the input-smoothness reproduction: seeds as bands over a shared grid.

The learning rates of a seed are fractions of its own ``2/λ₀``, so the x axis of the η
figures is that fraction, which every seed shares.
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import NullLocator

from valleys.experiments.input_smoothness.measure import Preset, frame_of, robust_key
from valleys.experiments.plotting import LEGEND_OUTSIDE, seed_band
from valleys.experiments.protocol import Figure

__all__ = ["figures"]

LR_AXIS = "learning rate η · λ₀/2 (fraction of the GD threshold at init)"


def _frames(records_by_seed: dict[int, Any]) -> pd.DataFrame:
    frames = []
    for seed, record in records_by_seed.items():
        frame = frame_of(record)
        frame["seed"] = seed
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _converged(frame: pd.DataFrame, column: str) -> pd.Series:
    """``column`` where the run reached the loss goal, NaN elsewhere."""
    if column not in frame:
        return pd.Series(np.nan, index=frame.index)
    values = pd.to_numeric(frame[column], errors="coerce")
    return values.where(frame["status"] == "converged")


def _bands(ax, frame: pd.DataFrame, x: str, group: str, y: pd.Series, label, *,
           ticks=None) -> None:
    """One seed band of ``y`` against ``x`` per value of ``group``."""
    xs = np.sort(frame[x].unique())
    seeds = sorted(frame["seed"].unique())
    for key in sorted(frame[group].unique()):
        ys = np.full((len(seeds), len(xs)), np.nan)
        part = frame[frame[group] == key]
        for _, row in part.iterrows():
            ys[seeds.index(row["seed"]), int(np.searchsorted(xs, row[x]))] = y[row.name]
        seen = np.isfinite(ys).any(axis=0)  # drop grid points no seed measured (diverged)
        if seen.any():
            seed_band(ax, xs[seen], ys[:, seen], label=label(key), marker="o")
    ax.set_xscale("log")
    ax.set_xticks(xs, [ticks(v) if ticks else f"{v:g}" for v in xs])
    ax.xaxis.set_minor_locator(NullLocator())


def _batch_label(batch: int, n: int) -> str:
    return f"GD (B = n = {n})" if batch == n else f"B = {batch}"


def _legend_right(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**LEGEND_OUTSIDE)


def _fig_vs_lr(frame: pd.DataFrame, n: int, out) -> Figure:
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, (col, ylabel) in zip(axes, (
            ("g_x", "g_x(1), input gradients (output units per input unit)"),
            ("sobolev", "(1/n) Σ‖∇_x f(x_i)‖²_F (output² per input²)")), strict=True):
        _bands(ax, frame, "lr_fraction", "batch_size", _converged(frame, col),
               lambda b: _batch_label(b, n))
        ax.set_yscale("log")
        ax.set_xlabel(LR_AXIS)
        ax.set_ylabel(ylabel)
    _legend_right(axes[1])
    fig.tight_layout()
    out.save_figure(fig, "input_gradient_vs_lr")
    return Figure("input_gradient_vs_lr", "Input-gradient norms of the solutions against the "
                  "learning rate, one line per batch size: mean over seeds with the min–max "
                  "band (runs that reached the loss goal).")


def _fig_vs_batch(frame: pd.DataFrame, n: int, out) -> Figure:
    fig, ax = plt.subplots(figsize=(7, 3.8))
    _bands(ax, frame, "batch_size", "lr_fraction", _converged(frame, "g_x"),
           lambda f: f"η = {f:g} · 2/λ₀", ticks=lambda b: f"{b:g}" + (" (GD)" if b == n else ""))
    ax.set_yscale("log")
    ax.set_xlabel("batch size B (samples; B = n is GD)")
    ax.set_ylabel("g_x(1), input gradients (output units per input unit)")
    _legend_right(ax)
    fig.tight_layout()
    out.save_figure(fig, "input_gradient_vs_batch")
    return Figure("input_gradient_vs_batch", "g_x(1) against the batch size, one line per "
                  "learning rate: mean over seeds with the min–max band.")


def _fig_relations(frame: pd.DataFrame, out) -> Figure:
    measured = frame[frame["status"].isin(["converged", "max_steps"])]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for seed, part in measured.groupby("seed"):
        axes[0].scatter(part["g_w"], part["g_x"], s=14, label=f"seed {seed}")
        interp = part[part["interpolates"] == True]  # noqa: E712
        axes[1].scatter(interp["bound_rhs"], interp["bound_lhs"], s=14, label=f"seed {seed}")
    axes[0].set_xlabel("g_w(1), parameter gradients (output units per parameter unit)")
    axes[0].set_ylabel("g_x(1), input gradients (output units per input unit)")
    interp = measured[measured["interpolates"] == True]  # noqa: E712
    if not interp.empty:
        lo = float(interp["bound_lhs"].min()) / 2
        hi = float(interp["bound_rhs"].max()) * 2
        axes[1].plot([lo, hi], [lo, hi], "k--", lw=0.8, label="lhs = rhs")
        axes[1].set_xscale("log")
        axes[1].set_yscale("log")
    axes[1].set_xlabel("rhs ‖W₁‖₂² tr(H) (output² per input²)")
    axes[1].set_ylabel("lhs (1/n)Σ‖x_i‖²‖∇_x f(x_i)‖²_F (output²)")
    _legend_right(axes[1])
    fig.tight_layout()
    out.save_figure(fig, "gradient_relations")
    return Figure("gradient_relations", "Left: input against parameter gradients at every "
                  "measured solution. Right: the two sides of the first-layer bound at the "
                  "interpolating solutions (below the dashed line it holds); one colour per "
                  "seed.")


def _fig_robust(frame: pd.DataFrame, config: Preset, n: int, out) -> Figure:
    rows = [(norm, radii) for norm, radii in (("l2", config.l2_radii), ("linf", config.linf_radii))
            if radii]
    cols = max(len(radii) for _, radii in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(3.4 * cols, 3.0 * len(rows)),
                             squeeze=False, sharey=True)
    for i, (norm, radii) in enumerate(rows):
        for j in range(cols):
            ax = axes[i][j]
            if j >= len(radii):
                ax.set_visible(False)
                continue
            _bands(ax, frame, "lr_fraction", "batch_size",
                   _converged(frame, robust_key(norm, radii[j])), lambda b: _batch_label(b, n))
            ax.set_title(f"PGD {'L2' if norm == 'l2' else 'L∞'}, ε = {radii[j]:g}", fontsize=9)
            ax.set_xlabel("η · λ₀/2")
        axes[i][0].set_ylabel("robust test accuracy (fraction)")
    _legend_right(axes[0][cols - 1])
    fig.tight_layout()
    out.save_figure(fig, "robust_accuracy_vs_lr")
    return Figure("robust_accuracy_vs_lr", "PGD robust test accuracy against the learning rate "
                  "(fraction of the GD threshold at init), one panel per attack norm and "
                  "radius, one line per batch size; mean over seeds with the min–max band.")


def _fig_curvature(frame: pd.DataFrame, n: int, out) -> Figure:
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    measured = frame["status"].isin(["converged", "max_steps"])
    stab = (pd.to_numeric(frame.get("lr_times_sharpness"), errors="coerce") / 2).where(measured)
    nonu = pd.to_numeric(frame.get("nonuniformity"), errors="coerce").where(measured)
    _bands(axes[0], frame, "lr_fraction", "batch_size", stab, lambda b: _batch_label(b, n))
    fractions = np.sort(frame["lr_fraction"].unique())
    axes[0].plot(fractions, np.ones_like(fractions), "k--", lw=0.8, label="GD threshold")
    axes[0].set_ylabel("η · λ_max / 2 at the solution (1 = GD threshold)")
    _bands(axes[1], frame, "lr_fraction", "batch_size", nonu.where(nonu > 0),
           lambda b: _batch_label(b, n))
    axes[1].set_yscale("log")
    axes[1].set_ylabel("non-uniformity (loss units per parameter²)")
    for ax in axes:
        ax.set_xlabel(LR_AXIS)
    _legend_right(axes[1])
    fig.tight_layout()
    out.save_figure(fig, "curvature_vs_lr")
    return Figure("curvature_vs_lr", "Flatness of the solutions: left, the sharpness in units "
                  "of the GD threshold 2/η (dashed: the threshold); right, the non-uniformity; "
                  "one line per batch size, mean over seeds with the min–max band.")


def figures(records_by_seed: dict[int, Any], config: Preset, out) -> list[Figure]:
    """The five figures of the reproduction, saved in ``out``."""
    frame = _frames(records_by_seed)
    n = config.n_train
    return [_fig_vs_lr(frame, n, out), _fig_vs_batch(frame, n, out), _fig_relations(frame, out),
            _fig_robust(frame, config, n, out), _fig_curvature(frame, n, out)]
