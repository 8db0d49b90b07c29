"""Figures of the linear-stability reproduction: GD's sharpness, SGD's (a, s), the escape.

Seeds are drawn as separate points (markers), never averaged away; errors of the SGD points are
error bars on linear axes; legends sit outside the panels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D

from valleys.experiments.linear_stability.measure import (
    GD_EDGE_BAND,
    GD_EDGE_SLACK,
    SPIKE_FACTOR,
    Preset,
)
from valleys.experiments.output import OutputFolder
from valleys.experiments.plotting import LEGEND_OUTSIDE
from valleys.experiments.protocol import Figure

__all__ = ["figures"]

MARKERS = ("o", "s", "^", "D", "v", "P", "X")

def _colors(values) -> dict[Any, Any]:
    values = sorted(values)
    cmap = plt.get_cmap("viridis")
    return {v: cmap(0.1 + 0.75 * i / max(len(values) - 1, 1)) for i, v in enumerate(values)}


def _marker(index: int) -> str:
    return MARKERS[index % len(MARKERS)]


def _legend(ax, axes, seeds) -> None:
    """One legend outside ``ax``: unique labels of ``axes``, then one marker shape per seed."""
    handles, labels = [], []
    for other in axes:
        for handle, label in zip(*other.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    for i, seed in enumerate(seeds):
        handles.append(Line2D([], [], marker=_marker(i), color="0.4", ls="none"))
        labels.append(f"seed {seed}")
    ax.legend(handles, labels, **LEGEND_OUTSIDE)


def _gd_figure(records_by_seed: Mapping[int, Any], out: OutputFolder) -> Figure:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    lrs = [r["lr"] for rec in records_by_seed.values() for r in rec["gd"]]
    grid = np.geomspace(min(lrs) / 1.3, max(lrs) * 1.3, 100)
    left.plot(grid, 2 / grid, "k--", lw=1, label="2/η (GD stability edge)")
    for i, (seed, rec) in enumerate(records_by_seed.items()):
        done = [r for r in rec["gd"] if r["status"] == "converged"]
        diverged = [r for r in rec["gd"] if r["status"] == "diverged"]
        color = f"C{i}"
        left.plot([r["lr"] for r in done], [r["sharpness"] for r in done], _marker(i),
                  color=color, ls="none", label=f"seed {seed}: final sharpness")
        right.plot([r["lr"] for r in done], [r["sharpness"] * r["lr"] / 2 for r in done],
                   _marker(i), color=color, ls="none", label=f"seed {seed}")
        if diverged:
            right.plot([r["lr"] for r in diverged], [0.0] * len(diverged), "x", color=color,
                       ms=8, ls="none", label=f"seed {seed}: diverged (drawn at 0)")
        right.axvline(2 / rec["initial_sharpness"], color=color, lw=0.6, ls=":",
                      label=f"seed {seed}: η = 2/a₀")
    left.set(xscale="log", yscale="log", xlabel="learning rate η",
             ylabel="final sharpness a = λ_max(H)", title="(a) GD: final sharpness")
    right.plot(grid, np.full_like(grid, 1 + GD_EDGE_SLACK), color="k", lw=0.8, ls="--",
               label=f"criterion: a·η/2 ≤ {1 + GD_EDGE_SLACK:g}")
    right.plot(grid, np.full_like(grid, GD_EDGE_BAND), color="0.5", lw=0.8, ls="--",
               label=f"criterion (η ≥ 2/a₀): a·η/2 ≥ {GD_EDGE_BAND:g}")
    right.set(xscale="log", xlabel="learning rate η", ylabel="a·η/2 (sharpness over 2/η)",
              title="(a) GD: sharpness relative to 2/η", ylim=(-0.08, 1.2))
    left.legend(**LEGEND_OUTSIDE)
    right.legend(**LEGEND_OUTSIDE)
    fig.tight_layout()
    out.save_figure(fig, "gd_sharpness")
    return Figure("gd_sharpness", "(a) GD's final sharpness against the learning rate (left, "
                  "with 2/η) and as a fraction a·η/2 of 2/η (right, with the criterion's "
                  "thresholds); one marker per seed, diverged runs drawn at 0.")


def _sgd_figure(records_by_seed: Mapping[int, Any], config: Preset, n: int,
                out: OutputFolder) -> Figure:
    """(b) in coordinates relative to each point's own bounds, x = a·η/2 and y = s/s-bound:
    the 1-D region (1 − ηa)² + η²c s² ≤ 1 is then y ≤ sqrt(1 − (1 − 2x)²) for every (η, B),
    so seeds (whose η differ through a₀) and batch sizes share one picture."""
    factors = sorted(config.sgd_factors)
    colors = _colors(config.batch_sizes)
    fig, axes = plt.subplots(1, len(factors), figsize=(4.2 * len(factors) + 1.6, 4),
                             squeeze=False, sharey=True)
    x = np.linspace(0.0, 1.0, 201)
    for ax, factor in zip(axes[0], factors, strict=True):
        ax.plot(x, np.sqrt(np.clip(1 - (1 - 2 * x) ** 2, 0, None)), "k--", lw=1,
                label="1-D stable region boundary")
        ax.plot(x, np.ones_like(x), color="0.4", lw=0.8, label="s-bound (y = 1)")
        ax.plot([1.0, 1.0], [0.0, 1.25], color="0.4", lw=0.8, ls=":", label="a = 2/η (x = 1)")
        for i, rec in enumerate(records_by_seed.values()):
            for r in rec["sgd"]:
                if r["factor"] != factor or r["status"] != "converged":
                    continue
                scale_a, scale_s = r["lr"] / 2, 1 / r["max_nonuniformity"]
                ax.errorbar(r["sharpness"] * scale_a, r["nonuniformity"] * scale_s,
                            xerr=r["sharpness_error"] * scale_a,
                            yerr=r["nonuniformity_error"] * scale_s, fmt=_marker(i),
                            color=colors[r["batch_size"]], ms=6, capsize=2,
                            label=f"SGD B={r['batch_size']} (± tail std)")
        ax.set(xlabel="a·η/2 (sharpness over 2/η)", title=f"(b) η = {factor:g}·2/a₀",
               xlim=(0, 1.15), ylim=(0, 1.3))
    axes[0][0].set_ylabel("s / s-bound (non-uniformity over its bound)")
    _legend(axes[0][-1], axes[0], list(records_by_seed))
    fig.tight_layout()
    out.save_figure(fig, "sgd_scatter")
    return Figure("sgd_scatter", "(b) The SGD solutions relative to their own bounds: a·η/2 "
                  "against s/s-bound (error bars: standard deviation over the tail iterates; "
                  "colour: batch size, marker: seed); the dashed half-ellipse is the 1-D "
                  "stable region and the lines x = 1, y = 1 the necessary bounds, the same for "
                  "every (η, B) in these coordinates.")


LINESTYLES = ("-", "--", ":", "-.")


def _escape_figure(records_by_seed: Mapping[int, Any], config: Preset, n: int,
                   out: OutputFolder) -> Figure:
    colors = _colors(config.escape_batch_sizes)
    fig, (early, whole, plane) = plt.subplots(1, 3, figsize=(15, 4))
    lr = None
    for i, rec in enumerate(records_by_seed.values()):
        escape = rec["escape"]
        lr = escape["lr"] if lr is None else lr
        base = escape["gd"]["final_loss"]
        style = LINESTYLES[i % len(LINESTYLES)]
        control = escape.get("control")
        if control:
            pts = np.asarray(control["trajectory"], dtype=float)
            for ax in (early, whole):
                ax.plot(pts[:, 0], pts[:, 1] / base, color="k", lw=1, ls=style,
                        label="GD continued (control)")
        for run in escape["runs"]:
            B = run["batch_size"]
            pts = np.asarray(run["trajectory"], dtype=float)
            keep = np.isfinite(pts[:, 1]) & (pts[:, 1] > 0)
            burn = keep & (pts[:, 0] <= config.burn_in)
            early.plot(pts[burn, 0], pts[burn, 1] / base, color=colors[B], lw=0.8, ls=style,
                       label=f"SGD B={B}")
            whole.plot(pts[keep, 0], pts[keep, 1] / base, color=colors[B], lw=0.8, ls=style,
                       label=f"SGD B={B}")
            start = run["start"]
            plane.plot(start["sharpness"], start["nonuniformity"], _marker(i), color="k",
                       mfc="none", ms=9, ls="none", label="GD minimum (start), open marker")
            landing = run.get("landing")
            if landing:
                plane.errorbar(landing["sharpness"], landing["nonuniformity"],
                               xerr=landing["sharpness_error"],
                               yerr=landing["nonuniformity_error"], fmt=_marker(i),
                               color=colors[B], ms=7, capsize=2, label=f"after SGD B={B}")
                plane.annotate("", (landing["sharpness"], landing["nonuniformity"]),
                               (start["sharpness"], start["nonuniformity"]),
                               arrowprops={"arrowstyle": "->", "color": colors[B], "lw": 0.6})
    for ax in (early, whole):
        ax.axhline(SPIKE_FACTOR, color="0.5", lw=0.8, ls="--",
                   label=f"spike criterion ({SPIKE_FACTOR:g}×)")
        ax.set(yscale="log", xlabel="steps after the switch",
               ylabel="training loss / loss at the GD minimum")
    early.set(title=f"(c) the first {config.burn_in} steps", xlim=(0, config.burn_in))
    whole.set(title="(c) on to the loss goal")
    for i, rec in enumerate(records_by_seed.values()):
        style = LINESTYLES[i % len(LINESTYLES)]
        for run in rec["escape"]["runs"]:
            B = run["batch_size"]
            plane.axhline(run["start"]["max_nonuniformity"], color=colors[B], lw=0.8, ls=style,
                          label=f"s-bound, B={B}")
        plane.axvline(2 / rec["escape"]["lr"], color="k", lw=0.8, ls=style, label="a = 2/η")
    if lr is not None:
        plane.set_xlim(0, 2.3 / lr)
    plane.set(xlabel="sharpness a", ylabel="non-uniformity s",
              title=f"(c) (a, s) before and after, η = {config.escape_factor:g}·2/a₀")
    plane.set_ylim(bottom=0)
    handles, labels = [], []
    for ax in (early, whole, plane):
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    for i, seed in enumerate(records_by_seed):
        handles.append(Line2D([], [], marker=_marker(i), color="0.4",
                              ls=LINESTYLES[i % len(LINESTYLES)]))
        labels.append(f"seed {seed}")
    plane.legend(handles, labels, **LEGEND_OUTSIDE)
    fig.tight_layout()
    out.save_figure(fig, "escape")
    return Figure("escape", "(c) Escape: the full-batch loss after switching from the GD "
                  "minimum to SGD at the same η, relative to the GD minimum's loss, over the "
                  "burn-in (left) and on to the loss goal (middle), per batch size (colour) and "
                  "seed (line style), with GD continued as the control (black); the sharpness "
                  "and non-uniformity before (open markers) and after (filled, ± tail std), "
                  "with each run's s-bound and 2/η in its seed's line style (right).")


def figures(records_by_seed: Mapping[int, Any], config: Preset,
            out: OutputFolder) -> list[Figure]:
    """The three figures: (a) GD sharpness, (b) SGD scatter, (c) escape."""
    n = next(iter(records_by_seed.values()))["n"]
    made = [_gd_figure(records_by_seed, out), _sgd_figure(records_by_seed, config, n, out)]
    if any(rec["escape"]["runs"] for rec in records_by_seed.values()):
        made.append(_escape_figure(records_by_seed, config, n, out))
    return made

