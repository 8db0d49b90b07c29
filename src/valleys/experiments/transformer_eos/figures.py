"""Figures of the transformer edge-of-stability reproduction: sharpness over threshold, loss.

GD's learning rates are set per seed from the initial sharpness, so thresholds differ between
seeds; the sharpness is shown as ``λ / threshold`` (1 = the threshold) on a log axis. Each run
(optimizer and step size) gets its own panel with one line per seed: a min–max band over seeds
would hide how far a single trajectory swings between evaluations.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from valleys.experiments.plotting import LEGEND_OUTSIDE, seed_band
from valleys.experiments.protocol import Figure
from valleys.experiments.transformer_eos.measure import BAND, Preset

__all__ = ["figures"]


def _by_name(records_by_seed: Mapping[int, Any]) -> dict[str, list[tuple[int, dict]]]:
    """Run name -> [(seed, run)], in the plan's order."""
    out: dict[str, list[tuple[int, dict]]] = {}
    for seed, records in records_by_seed.items():
        for run in records["runs"]:
            out.setdefault(run["name"], []).append((int(seed), run))
    return out


def _positive(values: Sequence[float]) -> np.ndarray:
    """Values for a log axis: non-positive or non-finite ones become NaN (not drawn)."""
    array = np.asarray([math.nan if v is None else v for v in values], dtype=float)
    return np.where(np.isfinite(array) & (array > 0), array, np.nan)


def _label(run: Mapping[str, Any], lrs: Sequence[float]) -> str:
    eta = f"η = {min(lrs):.3g}" if min(lrs) == max(lrs) else f"η = {min(lrs):.3g}–{max(lrs):.3g}"
    if run["optimizer"] == "gd":
        return f"GD, 2/η = {run['factor']:g}·a₀, {eta}"
    return f"Adam, β₁ = {run['beta1']:g}, {eta}"


def _sharpness(records_by_seed: Mapping[int, Any], config: Preset, out) -> Figure:
    names = _by_name(records_by_seed)
    fig, axes = plt.subplots(len(names), 1, figsize=(12, 2.6 * len(names)), sharex=True,
                             squeeze=False)
    for ax, runs in zip(axes[:, 0], names.values(), strict=True):
        first = runs[0][1]
        for i, (seed, run) in enumerate(runs):
            ratio = _positive([v / run["threshold"] for v in run["sharpness"]])
            ax.plot(run["sharpness_steps"], ratio, color=f"C{i}", lw=0.9, marker=".", ms=2,
                    label=f"seed {seed}")
        ax.axhline(1.0, color="k", ls="--", lw=1, label="threshold")
        for edge in BAND:
            ax.axhline(edge, color="0.5", ls=":", lw=1)
        ax.set_yscale("log")
        adam = first["optimizer"] == "adam"
        ax.set_ylabel("λ₁(P⁻¹H)·η(1−β₁)/(2+2β₁)" if adam else "λ_max(H)·η/2")
        ax.set_title(_label(first, [run["lr"] for _, run in runs]), fontsize=10)
        ax.legend(**LEGEND_OUTSIDE)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    out.save_figure(fig, "sharpness")
    return Figure("sharpness", "Sharpness over its threshold for every run, one line per seed "
                               "(log scale; dashed: the threshold, dotted: the band "
                               f"[{BAND[0]}, {BAND[1]}] of the criterion). GD: λ_max(H)·η/2; "
                               "Adam: the preconditioned λ₁(P⁻¹H) over (2+2β₁)/(η(1−β₁)).")


def _loss(records_by_seed: Mapping[int, Any], config: Preset, out) -> Figure:
    grid = np.arange(0, config.steps + 1, dtype=float)
    fig, ax = plt.subplots(figsize=(12, 5))
    for i, (_, runs) in enumerate(_by_name(records_by_seed).items()):
        rows = np.full((len(runs), grid.size), np.nan)
        for row, (_, run) in enumerate(runs):
            steps = np.asarray(run["loss_steps"], dtype=int)
            rows[row, steps] = _positive(run["loss"])
        keep = ~np.all(np.isnan(rows), axis=0)
        seed_band(ax, grid[keep], rows[:, keep], color=f"C{i}",
                  label=_label(runs[0][1], [run["lr"] for _, run in runs]))
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (mean answer-token cross-entropy, nats)")
    ax.legend(**LEGEND_OUTSIDE)
    fig.tight_layout()
    out.save_figure(fig, "loss")
    return Figure("loss", "Full-batch training loss of every run (log scale), mean over seeds "
                          "with min–max band; a run that diverged ends early.")


def _raw(records_by_seed: Mapping[int, Any], config: Preset, out) -> Figure | None:
    names = {k: v for k, v in _by_name(records_by_seed).items() if v[0][1]["optimizer"] == "adam"}
    if not names:
        return None
    fig, ax = plt.subplots(figsize=(12, 4))
    for i, (_, runs) in enumerate(names.items()):
        for j, (seed, run) in enumerate(runs):
            ax.plot(run["sharpness_steps"], _positive(run["raw_sharpness"]), color=f"C{i}",
                    lw=0.8, ls=("-", "--", ":", "-.")[j % 4],
                    label=f"{_label(run, [run['lr']])}, seed {seed}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("λ_max(H) (unpreconditioned)")
    ax.legend(**LEGEND_OUTSIDE)
    fig.tight_layout()
    out.save_figure(fig, "adam_raw_sharpness")
    return Figure("adam_raw_sharpness", "Adam's raw sharpness λ_max(H), which has no threshold "
                                        "of its own, per run and seed (log scale).")


def figures(records_by_seed: Mapping[int, Any], config: Preset, out) -> list[Figure]:
    """Save the sharpness, loss and Adam raw-sharpness figures into ``out``."""
    made = [_sharpness(records_by_seed, config, out), _loss(records_by_seed, config, out),
            _raw(records_by_seed, config, out)]
    return [f for f in made if f is not None]
