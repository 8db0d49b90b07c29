"""Figures of the sgd-vs-adam reproduction: training to the targets, noise tails, exit times,
minima. Seeds are drawn as individual points or lines (bands where the x values are shared);
legends sit outside the panels."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import ticker

from valleys.experiments.plotting import LEGEND_OUTSIDE, seed_band
from valleys.experiments.protocol import Figure
from valleys.experiments.sgd_vs_adam.measure import (
    ESCAPE_ALPHAS,
    HEAVY_TAIL_ALPHA,
    OPTIMIZERS,
    WIDTH_ALPHA,
    Preset,
)

__all__ = ["figures"]

COLORS = {"sgd": "tab:blue", "adam": "tab:red", "adam-no-averaging": "tab:orange"}
NAMES = {"sgd": "SGD", "adam": "Adam", "adam-no-averaging": "Adam-like, no averaging"}


def _outside_legend(ax) -> None:
    ax.legend(**LEGEND_OUTSIDE)


def _training(records_by_seed: Mapping[int, Any], config: Preset, out) -> Figure:
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for opt in OPTIMIZERS:
        for index, recs in enumerate(records_by_seed.values()):
            run = next(r for r in recs["runs"] if r["optimizer"] == opt)
            steps = np.asarray(run["curve"]["step"], dtype=float)
            loss = np.asarray(run["curve"]["loss"], dtype=float)
            ok = np.isfinite(loss) & (loss > 0)
            ax.plot(steps[ok], loss[ok], color=COLORS[opt], lw=1, alpha=0.8,
                    label=f"{NAMES[opt]} (one line per seed)" if index == 0 else None)
    for target in config.loss_targets:
        ax.axhline(target, color="k", ls=":", lw=0.8)
    ax.set(yscale="log", xlabel="step", ylabel="training loss (cross-entropy, nats)",
           title="runs stop at the same loss targets (dotted)")
    _outside_legend(ax)
    out.save_figure(fig, "training_loss")
    return Figure("training_loss", "Full-data training loss of each run until it reaches the "
                  "last loss target (dotted lines: the targets); one line per seed.")


def _plain_log_ticks(ax, which: str, values=None) -> None:
    """Log-axis ticks labelled as plain numbers: at ``values`` if given, else at 1, 2 and 5
    per decade (no crowded minor labels)."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    plain = ticker.FuncFormatter(lambda v, _: f"{v:g}")
    if values is not None:
        axis.set_major_locator(ticker.FixedLocator(list(values)))
    else:
        axis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(plain)
    axis.set_minor_formatter(ticker.NullFormatter())


def _point_labels(config: Preset) -> list[tuple[str, float]]:
    return [(opt, t) for t in config.loss_targets for opt in OPTIMIZERS]


def _tails(records_by_seed: Mapping[int, Any], config: Preset, out) -> Figure:
    cells = _point_labels(config)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(cells) + 2), 4.0))
    seeds = list(records_by_seed)
    offsets = np.linspace(-0.12, 0.12, max(len(seeds), 1))
    for noise, shift in (("sgd", -0.18), ("adam", 0.18)):
        key = f"alpha_{noise}_noise"
        first = True
        for k, recs in enumerate(records_by_seed.values()):
            for x, (opt, target) in enumerate(cells):
                p = next((q for q in recs["points"] if q["optimizer"] == opt
                          and q["target"] == target), None)
                if p is None:
                    continue
                a = p[key]
                ax.errorbar(x + shift + offsets[k] * 0.5, a["alpha"],
                            yerr=[[a["alpha"] - a["low"]], [a["high"] - a["alpha"]]],
                            fmt="o", ms=4, color=COLORS[noise], capsize=2,
                            label=(f"{NAMES[noise]}'s noise at that θ (one point per seed, "
                                   "95% interval)") if first else None)
                first = False
    ax.axhline(HEAVY_TAIL_ALPHA, color="k", ls=":", lw=0.8)
    ax.set_xticks(range(len(cells)),
                  [f"{NAMES[o]}'s minimum\nloss ≤ {t:g}" for o, t in cells], fontsize=8)
    ax.set(xlabel="parameter point θ where both noises are measured",
           ylabel="tail index α̂ (per-coordinate)", title="α = 2 (dotted): Gaussian")
    _outside_legend(ax)
    out.save_figure(fig, "tail_index")
    return Figure("tail_index", "Tail index α̂ of SGD's noise g_b − g and of Adam's effective "
                  "noise P⁻¹·EMA(g_b − g), both measured at the same θ (each optimizer's minimum "
                  "at each loss target), standardized per coordinate; bars: 95% bootstrap "
                  "intervals, one point per seed.")


def _exit_times(records_by_seed: Mapping[int, Any], config: Preset, out) -> Figure:
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4), layout="constrained")
    recs = list(records_by_seed.values())
    eps = np.asarray(config.sde_epsilons, dtype=float)
    colors = plt.cm.viridis(np.linspace(0.0, 0.85, len(config.sde_alphas)))
    for alpha, color in zip(config.sde_alphas, colors, strict=True):
        ys = [[next(r["mean_exit_time"] for r in rec["sde"]["epsilon"]
                    if r["alpha"] == alpha and r["epsilon"] == e) for e in eps] for rec in recs]
        ys = np.where(np.isfinite(ys), ys, np.nan)
        seed_band(axes[0], eps, ys, label=f"α = {alpha:g}", color=color, marker="o")
        theory = [next(r["theory"] for r in recs[0]["sde"]["epsilon"]
                       if r["alpha"] == alpha and r["epsilon"] == e) for e in eps]
        axes[0].plot(eps, theory, "--", color=color, lw=0.8)
    axes[0].set(xscale="log", yscale="log", xlabel="noise scale ε",
                ylabel="mean exit time (time units)",
                title="against ε (dashed: 1/(ε^α m(W)))")
    _plain_log_ticks(axes[0], "x", eps)
    _plain_log_ticks(axes[0], "y")
    _outside_legend(axes[0])

    widths = np.asarray(config.sde_widths, dtype=float)
    ys = [[next(r["mean_exit_time"] for r in rec["sde"]["width"] if r["width"] == w)
           for w in widths] for rec in recs]
    seed_band(axes[1], widths, np.where(np.isfinite(ys), ys, np.nan), label="simulated",
              marker="o")
    axes[1].plot(widths, [next(r["theory"] for r in recs[0]["sde"]["width"] if r["width"] == w)
                          for w in widths], "--", color="k", lw=0.8, label="1/(ε^α m(W))")
    axes[1].set(xscale="log", yscale="log", xlabel="basin half-width a",
                ylabel="mean exit time (time units)", title="against the basin width")
    _plain_log_ticks(axes[1], "x", widths)
    _plain_log_ticks(axes[1], "y")
    _outside_legend(axes[1])

    ax = axes[2]
    dynamics = list(config.sde_dynamics)
    shifts = np.linspace(-0.08, 0.08, len(dynamics))
    for dyn, shift in zip(dynamics, shifts, strict=True):
        for k, rec in enumerate(recs):
            rows = [r for r in rec["sde"]["optimizers"] if r["dynamics"] == dyn
                    and np.isfinite(r["mean_exit_time"])]
            x = [ESCAPE_ALPHAS.index(r["alpha"]) + shift for r in rows]
            ax.errorbar(x, [r["mean_exit_time"] for r in rows],
                        yerr=[r["stderr"] for r in rows], fmt="o", ms=4, capsize=2,
                        color=COLORS[dyn], label=f"{NAMES[dyn]}-like" if k == 0 else None)
    ax.set_xticks(range(len(ESCAPE_ALPHAS)), [f"α = {a:g}" for a in ESCAPE_ALPHAS])
    ax.set_xlim(-0.5, len(ESCAPE_ALPHAS) - 0.5)
    ax.set(yscale="log", xlabel="tail index of the driving noise",
           ylabel="mean exit time (time units)", title="SGD-like vs Adam-like, 2-D valley")
    _plain_log_ticks(ax, "y")
    _outside_legend(ax)
    out.save_figure(fig, "exit_times")
    return Figure("exit_times", "Mean exit time from the left basin of the double well: against "
                  f"the noise scale ε per tail index α, against the basin half-width (α = "
                  f"{WIDTH_ALPHA:g}), and SGD-like vs Adam-like dynamics (error bars: standard "
                  "errors); lines: mean over seeds, bands: min–max over seeds.")


def _minima(records_by_seed: Mapping[int, Any], config: Preset, out) -> Figure:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.0), layout="constrained")
    targets = list(config.loss_targets)
    for ax, key, label in ((axes[0], "sharpness", "sharpness λ_max(∇²L)"),
                           (axes[1], "test_accuracy", "test accuracy (fraction)")):
        for opt, shift in zip(OPTIMIZERS, (-0.1, 0.1), strict=True):
            xs, ys = [], []
            for recs in records_by_seed.values():
                for p in recs["points"]:
                    if p["optimizer"] == opt and np.isfinite(p[key]):
                        xs.append(targets.index(p["target"]) + shift)
                        ys.append(p[key])
            ax.plot(xs, ys, "o", ms=5, color=COLORS[opt], alpha=0.8,
                    label=f"{NAMES[opt]}'s minimum (one point per seed)")
        ax.set_xticks(range(len(targets)), [f"≤ {t:g}" for t in targets])
        ax.set_xlim(-0.5, len(targets) - 0.5)
        ax.set(xlabel="training-loss target", ylabel=label)
    axes[0].set_yscale("log")
    _plain_log_ticks(axes[0], "y")
    _outside_legend(axes[1])
    out.save_figure(fig, "minima")
    return Figure("minima", "At each training-loss target: sharpness (left, log scale) and test "
                  "accuracy (right) of the minimum each optimizer reached; one point per seed.")


def figures(records_by_seed: Mapping[int, Any], config: Preset, out) -> list[Figure]:
    """The four figures of the reproduction, saved into ``out``."""
    return [_training(records_by_seed, config, out), _tails(records_by_seed, config, out),
            _exit_times(records_by_seed, config, out), _minima(records_by_seed, config, out)]
