"""Figures of the transformer-block-spectra reproduction: block densities, JS heatmaps,
training curves and the learning-rate grids."""

from __future__ import annotations

import math
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from valleys.experiments.plotting import LEGEND_OUTSIDE, seed_band
from valleys.experiments.protocol import Figure
from valleys.experiments.transformer_block_spectra.measure import (
    ARCHITECTURES,
    OPTIMIZERS,
    TARGET_FRACTION,
    Preset,
)

TITLES = {"transformer": "TinyGPT (modular addition)", "mlp": "MLP (digits)"}
COLORS = {"sgd": "C0", "adam": "C3"}
LABELS = {"sgd": "SGD (heavy ball)", "adam": "Adam"}
FLOOR = 1e-6  # densities below this fraction of the panel's peak are not drawn (log axis)


def _log_ready(values, peak: float) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    return np.where(v > FLOOR * peak, v, np.nan)


def _densities(records_by_seed, out) -> Figure:
    seed = next(iter(records_by_seed))
    record = records_by_seed[seed]
    fig, axes = plt.subplots(2, 2, figsize=(13, 7.5))
    for col, kind in enumerate(ARCHITECTURES):
        arch = record[kind]
        for row, (grid_key, dens_key, xlabel) in enumerate((
                ("grid", "densities", "eigenvalue of the diagonal Hessian block "
                 "(nats / parameter²)"),
                ("grid_scaled", "densities_scaled", "eigenvalue / the block's largest "
                 "|eigenvalue| (dimensionless)"))):
            ax = axes[row, col]
            grid = np.asarray(arch[grid_key], dtype=float)
            peak = max(max(d) for d in arch[dens_key].values())
            cmap = plt.get_cmap("tab20")
            for i, (block, density) in enumerate(arch[dens_key].items()):
                ax.plot(grid, _log_ready(density, peak), color=cmap(i % 20), lw=1.2,
                        label=block)
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("density (1 / eigenvalue unit)")
            scale = "common axis" if row == 0 else "each block rescaled"
            ax.set_title(f"{TITLES[kind]}, seed {seed}: {scale}", fontsize=9)
            if row == 0:
                ax.legend(**LEGEND_OUTSIDE)
    fig.tight_layout()
    out.save_figure(fig, "block_densities")
    return Figure("block_densities",
                  "SLQ spectral densities of the diagonal Hessian blocks at initialization "
                  "(first seed): top, on the common grid and kernel the JS distances use; "
                  "bottom, each block's eigenvalues divided by its largest |eigenvalue| (shape "
                  "only, as the paper's plots normalize); log density axis, values below 1e-6 "
                  "of the peak not drawn.")


def _heatmaps(records_by_seed, out) -> Figure:
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.6),
                             gridspec_kw={"width_ratios": [1.6, 1.0]})
    image = None
    for ax, kind in zip(axes, ARCHITECTURES, strict=True):
        blocks = records_by_seed[next(iter(records_by_seed))][kind]["blocks"]
        js = np.mean([np.asarray(r[kind]["js"], dtype=float)
                      for r in records_by_seed.values()], axis=0)
        image = ax.imshow(js, vmin=0.0, vmax=math.log(2.0), cmap="viridis")
        ax.set_xticks(range(len(blocks)), blocks, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(blocks)), blocks, fontsize=7)
        ax.set_xlabel("parameter block")
        ax.set_ylabel("parameter block")
        pairs = js[np.triu_indices(len(blocks), k=1)]
        ax.set_title(f"{TITLES[kind]}: mean pairwise JS {pairs.mean():.3g}", fontsize=9)
    bar = fig.colorbar(image, ax=list(axes), shrink=0.8)
    bar.set_label("JS distance between block densities (nats; max log 2)")
    out.save_figure(fig, "js_heatmaps")
    return Figure("js_heatmaps",
                  f"Pairwise JS distances between the block spectral densities at "
                  f"initialization, mean over {len(records_by_seed)} seeds; colour scale 0 to "
                  f"log 2 (disjoint densities).")


def _curves(records_by_seed, config: Preset, out) -> Figure:
    fig, axes = plt.subplots(1, 2, figsize=(15, 4.2))
    for ax, kind in zip(axes, ARCHITECTURES, strict=True):
        targets = []
        for optimizer in OPTIMIZERS:
            curves, lrs = [], []
            steps = None
            for r in records_by_seed.values():
                training = r[kind]["training"][optimizer]
                run = training["runs"][training["best"]]
                lrs.append(training["best_lr"])
                length = len(range(0, config.steps + 1, config.record_every))
                if config.steps % config.record_every:
                    length += 1
                values = list(run["losses"]) + [math.nan] * (length - len(run["losses"]))
                curves.append(values)
                steps = (list(range(0, config.steps + 1, config.record_every))
                         + ([config.steps] if config.steps % config.record_every else []))
                targets.append(TARGET_FRACTION * run["initial_loss"])
            chosen = ", ".join(f"{lr:g}" for lr in lrs)
            seed_band(ax, steps, curves, label=f"{LABELS[optimizer]} (lr {chosen})",
                      color=COLORS[optimizer])
        ax.axhline(float(np.mean(targets)), color="k", ls=":", lw=0.8,
                   label=f"loss target ({TARGET_FRACTION:g} × initial)")
        ax.set_yscale("log")
        ax.set_xlabel("full-batch step (count)")
        ax.set_ylabel("training loss (cross-entropy, nats)")
        ax.set_title(TITLES[kind], fontsize=9)
        ax.legend(**LEGEND_OUTSIDE)
    fig.tight_layout()
    out.save_figure(fig, "training_curves")
    return Figure("training_curves",
                  "Full-batch training loss of SGD (heavy ball) and Adam, each at the learning "
                  "rate of its grid that reaches the loss target first; line = mean, band = "
                  "min–max over seeds.")


def _grids(records_by_seed, out) -> Figure:
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    for ax, kind in zip(axes, ARCHITECTURES, strict=True):
        for optimizer in OPTIMIZERS:
            for i, r in enumerate(records_by_seed.values()):
                runs = r[kind]["training"][optimizer]["runs"]
                lrs = [run["lr"] for run in runs]
                final = [run["final_loss"] if math.isfinite(run["final_loss"])
                         and run["final_loss"] > 0 else math.nan for run in runs]
                ax.plot(lrs, final, "o-", color=COLORS[optimizer], alpha=0.8,
                        label=f"{LABELS[optimizer]}" if i == 0 else None)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("learning rate (dimensionless)")
        ax.set_ylabel("final training loss (nats)")
        ax.set_title(f"{TITLES[kind]}: the grids (one line per seed; diverged runs missing)",
                     fontsize=9)
        ax.legend(**LEGEND_OUTSIDE)
    fig.tight_layout()
    out.save_figure(fig, "lr_grids")
    return Figure("lr_grids",
                  "Final full-batch training loss against the learning rate for every run of "
                  "the grid search, one line per seed and optimizer.")


def figures(records_by_seed: dict[int, dict[str, Any]], config: Preset, out) -> list[Figure]:
    """The four figures, each checked on save."""
    return [_densities(records_by_seed, out), _heatmaps(records_by_seed, out),
            _curves(records_by_seed, config, out), _grids(records_by_seed, out)]
