r"""The multiscale structure of loss landscapes: sub-quadratic walls, 2-cycles, separate scales.

**Paper.** Ma, Kunin, Wu & Ying (2022, arXiv 2204.11326), abstract (the paper's figures and
numbers were not available to us, so the set-ups below are our operationalization):

* (A) a quadratic approximation of the loss holds only near a minimum; beyond it the loss grows
  *sub-quadratically*, and that is why gradient descent with ``η > 2/λ`` need not diverge: on a
  sub-quadratic wall it settles on a 2-cycle (the edge-of-stability mechanism);
* (B) origin: training inputs of different *magnitudes* give a two-layer network separate loss
  scales, and learning-rate decay lowers the loss by letting GD enter the smaller one.

**Set-up A (growth along the top direction).** A tanh MLP with the square loss
``½Σ_k (f_k − y_k)²`` on a digits subset (float64) is trained by full-batch GD at
``η = 2/(eos_factor · a₀)`` (``a₀``: sharpness at initialization) until the sharpness hovers at
``2/η``. At the final iterate: the top Hessian eigenvector ``u``, the floor of the valley's
cross-section ``θ_c = θ + t₀u`` (``t₀`` minimizes ``L(θ + tu)``) and its curvature
``λ = uᵀH(θ_c)u``. ``ΔL(t) = L(θ_c + tu) − L(θ_c)`` is scanned on a log grid of absolute ``|t|``
on both sides, and the local exponent ``p(t) = d log ΔL / d log|t|`` is formed between grid
neighbours. **Range rule** (issue 14): per side, ``t_max`` is the *saturation scale*, the first
``|t|`` where ``p(t)`` falls below 1 (there ``ΔL`` has reached the height of the loss scale and
stops growing); ``p(t)`` is reported over ``[t_max/10^RANGE_DECADES, t_max]`` (two decades).

*2-cycles.* GD restricted to the line, ``t ← t − η g'(t)`` with ``g(t) = L(θ_c + tu)``, at
``η = r · 2/λ`` for each ``r`` in :data:`CYCLE_FACTORS`, from ``t = CYCLE_START`` for
``CYCLE_STEPS`` steps; its last iterates are tested for period 2. The toy
``f(t) = λ s² (sqrt(1 + (t/s)²) − 1)`` (``valleys.landscape.SqrtLoss`` with length scale ``s``)
has the symmetric 2-cycle ``t* = s · sqrt(r² − 1)``, attracting for every ``r > 1``. ``s`` is
fitted, before GD runs, by least squares of ``log ΔL_sym`` (``ΔL_sym(t) = (ΔL(t) + ΔL(−t))/2``)
on the grid up to the smaller of the two sides' ``t_max``; the cycle's amplitude
``|t_N − t_{N−1}|/2`` is compared with ``t*``.

**Set-up B (origin).** Inputs ``x ∈ R^d`` in two equal groups, ``‖x‖ ≈ 1`` and ``‖x‖ ≈ scale``;
a two-layer tanh net of small width (``d·width + width`` trained parameters, far fewer than the
``2m`` samples) with scalar output; only the input layer is trained (the readout stays at its
initialization); its input weights and biases start at ``INIT_SCALE`` × PyTorch's default, so
that the large inputs do not saturate tanh at the start (issue 14: at the default scale tanh
saturates and the two scales merge, ratio 2.1). The targets come from the same net with other
input weights drawn the same way, so ``θ*`` (the teacher's input layer) is a zero-loss minimum.
**Learning-rate rule** (fixed before any run, about the regime only): with ``a_g = λ₁(H_g(θ*))/2``
each group's share of the curvature at the minimum and ``λ* = λ₁(H(θ*))``, phase 1 runs at
``η₁ = 2/sqrt(a_small · a_large)`` (``2/η₁`` between the two curvature scales: the minimum is
unstable), and the decay goes to ``η₂ = 1/λ*`` (half the minimum's stability limit). From the
end of phase 1 two arms run: decayed (``η₂``) and control (``η₁``). The **loss scale** of each
group is the saturation scale (first ``|t|`` with local exponent below 1) of its symmetric
increment ``(ΔL_g(t) + ΔL_g(−t))/2`` along the top Hessian eigenvector at ``θ*``; their ratio
``small/large`` must be at least :data:`MIN_SCALE_RATIO` for the origin claims to be tested.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from valleys import Objective, eigsh, hessian
from valleys.data import load_digits
from valleys.errors import ArgumentValueError
from valleys.experiments.protocol import Claim, ClaimSpec, spread
from valleys.landscape import loss_along_line, top_eigen_directions
from valleys.models import MLP
from valleys.train import train

__all__ = ["CLAIMS", "NAME", "PAPER", "PRESETS", "Preset", "claims", "measure", "summary"]

NAME = "multiscale"

PAPER = (
    "Ma, Kunin, Wu & Ying, \"Beyond the Quadratic Approximation: the Multiscale Structure of "
    "Neural Network Loss Landscapes\", J. Machine Learning 1(3), 2022 (arXiv 2204.11326)"
)

# --- thresholds, fixed before any run ------------------------------------------------------------
EOS_BAND = (0.9, 1.2)  # "hovers at 2/η": median sharpness·η/2 over the last half of the checks
RANGE_DECADES = 2.0  # p(t) is reported over [t_max / 10^2, t_max]
SUBQUADRATIC_BELOW = 1.8  # growth exponent over the outer decade [t_max/10, t_max] below this
QUADRATIC_TOL = 0.2  # the quadratic core: |p − 2| <= 0.2 (reported, not graded)
CYCLE_FACTORS = (1.2, 1.5, 2.0, 3.0)  # η = r · 2/λ for the GD restricted to the top direction
CYCLE_STEPS = 1000  # steps of the restricted GD
CYCLE_START = 1e-3  # its starting point t (inside the quadratic core, off the unstable floor)
CYCLE_TOL = 1e-6  # period q: |t_k − t_(k−q)| <= CYCLE_TOL · (spread of the last iterates) for
# each of the last CYCLE_CHECK steps; period 2 = the smallest such q is 2
CYCLE_CHECK = 10
FIXED_POINT_SPREAD = 1e-10  # last iterates within this (absolute t): a fixed point, period 1
MAX_PERIOD = 16  # the period reported when it is not 2 (0: none up to this)
AMPLITUDE_TOL = 1.5  # the cycle amplitude within a factor 1.5 of the toy's s·sqrt(r² − 1)
MIN_SCALE_RATIO = 5.0  # (B) precondition: loss scales of the two groups differ by >= 5×
PLATEAU_RATIO = 0.8  # plateau: mean loss of the last quarter of phase 1 >= 0.8 × previous quarter
PLATEAU_FLOOR = 1e-2  # ... and held up: that loss >= 1e-2 × the loss at initialization
DROP_FACTOR = 2.0  # decay lowers the loss: control / decayed final loss >= 2
LARGE_SHARE = 0.5  # the large-input group (the smaller scale) carries >= half of that drop
INIT_SCALE = 0.1  # (B) first-layer initialization, × PyTorch's default
TAIL_FRACTION = 0.2  # "final loss" = mean over the last 20% of an arm's steps

CLAIMS = (
    ClaimSpec(
        "subquadratic-growth",
        "Beyond a small quadratic core, the loss along the top Hessian eigenvector grows "
        "sub-quadratically.",
        f"on every seed whose GD hovered at 2/η (median sharpness·η/2 in {list(EOS_BAND)}) and "
        f"whose scan reached the saturation scale t_max (first |t| with p(t) < 1) on both sides: "
        f"the growth exponent fitted over [t_max/10, t_max] is < {SUBQUADRATIC_BELOW} on both "
        f"sides of the valley floor",
        partly="some tested seeds meet it",
    ),
    ClaimSpec(
        "two-cycles",
        "GD with η > 2/λ on a sub-quadratic wall does not diverge but settles on a 2-cycle "
        "(the edge-of-stability mechanism).",
        f"GD restricted to the top direction at η = r·2/λ, r in {list(CYCLE_FACTORS)}, "
        f"{CYCLE_STEPS} steps from t = {CYCLE_START:g}, ends on a period-2 orbit "
        f"(smallest q with |t_k − t_(k−q)| <= {CYCLE_TOL:g} × the spread of the last iterates, "
        f"over the last {CYCLE_CHECK} steps, is 2) "
        f"for every r on every seed",
        partly="2-cycles for some (seed, r) pairs, always including r = "
               f"{CYCLE_FACTORS[0]} on every seed",
    ),
    ClaimSpec(
        "cycle-amplitude",
        "The 2-cycle's amplitude follows the sub-quadratic toy's closed form "
        "t* = s·sqrt((ηλ/2)² − 1).",
        f"for every r whose restricted GD ended on a 2-cycle, amplitude/t* in "
        f"[1/{AMPLITUDE_TOL:g}, {AMPLITUDE_TOL:g}] with s fitted to ΔL before GD runs; every "
        f"seed (a seed without any 2-cycle: not tested)",
        partly="some tested seeds meet it",
    ),
    ClaimSpec(
        "separate-scales",
        "Training inputs of different magnitudes give a two-layer network separate loss scales.",
        f"loss-scale ratio (saturation scale of the ‖x‖≈1 group / of the ‖x‖≈scale group, along "
        f"the top eigenvector at the minimum) >= {MIN_SCALE_RATIO:g} on every seed (the set-up's "
        f"precondition for the two claims below)",
        partly="some seeds meet it",
    ),
    ClaimSpec(
        "plateau-before-decay",
        "At the large learning rate the loss sits on a plateau that GD cannot leave.",
        f"on every seed with scale ratio >= {MIN_SCALE_RATIO:g} and a finite phase 1: mean loss "
        f"of the last quarter of phase 1 >= {PLATEAU_RATIO:g} × that of the quarter before, "
        f"and >= {PLATEAU_FLOOR:g} × the loss at initialization",
        partly="some tested seeds meet it",
    ),
    ClaimSpec(
        "decay-enters-small-scale",
        "Learning-rate decay lowers the loss by letting GD enter the smaller loss scale.",
        f"on every seed with scale ratio >= {MIN_SCALE_RATIO:g} and finite runs: control/decayed "
        f"final loss >= {DROP_FACTOR:g}, the large-input group carries >= {LARGE_SHARE:g} of the "
        f"drop, and the sharpness at the end of the decayed arm exceeds 2/η₁ (GD sits in a "
        f"valley too sharp for η₁)",
        partly="some tested seeds meet it",
    ),
)


@dataclass(frozen=True)
class Preset:
    """Everything that sizes the reproduction.

    Attributes:
        n, widths: digits samples and the tanh MLP of A (64 inputs, 10 outputs).
        eos_factor: ``2/η = eos_factor · a₀``: GD must sharpen by this factor.
        eos_steps, check_every: GD steps in A and steps between sharpness checks.
        t_min, t_max, per_decade: the absolute log grid of ``|t|`` (``u`` has unit norm).
        d, n_per_group, scale, width: data and net of B.
        phase1_steps, phase2_steps: GD steps before and after the decay in B.
        threads: torch threads.
    """

    n: int
    widths: tuple[int, ...]
    eos_factor: float
    eos_steps: int
    check_every: int
    t_min: float
    t_max: float
    per_decade: int
    d: int
    n_per_group: int
    scale: float
    width: int
    phase1_steps: int
    phase2_steps: int
    threads: int | None = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, Preset] = {
    "quick": Preset(
        n=256, widths=(64, 32, 32, 10), eos_factor=2.0, eos_steps=1200, check_every=50,
        t_min=1e-4, t_max=100.0, per_decade=12,
        d=8, n_per_group=64, scale=10.0, width=4, phase1_steps=3000, phase2_steps=2000,
    ),
    "full": Preset(
        n=1024, widths=(64, 128, 128, 10), eos_factor=2.0, eos_steps=5000, check_every=50,
        t_min=1e-5, t_max=300.0, per_decade=16,
        d=8, n_per_group=256, scale=10.0, width=4, phase1_steps=6000, phase2_steps=4000,
    ),
}


# --- shared helpers -------------------------------------------------------------------------------


def sharpness(obj: Objective, theta: torch.Tensor, seed: int, tol: float = 1e-3) -> float:
    """λ₁(∇²L(θ)) by Lanczos on Hessian-vector products."""
    return float(eigsh(hessian(obj, theta), k=1, which="largest", tol=tol, seed=seed).values[0])


def log_grid(p: Preset) -> np.ndarray:
    """``per_decade`` points per decade of ``|t|`` from ``t_min`` to ``t_max``."""
    decades = math.log10(p.t_max / p.t_min)
    return np.logspace(math.log10(p.t_min), math.log10(p.t_max),
                       round(decades * p.per_decade) + 1)


def local_exponents(ts: np.ndarray, inc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(scales, p)``: ``p = Δ log ΔL / Δ log|t|`` between grid neighbours, at their geometric
    mean; NaN where either increment is not positive."""
    ts, inc = np.asarray(ts, float), np.asarray(inc, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(inc > 0, np.log(np.where(inc > 0, inc, 1.0)), np.nan)
        p = np.diff(logs) / np.diff(np.log(ts))
    return np.sqrt(ts[1:] * ts[:-1]), p


def saturation_scale(ts: np.ndarray, inc: np.ndarray) -> float:
    """First scale where the local exponent of ``ΔL`` falls below 1 (``inf``: never on the grid;
    NaN: fewer than two positive increments)."""
    inc = np.asarray(inc, float)
    if (inc > 0).sum() < 2:
        return math.nan
    scales, p = local_exponents(ts, inc)
    below = np.nonzero(p < 1.0)[0]
    return float(scales[below[0]]) if below.size else math.inf


def outer_exponent(ts: np.ndarray, inc: np.ndarray, t_max: float) -> float:
    """Least-squares slope of ``log ΔL`` on ``log|t|`` over ``[t_max/10, t_max]`` (NaN if fewer
    than 3 positive points or ``t_max`` not finite)."""
    if not math.isfinite(t_max):
        return math.nan
    ts, inc = np.asarray(ts, float), np.asarray(inc, float)
    sel = (ts >= t_max / 10) & (ts <= t_max) & (inc > 0)
    if sel.sum() < 3:
        return math.nan
    return float(np.polyfit(np.log(ts[sel]), np.log(inc[sel]), 1)[0])


def quadratic_radius(ts: np.ndarray, inc: np.ndarray) -> float:
    """Largest scale up to which every local exponent (from the smallest on) is within
    :data:`QUADRATIC_TOL` of 2."""
    scales, p = local_exponents(ts, inc)
    ok = np.abs(p - 2.0) <= QUADRATIC_TOL
    if ok.all():
        return float(scales[-1])
    first_bad = int(np.argmin(ok))
    return float(scales[first_bad - 1]) if first_bad > 0 else 0.0


def toy_increment(ts: np.ndarray, curvature: float, s: float) -> np.ndarray:
    """``λ s² (sqrt(1 + (t/s)²) − 1)``, the sub-quadratic toy of length scale ``s``."""
    x = np.asarray(ts, float) / s
    return curvature * s * s * x * x / (np.sqrt(1.0 + x * x) + 1.0)


def fit_toy_scale(ts: np.ndarray, inc: np.ndarray, curvature: float) -> float:
    """The toy's length scale ``s`` minimizing Σ (log ΔL − log toy)² over the positive points."""
    ts, inc = np.asarray(ts, float), np.asarray(inc, float)
    keep = inc > 0
    if keep.sum() < 3:
        return math.nan
    t, logy = ts[keep], np.log(inc[keep])

    def cost(log_s: float) -> float:
        return float(np.sum((np.log(toy_increment(t, curvature, math.exp(log_s))) - logy) ** 2))

    lo, hi = math.log(t.min()) - 3, math.log(t.max()) + 3
    grid = np.linspace(lo, hi, 121)
    k = int(np.argmin([cost(g) for g in grid]))
    best = minimize_scalar(cost, bounds=(grid[max(k - 1, 0)], grid[min(k + 1, 120)]),
                           method="bounded", options={"xatol": 1e-10})
    return float(math.exp(best.x))


def toy_amplitude(s: float, r: float) -> float:
    """Symmetric 2-cycle of the toy at ``η = r · 2/λ``: ``s · sqrt(r² − 1)`` (0 for r <= 1)."""
    return s * math.sqrt(r * r - 1.0) if r > 1 else 0.0


def cycle_period(ts: list[float] | np.ndarray) -> int:
    """Smallest period ``q <= MAX_PERIOD`` of the last iterates (|t_k − t_(k−q)| <= CYCLE_TOL ·
    spread over the last CYCLE_CHECK steps); 0: none (or not finite); 1: a fixed point (the last
    iterates lie within FIXED_POINT_SPREAD)."""
    t = np.asarray(ts, float)
    last = t[-(MAX_PERIOD + CYCLE_CHECK):]
    if len(t) < MAX_PERIOD + CYCLE_CHECK + 1 or not np.isfinite(last).all():
        return 0
    spread_ = float(np.ptp(last))
    if spread_ <= FIXED_POINT_SPREAD:
        return 1
    for q in range(1, MAX_PERIOD + 1):
        diffs = np.abs(t[-CYCLE_CHECK:] - t[-CYCLE_CHECK - q:-q])
        if float(diffs.max()) <= CYCLE_TOL * spread_:
            return q
    return 0


def restricted_gd(obj: Objective, theta_c: torch.Tensor, u: torch.Tensor, lr: float,
                  steps: int, start: float) -> list[float]:
    """GD on ``g(t) = L(θ_c + t u)``: ``t ← t − η ⟨∇L(θ_c + t u), u⟩``; stops if not finite."""
    t, out = float(start), [float(start)]
    for _ in range(steps):
        t = t - lr * float(obj.gradient(theta_c + t * u) @ u)
        out.append(t)
        if not math.isfinite(t) or abs(t) > 1e6:
            break
    return out


def tail_mean(values: list[float] | np.ndarray, fraction: float) -> float:
    v = np.asarray(values, float)
    k = max(1, int(len(v) * fraction))
    return float(np.mean(v[-k:]))


# --- A: growth along the top eigenvector at the edge of stability --------------------------------


def _digits(n: int, seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    X, Y = load_digits(seed=seed, one_hot=True, dtype=torch.float64).train
    if n > X.shape[0]:
        raise ArgumentValueError(f"n={n} exceeds the {X.shape[0]} digits training samples")
    return X[:n].contiguous().to(device), Y[:n].contiguous().to(device)


def _train_to_eos(obj: Objective, lr: float, p: Preset, seed: int) -> dict[str, Any]:
    """Full-batch GD for ``eos_steps``, the sharpness checked every ``check_every`` steps."""
    theta = obj.parameters_vector()
    trajectory = [{"step": 0, "loss": float(obj.loss(theta)),
                   "sharpness": sharpness(obj, theta, seed)}]
    status, step = "max_steps", 0
    while step < p.eos_steps:
        k = min(p.check_every, p.eos_steps - step)
        result = train(obj, lr=lr, steps=k, theta=theta, record_every=k, seed=seed)
        step += k
        if result.status == "diverged":
            status = "diverged"
            trajectory.append({"step": step, "loss": math.inf, "sharpness": math.nan})
            break
        theta = result.theta
        trajectory.append({"step": step, "loss": result.final_loss,
                           "sharpness": sharpness(obj, theta, seed)})
    return {"theta": theta, "status": status, "trajectory": trajectory}


def eos_ratio(trajectory: list[dict[str, Any]], lr: float) -> float:
    """Median of sharpness·η/2 over the last half of the checks (NaN if none)."""
    checks = [r["sharpness"] for r in trajectory[1:] if math.isfinite(r["sharpness"])]
    tail = checks[len(checks) // 2:]
    return float(np.median(tail)) * lr / 2 if tail else math.nan


def valley_floor(obj: Objective, theta: torch.Tensor, u: torch.Tensor, lr: float) -> dict:
    """GD amplitude ``A = |⟨η∇L(θ), u⟩|/2`` and the line minimizer ``t₀`` of ``L(θ + t u)``
    (a scan over ``[−4A', 4A']``, ``A' = max(A, 1e-4)``, widened until its best point is
    interior, then bounded Brent between that point's neighbours)."""
    g = obj.gradient(theta)
    amplitude = abs(float(lr * (g @ u))) / 2
    half = 4 * max(amplitude, 1e-4)
    for _ in range(40):
        grid = np.linspace(-half, half, 81)
        k = int(torch.argmin(loss_along_line(obj, u, grid, theta=theta).losses))
        if 0 < k < len(grid) - 1:
            break
        half *= 4
    lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    best = minimize_scalar(lambda t: float(obj.loss(theta + t * u)), bounds=(lo, hi),
                           method="bounded", options={"xatol": 1e-12 * max(half, 1.0)})
    return {"amplitude": amplitude, "t0": float(best.x), "grad_along_u": float(g @ u)}


def _sides(obj: Objective, theta: torch.Tensor, u: torch.Tensor, ts: np.ndarray):
    both = np.concatenate([-ts[::-1], ts])
    inc = loss_along_line(obj, u, both, theta=theta).increments.numpy()
    m = len(ts)
    return inc[m:].copy(), inc[:m][::-1].copy()  # (t > 0, t < 0), both ordered by |t|


def growth_side(ts: np.ndarray, inc: np.ndarray) -> dict[str, Any]:
    """Saturation scale, reported range, local exponents in it, outer-decade exponent."""
    t_max = saturation_scale(ts, inc)
    t_min = t_max / 10**RANGE_DECADES if math.isfinite(t_max) else math.nan
    scales, p = local_exponents(ts, inc)
    inside = (scales >= t_min) & (scales <= t_max) if math.isfinite(t_max) else scales < 0
    return {"t_max": t_max, "t_min": t_min, "scales": scales[inside].tolist(),
            "exponents": p[inside].tolist(), "outer_exponent": outer_exponent(ts, inc, t_max),
            "quadratic_radius": quadratic_radius(ts, inc)}


def _part_a(p: Preset, seed: int, device: torch.device) -> dict[str, Any]:
    model = MLP(p.widths, "tanh", seed=seed).double().eval().to(device)
    obj = Objective(model, "mse", _digits(p.n, seed, device))
    theta0 = obj.parameters_vector()
    a0 = sharpness(obj, theta0, seed)
    lr = 2.0 / (p.eos_factor * a0)
    run = _train_to_eos(obj, lr, p, seed)
    out: dict[str, Any] = {"a0": a0, "lr": lr, "threshold": 2 / lr, "status": run["status"],
                           "trajectory": run["trajectory"], "loss_init": float(obj.loss(theta0)),
                           "num_parameters": obj.dim,
                           "eos_ratio": eos_ratio(run["trajectory"], lr)}
    if run["status"] == "diverged":
        return out
    theta = run["theta"]
    top = top_eigen_directions(obj, k=1, theta=theta, tol=1e-8, seed=seed)
    u = top.vectors[:, 0]
    floor = valley_floor(obj, theta, u, lr)
    theta_c = theta + floor["t0"] * u
    curvature = float(u @ hessian(obj, theta_c).matvec(u))
    ts = log_grid(p)
    plus, minus = _sides(obj, theta_c, u, ts)
    side = {"plus": growth_side(ts, plus), "minus": growth_side(ts, minus)}
    fit_upto = min(side["plus"]["t_max"], side["minus"]["t_max"])
    sym = 0.5 * (plus + minus)
    s = fit_toy_scale(ts[ts <= fit_upto], sym[ts <= fit_upto], curvature) \
        if math.isfinite(fit_upto) else math.nan
    cycles = []
    for r in CYCLE_FACTORS:
        traj = restricted_gd(obj, theta_c, u, r * 2 / curvature, CYCLE_STEPS, CYCLE_START)
        period = cycle_period(traj)
        amp = abs(traj[-1] - traj[-2]) / 2 if period == 2 else math.nan
        cycles.append({"factor": r, "lr": r * 2 / curvature, "period": period,
                       "finite": bool(math.isfinite(traj[-1]) and len(traj) == CYCLE_STEPS + 1),
                       "amplitude": amp, "center": (traj[-1] + traj[-2]) / 2 if period == 2
                       else math.nan, "toy_amplitude": toy_amplitude(s, r),
                       "trajectory": traj})
    out.update({
        "sharpness_final": float(top.values[0]), "amplitude": floor["amplitude"],
        "t0": floor["t0"], "grad_along_u": floor["grad_along_u"],
        "floor_curvature": curvature, "floor_loss": float(obj.loss(theta_c)),
        "ts": ts.tolist(), "increments_plus": plus.tolist(), "increments_minus": minus.tolist(),
        "growth": side, "toy_scale": s, "cycles": cycles,
    })
    return out


# --- B: two input magnitudes, separate scales, learning-rate decay -------------------------------


FIRST_LAYER = ("net.0.*",)


def two_scale_problem(p: Preset, seed: int, device: torch.device) -> dict[str, Any]:
    """Data in two groups (‖x‖ ≈ 1 and ≈ scale), student, the three objectives and ``θ*``."""
    g = torch.Generator().manual_seed(seed)
    m, d = p.n_per_group, p.d
    small = torch.randn(m, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    large = p.scale * torch.randn(m, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    X = torch.cat([small, large]).to(device)
    student = MLP((d, p.width, 1), "tanh", seed=seed).double().eval()
    teacher = MLP((d, p.width, 1), "tanh", seed=seed + 1000).double().eval()
    with torch.no_grad():
        for net in (student, teacher):
            net.net[0].weight.mul_(INIT_SCALE)
            net.net[0].bias.mul_(INIT_SCALE)
        teacher.net[2].weight.copy_(student.net[2].weight)
        teacher.net[2].bias.copy_(student.net[2].bias)
    student, teacher = student.to(device), teacher.to(device)
    with torch.no_grad():
        Y = teacher(X)
    group = torch.cat([torch.zeros(m, dtype=torch.bool), torch.ones(m, dtype=torch.bool)])
    group = group.to(device)
    obj = Objective(student, "mse", (X, Y), params=FIRST_LAYER)
    small_obj = Objective(student, "mse", (X[~group], Y[~group]), params=FIRST_LAYER)
    large_obj = Objective(student, "mse", (X[group], Y[group]), params=FIRST_LAYER)
    theta_star = obj.flatten({"net.0.weight": teacher.net[0].weight.detach(),
                              "net.0.bias": teacher.net[0].bias.detach()})
    return {"obj": obj, "small": small_obj, "large": large_obj, "theta_star": theta_star,
            "group": group}


def _gd_groups(obj: Objective, group: torch.Tensor, theta: torch.Tensor, lr: float,
               steps: int) -> dict[str, Any]:
    """Full-batch GD; per step the loss and each group's share of it (mean group loss / 2)."""
    total, small, large = [], [], []
    th = theta.clone()
    status = "max_steps"
    for _ in range(steps):
        losses = obj.per_sample_losses(th)
        ls, ll = float(losses[~group].mean()) / 2, float(losses[group].mean()) / 2
        total.append(ls + ll)
        small.append(ls)
        large.append(ll)
        if not math.isfinite(ls + ll):
            status = "diverged"
            break
        th = th - lr * obj.gradient(th)
    return {"theta": th, "status": status, "loss": total, "loss_small": small,
            "loss_large": large}


def _part_b(p: Preset, seed: int, device: torch.device) -> dict[str, Any]:
    prob = two_scale_problem(p, seed, device)
    obj, small, large, star = prob["obj"], prob["small"], prob["large"], prob["theta_star"]
    a_small, a_large = sharpness(small, star, seed) / 2, sharpness(large, star, seed) / 2
    lam_star = sharpness(obj, star, seed)
    lr1, lr2 = 2.0 / math.sqrt(a_small * a_large), 1.0 / lam_star
    # loss scales along the top eigenvector at the minimum
    u = top_eigen_directions(obj, k=1, theta=star, tol=1e-8, seed=seed).vectors[:, 0]
    ts = log_grid(p)
    sym = {}
    for name, o in (("small", small), ("large", large)):
        plus, minus = _sides(o, star, u, ts)
        sym[name] = 0.25 * (plus + minus)  # symmetric increment, as a share of the total loss
    sat_small, sat_large = saturation_scale(ts, sym["small"]), saturation_scale(ts, sym["large"])
    ratio = sat_small / sat_large if sat_large > 0 and math.isfinite(sat_large) else math.nan
    theta0 = obj.parameters_vector()
    out: dict[str, Any] = {
        "a_small": a_small, "a_large": a_large, "sharpness_star": lam_star, "lr1": lr1,
        "lr2": lr2, "decay": lr1 / lr2, "loss_init": float(obj.loss(theta0)),
        "ts": ts.tolist(), "sym_small": sym["small"].tolist(), "sym_large": sym["large"].tolist(),
        "scale_small": sat_small, "scale_large": sat_large, "scale_ratio": ratio,
        "num_parameters": obj.dim, "num_samples": obj.n,
    }
    phase1 = _gd_groups(obj, prob["group"], theta0, lr1, p.phase1_steps)
    out["phase1"] = {k: v for k, v in phase1.items() if k != "theta"}
    if phase1["status"] == "diverged":
        return out
    out["sharpness_phase1"] = sharpness(obj, phase1["theta"], seed)
    arms = {}
    for arm, lr in (("decayed", lr2), ("control", lr1)):
        res = _gd_groups(obj, prob["group"], phase1["theta"], lr, p.phase2_steps)
        arms[arm] = {k: v for k, v in res.items() if k != "theta"}
        arms[arm]["lr"] = lr
        arms[arm]["final_loss"] = tail_mean(res["loss"], TAIL_FRACTION)
        arms[arm]["final_loss_small"] = tail_mean(res["loss_small"], TAIL_FRACTION)
        arms[arm]["final_loss_large"] = tail_mean(res["loss_large"], TAIL_FRACTION)
        arms[arm]["sharpness_end"] = (sharpness(obj, res["theta"], seed)
                                      if res["status"] != "diverged" else math.nan)
    out["arms"] = arms
    return out


def measure(config: Preset, seed: int, device: torch.device) -> dict[str, Any]:
    """One seed: set-up A (growth, restricted GD) and set-up B (origin)."""
    torch.manual_seed(seed)
    return {"growth": _part_a(config, seed, device), "origin": _part_b(config, seed, device)}


# --- criteria ------------------------------------------------------------------------------------


def growth_outcome(a: dict[str, Any]) -> bool | None:
    """Sub-quadratic outer decade on both sides; None when not at EoS or no t_max."""
    ratio = a.get("eos_ratio", math.nan)
    if a.get("status") == "diverged" or "growth" not in a or not (
            EOS_BAND[0] <= ratio <= EOS_BAND[1]):
        return None
    sides = a["growth"].values()
    exps = [s["outer_exponent"] for s in sides]
    if any(not math.isfinite(s["t_max"]) for s in sides) or any(
            e is None or not math.isfinite(e) for e in exps):
        return None
    return all(e < SUBQUADRATIC_BELOW for e in exps)


def cycle_outcome(a: dict[str, Any]) -> str | None:
    """``"all"``, ``"some"`` (including the smallest factor), ``"none"``; None: no landscape."""
    cycles = a.get("cycles")
    if not cycles:
        return None
    two = [c["period"] == 2 for c in cycles]
    if all(two):
        return "all"
    return "some" if two[0] else "none"


def amplitude_outcome(a: dict[str, Any]) -> bool | None:
    """Every 2-cycle's amplitude within AMPLITUDE_TOL of the toy's; None: no 2-cycle."""
    pairs = [(c["amplitude"], c["toy_amplitude"]) for c in a.get("cycles", [])
             if c["period"] == 2]
    pairs = [(m, t) for m, t in pairs if t is not None and math.isfinite(t) and t > 0]
    if not pairs:
        return None
    return all(1 / AMPLITUDE_TOL <= m / t <= AMPLITUDE_TOL for m, t in pairs)


def scales_separate(b: dict[str, Any]) -> bool:
    ratio = b.get("scale_ratio")
    return ratio is not None and math.isfinite(ratio) and ratio >= MIN_SCALE_RATIO


def plateau_stats(b: dict[str, Any]) -> dict[str, float]:
    """Mean loss of the last two quarters of phase 1 and their ratio (late / early)."""
    loss = np.asarray(b["phase1"]["loss"], float)
    q = len(loss) // 4
    early, late = float(np.mean(loss[-2 * q:-q])), float(np.mean(loss[-q:]))
    return {"early": early, "late": late, "ratio": late / early if early > 0 else math.nan,
            "over_init": late / b["loss_init"]}


def plateau_outcome(b: dict[str, Any]) -> bool | None:
    if not scales_separate(b) or b["phase1"]["status"] == "diverged":
        return None
    st = plateau_stats(b)
    return bool(st["ratio"] >= PLATEAU_RATIO and st["over_init"] >= PLATEAU_FLOOR)


def decay_stats(b: dict[str, Any]) -> dict[str, float]:
    dec, ctl = b["arms"]["decayed"], b["arms"]["control"]
    drop = ctl["final_loss"] / dec["final_loss"] if dec["final_loss"] > 0 else math.inf
    total = ctl["final_loss"] - dec["final_loss"]
    share = ((ctl["final_loss_large"] - dec["final_loss_large"]) / total if total > 0
             else math.nan)
    return {"drop": drop, "large_share": share,
            "sharpness_over_edge": dec["sharpness_end"] * b["lr1"] / 2}


def decay_outcome(b: dict[str, Any]) -> bool | None:
    if not scales_separate(b) or "arms" not in b or any(
            arm["status"] == "diverged" for arm in b["arms"].values()):
        return None
    st = decay_stats(b)
    return bool(st["drop"] >= DROP_FACTOR and st["large_share"] >= LARGE_SHARE
                and st["sharpness_over_edge"] > 1.0)


def _cycle_verdict(outcomes: dict[int, str | None]) -> str:
    tested = [o for o in outcomes.values() if o is not None]
    if not tested:
        return "not tested"
    if all(o == "all" for o in tested):
        return "agrees"
    if all(o in ("all", "some") for o in tested):
        return "partly"
    return "disagrees"


def claims(records_by_seed: dict[int, dict[str, Any]], config: Preset) -> list[Claim]:
    """The six verdicts from the criteria of :data:`CLAIMS`."""
    specs = {c.id: c for c in CLAIMS}
    seeds = list(records_by_seed)
    A = {s: r["growth"] for s, r in records_by_seed.items()}
    B = {s: r["origin"] for s, r in records_by_seed.items()}
    out = []

    def side_values(key: str, side: str) -> list[float | None]:
        return [A[s]["growth"][side][key] if "growth" in A[s] else None for s in seeds]

    out.append(specs["subquadratic-growth"].judge_per_seed(
        {s: growth_outcome(A[s]) for s in seeds},
        {"eos_ratio": spread([A[s]["eos_ratio"] for s in seeds]),
         "outer_exponent_plus": spread(side_values("outer_exponent", "plus")),
         "outer_exponent_minus": spread(side_values("outer_exponent", "minus")),
         "t_max_plus": spread(side_values("t_max", "plus")),
         "t_max_minus": spread(side_values("t_max", "minus")),
         "quadratic_radius_plus": spread(side_values("quadratic_radius", "plus")),
         "gd_amplitude": spread([A[s].get("amplitude") for s in seeds])}))

    outcomes = {s: cycle_outcome(A[s]) for s in seeds}
    verdict = _cycle_verdict(outcomes)
    n_two = {s: sum(c["period"] == 2 for c in A[s].get("cycles", [])) for s in seeds}
    periods = {f"period_r{r:g}": spread([
        next(c["period"] for c in A[s]["cycles"] if c["factor"] == r) if A[s].get("cycles")
        else None for s in seeds]) for r in CYCLE_FACTORS}
    out.append(specs["two-cycles"].judge(
        verdict, {"two_cycles_per_seed": spread(list(n_two.values())), **periods}, seeds,
        note=f"{len(CYCLE_FACTORS)} factors per seed; period 0 = no period up to {MAX_PERIOD}"))

    ratios = {f"amplitude_over_toy_r{r:g}": spread([
        next((c["amplitude"] / c["toy_amplitude"] for c in A[s].get("cycles", [])
              if c["factor"] == r and c["period"] == 2 and c["toy_amplitude"] > 0), None)
        for s in seeds]) for r in CYCLE_FACTORS}
    out.append(specs["cycle-amplitude"].judge_per_seed(
        {s: amplitude_outcome(A[s]) for s in seeds},
        {"toy_scale_s": spread([A[s].get("toy_scale") for s in seeds]), **ratios}))

    out.append(specs["separate-scales"].judge_per_seed(
        {s: scales_separate(B[s]) for s in seeds},
        {"scale_ratio": spread([B[s]["scale_ratio"] for s in seeds]),
         "scale_small": spread([B[s]["scale_small"] for s in seeds]),
         "scale_large": spread([B[s]["scale_large"] for s in seeds])}))

    plateau = {s: plateau_outcome(B[s]) for s in seeds}
    tested = [s for s in seeds if plateau[s] is not None]
    out.append(specs["plateau-before-decay"].judge_per_seed(
        plateau,
        {"late_over_early": spread([plateau_stats(B[s])["ratio"] for s in tested]),
         "plateau_over_init": spread([plateau_stats(B[s])["over_init"] for s in tested])}))

    decay = {s: decay_outcome(B[s]) for s in seeds}
    tested = [s for s in seeds if decay[s] is not None]
    stats = {s: decay_stats(B[s]) for s in tested}
    out.append(specs["decay-enters-small-scale"].judge_per_seed(
        decay,
        {"drop": spread([stats[s]["drop"] for s in tested]),
         "large_share": spread([stats[s]["large_share"] for s in tested]),
         "sharpness_decayed_over_edge": spread([stats[s]["sharpness_over_edge"]
                                                for s in tested])}))
    return out


def summary(records_by_seed: dict[int, dict[str, Any]], config: Preset) -> dict[str, Any]:
    """Top-level keys of summary.json.

    ``growth_fit``: ``t_min``/``t_max`` the smallest/largest end of the per-side reported
    ranges over seeds; ``exponents`` per seed and side, the local exponents ``p`` at ``scales``
    within that side's ``[t_min, t_max]``. ``scale_ratio``: the mean over seeds of the origin
    experiment's loss-scale ratio (per seed in ``scale_ratio_per_seed``).
    ``plateau_before_decay``: every seed that could test it shows the plateau (and one could).
    """
    per_seed, lows, highs = [], [], []
    for seed, rec in records_by_seed.items():
        a = rec["growth"]
        if "growth" not in a:
            continue
        entry = {"seed": seed}
        for side, g in a["growth"].items():
            entry[side] = {"t_min": g["t_min"], "t_max": g["t_max"], "scales": g["scales"],
                           "exponents": g["exponents"]}
            if math.isfinite(g["t_max"]):
                lows.append(g["t_min"])
                highs.append(g["t_max"])
        per_seed.append(entry)
    ratios = {str(s): r["origin"]["scale_ratio"] for s, r in records_by_seed.items()}
    finite = [v for v in ratios.values() if v is not None and math.isfinite(v)]
    plateau = [plateau_outcome(r["origin"]) for r in records_by_seed.values()]
    tested = [p for p in plateau if p is not None]
    return {
        "growth_fit": {"t_min": min(lows) if lows else None,
                       "t_max": max(highs) if highs else None, "exponents": per_seed},
        "scale_ratio": float(np.mean(finite)) if finite else None,
        "scale_ratio_per_seed": ratios,
        "plateau_before_decay": bool(tested) and all(tested),
    }
