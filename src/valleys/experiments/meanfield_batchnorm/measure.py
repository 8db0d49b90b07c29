r"""Batch normalization is a change of metric.

**Claim** (Ma & Ying, "A Riemannian mean field formulation for two-layer neural networks with
batch normalization", arXiv 2110.08725, 2021; abstract and introduction, verified): "the
training dynamics of a two-layer neural network with batch normalization (BN) can be written as
the training dynamics of a neural network without BN, of the same width, on a Riemannian
manifold": BN changes the metric of parameter space. The paper's manifold and metric were not
available to us; the ones tested are derived from the model in
:mod:`valleys.meanfield.batchnorm`: each neuron's direction ``u = w/√(wᵀΣw)`` on the ellipsoid
``uᵀΣu = 1`` with the metric ``⟨ξ, ζ⟩ = (r²/‖u‖²) ξᵀ(I − uuᵀ/‖u‖²)ζ``, ``r = ‖w‖``, the
retraction ``R_u(ξ) = N(u + (I − uuᵀ/‖u‖²)ξ)`` and ``r² ← r² + (ηm)²‖grad‖²``. Consequences
of BN's scale invariance (degree-0 homogeneity of the loss in each ``w_k``) are tested too:
``⟨∇_w L, w⟩ = 0`` (Euler); ``‖w‖² → ‖w‖² + (ηm)²‖∇_w L‖²`` under GD, so ``‖w‖`` is conserved
by the flow (the drift at a fixed flow time falls like ``η``); GD from ``c·w`` with step
``c²η`` moves the directions exactly like GD from ``w`` with ``η`` (effective step
``η/‖w‖²``).

**Set-up** (one seed; the seed draws the data and the initialization). Teacher–student
regression (``valleys.data.teacher_student``, a tanh teacher of 4 neurons) with anisotropic,
off-centre inputs (the Gaussian inputs rescaled by ``10^[-0.5..0.5]`` per coordinate and
shifted by 0.5, so ``Σ ≠ I`` and ``μ ≠ 0`` and the metric is not the round one), float64,
full-batch BN statistics, square loss, mean-field-scaled GD (each neuron moves by ``ηm`` times
its gradient). For each activation, GD with BN (autograd on the BN network) and Riemannian GD
without BN (autograd on the BN-free network, then the metric's gradient, the retraction and
the norm recursion) run side by side from the same point; ``max_relative_mismatch`` is the
largest relative difference over all steps and quantities (``a``, the directions, the norms,
the outputs). Then GD over a fixed flow time with shrinking steps, GD from ``c·w`` with
``c²η``, and loss curves at several widths (shown, not judged).

**Seeds.** The claims are identities that hold up to rounding for every data set and
initialization, but the measured numbers (rounding residuals, the drift slope) depend on the
data and the initialization that the seed draws, so they are not ``deterministic``: the
presets run the protocol's default seeds (2 quick, 3 full) and every criterion must hold on
each of them.

**Criteria** (module constants, fixed before any run; per seed, every seed must pass; float64
rounding accumulates over a few hundred steps to ~1e-13):

* ``riemannian-equivalence``: ``max_relative_mismatch ≤ MISMATCH_TOL`` over both activations
  (a diverged comparison cannot test it);
* ``euler-identity``: ``max |⟨∇_w L, w⟩| / (‖∇_w L‖‖w‖) ≤ EULER_TOL``;
* ``norm-growth``: the relative residual of ``‖w'‖² = ‖w‖² + (ηm)²‖∇_w L‖²`` ``≤ NORM_TOL``;
* ``effective-step``: the relative difference of the directions ``≤ DIRECTION_TOL``;
* ``flow-conservation``: the log–log slope of the norm drift against ``η`` at fixed flow time
  in ``FLOW_SLOPE`` (first order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from valleys.data import teacher_student
from valleys.experiments.protocol import Claim, ClaimSpec, spread
from valleys.meanfield.batchnorm import (
    bn_gd_step,
    bn_loss,
    bn_statistics,
    compare_bn_riemannian,
    to_manifold,
)

NAME = "meanfield-batchnorm"
PAPER = ("Ma & Ying, \"A Riemannian mean field formulation for two-layer neural networks with "
         "batch normalization\", arXiv 2110.08725 (2021)")

# Criteria, fixed before any run.
MISMATCH_TOL = 1e-9
EULER_TOL = 1e-10          # max |<grad_w L, w>| / (|grad_w L| |w|)
NORM_TOL = 1e-10           # max relative residual of the norm-growth identity
DIRECTION_TOL = 1e-9       # GD from c*w with c^2*eta against GD from w with eta
FLOW_SLOPE = (0.9, 1.1)    # log-log slope of the norm drift against eta at fixed flow time
NORM_NEURONS = 8           # neurons whose norm trajectories are kept for the figure
NORM_POINTS = 200          # about this many points of each kept norm trajectory


@dataclass(frozen=True)
class Preset:
    """Everything that defines the reproduction besides the seed.

    Attributes:
        n: training samples.
        d: input dimension.
        width: neurons ``m`` in the BN-versus-Riemannian comparison.
        lr: step ``η`` (neurons move by ``ηm``).
        steps: GD steps of the comparison.
        activations: hidden activations compared.
        flow_time: flow time ``T`` of the conservation check.
        flow_steps: numbers of GD steps covering ``T`` (``ηm = T/steps``).
        scales: factors ``c`` of the effective-step check.
        widths: widths of the mean-field loss curves.
        width_steps: GD steps of the loss curves.
        threads: torch threads.
    """

    n: int
    d: int
    width: int
    lr: float
    steps: int
    activations: tuple[str, ...]
    flow_time: float
    flow_steps: tuple[int, ...]
    scales: tuple[float, ...]
    widths: tuple[int, ...]
    width_steps: int
    threads: int | None = 1


PRESETS: dict[str, Preset] = {
    # CI: about 4 s of CPU per seed.
    "quick": Preset(n=128, d=5, width=32, lr=0.02, steps=150, activations=("relu", "tanh"),
                    flow_time=2.0, flow_steps=(25, 50, 100, 200), scales=(0.5, 3.0),
                    widths=(8, 64, 512), width_steps=150),
    # Larger data, wider nets and longer runs.
    "full": Preset(n=1024, d=10, width=256, lr=0.02, steps=2000, activations=("relu", "tanh"),
                   flow_time=4.0, flow_steps=(50, 100, 200, 400, 800), scales=(0.25, 0.5, 3.0),
                   widths=(16, 64, 256, 1024, 4096), width_steps=1000),
}

CLAIMS = (
    ClaimSpec(
        "riemannian-equivalence",
        "GD on a two-layer network with batch normalization is Riemannian GD of the same "
        "network without BN on a manifold: BN changes the metric of parameter space.",
        f"per seed: the largest relative difference between the two runs (a, directions, "
        f"norms, outputs; every step, both activations) ≤ {MISMATCH_TOL:g}",
    ),
    ClaimSpec(
        "euler-identity",
        "A loss that depends on w only through BN outputs satisfies ⟨∇_w L, w⟩ = 0.",
        f"per seed: max over steps and neurons of |⟨∇_w L, w⟩| / (‖∇_w L‖‖w‖) ≤ {EULER_TOL:g}",
    ),
    ClaimSpec(
        "norm-growth",
        "Under GD with BN, ‖w‖² grows exactly as ‖w‖² + (ηm)²‖∇_w L‖² per step.",
        f"per seed: max relative residual of the growth identity ≤ {NORM_TOL:g}",
    ),
    ClaimSpec(
        "effective-step",
        "The effective step on the direction is η/‖w‖²: GD from c·w with step c²η moves the "
        "directions exactly as GD from w with step η.",
        f"per seed: max relative difference of the directions ≤ {DIRECTION_TOL:g}",
    ),
    ClaimSpec(
        "flow-conservation",
        "‖w‖ is conserved by the gradient flow: GD's norm drift over a fixed flow time "
        "vanishes like the step η.",
        f"per seed: log–log slope of the drift against η in [{FLOW_SLOPE[0]:g}, "
        f"{FLOW_SLOPE[1]:g}]",
    ),
)
SPECS = {spec.id: spec for spec in CLAIMS}


def make_data(config: Preset, seed: int, device: torch.device
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher–student data with anisotropic, shifted inputs (``Σ ≠ I``, ``μ ≠ 0``)."""
    data = teacher_student(config.n, 1, config.d, teacher_width=4, activation="tanh",
                           seed=seed, dtype=torch.float64)
    X, Y = data.train
    scales = torch.logspace(-0.5, 0.5, config.d, dtype=torch.float64)
    return (X * scales + 0.5).to(device), Y[:, 0].to(device)


def init_params(m: int, d: int, seed: int, device: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``a ~ N(0, 1)``, ``W ~ N(0, I/d)`` from the seed."""
    g = torch.Generator().manual_seed(10_000 + seed)
    a = torch.randn(m, generator=g, dtype=torch.float64)
    W = torch.randn(m, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    return a.to(device), W.to(device)


def loglog_slope(x, y) -> float:
    """Least-squares slope of ``log y`` against ``log x`` (NaN if undefined)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or not (np.all(np.isfinite(y)) and np.all(y > 0)):
        return math.nan
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def comparison(X, y, a0, W0, config: Preset, activation: str) -> dict[str, Any]:
    """GD with BN against Riemannian GD without BN from the same point, and the identities."""
    c = compare_bn_riemannian(X, y, a0, W0, config.lr, config.steps, activation=activation)
    residual = ((c.norm_sq - c.norm_sq_predicted).abs() / c.norm_sq_predicted).max()
    k = min(NORM_NEURONS, c.norm_sq.shape[1])
    stride = max(1, config.steps // NORM_POINTS)  # the kept norm trajectories are thinned
    return {
        "max_relative_mismatch": c.max_relative_mismatch,
        "max_euler_cosine": float(c.euler_inner.max()) if len(c.euler_inner) else 0.0,
        "max_norm_residual": float(residual), "diverged": c.diverged,
        "loss_start": float(c.loss_bn[0]), "loss_end": float(c.loss_bn[-1]),
        "norm_growth_factor": float((c.norm_sq[-1] / c.norm_sq[0]).max()),
        "loss_bn": c.loss_bn, "loss_riemannian": c.loss_riemannian, "mismatch": c.mismatch,
        "norm_steps": list(range(0, c.norm_sq.shape[0], stride)),
        "norm_growth": (c.norm_sq[::stride, :k] / c.norm_sq[0, :k] - 1),
        "norm_growth_predicted": (c.norm_sq_predicted[::stride, :k]
                                  / c.norm_sq_predicted[0, :k] - 1),
    }


def flow_check(X, y, a0, W0, config: Preset) -> dict[str, Any]:
    """GD over the flow time ``T`` with shrinking steps: the max relative norm drift."""
    lrs, drifts = [], []
    norm0 = (W0 * W0).sum(1)
    for steps in config.flow_steps:
        lr = config.flow_time / steps / config.width  # particles move by ηm = T/steps
        a, W = a0, W0
        for _ in range(steps):
            a, W, _, _ = bn_gd_step(X, y, a, W, lr)
        lrs.append(lr)
        drifts.append(float((((W * W).sum(1) - norm0).abs() / norm0).max()))
    return {"lr": lrs, "steps": list(config.flow_steps), "max_relative_norm_drift": drifts,
            "slope": loglog_slope(lrs, drifts)}


def direction_check(X, y, a, W0, config: Preset) -> dict[str, Any]:
    """First layer only: GD from ``c·w`` with ``c²η`` against GD from ``w`` with ``η``."""
    _, cov = bn_statistics(X)
    steps = max(1, config.steps // 3)
    W1 = W0
    for _ in range(steps):
        _, W1, _, _ = bn_gd_step(X, y, a, W1, config.lr, train_a=False)
    U1, _ = to_manifold(W1, cov)
    diffs = []
    for c in config.scales:
        W2 = c * W0
        for _ in range(steps):
            _, W2, _, _ = bn_gd_step(X, y, a, W2, config.lr * c**2, train_a=False)
        U2, _ = to_manifold(W2, cov)
        diffs.append(float((U2 - U1).norm() / U1.norm()))
    return {"scales": list(config.scales), "max_direction_difference": diffs, "steps": steps}


def width_curves(X, y, config: Preset, seed: int, device) -> dict[str, list[float]]:
    """Training loss of mean-field-scaled GD with BN at each width (shown, not judged)."""
    curves = {}
    for m in config.widths:
        a, W = init_params(m, config.d, seed, device)
        losses = []
        for _ in range(config.width_steps):
            a, W, loss, _ = bn_gd_step(X, y, a, W, config.lr)
            losses.append(float(loss))
        losses.append(float(bn_loss(X, y, a, W)))
        curves[str(m)] = losses
    return curves


def measure(config: Preset, seed: int, device: torch.device) -> dict[str, Any]:
    """Every check for one seed (data and initialization drawn from it)."""
    device = torch.device(device)
    X, y = make_data(config, seed, device)
    a0, W0 = init_params(config.width, config.d, seed, device)
    return {
        "comparison": {act: comparison(X, y, a0, W0, config, act) for act in config.activations},
        "flow": flow_check(X, y, a0, W0, config),
        "direction": direction_check(X, y, a0, W0, config),
        "widths": width_curves(X, y, config, seed, device),
    }


# ------------------------------------------------------------------------------------------------
# Criteria (fixed before any run)
# ------------------------------------------------------------------------------------------------


def checks(record: dict[str, Any]) -> dict[str, float | None]:
    """The five numbers the criteria judge (``None`` where a run could not measure one)."""
    per_act = record["comparison"].values()
    diverged = any(e["diverged"] for e in per_act)
    slope = record["flow"]["slope"]
    return {
        "max_relative_mismatch": None if diverged else max(e["max_relative_mismatch"]
                                                            for e in per_act),
        "max_euler_cosine": max(e["max_euler_cosine"] for e in per_act),
        "max_norm_residual": max(e["max_norm_residual"] for e in per_act),
        "max_direction_difference": max(record["direction"]["max_direction_difference"]),
        "flow_slope": slope if slope is not None and math.isfinite(slope) else None,
    }


def _at_most(value: float | None, tol: float) -> bool | None:
    if value is None or not math.isfinite(value):
        return None
    return value <= tol


def passes(values: dict[str, float | None]) -> dict[str, bool | None]:
    """Per-claim outcome of one seed's :func:`checks`."""
    slope = values["flow_slope"]
    return {
        "riemannian-equivalence": _at_most(values["max_relative_mismatch"], MISMATCH_TOL),
        "euler-identity": _at_most(values["max_euler_cosine"], EULER_TOL),
        "norm-growth": _at_most(values["max_norm_residual"], NORM_TOL),
        "effective-step": _at_most(values["max_direction_difference"], DIRECTION_TOL),
        "flow-conservation": None if slope is None else FLOW_SLOPE[0] <= slope <= FLOW_SLOPE[1],
    }


MEASURED = {
    "riemannian-equivalence": "max_relative_mismatch",
    "euler-identity": "max_euler_cosine",
    "norm-growth": "max_norm_residual",
    "effective-step": "max_direction_difference",
    "flow-conservation": "flow_slope",
}


def claims(records_by_seed: dict[int, dict[str, Any]], config: Preset) -> list[Claim]:
    """One verdict per :data:`CLAIMS` entry; every seed must meet the criterion."""
    values = {s: checks(r) for s, r in records_by_seed.items()}
    outcomes = {s: passes(v) for s, v in values.items()}
    out = []
    for spec in CLAIMS:
        key = MEASURED[spec.id]
        out.append(spec.judge_per_seed(
            {s: outcomes[s][spec.id] for s in records_by_seed},
            {key: spread([values[s][key] for s in records_by_seed])}))
    return out
