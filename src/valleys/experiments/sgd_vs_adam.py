r"""Reproduction of Zhou et al. (NeurIPS 2020): why SGD generalizes better than Adam.

**Claims** (abstract of arXiv 2010.05627; details of the theorems were not available, see
``shared/reference/implicit-bias.md``, paper 3):

* (1) the gradient noise of SGD and of Adam is heavy-tailed (α-stable with α < 2);
* (2) Adam's exponential averaging and coordinate-wise preconditioning make its effective noise
  lighter-tailed than SGD's: ``α_SGD < α_Adam``;
* (3) escaping a basin takes a time that grows with the basin's Radon measure (its width) and
  shrinks as the tails get heavier, polynomially in the noise scale (``∝ ε^{−α}``); SGD-like
  dynamics escape faster than Adam-like ones;
* (4) hence Adam ends in sharper minima than SGD (4a) and generalizes worse (4b).

**Experiment.** (i) Networks: the same ReLU MLP on MNIST-1D and on digits (``valleys.data``),
cross-entropy, mini-batches of ``B`` without replacement, float64. "Comparable tuning": each
optimizer gets the same number of steps and a learning-rate grid of the same size around its
customary value; the run with the lowest final *training* loss is selected (a rule on training
data only, fixed before any run). Along the selected runs, at evenly spaced checkpoints, the
tail index of (SGD) the mini-batch gradient noise ``g_b − g`` and (Adam) Adam's effective noise
``P^{-1} m_ξ`` (preconditioned with Adam's own ``v̂`` at that step and averaged with ``β₁``), both
flattened to scalars over the parameters as in Şimşekli et al. (2019); for Adam also the raw
and only-preconditioned noise, to separate the two mechanisms. At the solutions: sharpness,
non-uniformity (``valleys.sharpness``) and test accuracy. (ii) SDEs (``valleys.sde``): mean exit
time from the left basin of a double well against ε for several α (power-law exponents), against
the basin width, and for SGD-like vs Adam-like dynamics with anisotropic noise.

**Resumable.** The work is split into units run by :func:`valleys.sweeps.run_sweep` into the
SQLite store ``out/runs.sqlite``, each committed atomically: stage ``train``, one unit per
(dataset, optimizer, η) storing the final training loss and status (what the selection needs);
stage ``analysis``, one unit per (dataset, optimizer) for the selected η, storing that run's
row and its tail indices along training; stage ``sde``, one unit per exit-time estimate. A
killed run restarts where it was: finished units are read back, the others (and failed ones)
computed, and the summary is the same as an uninterrupted run's. Parameter snapshots and Adam's
``v̂`` are not stored (megabytes per run in the full preset): the analysis unit replays the
selected training run, which is deterministic (same seed, data, initialization and thread
count) and is checked to reproduce the stored final loss exactly. The price is one extra
training run per (dataset, optimizer): +1/len(grid) of the training time (4 short runs, about
2 s, in the quick preset; +20 % of the training in the full one).

Verdict rules are the constants and ``_verdict_*`` functions below, written before any run.
"""

from __future__ import annotations

import functools
import itertools
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from valleys.experiments.common import format_cell, markdown_table, torch_threads
from valleys.experiments.output import OutputFolder

__all__ = ["NAME", "PRESETS", "Preset", "analysis_unit", "run", "sde_unit", "train_unit"]

NAME = "sgd-vs-adam"

PAPER = (
    "Zhou, Feng, Ma, Xiong, Hoi & E, \"Towards theoretically understanding why SGD generalizes "
    "better than ADAM in deep learning\", NeurIPS 2020"
)

# Verdict thresholds, fixed before any run.
ACCURACY_TIE = 0.005  # test accuracies within half a point count as a tie
EXPONENT_TOL = 0.2  # fitted exit-time exponent within 0.2 of α
GAUSSIAN_EPSILON = 0.55  # α = 2 comparison of SGD-like and Adam-like: ΔV/ε² ≈ 3.3


@dataclass(frozen=True)
class Preset:
    """Everything that sizes the reproduction.

    Attributes:
        datasets: ``"mnist1d"`` and/or ``"digits"``.
        n_train: training samples used (the first ``n_train`` of the seeded split).
        mnist1d_samples: MNIST-1D samples generated (train + test, 80/20).
        hidden: hidden widths of the MLP.
        steps, batch_size: training length and mini-batch size (same for both optimizers).
        sgd_lrs, adam_lrs: learning-rate grids (same size; selection by final training loss).
        checkpoints: tail-index measurements along training (evenly spaced, the last at the end).
        noise_batches: mini-batches drawn per measurement; max_scalars: coordinates subsampled
            so that at most this many scalars enter one estimate; bootstrap: resamples.
        beta1: Adam's β₁ (averaging); record_every: loss records.
        sde_*: the SDE experiments (paths, step, ε grids, α grid, widths, depths, step cap).
        threads: torch threads inside each unit of work (``None``: leave torch's default).
        executor: how :func:`~valleys.sweeps.run_sweep` runs the units (``"serial"`` or
            ``"process"``); it does not change any number.
    """

    datasets: tuple[str, ...]
    n_train: int
    mnist1d_samples: int
    hidden: tuple[int, ...]
    steps: int
    batch_size: int
    sgd_lrs: tuple[float, ...]
    adam_lrs: tuple[float, ...]
    checkpoints: int
    noise_batches: int
    max_scalars: int
    bootstrap: int
    beta1: float
    record_every: int
    sde_paths: int
    sde_dt: float
    sde_alphas: tuple[float, ...]
    sde_epsilons: tuple[float, ...]
    sde_widths: tuple[float, ...]
    sde_depths: tuple[float, ...]
    sde_epsilon: float
    sde_max_steps: int
    threads: int | None = 1
    executor: str = "serial"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, Preset] = {
    # CI: about a minute on two CPU cores.
    "quick": Preset(
        datasets=("mnist1d", "digits"), n_train=512, mnist1d_samples=1000, hidden=(64,),
        steps=1200, batch_size=32, sgd_lrs=(0.05, 0.2), adam_lrs=(1e-3, 4e-3), checkpoints=3,
        noise_batches=120, max_scalars=150_000, bootstrap=30, beta1=0.9, record_every=100,
        sde_paths=200, sde_dt=0.01, sde_alphas=(1.2, 1.5, 1.8), sde_epsilons=(0.4, 0.28, 0.2),
        sde_widths=(0.7, 1.0, 1.4), sde_depths=(0.5, 1.0, 2.0), sde_epsilon=0.2, sde_max_steps=6000,
    ),
    # The fuller picture: tens of minutes on two cores (not yet run to completion).
    "full": Preset(
        datasets=("mnist1d", "digits"), n_train=1438, mnist1d_samples=5000, hidden=(128, 128),
        steps=10_000, batch_size=32, sgd_lrs=(0.025, 0.05, 0.1, 0.2, 0.4),
        adam_lrs=(2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3), checkpoints=8, noise_batches=400,
        max_scalars=400_000, bootstrap=100, beta1=0.9, record_every=250,
        sde_paths=1000, sde_dt=0.005, sde_alphas=(1.1, 1.3, 1.5, 1.7, 1.9),
        sde_epsilons=(0.3, 0.2, 0.14, 0.1), sde_widths=(0.5, 0.7, 1.0, 1.4, 2.0),
        sde_depths=(0.25, 0.5, 1.0, 2.0, 4.0),
        sde_epsilon=0.14, sde_max_steps=100_000, executor="process",
    ),
}


# --- networks -----------------------------------------------------------------------------------


def _dataset(name: str, p: Preset | SimpleNamespace, seed: int):
    """``((X_train, y_train), (X_test, y_test))``, the first ``p.n_train`` training samples."""
    return _load(name, p.mnist1d_samples, p.n_train, seed)


# Units of one dataset run one after another in a process; generating MNIST-1D costs about as
# much as a quick training run, so each process keeps the last few datasets (read-only).
@functools.lru_cache(maxsize=4)
def _load(name: str, mnist1d_samples: int, n_train: int, seed: int):
    from valleys import data

    if name == "mnist1d":
        ds = data.load_mnist1d(mnist1d_samples, seed=seed, dtype=torch.float64)
    elif name == "digits":
        ds = data.load_digits(seed=seed, dtype=torch.float64)
    else:
        raise ValueError(f"unknown dataset {name!r}; use 'mnist1d' or 'digits'")
    n = min(n_train, ds.X_train.shape[0])
    return (ds.X_train[:n].contiguous(), ds.y_train[:n].contiguous()), (ds.X_test, ds.y_test)


def _objective(train_data, p: Preset | SimpleNamespace, seed: int):
    from valleys import Objective
    from valleys.models import MLP

    widths = (train_data[0].shape[1], *p.hidden, 10)
    model = MLP(widths, "relu", seed=seed).double().eval()
    return Objective(model, "ce", train_data)


class _Checkpoints:
    """Callback: θ at the checkpoint steps and, for Adam, its bias-corrected ``v̂`` there."""

    def __init__(self, marks: set[int]) -> None:
        self.marks = marks
        self.thetas: dict[int, torch.Tensor] = {}
        self.second_moments: dict[int, torch.Tensor] = {}
        self.context = None

    def setup(self, context) -> None:
        self.context = context

    def __call__(self, step: int, theta: torch.Tensor) -> None:
        if step not in self.marks:
            return
        self.thetas[step] = theta.clone()
        optimizer, param = self.context.optimizer, self.context.param
        state = optimizer.state.get(param, {})
        if "exp_avg_sq" in state:  # torch's denominator is sqrt(v / (1 − β₂^t)) + eps
            beta2 = optimizer.param_groups[0]["betas"][1]
            correction = 1.0 - beta2 ** float(state["step"])
            self.second_moments[step] = state["exp_avg_sq"].detach() / correction


def _train(obj, optimizer: str, lr: float, p: Preset, seed: int):
    """Train from the shared initialization, keeping θ (and Adam's v̂) at the checkpoints."""
    from valleys.train import train

    every = p.record_every
    grid = np.linspace(0, p.steps, p.checkpoints + 1)[1:]
    keep = _Checkpoints({round(float(s) / every) * every for s in grid})
    result = train(obj, optimizer=optimizer, lr=lr, steps=p.steps, batch_size=p.batch_size,
                   sampling="subset", seed=seed, record_every=every, callbacks=[keep])
    return result, keep


def _flat_scalars(samples: torch.Tensor, p: Preset, seed: int) -> torch.Tensor:
    """Noise samples ``(T, dim)`` flattened to scalars, on a seeded subset of coordinates."""
    T, dim = samples.shape
    cols = max(1, min(dim, p.max_scalars // T))
    if cols < dim:
        keep = torch.randperm(dim, generator=torch.Generator().manual_seed(seed))[:cols]
        samples = samples[:, keep]
    return samples.reshape(-1)


def _tail(samples: torch.Tensor, p: Preset, seed: int) -> dict[str, Any]:
    from valleys.noise import tail_index

    r = tail_index(_flat_scalars(samples, p, seed), num_bootstrap=p.bootstrap, seed=seed)
    return {"alpha": r.alpha, "low": r.interval[0], "high": r.interval[1], "n": r.n_used}


def _noise_tails(obj, theta, optimizer: str, p: Preset, seed: int,
                 v: torch.Tensor | None = None) -> dict[str, Any]:
    """Tail indices of the noise at θ; for Adam, preconditioned with ``v`` (its own v̂ at that
    step), or with the stationary second moment at θ when the optimizer had no state."""
    from valleys.noise import adam_noise_samples, minibatch_noise, stationary_second_moment

    xi = minibatch_noise(obj, theta, batch_size=p.batch_size, num_batches=p.noise_batches,
                         seed=seed)
    out = {"raw": _tail(xi, p, seed)}
    if optimizer == "adam":
        if v is None:
            v = stationary_second_moment(obj, theta, batch_size=p.batch_size)
        out["preconditioned"] = _tail(adam_noise_samples(xi, v, average=False), p, seed)
        out["effective"] = _tail(adam_noise_samples(xi, v, beta1=p.beta1), p, seed)
    else:
        out["effective"] = out["raw"]
    return out


def _curvature(obj, theta) -> dict[str, float]:
    from valleys.sharpness import nonuniformity, sharpness

    obj.set_parameters(theta)  # the experiment's own model: the analysis point
    out = {}
    for key, fn in (("sharpness", sharpness), ("nonuniformity", nonuniformity)):
        try:
            out[key] = fn(obj, tol=1e-3)
        except RuntimeError:  # Lanczos budget exhausted: recorded, not fatal
            out[key] = math.nan
    return out


def _accuracy(obj, theta, test_data) -> float:
    from valleys import Objective

    test = Objective(obj.model, "ce", test_data)
    return test.accuracy(theta)


# --- units of work (module level: the process executor sends them to workers) -----------------
#
# Stage "train": one unit per (dataset, optimizer, lr), storing what the selection needs.
# Stage "analysis": one unit per (dataset, optimizer) for the selected lr; it replays that
# training run (deterministic: same seed, same thread count, checked against the stored final
# loss) to get its parameter snapshots and Adam's v̂ back instead of storing them, then measures.
# Stage "sde": one unit per exit-time estimate. Each config holds every field its result
# depends on, so a changed preset never reuses a stale result.

TRAIN_FIELDS = ("n_train", "mnist1d_samples", "hidden", "steps", "batch_size", "checkpoints",
                "record_every", "threads")
ANALYSIS_FIELDS = (*TRAIN_FIELDS, "noise_batches", "max_scalars", "bootstrap", "beta1")
SDE_FIELDS = ("sde_paths", "sde_dt", "sde_max_steps", "threads")


def _fields(p: Preset, names: tuple[str, ...]) -> dict[str, Any]:
    """The preset fields ``names`` as JSON values (tuples as lists), for a unit's config."""
    return {k: list(getattr(p, k)) if isinstance(getattr(p, k), tuple) else getattr(p, k)
            for k in names}


def _settings(config: dict[str, Any]) -> SimpleNamespace:
    """A unit's config with attribute access, standing in for the preset in the helpers."""
    return SimpleNamespace(**config)


def train_unit(config: dict[str, Any]) -> dict[str, Any]:
    """Stage "train": one run of the learning-rate grid; its final training loss and status.

    Args:
        config: ``dataset``, ``optimizer``, ``lr``, ``seed`` and the :data:`TRAIN_FIELDS`.

    Returns:
        ``train_status``, ``final_loss``, ``steps`` and ``diverged`` (the sweep records a
        diverged run as ``"diverged"`` and goes on).
    """
    p, seed = _settings(config), config["seed"]
    with torch_threads(config["threads"]):
        train_data, _ = _dataset(config["dataset"], p, seed)
        obj = _objective(train_data, p, seed)
        result, _ = _train(obj, config["optimizer"], config["lr"], p, seed)
    return {"train_status": result.status, "final_loss": result.final_loss,
            "steps": result.steps, "diverged": result.status == "diverged"}


def analysis_unit(config: dict[str, Any]) -> dict[str, Any]:
    """Stage "analysis": replay the selected run, then tail indices, curvature and accuracy.

    Args:
        config: ``dataset``, ``optimizer``, the selected ``lr``, its stored ``final_loss``,
            ``seed`` and the :data:`ANALYSIS_FIELDS`.

    Returns:
        ``run`` (the row of the selected run) and ``trajectory`` (one row per checkpoint and
        kind of noise).

    Raises:
        RuntimeError: If the replay does not reproduce the stored final loss exactly (the
            snapshots would then belong to another trajectory); the sweep records a failure.
    """
    p, seed = _settings(config), config["seed"]
    ds, optimizer, lr = config["dataset"], config["optimizer"], config["lr"]
    with torch_threads(config["threads"]):
        train_data, test_data = _dataset(ds, p, seed)
        obj = _objective(train_data, p, seed)
        result, kept = _train(obj, optimizer, lr, p, seed)
        if result.final_loss != config["final_loss"]:
            raise RuntimeError(
                f"replaying {ds}/{optimizer} at lr={lr} gave final loss {result.final_loss!r}, "
                f"not the stored {config['final_loss']!r}: training is not deterministic here "
                "(thread count or library changed?); delete runs.sqlite and run again")
        trajectory, tails = [], {}
        for step in sorted(kept.thetas):
            tails[step] = _noise_tails(obj, kept.thetas[step], optimizer, p, seed + step,
                                       kept.second_moments.get(step))
            for kind, t in tails[step].items():
                trajectory.append({"dataset": ds, "optimizer": optimizer, "step": step,
                                   "noise": kind, "alpha_hat": t["alpha"],
                                   "low": t["low"], "high": t["high"]})
        if not tails:  # no checkpoint reached (cannot happen without divergence): recorded
            tails[result.steps] = _noise_tails(obj, result.theta, optimizer, p, seed)
        final = tails[max(tails)]
        theta = result.theta
        curv = _curvature(obj, theta)
        last = result.records[-1]
        run = {
            "dataset": ds, "optimizer": optimizer, "lr": lr, "status": result.status,
            "alpha_hat": final["effective"]["alpha"],
            "alpha_hat_interval": [final["effective"]["low"], final["effective"]["high"]],
            "alpha_hat_raw": final["raw"]["alpha"],
            "alpha_hat_raw_interval": [final["raw"]["low"], final["raw"]["high"]],
            "alpha_hat_preconditioned": final.get("preconditioned", final["raw"])["alpha"],
            "alpha_hat_along_training": [tails[s]["effective"]["alpha"] for s in sorted(tails)],
            "sharpness": curv["sharpness"], "nonuniformity": curv["nonuniformity"],
            "test_accuracy": _accuracy(obj, theta, test_data),
            "train_accuracy": last.get("accuracy", math.nan),
            "train_loss": result.final_loss, "steps": result.steps,
        }
    return {"run": run, "trajectory": trajectory}


def sde_unit(config: dict[str, Any]) -> dict[str, Any]:
    """Stage "sde": one mean exit time from the left basin (``valleys.sde.exit_times``).

    Args:
        config: ``part`` (``"epsilon"``, ``"width"``, ``"depth"`` or ``"optimizers"``),
            ``alpha``, ``epsilon``, the part's ``width`` / ``depth`` / ``dynamics``, ``seed``
            and the :data:`SDE_FIELDS`.

    Returns:
        ``mean_exit_time``, ``stderr``, ``exited`` and (but for ``"optimizers"``) the
        small-noise ``theory`` 1/(ε^α m(W)).
    """
    from valleys.sde import AdamLike, DoubleWell, exit_times, levy_exit_time

    part, alpha, eps = config["part"], config["alpha"], config["epsilon"]
    common = {"num_paths": config["sde_paths"], "alpha": alpha, "epsilon": eps,
              "dt": config["sde_dt"], "max_steps": config["sde_max_steps"],
              "seed": config["seed"]}
    half_width = 1.0
    with torch_threads(config["threads"]):
        if part == "optimizers":
            # SGD-like vs Adam-like: 2-D valley, noise strongest along the escape direction.
            well = DoubleWell(stiffness=(4.0,))
            scale = torch.tensor([1.0, 0.25], dtype=torch.float64)
            adam = {"sgd": None,
                    "adam": AdamLike(beta1=10.0, averaging=True, normalize=True),
                    "adam-no-averaging": AdamLike(beta1=10.0, averaging=False, normalize=True),
                    }[config["dynamics"]]
            common.update(noise="independent", scale=scale, adam=adam)
        elif part == "width":
            half_width = config["width"]
            well = DoubleWell(width_left=half_width)
        elif part == "depth":
            well = DoubleWell(depth_left=config["depth"])
        elif part == "epsilon":
            well = DoubleWell()
        else:
            raise ValueError(f"unknown SDE part {part!r}")
        r = exit_times(well.grad, well.left_minimum(), well.basin(), **common)
    out = {"mean_exit_time": r.mean, "stderr": r.stderr, "exited": r.exited}
    if part != "optimizers":
        out["theory"] = levy_exit_time(alpha, eps, (half_width, half_width))
    return out


# --- the sweeps, and the rows assembled from their records --------------------------------------


def _sweep(store, fn, configs: list[dict[str, Any]], name: str, p: Preset,
           progress: bool) -> tuple[list[dict[str, Any]], int]:
    """Run the units of ``configs`` not yet done (or diverged) in ``store``, failed ones again.

    Returns:
        The records in config order, and how many units were computed in this call.
    """
    from valleys.sweeps import run_id, run_sweep

    if not configs:
        return [], 0
    finished = store.statuses(name)
    todo = sum(finished.get(run_id(c, name)) not in ("done", "diverged") for c in configs)
    executor = p.executor if todo > 1 else "serial"
    run_sweep(fn, configs, store, name=name, executor=executor, progress=progress,
              retry_failed=True)
    by_id = {rec["run_id"]: rec for rec in store.records(name)}
    return [by_id[run_id(c, name)] for c in configs], todo


def _train_configs(p: Preset, seed: int) -> list[dict[str, Any]]:
    fields = _fields(p, TRAIN_FIELDS)
    return [{"dataset": ds, "optimizer": optimizer, "lr": lr, "seed": seed, **fields}
            for ds in p.datasets
            for optimizer, lrs in (("sgd", p.sgd_lrs), ("adam", p.adam_lrs)) for lr in lrs]


def _tuning(records: list[dict[str, Any]]) -> tuple[list[dict], dict[tuple[str, str], dict]]:
    """The learning-rate table and, per (dataset, optimizer), the selected row.

    The rule, fixed before any run: the lowest final training loss among the runs that neither
    diverged nor failed (the first in grid order on a tie). A pair without such a run has no
    selection (and no ``selected`` column).
    """
    tuning, candidates = [], {}
    for rec in records:
        c, m = rec["config"], rec["metrics"] or {}
        row = {"dataset": c["dataset"], "optimizer": c["optimizer"], "lr": c["lr"],
               "status": m.get("train_status", rec["status"]),
               "final_loss": m.get("final_loss", math.nan)}
        tuning.append(row)
        candidates.setdefault((c["dataset"], c["optimizer"]), []).append(row)
    selected = {}
    for pair, rows in candidates.items():
        finite = [r for r in rows if r["status"] not in ("diverged", "failed")
                  and math.isfinite(r["final_loss"])]
        if not finite:
            continue
        best = min(finite, key=lambda r: r["final_loss"])
        for r in rows:
            r["selected"] = r["lr"] == best["lr"]
        selected[pair] = best
    return tuning, selected


def _analysis_configs(p: Preset, seed: int,
                      selected: dict[tuple[str, str], dict]) -> list[dict[str, Any]]:
    fields = _fields(p, ANALYSIS_FIELDS)
    return [{"dataset": ds, "optimizer": optimizer, "lr": best["lr"],
             "final_loss": best["final_loss"], "seed": seed, **fields}
            for (ds, optimizer), best in selected.items()]


def _missing_run(ds: str, optimizer: str, status: str) -> dict[str, Any]:
    """The row of a pair with no measurement (every run diverged, or its analysis failed)."""
    return {"dataset": ds, "optimizer": optimizer, "status": status, "alpha_hat": math.nan,
            "alpha_hat_interval": [math.nan, math.nan], "sharpness": math.nan,
            "nonuniformity": math.nan, "test_accuracy": math.nan}


def _network_rows(p: Preset, analysed: list[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """The selected runs (one per dataset and optimizer) and the tail indices along training."""
    by_pair = {(r["config"]["dataset"], r["config"]["optimizer"]): r for r in analysed}
    runs, trajectory = [], []
    for ds in p.datasets:
        for optimizer in ("sgd", "adam"):
            rec = by_pair.get((ds, optimizer))
            if rec is None:  # no selection: every run of the grid diverged (or failed)
                runs.append(_missing_run(ds, optimizer, "diverged"))
            elif rec["status"] != "done":
                runs.append({**_missing_run(ds, optimizer, rec["status"]),
                             "lr": rec["config"]["lr"]})
            else:
                runs.append(rec["metrics"]["run"])
                trajectory.extend(rec["metrics"]["trajectory"])
    return runs, trajectory


def _sde_configs(p: Preset, seed: int) -> list[dict[str, Any]]:
    base = {"seed": seed, **_fields(p, SDE_FIELDS)}
    alpha_w = 1.5
    configs = [{"part": "epsilon", "alpha": alpha, "epsilon": eps, **base}
               for alpha in p.sde_alphas for eps in p.sde_epsilons]
    configs += [{"part": "width", "alpha": alpha_w, "epsilon": p.sde_epsilon, "width": w, **base}
                for w in p.sde_widths]
    # Depth: for α < 2 the small-noise law does not involve the depth at all (m(W) counts
    # jumps, not barriers); recorded as information, no verdict.
    configs += [{"part": "depth", "alpha": alpha_w, "epsilon": p.sde_epsilon, "depth": h, **base}
                for h in p.sde_depths]
    configs += [{"part": "optimizers", "alpha": alpha,
                 "epsilon": p.sde_epsilon if alpha < 2 else GAUSSIAN_EPSILON,
                 "dynamics": name, **base}
                for alpha in (1.5, 2.0) for name in ("sgd", "adam", "adam-no-averaging")]
    return configs


# The columns of each part's table that come from the config.
_SDE_KEYS = {"epsilon": ("alpha", "epsilon"), "width": ("alpha", "width"),
             "depth": ("alpha", "depth"), "optimizers": ("alpha", "epsilon", "dynamics")}


def _sde_results(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The exit-time tables (a failed unit gives NaNs) and the fitted exponents."""
    parts: dict[str, list[dict]] = {part: [] for part in _SDE_KEYS}
    for rec in records:
        c, m = rec["config"], rec["metrics"] or {}
        row = {k: c[k] for k in _SDE_KEYS[c["part"]]}
        row.update(mean_exit_time=m.get("mean_exit_time", math.nan),
                   stderr=m.get("stderr", math.nan), exited=m.get("exited"))
        if c["part"] != "optimizers":
            row["theory"] = m.get("theory", math.nan)
        parts[c["part"]].append(row)
    exponents = {}  # −d log τ / d log ε, least squares over the finite means
    for alpha in dict.fromkeys(r["alpha"] for r in parts["epsilon"]):
        ok = [(r["epsilon"], r["mean_exit_time"]) for r in parts["epsilon"]
              if r["alpha"] == alpha and math.isfinite(r["mean_exit_time"])]
        exponents[str(alpha)] = (
            -float(np.polyfit(np.log([e for e, _ in ok]), np.log([m for _, m in ok]), 1)[0])
            if len(ok) >= 2 else math.nan)
    return {"epsilon": parts["epsilon"], "exponents": exponents, "width": parts["width"],
            "depth": parts["depth"], "optimizers": parts["optimizers"]}


def _network_part(store, p: Preset, seed: int, progress: bool) -> dict[str, Any]:
    """Stages ``train`` then ``analysis`` in ``store``: the runs, tuning and tail-index rows."""
    trained, n_train = _sweep(store, train_unit, _train_configs(p, seed), f"{NAME}/train", p,
                              progress)
    tuning, selected = _tuning(trained)
    analysed, n_analysis = _sweep(store, analysis_unit, _analysis_configs(p, seed, selected),
                                  f"{NAME}/analysis", p, progress)
    runs, trajectory = _network_rows(p, analysed)
    return {"runs": runs, "tuning": tuning, "trajectory": trajectory,
            "records": trained + analysed, "computed": {"train": n_train, "analysis": n_analysis}}


def _compute(folder: OutputFolder, p: Preset, seed: int, progress: bool) -> dict[str, Any]:
    """Run (or resume) the three sweeps in ``folder/runs.sqlite`` and assemble their rows."""
    from valleys.sweeps import ResultsStore

    store = ResultsStore(folder.file("runs.sqlite"))
    net = _network_part(store, p, seed, progress)
    sde_records, n_sde = _sweep(store, sde_unit, _sde_configs(p, seed), f"{NAME}/sde", p,
                                progress)
    records = net["records"] + sde_records
    units = {
        "store": "runs.sqlite",
        "total": len(records),
        "computed_this_call": {**net["computed"], "sde": n_sde},
        "failed": [{"sweep": r["sweep"], "config": r["config"],
                    "error": (r["error"] or "").strip().splitlines()[-1:]}
                   for r in records if r["status"] == "failed"],
    }
    return {"runs": net["runs"], "tuning": net["tuning"], "trajectory": net["trajectory"],
            "sde": _sde_results(sde_records), "units": units}


# --- verdicts (fixed before running) ------------------------------------------------------------


def _grade(flags: list[bool]) -> str:
    if not flags:
        return "not tested"
    return "agrees" if all(flags) else ("partly agrees" if any(flags) else "disagrees")


def _verdict_heavy_tails(runs: list[dict]) -> dict[str, Any]:
    flags = [r["alpha_hat_interval"][1] < 2.0 for r in runs if math.isfinite(r["alpha_hat"])]
    return {"claim": "gradient noise of SGD and Adam is heavy-tailed (interval below 2)",
            "verdict": _grade(flags), "heavy": flags}


def _pairs(runs: list[dict]) -> list[tuple[dict, dict]]:
    by = {(r["dataset"], r["optimizer"]): r for r in runs}
    return [(by[(d, "sgd")], by[(d, "adam")]) for d in dict.fromkeys(r["dataset"] for r in runs)
            if (d, "sgd") in by and (d, "adam") in by]


def _verdict_tails_order(runs: list[dict]) -> dict[str, Any]:
    pairs = _pairs(runs)
    separated = [s["alpha_hat_interval"][1] < a["alpha_hat_interval"][0] for s, a in pairs]
    ordered = [s["alpha_hat"] < a["alpha_hat"] for s, a in pairs]
    if pairs and all(separated):
        verdict = "agrees"
    elif pairs and all(ordered):
        verdict = "partly agrees"  # ordered, but the intervals overlap somewhere
    elif any(ordered):
        verdict = "partly agrees"
    else:
        verdict = "disagrees" if pairs else "not tested"
    return {"claim": "α_SGD < α_Adam (Adam's effective noise is lighter-tailed)",
            "verdict": verdict, "separated": separated, "ordered": ordered}


def _verdict_sharpness(runs: list[dict]) -> dict[str, Any]:
    flags = [a["sharpness"] > s["sharpness"] for s, a in _pairs(runs)]
    return {"claim": "Adam's solutions are sharper than SGD's", "verdict": _grade(flags),
            "adam_sharper": flags}


def _verdict_accuracy(runs: list[dict]) -> dict[str, Any]:
    pairs = _pairs(runs)
    diffs = [s["test_accuracy"] - a["test_accuracy"] for s, a in pairs]
    better = [d > ACCURACY_TIE for d in diffs]
    worse = [d < -ACCURACY_TIE for d in diffs]
    if pairs and all(better):
        verdict = "agrees"
    elif pairs and all(worse):
        verdict = "disagrees"
    elif pairs:
        verdict = "partly agrees" if any(better) else "inconclusive"
    else:
        verdict = "not tested"
    return {"claim": "SGD generalizes better than Adam (test accuracy)", "verdict": verdict,
            "sgd_minus_adam": diffs, "tie": ACCURACY_TIE}


def _verdict_sde(sde: dict[str, Any]) -> dict[str, Any]:
    exps = {float(a): e for a, e in sde["exponents"].items()}
    exponent_ok = [abs(e - a) <= EXPONENT_TOL for a, e in exps.items() if math.isfinite(e)]
    widths = [r["mean_exit_time"] for r in sde["width"]]
    width_ok = all(b > a for a, b in itertools.pairwise(widths))
    by = {(r["alpha"], r["dynamics"]): r["mean_exit_time"] for r in sde["optimizers"]}
    adam_slower = [by[(a, "adam")] > by[(a, "sgd")] for a in {r["alpha"] for r in
                                                               sde["optimizers"]}]
    flags = [all(exponent_ok) and bool(exponent_ok), width_ok, all(adam_slower)]
    return {"claim": "exit time ∝ ε^{−α}, grows with basin width, Adam-like escapes slower",
            "verdict": _grade(flags), "exponent_within_tol": exponent_ok,
            "grows_with_width": width_ok, "adam_slower": adam_slower,
            "exponent_tol": EXPONENT_TOL}


# --- figures and report -------------------------------------------------------------------------


def _figures(folder: OutputFolder, runs, trajectory, sde) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in runs))
    fig, axes = plt.subplots(1, max(1, len(datasets)), figsize=(5 * max(1, len(datasets)), 3.6),
                             squeeze=False)
    styles = {("sgd", "raw"): ("tab:blue", "-", "SGD: g_b − g"),
              ("adam", "raw"): ("tab:orange", ":", "Adam: g_b − g"),
              ("adam", "preconditioned"): ("tab:orange", "--", "Adam: P⁻¹ξ"),
              ("adam", "effective"): ("tab:red", "-", "Adam: P⁻¹ EMA(ξ)")}
    for ax, ds in zip(axes[0], datasets, strict=False):
        for (opt, kind), (color, ls, label) in styles.items():
            pts = [t for t in trajectory if t["dataset"] == ds and t["optimizer"] == opt
                   and t["noise"] == kind]
            if not pts:
                continue
            steps = [t["step"] for t in pts]
            ax.plot(steps, [t["alpha_hat"] for t in pts], ls, color=color, marker="o",
                    label=label)
            ax.fill_between(steps, [t["low"] for t in pts], [t["high"] for t in pts],
                            color=color, alpha=0.12)
        ax.axhline(2.0, color="k", lw=0.8, ls=":")
        ax.set(title=ds, xlabel="step", ylabel="tail index α̂")
        ax.legend(fontsize=7)
    fig.tight_layout()
    folder.save_figure(fig, "tail_index")

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for alpha in dict.fromkeys(r["alpha"] for r in sde["epsilon"]):
        rows = [r for r in sde["epsilon"] if r["alpha"] == alpha]
        eps = [r["epsilon"] for r in rows]
        line = axes[0].loglog(eps, [r["mean_exit_time"] for r in rows], "o-",
                              label=f"α={alpha} (fit {sde['exponents'][str(alpha)]:.2f})")
        axes[0].loglog(eps, [r["theory"] for r in rows], "--", color=line[0].get_color(),
                       lw=0.8)
    axes[0].set(xlabel="ε", ylabel="mean exit time", title="exit time vs ε (dashed: 1/(ε^α m(W)))")
    axes[0].legend(fontsize=7)
    w = sde["width"]
    axes[1].loglog([r["width"] for r in w], [r["mean_exit_time"] for r in w], "o-",
                   label="simulated")
    axes[1].loglog([r["width"] for r in w], [r["theory"] for r in w], "--", label="theory")
    axes[1].set(xlabel="basin half-width a", ylabel="mean exit time",
                title=f"exit time vs width (α={w[0]['alpha'] if w else '?'})")
    axes[1].legend(fontsize=7)
    rows = sde["optimizers"]
    labels = [f"{r['dynamics']}\nα={r['alpha']}" for r in rows]
    axes[2].bar(range(len(rows)), [r["mean_exit_time"] for r in rows],
                yerr=[r["stderr"] for r in rows], color="tab:gray")
    axes[2].set_xticks(range(len(rows)), labels, fontsize=6, rotation=30)
    axes[2].set(ylabel="mean exit time", title="SGD-like vs Adam-like")
    fig.tight_layout()
    folder.save_figure(fig, "exit_times")

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key in zip(axes, ("sharpness", "test_accuracy"), strict=True):
        for j, opt in enumerate(("sgd", "adam")):
            vals = [next((r[key] for r in runs if r["dataset"] == d and r["optimizer"] == opt),
                         math.nan) for d in datasets]
            ax.bar(np.arange(len(datasets)) + 0.4 * j, vals, width=0.4, label=opt)
        ax.set_xticks(np.arange(len(datasets)) + 0.2, datasets)
        ax.set(title=key, yscale="log" if key == "sharpness" else "linear")
        ax.legend(fontsize=7)
    fig.tight_layout()
    folder.save_figure(fig, "solutions")


def _fmt(x: Any) -> str:
    if isinstance(x, dict):  # results keyed by the tail index α
        return ", ".join(f"α={k}: {format_cell(v)}" for k, v in x.items())
    return format_cell(x)


def _report(s: dict[str, Any]) -> str:
    p, h = s["preset_config"], s["headline"]
    runs_table = markdown_table(s["runs"], (
        "dataset", "optimizer", "lr", "alpha_hat", "alpha_hat_interval", "alpha_hat_raw",
        "alpha_hat_preconditioned", "sharpness", "nonuniformity", "test_accuracy",
        "train_loss"))
    tuning_table = markdown_table(
        s["tuning"], ("dataset", "optimizer", "lr", "status", "final_loss", "selected")
    )
    eps_table = markdown_table(s["sde"]["epsilon"], ("alpha", "epsilon", "mean_exit_time", "stderr",
                                             "exited", "theory"))
    width_table = markdown_table(s["sde"]["width"], ("alpha", "width", "mean_exit_time", "stderr",
                                             "theory"))
    depth_table = markdown_table(s["sde"]["depth"], ("alpha", "depth", "mean_exit_time", "stderr",
                                             "theory"))
    opt_table = markdown_table(s["sde"]["optimizers"], ("alpha", "epsilon", "dynamics",
                                                "mean_exit_time", "stderr", "exited"))
    verdicts = "\n".join(f"* **{k}** — {v['claim']}: **{v['verdict'].upper()}**"
                         for k, v in h.items())
    grids = {"sgd": p["sgd_lrs"], "adam": p["adam_lrs"]}
    edges = [f"{r['dataset']}/{r['optimizer']} (η = {r['lr']:g})" for r in s["runs"]
             if r.get("lr") in (min(grids[r["optimizer"]]), max(grids[r["optimizer"]]))]
    edge_note = ("Selected at an end of its grid (the grid may not bracket the best η): "
                 + ", ".join(edges) + "." if edges else "Every selected η is inside its grid.")
    return f"""# Reproduction: {NAME}

Paper: {PAPER}.

## The claims

(1) The gradient noise of SGD and Adam is heavy-tailed (α-stable, α < 2). (2) Adam's
coordinate-wise preconditioning and exponential averaging make its effective noise less
anisotropic and lighter-tailed (α_SGD < α_Adam). (3) The time to escape a basin grows with the
basin's Radon measure (width) and shrinks with heavier tails, as ε^(−α) in the noise scale; SGD
escapes faster than Adam. (4) Hence Adam ends in sharper minima and generalizes worse.
The digest only had the abstract; theorem constants and the paper's numbers were not
available, so the checks are qualitative.

## Verdicts (rules fixed in the code before running)

{verdicts}

Rules: (1) every selected run's 95% bootstrap interval of α̂ lies below 2; (2) "agrees" when, in
every dataset, SGD's interval lies entirely below Adam's effective-noise interval, "partly"
when only the point estimates are ordered (in some or all datasets); (3) the fitted exit-time
exponents lie within {EXPONENT_TOL} of α, the exit time grows with width, and Adam-like dynamics
exit later than SGD-like at both α; (4a) Adam's sharpness is larger in every dataset; (4b) SGD's
test accuracy is higher by more than {ACCURACY_TIE} in every dataset ("inconclusive" when all
differences are ties).

## Setup

* Data: {', '.join(p['datasets'])} (``valleys.data``, seed {s['seed']}), first {p['n_train']}
  training samples, standardized; test accuracy on the held-out split.
* Model: ReLU MLP with hidden widths {tuple(p['hidden'])}, float64, cross-entropy; the same
  seeded initialization for every run.
* Training: {p['steps']} steps, batch {p['batch_size']} without replacement; SGD lr grid
  {p['sgd_lrs']}, Adam lr grid {p['adam_lrs']} (β = (0.9, 0.999)); the run with the lowest final
  training loss is selected per optimizer and dataset.
* Tail index: block-sum estimator (Mohammadi et al. 2015, as in Şimşekli et al. 2019) on
  {p['noise_batches']} mini-batch noise samples flattened over (at most {p['max_scalars']})
  scalars, {p['bootstrap']} bootstrap resamples, at {p['checkpoints']} checkpoints.
  SGD: ξ = g_b − g.
  Adam: effective noise P⁻¹·EMA_β₁(ξ), P = diag(√v̂ + 1e-8) with v̂ the optimizer's own
  bias-corrected second moment at that checkpoint (torch's denominator); the
  "raw" column is g_b − g on Adam's trajectory and "preconditioned" is P⁻¹ξ without averaging.
* SDEs: double well φ(x) = ((x/a)² − 1)² − 1, basin W = (−2a, 0) of the left minimum; Euler
  steps dt = {p['sde_dt']}, {p['sde_paths']} paths, step cap {p['sde_max_steps']} (censored paths
  enter the exponential MLE of the mean). Theory (dashed): 1/(ε^α m(W)),
  m(W) = (c_α/α)·2a^(−α) (Imkeller & Pavlyukevich 2006). SGD-like vs Adam-like: 2-D valley with
  stiffness 4 across, noise scale diag(1, 0.25) (strongest along the escape direction);
  Adam-like = preconditioning normalized to mean 1 (same average step) and averaging at rate
  β₁ = 10 per unit time.
* Preset `{s['preset']}`; runtime {s['runtime_s']:.1f} s ({_units_note(s['units'])}).
* Resumable: every unit of work (one training run of the η grid, the analysis of a selected
  run, one exit-time estimate) is committed to the store `runs.sqlite` in this folder; a rerun
  into the folder reads the finished units back and computes only the missing or failed ones.

## (1)–(2) Tail index of the gradient noise

![tail index](tail_index.png)

{runs_table}

## (3) Exit times

![exit times](exit_times.png)

Fitted exponents −d log τ / d log ε: {_fmt(s['sde']['exponents'])}.

{eps_table}

Basin width (half-width a of W = (−2a, 0); the Radon measure m(W) ∝ a^(−α)):

{width_table}

Basin depth (information, no verdict: for α < 2 the small-noise law 1/(ε^α m(W)) does not
involve the depth; for α = 2 the depth enters exponentially, which `tests/test_sde.py` checks
as Kramers' law):

{depth_table}

SGD-like vs Adam-like:

{opt_table}

## (4) Solutions

![solutions](solutions.png)

Learning-rate selection:

{tuning_table}

{edge_note}

## Reading the numbers

Where a verdict above is not "agrees", the measured numbers disagree with (or do not settle) the
paper's claim for this setting; they are reported as measured. Two caveats of method: the
block-sum estimator assumes i.i.d. symmetric α-stable samples, while gradient-noise scalars
pooled over coordinates are neither identically distributed nor independent (the estimate then
mixes scales across coordinates), and the EMA of i.i.d. α-stable noise is itself α-stable with
the same α, so averaging can only raise α̂ through finite-sample or finite-variance effects.
Sharpness under cross-entropy falls as the training loss falls (the logits grow), so solutions
are compared at whatever loss each optimizer reached (`train_loss` column), not at equal loss.
The SGD-like vs Adam-like exit times depend on modelling choices of ``valleys.sde`` (the
normalized preconditioner, the averaging rate, noise strongest along the escape direction); they
illustrate the mechanism rather than measure the networks' own dynamics.

Files: `summary.json`, `results.csv` (selected runs), `tail_index.csv`, `exit_times.csv`, figures
as PNG and SVG, and `runs.sqlite` (the resumable store of every unit of work: config, status,
metrics, errors, timings; `valleys.sweeps.ResultsStore` reads it).
"""


def _units_note(units: dict[str, Any]) -> str:
    done, total = sum(units["computed_this_call"].values()), units["total"]
    note = (f"all {total} units of work computed in this call" if done == total else
            f"{done} of {total} units of work computed in this call, the others read from "
            "`runs.sqlite`")
    if units["failed"]:
        note += (f"; {len(units['failed'])} failed (their rows are NaN; see `summary.json` → "
                 "`units`; a rerun tries them again)")
    return note


# --- entry point --------------------------------------------------------------------------------


def run(out: str | Path, *, preset: str = "quick", seed: int = 0,
        progress: bool = True) -> dict[str, Any]:
    """Run the reproduction into ``out`` and return its summary (also ``out/summary.json``).

    Args:
        out: output folder (created; the store ``out/runs.sqlite`` makes a rerun resume:
            finished units of work are read back, the missing and failed ones computed).
        preset: ``"quick"`` or ``"full"`` (see :data:`PRESETS`).
        seed: seeds the data, initialization, mini-batches, bootstrap and SDE noise.
        progress: show the sweeps' progress bars.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    import pandas as pd

    started = time.perf_counter()
    folder, p = OutputFolder(out), PRESETS[preset]
    with torch_threads(p.threads):
        parts = _compute(folder, p, seed, progress)
    runs, tuning, trajectory, sde = (parts[k] for k in ("runs", "tuning", "trajectory", "sde"))
    headline = {
        "heavy_tails": _verdict_heavy_tails(runs),
        "tails_order": _verdict_tails_order(runs),
        "exit_times": _verdict_sde(sde),
        "sharpness": _verdict_sharpness(runs),
        "generalization": _verdict_accuracy(runs),
    }
    _figures(folder, runs, trajectory, sde)
    flat = [{k: (v if not isinstance(v, list) else str(v)) for k, v in r.items()} for r in runs]
    folder.write_table("results.csv", pd.DataFrame(flat))
    folder.write_table("tail_index.csv", pd.DataFrame(trajectory))
    exit_rows = ([{"part": "epsilon", **r} for r in sde["epsilon"]]
                 + [{"part": "width", **r} for r in sde["width"]]
                 + [{"part": "depth", **r} for r in sde["depth"]]
                 + [{"part": "optimizers", **r} for r in sde["optimizers"]])
    folder.write_table("exit_times.csv", pd.DataFrame(exit_rows))
    summary = {
        "experiment": NAME,
        "paper": PAPER,
        "preset": preset,
        "preset_config": p.to_dict(),
        "seed": seed,
        "runs": runs,
        "tuning": tuning,
        "tail_index_along_training": trajectory,
        "sde": sde,
        "headline": headline,
        "verdicts": {k: v["verdict"] for k, v in headline.items()},
        "runtime_s": time.perf_counter() - started,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "figures": ["tail_index", "exit_times", "solutions"],
        "units": parts["units"],
    }
    folder.write_text("report.md", _report(summary))
    folder.write_json("summary.json", summary)
    return summary
