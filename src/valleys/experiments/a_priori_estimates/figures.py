"""Figures of the a-priori-estimates reproduction: risk against width and sample size with the
bound's rates, and path norms in the over-parametrized sweep."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

from valleys.experiments.a_priori_estimates.measure import LAMBDA, Preset, _select
from valleys.experiments.plotting import LEGEND_OUTSIDE, seed_band
from valleys.experiments.protocol import Figure

_KINDS = ((LAMBDA, "adam", f"regularized (λ = {LAMBDA:g})"), (0.0, "adam", "unregularized (Adam)"),
          (0.0, "gd", "plain GD"))


def _curves(records_by_seed, sweep: str, x: str, y: str, lam: float, optimizer: str):
    rows = [_select(r[sweep], lam, optimizer) for r in records_by_seed.values()]
    xs = np.asarray([row[x] for row in rows[0]], dtype=float)
    ys = [[row[y] for row in seed_rows] for seed_rows in rows]
    return xs, ys


def _log_x(ax, xs) -> None:
    """A log x axis ticked at the grid values only."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator([float(x) for x in xs]))
    ax.set_xticklabels([f"{x:g}" for x in xs])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())


def _positive(ys):
    v = np.asarray(ys, dtype=float)
    return np.where(v > 0, v, np.nan)


def _rate(records_by_seed, out, sweep: str, x: str, slope: float, xlabel: str, stem: str,
          caption: str) -> Figure:
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, (lam, opt, label) in enumerate(_KINDS[:2]):
        xs, ys = _curves(records_by_seed, sweep, x, "risk", lam, opt)
        seed_band(ax, xs, _positive(ys), label=label, color=f"C{i}", marker="o")
        if i == 0:
            start = np.nanmean(_positive(ys), axis=0)[0]
            ax.plot(xs, start * (xs / xs[0]) ** slope, "k--", lw=0.8,
                    label=f"predicted rate (slope {slope:g})")
    _log_x(ax, xs)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("excess test risk E(f − f*)² (target units²)")
    ax.legend(**LEGEND_OUTSIDE)
    fig.tight_layout()
    out.save_figure(fig, stem)
    return Figure(stem, caption)


def _over(records_by_seed, config: Preset, out) -> Figure:
    fig, (ax_pn, ax_risk) = plt.subplots(1, 2, figsize=(14, 4))
    for i, (lam, opt, label) in enumerate(_KINDS):
        xs, pn = _curves(records_by_seed, "over", "m", "path_norm", lam, opt)
        seed_band(ax_pn, xs, _positive(pn), label=label, color=f"C{i}", marker="o")
        xs, risk = _curves(records_by_seed, "over", "m", "risk", lam, opt)
        seed_band(ax_risk, xs, _positive(risk), label=label, color=f"C{i}", marker="o")
    ax_pn.axhline(config.amplitude, color="k", ls=":", lw=0.8, label="‖f*‖_B")
    for ax in (ax_pn, ax_risk):
        _log_x(ax, xs)
        ax.set_yscale("log")
        ax.set_xlabel(f"width m (hidden units; n = {config.over_n})")
        ax.legend(**LEGEND_OUTSIDE)
    ax_pn.set_ylabel("path norm ‖θ‖_P (target units)")
    ax_risk.set_ylabel("excess test risk (target units²)")
    fig.tight_layout()
    out.save_figure(fig, "overparametrized")
    return Figure("overparametrized",
                  "Widths far beyond n with label noise: path norm (left) and excess test risk "
                  "(right) of the regularized, unregularized (Adam) and plain-GD estimators; "
                  "line = mean, band = min–max over seeds.")


def figures(records_by_seed: dict[int, dict[str, Any]], config: Preset, out) -> list[Figure]:
    """The three figures, each checked on save."""
    return [
        _rate(records_by_seed, out, "width", "m", -1.0,
              f"width m (hidden units; n = {config.width_n}, no noise)", "width_rate",
              "Excess test risk against the width at large n without noise, with the bound's "
              "1/m rate; line = mean, band = min–max over seeds."),
        _rate(records_by_seed, out, "sample", "n", -0.5,
              f"samples n (count; m = {config.sample_m}, label noise {config.noise:g})",
              "sample_rate",
              "Excess test risk against the sample size at a large width with label noise, "
              "with the bound's 1/√n rate; line = mean, band = min–max over seeds."),
        _over(records_by_seed, config, out),
    ]
