"""The sgd-vs-adam report: the results table and prose generated from the records."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from valleys.experiments.common import format_cell as fmt
from valleys.experiments.common import markdown_table
from valleys.experiments.protocol import Claim
from valleys.experiments.sgd_vs_adam.measure import (
    ADAM_SDE_RATE,
    ESCAPE_ALPHAS,
    GAUSSIAN_EPSILON,
    SDE_NOISE_SCALE,
    SDE_STIFFNESS,
    WIDTH_ALPHA,
    Preset,
)

__all__ = ["report", "table"]


def table(records_by_seed: Mapping[int, Any], config: Preset) -> pd.DataFrame:
    """One row per (seed, optimizer, loss target): the minimum found and both noises there."""
    rows = []
    for seed, recs in records_by_seed.items():
        runs = {r["optimizer"]: r for r in recs["runs"]}
        for p in recs["points"]:
            sgd, adam = p["alpha_sgd_noise"], p["alpha_adam_noise"]
            rows.append({
                "seed": seed, "minimum_of": p["optimizer"], "lr": runs[p["optimizer"]]["lr"],
                "loss_target": p["target"], "step": p["step"], "train_loss": p["loss"],
                "sharpness": p["sharpness"], "train_accuracy": p["train_accuracy"],
                "test_accuracy": p["test_accuracy"], "test_loss": p["test_loss"],
                "alpha_sgd_noise": sgd["alpha"], "alpha_sgd_low": sgd["low"],
                "alpha_sgd_high": sgd["high"], "alpha_adam_noise": adam["alpha"],
                "alpha_adam_low": adam["low"], "alpha_adam_high": adam["high"],
                "coordinates": sgd["coordinates"],
            })
    return pd.DataFrame(rows)


def _runs_table(records_by_seed: Mapping[int, Any]) -> str:
    rows = [{"seed": s, "optimizer": r["optimizer"], "lr": r["lr"], "status": r["status"],
             "steps": r["steps"], "final_loss": r["final_loss"]}
            for s, recs in records_by_seed.items() for r in recs["runs"]]
    return markdown_table(rows, ["seed", "optimizer", "lr", "status", "steps", "final_loss"])


def _mean_rows(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """Rows grouped by ``keys``: mean, min and max over seeds of the mean exit time."""
    groups: dict[tuple, list[float]] = {}
    extra: dict[tuple, Mapping[str, Any]] = {}
    for r in rows:
        key = tuple(r[k] for k in keys)
        groups.setdefault(key, []).append(r["mean_exit_time"])
        extra[key] = r
    out = []
    for key, values in groups.items():
        finite = [v for v in values if np.isfinite(v)]
        row = dict(zip(keys, key, strict=True))
        row.update(exit_time_mean=float(np.mean(finite)) if finite else None,
                   exit_time_min=min(finite) if finite else None,
                   exit_time_max=max(finite) if finite else None)
        if "theory" in extra[key]:
            row["theory"] = extra[key]["theory"]
        out.append(row)
    return out


def _sde_tables(records_by_seed: Mapping[int, Any]) -> str:
    recs = list(records_by_seed.values())
    eps = _mean_rows([r for rec in recs for r in rec["sde"]["epsilon"]], ["alpha", "epsilon"])
    width = _mean_rows([r for rec in recs for r in rec["sde"]["width"]], ["alpha", "width"])
    opt = _mean_rows([r for rec in recs for r in rec["sde"]["optimizers"]],
                     ["alpha", "epsilon", "dynamics"])
    cols = ["exit_time_mean", "exit_time_min", "exit_time_max"]
    exps = {a: [rec["sde"]["exponents"][a] for rec in recs] for a in recs[0]["sde"]["exponents"]}
    exp_text = "; ".join(f"α = {a}: {fmt(float(np.nanmean(v)), 3)} "
                         f"[{fmt(float(np.nanmin(v)), 3)}, {fmt(float(np.nanmax(v)), 3)}]"
                         for a, v in exps.items())
    return "\n\n".join([
        "Exit time against ε (mean [min, max] over seeds; theory 1/(ε^α m(W))):",
        markdown_table(eps, ["alpha", "epsilon", *cols, "theory"]),
        f"Fitted exponents −d log τ/d log ε, mean [min, max] over seeds: {exp_text}.",
        "Exit time against the basin half-width a (W = (−2a, 0)):",
        markdown_table(width, ["alpha", "width", *cols, "theory"]),
        "SGD-like vs Adam-like in the 2-D valley:",
        markdown_table(opt, ["alpha", "epsilon", "dynamics", *cols]),
    ])


def _by_claim(claims: Sequence[Claim]) -> dict[str, Claim]:
    return {c.id: c for c in claims}


def _value(claim: Claim, key: str) -> str:
    m = claim.measured[key]
    if m["mean"] is None:
        return "not measured"
    if m["min"] == m["max"]:
        return fmt(m["mean"], 3)
    return f"{fmt(m['mean'], 3)} [{fmt(m['min'], 3)}, {fmt(m['max'], 3)}]"


def _range(values: Sequence[float]) -> str:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    if not finite:
        return "not measured"
    return f"{fmt(min(finite), 3)}–{fmt(max(finite), 3)}"


def _discussion(records_by_seed: Mapping[int, Any], claims: Sequence[Claim],
                config: Preset) -> str:
    c = _by_claim(claims)
    points = [p for recs in records_by_seed.values() for p in recs["points"]]
    pooled_note = (
        "For comparison, the authors' estimate pools all coordinates into one sample without "
        "standardizing. At the same minima the coordinates' noise scales (median |ξ|) spread "
        f"by a factor {_range([p['scale_spread_sgd'] for p in points])} between their 10th "
        "and 90th percentiles, and the pooled α̂ was "
        f"{_range([p['alpha_sgd_pooled'] for p in points])} for SGD's noise and "
        f"{_range([p['alpha_adam_pooled'] for p in points])} for Adam's, against "
        f"{_range([p['alpha_sgd_noise']['alpha'] for p in points])} and "
        f"{_range([p['alpha_adam_noise']['alpha'] for p in points])} per coordinate (ranges "
        "over seeds and minima). Here every coordinate is standardized and forms its own "
        "block, so α̂ is the shape of the per-coordinate law, not the spread of the scales.")
    tails = (
        f"At the minima found, the per-coordinate α̂ of the gradient noise was "
        f"{_value(c['heavy-tails'], 'alpha_hat_max')} at its largest per seed, with upper 95% "
        f"bounds up to {_value(c['heavy-tails'], 'upper_bound_max')} (verdict "
        f"**{c['heavy-tails'].verdict}**). Measured at the same θ from the same draws, SGD's "
        f"noise had mean α̂ {_value(c['adam-lighter-tails'], 'alpha_sgd_mean')} and Adam's "
        f"effective noise {_value(c['adam-lighter-tails'], 'alpha_adam_mean')}; the smallest "
        f"per-seed gap α̂_Adam − α̂_SGD was {_value(c['adam-lighter-tails'], 'gap_min')} "
        f"(verdict **{c['adam-lighter-tails'].verdict}**). Because a diagonal preconditioner "
        "is a per-coordinate scale, it cancels in the standardized estimate: any difference "
        "comes from the momentum average of independent mini-batch noises. A linear filter "
        "leaves the α of an exactly α-stable law unchanged, so a difference means that the "
        "per-coordinate law is not exactly stable at these sample sizes. The bootstrap "
        "intervals resample coordinates, which share mini-batches, and do not contain the "
        "variation between seeds; the verdicts therefore ask for every seed.")
    minima = (
        f"At equal training loss the ratio of sharpness Adam/SGD was, at its smallest per "
        f"seed, {_value(c['adam-sharper'], 'sharpness_ratio_adam_over_sgd_min')} (verdict "
        f"**{c['adam-sharper'].verdict}**); the test accuracy of SGD minus Adam, averaged over "
        f"the targets, was {_value(c['sgd-generalizes-better'], 'test_accuracy_sgd_minus_adam')}"
        f" (verdict **{c['sgd-generalizes-better'].verdict}**; the digits test split has "
        "about 360 samples, so one sample is 0.0028).")
    escape = (
        f"In the SDEs the largest deviation of a fitted exit-time exponent from α was "
        f"{_value(c['escape-time-law'], 'exponent_error_max')} (verdict "
        f"**{c['escape-time-law'].verdict}**), and the Adam-like/SGD-like exit-time ratio was "
        + " and ".join(f"{_value(c['sgd-escapes-faster'], f'exit_adam_over_sgd_alpha_{a:g}')}"
                       f" at α = {a:g}" for a in ESCAPE_ALPHAS)
        + f" (verdict **{c['sgd-escapes-faster'].verdict}**). These exit times depend on "
        "modelling choices of `valleys.sde` (the normalized preconditioner, the averaging rate, "
        "noise strongest along the escape direction); they show the mechanism, not the "
        "networks' own escapes.")
    return "\n\n".join([tails, pooled_note, minima, escape])


def report(records_by_seed: Mapping[int, Any], config: Preset, claims: Sequence[Claim]) -> str:
    """Set-up, results (runs, exit times) and discussion, every number from the records."""
    dims = sorted({recs["dim"] for recs in records_by_seed.values()})
    coords = sorted({p["alpha_sgd_noise"]["coordinates"] for recs in records_by_seed.values()
                     for p in recs["points"]})
    setup = f"""## Set-up

* Data: scikit-learn digits, seeded 80/20 split per seed, first {config.n_train} training
  samples, standardized pixels; test accuracy on the held-out split.
* Model: ReLU MLP with hidden widths {tuple(config.hidden)} ({fmt(dims)} parameters), float64,
  cross-entropy; SGD and Adam start from the same seeded initialization.
* Training: mini-batches of {config.batch_size} distinct samples; SGD η = {config.sgd_lr:g},
  Adam η = {config.adam_lr:g} (β = (0.9, 0.999)). Every run stops at the first loss check
  (every {config.record_every} steps) at or below the last of the training-loss targets
  {", ".join(f"{t:g}" for t in config.loss_targets)}; θ is kept at each target. Budget
  {config.max_steps} steps.
* Noise at each minimum found, both noises at that θ from the same draws:
  {config.noise_windows} independent windows of {config.ema_window} mini-batch noises
  ξ = g_b − g; SGD's noise is one ξ per window, Adam's effective noise
  P⁻¹ Σ_k (1−β₁)β₁^k ξ_(t−k) with β₁ = {config.beta1:g} and P = diag(√v + 1e-8),
  v = g² + c·diag(C) (the stationary second moment at θ).
* Tail index: **standardized per coordinate** (median absolute value), block-sum estimator
  with one block of {config.noise_windows} samples per coordinate ({fmt(coords)} coordinates
  with noise), 95% bootstrap interval over coordinates ({config.bootstrap} resamples).
* Sharpness: Lanczos on the Hessian to relative residual {config.sharpness_tol:g}.
* SDEs: double well φ(x) = ((x/a)² − 1)² − 1, basin W = (−2a, 0) of the left minimum; Euler
  step {config.sde_dt:g}, {config.sde_paths} paths, cap {config.sde_max_steps} steps (censored
  paths enter the exponential maximum-likelihood mean). Width scan at α = {WIDTH_ALPHA:g},
  ε = {config.sde_epsilon:g}. SGD-like vs Adam-like: 2-D valley of stiffness
  {SDE_STIFFNESS:g} across, noise scale diag{SDE_NOISE_SCALE}, Adam-like preconditioning
  normalized to mean 1 and averaging at rate {ADAM_SDE_RATE:g}; ε = {config.sde_epsilon:g}
  at α = 1.5 and {GAUSSIAN_EPSILON:g} at α = 2.
"""
    results = "\n\n".join([
        "## Results",
        "Runs (status `target`: stopped at the last loss target):",
        _runs_table(records_by_seed),
        _sde_tables(records_by_seed),
    ])
    discussion = "## Discussion\n\n" + _discussion(records_by_seed, claims, config)
    return "\n\n".join([setup, results, discussion])
