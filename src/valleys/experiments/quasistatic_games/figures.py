"""Figures of the quasistatic-games reproduction: seed bands of every curve, per-seed points of
the GAN fit against its threshold, and (first seed) the final clouds, the generated samples and
two animations (GIF)."""

from __future__ import annotations

import math
import os
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.animation import PillowWriter

from valleys.experiments.plotting import LEGEND_OUTSIDE, seed_band
from valleys.experiments.protocol import Figure
from valleys.experiments.quasistatic_games.measure import (
    CONVERGED_FLOOR_FACTOR,
    GAN_FIT_FACTOR,
    METHODS,
    gan_ratio,
)
from valleys.games.gans import gaussian_mixture

COLORS = {"quasistatic": "C0", "descent-ascent": "C1", "wfr": "C2"}
ANIMATION_DPI = 60
ANIMATION_RC = {"lines.antialiased": False, "patch.antialiased": False}
TITLES = {"quadratic": "quadratic–bilinear: W2 to N(0,τ/a)×N(0,τ/b)",
          "torus": "torus cos(x−y): NI error", "cycling": "torus sin(x−y), low τ: NI error"}
YLABELS = {"quadratic": "W2 of Gaussian fits (strategy units)",
           "torus": "NI error (payoff units)", "cycling": "NI error (payoff units)"}


def _padded(curves: list[list[float]]) -> np.ndarray:
    """Curves of unequal length (a diverged run stops early) as a NaN-padded array."""
    length = max(len(c) for c in curves)
    return np.array([list(c) + [math.nan] * (length - len(c)) for c in curves], dtype=float)


def _histories(records_by_seed, getter) -> tuple[np.ndarray, list[list[dict[str, float]]]]:
    hists = [getter(r) for r in records_by_seed.values()]
    longest = max(hists, key=len)
    return np.array([h["step"] for h in longest], dtype=float), hists


def _closed_form(records_by_seed, out) -> Figure:
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for ax, game in zip(axes, ("quadratic", "torus", "cycling"), strict=True):
        for method in METHODS:
            steps, hists = _histories(records_by_seed, lambda r, g=game, m=method:
                                      r[g]["runs"][m]["history"])
            seed_band(ax, steps, _padded([[h["distance"] for h in hist] for hist in hists]),
                      label=method, color=COLORS[method])
        floor = np.mean([r[game]["floor"] for r in records_by_seed.values()])
        ax.axhline(floor, color="gray", ls=":", label="finite-n floor (seed mean)")
        ax.axhline(CONVERGED_FLOOR_FACTOR * floor, color="k", ls="--", lw=0.8,
                   label=f"criterion: {CONVERGED_FLOOR_FACTOR:g} × floor")
        ax.set_yscale("log")
        ax.set_xlabel("outer step (count)")
        ax.set_ylabel(YLABELS[game])
        ax.set_title(TITLES[game], fontsize=9)
    axes[-1].legend(**LEGEND_OUTSIDE)
    fig.tight_layout()
    out.save_figure(fig, "convergence_closed_form")
    return Figure("convergence_closed_form",
                  "Distance to the regularised equilibrium over outer steps on the three "
                  "closed-form games; line = mean over seeds, band = min–max over seeds; dotted: "
                  "finite-n floor, dashed: the convergence criterion.")


def _cycling(records_by_seed, out) -> Figure:
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for method in METHODS:
        steps, hists = _histories(records_by_seed, lambda r, m=method:
                                  r["cycling"]["runs"][m]["history"])
        phases = [np.unwrap([h["phase_x"] for h in hist]) for hist in hists]
        seed_band(ax, steps, _padded([list(p - p[0]) for p in phases]), label=method,
                  color=COLORS[method])
    ax.axhline(math.pi, color="k", ls="--", lw=0.8, label="criterion: ±π rad")
    ax.axhline(-math.pi, color="k", ls="--", lw=0.8)
    ax.set_xlabel("outer step (count)")
    ax.set_ylabel("x-cloud phase turned (rad)")
    ax.set_title("sin(x − y): rotation of the x-cloud's first Fourier mode", fontsize=9)
    ax.legend(**LEGEND_OUTSIDE)
    fig.tight_layout()
    out.save_figure(fig, "cycling_game")
    return Figure("cycling_game",
                  "Cycling game: how far the x-cloud's first Fourier mode turned (unwrapped, "
                  "from its start) per method; line = mean, band = min–max over seeds. The "
                  "phase is meaningless once a cloud is flat.")


def _cycling_clouds(records_by_seed, out) -> Figure:
    seed = min(records_by_seed)
    runs = records_by_seed[seed]["cycling"]["runs"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.3), sharey=True)
    bins = np.linspace(0, 2 * math.pi, 41)
    for ax, method in zip(axes, METHODS, strict=True):
        ax.hist(runs[method]["x"], bins=bins, density=True, alpha=0.6, label="x (min)")
        ax.hist(runs[method]["y"], bins=bins, density=True, alpha=0.6, label="y (max)")
        ax.axhline(1 / (2 * math.pi), color="k", ls=":", label="uniform (equilibrium)")
        ax.set_title(f"{method}: final clouds, seed {seed}", fontsize=9)
        ax.set_xlabel("position on the circle (rad)")
    axes[0].set_ylabel("density (1/rad)")
    axes[-1].legend(**LEGEND_OUTSIDE)
    fig.tight_layout()
    out.save_figure(fig, "cycling_clouds")
    return Figure("cycling_clouds",
                  f"Cycling game, seed {seed}: histograms of the final x and y clouds per method "
                  "against the uniform equilibrium (the other seeds are in the curves above).")


def _rps(records_by_seed, out) -> Figure:
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    steps, hists = _histories(records_by_seed, lambda r: r["rps"]["history"])
    seed_band(ax, steps, _padded([[h["ni_error"] for h in hist] for hist in hists]),
              label="last iterate", color="C3")
    seed_band(ax, steps, _padded([[h["ni_error_average"] for h in hist] for hist in hists]),
              label="running average", color="C0")
    ax.set_yscale("log")
    ax.set_xlabel("mirror step (count)")
    ax.set_ylabel("NI error (payoff units)")
    ax.set_title("rock–paper–scissors, mirror descent–ascent on the weights", fontsize=9)
    ax.legend(**LEGEND_OUTSIDE)
    fig.tight_layout()
    out.save_figure(fig, "rock_paper_scissors")
    return Figure("rock_paper_scissors",
                  "Rock–paper–scissors: NI error of the last iterate and of the running average "
                  "of the weights; line = mean, band = min–max over seeds.")


def _gan_fit(records_by_seed, config, out) -> Figure:
    targets = list(config.gan_targets)
    fig, axes = plt.subplots(1, len(targets), figsize=(5.2 * len(targets), 3.8), squeeze=False)
    seeds = list(records_by_seed)
    offsets = np.linspace(-0.2, 0.2, len(seeds)) if len(seeds) > 1 else np.zeros(1)
    for ax, target in zip(axes[0], targets, strict=True):
        for i, method in enumerate(METHODS):
            values = [gan_ratio(records_by_seed[s], target, method) for s in seeds]
            xs = [i + o for o, v in zip(offsets, values, strict=True) if v is not None]
            ys = [v for v in values if v is not None]
            ax.scatter(xs, ys, color=COLORS[method], zorder=3,
                       label=f"{method} (one point per seed)")
        ax.axhline(GAN_FIT_FACTOR, color="k", ls="--", lw=0.8,
                   label=f"criterion: {GAN_FIT_FACTOR:g} × floor")
        ax.axhline(1.0, color="gray", ls=":", lw=0.8, label="floor (perfect generator)")
        ax.set_xticks(range(len(METHODS)), METHODS)
        ax.set_xlim(-0.6, len(METHODS) - 0.4)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("method")
        ax.set_ylabel("W2(generated, target) / W2 floor (ratio)")
        ax.set_title(f"{target}: fit after {config.gan_evaluations} payoff evaluations",
                     fontsize=9)
    axes[0][-1].legend(**LEGEND_OUTSIDE)
    fig.tight_layout()
    out.save_figure(fig, "gan_fit")
    return Figure("gan_fit",
                  "Mixtures of GANs: W2 between generated and target samples over the W2 floor, "
                  "one point per seed and method (diverged runs omitted); dashed: the fit "
                  "criterion.")


def _gan_curves(records_by_seed, config, out) -> Figure:
    targets = list(config.gan_targets)
    fig, axes = plt.subplots(1, len(targets), figsize=(5.2 * len(targets), 3.8), squeeze=False)
    for ax, target in zip(axes[0], targets, strict=True):
        for method in METHODS:
            runs = [r["gans"][target][method] for r in records_by_seed.values()]
            longest = max((run["history"] for run in runs), key=len)
            evals = np.array([h["evaluations"] for h in longest], dtype=float)
            ratios = _padded([[h["w2"] / run["w2_floor"] for h in run["history"]]
                              for run in runs])
            seed_band(ax, evals, ratios, label=method, color=COLORS[method], marker=".")
        ax.axhline(GAN_FIT_FACTOR, color="k", ls="--", lw=0.8,
                   label=f"criterion: {GAN_FIT_FACTOR:g} × floor")
        ax.set_xlabel("payoff evaluations (count)")
        ax.set_ylabel("W2(generated, target) / W2 floor (ratio)")
        ax.set_title(f"{target}: fit over training", fontsize=9)
    axes[0][-1].legend(**LEGEND_OUTSIDE)
    fig.tight_layout()
    out.save_figure(fig, "gan_curves")
    return Figure("gan_curves",
                  "Mixtures of GANs: W2 over the W2 floor along training against payoff "
                  "evaluations (the budget unit); line = mean, band = min–max over seeds.")


def _gan_samples(records_by_seed, config, out) -> Figure:
    seed = min(records_by_seed)
    targets = list(config.gan_targets)
    fig, axes = plt.subplots(len(targets), 4, figsize=(13, 3.2 * len(targets)), squeeze=False)
    for row, target in zip(axes, targets, strict=True):
        block = records_by_seed[seed]["gans"][target]
        reference = gaussian_mixture(target).sample(1000, generator=_generator(0)).numpy()
        row[0].scatter(reference[:, 0], reference[:, 1], s=2, color="k")
        row[0].set_title(f"{target}: target", fontsize=9)
        for ax, method in zip(row[1:], METHODS, strict=True):
            s = np.asarray(block[method]["samples"], dtype=float).reshape(-1, 2)
            ax.scatter(s[:, 0], s[:, 1], s=2, color=COLORS[method])
            m = block[method]
            label = ("diverged" if m["status"] == "diverged"
                     else f"W2 {m['w2']:.2f} (floor {m['w2_floor']:.2f})")
            ax.set_title(f"{method}: {m['modes_covered']}/{m['num_modes']} modes, {label}",
                         fontsize=8)
        for ax in row:
            ax.set(xlim=(-3, 3), ylim=(-3, 3), aspect="equal", xlabel="x₁ (data units)",
                   ylabel="x₂ (data units)")
    fig.tight_layout()
    out.save_figure(fig, "gan_samples")
    return Figure("gan_samples",
                  f"Mixtures of GANs, seed {seed}: target samples and each method's generated "
                  "samples at the end of its budget.")


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _write_gif(out, fig, name: str, draw, frames: int, fps: int = 6) -> None:
    """Write ``draw(i)`` for ``i < frames`` as the GIF ``name`` (atomically) and close ``fig``."""
    target = out.file(name)
    tmp = target.with_name(f".{target.stem}.tmp.gif")  # Pillow picks the format by suffix
    writer = PillowWriter(fps=fps)
    with writer.saving(fig, str(tmp), dpi=ANIMATION_DPI):
        for i in range(frames):
            draw(i)
            writer.grab_frame()
    os.replace(tmp, target)
    plt.close(fig)


def _ring(theta, radius: float, jitter: np.ndarray) -> np.ndarray:
    t = np.asarray(theta, dtype=float)
    r = radius + jitter[: len(t)]
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def cycling_animation(records_by_seed, out) -> str | None:
    """The two clouds of ``sin(x − y)`` on the circle (first seed): descent–ascent against
    the quasistatic method; x (min) on the outer ring, y (max) on the inner one."""
    seed = min(records_by_seed)
    runs = records_by_seed[seed]["cycling"]["runs"]
    shown = ("descent-ascent", "quasistatic")
    if not all(runs[m].get("snapshots") for m in shown):
        return None
    n = max(len(runs[m]["snapshots"]) for m in shown)
    rng = np.random.default_rng(seed)
    jitter = 0.05 * (2 * rng.random(len(runs[shown[0]]["x"])) - 1)
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.4))
    artists = {}
    circle = np.linspace(0, 2 * math.pi, 200)
    for ax, method in zip(axes, shown, strict=True):
        for radius in (1.0, 0.7):
            ax.plot(radius * np.cos(circle), radius * np.sin(circle), color="0.85", lw=0.8)
        px = ax.scatter([], [], s=4, color="C0", lw=0)
        py = ax.scatter([], [], s=4, color="C3", lw=0)
        ax.set(xlim=(-1.15, 1.15), ylim=(-1.15, 1.15), aspect="equal", xticks=[], yticks=[])
        artists[method] = (px, py, ax.set_title("", fontsize=9))
    fig.suptitle(f"sin(x − y), seed {seed}: x (min) blue, outer ring; y (max) red, inner "
                 "ring;\nuniform = equilibrium", fontsize=8)
    fig.tight_layout()

    def draw(i: int) -> None:
        for method, (px, py, title) in artists.items():
            snaps = runs[method]["snapshots"]
            s = snaps[min(i * len(snaps) // n, len(snaps) - 1)]
            px.set_offsets(_ring(s["x"], 1.0, jitter))
            py.set_offsets(_ring(s["y"], 0.7, jitter))
            title.set_text(f"{method}: step {s['step']}")

    _write_gif(out, fig, "cycling_clouds.gif", draw, n)
    return "cycling_clouds.gif"


def gan_animation(records_by_seed, config, out) -> str | None:
    """Generator samples of each method (colour) against the first target (grey), first
    seed, over its budget of payoff evaluations."""
    seed = min(records_by_seed)
    target = config.gan_targets[0]
    block = records_by_seed[seed]["gans"][target]
    if not all(block[m].get("frames") for m in METHODS):
        return None
    reference = gaussian_mixture(target).sample(1000, generator=_generator(0)).numpy()
    n = max(len(block[m]["frames"]) for m in METHODS)
    fig, axes = plt.subplots(1, len(METHODS), figsize=(7.5, 2.9))
    artists = {}
    for ax, method in zip(axes, METHODS, strict=True):
        ax.scatter(reference[:, 0], reference[:, 1], s=2, color="0.75")
        dots = ax.scatter([], [], s=3, color=COLORS[method])
        ax.set(xlim=(-3, 3), ylim=(-3, 3), aspect="equal", xticks=[], yticks=[])
        artists[method] = (dots, ax.set_title("", fontsize=8))
    fig.suptitle(f"mixture of GANs on {target}, seed {seed}: generator samples vs target (grey)",
                 fontsize=9)
    fig.tight_layout()
    per_step = {m: (config.gan_inner_steps + 1 if m == "quasistatic" else 1) for m in METHODS}

    def draw(i: int) -> None:
        for method, (dots, title) in artists.items():
            frames = block[method]["frames"]
            frame = frames[min(i * len(frames) // n, len(frames) - 1)]
            pts = np.asarray(frame["samples"], dtype=float).reshape(-1, 2)
            dots.set_offsets(pts)
            title.set_text(f"{method}: {frame['step'] * per_step[method]} evaluations")

    _write_gif(out, fig, f"gan_{target}.gif", draw, n)
    return f"gan_{target}.gif"


def figures(records_by_seed: dict[int, dict[str, Any]], config, out) -> list[Figure]:
    """Every figure (checked on save) and the two animations (GIF, not in the list)."""
    figs = [_closed_form(records_by_seed, out), _cycling(records_by_seed, out),
            _cycling_clouds(records_by_seed, out), _rps(records_by_seed, out),
            _gan_fit(records_by_seed, config, out), _gan_curves(records_by_seed, config, out),
            _gan_samples(records_by_seed, config, out)]
    with matplotlib.rc_context(ANIMATION_RC):
        cycling_animation(records_by_seed, out)
        gan_animation(records_by_seed, config, out)
    return figs
