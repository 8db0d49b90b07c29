"""Figures of the mean-field two-layer reproduction: seeds as bands or points, one quantity per
axis, legends outside the data, no log of zero."""

from __future__ import annotations

import math
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import ticker

from valleys.experiments.meanfield_two_layer.measure import (
    INTEGRATORS,
    LEVELS,
    SMOOTH_RADIUS,
    Preset,
    curve_gap,
    trace_steps,
    width_fit,
)
from valleys.experiments.plotting import LEGEND_OUTSIDE, seed_band
from valleys.experiments.protocol import Figure

__all__ = ["figures"]


def _colors(n: int) -> list:
    cmap = plt.get_cmap("viridis")
    return [cmap(i / max(n - 1, 1)) for i in range(n)]


def _positive(values) -> np.ndarray:
    """``values`` as floats with non-positive and missing entries as NaN (log axes)."""
    out = np.array([math.nan if v is None else float(v) for v in values])
    out[~(out > 0)] = math.nan
    return out


def _width_ticks(ax, widths) -> None:
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.set_xticks(list(widths))
    ax.set_xticklabels([str(int(w)) for w in widths])


def _step_ticks(ax, steps) -> None:
    """Ticks at the steps, labelled as fractions of the largest (1, 1/2, 1/4, …)."""
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.set_xticks(list(steps))
    ax.set_xticklabels([f"{s:g}" if s >= 1 else f"1/{round(1 / s)}" for s in steps])


def _label_minor_ticks(ax) -> None:
    """Label minor ticks of a log y axis that spans less than two decades (else none show)."""
    low, high = ax.get_ylim()
    if high / low < 100:
        ax.yaxis.set_minor_formatter(ticker.FuncFormatter(
            lambda y, _: f"{y:.2g}" if round(y / 10 ** math.floor(math.log10(y))) in (2, 3, 5)
            else ""))


def _loss_curves(records: dict[int, Any], config: Preset, out) -> Figure:
    seeds = list(records)
    h = config.lr
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    colors = _colors(len(config.widths))
    early = np.arange(round(config.curve_time / h) + 1) * h
    grid = sorted(trace_steps(round(config.max_time / h), config.trace_points) - {0})
    for i, m in enumerate(config.widths):
        runs = [next(r for r in records[s]["runs"] if r["width"] == m) for s in seeds]
        curves = [list(r["curve"]) + [math.nan] * (len(early) - len(r["curve"])) for r in runs]
        seed_band(ax, early, curves, label=f"m = {m}", color=colors[i])
        last = max(r["steps"] for r in runs)
        steps = [k for k in grid if k <= last]
        traces = []
        for r in runs:
            at = dict(zip((round(t / h) for t in r["trace_time"]), r["trace_risk"], strict=True))
            traces.append([at.get(k, math.nan) for k in steps])
        seed_band(ax2, np.array(steps) * h, _positive(np.ravel(traces)).reshape(len(runs), -1),
                  label=f"m = {m}", color=colors[i])
        ax2.scatter([r["stop_time"] for r in runs if r["stationary"]],
                    [r["final_risk"] for r in runs if r["stationary"]], color=colors[i],
                    marker="o", s=14, zorder=3)
    ref = [records[s]["reference"]["curve"] for s in seeds]
    seed_band(ax, early[:len(ref[0])], ref, label=f"m = {config.reference_width} (reference)",
              color="k")
    ax.lines[-1].set_linestyle("--")
    ax.set(yscale="log", xlabel="flow time t", ylabel="population risk R",
           title="(a) loss curves, t ≤ curve_time")
    ax2.set(xscale="log", yscale="log", xlabel="flow time t", ylabel="population risk R",
            title="(b) to stationarity (dots: stop at G/R ≤ "
                  f"{config.stationary_rate:g})")
    ax.legend(**LEGEND_OUTSIDE)
    ax2.legend(**LEGEND_OUTSIDE)
    fig.tight_layout()
    out.save_figure(fig, "loss_curves")
    return Figure("loss_curves", "Population risk against flow time for each width (mean over "
                  "seeds, band min–max; the initialization trained to stationarity): left, the "
                  "early curves against the wider reference net "
                  "(claim a); right, the runs to stationarity, each stop marked by a dot.")


def _width_scaling(records: dict[int, Any], config: Preset, out) -> Figure:
    seeds = list(records)
    widths = np.array(config.widths, float)
    fit = width_fit(records)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax, ax_gap, ax_norm = axes
    for k, s in enumerate(seeds):
        runs = records[s]["runs"]
        done = [r for r in runs if r["stationary"]]
        late = [r for r in runs if not r["stationary"] and r["final_risk"] is not None]
        ax.scatter([r["width"] for r in done], [r["final_risk"] for r in done], color=f"C{k}",
                   s=18, label=f"seed {s}", zorder=3)
        if late:
            ax.scatter([r["width"] for r in late], _positive([r["final_risk"] for r in late]),
                       facecolors="none", edgecolors=f"C{k}", s=30, zorder=3,
                       label=f"seed {s}: not stationary (excluded)")
        gap = curve_gap(records[s])
        ax_gap.scatter(gap["widths"], _positive(gap["gaps"]), color=f"C{k}", s=18,
                       label=f"seed {s}")
        ax_norm.scatter([r["width"] for r in done], [r["path_norm"] for r in done],
                        color=f"C{k}", s=18, label=f"seed {s}")
    if fit["pooled_slope"] is not None:
        xs, ys = [], []
        for s in seeds:
            for r in records[s]["runs"]:
                if r["stationary"]:
                    xs.append(r["width"])
                    ys.append(r["final_risk"])
        intercept = float(np.mean(np.log(ys)) - fit["pooled_slope"] * np.mean(np.log(xs)))
        ax.plot(widths, np.exp(intercept) * widths ** fit["pooled_slope"], "k-",
                label=f"pooled fit, slope {fit['pooled_slope']:.2f}")
        ax.plot(widths, np.exp(intercept) * widths[0] ** fit["pooled_slope"] * widths[0] / widths,
                "k:", label="∝ 1/m (predicted)")
    ax.set(xscale="log", yscale="log", xlabel="width m", ylabel="population risk at stationarity",
           title="(b) final risk vs width")
    ax_gap.set(xscale="log", yscale="log", xlabel="width m",
               ylabel="mean over replicas of sup_t |L_m(t) − L_ref(t)|",
               title="(a) distance to the reference curve")
    ax_norm.set(xscale="log", xlabel="width m", ylabel="path norm (1/m) Σ |a_j| ‖w_j‖₁",
                title="(e) path norm at stationarity")
    for a in axes:
        _width_ticks(a, widths)
        a.legend(**LEGEND_OUTSIDE)
    ax.autoscale_view()
    ax_gap.autoscale_view()
    _label_minor_ticks(ax)
    _label_minor_ticks(ax_gap)
    fig.tight_layout()
    out.save_figure(fig, "width_scaling")
    return Figure("width_scaling", "Against the width m, one point per seed: the population risk "
                  "at stationarity with the pooled log–log fit and a 1/m guide (b; open circles: "
                  "runs that did not reach stationarity, left out of the fit), the largest "
                  f"distance of the early loss curve to the reference curve, averaged over "
                  f"{config.curve_replicas} initializations (a), and the path norm (e).")


def _balancedness(records: dict[int, Any], config: Preset, out) -> Figure:
    seeds = list(records)
    steps = np.array(records[seeds[0]]["balance"]["steps"], float)
    order = INTEGRATORS[config.integrator]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    smooth = [_positive(records[s]["balance"]["smooth_drifts"]) for s in seeds]
    every = [_positive(records[s]["balance"]["drifts"]) for s in seeds]
    for k, s in enumerate(seeds):
        ax.scatter(steps, smooth[k], color=f"C{k}", s=18, label=f"seed {s}", zorder=3)
        ax2.scatter(steps, every[k], color=f"C{k}", s=18, label=f"seed {s}", zorder=3)
    for a, data, p, name in ((ax, smooth, order, f"∝ h^{order} ({config.integrator})"),
                             (ax2, every, 1, "∝ h (first order)")):
        with np.errstate(all="ignore"):
            top = np.nanmean(np.stack(data), axis=0)[0]
        if np.isfinite(top):
            a.plot(steps, top * (steps / steps[0]) ** p, "k:", label=name)
        a.set(xscale="log", yscale="log", xlabel="flow-time step h")
        _step_ticks(a, steps)
        a.legend(**LEGEND_OUTSIDE)
    ax.set(ylabel="max_j |ΔB_j| / max_j |B_j(0)|",
           title=f"(c) smooth particles (‖w_j‖ ≥ {SMOOTH_RADIUS} throughout)")
    ax2.set(ylabel="max_j |ΔB_j| / max_j |B_j(0)|",
            title="(c) all particles (dying neurons reach w = 0)")
    fig.tight_layout()
    out.save_figure(fig, "balancedness")
    return Figure("balancedness", f"Relative drift of the balancedness a_j² − ‖w_j‖² over flow "
                  f"time {config.balance_time:g} (width {config.balance_width}) against the step "
                  f"of the {config.integrator} integrator, one point per seed, with guides of the "
                  "integrator's order (smooth particles) and of first order (all particles, "
                  "including neurons parked at the ReLU kink w = 0).")


def _mmn(records: dict[int, Any], config: Preset, out) -> Figure:
    seeds = list(records)
    first = records[seeds[0]]["mmn"]
    t = np.array(first["times"])
    qp = np.array(first["pde_quantiles"])
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for j, level in enumerate(LEVELS):
        ax.plot(t, qp[:, j], "-", color=f"C{j}", label=f"PDE, {level:.0%} quantile")
        for s in seeds:
            q = records[s]["mmn"].get("particle_quantiles")
            if q is not None:
                ax.plot(t, np.array(q)[:, j], "o", color=f"C{j}", ms=3)
    ax.plot([], [], "ko", ms=3, label=f"particles ({len(seeds)} seeds)")
    ax.set(xlabel="flow time t", ylabel="‖w‖ quantile", title="(d) radius quantiles")
    ax.legend(**LEGEND_OUTSIDE)
    ax2.plot(t, first["pde_risk"], "k-", label="PDE risk")
    for k, s in enumerate(seeds):
        risk = records[s]["mmn"].get("particle_risk")
        if risk is not None:
            ax2.plot(t[:len(risk)], risk, "o", color=f"C{k}", ms=4,
                     label=f"particles, seed {s} (Monte Carlo)")
    ax2.set(xlabel="flow time t", ylabel="risk E(y − ŷ)²", title="(d) risk")
    ax2.legend(**LEGEND_OUTSIDE)
    fig.tight_layout()
    out.save_figure(fig, "mmn_pde")
    return Figure("mmn_pde", f"Mei–Montanari–Nguyen's isotropic Gaussians: radius quantiles and "
                  f"risk of the radial PDE (lines) and of {config.mmn_particles} SGD particles "
                  "(points, every seed). The particles' Monte-Carlo risk includes the O(1/N) "
                  "self-interaction term that the PDE does not have.")


def figures(records_by_seed: dict[int, Any], config: Preset, out) -> list[Figure]:
    """The four figures of the reproduction."""
    return [_loss_curves(records_by_seed, config, out),
            _width_scaling(records_by_seed, config, out),
            _balancedness(records_by_seed, config, out),
            _mmn(records_by_seed, config, out)]
