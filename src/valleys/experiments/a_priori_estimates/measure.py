r"""A priori estimates of the population risk of path-norm-regularized two-layer networks.

**Claim** (E, Ma & Wu, "A priori estimates of the population risk for two-layer neural
networks", Comm. Math. Sci. 17(5), 2019, arXiv 1810.06397). Abstract (verified): the
population risk of the path-norm-regularized estimator obeys a priori bounds with the
Monte-Carlo rates ``1/m`` in the width and ``1/√n`` in the sample size, depending on a norm of
the target, not of the trained parameters, and holding when the network is
over-parametrized. The form ``L(θ̂) ≲ ‖f*‖_B²/m + λ‖f*‖_B sqrt(log(2d)/n) +
sqrt(log(n/δ)/n)`` and ``λ ≥ 4`` are recalled, not checked against the theorem. The authors'
code (``leiwu0308/genErrTwoLayer``) shows the un-regularized path norm growing with the width
while the regularized one stays bounded.

**Set-up** (one seed draws the target, the data and the initializations). Inputs uniform on
``[-1, 1]^d``; target ``f*(x) = Σ_k a_k σ(w_k·x + c_k)`` of ``K`` ReLU ridges with
``a ~ Dirichlet(1)``, ``c_k ~ U[0, 0.3]``, ``w_k ≥ 0`` on two random coordinates with
``‖w_k‖_1 = 1 − c_k``, scaled so that ``Σ_k a_k = A`` (the amplitude): all ridges share one
orthant, so ``‖f*‖_B = A`` exactly
(:func:`valleys.theory.ridge_barron_norm`, bounds that meet; docs/theory.md). Two-layer ReLU
nets with E–Ma–Wu's initialization (``κ = 1``), full-batch Adam with the authors' step
schedule, ``J_λ = MSE + λ sqrt(log(2d)/n) ‖θ‖_P`` (the paper's scaling) with ``λ = LAMBDA``;
``λ = 0`` is the unregularized estimator (same optimizer), and plain GD (``λ = 0``) is run in
the over-parametrized sweep for its path norm. Risk = ``E(f̂ − f*)²`` on a clean test set
(the excess risk). Three sweeps: widths at large ``n`` without noise; sample sizes at a large
width with label noise; widths far beyond ``n`` with label noise.

``LAMBDA = 1`` is below the recalled ``λ ≥ 4``, and ``A = 5``: feasibility pilots (before
the final runs) with ``A = 1`` showed the penalty weight (≥ 0.05 at these ``n``) shrinking the
fit to about a constant (risk ≈ the target's variance), a regime where no rate can be seen.

**Seeds.** Every number depends on the drawn target, data and initialization; the claims are
judged per seed and every seed must pass (2 quick, 3 full).

**Criteria** (module constants, fixed before the final runs):

* ``bound-holds``: the regularized excess risk ≤ the bound's total with unit constants
  (:func:`valleys.theory.a_priori_terms`, ``λ = LAMBDA``, ``δ = DELTA``) at every point of
  every sweep;
* ``width-rate``: the fitted exponent of the regularized risk in ``m`` (width sweep) ≤
  ``-1 + RATE_SLACK``; testable only if the bound's ``1/m`` term exceeds its ``n`` term at
  ≥ 3 widths;
* ``sample-rate``: the fitted exponent in ``n`` (sample sweep) ≤ ``-1/2 + RATE_SLACK``;
* ``path-norm-controlled``: the regularized ``‖θ̂‖_P / ‖f*‖_B ≤ PATH_RATIO`` at every point;
* ``width-insensitive``: in the over-parametrized sweep, max/min of the regularized risk over
  widths ≤ WIDTH_SPREAD;
* ``gd-path-norm-grows``: the fitted exponent of plain GD's path norm in ``m``
  (over-parametrized sweep) ≥ GROWTH_EXPONENT (a diverged GD run cannot test it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from valleys.experiments.protocol import Claim, ClaimSpec, spread
from valleys.theory import a_priori_terms, path_norm_regularized_fit, ridge_barron_norm

NAME = "a-priori-estimates"
PAPER = ("E, Ma & Wu, \"A priori estimates of the population risk for two-layer neural "
         "networks\", Comm. Math. Sci. 17(5):1407-1425 (2019), arXiv 1810.06397")

# Criteria, fixed before the final runs.
LAMBDA = 1.0            # λ of J_λ (paper scaling)
DELTA = 0.05            # confidence of the bound's terms
RATE_SLACK = 0.3        # a fitted exponent may exceed the predicted one by this much
PATH_RATIO = 2.0        # regularized ‖θ‖_P / ‖f*‖_B (the approximating net has ≤ 2‖f*‖_B)
WIDTH_SPREAD = 1.5      # max/min regularized risk over widths m ≫ n
GROWTH_EXPONENT = 0.25  # plain GD's path norm grows at least like m^0.25
MIN_TESTABLE = 3        # widths where the 1/m term dominates, for width-rate


@dataclass(frozen=True)
class Preset:
    """Everything that defines the reproduction besides the seed.

    Attributes:
        d: input dimension.
        ridges: ``K``, ReLU ridges of the target.
        amplitude: ``‖f*‖_B`` (the ridge weights sum to it).
        noise: label-noise standard deviation in the noisy sweeps.
        n_test: clean test points.
        width_n: ``n`` of the width sweep (no noise).
        widths: ``m`` of the width sweep.
        sample_m: ``m`` of the sample sweep (noisy).
        samples: ``n`` of the sample sweep.
        over_n: ``n`` of the over-parametrized sweep (noisy).
        over_widths: ``m`` of the over-parametrized sweep.
        steps: optimizer steps per fit.
        lr: Adam's step.
        gd_lr: plain GD's step is ``gd_lr / m`` (the curvature along the outer weights grows
            like ``m`` under this initialization, so a fixed step diverges at large ``m``).
        threads: torch threads.
    """

    d: int
    ridges: int
    amplitude: float
    noise: float
    n_test: int
    width_n: int
    widths: tuple[int, ...]
    sample_m: int
    samples: tuple[int, ...]
    over_n: int
    over_widths: tuple[int, ...]
    steps: int
    lr: float = 1e-2
    gd_lr: float = 1.0
    threads: int | None = 1


PRESETS: dict[str, Preset] = {
    # CI: 25 fits of 600 steps, about 15 s of CPU per seed.
    "quick": Preset(d=10, ridges=64, amplitude=5.0, noise=0.25, n_test=4000, width_n=1000,
                    widths=(2, 4, 8, 16),
                    sample_m=100, samples=(50, 100, 200, 400), over_n=100,
                    over_widths=(25, 100, 400), steps=600),
    # 34 fits of 2000 steps per seed.
    "full": Preset(d=10, ridges=64, amplitude=5.0, noise=0.25, n_test=10000, width_n=4000,
                   widths=(2, 4, 8, 16, 32), sample_m=200, samples=(50, 100, 200, 400, 800, 1600),
                   over_n=100, over_widths=(25, 100, 400, 1600), steps=2000),
}

CLAIMS = (
    ClaimSpec(
        "bound-holds",
        "The population risk of the path-norm-regularized estimator is bounded by "
        "‖f*‖_B²/m + λ‖f*‖_B sqrt(log(2d)/n) + sqrt(log(n/δ)/n), up to constants.",
        f"per seed: excess test risk ≤ the bound's terms with unit constants (λ = {LAMBDA:g}, "
        f"δ = {DELTA:g}) at every (m, n) of every sweep",
    ),
    ClaimSpec(
        "width-rate",
        "In the width the risk falls at the Monte-Carlo rate 1/m.",
        f"per seed: fitted exponent of the regularized risk in m ≤ {-1 + RATE_SLACK:g} "
        f"(predicted −1), where the bound's 1/m term dominates at ≥ {MIN_TESTABLE} widths",
    ),
    ClaimSpec(
        "sample-rate",
        "In the sample size the risk falls at the rate 1/√n.",
        f"per seed: fitted exponent of the regularized risk in n ≤ {-0.5 + RATE_SLACK:g} "
        "(predicted −1/2), noisy labels",
    ),
    ClaimSpec(
        "path-norm-controlled",
        "The regularized estimator's path norm is controlled by the target's Barron norm, "
        "whatever the width.",
        f"per seed: ‖θ̂‖_P / ‖f*‖_B ≤ {PATH_RATIO:g} at every point of every sweep",
    ),
    ClaimSpec(
        "width-insensitive",
        "The estimate is a priori: the regularized estimator's risk does not depend on how "
        "far the network is over-parametrized (m ≫ n).",
        f"per seed: max/min of the regularized risk over widths m ≫ n ≤ {WIDTH_SPREAD:g}",
    ),
    ClaimSpec(
        "gd-path-norm-grows",
        "Without the penalty, the path norm of what gradient descent finds grows with the "
        "width: it is not controlled by the target.",
        f"per seed: fitted exponent of plain GD's path norm in m (m ≫ n) ≥ "
        f"{GROWTH_EXPONENT:g}",
    ),
)
SPECS = {spec.id: spec for spec in CLAIMS}


def make_target(config: Preset, seed: int) -> dict[str, torch.Tensor]:
    """The ridge target (``a``, ``W``, ``c``; float64) drawn from the seed."""
    g = torch.Generator().manual_seed(1000 + seed)
    K, d = config.ridges, config.d
    c = torch.rand(K, generator=g, dtype=torch.float64) * 0.3
    W = torch.zeros(K, d, dtype=torch.float64)
    for k in range(K):
        i, j = torch.randperm(d, generator=g)[:2].tolist()
        u = float(torch.rand(1, generator=g, dtype=torch.float64))
        W[k, i], W[k, j] = u * (1 - c[k]), (1 - u) * (1 - c[k])
    e = -torch.log(torch.rand(K, generator=g, dtype=torch.float64))  # Dirichlet(1)
    return {"a": config.amplitude * e / e.sum(), "W": W, "c": c}


def target_values(target: dict[str, torch.Tensor], X: torch.Tensor) -> torch.Tensor:
    return torch.relu(X @ target["W"].T + target["c"]) @ target["a"]


def sample(target, n: int, d: int, noise: float, g: torch.Generator):
    """``(X, y, f*(X))``: uniform inputs on the cube, labels with Gaussian noise (float64)."""
    X = torch.rand(n, d, generator=g, dtype=torch.float64) * 2 - 1
    clean = target_values(target, X)
    return X, clean + noise * torch.randn(n, generator=g, dtype=torch.float64), clean


def loglog_slope(x, y) -> float:
    """Least-squares slope of ``log y`` against ``log x`` (NaN if undefined)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or not (np.all(np.isfinite(y)) and np.all(y > 0)):
        return math.nan
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def _fit(X, y, Xt, ft, m: int, lam: float, config: Preset, seed: int, optimizer: str = "adam",
         device: torch.device | str = "cpu"):
    lr = config.lr if optimizer == "adam" else config.gd_lr / m
    fit = path_norm_regularized_fit(X.float().to(device), y.float().to(device), width=m, lam=lam,
                                    steps=config.steps, lr=lr, optimizer=optimizer, seed=seed)
    with torch.no_grad():
        out = fit.model(Xt.float().to(device)).reshape(-1).double().cpu()
        risk = float((out - ft).pow(2).mean())
    diverged = not math.isfinite(float(fit.objective[-1]))
    return {"m": m, "n": X.shape[0], "lam": lam, "optimizer": optimizer,
            "risk": math.nan if diverged else risk, "train_risk": fit.train_risk,
            "path_norm": fit.path_norm, "objective_start": float(fit.objective[0]),
            "objective_end": float(fit.objective[-1]), "diverged": diverged}


def measure(config: Preset, seed: int, device: torch.device) -> dict[str, Any]:
    """The three sweeps for one seed (float32 fits on ``device``; data drawn on the CPU)."""
    target = make_target(config, seed)
    norm = ridge_barron_norm(target["a"], target["W"], target["c"])
    g = torch.Generator().manual_seed(seed)
    Xt, _, ft = sample(target, config.n_test, config.d, 0.0, g)
    out: dict[str, Any] = {"barron_lower": norm.lower, "barron_upper": norm.upper,
                           "target_variance": float(ft.var())}
    init = 10_000 + seed
    X, y, _ = sample(target, config.width_n, config.d, 0.0, g)
    out["width"] = [_fit(X, y, Xt, ft, m, lam, config, init + i, device=device)
                    for i, m in enumerate(config.widths) for lam in (LAMBDA, 0.0)]
    out["sample"] = []
    for i, n in enumerate(config.samples):
        X, y, _ = sample(target, n, config.d, config.noise, g)
        out["sample"] += [_fit(X, y, Xt, ft, config.sample_m, lam, config, init + 100 + i,
                               device=device)
                          for lam in (LAMBDA, 0.0)]
    X, y, _ = sample(target, config.over_n, config.d, config.noise, g)
    out["over"] = [_fit(X, y, Xt, ft, m, lam, config, init + 200 + i, opt, device)
                   for i, m in enumerate(config.over_widths)
                   for lam, opt in ((LAMBDA, "adam"), (0.0, "adam"), (0.0, "gd"))]
    return out


# ------------------------------------------------------------------------------------------------
# Criteria (fixed before the final runs)
# ------------------------------------------------------------------------------------------------


def _select(rows, lam: float, optimizer: str = "adam"):
    return [r for r in rows if r["lam"] == lam and r["optimizer"] == optimizer]


def bound_total(row, config: Preset, barron: float) -> float:
    return a_priori_terms(barron, row["m"], row["n"], config.d, lam=LAMBDA, delta=DELTA).total


def checks(record: dict[str, Any], config: Preset) -> dict[str, float | None]:
    """The numbers the criteria judge (``None`` where a run could not measure one)."""
    beta = record["barron_upper"]
    reg = {k: _select(record[k], LAMBDA) for k in ("width", "sample", "over")}
    all_reg = [r for rows in reg.values() for r in rows]
    ratios = [r["risk"] / bound_total(r, config, beta) for r in all_reg]
    width_rows = reg["width"]
    dominant = sum(1 for r in width_rows
                   if a_priori_terms(beta, r["m"], r["n"], config.d, lam=LAMBDA).approximation
                   > a_priori_terms(beta, r["m"], r["n"], config.d, lam=LAMBDA).estimation)
    m_slope = loglog_slope([r["m"] for r in width_rows], [r["risk"] for r in width_rows])
    n_slope = loglog_slope([r["n"] for r in reg["sample"]], [r["risk"] for r in reg["sample"]])
    over_risk = [r["risk"] for r in reg["over"]]
    gd = _select(record["over"], 0.0, "gd")
    gd_slope = (None if any(r["diverged"] for r in gd)
                else loglog_slope([r["m"] for r in gd], [r["path_norm"] for r in gd]))

    def finite(v):
        return v if v is not None and math.isfinite(v) else None

    return {
        "max_risk_over_bound": finite(max(ratios)) if ratios else None,
        "width_exponent": finite(m_slope) if dominant >= MIN_TESTABLE else None,
        "sample_exponent": finite(n_slope),
        "max_path_ratio": max(r["path_norm"] for r in all_reg) / beta,
        "width_spread": finite(max(over_risk) / min(over_risk)) if min(over_risk) > 0 else None,
        "gd_path_exponent": None if gd_slope is None else finite(gd_slope),
    }


def _at_most(v, limit):
    return None if v is None else v <= limit


def passes(values: dict[str, float | None]) -> dict[str, bool | None]:
    """Per-claim outcome of one seed's :func:`checks`."""
    g = values["gd_path_exponent"]
    return {
        "bound-holds": _at_most(values["max_risk_over_bound"], 1.0),
        "width-rate": _at_most(values["width_exponent"], -1 + RATE_SLACK),
        "sample-rate": _at_most(values["sample_exponent"], -0.5 + RATE_SLACK),
        "path-norm-controlled": _at_most(values["max_path_ratio"], PATH_RATIO),
        "width-insensitive": _at_most(values["width_spread"], WIDTH_SPREAD),
        "gd-path-norm-grows": None if g is None else g >= GROWTH_EXPONENT,
    }


MEASURED = {
    "bound-holds": "max_risk_over_bound",
    "width-rate": "width_exponent",
    "sample-rate": "sample_exponent",
    "path-norm-controlled": "max_path_ratio",
    "width-insensitive": "width_spread",
    "gd-path-norm-grows": "gd_path_exponent",
}


def claims(records_by_seed: dict[int, dict[str, Any]], config: Preset) -> list[Claim]:
    """One verdict per :data:`CLAIMS` entry; every seed must meet the criterion."""
    values = {s: checks(r, config) for s, r in records_by_seed.items()}
    outcomes = {s: passes(v) for s, v in values.items()}
    out = []
    for spec in CLAIMS:
        key = MEASURED[spec.id]
        out.append(spec.judge_per_seed(
            {s: outcomes[s][spec.id] for s in records_by_seed},
            {key: spread([values[s][key] for s in records_by_seed])}))
    return out
