r"""SGD's linear stability makes networks smooth in their input.

**Claim** (Ma & Ying, NeurIPS 2021, "On Linear Stability of SGD and Input-Smoothness of Neural
Networks", arXiv 2105.13462). The first layer multiplies parameters and input, ``z₁ = W₁x + b₁``,
so ``∂f/∂W₁ = (∂f/∂z₁) xᵀ`` and ``∇_x f = W₁ᵀ ∂f/∂z₁``: flatness in parameter space (small
sharpness and non-uniformity, which SGD's linear stability enforces, more strongly for larger
learning rates ``η`` and smaller batches ``B``) bounds the gradient of the model with respect to
its input. At an interpolating square-loss minimum

.. math:: \frac1n \sum_i \|x_i\|^2 \|∇_x f(x_i)\|_F^2 \le \|W_1\|_2^2 \,\mathrm{tr}(H),

hence SGD with larger ``η`` / smaller ``B`` regularizes Sobolev seminorms of the model and makes
it smoother and more adversarially robust. The paper's moment-based stability theorem and its
constants are unverified in our reference digest; we test the qualitative claims and the
first-layer bound, which we derive and check exactly.

**Set-up** (one seed). Digits (scikit-learn's 8×8 images, standardized, one-hot targets, a
seeded subset of ``n`` training samples), an MLP with ReLU, the square loss ``"mse"``
(``½ Σ_k (f_k − y_k)²``), float64. Every run of a seed starts from the same seeded
initialization and trains with SGD (``sampling="subset"``, ``B`` distinct samples a step) or GD
(written ``B = n``) until the full-batch loss reaches ``loss_goal`` or a step cap; divergence is
an outcome. The learning rates are chosen *a priori* relative to the GD stability threshold at
initialization, ``η = f · 2/λ₀`` with ``λ₀ = λ_max(H(θ₀))``, so the grid spans the regime where
linear stability starts to bind; the batch sizes span small to full batch. At each solution we
measure the sharpness, the non-uniformity, ``g_x(k)`` and ``g_w(k)`` (the authors'
coordinate-wise seminorm estimates, ``k = 1, 2``), the Sobolev seminorm
``(1/n) Σ_i ‖∇_x f(x_i)‖_F²``, both sides of the first-layer bound (Hutch++ trace of the
Hessian, and the exact Gauss–Newton version ``‖W₁‖₂² g_w(1)²``), test accuracy and PGD robust
accuracy (L2 and L∞) on a test subset. Runs go through :func:`valleys.sweeps.run_sweep` with a
store in the seed's work folder, so a killed seed resumes without retraining finished runs.

**Criteria** (constants below, fixed before any run). Only runs that reached the loss goal are
compared, and only within slices (larger ``η`` at the same ``B``; smaller ``B`` at the same
``η``): a pooled correlation is confounded by which grid points diverge (small ``B`` diverges at
large ``η``). For each seed, the fraction of such pairs of runs in which the quantity moves as
claimed (ties count half); the seed meets the criterion when the fraction is at least
``AGREE_FRACTION`` (Kendall's τ ≥ 0.5 within slices). Every seed meeting it: agrees; some:
partly; none: disagrees; a seed without pairs cannot test it. The first-layer bound must hold at
every interpolating run of every seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from valleys._sharpness import nonuniformity, sharpness
from valleys.data import load_digits
from valleys.experiments.protocol import Claim, ClaimSpec, spread
from valleys.models import MLP
from valleys.objective import Objective
from valleys.smoothness import adversarial_accuracy, first_layer_bound, input_smoothness
from valleys.sweeps import ResultsStore, run_id, run_sweep
from valleys.train.loop import train

__all__ = ["CLAIMS", "NAME", "PAPER", "PRESETS", "Preset", "claims", "concordance", "measure",
           "robust_key", "run_one", "seed_analysis", "summary"]

NAME = "input-smoothness"
PAPER = ("Ma & Ying, \"On Linear Stability of SGD and Input-Smoothness of Neural Networks\", "
         "NeurIPS 2021 (arXiv 2105.13462)")

# Criteria, fixed before any run.
AGREE_FRACTION = 0.75   # share of within-slice pairs that must move as claimed, per seed
BOUND_SLACK = 1e-9      # relative tolerance of lhs <= rhs in the first-layer bound

CLAIMS = (
    ClaimSpec(
        "gx-falls-with-lr",
        "At the same batch size, SGD with a larger learning rate finds solutions with smaller "
        "input gradients g_x(1).",
        f"on every seed, g_x(1) is smaller at the larger η in ≥ {AGREE_FRACTION:.0%} of the "
        "pairs of runs with the same B (runs at the loss goal; ties count half)",
        partly="some seeds meet it",
    ),
    ClaimSpec(
        "gx-falls-with-smaller-batch",
        "At the same learning rate, SGD with a smaller batch finds solutions with smaller "
        "input gradients g_x(1).",
        f"on every seed, g_x(1) is smaller at the smaller B in ≥ {AGREE_FRACTION:.0%} of the "
        "pairs of runs with the same η (runs at the loss goal; ties count half)",
        partly="some seeds meet it",
    ),
    ClaimSpec(
        "first-layer-bound",
        "At an interpolating square-loss minimum, (1/n)Σ‖x_i‖²‖∇_x f(x_i)‖² ≤ ‖W₁‖₂² tr(H).",
        "the bound holds (Hutch++ trace of H) at every interpolating run of every seed",
    ),
    ClaimSpec(
        "robust-rises-with-lr",
        "At the same batch size, solutions found with a larger learning rate are more "
        "adversarially robust.",
        f"on every seed, PGD robust test accuracy at the middle L2 radius and at the middle L∞ "
        f"radius is each higher at the larger η in ≥ {AGREE_FRACTION:.0%} of the pairs of runs "
        "with the same B (ties count half)",
        partly="some seeds meet it",
    ),
)


@dataclass(frozen=True)
class Preset:
    """Everything that defines a reproduction (besides the seed).

    Attributes:
        n_train: training samples (a seeded subset of the digits training split).
        n_attack: test samples attacked by PGD (the first of the seeded test split).
        widths: MLP widths, input to output.
        activation: hidden nonlinearity.
        lr_fractions: learning rates as fractions of ``2/λ₀`` (GD threshold at init).
        batch_sizes: SGD batch sizes; ``None`` is full-batch GD.
        max_steps: step cap of every run.
        loss_goal: a run stops (``"converged"``) when the full-batch loss reaches this.
        record_every: steps between full-batch loss checks.
        trace_matvecs: Hessian-vector products of the Hutch++ trace in the bound.
        pgd_steps: PGD iterations per attack.
        l2_radii: L2 attack radii (inputs are standardized pixels; ``‖x‖ ≈ 7.5``).
        linf_radii: L∞ attack radii (in pixel standard deviations).
        threads: torch threads (small matrices: one is fastest).
    """

    n_train: int
    n_attack: int
    widths: tuple[int, ...]
    activation: str
    lr_fractions: tuple[float, ...]
    batch_sizes: tuple[int | None, ...]
    max_steps: int
    loss_goal: float
    record_every: int
    trace_matvecs: int
    pgd_steps: int
    l2_radii: tuple[float, ...]
    linf_radii: tuple[float, ...]
    threads: int | None = 1


PRESETS: dict[str, Preset] = {
    # CI: 9 runs a seed on 256 samples, a 3.5k-parameter MLP; ~20 s of CPU a seed (the
    # smallest η is 0.35 · 2/λ₀ because steps to the loss goal scale like 1/η).
    "quick": Preset(
        n_train=256, n_attack=100, widths=(64, 32, 32, 10), activation="relu",
        lr_fractions=(0.35, 0.7, 1.0), batch_sizes=(8, 32, None), max_steps=6000,
        loss_goal=1e-3, record_every=25, trace_matvecs=60, pgd_steps=10,
        l2_radii=(0.5, 1.0, 2.0), linf_radii=(0.05, 0.1), threads=1,
    ),
    # 4 learning rates × 6 batch sizes a seed on 512 samples, a 13k-parameter MLP. Steps to the
    # loss goal scale like 1/η (~14k at the smallest η); a GD step costs ~2 ms on one core, an
    # SGD step ~1 ms, the measurements ~4 s a run: ~3.5 min of CPU a seed (4 × 4 cells took
    # 139 s on a loaded 2-core machine).
    "full": Preset(
        n_train=512, n_attack=200, widths=(64, 64, 64, 10), activation="relu",
        lr_fractions=(0.125, 0.25, 0.5, 1.0), batch_sizes=(4, 8, 16, 64, 256, None),
        max_steps=20000,
        loss_goal=1e-3, record_every=50, trace_matvecs=40, pgd_steps=10,
        l2_radii=(0.5, 1.0, 2.0), linf_radii=(0.05, 0.1, 0.2), threads=1,
    ),
}


# ------------------------------------------------------------------------------------------------
# One run (module level: the sweep calls it with a JSON config)
# ------------------------------------------------------------------------------------------------


def robust_key(norm: str, radius: float) -> str:
    """Column name of the robust accuracy at one radius, e.g. ``robust_l2_1``."""
    return f"robust_{norm}_{radius:g}"


def _problem(config: dict[str, Any]) -> tuple[Objective, torch.Tensor, torch.Tensor]:
    """The objective at the seeded initialization and the test split, from a run's config."""
    device = torch.device(config["device"])
    data = load_digits(seed=config["data_seed"], one_hot=True, dtype=torch.float64,
                       device=device)
    X, Y = data.train
    n = config["n_train"]
    model = MLP(config["widths"], config["activation"], seed=config["init_seed"])
    model = model.to(device=device, dtype=torch.float64).eval()
    X_test, Y_test = data.test
    return Objective(model, "mse", (X[:n], Y[:n])), X_test, Y_test


def _safe(fn, *args, **kwargs) -> float:
    """A scalar measurement, NaN if its eigen-solver gives up (recorded, not fatal)."""
    try:
        return float(fn(*args, **kwargs))
    except RuntimeError:
        return math.nan


def _measure_solution(objective: Objective, X_test: torch.Tensor, Y_test: torch.Tensor,
                      config: dict[str, Any]) -> dict[str, Any]:
    """Flatness, input/parameter gradients, the first-layer bound, accuracy and robustness."""
    seed = config["measure_seed"]
    sharp = _safe(sharpness, objective, seed=seed)
    first = input_smoothness(objective, k=1)
    second = input_smoothness(objective, k=2)
    bound = first_layer_bound(objective, trace_method="auto", num_matvecs=config["trace_matvecs"],
                              seed=seed)
    with torch.no_grad():
        out = objective.forward(objective.parameters_vector(), X_test)
    metrics = {
        "sharpness": sharp, "nonuniformity": _safe(nonuniformity, objective, seed=seed),
        "lr_times_sharpness": config["lr"] * sharp,
        "g_x": first.g_x, "g_w": first.g_w, "g_x2": second.g_x, "g_w2": second.g_w,
        "sobolev": first.sobolev, "sobolev_max": first.sobolev_max,
        "bound_lhs": bound.lhs, "bound_rhs": bound.rhs,
        "bound_rhs_first_layer": bound.rhs_first_layer,
        "bound_rhs_ggn": bound.spectral_norm**2 * first.g_w**2,
        "trace": bound.trace, "trace_stderr": bound.trace_stderr,
        "test_accuracy": float((out.argmax(1) == Y_test.argmax(1)).double().mean()),
    }
    Xa, Ya = X_test[:config["n_attack"]], Y_test[:config["n_attack"]]
    for norm in ("l2", "linf"):
        radii = config[f"{norm}_radii"]
        if radii:
            result = adversarial_accuracy(objective, Xa, Ya, radii, attack="pgd", norm=norm,
                                          steps=config["pgd_steps"], seed=seed)
            for radius, acc in zip(radii, result.accuracies, strict=True):
                metrics[robust_key(norm, radius)] = float(acc)
    return metrics


def run_one(config: dict[str, Any]) -> dict[str, Any]:
    """Train one ``(η, B)`` run from the seeded initialization and measure its solution.

    A diverged run returns ``diverged=True`` (the sweep records it so).
    """
    objective, X_test, Y_test = _problem(config)
    result = train(objective, lr=config["lr"], steps=config["max_steps"],
                   batch_size=config["batch_size"], sampling="subset",
                   seed=config["sampling_seed"], loss_goal=config["loss_goal"],
                   record_every=config["record_every"])
    base = {"train_status": result.status, "steps": result.steps,
            "final_loss": result.final_loss}
    if result.status == "diverged":
        return {**base, "diverged": True}
    objective.set_parameters(result.theta)
    train_accuracy = objective.accuracy()
    return {**base, "train_accuracy": train_accuracy,
            "interpolates": bool(result.status == "converged" and train_accuracy == 1.0),
            **_measure_solution(objective, X_test, Y_test, config)}


# ------------------------------------------------------------------------------------------------
# The grid of one seed
# ------------------------------------------------------------------------------------------------


def _round_sig(x: float, digits: int = 3) -> float:
    return float(f"{x:.{digits}g}")


def _base_config(config: Preset, seed: int, device) -> dict[str, Any]:
    return {
        "dataset": "digits", "data_seed": seed, "init_seed": seed, "measure_seed": seed,
        "device": str(device), "n_train": config.n_train, "n_attack": config.n_attack,
        "widths": list(config.widths), "activation": config.activation,
        "max_steps": config.max_steps, "loss_goal": config.loss_goal,
        "record_every": config.record_every, "trace_matvecs": config.trace_matvecs,
        "pgd_steps": config.pgd_steps, "l2_radii": list(config.l2_radii),
        "linf_radii": list(config.linf_radii),
    }


def run_configs(config: Preset, seed: int, device, lam0: float) -> list[dict[str, Any]]:
    """One run config per ``(η, B)``; ``η = f · 2/λ₀`` rounded to 3 digits."""
    base = _base_config(config, seed, device)
    return [{**base, "lr_fraction": fraction, "lr": _round_sig(fraction * 2.0 / lam0),
             "batch_size": batch, "sampling_seed": seed}
            for fraction in config.lr_fractions for batch in config.batch_sizes]


def _row(run_config: dict[str, Any], record: dict[str, Any], n: int) -> dict[str, Any]:
    """A run's record: grid point (GD written as ``batch_size = n``), status and metrics."""
    metrics = record["metrics"] or {}
    status = metrics.get("train_status", "failed" if record["status"] == "failed"
                         else record["status"])
    gd = run_config["batch_size"] is None
    row = {"lr_fraction": run_config["lr_fraction"], "lr": run_config["lr"],
           "optimizer": "GD" if gd else "SGD",
           "batch_size": n if gd else run_config["batch_size"], "status": status}
    row.update({k: v for k, v in metrics.items() if k not in ("train_status", "diverged")})
    return row


def measure(config: Preset, seed: int, device, workdir: Path) -> dict[str, Any]:
    """Train and measure the ``(η, B)`` grid of one seed (resumable through ``workdir``)."""
    base = _base_config(config, seed, device)
    objective, _, _ = _problem(base)
    lam0 = round(sharpness(objective, seed=seed), 6)
    configs = run_configs(config, seed, device, lam0)
    store = ResultsStore(Path(workdir) / "runs.sqlite")
    name = f"{NAME}-seed{seed}"
    run_sweep(run_one, configs, store, name=name, executor="serial", progress=False)
    by_id = {r["run_id"]: r for r in store.records(name)}
    return {
        "lambda0": lam0,
        "lr_grid": sorted({c["lr"] for c in configs}),
        "num_parameters": sum(a * b + b for a, b in pairwise(config.widths)),
        "runs": [_row(c, by_id[run_id(c, name)], config.n_train) for c in configs],
    }


# ------------------------------------------------------------------------------------------------
# Analysis of one seed
# ------------------------------------------------------------------------------------------------


def concordance(frame: pd.DataFrame, group: str, x: str, y: str, *,
                falling: bool = True) -> dict[str, Any]:
    """Pairs of runs with equal ``group`` and different ``x``: how often ``y`` moves as claimed.

    Cells are ``(group, x)`` means. A pair agrees when the cell with the larger ``x`` has the
    smaller ``y`` (``falling``) or the larger ``y`` (not ``falling``); ties count half. The
    fraction is ``None`` without pairs.
    """
    if frame.empty or y not in frame:
        return {"fraction": None, "pairs": 0}
    cells = frame.groupby([group, x])[y].mean().dropna()
    pairs = agree = 0.0
    for _, part in cells.groupby(level=0):
        values = part.droplevel(0).sort_index().to_numpy()
        for i in range(len(values)):
            for j in range(i + 1, len(values)):
                pairs += 1
                diff = values[j] - values[i]
                agree += 0.5 if diff == 0 else float((diff < 0) == falling)
    return {"fraction": agree / pairs if pairs else None, "pairs": int(pairs)}


def frame_of(record: dict[str, Any]) -> pd.DataFrame:
    """The runs of one seed as a DataFrame (``inv_batch = 1/B``)."""
    frame = pd.DataFrame(record["runs"])
    frame["inv_batch"] = 1.0 / frame["batch_size"]
    return frame


def middle_radii(config: Preset) -> dict[str, str]:
    """The robust-accuracy columns the robustness claim uses: the middle radius of each norm."""
    out = {}
    for norm, radii in (("l2", config.l2_radii), ("linf", config.linf_radii)):
        if radii:
            out[norm] = robust_key(norm, radii[len(radii) // 2])
    return out


def seed_analysis(record: dict[str, Any], config: Preset) -> dict[str, Any]:
    """Within-slice pair fractions, the bound check and run counts of one seed."""
    frame = frame_of(record)
    done = frame[frame["status"] == "converged"]
    out: dict[str, Any] = {
        "gx_falls_with_lr": concordance(done, "batch_size", "lr", "g_x"),
        "gx_falls_with_smaller_batch": concordance(done, "lr", "inv_batch", "g_x"),
        "sobolev_falls_with_lr": concordance(done, "batch_size", "lr", "sobolev"),
        "sobolev_falls_with_smaller_batch": concordance(done, "lr", "inv_batch", "sobolev"),
        "robust_rises_with_lr": {
            norm: concordance(done, "batch_size", "lr", key, falling=False)
            for norm, key in middle_radii(config).items()},
        # Reported without a criterion (the robustness claim is judged on η only).
        "robust_rises_with_smaller_batch": {
            norm: concordance(done, "lr", "inv_batch", key, falling=False)
            for norm, key in middle_radii(config).items()},
    }
    interp = frame[frame.get("interpolates", pd.Series(False, index=frame.index)) == True]  # noqa: E712
    out["interpolating_runs"] = len(interp)
    out["bound_holds"] = (None if interp.empty else bool(
        (interp["bound_lhs"] <= interp["bound_rhs"] * (1 + BOUND_SLACK)).all()))
    out["bound_slack_min"] = (None if interp.empty else
                              float((interp["bound_rhs"] / interp["bound_lhs"]).min()))
    out["counts"] = {s: int((frame["status"] == s).sum())
                     for s in ("converged", "max_steps", "diverged", "failed")}
    return out


def meets(fraction: float | None) -> bool | None:
    """A seed's outcome on a pair-fraction criterion (``None``: no pairs)."""
    return None if fraction is None else fraction >= AGREE_FRACTION


def claims(records_by_seed: dict[int, Any], config: Preset) -> list[Claim]:
    """The four claims, judged per seed from their criteria in ``CLAIMS``."""
    specs = {spec.id: spec for spec in CLAIMS}
    analyses = {s: seed_analysis(r, config) for s, r in records_by_seed.items()}
    out = []
    for claim_id, key in (("gx-falls-with-lr", "gx_falls_with_lr"),
                          ("gx-falls-with-smaller-batch", "gx_falls_with_smaller_batch")):
        fractions = {s: a[key]["fraction"] for s, a in analyses.items()}
        sobolev = key.replace("gx", "sobolev")
        out.append(specs[claim_id].judge_per_seed(
            {s: meets(f) for s, f in fractions.items()},
            {"pair_fraction": spread(list(fractions.values())),
             "pairs": spread([a[key]["pairs"] for a in analyses.values()]),
             "sobolev_pair_fraction": spread([a[sobolev]["fraction"]
                                              for a in analyses.values()])}))
    out.append(specs["first-layer-bound"].judge_per_seed(
        {s: a["bound_holds"] for s, a in analyses.items()},
        {"interpolating_runs": spread([a["interpolating_runs"] for a in analyses.values()]),
         "min_rhs_over_lhs": spread([a["bound_slack_min"] for a in analyses.values()])}))
    robust = {s: a["robust_rises_with_lr"] for s, a in analyses.items()}
    passes = {}
    for s, by_norm in robust.items():
        outcomes = [meets(e["fraction"]) for e in by_norm.values()]
        passes[s] = None if not outcomes or None in outcomes else all(outcomes)
    norms = list(middle_radii(config).items())
    measured = {f"pair_fraction_{key.removeprefix('robust_')}":
                spread([robust[s][norm]["fraction"] for s in robust]) for norm, key in norms}
    out.append(specs["robust-rises-with-lr"].judge_per_seed(passes, measured))
    return out


def summary(records_by_seed: dict[int, Any], config: Preset) -> dict[str, Any]:
    """Top-level keys of ``summary.json``: per-seed analyses and the grid of each seed."""
    return {
        "analysis_by_seed": {str(s): seed_analysis(r, config)
                             for s, r in records_by_seed.items()},
        "lambda0_by_seed": {str(s): r["lambda0"] for s, r in records_by_seed.items()},
        "lr_grid_by_seed": {str(s): r["lr_grid"] for s, r in records_by_seed.items()},
    }


def finite_mean(values) -> float | None:
    """Mean of the finite values (``None`` if there are none)."""
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else None
