"""Figures of the edge-of-stability reproduction: sharpness against threshold, loss, flow distance.

Learning rates are set per seed from the initial sharpness, so thresholds differ between seeds;
the sharpness is therefore shown as ``λ / threshold`` (1 = the threshold), the mean over seeds as
a line and the min–max over seeds as a band (:func:`~valleys.experiments.plotting.seed_band`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from valleys.experiments.edge_of_stability.measure import BAND, Preset, flow_analysis
from valleys.experiments.plotting import seed_band
from valleys.experiments.protocol import Figure

__all__ = ["figures"]

_LEGEND = {"loc": "upper left", "bbox_to_anchor": (1.02, 1.0), "fontsize": "small"}


def _grid(config: Preset) -> np.ndarray:
    return np.arange(0, config.steps + 1, dtype=float)


def _on_grid(steps: Sequence[int], values: Sequence[float], grid: np.ndarray) -> np.ndarray:
    """``values`` at ``steps`` placed on the step grid ``grid`` (NaN elsewhere)."""
    out = np.full(grid.shape, np.nan)
    index = {int(s): i for i, s in enumerate(grid)}
    for s, v in zip(steps, values, strict=True):
        if int(s) in index and v is not None and math.isfinite(v):
            out[index[int(s)]] = v
    return out


def _band(ax, runs: Sequence[Mapping[str, Any]], steps, values, grid: np.ndarray,
          *, label: str, color=None) -> None:
    """Seed band of ``values(run)`` at ``steps(run)`` over ``runs`` (one run per seed)."""
    rows = np.array([_on_grid(steps(r), values(r), grid) for r in runs])
    keep = ~np.all(np.isnan(rows), axis=0)
    if keep.any():
        seed_band(ax, grid[keep], rows[:, keep], label=label, color=color)


def _by_name(records_by_seed: Mapping[int, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for records in records_by_seed.values():
        for run in records["runs"]:
            out.setdefault(run["name"], []).append(run)
    return out


def _sharp_steps(run: Mapping[str, Any]) -> list[int]:
    return run["sharpness_steps"]


def _loss_steps(run: Mapping[str, Any]) -> list[int]:
    return run["loss_steps"]


def _ratio(run: Mapping[str, Any]) -> list[float]:
    return [v / run["threshold"] for v in run["sharpness"]]


def _label(runs: Sequence[Mapping[str, Any]]) -> str:
    run = runs[0]
    lrs = [r["lr"] for r in runs]
    eta = f"η = {min(lrs):.3g}" if min(lrs) == max(lrs) else f"η = {min(lrs):.3g}–{max(lrs):.3g}"
    if run["optimizer"] == "gd":
        return f"GD 2/η = {run['factor']:g}·a₀, {eta}"
    if run["optimizer"] == "heavy_ball":
        return f"heavy ball β = {run['beta']:g}, (2+2β)/η = {run['factor']:g}·a₀, {eta}"
    return f"Adam β₁ = {run['beta1']:g}, {eta}"


def _threshold_lines(ax) -> None:
    ax.axhline(1.0, color="k", ls="--", lw=1)
    for edge in BAND:
        ax.axhline(edge, color="0.6", ls=":", lw=1)


def _sharpness(records_by_seed, config: Preset, out) -> Figure:
    grid = _grid(config)
    names = _by_name(records_by_seed)
    gd = [runs for runs in names.values() if runs[0]["optimizer"] == "gd"]
    hb = [runs for runs in names.values() if runs[0]["optimizer"] == "heavy_ball"]
    adam = [runs for runs in names.values() if runs[0]["optimizer"] == "adam"]
    fig, axes = plt.subplots(4, 1, figsize=(12, 12), sharex=True)
    for i, runs in enumerate(gd):
        _band(axes[0], runs, _sharp_steps, _ratio, grid, label=_label(runs), color=f"C{i}")
    axes[0].set_ylabel("λ_max(H) · η/2")
    axes[0].set_title("GD: sharpness over its threshold 2/η")
    for runs in hb:
        _band(axes[1], runs, _sharp_steps, _ratio, grid, label=_label(runs), color="C4")
    axes[1].set_ylabel("λ_max(H) · η/(2+2β)")
    axes[1].set_title("Heavy ball: sharpness over its threshold (2+2β)/η")
    for runs in adam:
        _band(axes[2], runs, _sharp_steps, _ratio, grid, label=_label(runs), color="C3")
        _band(axes[3], runs, _sharp_steps, lambda r: r["raw_sharpness"], grid,
              label=_label(runs), color="C7")
    axes[2].set_ylabel("λ₁(P⁻¹H) / threshold")
    axes[2].set_title("Adam: preconditioned sharpness over (2+2β₁)/(η(1−β₁))")
    axes[3].set_ylabel("λ_max(H)")
    axes[3].set_title("Adam: raw sharpness (no threshold)")
    axes[3].set_xlabel("step")
    for ax in axes[:3]:
        _threshold_lines(ax)
    for ax in axes:
        ax.legend(**_LEGEND)
    fig.tight_layout()
    out.save_figure(fig, "sharpness")
    seeds = len(records_by_seed)
    return Figure("sharpness", f"Sharpness over each optimizer's threshold (dashed: 1; dotted: the "
                               f"band [{BAND[0]}, {BAND[1]}] of the criterion), mean of {seeds} "
                               "seeds with min–max band; bottom: Adam's raw λ_max(H).")


def _loss(records_by_seed, config: Preset, out) -> Figure:
    grid = _grid(config)
    fig, ax = plt.subplots(figsize=(12, 5))
    for i, runs in enumerate(_by_name(records_by_seed).values()):
        _band(ax, runs, _loss_steps, lambda r: [v if v > 0 else math.nan for v in r["loss"]],
              grid, label=_label(runs), color=f"C{i}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss ½Σ_k (f_k − y_k)² (mean over samples)")
    ax.legend(**_LEGEND)
    fig.tight_layout()
    out.save_figure(fig, "loss")
    return Figure("loss", "Full-batch training loss of every run (log scale), mean over seeds "
                          "with min–max band; runs end early where they diverged.")


def _flow(records_by_seed, config: Preset, out) -> Figure | None:
    runs = [r for records in records_by_seed.values() for r in records["runs"] if r["flow"]]
    runs = [r for r in runs if r.get("flow_distance") and r["flow_distance"]["steps"]]
    if not runs:
        return None
    grid = _grid(config)
    fig, ax = plt.subplots(figsize=(12, 5))
    # The distance is 0 at step 0 (same start): only positive values go on the log axis.
    _band(ax, runs, lambda r: r["flow_distance"]["steps"],
          lambda r: [d if d > 0 else math.nan for d in r["flow_distance"]["distance"]], grid,
          label=f"‖θ_GD − θ_flow‖, GD at 2/η = {runs[0]['factor']:g}·a₀", color="C0")
    crossings = []
    for run in runs:
        analysis = flow_analysis(run)
        if analysis["crossing_step"] is not None and math.isfinite(
                analysis["distance_at_crossing"]) and analysis["distance_at_crossing"] > 0:
            crossings.append((analysis["crossing_step"], analysis["distance_at_crossing"]))
    if crossings:
        xs, ys = zip(*crossings, strict=True)
        ax.scatter(xs, ys, color="k", marker="x", zorder=3,
                   label="first sharpness > 2/η (one per seed)")
    ax.set_yscale("log")
    ax.set_xlabel("step k (flow time t = kη)")
    ax.set_ylabel("‖θ_GD − θ_flow(kη)‖")
    ax.legend(**_LEGEND)
    fig.tight_layout()
    out.save_figure(fig, "flow_distance")
    return Figure("flow_distance", "Distance between GD and gradient flow at equal time t = kη "
                                   "(log scale; step 0, where it is 0, left out), mean over "
                                   "seeds with min–max band; crosses: each seed's first "
                                   "crossing of 2/η.")


def figures(records_by_seed: Mapping[int, Any], config: Preset, out) -> list[Figure]:
    """Save the sharpness, loss and flow-distance figures into ``out``."""
    made = [_sharpness(records_by_seed, config, out), _loss(records_by_seed, config, out),
            _flow(records_by_seed, config, out)]
    return [f for f in made if f is not None]
