"""Figures of the multiscale reproduction: EoS training, growth profile, 2-cycles, origin.

Every seed is drawn (lines or points, one colour per seed); legends sit outside the axes.
"""

from __future__ import annotations

import math
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from valleys.experiments.multiscale.measure import (
    CYCLE_FACTORS,
    QUADRATIC_TOL,
    SUBQUADRATIC_BELOW,
    Preset,
    local_exponents,
    toy_increment,
)
from valleys.experiments.plotting import LEGEND_OUTSIDE
from valleys.experiments.protocol import Figure

__all__ = ["figures"]


def _colors(n: int) -> list:
    return [plt.cm.tab10(i % 10) for i in range(n)]


def _eos(records: dict[int, Any], out) -> Figure:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for color, (seed, rec) in zip(_colors(len(records)), records.items(), strict=True):
        a = rec["growth"]
        steps = [r["step"] for r in a["trajectory"]]
        ratio = [r["sharpness"] * a["lr"] / 2 for r in a["trajectory"]]
        loss = [r["loss"] for r in a["trajectory"]]
        ax1.plot(steps, ratio, "o-", ms=2, lw=0.8, color=color, label=f"seed {seed}")
        keep = [(s, v) for s, v in zip(steps, loss, strict=True) if 0 < v < math.inf]
        if keep:
            ax2.semilogy(*zip(*keep, strict=True), "o-", ms=2, lw=0.8, color=color)
    ax1.axhline(1.0, color="k", ls="--", lw=0.8, label="2/η")
    ax1.set(xlabel="GD step", ylabel="sharpness · η/2 (dimensionless)")
    ax2.set(xlabel="GD step", ylabel="training loss (½ squared error)")
    ax1.legend(**LEGEND_OUTSIDE)
    fig.tight_layout()
    out.save_figure(fig, "eos_training")
    return Figure("eos_training", "(A) Full-batch GD on the digits tanh MLP: sharpness in units "
                                  "of the threshold 2/η (left) and training loss (right), one "
                                  "line per seed.")


def _growth(records: dict[int, Any], out) -> Figure | None:
    recs = {s: r["growth"] for s, r in records.items() if "growth" in r["growth"]}
    if not recs:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for color, (seed, a) in zip(_colors(len(recs)), recs.items(), strict=True):
        ts = np.asarray(a["ts"])
        for side, style in (("plus", "-"), ("minus", "--")):
            inc = np.asarray(a[f"increments_{side}"])
            pos = inc > 0
            sign = "t > 0" if side == "plus" else "t < 0"
            ax1.loglog(ts[pos], inc[pos], style, lw=0.9, color=color,
                       label=f"seed {seed}, {sign}")
            scales, p = local_exponents(ts, inc)
            g = a["growth"][side]
            ok = np.isfinite(p)
            ax2.semilogx(scales[ok], p[ok], style, lw=0.9, color=color,
                         label=f"seed {seed}, {sign}")
            if math.isfinite(g["t_max"]):
                ax2.axvspan(g["t_min"], g["t_max"], color=color, alpha=0.06, lw=0)
        ax1.loglog(ts, 0.5 * a["floor_curvature"] * ts**2, ":", color=color, lw=0.8,
                   label=f"seed {seed}, ½λt²")
        if math.isfinite(a["toy_scale"]):
            ax1.loglog(ts, toy_increment(ts, a["floor_curvature"], a["toy_scale"]), "-.",
                       color=color, lw=0.6, label=f"seed {seed}, toy (s = {a['toy_scale']:.3g})")
        ax2.plot([a["amplitude"]] * 2, [-0.5, 3.0], color=color, lw=0.6, ls=":")
    span = [min(min(a["ts"]) for a in recs.values()), max(max(a["ts"]) for a in recs.values())]
    # horizontal lines drawn as data (axhline's axes-coordinate 0 trips the log-axis check)
    ax2.plot(span, [2.0, 2.0], color="k", lw=0.6)
    ax2.plot(span, [2.0 - QUADRATIC_TOL] * 2, color="k", lw=0.6, ls=":")
    ax2.plot(span, [SUBQUADRATIC_BELOW] * 2, color="tab:red", lw=0.6, ls="--")
    ax1.set(xlabel="|t| (parameter distance along u)", ylabel="ΔL(t) = L(θ_c + tu) − L(θ_c)")
    ax2.set(xlabel="|t| (parameter distance along u)",
            ylabel="local exponent p = d log ΔL / d log|t|", ylim=(-0.5, 3.0))
    ax1.legend(**LEGEND_OUTSIDE)
    fig.tight_layout()
    out.save_figure(fig, "growth")
    return Figure("growth", "(A) Left: the loss increment along the top Hessian eigenvector from "
                            "the valley floor (solid t > 0, dashed t < 0), the quadratic ½λt² "
                            "(dotted) and the fitted sub-quadratic toy (dash-dot). Right: the "
                            "local exponent p(t); shaded: each side's reported range "
                            "[t_max/100, t_max]; vertical dotted lines: the GD oscillation "
                            "amplitude A of the EoS run; horizontal: p = 2, 2 − 0.2 and the "
                            "criterion 1.8.")


def _cycles(records: dict[int, Any], out) -> Figure | None:
    recs = {s: r["growth"] for s, r in records.items() if r["growth"].get("cycles")}
    if not recs:
        return None
    n = len(CYCLE_FACTORS)
    fig = plt.figure(figsize=(3.2 * (n + 1), 3.6))
    first = fig.add_subplot(1, n + 1, 1)
    axes = [first] + [fig.add_subplot(1, n + 1, i + 1, sharey=first) for i in range(1, n)]
    axes.append(fig.add_subplot(1, n + 1, n + 1))
    colors = _colors(len(recs))
    for color, (seed, a) in zip(colors, recs.items(), strict=True):
        for ax, c in zip(axes[:n], a["cycles"], strict=True):
            traj = np.asarray(c["trajectory"])
            k = np.arange(len(traj))[-40:]
            ax.plot(k, traj[-40:], ".-", ms=3, lw=0.6, color=color, label=f"seed {seed}")
            ax.set_title(f"η = {c['factor']:g} · 2/λ", fontsize=9)
        r = np.array([c["factor"] for c in a["cycles"]])
        amp = np.array([c["amplitude"] for c in a["cycles"]], float)
        ok = np.isfinite(amp)
        axes[n].plot(r[ok], amp[ok], "o", color=color, label=f"seed {seed}, GD 2-cycle")
        rr = np.linspace(1.0, max(CYCLE_FACTORS), 100)
        axes[n].plot(rr, a["toy_scale"] * np.sqrt(rr**2 - 1), "-", lw=0.8, color=color,
                     label=f"seed {seed}, toy s·sqrt(r² − 1)")
    for ax in axes[:n]:
        ax.set_xlabel("restricted GD step k")
    axes[0].set_ylabel("t_k (distance along u from the floor)")
    axes[n].set(xlabel="r = η / (2/λ)", ylabel="2-cycle amplitude |t_k − t_(k−1)|/2")
    axes[n].legend(**LEGEND_OUTSIDE)
    fig.tight_layout()
    out.save_figure(fig, "cycles")
    return Figure("cycles", "(A) GD restricted to the top eigen-direction at η = r·2/λ: the last "
                            "40 iterates per factor (a 2-cycle alternates between two values), "
                            "and the 2-cycle amplitudes against the toy's closed form with its "
                            "fitted length scale s (right; missing points: no 2-cycle).")


def _origin(records: dict[int, Any], config: Preset, out) -> Figure:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    colors = _colors(len(records))
    for color, (seed, rec) in zip(colors, records.items(), strict=True):
        b = rec["origin"]
        ts = np.asarray(b["ts"])
        for key, style in (("small", "-"), ("large", "--")):
            y = np.asarray(b[f"sym_{key}"])
            pos = y > 0
            what = "‖x‖≈1" if key == "small" else f"‖x‖≈{config.scale:g}"
            axes[0].loglog(ts[pos], y[pos], style, lw=0.9, color=color,
                           label=f"seed {seed}, {what} group")
        ph1 = b["phase1"]
        n1 = len(ph1["loss"])
        for key, style in (("loss_small", "-"), ("loss_large", "--")):
            axes[1].semilogy(np.arange(n1), ph1[key], style, lw=0.5, color=color)
            for arm, ax in (("decayed", axes[1]), ("control", axes[2])):
                if arm in b.get("arms", {}):
                    y = b["arms"][arm][key]
                    ax.semilogy(n1 + np.arange(len(y)), y, style, lw=0.5, color=color)
        axes[2].semilogy(np.arange(n1), ph1["loss_large"], "--", lw=0.5, color=color)
        axes[2].semilogy(np.arange(n1), ph1["loss_small"], "-", lw=0.5, color=color)
        low = min(min(v for v in ph1[k] if v > 0) for k in ("loss_small", "loss_large"))
        high = max(max(ph1[k]) for k in ("loss_small", "loss_large"))
        for ax in axes[1:]:
            ax.plot([n1, n1], [low, high], color="k", lw=0.6, ls=":")
    axes[0].set(xlabel="|t| (parameter distance along u at the minimum)",
                ylabel="symmetric ΔL_g(t), share of the loss")
    axes[1].set(xlabel="GD step", ylabel="group share of the training loss",
                title="decayed to η₂ after the dotted line")
    axes[2].set(xlabel="GD step", ylabel="group share of the training loss",
                title="control: η₁ throughout")
    axes[0].legend(**LEGEND_OUTSIDE)
    fig.tight_layout()
    out.save_figure(fig, "origin")
    return Figure("origin", "(B) Left: each group's loss along the top Hessian eigenvector at the "
                            "minimum (solid ‖x‖≈1, dashed large inputs; one colour per seed): "
                            "the large inputs saturate at a smaller |t|. Middle and right: the "
                            "groups' shares of the training loss under GD at η₁, then (after "
                            "the dotted line) decayed to η₂ (middle) or kept at η₁ (right). "
                            "One legend, in the left panel.")


def figures(records_by_seed: dict[int, Any], config: Preset, out) -> list[Figure]:
    """The four figures (growth and cycles only when a landscape was measured)."""
    made = [_eos(records_by_seed, out), _growth(records_by_seed, out),
            _cycles(records_by_seed, out), _origin(records_by_seed, config, out)]
    return [f for f in made if f is not None]
