r"""The loss landscape of physics-informed training: Hessian spectra of the PDE and boundary terms.

**Claim** (Krishnapriyan, Gholami, Zhe, Kirby & Mahoney, "Characterizing possible failure modes
in physics-informed neural networks", NeurIPS 2021, arXiv 2109.01050; Rathore, Lei, Frangella,
Lu & Udell, "Challenges in training PINNs: a loss landscape perspective", ICML 2024, arXiv
2402.01868; abstracts verified, body statements from a third-party summary, unverified): the
soft PDE penalty makes the PINN loss ill-conditioned; the ill-conditioning comes from the
differential operator in the residual term, so the PDE term dominates the Hessian spectrum (a
bulk near zero plus large outliers); Adam followed by L-BFGS reaches a lower loss than either
alone. Added question (Cohen et al. 2021, "Gradient descent on neural networks typically occurs
at the edge of stability", arXiv 2103.00065): does full-batch GD on a PINN loss train at the
edge of stability, its sharpness rising to and hovering at ``2/η``?

**Set-up** (one seed draws the collocation points and the initialization). Viscous Burgers,
``ν = 0.01/π`` (:class:`valleys.sciml.BurgersPINN`; Raissi et al.'s benchmark), tanh MLP with
Xavier-normal init, float64, loss ``L = mean r_pde² + mean u(±1,t)² + mean (u(x,0)+sin πx)²``
(weights 1). The Hessian objectives are the PDE term, the boundary term (boundary + initial)
and the whole loss, all on the same model (``problem.objective(terms=...)``). Spectra
(``eigsh(which="both")`` for ``λ_max`` and ``λ_min``, the extreme-eigenvalue condition
estimate ``κ̂ = λ_max/|λ_min|``, and an SLQ density by ``valleys.spectral_density``) at
initialization, after Adam and after L-BFGS; ``λ_max`` of the three objectives every
``track_every`` iterations along the way. Runs from the same initialization: Adam
(``adam_steps``) then L-BFGS (``lbfgs_steps`` iterations, strong-Wolfe line search, history
100: Rathore et al.'s optimiser); Adam alone for the same total number of iterations; L-BFGS
alone for the same total; and GD at ``η = c · 2/λ_max(init)`` for each ``c`` in
``gd_fractions``, with the sharpness every ``gd_track_every`` steps. The relative L2 error
against the exact Cole–Hopf solution (:func:`valleys.sciml.burgers_exact`) on a test grid is
recorded for every run.

**Seeds.** Spectra and optimiser comparisons depend on the initialization and the points: 2
seeds in the quick preset (CI), 3 in the full one; every criterion is judged per seed (and per
checkpoint or learning rate where stated).

**Criteria** (module constants, fixed before any run):

* ``pde-dominates``: at each spectral checkpoint, ``λ_max(H_pde) ≥ DOMINANCE · λ_max(H_bc)``;
  agrees if every (seed, checkpoint) meets it, partly if some do;
* ``pde-worst-conditioned``: at each checkpoint ``κ̂(H_pde) > κ̂(H_bc)``; same aggregation;
* ``bulk-and-outliers``: after Adam and after L-BFGS, the SLQ spectral mass of the whole loss
  with ``|λ| ≤ BULK_REL · λ_max`` is ``≥ BULK_MASS``; same aggregation;
* ``adam-then-lbfgs``: per seed, the final loss of Adam→L-BFGS ``≤ LOSS_RATIO ×`` that of Adam
  alone with the same iterations; every seed must pass;
* ``adam-lbfgs-beats-lbfgs``: per seed, the same against L-BFGS alone;
* ``edge-of-stability``: per (seed, η) GD run that did not diverge, the median of
  ``λ_max / (2/η)`` over the last ``EOS_WINDOW`` of the steps lies in ``EOS_BAND``; agrees if
  every run does, partly if some do; diverged runs (non-finite loss or loss above
  ``DIVERGED`` × the initial loss) cannot test it.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from valleys.experiments.protocol import Claim, ClaimSpec, judge_seeds, spread
from valleys.linalg import eigsh, spectral_density
from valleys.operators import hessian
from valleys.sciml import BurgersPINN, mlp

NAME = "pinn-curvature"
PAPER = ("Krishnapriyan et al., \"Characterizing possible failure modes in physics-informed "
         "neural networks\", NeurIPS 2021 (arXiv 2109.01050); Rathore et al., \"Challenges in "
         "training PINNs: a loss landscape perspective\", ICML 2024 (arXiv 2402.01868)")

# Criteria, fixed before any run.
DOMINANCE = 10.0            # λ_max(PDE term) / λ_max(boundary term) at least this
BULK_REL = 1e-3             # |λ| ≤ BULK_REL · λ_max counts as the bulk near zero
BULK_MASS = 0.5             # SLQ mass of the bulk at least this
LOSS_RATIO = 0.5            # Adam→L-BFGS final loss at most this fraction of the other's
EOS_BAND = (0.85, 1.15)     # median sharpness / (2/η) in this band: at the edge of stability
EOS_WINDOW = 1 / 3          # the last third of the GD steps
DIVERGED = 10.0             # a GD loss above this many times the initial loss has diverged
CHECKPOINTS = ("init", "adam", "lbfgs")
TERMS = {"pde": ("pde",), "bc": ("boundary", "initial"), "total": None}


@dataclass(frozen=True)
class Preset:
    """Everything that defines the reproduction besides the seed.

    Attributes:
        width: hidden width of the tanh MLP.
        depth: hidden layers.
        n_pde: PDE collocation points (Latin hypercube).
        n_boundary: points on x = ±1.
        n_initial: points on t = 0.
        adam_steps: Adam iterations before L-BFGS.
        adam_lr: Adam's learning rate.
        lbfgs_steps: L-BFGS iterations after Adam (one update each, strong-Wolfe search).
        gd_fractions: GD learning rates as fractions ``c`` of ``2/λ_max`` at initialization.
        gd_steps: GD steps per learning rate.
        gd_track_every: GD steps between sharpness measurements.
        track_every: iterations between λ_max measurements of the three objectives.
        slq_probes: SLQ probes per density.
        slq_steps: Lanczos steps per SLQ probe.
        test_grid: (x points, t points) of the relative-L2 test grid.
        threads: torch threads.
    """

    width: int
    depth: int
    n_pde: int
    n_boundary: int
    n_initial: int
    adam_steps: int
    adam_lr: float
    lbfgs_steps: int
    gd_fractions: tuple[float, ...]
    gd_steps: int
    gd_track_every: int
    track_every: int
    slq_probes: int
    slq_steps: int
    test_grid: tuple[int, int]
    threads: int | None = 1


PRESETS: dict[str, Preset] = {
    # CI: about 30 s of CPU per seed on one thread.
    "quick": Preset(width=10, depth=3, n_pde=256, n_boundary=32, n_initial=32, adam_steps=300,
                    adam_lr=1e-3, lbfgs_steps=150, gd_fractions=(0.3, 0.6, 0.9), gd_steps=300,
                    gd_track_every=15, track_every=75, slq_probes=3, slq_steps=30,
                    test_grid=(64, 25)),
    # Wider net, more points, longer runs: about 6 min of CPU per seed on one thread.
    "full": Preset(width=20, depth=3, n_pde=500, n_boundary=50, n_initial=50, adam_steps=1500,
                   adam_lr=1e-3, lbfgs_steps=750, gd_fractions=(0.3, 0.6, 0.9), gd_steps=1500,
                   gd_track_every=30, track_every=250, slq_probes=6, slq_steps=50,
                   test_grid=(256, 100)),
}

CLAIMS = (
    ClaimSpec(
        "pde-dominates",
        "The PDE residual term dominates the Hessian spectrum of the PINN loss (its top "
        "eigenvalue far exceeds the boundary/initial term's).",
        f"per seed and checkpoint ({', '.join(CHECKPOINTS)}): λ_max(H_pde) ≥ {DOMINANCE:g} × "
        "λ_max(H_bc)",
        partly="some (seed, checkpoint) pairs meet it, others do not",
    ),
    ClaimSpec(
        "pde-worst-conditioned",
        "The ill-conditioning of the PINN loss comes from the differential operator in the "
        "residual term: the PDE term is the worst-conditioned part.",
        "per seed and checkpoint: κ̂(H_pde) > κ̂(H_bc), κ̂ = λ_max/|λ_min| from the extreme "
        "eigenvalues",
        partly="some (seed, checkpoint) pairs meet it, others do not",
    ),
    ClaimSpec(
        "bulk-and-outliers",
        "The Hessian spectrum of the PINN loss is a bulk near zero plus large outliers.",
        f"per seed, after Adam and after L-BFGS: SLQ mass with |λ| ≤ {BULK_REL:g}·λ_max is ≥ "
        f"{BULK_MASS:g}",
        partly="some (seed, checkpoint) pairs meet it, others do not",
    ),
    ClaimSpec(
        "adam-then-lbfgs",
        "L-BFGS after Adam reaches a lower loss than Adam alone.",
        f"per seed: final loss of Adam→L-BFGS ≤ {LOSS_RATIO:g} × final loss of Adam alone with "
        "the same number of iterations",
    ),
    ClaimSpec(
        "adam-lbfgs-beats-lbfgs",
        "Adam followed by L-BFGS reaches a lower loss than L-BFGS alone.",
        f"per seed: final loss of Adam→L-BFGS ≤ {LOSS_RATIO:g} × final loss of L-BFGS alone "
        "with the same number of iterations",
    ),
    ClaimSpec(
        "edge-of-stability",
        "Full-batch GD on the PINN loss trains at the edge of stability: the sharpness rises to "
        "2/η and hovers there (Cohen et al. 2021; asked of PINNs here).",
        f"per (seed, η) run that did not diverge: median λ_max/(2/η) over the last "
        f"{EOS_WINDOW:.2g} of the steps in [{EOS_BAND[0]:g}, {EOS_BAND[1]:g}]",
        partly="some runs reach the edge, others do not",
    ),
)
SPECS = {spec.id: spec for spec in CLAIMS}


# ------------------------------------------------------------------------------------------------
# Measurements
# ------------------------------------------------------------------------------------------------


def make_problem(config: Preset, seed: int, device: torch.device) -> BurgersPINN:
    model = mlp(2, [config.width] * config.depth, 1, seed=1000 + seed).to(device)
    return BurgersPINN(model, n_pde=config.n_pde, n_boundary=config.n_boundary,
                       n_initial=config.n_initial, seed=seed, test_grid=config.test_grid)


def top_eigenvalue(problem: BurgersPINN, terms, v0=None) -> tuple[float, torch.Tensor]:
    """``λ_max`` of the objective's Hessian (Lanczos, relative residual 1e-3)."""
    op = hessian(problem.objective(terms=terms))
    result = eigsh(op, k=1, which="largest", tol=1e-3, v0=v0, max_matvecs=400, seed=0)
    return float(result.values[0]), result.vectors[:, 0]


def spectrum(problem: BurgersPINN, terms, config: Preset, seed: int) -> dict[str, Any]:
    """Extreme eigenvalues, the condition estimate and an SLQ density of one objective."""
    op = hessian(problem.objective(terms=terms))
    both = eigsh(op, k=2, which="both", tol=1e-3, max_matvecs=600, seed=seed)
    lam_max, lam_min = float(both.values[0]), float(both.values[1])
    slq = spectral_density(op, num_probes=config.slq_probes,
                                   lanczos_steps=config.slq_steps, seed=seed, num_points=400)
    nodes, weights = slq.nodes, slq.weights
    bulk = float((weights * (nodes.abs() <= BULK_REL * abs(lam_max))).sum() / nodes.shape[0])
    return {
        "lambda_max": lam_max, "lambda_min": lam_min,
        "kappa": lam_max / abs(lam_min) if lam_min != 0 else math.inf,
        "converged": bool(both.converged), "bulk_mass": bulk,
        "density_grid": slq.grid, "density": slq.density,
    }


def spectra(problem: BurgersPINN, config: Preset, seed: int) -> dict[str, Any]:
    return {name: spectrum(problem, terms, config, seed) for name, terms in TERMS.items()}


def state(problem: BurgersPINN) -> dict[str, Any]:
    with torch.no_grad():
        theta = [p.detach().clone() for p in problem.model.parameters()]
    return {"theta": theta}


def restore(problem: BurgersPINN, saved: dict[str, Any]) -> None:
    with torch.no_grad():
        for p, t in zip(problem.model.parameters(), saved["theta"], strict=True):
            p.copy_(t)


def _track(problem, it, trace, vectors):
    trace["iteration"].append(it)
    for name, terms in TERMS.items():
        lam, vectors[name] = top_eigenvalue(problem, terms, vectors.get(name))
        trace[name].append(lam)


def train(problem: BurgersPINN, config: Preset, schedule: list[tuple[str, int]],
          *, track: bool) -> dict[str, Any]:
    """Run ``schedule`` (``[("adam", n), ("lbfgs", n)]``) from the model's current state; the
    loss after every iteration, ``λ_max`` of the three objectives every ``track_every``."""
    params = list(problem.model.parameters())
    losses = [float(problem.loss().detach())]
    trace: dict[str, list] = {"iteration": [], **{k: [] for k in TERMS}}
    vectors: dict[str, torch.Tensor] = {}
    evaluations = 0
    it = 0
    if track:
        _track(problem, it, trace, vectors)
    for kind, steps in schedule:
        if kind == "adam":
            opt = torch.optim.Adam(params, lr=config.adam_lr)
        else:
            opt = torch.optim.LBFGS(params, lr=1.0, max_iter=1, max_eval=25, history_size=100,
                                    line_search_fn="strong_wolfe", tolerance_grad=0.0,
                                    tolerance_change=0.0)

        def closure(opt=opt):
            nonlocal evaluations
            opt.zero_grad()
            loss = problem.loss()
            loss.backward()
            evaluations += 1
            return loss

        for _ in range(steps):
            opt.step(closure)
            it += 1
            with torch.no_grad():
                value = float(problem.loss())
            losses.append(value)
            if not math.isfinite(value):
                break
            if track and it % config.track_every == 0:
                _track(problem, it, trace, vectors)
    return {"loss": losses, "final_loss": losses[-1], "evaluations": evaluations,
            "relative_l2": problem.relative_l2(), "trace": trace}


def gradient_descent(problem: BurgersPINN, config: Preset, lr: float) -> dict[str, Any]:
    """Full-batch GD with step ``lr``: losses and the sharpness along the way."""
    params = list(problem.model.parameters())
    loss0 = float(problem.loss().detach())
    losses, sharp_steps, sharpness = [loss0], [], []
    v0, diverged = None, False
    for step in range(config.gd_steps + 1):
        if step % config.gd_track_every == 0:
            lam, v0 = top_eigenvalue(problem, None, v0)
            sharp_steps.append(step)
            sharpness.append(lam)
        if step == config.gd_steps:
            break
        loss = problem.loss()
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.sub_(lr * g)
            value = float(problem.loss())
        losses.append(value)
        if not math.isfinite(value) or value > DIVERGED * loss0:
            diverged = True
            break
    return {"lr": lr, "loss": losses, "final_loss": losses[-1], "diverged": diverged,
            "sharpness_step": sharp_steps, "sharpness": sharpness,
            "relative_l2": None if diverged else problem.relative_l2()}


def measure(config: Preset, seed: int, device: torch.device) -> dict[str, Any]:
    """Spectra along Adam→L-BFGS, the optimiser comparison and GD runs for one seed."""
    t0 = time.perf_counter()
    problem = make_problem(config, seed, torch.device(device))
    init = state(problem)
    spec = {"init": spectra(problem, config, seed)}
    total = config.adam_steps + config.lbfgs_steps
    runs = {"adam": train(problem, config, [("adam", config.adam_steps)], track=True)}
    after_adam = state(problem)
    spec["adam"] = spectra(problem, config, seed)
    runs["adam_lbfgs"] = train(problem, config, [("lbfgs", config.lbfgs_steps)], track=True)
    spec["lbfgs"] = spectra(problem, config, seed)
    restore(problem, after_adam)
    runs["adam_only"] = train(problem, config, [("adam", config.lbfgs_steps)], track=False)
    restore(problem, init)
    runs["lbfgs_only"] = train(problem, config, [("lbfgs", total)], track=False)
    gd = []
    lam0 = spec["init"]["total"]["lambda_max"]
    for c in config.gd_fractions:
        restore(problem, init)
        gd.append({"fraction": c, **gradient_descent(problem, config, c * 2 / lam0)})
    return {"spectra": spec, "runs": runs, "gd": gd, "seconds": time.perf_counter() - t0}


# ------------------------------------------------------------------------------------------------
# Criteria (fixed before any run)
# ------------------------------------------------------------------------------------------------


def eos_ratio(run: dict[str, Any]) -> float | None:
    """Median ``λ_max/(2/η)`` over the last :data:`EOS_WINDOW` of a GD run (None if diverged)."""
    if run["diverged"]:
        return None
    steps, sharp = run["sharpness_step"], run["sharpness"]
    start = (1 - EOS_WINDOW) * max(steps)
    window = [s for t, s in zip(steps, sharp, strict=True) if t >= start]
    return statistics.median(window) * run["lr"] / 2 if window else None


def checks(record: dict[str, Any]) -> dict[str, Any]:
    """Per-seed numbers the criteria judge."""
    spec, runs = record["spectra"], record["runs"]
    return {
        "dominance": {c: spec[c]["pde"]["lambda_max"] / spec[c]["bc"]["lambda_max"]
                      for c in CHECKPOINTS},
        "kappa_pde": {c: spec[c]["pde"]["kappa"] for c in CHECKPOINTS},
        "kappa_bc": {c: spec[c]["bc"]["kappa"] for c in CHECKPOINTS},
        "bulk_mass": {c: spec[c]["total"]["bulk_mass"] for c in ("adam", "lbfgs")},
        "ratio_adam": runs["adam_lbfgs"]["final_loss"] / runs["adam_only"]["final_loss"],
        "ratio_lbfgs": runs["adam_lbfgs"]["final_loss"] / runs["lbfgs_only"]["final_loss"],
        "eos": [eos_ratio(run) for run in record["gd"]],
    }


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def claims(records_by_seed: dict[int, dict[str, Any]], config: Preset) -> list[Claim]:
    """One verdict per :data:`CLAIMS` entry, computed from its criterion."""
    seeds = list(records_by_seed)
    v = {s: checks(r) for s, r in records_by_seed.items()}
    out = []

    dom = [v[s]["dominance"][c] for s in seeds for c in CHECKPOINTS]
    passes = [d >= DOMINANCE if _finite(d) and d > 0 else None for d in dom]
    out.append(SPECS["pde-dominates"].judge(
        judge_seeds(passes, partly=True),
        {"lambda_max_pde_over_bc": spread(dom),
         "pairs_meeting": sum(bool(p) for p in passes)}, seeds))

    pairs = [(v[s]["kappa_pde"][c], v[s]["kappa_bc"][c]) for s in seeds for c in CHECKPOINTS]
    passes = [kp > kb if _finite(kp) and _finite(kb) else None for kp, kb in pairs]
    out.append(SPECS["pde-worst-conditioned"].judge(
        judge_seeds(passes, partly=True),
        {"kappa_pde": spread([p for p, _ in pairs]), "kappa_bc": spread([b for _, b in pairs]),
         "pairs_meeting": sum(bool(p) for p in passes)}, seeds))

    bulk = [v[s]["bulk_mass"][c] for s in seeds for c in ("adam", "lbfgs")]
    passes = [b >= BULK_MASS if _finite(b) else None for b in bulk]
    out.append(SPECS["bulk-and-outliers"].judge(
        judge_seeds(passes, partly=True), {"bulk_mass": spread(bulk)}, seeds))

    for cid, key in (("adam-then-lbfgs", "ratio_adam"), ("adam-lbfgs-beats-lbfgs", "ratio_lbfgs")):
        passes_by_seed = {s: (v[s][key] <= LOSS_RATIO if _finite(v[s][key]) else None)
                          for s in seeds}
        out.append(SPECS[cid].judge_per_seed(
            passes_by_seed, {"final_loss_ratio": spread([v[s][key] for s in seeds])}))

    ratios = [r for s in seeds for r in v[s]["eos"]]
    passes = [EOS_BAND[0] <= r <= EOS_BAND[1] if _finite(r) else None for r in ratios]
    diverged = sum(r is None for r in ratios)
    out.append(SPECS["edge-of-stability"].judge(
        judge_seeds(passes, partly=True),
        {"sharpness_over_2_by_eta": spread(ratios), "runs_at_edge": sum(bool(p) for p in passes),
         "runs": len(ratios)}, seeds,
        note=f"{diverged} runs diverged and could not test it" if diverged else ""))
    return out
