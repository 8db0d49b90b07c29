r"""Quasistatic Langevin dynamics for mixed Nash equilibria.

**Claim** (Ma & Ying, "Provably convergent quasistatic dynamics for mean-field two-player
zero-sum games", ICLR 2022, arXiv 2202.10947). Keeping one player at its (Gibbs) best response
while the other follows a Wasserstein gradient flow converges to the mixed Nash equilibrium of
the entropy-regularised game ``L(p, q) = ∬K dp dq + τ∫p log p − τ∫q log q``; the particle
version (quasistatic Langevin gradient descent, inner and outer loops) converges where
simultaneous descent–ascent can cycle, and trains mixtures of GANs. Baselines: Langevin
descent–ascent and Wasserstein–Fisher–Rao (WFR) descent–ascent (Domingo-Enrich, Jelassi,
Mensch, Rotskoff & Bruna, NeurIPS 2020, arXiv 2002.06277). The paper's own test problems and
numbers were not available to us; the claims are tested on closed-form games
whose equilibria are derived (:mod:`valleys.games.payoffs`).

**Set-up** (one seed; every random choice comes from it). Every method gets the same step
``η``, temperature and outer steps; the quasistatic method also runs ``inner_steps``
fast-player steps per outer step (its cost is counted in payoff evaluations).

1. *Quadratic–bilinear game* ``K = xᵀAy + ½|x|² − |y|²`` (``A = [[1, 2], [0, 1]]``), unique
   regularised equilibrium ``N(0, τ/a·I) × N(0, τ/b·I)``; distance = W2 between the clouds'
   Gaussian fits and the equilibrium (summed over players). Floor: the same distance for ``n``
   exact equilibrium samples plus the Euler step's variance bias
   ``√d (√(τ/(c(1 − ηc/2))) − √(τ/c))`` per player.
2. *Torus game* ``K = cos(x − y)``: uniform equilibrium; exact NI error ``|ĉ_x| + |ĉ_y|``
   (first Fourier modes). Floor ``2·√(π/(4n))`` (``E|ĉ|`` of ``n`` uniform points, per player).
3. *Cycling game* ``K = sin(x − y)`` at a low temperature, both clouds started concentrated:
   for point masses descent–ascent moves both players with the same velocity ``−cos(x − y)``,
   so the clouds chase each other around the circle; the quasistatic player descends the
   convex ``F(p) = max_q L(p, q)``.
4. *Rock–paper–scissors* through weights alone (WFR without transport = mirror
   descent–ascent): ``KL(p*‖p) + KL(q*‖q)`` is conserved in continuous time (grows in discrete
   time), so the last iterate cycles while the running average converges.
5. *Mixtures of GANs* (:mod:`valleys.games.gans`): ``gan_players`` generators against as many
   critics on 8 and 25 Gaussians. **Every budget is a count**: each method gets
   ``gan_evaluations`` payoff evaluations (quasistatic: ``gan_evaluations / (inner + 1)``
   outer steps; the others ``gan_evaluations`` steps), so the runs are reproducible whatever
   the machine's load. The GAN step and critic decay were set once in a pilot run so that the
   methods do not diverge (η = 0.05 and decay 0.01 diverged for two methods); they are the
   same for all methods. Fit: exact W2 between ``gan_w2_samples`` generated and as many target
   points, against the floor (W2 between two independent target samples of that size).

**Criteria** (module constants, fixed before any run; per seed, aggregated over seeds):

* ``equilibrium-error``: on the quadratic and the torus game the quasistatic method's final
  distance ≤ ``CONVERGED_FLOOR_FACTOR`` × floor.
* ``cycling``: descent–ascent keeps ≥ ``CYCLE_KEEP_FRACTION`` of its initial NI error while its
  x-cloud turns by ≥ ``CYCLE_MIN_ROTATION`` rad, and the quasistatic NI ≤
  ``CONVERGED_FLOOR_FACTOR`` × floor; "partly" when some seeds meet both parts and others not.
* ``rock-paper-scissors``: averaged NI ≤ ``AVERAGE_GAIN`` × last-iterate NI and the KL sum
  never decreases.
* ``wfr-regularized``: WFR's final distance on the quadratic game > ``CONVERGED_FLOOR_FACTOR``
  × floor while its x-weights concentrate (``1/Σw² ≤ WFR_ESS_FRACTION · n``).
* ``gan-mixture``: for each seed and target, the quasistatic mixture fits if its W2 ≤
  ``GAN_FIT_FACTOR`` × W2 floor after ``gan_evaluations`` payoff evaluations. The baselines at
  the same count are the positive control of the budget: a pair where no method fits (or the
  quasistatic run diverged) cannot test the claim, since the budget rather than the method
  could be at fault; a pair where a baseline fits and the quasistatic mixture does not counts
  against the claim. "partly" when some tested pairs fit and others do not.

A run that diverges cannot test a claim that needs it ("not tested" for that seed).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from valleys.experiments.protocol import Claim, ClaimSpec, judge_seeds, spread
from valleys.games import (
    GameResult,
    QuadraticBilinear,
    TranslationGame,
    gaussian_fit,
    gaussian_w2,
    rock_paper_scissors,
    solve,
)
from valleys.games.gans import (
    GANPayoff,
    GaussianMixture,
    ParticleMLP,
    gan_metrics,
    gaussian_mixture,
    sample_generators,
)

NAME = "quasistatic-games"
PAPER = ("Ma & Ying, \"Provably convergent quasistatic dynamics for mean-field two-player "
         "zero-sum games\", ICLR 2022, arXiv 2202.10947; baselines from Domingo-Enrich, "
         "Jelassi, Mensch, Rotskoff & Bruna, \"A mean-field analysis of two-player zero-sum "
         "games\", NeurIPS 2020, arXiv 2002.06277")
METHODS = ("quasistatic", "descent-ascent", "wfr")
CLOSED_GAMES = ("quadratic", "torus", "cycling")

# Criteria, fixed before any run.
CONVERGED_FLOOR_FACTOR = 4.0   # converged: final distance <= 4 x finite-n floor (+ step bias)
CYCLE_KEEP_FRACTION = 0.25     # cycling: descent-ascent keeps >= 25% of its initial NI ...
CYCLE_MIN_ROTATION = math.pi   # ... while its x-cloud's phase turns by >= pi rad
AVERAGE_GAIN = 0.25            # RPS: averaged NI <= 25% of the last iterate's
KL_TOLERANCE = 1e-12           # RPS: "never decreases" up to rounding
WFR_ESS_FRACTION = 0.25        # WFR: effective particles 1/sum(w^2) <= 25% of n
GAN_FIT_FACTOR = 2.0           # GAN: fit if W2(generated, target) <= 2 x W2 floor

ANIMATION_SAMPLES = 200        # generator samples per GAN animation frame
ANIMATION_DECIMALS = 3         # animation coordinates are stored rounded (file size)


@dataclass(frozen=True)
class Preset:
    """Everything that defines a run besides the seed; every budget is a count.

    Attributes:
        particles: particles per player on the closed-form games.
        steps, lr, inner_steps, inner_lr: outer steps, step ``η`` and the quasistatic inner
            loop on games 1–2.
        quadratic_temperature, torus_temperature, cycle_temperature: ``τ`` of games 1–3.
        cycle_steps: outer steps of the cycling game.
        rps_steps, rps_lr: weights-only mirror descent–ascent on rock–paper–scissors.
        record_every: outer steps between recorded points of the closed-form curves.
        gan_targets: Gaussian mixtures (``"8gaussians"``, ``"25gaussians"``).
        gan_players: generators = critics per mixture.
        gan_widths: hidden widths of generator and critic MLPs.
        gan_evaluations: payoff evaluations per method and target (the compute budget).
        gan_lr, gan_batch, gan_temperature, gan_mirror_lr, gan_inner_steps, gan_critic_decay:
            the GAN game and its solvers.
        gan_w2_samples: generated (and target) points in the W2 fit measure.
        gan_records: points on each GAN learning curve (besides step 0).
        animation_frames: most frames per animation.
        threads: torch threads.
    """

    particles: int
    steps: int
    lr: float
    inner_steps: int
    inner_lr: float
    quadratic_temperature: float
    torus_temperature: float
    cycle_temperature: float
    cycle_steps: int
    rps_steps: int
    rps_lr: float
    record_every: int
    gan_targets: tuple[str, ...]
    gan_players: int
    gan_widths: tuple[int, ...]
    gan_evaluations: int
    gan_lr: float
    gan_batch: int
    gan_temperature: float
    gan_mirror_lr: float
    gan_inner_steps: int
    gan_critic_decay: float
    gan_w2_samples: int
    gan_records: int
    animation_frames: int = 24
    threads: int | None = 1


PRESETS: dict[str, Preset] = {
    # CI: about 25 s of CPU per seed on one thread.
    "quick": Preset(
        particles=200, steps=200, lr=0.05, inner_steps=5, inner_lr=0.05,
        quadratic_temperature=0.5, torus_temperature=0.5, cycle_temperature=0.05,
        cycle_steps=300, rps_steps=3000, rps_lr=0.01, record_every=10,
        gan_targets=("8gaussians", "25gaussians"), gan_players=5, gan_widths=(32, 32),
        gan_evaluations=600, gan_lr=0.02, gan_batch=128, gan_temperature=1e-6,
        gan_mirror_lr=0.1, gan_inner_steps=5, gan_critic_decay=0.1, gan_w2_samples=500,
        gan_records=3,
    ),
    # 500 particles, 2x longer horizons at half the step, 10 inner steps; the GANs get
    # 2400 payoff evaluations each (a pilot on 8 Gaussians, seed 0, found the quasistatic W2
    # flat from 1600 to 9600 evaluations, so more would not change the fit).
    "full": Preset(
        particles=500, steps=800, lr=0.025, inner_steps=10, inner_lr=0.025,
        quadratic_temperature=0.5, torus_temperature=0.5, cycle_temperature=0.05,
        cycle_steps=1200, rps_steps=20000, rps_lr=0.005, record_every=20,
        gan_targets=("8gaussians", "25gaussians"), gan_players=5, gan_widths=(64, 64),
        gan_evaluations=2400, gan_lr=0.02, gan_batch=256, gan_temperature=1e-6,
        gan_mirror_lr=0.1, gan_inner_steps=5, gan_critic_decay=0.1, gan_w2_samples=1000,
        gan_records=6,
    ),
}

CLAIMS = (
    ClaimSpec(
        "equilibrium-error",
        "Quasistatic Langevin gradient descent converges to the mixed Nash equilibrium of the "
        "entropy-regularised game (here: a quadratic–bilinear game and cos(x − y) on the "
        "torus, whose equilibria are known in closed form).",
        f"per seed: the quasistatic method's final distance to the equilibrium ≤ "
        f"{CONVERGED_FLOOR_FACTOR:g} × the finite-n floor on both games",
    ),
    ClaimSpec(
        "cycling",
        "Simultaneous descent–ascent can cycle where the quasistatic dynamics converges "
        "(sin(x − y) on the torus at low temperature, clouds started concentrated).",
        f"per seed: descent–ascent keeps ≥ {CYCLE_KEEP_FRACTION:.0%} of its initial NI error "
        f"while its x-cloud turns ≥ π rad, and the quasistatic NI error ≤ "
        f"{CONVERGED_FLOOR_FACTOR:g} × floor",
        partly="some seeds meet both parts and others do not",
    ),
    ClaimSpec(
        "rock-paper-scissors",
        "Weight-only mirror descent–ascent (WFR without transport) on rock–paper–scissors: "
        "the last iterate cycles away from the equilibrium while the running average "
        "converges (Domingo-Enrich et al. 2020).",
        f"per seed: averaged NI ≤ {AVERAGE_GAIN:g} × last-iterate NI, and "
        "KL(p*‖p) + KL(q*‖q) never decreases",
    ),
    ClaimSpec(
        "wfr-regularized",
        "Particle WFR descent–ascent moves the weights by the potential alone, so at τ > 0 it "
        "targets the unregularised game: its weights concentrate and it does not reach the "
        "entropy-regularised equilibrium of the quadratic–bilinear game.",
        f"per seed: WFR's final distance on the quadratic game > {CONVERGED_FLOOR_FACTOR:g} × "
        f"floor while its x-weights have 1/Σw² ≤ {WFR_ESS_FRACTION:g} n",
    ),
    ClaimSpec(
        "gan-mixture",
        "Quasistatic Langevin gradient descent trains mixtures of GANs.",
        f"per seed and target (8 and 25 Gaussians), after the preset's count of payoff "
        f"evaluations: the quasistatic mixture fits if its W2 to the target ≤ "
        f"{GAN_FIT_FACTOR:g} × the W2 floor (two independent target samples); a pair where no "
        "method fits at that count (or the quasistatic run diverged) is not tested",
        partly="some (seed, target) pairs fit and others do not",
    ),
)
SPECS = {spec.id: spec for spec in CLAIMS}


# ------------------------------------------------------------------------------------------------
# Closed-form games
# ------------------------------------------------------------------------------------------------


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _method_options(method: str, config: Preset) -> dict[str, Any]:
    if method == "quasistatic":
        return {"inner_steps": config.inner_steps, "inner_lr": config.inner_lr}
    return {}


def _rounded(t: torch.Tensor) -> list:
    return np.round(t.detach().double().cpu().numpy(), ANIMATION_DECIMALS).tolist()


def unwrapped_rotation(phases: list[float]) -> float:
    """``|unwrap(φ)_T − φ_0|``: how far (rad) the x-cloud's first Fourier mode turned."""
    return float(abs(np.unwrap(np.asarray(phases))[-1] - phases[0])) if phases else 0.0


def _run_record(result: GameResult, *, keep_clouds: bool = False,
                snapshots: bool = False) -> dict[str, Any]:
    """The JSON-able summary of one solver run (history, final numbers, optionally clouds)."""
    last, first = result.history[-1], result.history[0]
    entry: dict[str, Any] = {
        "distance": last["distance"], "initial_distance": first["distance"],
        "ni_error": last["ni_error"], "steps": result.steps,
        "evaluations": result.evaluations, "status": result.status,
        "history": [{k: v for k, v in h.items() if k != "time"} for h in result.history],
    }
    if result.x_weights is not None:  # effective particle counts 1/Σw²
        entry["ess_x"] = float(1.0 / result.x_weights.square().sum())
        entry["ess_y"] = float(1.0 / result.y_weights.square().sum())
    if "regularized_gap" in last:
        entry["regularized_gap"] = last["regularized_gap"]
    if "phase_x" in last:
        entry["rotation"] = unwrapped_rotation([h["phase_x"] for h in result.history])
    if keep_clouds:
        entry["x"] = _rounded(result.x[:, 0])
        entry["y"] = _rounded(result.y[:, 0])
    if snapshots:
        entry["snapshots"] = [{"step": s.step, "x": _rounded(s.x[:, 0]),
                               "y": _rounded(s.y[:, 0])} for s in result.snapshots]
    return entry


def quadratic_game(config: Preset, seed: int, device: torch.device) -> dict[str, Any]:
    """Game 1: W2 of the Gaussian fits to ``N(0, τ/a) × N(0, τ/b)``, the exact regularised gap
    of the fits, and the floor (n exact samples plus the Euler step's variance bias)."""
    dtype = torch.float64
    A = torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=dtype, device=device)
    game = QuadraticBilinear(A, a=1.0, b=2.0)
    tau, n = config.quadratic_temperature, config.particles
    vx, vy = game.equilibrium_variances(tau)
    eye = torch.eye(2, dtype=dtype, device=device)
    zero = torch.zeros(2, dtype=dtype, device=device)

    def monitor(state):
        wx, wy = state.x_weights, state.y_weights
        mx, cx = gaussian_fit(state.x, wx)
        my, cy = gaussian_fit(state.y, wy)
        return {"distance": gaussian_w2(state.x, zero, vx * eye, wx)
                + gaussian_w2(state.y, zero, vy * eye, wy),
                "regularized_gap": game.regularized_gap(mx, cx, my, cy, tau),
                "ni_error": game.ni_error(state.x, state.y, wx, wy)}

    g = _gen(seed)
    x0 = (torch.randn(n, 2, generator=g, dtype=dtype) + 3.0).to(device)
    y0 = (torch.randn(n, 2, generator=g, dtype=dtype) - 2.0).to(device)
    runs = {m: _run_record(solve(game, x0, y0, m, temperature=tau, steps=config.steps,
                                 lr=config.lr, seed=seed, monitor=monitor,
                                 record_every=config.record_every,
                                 **_method_options(m, config)))
            for m in METHODS}
    g2 = _gen(seed + 1)
    ex = (torch.randn(n, 2, generator=g2, dtype=dtype) * math.sqrt(vx)).to(device)
    ey = (torch.randn(n, 2, generator=g2, dtype=dtype) * math.sqrt(vy)).to(device)
    floor = gaussian_w2(ex, zero, vx * eye) + gaussian_w2(ey, zero, vy * eye)
    bias = math.sqrt(2) * sum(math.sqrt(game.discrete_variance(tau, config.lr, p)) - math.sqrt(v)
                              for p, v in (("x", vx), ("y", vy)))
    return {"runs": runs, "floor": float(floor + bias), "distance_kind": "W2 of Gaussian fits"}


def torus_game(config: Preset, seed: int, device: torch.device, kind: str, tau: float,
               steps: int, *, animate: bool = False) -> dict[str, Any]:
    """Games 2 and 3: exact NI error ``|ĉ_x| + |ĉ_y|`` and the phase of the x-cloud.

    With ``animate`` the descent–ascent and quasistatic runs keep about
    ``config.animation_frames`` snapshots of their clouds, and every run its final clouds.
    """
    game = TranslationGame(kind)
    n = config.particles

    def monitor(state):
        w = (state.x_weights if state.x_weights is not None
             else torch.full((n,), 1.0 / n, dtype=state.x.dtype, device=state.x.device))
        c = complex(float(w @ torch.cos(state.x[:, 0])), float(w @ torch.sin(state.x[:, 0])))
        ni = game.ni_error(state.x, state.y, state.x_weights, state.y_weights)
        return {"ni_error": ni, "distance": ni, "phase_x": math.atan2(c.imag, c.real)}

    g = _gen(seed)
    x0 = torch.remainder(0.3 * torch.randn(n, 1, generator=g, dtype=torch.float64) + 1.0,
                         2 * math.pi).to(device)
    y0 = torch.remainder(0.3 * torch.randn(n, 1, generator=g, dtype=torch.float64) + 2.5,
                         2 * math.pi).to(device)
    runs = {}
    for m in METHODS:
        snap = animate and m != "wfr"
        snaps = ({"snapshot_every": max(1, math.ceil(steps / config.animation_frames)),
                  "max_snapshots": config.animation_frames + 1} if snap else {})
        result = solve(game, x0, y0, m, temperature=tau, steps=steps, lr=config.lr, seed=seed,
                       x_space="torus", y_space="torus", monitor=monitor,
                       record_every=config.record_every, **snaps, **_method_options(m, config))
        runs[m] = _run_record(result, keep_clouds=animate, snapshots=snap)
    return {"runs": runs, "floor": 2 * math.sqrt(math.pi / (4 * n)),
            "distance_kind": "NI error (exact)"}


def rps_game(config: Preset, seed: int, device: torch.device) -> dict[str, Any]:
    """Game 4: weights-only mirror descent–ascent on rock–paper–scissors."""
    game = rock_paper_scissors()
    x, y = game.pure_strategies(device=device)
    g = _gen(seed)
    wx = torch.softmax(2 * torch.randn(3, generator=g, dtype=torch.float64), 0).to(device)
    wy = torch.softmax(2 * torch.randn(3, generator=g, dtype=torch.float64), 0).to(device)
    third = torch.full((3,), 1 / 3, dtype=torch.float64, device=device)

    def monitor(state):
        out = {"ni_error": game.ni_error(state.x_weights, state.y_weights)}
        out["ni_error_average"] = (game.ni_error(state.x_weights_avg, state.y_weights_avg)
                                   if state.x_weights_avg is not None else out["ni_error"])
        out["kl"] = float((third * torch.log(third / state.x_weights)).sum()
                          + (third * torch.log(third / state.y_weights)).sum())
        return out

    result = solve(game, x, y, "wfr", temperature=0.0, steps=config.rps_steps, lr=config.rps_lr,
                   seed=seed, transport=False, x_weights=wx, y_weights=wy, monitor=monitor,
                   record_every=max(1, config.rps_steps // 100))
    kl = [h["kl"] for h in result.history]
    return {"ni_last": result.history[-1]["ni_error"],
            "ni_average": result.history[-1]["ni_error_average"],
            "kl_start": kl[0], "kl_end": kl[-1],
            "kl_monotone": all(b >= a - KL_TOLERANCE for a, b in itertools.pairwise(kl)),
            "steps": result.steps, "status": result.status,
            "history": [{k: v for k, v in h.items() if k != "time"} for h in result.history]}


# ------------------------------------------------------------------------------------------------
# Mixtures of GANs
# ------------------------------------------------------------------------------------------------


def gan_steps(method: str, config: Preset) -> int:
    """Outer steps that spend ``config.gan_evaluations`` payoff evaluations:
    ``E / (inner + 1)`` for the quasistatic method, ``E`` for the others."""
    per_step = config.gan_inner_steps + 1 if method == "quasistatic" else 1
    return max(1, config.gan_evaluations // per_step)


def _gan_run(method: str, target: GaussianMixture, G: ParticleMLP, D: ParticleMLP,
             config: Preset, seed: int, device: torch.device, animate: bool) -> dict[str, Any]:
    """One method on one target: learning curve of W2, final metrics, samples to plot."""
    payoff = GANPayoff(target, G, D, batch_size=config.gan_batch,
                       critic_decay=config.gan_critic_decay, seed=seed)
    g = _gen(seed)
    x0 = G.init(config.gan_players, generator=g).to(device)
    y0 = D.init(config.gan_players, generator=g).to(device)
    steps = gan_steps(method, config)
    options: dict[str, Any] = {}
    if method == "quasistatic":
        options = {"inner_steps": config.gan_inner_steps}
    elif method == "wfr":
        options = {"mirror_lr": config.gan_mirror_lr}
    if animate:
        options.update(snapshot_every=max(1, math.ceil(steps / config.animation_frames)),
                       max_snapshots=config.animation_frames + 1)

    def monitor(state):
        samples = sample_generators(G, state.x, config.gan_w2_samples,
                                    weights=state.x_weights, seed=seed + 1)
        m = gan_metrics(samples, target, w2_samples=config.gan_w2_samples, seed=seed + 2)
        return {"w2": m["w2"], "mode_coverage": m["mode_coverage"]}

    result = solve(payoff, x0, y0, method, temperature=config.gan_temperature, steps=steps,
                   lr=config.gan_lr, seed=seed, monitor=monitor,
                   record_every=max(1, steps // config.gan_records), **options)
    samples = sample_generators(G, result.x, config.gan_w2_samples, weights=result.x_weights,
                                seed=seed + 1)
    metrics = gan_metrics(samples, target, w2_samples=config.gan_w2_samples, seed=seed + 2)
    finite = samples.double().cpu()
    finite = finite[torch.isfinite(finite).all(1)]
    entry = {**metrics, "steps": result.steps, "evaluations": result.evaluations,
             "status": result.status, "samples": _rounded(finite),
             "history": [{k: v for k, v in h.items() if k != "time"} for h in result.history]}
    if animate:  # the same latent draws in every frame: the motion is the generators' alone
        frames = []
        for s in result.snapshots:
            pts = sample_generators(G, s.x, ANIMATION_SAMPLES, weights=s.x_weights,
                                    seed=seed + 1).double().cpu()
            frames.append({"step": s.step, "samples": _rounded(pts[torch.isfinite(pts).all(1)])})
        entry["frames"] = frames
    return entry


def gans(config: Preset, seed: int, device: torch.device) -> dict[str, dict[str, Any]]:
    """Every method on every target at the same count of payoff evaluations; the first
    target's runs keep snapshots for an animation."""
    G = ParticleMLP((2, *config.gan_widths, 2))
    D = ParticleMLP((2, *config.gan_widths, 1))
    return {name: {m: _gan_run(m, gaussian_mixture(name), G, D, config, seed, device,
                               animate=index == 0)
                   for m in METHODS}
            for index, name in enumerate(config.gan_targets)}


def measure(config: Preset, seed: int, device: torch.device) -> dict[str, Any]:
    """All five parts of the reproduction for one seed."""
    device = torch.device(device)
    return {
        "quadratic": quadratic_game(config, seed, device),
        "torus": torus_game(config, seed, device, "cos", config.torus_temperature,
                            config.steps),
        "cycling": torus_game(config, seed, device, "sin", config.cycle_temperature,
                              config.cycle_steps, animate=True),
        "rps": rps_game(config, seed, device),
        "gans": gans(config, seed, device),
    }


# ------------------------------------------------------------------------------------------------
# Criteria (fixed before any run)
# ------------------------------------------------------------------------------------------------


def _diverged(run: dict[str, Any]) -> bool:
    return run.get("status") == "diverged"


def _ratio(value: float | None, floor: float) -> float | None:
    if value is None or not math.isfinite(value) or not floor > 0:
        return None
    return value / floor


def equilibrium_pass(record: dict[str, Any]) -> bool | None:
    """Quasistatic final distance ≤ factor × floor on the quadratic and torus games
    (``None`` if one of those runs diverged)."""
    outcomes = []
    for game in ("quadratic", "torus"):
        run = record[game]["runs"]["quasistatic"]
        ratio = _ratio(run["distance"], record[game]["floor"])
        if _diverged(run) or ratio is None:
            return None
        outcomes.append(ratio <= CONVERGED_FLOOR_FACTOR)
    return all(outcomes)


def cycling_parts(record: dict[str, Any]) -> dict[str, Any]:
    """The cycling game's numbers: descent–ascent's kept NI fraction and rotation, the
    quasistatic NI over the floor."""
    block = record["cycling"]
    da, qs = block["runs"]["descent-ascent"], block["runs"]["quasistatic"]
    kept = _ratio(da["distance"], da["initial_distance"])
    return {"kept": kept, "rotation": da.get("rotation"),
            "qs_ratio": _ratio(qs["distance"], block["floor"]),
            "untestable": _diverged(da) or _diverged(qs)}


def cycling_pass(record: dict[str, Any]) -> bool | None:
    parts = cycling_parts(record)
    if parts["untestable"] or None in (parts["kept"], parts["rotation"], parts["qs_ratio"]):
        return None
    da_cycles = parts["kept"] >= CYCLE_KEEP_FRACTION and parts["rotation"] >= CYCLE_MIN_ROTATION
    return bool(da_cycles and parts["qs_ratio"] <= CONVERGED_FLOOR_FACTOR)


def rps_pass(record: dict[str, Any]) -> bool | None:
    rps = record["rps"]
    if rps.get("status") == "diverged" or not math.isfinite(rps["ni_last"]):
        return None
    return bool(rps["ni_average"] <= AVERAGE_GAIN * rps["ni_last"] and rps["kl_monotone"])


def wfr_pass(record: dict[str, Any], particles: int) -> bool | None:
    run = record["quadratic"]["runs"]["wfr"]
    ratio = _ratio(run["distance"], record["quadratic"]["floor"])
    if _diverged(run) or ratio is None or "ess_x" not in run:
        return None
    return bool(ratio > CONVERGED_FLOOR_FACTOR and run["ess_x"] <= WFR_ESS_FRACTION * particles)


def gan_ratio(record: dict[str, Any], target: str, method: str) -> float | None:
    """W2 over the W2 floor (``None`` when the run diverged or W2 is not finite)."""
    run = record["gans"][target][method]
    if _diverged(run):
        return None
    return _ratio(run["w2"], run["w2_floor"])


def gan_fits(record: dict[str, Any], target: str, method: str) -> bool | None:
    """``W2 ≤ GAN_FIT_FACTOR × floor`` (``None``: diverged or no finite W2)."""
    ratio = gan_ratio(record, target, method)
    return None if ratio is None else ratio <= GAN_FIT_FACTOR


def gan_pass(record: dict[str, Any], target: str) -> bool | None:
    """The quasistatic mixture fits (``True``); it does not while a baseline does at the same
    count of evaluations (``False``); no method fits or it diverged (``None``, not tested)."""
    fits = gan_fits(record, target, "quasistatic")
    if fits is None:
        return None
    if fits:
        return True
    if any(gan_fits(record, target, m) for m in METHODS if m != "quasistatic"):
        return False
    return None


def _per_seed(records_by_seed, fn) -> list:
    return [fn(r) for r in records_by_seed.values()]


def claims(records_by_seed: dict[int, dict[str, Any]], config: Preset) -> list[Claim]:
    """One verdict per :data:`CLAIMS` entry, from its criterion."""
    seeds = list(records_by_seed)
    out = []

    measured = {f"quasistatic distance/floor ({g})": spread(_per_seed(
        records_by_seed, lambda r, g=g: _ratio(r[g]["runs"]["quasistatic"]["distance"],
                                               r[g]["floor"]))) for g in ("quadratic", "torus")}
    measured |= {f"descent-ascent distance/floor ({g})": spread(_per_seed(
        records_by_seed, lambda r, g=g: _ratio(r[g]["runs"]["descent-ascent"]["distance"],
                                               r[g]["floor"]))) for g in ("quadratic", "torus")}
    out.append(SPECS["equilibrium-error"].judge_per_seed(
        {s: equilibrium_pass(r) for s, r in records_by_seed.items()}, measured))

    parts = [cycling_parts(r) for r in records_by_seed.values()]
    out.append(SPECS["cycling"].judge_per_seed(
        {s: cycling_pass(r) for s, r in records_by_seed.items()},
        {"descent-ascent NI kept (fraction of start)": spread([p["kept"] for p in parts]),
         "descent-ascent rotation (rad)": spread([p["rotation"] for p in parts]),
         "quasistatic NI/floor": spread([p["qs_ratio"] for p in parts])}))

    out.append(SPECS["rock-paper-scissors"].judge_per_seed(
        {s: rps_pass(r) for s, r in records_by_seed.items()},
        {"averaged NI / last-iterate NI": spread(_per_seed(
            records_by_seed, lambda r: r["rps"]["ni_average"] / r["rps"]["ni_last"])),
         "KL sum start": spread(_per_seed(records_by_seed, lambda r: r["rps"]["kl_start"])),
         "KL sum end": spread(_per_seed(records_by_seed, lambda r: r["rps"]["kl_end"]))}))

    out.append(SPECS["wfr-regularized"].judge_per_seed(
        {s: wfr_pass(r, config.particles) for s, r in records_by_seed.items()},
        {"WFR distance/floor (quadratic)": spread(_per_seed(
            records_by_seed, lambda r: _ratio(r["quadratic"]["runs"]["wfr"]["distance"],
                                              r["quadratic"]["floor"]))),
         "WFR effective x-particles / n": spread(_per_seed(
            records_by_seed,
            lambda r: r["quadratic"]["runs"]["wfr"].get("ess_x", math.nan) / config.particles))}))

    targets = list(config.gan_targets)
    pairs = {(s, t): gan_pass(r, t) for s, r in records_by_seed.items() for t in targets}
    measured = {}
    for t in targets:
        for m in METHODS:
            measured[f"W2/floor {m} ({t})"] = spread(_per_seed(
                records_by_seed, lambda r, t=t, m=m: gan_ratio(r, t, m)))
    measured["payoff evaluations per run"] = config.gan_evaluations
    verdict = judge_seeds(list(pairs.values()), partly=True)
    fits = sum(1 for (s, t) in pairs if gan_fits(records_by_seed[s], t, "quasistatic"))
    tested = sum(1 for p in pairs.values() if p is not None)
    note = (f"the quasistatic mixture fits on {fits} of {len(pairs)} (seed, target) pairs; "
            f"{tested} of {len(pairs)} pairs could test the claim")
    out.append(SPECS["gan-mixture"].judge(verdict, measured, seeds, note=note))
    return out
