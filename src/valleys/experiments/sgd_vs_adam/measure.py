r"""SGD vs Adam at equal training loss: noise tails, escape times and the minima found.

**Claim** (Zhou, Feng, Ma, Xiong, Hoi & E, NeurIPS 2020, arXiv 2010.05627; only the abstract was
available to us): the gradient noise of SGD and
Adam is heavy-tailed (α-stable, α < 2); Adam's exponential averaging makes its effective noise
lighter-tailed (``α_SGD < α_Adam``); the time to escape a basin falls with heavier tails, as
``ε^{−α}`` in the noise scale, and grows with the basin's Radon measure (its width), so SGD
escapes sharp basins faster than Adam; hence Adam ends in sharper minima and generalizes worse.

**Set-up** (one seed = one data split, initialization, mini-batch sequence and SDE noise):

* *Networks.* A ReLU MLP on scikit-learn's digits (``valleys.data.load_digits``, seeded
  80/20 split), cross-entropy, float64, mini-batches of ``B`` distinct samples. SGD
  (η = ``sgd_lr``) and Adam (η = ``adam_lr``, β = (0.9, 0.999)) start from the same
  initialization. The rates are the customary ones (0.1 and torch's default 10⁻³), fixed
  before any run. **Every run stops at the same training-loss targets**: the full-data loss is
  checked every ``record_every`` steps and θ is kept at the first check where it is at or below
  each target; the run ends at the last target (status ``"target"``), at ``max_steps``
  (``"max_steps"``) or when it diverges (``"diverged"``). A target a run did not reach leaves
  the comparisons that need it "not tested" for that seed.
* *Noise at the same θ.* At every minimum found (each optimizer, each target) both noises are
  measured at that θ from the same draws: ``T·K`` mini-batch noise samples
  ``ξ = g_b − g`` in ``T`` disjoint windows of ``K``; SGD's noise is one ``ξ`` per window and
  Adam's effective noise is ``P^{-1} Σ_{k<K} (1−β₁)β₁^k ξ_{t−k}`` per window (its momentum
  average, truncated at ``β₁^K``; independent windows avoid the autocorrelation that biases
  the block-sum estimator on consecutive averages), with ``P = diag(√v + 10⁻⁸)`` and
  ``v = g² + c·diag(C)`` the stationary second moment at θ (:mod:`valleys.noise._adam`).
* *Per-coordinate standardization.* Each coordinate is divided by its median absolute value
  (coordinates without noise, e.g. dead units, are dropped) and the block-sum estimator
  (Mohammadi et al. 2015, :func:`valleys.noise.tail_index`) runs with one block per coordinate
  (block length ``T``), so ``α̂`` measures the shape of each coordinate's law and not how
  uneven the coordinate scales are (the authors' pooled estimate does the latter). Since a
  diagonal ``P`` is a per-coordinate scale, it cancels: the tail comparison isolates the
  averaging mechanism (b) of the paper; the anisotropy mechanism (a) is the SDE part's.
  The 95% interval is a bootstrap over coordinates.
* *Minima.* At each target: sharpness ``λ_max(∇²L)`` (Lanczos, :func:`valleys.sharpness.
  sharpness`), training loss and test accuracy.
* *SDEs* (:mod:`valleys.sde`): mean exit time from the left basin of a double well driven by
  ``ε dL^α`` against ε for several α (fitted exponent ``−d log τ/d log ε``) and against the
  basin's half-width, and the SGD-like vs Adam-like exit time in a 2-D valley whose noise is
  strongest along the escape direction (Adam-like: preconditioning normalized to mean 1 and
  averaging at rate 10), at α = 1.5 and α = 2.

The criteria are the constants below and the ``*_outcome`` functions, fixed before any run.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from valleys import Objective, data
from valleys._sharpness import sharpness
from valleys.errors import ArgumentValueError
from valleys.experiments.protocol import Claim, ClaimSpec, spread
from valleys.models import MLP
from valleys.noise import minibatch_noise, stationary_second_moment, tail_index
from valleys.sde import AdamLike, DoubleWell, exit_times, levy_exit_time
from valleys.train import train

__all__ = ["CLAIMS", "NAME", "PAPER", "PRESETS", "Preset", "claims", "measure", "summary"]

NAME = "sgd-vs-adam"
PAPER = (
    "Zhou, Feng, Ma, Xiong, Hoi & E, \"Towards theoretically understanding why SGD generalizes "
    "better than ADAM in deep learning\", NeurIPS 2020 (arXiv 2010.05627)"
)

# Criteria, fixed before any run.
HEAVY_TAIL_ALPHA = 2.0  # heavy-tailed: the whole 95% interval of α̂ below 2
ACCURACY_TIE = 0.005  # SGD generalizes better: test accuracy higher by more than half a point
EXPONENT_TOL = 0.2  # fitted exit-time exponent within 0.2 of α
ESCAPE_Z = 2.0  # Adam-like exit time above SGD-like by more than 2 standard errors
GAUSSIAN_EPSILON = 0.55  # ε of the α = 2 SGD-like vs Adam-like comparison (ΔV/ε² ≈ 3.3)
ESCAPE_ALPHAS = (1.5, 2.0)  # α of the SGD-like vs Adam-like comparison
WIDTH_ALPHA = 1.5  # α of the exit time against the basin width
SDE_STIFFNESS = 4.0  # curvature across the 2-D valley
SDE_NOISE_SCALE = (1.0, 0.25)  # noise scale along / across the escape direction
ADAM_SDE_RATE = 10.0  # the Adam-like SDE's averaging rate β₁ per unit time
PRECONDITIONER_DELTA = 1e-8  # torch's Adam ε

CLAIMS = (
    ClaimSpec(
        "heavy-tails",
        "The gradient noise of SGD and of Adam is heavy-tailed (α-stable with α < 2).",
        f"at every minimum found (each optimizer and loss target) the 95% interval of α̂ of "
        f"the per-coordinate standardized noise g_b − g lies below {HEAVY_TAIL_ALPHA:g}, on "
        "every seed",
        partly="some seeds meet it, others do not",
    ),
    ClaimSpec(
        "adam-lighter-tails",
        "Adam's exponential averaging makes its effective noise lighter-tailed: α_SGD < α_Adam.",
        "at every minimum found, measured at that same θ from the same draws, the 95% interval "
        "of α̂ of Adam's effective noise lies entirely above that of SGD's noise, on every seed",
        partly="some seeds meet it, others do not",
    ),
    ClaimSpec(
        "escape-time-law",
        "The exit time from a basin scales as ε^(−α) (heavier tails escape faster) and grows "
        "with the basin's Radon measure (its width).",
        f"on every seed, the fitted exponent −d log τ/d log ε is within {EXPONENT_TOL:g} of α "
        "for every α, and the exit time increases strictly with the basin width",
    ),
    ClaimSpec(
        "sgd-escapes-faster",
        "For the same basin, SGD-like dynamics escape faster than Adam-like ones.",
        f"on every seed and at α = {ESCAPE_ALPHAS[0]:g} and {ESCAPE_ALPHAS[1]:g}, the Adam-like "
        f"mean exit time exceeds the SGD-like one by more than {ESCAPE_Z:g} combined standard "
        "errors",
    ),
    ClaimSpec(
        "adam-sharper",
        "Adam ends in sharper minima than SGD.",
        "at every training-loss target both optimizers reached, λ_max(∇²L) at Adam's minimum "
        "exceeds that at SGD's, on every seed",
        partly="some seeds meet it, others do not",
    ),
    ClaimSpec(
        "sgd-generalizes-better",
        "SGD generalizes better than Adam.",
        f"the test accuracy of SGD's minimum minus Adam's, averaged over the loss targets both "
        f"reached, exceeds {ACCURACY_TIE:g} on every seed",
        partly="some seeds meet it, others do not",
    ),
)
_SPEC = {spec.id: spec for spec in CLAIMS}

SEEDS = {"quick": (0, 1), "full": (0, 1, 2, 3, 4)}
OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class Preset:
    """Everything that sizes the reproduction.

    Attributes:
        n_train: training samples used (the first of the seeded split; digits has 1438).
        hidden: hidden widths of the ReLU MLP.
        batch_size: mini-batch size ``B`` of both optimizers and of the noise.
        sgd_lr, adam_lr: the learning rates (fixed, customary values).
        loss_targets: training-loss targets, decreasing; every run stops at the last.
        max_steps: step budget of a run; record_every: loss checks (and snapshots).
        noise_windows: ``T``, independent noise samples per coordinate and noise.
        ema_window: ``K``, mini-batches averaged into one Adam noise sample.
        beta1: Adam's β₁ (its noise averaging).
        max_coordinates: coordinates kept for the tail index (a seeded subset above that).
        bootstrap: bootstrap resamples of the tail-index interval.
        sharpness_tol: relative residual of the Lanczos sharpness.
        sde_*: the SDE part (paths, step, step cap, α and ε grids, widths, the ε of the width
            and optimizer comparisons, the Adam-like variants compared).
        threads: torch threads.
    """

    n_train: int
    hidden: tuple[int, ...]
    batch_size: int
    sgd_lr: float
    adam_lr: float
    loss_targets: tuple[float, ...]
    max_steps: int
    record_every: int
    noise_windows: int
    ema_window: int
    beta1: float
    max_coordinates: int
    bootstrap: int
    sharpness_tol: float
    sde_paths: int
    sde_dt: float
    sde_max_steps: int
    sde_alphas: tuple[float, ...]
    sde_epsilons: tuple[float, ...]
    sde_widths: tuple[float, ...]
    sde_epsilon: float
    sde_dynamics: tuple[str, ...]
    threads: int | None = 1


PRESETS = {
    # CI: about 25 s of CPU per seed on one thread.
    "quick": Preset(
        n_train=1438, hidden=(64,), batch_size=32, sgd_lr=0.1, adam_lr=1e-3,
        loss_targets=(3e-2, 1e-2), max_steps=8000, record_every=20, noise_windows=150,
        ema_window=30, beta1=0.9, max_coordinates=5000, bootstrap=100, sharpness_tol=1e-3,
        sde_paths=200, sde_dt=0.01, sde_max_steps=6000, sde_alphas=(1.2, 1.5, 1.8),
        sde_epsilons=(0.4, 0.28, 0.2), sde_widths=(0.7, 1.0, 1.4), sde_epsilon=0.2,
        sde_dynamics=("sgd", "adam"),
    ),
    # The audit's targets 1e-2 and 1e-3, a deeper net, longer averaging windows, more paths.
    "full": Preset(
        n_train=1438, hidden=(128, 128), batch_size=32, sgd_lr=0.1, adam_lr=1e-3,
        loss_targets=(1e-2, 1e-3), max_steps=40_000, record_every=20, noise_windows=200,
        ema_window=44, beta1=0.9, max_coordinates=30_000, bootstrap=200, sharpness_tol=1e-3,
        sde_paths=600, sde_dt=0.005, sde_max_steps=60_000, sde_alphas=(1.1, 1.3, 1.5, 1.7, 1.9),
        sde_epsilons=(0.3, 0.2, 0.14, 0.1), sde_widths=(0.5, 0.7, 1.0, 1.4, 2.0),
        sde_epsilon=0.14, sde_dynamics=("sgd", "adam", "adam-no-averaging"),
    ),
}


# --- networks -------------------------------------------------------------------------------------


def _data(config: Preset, seed: int, device: torch.device):
    """``((X, y) train, (X, y) test)`` of the seeded digits split, on ``device``."""
    ds = data.load_digits(seed=seed, dtype=torch.float64, device=device)
    n = min(config.n_train, ds.X_train.shape[0])
    return (ds.X_train[:n].contiguous(), ds.y_train[:n].contiguous()), (ds.X_test, ds.y_test)


class _Snapshots:
    """Callback: θ (and the loss) at the first recorded step at or below each loss target."""

    def __init__(self, targets: Sequence[float]) -> None:
        self.targets = tuple(targets)
        self.kept: dict[float, dict[str, Any]] = {}
        self.objective: Objective | None = None

    def setup(self, context) -> None:
        self.objective = context.objective

    def __call__(self, step: int, theta: torch.Tensor) -> None:
        pending = [t for t in self.targets if t not in self.kept]
        if not pending:
            return
        loss = float(self.objective.loss(theta))
        for target in pending:
            if loss <= target:
                self.kept[target] = {"step": step, "loss": loss, "theta": theta.clone()}


def _train_to_targets(obj: Objective, theta0: torch.Tensor, optimizer: str, config: Preset,
                      seed: int) -> tuple[dict[str, Any], dict[float, dict[str, Any]]]:
    """Train from ``theta0`` until the last loss target; the run's row and its snapshots."""
    lr = config.sgd_lr if optimizer == "sgd" else config.adam_lr
    keep = _Snapshots(config.loss_targets)
    result = train(obj, theta=theta0, optimizer=optimizer, lr=lr, steps=config.max_steps,
                   batch_size=config.batch_size, sampling="subset", seed=seed,
                   record_every=config.record_every, loss_goal=min(config.loss_targets),
                   callbacks=[keep])
    status = {"converged": "target"}.get(result.status, result.status)
    records = [r for r in result.records if "grad_norm" in r]
    run = {"optimizer": optimizer, "lr": lr, "status": status, "steps": result.steps,
           "final_loss": result.final_loss,
           "curve": {"step": [r["step"] for r in records], "loss": [r["loss"] for r in records]}}
    return run, keep.kept


def ema_weights(beta1: float, window: int, dtype=torch.float64) -> torch.Tensor:
    """Adam's averaging weights ``(1−β₁)β₁^k``, ``k = K−1..0`` (oldest sample first)."""
    k = torch.arange(window - 1, -1, -1, dtype=dtype)
    return (1.0 - beta1) * beta1**k


def paired_noise(obj: Objective, theta: torch.Tensor, config: Preset, seed: int,
                 coordinates: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SGD's and Adam's noise at θ from the same draws, each ``(T, d)``.

    ``T = noise_windows`` disjoint windows of ``K = ema_window`` mini-batch noise samples
    ``ξ = g_b − g``: SGD's sample is the window's last ``ξ``; Adam's is the momentum average
    ``Σ_k (1−β₁)β₁^k ξ_{t−k}`` (unpreconditioned; see :func:`adam_effective`). ``coordinates``
    selects the parameters kept (all by default).
    """
    K, T = config.ema_window, config.noise_windows
    weights = ema_weights(config.beta1, K).to(theta.device)
    per_chunk = max(1, int(1.6e7 // (K * obj.dim)))  # at most ~128 MB of noise at once
    sgd, adam = [], []
    for number, start in enumerate(range(0, T, per_chunk)):
        windows = min(per_chunk, T - start)
        xi = minibatch_noise(obj, theta, batch_size=config.batch_size,
                             num_batches=windows * K, seed=seed + 7919 * number)
        if coordinates is not None:
            xi = xi[:, coordinates]
        xi = xi.reshape(windows, K, -1)
        sgd.append(xi[:, -1])
        adam.append(torch.einsum("k,wkd->wd", weights, xi))
    return torch.cat(sgd), torch.cat(adam)


def adam_effective(averaged: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``P^{-1} m`` with ``P = diag(√v + δ)``, Adam's preconditioner (δ = torch's ε)."""
    return averaged / (v.sqrt() + PRECONDITIONER_DELTA)


def standardize_columns(samples: torch.Tensor) -> torch.Tensor:
    """Each column divided by its median absolute value; columns without noise are dropped."""
    scale = samples.abs().median(dim=0).values
    keep = scale > 0
    return samples[:, keep] / scale[keep]


def per_coordinate_tail(samples: torch.Tensor, bootstrap: int, seed: int) -> dict[str, Any]:
    """α̂ of ``(T, d)`` samples, standardized per coordinate, one block per coordinate.

    With blocks of one coordinate's ``T`` samples, the block term
    ``(log|Σ_t x_t| − (1/T)Σ_t log|x_t|)/log T`` does not depend on that coordinate's scale,
    so coordinates of different scales do not mix (unlike the pooled estimate).
    """
    z = standardize_columns(samples)
    result = tail_index(z.T.reshape(-1), block_size=z.shape[0], num_bootstrap=bootstrap,
                        seed=seed)
    return {"alpha": result.alpha, "low": result.interval[0], "high": result.interval[1],
            "coordinates": int(z.shape[1])}


def pooled_tail(samples: torch.Tensor, seed: int) -> float:
    """α̂ of all coordinates pooled without standardization (the authors' estimate, for
    comparison only): consecutive scalars of one noise sample share a block."""
    return tail_index(samples.reshape(-1), num_bootstrap=0, seed=seed).alpha


def scale_spread(samples: torch.Tensor) -> float:
    """Ratio of the 90th to the 10th percentile of the coordinates' median absolute values."""
    scale = samples.abs().median(dim=0).values
    scale = scale[scale > 0]
    q = torch.tensor([0.1, 0.9], dtype=scale.dtype, device=scale.device)
    low, high = torch.quantile(scale, q)
    return float(high / low)


def _coordinates(dim: int, config: Preset, seed: int) -> torch.Tensor | None:
    if dim <= config.max_coordinates:
        return None
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(dim, generator=gen)[: config.max_coordinates].sort().values


def _point(obj: Objective, test_obj: Objective, snap: dict[str, Any], config: Preset,
           seed: int) -> dict[str, Any]:
    """Noise tails (both noises at this θ), sharpness and accuracy at one minimum found."""
    theta = snap["theta"]
    coords = _coordinates(obj.dim, config, seed)
    sgd, averaged = paired_noise(obj, theta, config, seed, coords)
    v = stationary_second_moment(obj, theta, batch_size=config.batch_size)
    adam = adam_effective(averaged, v if coords is None else v[coords])
    obj.set_parameters(theta)
    try:
        lam = sharpness(obj, tol=config.sharpness_tol, seed=seed)
    except RuntimeError:  # Lanczos budget exhausted: recorded as not measured
        lam = math.nan
    return {
        "step": snap["step"], "loss": snap["loss"], "sharpness": lam,
        "train_accuracy": obj.accuracy(theta), "test_accuracy": test_obj.accuracy(theta),
        "test_loss": float(test_obj.loss(theta)),
        "alpha_sgd_noise": per_coordinate_tail(sgd, config.bootstrap, seed),
        "alpha_adam_noise": per_coordinate_tail(adam, config.bootstrap, seed + 1),
        "alpha_sgd_pooled": pooled_tail(sgd, seed), "alpha_adam_pooled": pooled_tail(adam, seed),
        "scale_spread_sgd": scale_spread(sgd),
    }


def _networks(config: Preset, seed: int, device: torch.device) -> dict[str, Any]:
    """Both optimizers trained to the loss targets and measured at every minimum found."""
    train_data, test_data = _data(config, seed, device)
    widths = (train_data[0].shape[1], *config.hidden, 10)
    model = MLP(widths, "relu", seed=seed).double().to(device).eval()
    obj = Objective(model, "ce", train_data)
    test_obj = Objective(model, "ce", test_data)
    theta0 = obj.parameters_vector().detach().clone()
    runs, points = [], []
    for index, optimizer in enumerate(OPTIMIZERS):
        run, snaps = _train_to_targets(obj, theta0, optimizer, config, seed)
        runs.append(run)
        for number, target in enumerate(config.loss_targets):
            if target in snaps:
                point_seed = 1000 * seed + 100 * index + 10 * number
                points.append({"optimizer": optimizer, "target": target,
                               **_point(obj, test_obj, snaps[target], config, point_seed)})
    return {"runs": runs, "points": points, "dim": obj.dim}


# --- SDEs -----------------------------------------------------------------------------------------


def _exit(config: Preset, well: DoubleWell, alpha: float, epsilon: float, seed: int,
          device: torch.device, **extra: Any) -> dict[str, Any]:
    r = exit_times(well.grad, well.left_minimum(device=device), well.basin(),
                   num_paths=config.sde_paths, alpha=alpha, epsilon=epsilon, dt=config.sde_dt,
                   max_steps=config.sde_max_steps, seed=seed, **extra)
    return {"mean_exit_time": r.mean, "stderr": r.stderr, "exited": r.exited}


def fitted_exponent(epsilons: Sequence[float], times: Sequence[float]) -> float:
    """``−d log τ / d log ε`` by least squares (NaN with fewer than two finite times)."""
    pairs = [(e, t) for e, t in zip(epsilons, times, strict=True) if math.isfinite(t) and t > 0]
    if len(pairs) < 2:
        return math.nan
    return -float(np.polyfit(np.log([e for e, _ in pairs]), np.log([t for _, t in pairs]), 1)[0])


def _adam_like(dynamics: str) -> AdamLike | None:
    if dynamics == "sgd":
        return None
    if dynamics not in ("adam", "adam-no-averaging"):
        raise ArgumentValueError(f"unknown SDE dynamics {dynamics!r}")
    return AdamLike(beta1=ADAM_SDE_RATE, averaging=dynamics == "adam", normalize=True)


def _sde(config: Preset, seed: int, device: torch.device) -> dict[str, Any]:
    """Exit times against ε (per α), against the basin width, and SGD-like vs Adam-like."""
    base = DoubleWell()
    epsilon_rows = [{"alpha": a, "epsilon": e, "theory": levy_exit_time(a, e, (1.0, 1.0)),
                     **_exit(config, base, a, e, seed, device)}
                    for a in config.sde_alphas for e in config.sde_epsilons]
    exponents = {str(a): fitted_exponent(
        [r["epsilon"] for r in epsilon_rows if r["alpha"] == a],
        [r["mean_exit_time"] for r in epsilon_rows if r["alpha"] == a])
        for a in config.sde_alphas}
    width_rows = [{"alpha": WIDTH_ALPHA, "epsilon": config.sde_epsilon, "width": w,
                   "theory": levy_exit_time(WIDTH_ALPHA, config.sde_epsilon, (w, w)),
                   **_exit(config, DoubleWell(width_left=w), WIDTH_ALPHA, config.sde_epsilon,
                           seed, device)}
                  for w in config.sde_widths]
    valley = DoubleWell(stiffness=(SDE_STIFFNESS,))
    scale = torch.tensor(SDE_NOISE_SCALE, dtype=torch.float64, device=device)
    optimizer_rows = []
    for alpha in ESCAPE_ALPHAS:
        eps = config.sde_epsilon if alpha < 2 else GAUSSIAN_EPSILON
        for dynamics in config.sde_dynamics:
            optimizer_rows.append({"alpha": alpha, "epsilon": eps, "dynamics": dynamics,
                                   **_exit(config, valley, alpha, eps, seed, device,
                                           noise="independent", scale=scale,
                                           adam=_adam_like(dynamics))})
    return {"epsilon": epsilon_rows, "exponents": exponents, "width": width_rows,
            "optimizers": optimizer_rows}


def measure(config: Preset, seed: int, device: torch.device) -> dict[str, Any]:
    """One seed: both optimizers to the loss targets, their minima measured, and the SDEs."""
    torch.manual_seed(seed)
    return {**_networks(config, seed, torch.device(device)),
            "sde": _sde(config, seed, torch.device(device))}


# --- criteria (one outcome per seed: True, False, or None = could not test) ---------------------


def _points(records: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(records.get("points", []))


def _pairs(records: Mapping[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(SGD's minimum, Adam's minimum) at every target both reached."""
    by = {(p["optimizer"], p["target"]): p for p in _points(records)}
    targets = sorted({p["target"] for p in _points(records)}, reverse=True)
    return [(by[("sgd", t)], by[("adam", t)]) for t in targets
            if ("sgd", t) in by and ("adam", t) in by]


def _finite(*values: Any) -> bool:
    return all(v is not None and math.isfinite(float(v)) for v in values)


def heavy_tail_outcome(records: Mapping[str, Any]) -> bool | None:
    """Every minimum's noise interval below 2 (None: no minimum reached or no finite α̂)."""
    highs = [p["alpha_sgd_noise"]["high"] for p in _points(records)]
    if not highs or not _finite(*highs):
        return None
    return all(h < HEAVY_TAIL_ALPHA for h in highs)


def lighter_tail_outcome(records: Mapping[str, Any]) -> bool | None:
    """At every minimum, Adam's interval entirely above SGD's (same θ, same draws)."""
    points = _points(records)
    if not points:
        return None
    return all(p["alpha_adam_noise"]["low"] > p["alpha_sgd_noise"]["high"] for p in points)


def escape_law_outcome(records: Mapping[str, Any]) -> bool | None:
    """Exponents within tolerance of α and exit time strictly increasing with the width."""
    sde = records["sde"]
    exponents = {float(a): e for a, e in sde["exponents"].items()}
    widths = [r["mean_exit_time"] for r in sorted(sde["width"], key=lambda r: r["width"])]
    if not exponents or not _finite(*exponents.values(), *widths):
        return None  # a cell where no path left: the regime was not reached
    within = all(abs(e - a) <= EXPONENT_TOL for a, e in exponents.items())
    increasing = all(b > a for a, b in itertools.pairwise(widths))
    return within and increasing


def _escape_pairs(records: Mapping[str, Any]) -> dict[float, tuple[dict, dict]]:
    rows = {(r["alpha"], r["dynamics"]): r for r in records["sde"]["optimizers"]}
    return {a: (rows[(a, "sgd")], rows[(a, "adam")]) for a in ESCAPE_ALPHAS
            if (a, "sgd") in rows and (a, "adam") in rows}


def escape_order_outcome(records: Mapping[str, Any]) -> bool | None:
    """Adam-like exit time above SGD-like by more than ``ESCAPE_Z`` combined standard errors."""
    pairs = _escape_pairs(records)
    if len(pairs) < len(ESCAPE_ALPHAS):
        return None
    results = []
    for sgd, adam in pairs.values():
        if not _finite(sgd["mean_exit_time"], adam["mean_exit_time"], sgd["stderr"],
                       adam["stderr"]):
            return None
        gap = adam["mean_exit_time"] - sgd["mean_exit_time"]
        results.append(gap > ESCAPE_Z * math.hypot(sgd["stderr"], adam["stderr"]))
    return all(results)


def sharper_outcome(records: Mapping[str, Any]) -> bool | None:
    """Adam's sharpness above SGD's at every target both reached."""
    pairs = [(s, a) for s, a in _pairs(records) if _finite(s["sharpness"], a["sharpness"])]
    if not pairs:
        return None
    return all(a["sharpness"] > s["sharpness"] for s, a in pairs)


def accuracy_gap(records: Mapping[str, Any]) -> float | None:
    """Mean over the targets both reached of test accuracy (SGD − Adam); None without a pair."""
    pairs = _pairs(records)
    if not pairs:
        return None
    return float(np.mean([s["test_accuracy"] - a["test_accuracy"] for s, a in pairs]))


def generalization_outcome(records: Mapping[str, Any]) -> bool | None:
    gap = accuracy_gap(records)
    return None if gap is None else gap > ACCURACY_TIE


# --- claims ---------------------------------------------------------------------------------------


def _per_seed(records_by_seed: Mapping[int, Any], fn) -> list[float | None]:
    return [fn(r) for r in records_by_seed.values()]


def _min_or_none(values: Sequence[float]) -> float | None:
    finite = [v for v in values if _finite(v)]
    return min(finite) if finite else None


def _max_or_none(values: Sequence[float]) -> float | None:
    finite = [v for v in values if _finite(v)]
    return max(finite) if finite else None


def _untested_note(records_by_seed: Mapping[int, Any]) -> str:
    missing = [f"seed {s}: {r['optimizer']} {r['status']} at loss {r['final_loss']:.3g}"
               for s, recs in records_by_seed.items() for r in recs.get("runs", [])
               if r["status"] != "target"]
    return ("runs short of the last target: " + "; ".join(missing)) if missing else ""


def claims(records_by_seed: Mapping[int, Any], config: Preset) -> list[Claim]:
    """One claim per spec, each verdict from its per-seed outcomes (see the criteria)."""
    rs = records_by_seed
    note = _untested_note(rs)
    out = []

    def alphas(key: str, which: str, agg):
        return spread(_per_seed(rs, lambda r: agg([p[key][which] for p in _points(r)])))

    out.append(_SPEC["heavy-tails"].judge_per_seed(
        {s: heavy_tail_outcome(r) for s, r in rs.items()},
        {"alpha_hat_max": alphas("alpha_sgd_noise", "alpha", _max_or_none),
         "upper_bound_max": alphas("alpha_sgd_noise", "high", _max_or_none)}, note=note))

    def gaps(r):
        return [p["alpha_adam_noise"]["alpha"] - p["alpha_sgd_noise"]["alpha"]
                for p in _points(r)]

    out.append(_SPEC["adam-lighter-tails"].judge_per_seed(
        {s: lighter_tail_outcome(r) for s, r in rs.items()},
        {"alpha_sgd_mean": spread(_per_seed(rs, lambda r: _mean(
            [p["alpha_sgd_noise"]["alpha"] for p in _points(r)]))),
         "alpha_adam_mean": spread(_per_seed(rs, lambda r: _mean(
             [p["alpha_adam_noise"]["alpha"] for p in _points(r)]))),
         "gap_min": spread(_per_seed(rs, lambda r: _min_or_none(gaps(r))))}, note=note))

    def exponent_error(r):
        errs = [abs(e - float(a)) for a, e in r["sde"]["exponents"].items()]
        return _max_or_none(errs)

    def width_ratio(r):
        w = sorted(r["sde"]["width"], key=lambda x: x["width"])
        return w[-1]["mean_exit_time"] / w[0]["mean_exit_time"] if len(w) > 1 else None

    out.append(_SPEC["escape-time-law"].judge_per_seed(
        {s: escape_law_outcome(r) for s, r in rs.items()},
        {"exponent_error_max": spread(_per_seed(rs, exponent_error)),
         "exit_ratio_widest_over_narrowest": spread(_per_seed(rs, width_ratio))}))

    def escape_ratio(alpha):
        def ratio(r):
            pair = _escape_pairs(r).get(alpha)
            return None if pair is None else pair[1]["mean_exit_time"] / pair[0]["mean_exit_time"]
        return ratio

    out.append(_SPEC["sgd-escapes-faster"].judge_per_seed(
        {s: escape_order_outcome(r) for s, r in rs.items()},
        {f"exit_adam_over_sgd_alpha_{a:g}": spread(_per_seed(rs, escape_ratio(a)))
         for a in ESCAPE_ALPHAS}))

    def sharp_ratio(r):
        return _min_or_none([a["sharpness"] / s["sharpness"] for s, a in _pairs(r)
                             if _finite(s["sharpness"], a["sharpness"]) and s["sharpness"] > 0])

    last = min(config.loss_targets)

    def sharp_at_last(opt):
        def value(r):
            return next((p["sharpness"] for p in _points(r)
                         if p["optimizer"] == opt and p["target"] == last), None)
        return value

    out.append(_SPEC["adam-sharper"].judge_per_seed(
        {s: sharper_outcome(r) for s, r in rs.items()},
        {"sharpness_ratio_adam_over_sgd_min": spread(_per_seed(rs, sharp_ratio)),
         f"sharpness_sgd_at_{last:g}": spread(_per_seed(rs, sharp_at_last("sgd"))),
         f"sharpness_adam_at_{last:g}": spread(_per_seed(rs, sharp_at_last("adam")))},
        note=note))
    out.append(_SPEC["sgd-generalizes-better"].judge_per_seed(
        {s: generalization_outcome(r) for s, r in rs.items()},
        {"test_accuracy_sgd_minus_adam": spread(_per_seed(rs, accuracy_gap))}, note=note))
    return out


def _mean(values: Sequence[float]) -> float | None:
    finite = [v for v in values if _finite(v)]
    return float(np.mean(finite)) if finite else None


def summary(records_by_seed: Mapping[int, Any], config: Preset) -> dict[str, Any]:
    """The required top-level keys: ``final_loss`` and ``status`` per optimizer (per seed),
    the loss targets and ``standardization``."""
    def per_optimizer(key: str) -> dict[str, list[Any]]:
        return {opt: [next((r[key] for r in recs["runs"] if r["optimizer"] == opt), None)
                      for recs in records_by_seed.values()] for opt in OPTIMIZERS}

    return {"final_loss": per_optimizer("final_loss"), "status": per_optimizer("status"),
            "loss_targets": list(config.loss_targets), "standardization": "per-coordinate"}
