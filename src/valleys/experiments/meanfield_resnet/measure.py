r"""Deep ResNets in the mean-field limit.

**Claims** (Lu, Ma, Lu, Lu & Ying, ICML 2020, arXiv 2003.05508; abstract verified, method
sections not available to us). (1) A deep ResNet is the Euler discretization in depth of a
mean-field ODE ``dX/dt = ∫ f(X, θ) ρ(dθ | t)`` whose parameters are a measure over
(θ, depth); backpropagation simulates the adjoint equation. (2) Training schemes derived from
the continuous model, including one that *switches the order of the residual blocks*, give
strong empirical performance.

**Set-up** (one seed; see :mod:`valleys.meanfield.resnet` for the model, float64, tanh blocks
``f(X, θ) = a·tanh(wᵀX + b)``, ``M`` neurons per block, inputs padded with zeros to the state
dimension, linear read-out of the last coordinate, square loss):

* *adjoint*: the hand-written discrete adjoint against autograd on random networks (tanh and
  ReLU, natural and shuffled block order): ``max |g_adj − g_auto| / max |g_auto|``.
* *Euler in depth*: for a random measure smooth in depth (cosine modes), the RMS distance
  ``(1/n Σ_i ‖X_L,i − X_i(1)‖²)^{1/2}`` between the output of the ``L``-block ResNet and the
  ODE (RK4 reference), and the relative distance between the particle velocities
  ``LM ∂E/∂θ`` and the continuous velocity ``∇_θ δE/δρ`` (adjoint ODE), for increasing ``L``;
  the log–log slopes against ``L`` should be ``−1`` (first order).
* *block switching at equal cost* (block passes): plain mean-field GD, block-order switching (a
  fresh random block order every step) and coarse-to-fine depth refinement, from the same
  initialization on the same teacher–student data (a tanh teacher of width 4; data, teacher and
  initialization drawn from the seed). The comparison is paired per seed:
  ``r_s = test loss(switching) / test loss(plain)``. Over the seeds whose runs stayed finite,
  the geometric mean ``exp(mean log r_s)`` and its Student-t interval
  ``exp(mean ± t_{0.975, k−1} · sd(log r_s)/√k)`` (``k`` seeds). The paper's switching
  procedure and benchmarks are unknown to us (the reference digest marks them not found), so
  this is our scheme on our small task. The learning rate was fixed by checking that *plain*
  training is stable on the quick preset, before any scheme was compared.

Criteria (constants below, fixed before any run): adjoint relative error ≤ ``ADJOINT_TOL`` on
every seed; Euler slope in ``EULER_SLOPE`` and velocity slope in ``VELOCITY_SLOPE`` on every
seed; block switching: the ``CONFIDENCE`` interval of the geometric-mean test-loss ratio lies
below 1 (agrees: switching lowers the test loss), contains 1 (partly: no difference resolvable
at this number of seeds), or lies above 1 (disagrees: switching raises it); fewer than two
comparable seeds: not tested.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats

from valleys.data import teacher_student
from valleys.experiments.protocol import Claim, ClaimSpec, spread
from valleys.meanfield.resnet import (
    SCHEMES,
    DepthProfile,
    ResNetParams,
    continuous_gradient,
    discrete_adjoint,
    embed,
    ode_forward,
    order_sensitivity,
    particle_velocity,
    resnet_forward,
    resnet_loss,
    train_resnet,
)

__all__ = ["CLAIMS", "NAME", "PAPER", "PRESETS", "SEEDS", "Preset", "claims", "log_ratio_interval",
           "measure", "relative_order_sensitivity", "summary",
           "switching_verdict"]

NAME = "meanfield-resnet"
PAPER = ("Lu, Ma, Lu, Lu & Ying, \"A mean-field analysis of deep ResNet and beyond: towards "
         "provable optimization via overparameterization from depth\", ICML 2020 "
         "(arXiv 2003.05508)")

# Criteria, fixed before any run.
ADJOINT_TOL = 1e-10              # max relative |adjoint − autograd| (float64)
EULER_SLOPE = (-1.15, -0.85)     # log-log slope of the output error against L
VELOCITY_SLOPE = (-1.3, -0.7)    # log-log slope of the velocity error against L
CONFIDENCE = 0.95                # two-sided level of the interval of the test-loss ratio
MIN_COMPARED = 2                 # seeds with both runs finite needed to form an interval

CLAIMS = (
    ClaimSpec(
        "adjoint",
        "Backpropagation through the ResNet simulates the (discrete) adjoint equation.",
        f"max relative difference between the hand-written adjoint gradient and autograd "
        f"≤ {ADJOINT_TOL:g} (float64) on every seed",
    ),
    ClaimSpec(
        "euler-depth",
        "A ResNet of depth L is the Euler discretization of the mean-field ODE: its output "
        "approaches the ODE's at first order in 1/L.",
        f"log-log slope of the RMS output error against L in [{EULER_SLOPE[0]}, "
        f"{EULER_SLOPE[1]}] on every seed",
    ),
    ClaimSpec(
        "velocity-depth",
        "Mean-field particle GD on the ResNet simulates the continuous gradient flow: the "
        "particle velocities approach ∇_θ δE/δρ at first order in 1/L.",
        f"log-log slope of the relative velocity error against L in [{VELOCITY_SLOPE[0]}, "
        f"{VELOCITY_SLOPE[1]}] on every seed",
    ),
    ClaimSpec(
        "block-switching",
        "Training that switches the order of the residual blocks performs well: at equal "
        "cost it reaches a lower test loss than plain training.",
        f"the {CONFIDENCE:.0%} Student-t interval over seeds of the geometric-mean test-loss "
        "ratio switching/plain (paired per seed, equal block passes) lies below 1",
        partly="the interval contains 1 (no difference resolvable at this number of seeds); "
               "above 1 disagrees",
    ),
)


@dataclass(frozen=True)
class Preset:
    """Everything that defines the reproduction (besides the seed).

    Attributes:
        n_train, n_test: teacher–student samples.
        d: input dimension; ``dim`` the ODE state dimension (inputs padded with zeros).
        width: neurons ``M`` per depth slice.
        depths: ``L`` of the Euler check.
        modes: cosine modes in depth of the smooth measure of the Euler check.
        reference_steps: RK4 steps of the reference solution.
        depth: ``L`` of the trained networks (and of the adjoint check).
        lr: mean-field step ``η`` (particles move by ``η LM ∂E/∂θ``).
        budget_steps: budget in steps of the depth-``L`` network (cost ``budget_steps · L``).
        refinements: depth halvings of the coarse-to-fine scheme.
        permutations: random block orders for the order sensitivity.
        curve_points: at most this many points of each training curve are kept.
        threads: torch threads (tiny matrices: one is fastest).
    """

    n_train: int
    n_test: int
    d: int
    dim: int
    width: int
    depths: tuple[int, ...]
    modes: int
    reference_steps: int
    depth: int
    lr: float
    budget_steps: int
    refinements: int
    permutations: int
    curve_points: int = 200
    threads: int | None = 1


PRESETS: dict[str, Preset] = {
    # CI: about 3 s of CPU a seed.
    "quick": Preset(n_train=256, n_test=256, d=4, dim=6, width=16,
                    depths=(4, 8, 16, 32, 64, 128), modes=3, reference_steps=256, depth=16,
                    lr=0.5, budget_steps=300, refinements=2, permutations=8),
    # A step of the depth-32 network costs ~40 ms on one core: three schemes of 2000 steps and
    # the Euler check, 4.5-5 min of CPU a seed (310 s measured on a loaded 2-core machine).
    "full": Preset(n_train=1024, n_test=1024, d=8, dim=12, width=64,
                   depths=(4, 8, 16, 32, 64, 128, 256, 512), modes=4, reference_steps=1024,
                   depth=32, lr=0.5, budget_steps=2000, refinements=2, permutations=16),
}

#: Paired comparisons need many seeds; the quick preset is cheap enough for five.
SEEDS = {"quick": (0, 1, 2, 3, 4), "full": (0, 1, 2, 3, 4, 5, 6, 7)}


# ------------------------------------------------------------------------------------------------
# Pure helpers
# ------------------------------------------------------------------------------------------------


def loglog_slope(x, y) -> float:
    """Least-squares slope of ``log y`` against ``log x``; NaN unless all ``y`` are positive."""
    y = np.asarray(y, float)
    if len(y) < 2 or not np.all(np.isfinite(y)) or np.any(y <= 0):
        return math.nan
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(y), 1)[0])


def log_ratio_interval(ratios, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Geometric mean of positive ratios and its Student-t interval.

    With ``u_s = log r_s`` over ``k`` finite ratios: ``exp(ū)`` and
    ``exp(ū ± t_{(1+c)/2, k−1} · sd(u)/√k)`` (``sd`` with ``k − 1`` degrees of freedom).
    Fewer than ``MIN_COMPARED`` ratios: ``None`` bounds.
    """
    logs = [math.log(r) for r in ratios if r is not None and math.isfinite(r) and r > 0]
    k = len(logs)
    if k == 0:
        return {"ratio": None, "low": None, "high": None, "seeds": 0, "half_width_log": None}
    mean = float(np.mean(logs))
    if k < MIN_COMPARED:
        return {"ratio": math.exp(mean), "low": None, "high": None, "seeds": k,
                "half_width_log": None}
    half = float(stats.t.ppf((1 + confidence) / 2, k - 1) * np.std(logs, ddof=1) / math.sqrt(k))
    return {"ratio": math.exp(mean), "low": math.exp(mean - half), "high": math.exp(mean + half),
            "seeds": k, "half_width_log": half}


def switching_verdict(interval: dict[str, Any]) -> str:
    """The block-switching verdict from :func:`log_ratio_interval` (criterion in ``CLAIMS``)."""
    if interval["low"] is None or interval["high"] is None:
        return "not tested"
    if interval["high"] < 1.0:
        return "agrees"
    if interval["low"] > 1.0:
        return "disagrees"
    return "partly"


def within(value: float | None, bounds: tuple[float, float]) -> bool | None:
    """``lo ≤ value ≤ hi``; ``None`` when the value could not be measured."""
    if value is None or not math.isfinite(value):
        return None
    return bounds[0] <= value <= bounds[1]


def _generator(seed: int, stream: int) -> torch.Generator:
    """An independent CPU stream per purpose: ``seed`` and a stream number."""
    return torch.Generator().manual_seed(10_000 * stream + seed)


def _head(dim: int, device) -> torch.Tensor:
    """Read-out of the last (padded) coordinate, which starts at 0."""
    H = torch.zeros(dim, 1, dtype=torch.float64, device=device)
    H[-1, 0] = 1.0
    return H


def _params(depth: int, width: int, dim: int, generator, device) -> ResNetParams:
    p = ResNetParams.random(depth, width, dim, generator=generator)
    return ResNetParams(*(t.to(device) for t in p.tensors()))


# ------------------------------------------------------------------------------------------------
# The three measurements
# ------------------------------------------------------------------------------------------------


def adjoint_error(config: Preset, seed: int, device) -> float:
    """Max relative difference between the discrete adjoint and autograd over four cases."""
    g = _generator(seed, 1)
    worst = 0.0
    for activation in ("tanh", "relu"):
        for shuffled in (False, True):
            X0 = embed(torch.randn(64, config.d, generator=g, dtype=torch.float64),
                       config.dim).to(device)
            Y = torch.randn(64, 2, generator=g, dtype=torch.float64).to(device)
            H = torch.randn(config.dim, 2, generator=g, dtype=torch.float64).to(device)
            params = _params(config.depth, config.width, config.dim, g, device)
            order = torch.randperm(config.depth, generator=g) if shuffled else None
            ts = [t.clone().requires_grad_(True) for t in params.tensors()]
            loss = resnet_loss(X0, Y, ResNetParams(*ts), H, activation=activation, order=order)
            auto = torch.autograd.grad(loss, ts)
            _, adj = discrete_adjoint(X0, Y, params, H, activation=activation, order=order)
            for a, b in zip(auto, adj.tensors(), strict=True):
                worst = max(worst, float((a - b).abs().max() / a.abs().max()))
    return worst


def euler_check(config: Preset, seed: int, device) -> dict[str, Any]:
    """Output and velocity errors of the ``L``-block ResNet against the ODE, per depth."""
    g = _generator(seed, 2)
    X0 = embed(torch.randn(config.n_train, config.d, generator=g, dtype=torch.float64),
               config.dim).to(device)
    Y = torch.randn(config.n_train, 1, generator=g, dtype=torch.float64).to(device)
    H = _head(config.dim, device)
    cpu = DepthProfile.random(config.modes, config.width, config.dim, generator=g)
    profile = DepthProfile(cpu.A.to(device), cpu.W.to(device), cpu.B.to(device))
    ref = ode_forward(X0, profile, steps=config.reference_steps)
    half = ode_forward(X0, profile, steps=config.reference_steps // 2)
    _, vel, _ = continuous_gradient(X0, Y, profile, H, steps=config.reference_steps)
    output_errors, velocity_errors = [], []
    for L in config.depths:
        XL = resnet_forward(X0, profile.discretize(L))
        output_errors.append(float(((XL - ref) ** 2).sum(1).mean().sqrt()))
        if config.reference_steps % L == 0:
            _, v = particle_velocity(X0, Y, profile.discretize(L), H)
            idx = torch.arange(L, device=device) * (config.reference_steps // L)
            num = sum(float(((a - b[idx]) ** 2).sum())
                      for a, b in zip(v.tensors(), vel.tensors(), strict=True))
            den = sum(float((b[idx] ** 2).sum()) for b in vel.tensors())
            velocity_errors.append(math.sqrt(num / den))
        else:
            velocity_errors.append(None)
    vel_depths = [L for L, e in zip(config.depths, velocity_errors, strict=True) if e is not None]
    return {
        "depths": list(config.depths),
        "output_error": output_errors,
        "velocity_error": velocity_errors,
        "euler_slope": loglog_slope(config.depths, output_errors),
        "velocity_slope": loglog_slope(vel_depths, [e for e in velocity_errors if e is not None]),
        "reference_error": float(((ref - half) ** 2).sum(1).mean().sqrt()),
    }


def _thin(cost: list[int], loss: list[float], points: int) -> dict[str, list]:
    """At most ``points`` evenly spaced points of a curve (first and last kept)."""
    idx = np.unique(np.linspace(0, len(cost) - 1, min(points, len(cost))).round().astype(int))
    return {"cost": [int(cost[i]) for i in idx], "loss": [float(loss[i]) for i in idx]}


def train_schemes(config: Preset, seed: int, device) -> dict[str, dict[str, Any]]:
    """Each scheme from the same initialization at the same cost; final losses and curves."""
    data = teacher_student(config.n_train, config.n_test, config.d, teacher_width=4,
                           activation="tanh", seed=seed, dtype=torch.float64)
    (X, Y), (Xt, Yt) = data.train, data.test
    X, Y = embed(X, config.dim).to(device), Y.to(device)
    Xt, Yt = embed(Xt, config.dim).to(device), Yt.to(device)
    H = _head(config.dim, device)
    init = _params(config.depth, config.width, config.dim, _generator(seed, 3), device)
    runs = {}
    for scheme in SCHEMES:
        params, run = train_resnet(X, Y, init, H, config.lr, config.budget_steps * config.depth,
                                   scheme=scheme, refinements=config.refinements,
                                   generator=_generator(seed, 4))
        finite = not run.diverged
        runs[scheme] = {
            "steps": len(run.cost) - 1,
            "cost": run.cost[-1],
            "diverged": run.diverged,
            "initial_loss": run.train_loss[0],
            "train_loss": run.train_loss[-1] if finite else None,
            "test_loss": float(resnet_loss(Xt, Yt, params, H)) if finite else None,
            "order_sensitivity": order_sensitivity(
                X, Y, params, H, permutations=config.permutations,
                generator=_generator(seed, 5)) if finite else None,
            "curve": _thin(run.cost, run.train_loss, config.curve_points),
        }
    return runs


def measure(config: Preset, seed: int, device) -> dict[str, Any]:
    """One seed: the adjoint check, the Euler check and the three schemes at equal cost."""
    return {
        "adjoint_error": adjoint_error(config, seed, device),
        "euler": euler_check(config, seed, device),
        "schemes": train_schemes(config, seed, device),
    }


# ------------------------------------------------------------------------------------------------
# Claims
# ------------------------------------------------------------------------------------------------


def loss_ratio(record: dict[str, Any], scheme: str, key: str = "test_loss") -> float | None:
    """``key(scheme) / key(plain)`` of one seed; ``None`` if either run diverged."""
    runs = record["schemes"]
    a, b = runs[scheme].get(key), runs["plain"].get(key)
    if a is None or b is None or not (a > 0 and b > 0):
        return None
    return a / b


def relative_order_sensitivity(record: dict[str, Any], scheme: str) -> float | None:
    """``(mean loss over random block orders − loss in the trained order) / the latter``."""
    run = record["schemes"][scheme]
    if run["order_sensitivity"] is None or not run["train_loss"]:
        return None
    return run["order_sensitivity"] / run["train_loss"]


def ratio_stats(records_by_seed: dict[int, Any], scheme: str,
                key: str = "test_loss") -> dict[str, Any]:
    """Per-seed ratios (``spread``) and their geometric-mean interval."""
    ratios = [loss_ratio(r, scheme, key) for r in records_by_seed.values()]
    return {"per_seed": spread(ratios), **log_ratio_interval(ratios)}


def claims(records_by_seed: dict[int, Any], config: Preset) -> list[Claim]:
    """The four claims, each judged from its criterion in ``CLAIMS``."""
    specs = {spec.id: spec for spec in CLAIMS}
    adj = {s: r["adjoint_error"] for s, r in records_by_seed.items()}
    euler = {s: r["euler"]["euler_slope"] for s, r in records_by_seed.items()}
    vel = {s: r["euler"]["velocity_slope"] for s, r in records_by_seed.items()}
    out = [
        specs["adjoint"].judge_per_seed(
            {s: within(e, (0.0, ADJOINT_TOL)) for s, e in adj.items()},
            {"max_relative_error": spread(list(adj.values()))}),
        specs["euler-depth"].judge_per_seed(
            {s: within(v, EULER_SLOPE) for s, v in euler.items()},
            {"slope": spread(list(euler.values()))}),
        specs["velocity-depth"].judge_per_seed(
            {s: within(v, VELOCITY_SLOPE) for s, v in vel.items()},
            {"slope": spread(list(vel.values()))}),
    ]
    test = ratio_stats(records_by_seed, "shuffle")
    train = ratio_stats(records_by_seed, "shuffle", "train_loss")
    verdict = switching_verdict(test)
    measured = {"test_loss_ratio": test["per_seed"], "geometric_mean": test["ratio"],
                "interval_low": test["low"], "interval_high": test["high"],
                "seeds_compared": test["seeds"], "train_loss_ratio": train["per_seed"]}
    compared = [s for s, r in records_by_seed.items() if loss_ratio(r, "shuffle") is not None]
    note = (f"{CONFIDENCE:.0%} interval of the geometric mean over {test['seeds']} paired "
            "seeds" if verdict != "not tested" else
            f"only {test['seeds']} seed(s) with both runs finite")
    out.append(specs["block-switching"].judge(verdict, measured, compared or
                                              list(records_by_seed), note=note))
    return out


def summary(records_by_seed: dict[int, Any], config: Preset) -> dict[str, Any]:
    """Top-level keys of ``summary.json``: the scheme comparisons with their intervals."""
    return {
        "confidence": CONFIDENCE,
        "block_switching": {"test": ratio_stats(records_by_seed, "shuffle"),
                            "train": ratio_stats(records_by_seed, "shuffle", "train_loss")},
        "coarse_to_fine": {"test": ratio_stats(records_by_seed, "refine"),
                           "train": ratio_stats(records_by_seed, "refine", "train_loss")},
    }
