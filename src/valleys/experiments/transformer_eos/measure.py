r"""The edge of stability on a small transformer trained on modular addition.

**Claim** (Cohen, Kaur, Li, Kolter & Talwalkar, ICLR 2021, §3 and its Transformer experiments
in the appendix; Cohen et al., "Adaptive Gradient Methods at the Edge of Stability", arXiv
2207.14484, §3). Full-batch GD with step ``η`` shows *progressive sharpening*: the sharpness
``λ_max(∇²L)`` rises until it reaches ``2/η``; it then *hovers* right at, or just above, ``2/η``
while the training loss keeps decreasing over long times but non-monotonically over short ones.
For full-batch Adam the *preconditioned* sharpness ``λ₁(P⁻¹H)`` (``P`` Adam's denominator
``sqrt(v̂) + ε``) equilibrates at ``(2+2β₁)/(η(1−β₁))``, ``38/η`` at ``β₁ = 0.9``
(:func:`valleys.stability.threshold`). Verified against the papers' statements as summarized
in issue 19; the same claims on an MLP are the ``edge-of-stability`` reproduction, whose
criteria and run analysis this one imports unchanged.

**Set-up.** Offline synthetic sequences: every pair ``(a, b)`` of residues mod ``p`` gives the
sequence ``a b = c`` with ``c = (a+b) mod p`` (vocabulary: the ``p`` residues and ``=``); the
seed draws a fixed training subset of ``train_fraction·p²`` pairs (:func:`modular_addition`).
Model: :class:`valleys.models.TinyGPT` (learned positions, pre-LayerNorm causal attention
blocks, tied output layer, GPT-2 initialization; the seed fixes it), float32, evaluation mode
(no dropout). Loss: the mean cross-entropy of the *answer* token ``c`` only (the prediction
made at ``=``), through :meth:`valleys.Objective.from_function` (:func:`answer_token_losses`).
Training is full batch: the whole training subset is the batch at every step.

``valleys.train.train`` cannot run this objective (its classifier check reads ``(X, Y)``
targets, which a ``from_function`` objective does not have), so :func:`train_run` is a small
loop of the same semantics: ``torch.optim.SGD`` (no momentum: GD) or ``torch.optim.Adam``
(``β₂ = 0.999``, ``ε = 1e-8``) on one flat parameter, the full-batch loss and gradient from
``objective.loss_and_gradient`` once per step, the sharpness (and for Adam ``λ₁(P⁻¹H)``, with
``P`` read from the optimizer's state) every ``sharpness_every`` steps by
:class:`valleys.train.SharpnessTracker` (warm-started block Davidson, relative residual
``tol``), and status ``diverged`` for a loss that is non-finite or above 10⁶ times the initial
loss (as ``train``).

Learning rates: GD's are set per seed from the initial sharpness ``a₀`` (rounded to 4 digits),
``2/η = factor·a₀`` for each of ``gd_factors`` (all ≥ 1.5, so the network has to sharpen to
reach ``2/η``), as in ``edge-of-stability``; Adam's are fixed (``adam_lrs``). The presets were
sized by the cost of a step (gradient ≈ 5 ms, Hessian-vector product ≈ 6 ms at p = 13,
d_model = 16 on one thread), not by any outcome; nothing was tuned after a run.

**Seeds.** A seed fixes the training subset, the initialization and the eigensolver's starts;
quick runs 2 seeds and full 3, every claim is judged on every seed (no averaging hides one).

**Criteria** (the thresholds of ``edge-of-stability``, imported, fixed before any run):

* ``gd-sharpening``: every non-diverged GD run of the seed reaches ``REACH·2/η`` within the
  budget (a rise by ≥ ``REACH·factor`` from ``a₀``); diverged runs are not tested.
* ``gd-hovers``: every GD run of the seed that reached ``REACH·2/η`` has ≥ ``HOVER_FRACTION``
  of its sharpness evaluations from then on inside ``BAND·2/η``; runs that never reached or
  diverged are not tested. The late mean of ``λ/threshold`` (second half) is reported.
* ``gd-loss``: every GD run of the seed that reached has, after reaching, at least one rise of
  the full-batch loss between consecutive records and a final loss below its loss at reaching.
* ``adam-hovers``: as ``gd-hovers`` for ``λ₁(P⁻¹H)`` against ``(2+2β₁)/(η(1−β₁))``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from valleys import Objective, eigsh, hessian
from valleys.errors import ArgumentValueError
from valleys.experiments.edge_of_stability.measure import (
    BAND,
    HOVER_FRACTION,
    REACH,
    _all_tested,
    _hover_claim,
    loss_non_monotone,
    reaches,
    runs_of,
)
from valleys.experiments.protocol import Claim, ClaimSpec, spread
from valleys.models import TinyGPT
from valleys.stability.thresholds import threshold
from valleys.train import SharpnessTracker, TrainConfig, TrainContext

__all__ = [
    "BAND",
    "CLAIMS",
    "HOVER_FRACTION",
    "NAME",
    "PAPER",
    "PRESETS",
    "REACH",
    "Preset",
    "answer_token_losses",
    "claims",
    "measure",
    "modular_addition",
    "objective",
    "plan",
    "summary",
    "train_run",
]

NAME = "transformer-eos"

PAPER = (
    "Cohen, Kaur, Li, Kolter & Talwalkar, \"Gradient Descent on Neural Networks Typically "
    "Occurs at the Edge of Stability\", ICLR 2021; Cohen, Ghorbani, Krishnan, Agarwal, "
    "Medapati, Badura, Suo, Cardoze, Nado, Dahl & Gilmer, \"Adaptive Gradient Methods at the "
    "Edge of Stability\", arXiv 2207.14484 (2022)"
)

# --- criteria, fixed before the runs (the edge-of-stability reproduction's, imported) ------------

#: A loss that is non-finite or exceeds this multiple of the initial loss: the run diverged.
DIVERGENCE_FACTOR = 1e6

_HOVER = (f"every run of the seed that reached {REACH}·threshold has at least "
          f"{HOVER_FRACTION:.0%} of its sharpness evaluations from then on within "
          f"[{BAND[0]}, {BAND[1]}]·threshold; a run that diverged or never reached "
          f"{REACH}·threshold within the budget is not tested; every tested seed must pass")

CLAIMS = (
    ClaimSpec(
        "gd-sharpening",
        "On the transformer, GD's sharpness rises (progressive sharpening) until it reaches "
        "2/η.",
        f"every GD run of the seed starts at a₀ = 2/(factor·η) with factor ≥ 1.5 and its "
        f"sharpness reaches {REACH}·2/η within the step budget (a rise by ≥ {REACH}·factor); "
        "diverged runs are not tested; every tested seed must pass",
    ),
    ClaimSpec(
        "gd-hovers",
        "Once it reaches 2/η, GD's sharpness hovers right at, or just above, 2/η.",
        _HOVER + " (threshold 2/η)",
    ),
    ClaimSpec(
        "gd-loss",
        "At the edge of stability GD's training loss is non-monotone over short times but keeps "
        "decreasing over long times.",
        f"every GD run of the seed that reached {REACH}·2/η has, after reaching, at least one "
        "rise of the full-batch loss between consecutive records and a final loss below its "
        "loss at reaching; every tested seed must pass",
    ),
    ClaimSpec(
        "adam-hovers",
        "Full-batch Adam's preconditioned sharpness λ₁(P⁻¹H) equilibrates at "
        "(2+2β₁)/(η(1−β₁)) (38/η at β₁ = 0.9).",
        _HOVER + " (λ₁(P⁻¹H) against (2+2β₁)/(η(1−β₁)))",
    ),
)
_SPECS = {spec.id: spec for spec in CLAIMS}


# --- presets ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    """Everything that sizes the reproduction.

    Attributes:
        p: the modulus (vocabulary: ``p`` residues and ``=``; ``p²`` possible sequences).
        train_fraction: fraction of the ``p²`` pairs in the seeded training subset.
        d_model, n_layer, n_head: TinyGPT's width, depth and heads.
        gd_factors: GD runs with ``2/η = factor · a₀`` (``a₀`` the initial sharpness).
        adam_lrs: Adam's step sizes (one run each). adam_beta1: Adam's β₁ (β₂ = 0.999,
            ε = 1e-8).
        steps: steps of every run. record_every: steps between loss records.
        sharpness_every: steps between sharpness evaluations. tol: eigensolver tolerance.
        threads: torch threads (``None``: torch's default).
    """

    p: int
    train_fraction: float
    d_model: int
    n_layer: int
    n_head: int
    gd_factors: tuple[float, ...]
    adam_lrs: tuple[float, ...]
    adam_beta1: float
    steps: int
    record_every: int
    sharpness_every: int
    tol: float
    threads: int | None = 1


PRESETS: dict[str, Preset] = {
    # CI: about 15 s of CPU time per seed on one thread (3 runs of 400 steps, 6.8k parameters).
    "quick": Preset(
        p=11, train_fraction=0.8, d_model=16, n_layer=2, n_head=2, gd_factors=(2.0, 3.0),
        adam_lrs=(1e-3,), adam_beta1=0.9, steps=400, record_every=1, sharpness_every=10,
        tol=1e-3,
    ),
    # Three GD step sizes and two Adam step sizes, longer runs: about 3 min of CPU time per seed.
    "full": Preset(
        p=13, train_fraction=0.8, d_model=16, n_layer=2, n_head=2, gd_factors=(1.5, 2.0, 3.0),
        adam_lrs=(1e-3, 3e-3), adam_beta1=0.9, steps=2000, record_every=1, sharpness_every=10,
        tol=1e-3,
    ),
}


# --- the data, the loss and the problem ---------------------------------------------------------


def modular_addition(p: int, train_fraction: float, seed: int) -> dict[str, torch.Tensor]:
    """The seeded training subset of the sequences ``a b = c``, ``c = (a+b) mod p``.

    Tokens ``0..p−1`` are the residues and ``p`` is ``=``. The subset is the first
    ``round(train_fraction·p²)`` pairs of a permutation drawn from a CPU generator seeded with
    ``seed`` (the same seed gives the same sequences everywhere). Returns
    ``{"input_ids": (n, 4) int64, "answer_mask": (n, 4) bool}``; the mask marks the answer
    token ``c``, the only one the loss counts.
    """
    if isinstance(p, bool) or not isinstance(p, int) or p < 2:
        raise ArgumentValueError(f"p must be an integer >= 2, got {p!r}")
    n = round(train_fraction * p * p)
    if not 1 <= n <= p * p:
        raise ArgumentValueError(f"train_fraction must give 1..{p * p} pairs, got "
                                 f"{train_fraction!r}")
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    ids = torch.stack([a, b, torch.full_like(a, p), (a + b) % p], dim=1)
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    ids = ids[torch.randperm(p * p, generator=generator)[:n]].contiguous()
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, -1] = True
    return {"input_ids": ids, "answer_mask": mask}


def answer_token_losses(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Next-token cross-entropy at the answer tokens only, one loss per answer token.

    Position ``t`` predicts token ``t+1`` (as :func:`valleys.losses.next_token_losses`); a
    prediction counts when ``answer_mask`` marks its target.
    """
    ids = batch["input_ids"]
    logits = model(ids)[:, :-1]
    losses = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
    return losses[batch["answer_mask"][:, 1:].reshape(-1)]


def objective(config: Preset, seed: int, device: torch.device | str = "cpu") -> Objective:
    """The mean answer-token cross-entropy of the seeded TinyGPT on the seeded training subset."""
    data = modular_addition(config.p, config.train_fraction, seed)
    data = {k: v.to(device) for k, v in data.items()}
    model = TinyGPT(config.p + 1, d_model=config.d_model, n_layer=config.n_layer,
                    n_head=config.n_head, max_len=4, seed=seed).float().to(device).eval()
    return Objective.from_function(model, answer_token_losses, [data])


def _round(x: float) -> float:
    return float(f"{x:.4g}")


def plan(config: Preset, a0: float) -> list[dict[str, Any]]:
    """The runs of one seed: GD at ``η = 2/(factor·a₀)`` (rounded to 4 digits) for each factor,
    Adam at each of ``adam_lrs``; thresholds from the rounded ``η``."""
    runs = []
    for factor in config.gd_factors:
        lr = _round(2.0 / (factor * a0))
        runs.append({"name": f"gd-{factor:g}", "optimizer": "gd", "lr": lr, "factor": factor,
                     "threshold": threshold("gd", lr)})
    beta1 = config.adam_beta1
    for lr in config.adam_lrs:
        runs.append({"name": f"adam-{lr:g}", "optimizer": "adam", "lr": lr, "beta1": beta1,
                     "factor": None, "threshold": threshold("adam", lr, beta1=beta1)})
    return runs


def train_run(obj: Objective, run: Mapping[str, Any], config: Preset,
              seed: int) -> dict[str, Any]:
    """Train one planned run full batch from the model's parameters (see the module docstring).

    Returns the run with ``status`` (``"max_steps"`` or ``"diverged"``), ``steps_done``, the
    loss at ``loss_steps``, the tracked sharpness at ``sharpness_steps`` (for Adam
    ``λ₁(P⁻¹H)``, the quantity compared with its threshold, and ``raw_sharpness`` =
    ``λ_max(H)`` at the same steps), ``cpu_s`` and ``matvecs``.
    """
    adam = run["optimizer"] == "adam"
    param = torch.nn.Parameter(obj.parameters_vector().detach().clone())
    if adam:
        optimizer: torch.optim.Optimizer = torch.optim.Adam(
            [param], lr=run["lr"], betas=(run["beta1"], 0.999), eps=1e-8)
    else:
        optimizer = torch.optim.SGD([param], lr=run["lr"])
    trackers = [SharpnessTracker(obj, every=config.sharpness_every, tol=config.tol, seed=seed)]
    if adam:
        trackers.append(SharpnessTracker(obj, every=config.sharpness_every, tol=config.tol,
                                         preconditioned=True, seed=seed))
    context = TrainContext(obj, optimizer, param, TrainConfig(
        optimizer="adam" if adam else "sgd", lr=run["lr"], steps=config.steps,
        record_every=config.record_every, seed=seed))
    for tracker in trackers:
        tracker.setup(context)
    loss_steps: list[int] = []
    losses: list[float] = []
    evaluated: dict[str, dict[int, float]] = {"sharpness": {}, "precond_sharpness": {}}
    status, initial, step = "max_steps", None, 0
    cpu = time.process_time()
    for step in range(config.steps + 1):
        loss_t, gradient = obj.loss_and_gradient(param.detach())
        loss = float(loss_t)
        initial = loss if initial is None else initial
        if step % config.record_every == 0 or step == config.steps:
            loss_steps.append(step)
            losses.append(loss)
        if not math.isfinite(loss) or loss > DIVERGENCE_FACTOR * max(initial, 1e-12):
            status = "diverged"
            break
        if step % config.sharpness_every == 0:
            for tracker in trackers:
                for key, value in (tracker(step, param.detach()) or {}).items():
                    if key in evaluated and value is not None and math.isfinite(value):
                        evaluated[key][step] = float(value)
        if step == config.steps:
            break
        param.grad = gradient
        optimizer.step()
    cpu = time.process_time() - cpu
    key = "precond_sharpness" if adam else "sharpness"
    sharp_steps = sorted(evaluated[key])
    out = {**run, "status": status, "steps_done": step, "loss_steps": loss_steps, "loss": losses,
           "sharpness_steps": sharp_steps, "sharpness": [evaluated[key][s] for s in sharp_steps],
           "cpu_s": cpu, "matvecs": int(sum(t.total_matvecs for t in trackers))}
    if adam:
        out["raw_sharpness"] = [evaluated["sharpness"].get(s, math.nan) for s in sharp_steps]
    return out


def measure(config: Preset, seed: int, device: torch.device | str = "cpu") -> dict[str, Any]:
    """One seed: the initial sharpness ``a₀``, then every planned run.

    Returns ``{"initial_sharpness", "initial_loss", "num_parameters", "num_sequences",
    "runs": [...]}``; each run as :func:`train_run` returns it.
    """
    obj = objective(config, seed, device)
    a0 = float(eigsh(hessian(obj), k=1, tol=1e-6, seed=seed).values[0])
    runs = [train_run(obj, run, config, seed) for run in plan(config, a0)]
    return {"initial_sharpness": a0, "initial_loss": float(obj.loss(obj.parameters_vector())),
            "num_parameters": obj.dim, "num_sequences": obj.n, "runs": runs}


# --- verdicts (pure functions of the records; the run analysis is edge-of-stability's) ----------


def claims(records_by_seed: Mapping[int, Any], config: Preset) -> list[Claim]:
    """One verdict per claim in :data:`CLAIMS`, from per-seed outcomes (see their criteria)."""
    gd = {s: runs_of(r, "gd") for s, r in records_by_seed.items()}
    everything = [run for runs in gd.values() for run in runs]
    reached = [r for r in everything if r["reached"] and r["status"] != "diverged"]
    sharpening = _SPECS["gd-sharpening"].judge_per_seed(
        {s: _all_tested([reaches(r) for r in runs]) for s, runs in gd.items()},
        {"sharpness at reaching / a₀": spread([
            r["sharpness"][r["sharpness_steps"].index(r["reached_step"])] / r["sharpness"][0]
            for r in reached]),
         "reaching step": spread([r["reached_step"] for r in reached]),
         "max sharpness / threshold": spread([r["max_over_threshold"] for r in everything
                                              if r["status"] != "diverged"]),
         "runs reaching": len(reached),
         "runs": len(everything)},
        note=_diverged_note(everything))
    tested_loss = [r for r in everything if loss_non_monotone(r) is not None]
    loss = _SPECS["gd-loss"].judge_per_seed(
        {s: _all_tested([loss_non_monotone(r) for r in runs]) for s, runs in gd.items()},
        {"loss rises after reaching": spread([r["loss_rises"] for r in tested_loss]),
         "final loss / loss at reaching": spread([r["loss_ratio"] for r in tested_loss])})
    return [
        sharpening,
        _hover_claim(_SPECS["gd-hovers"], records_by_seed, "gd"),
        loss,
        _hover_claim(_SPECS["adam-hovers"], records_by_seed, "adam"),
    ]


def _diverged_note(runs: list[dict[str, Any]]) -> str:
    diverged = sum(run["status"] == "diverged" for run in runs)
    return f"{diverged} run(s) diverged and were not tested" if diverged else ""


_SUMMARY_KEYS = ("name", "optimizer", "lr", "beta1", "factor", "threshold", "status",
                 "steps_done", "sharpness_steps", "sharpness", "final_sharpness_over_threshold",
                 "reached", "reached_step", "hover_fraction", "late_mean_over_threshold")


def summary(records_by_seed: Mapping[int, Any], config: Preset) -> dict[str, Any]:
    """``runs``: one item per (run, seed) with its plan, status and sharpness trajectory (for
    Adam the preconditioned one, the quantity compared with its threshold)."""
    items = []
    for seed, records in records_by_seed.items():
        for run in runs_of(records, "gd") + runs_of(records, "adam"):
            item = {k: run[k] for k in _SUMMARY_KEYS if k in run}
            item["seed"] = int(seed)
            item["initial_sharpness_a0"] = records["initial_sharpness"]
            items.append(item)
    return {"runs": items}
