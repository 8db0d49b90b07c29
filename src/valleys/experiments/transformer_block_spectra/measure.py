r"""Transformers have heterogeneous Hessian block spectra, and SGD lags Adam where they do.

**Claim** (Zhang, Chen, Ding, Li, Sun & Luo, "Why Transformers Need Adam: A Hessian
Perspective", NeurIPS 2024, arXiv 2402.16788; abstract, Sections 2–3; the abstract's wording
verified, the section details from our reading and not verified line by line): (i)
"Transformers are heterogeneous: the Hessian spectrum across parameter blocks vary
dramatically, a phenomenon we call block heterogeneity", whereas in CNNs (and the MLPs they
check) the blocks have similar spectra; (ii) "SGD performs worse than Adam on problems with
block heterogeneity" and on par with it without; (iii) the heterogeneity, measured by the
average Jensen–Shannon (JS) distance between the blocks' spectral densities at initialization
(their JS₀, densities by stochastic Lanczos quadrature), predicts the SGD–Adam gap.

**Set-up** (per seed; the seed draws both initializations, the digits split and the SLQ
probes; float64 throughout).

* Transformer: ``valleys.models.TinyGPT`` (pre-LayerNorm, tied embedding/head, GELU MLP) on
  modular addition: every pair ``(a, b)`` of ``Z_p`` as the sequence ``[a, b, =]``, the loss
  the cross-entropy of the answer ``(a + b) mod p`` predicted at ``=`` (one loss per
  sequence, through ``Objective.from_function``).
* MLP: ``valleys.models.MLP`` (GELU, PyTorch's default initialization) on scikit-learn's
  digits (the first ``mlp_samples`` of the seeded training split, standardized pixels),
  cross-entropy.
* Blocks (one rule for both): one block per layer, its bias with its weight; a LayerNorm's
  gain and shift form one block; the transformer's fused ``qkv`` layer is split into its Q, K
  and V rows (with their bias entries), since the paper shows Q, K and V as separate blocks
  (its exact partition was not verified); the token embedding (tied to the
  output layer) and the position embedding are one block each.
* Block spectra: the diagonal block ``H_bb`` of the full Hessian at initialization
  (``valleys.blocks.BlockOperator`` on ``valleys.hessian``), its density by SLQ
  (``valleys.linalg.spectral_density``: Rademacher probes, Lanczos with full
  reorthogonalization; its Ritz values and weights are kept).
* Heterogeneity: every block's quadrature is smoothed with **one** Gaussian kernel on **one**
  grid per architecture and seed (:func:`common_densities`: the grid spans all the
  architecture's Ritz values, ``σ = KERNEL_FRACTION ×`` that span), each density normalized to
  unit mass on the grid, then the pairwise :func:`js_distance`
  ``D(p, q) = ½ ∫ p log(p/m) + ½ ∫ q log(q/m)``, ``m = (p + q)/2`` (in nats, between 0 and
  ``log 2``; this is the JS *divergence*, whose square root is a metric; we call it the JS
  distance, the paper's name), summarized by its mean and max over pairs. The same on each
  block's spectrum divided by its largest ``|Ritz value|`` (shape only, scale removed) is
  reported, not judged.
* Training: full-batch heavy-ball SGD (momentum ``0.9``) and Adam (``β = (0.9, 0.999)``,
  ``ε = 1e-8``) from the same seeded initialization, ``steps`` steps each, for every learning
  rate of a grid of the same size per optimizer (a run whose loss turns non-finite or exceeds
  ``DIVERGENCE_FACTOR ×`` its initial value is diverged). Our own loop (``torch.optim`` on
  the model), because ``valleys.train`` does not accept a ``from_function`` objective. The gap
  is ``R = T_SGD / T_Adam``, ``T`` the number of steps after which the full-batch training
  loss first falls to ``TARGET_FRACTION ×`` its initial value (and the run ends below it),
  each optimizer at the learning rate of its grid that gets there first (censored at the
  budget: an optimizer that never gets there gives a one-sided bound on ``R``). The ratio
  ``L_SGD / L_Adam`` of the best final losses is reported, not judged: where both runs fit
  the data, it compares two numbers close to zero and measures how close rather than how
  fast (a pilot of the quick preset showed this on the MLP, which is why the judged gap is
  the steps ratio; decided before any full run). The learning rate with the lowest final
  loss is reported too.

**Seeds.** Initializations, the digits split and the SLQ probes change with the seed; each
criterion must hold on every seed (2 quick, 3 full), ``partly`` when it holds on some only.

**Criteria** (module constants, fixed before any run):

* ``transformer-heterogeneous``: per seed, mean pairwise JS distance of the transformer's
  blocks ``≥ HETEROGENEITY_FACTOR ×`` the MLP's;
* ``gap-follows-heterogeneity``: per seed, ``R_transformer ≥ GAP_FACTOR × R_MLP``, decided
  on the intervals of censored ratios; a seed where an architecture's optimizers both miss
  the target, or whose intervals straddle the factor, cannot test it;
* ``mlp-on-par``: per seed, ``1/PAR_FACTOR ≤ R_MLP ≤ PAR_FACTOR`` (same "not tested" rule).

What it cannot show: the paper's models have 10⁷–10⁹ parameters, mini-batch training on
real text and images and tuned schedules; here a one-layer toy transformer on a 17² table and
a small MLP on digits, full-batch, a few hundred steps.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from valleys import data
from valleys.blocks import BlockOperator
from valleys.experiments.protocol import Claim, ClaimSpec, spread
from valleys.linalg import spectral_density
from valleys.models import MLP, TinyGPT
from valleys.objective import Objective
from valleys.operators import hessian

NAME = "transformer-block-spectra"
PAPER = ("Zhang, Chen, Ding, Li, Sun & Luo, \"Why Transformers Need Adam: A Hessian "
         "Perspective\", NeurIPS 2024 (arXiv 2402.16788)")

# Criteria, fixed before any run.
HETEROGENEITY_FACTOR = 2.0   # mean JS (transformer) / mean JS (MLP), every seed
GAP_FACTOR = 2.0             # R_transformer / R_MLP, every seed
PAR_FACTOR = 2.0             # 1/PAR_FACTOR <= R_MLP <= PAR_FACTOR, every seed
TARGET_FRACTION = 0.2        # loss target of the gap: this x the initial training loss
# Measurement settings, fixed before any run.
KERNEL_FRACTION = 0.01       # common kernel width sigma / span of the architecture's Ritz values
GRID_POINTS = 2000           # common grid of the JS integrals
FIGURE_POINTS = 400          # stored density points per block (figures)
DIVERGENCE_FACTOR = 10.0     # a run whose loss exceeds this x initial loss has diverged
MLP_ACTIVATION = "gelu"      # the transformer's MLP activation too
ARCHITECTURES = ("transformer", "mlp")
OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class Preset:
    """Everything that defines the reproduction besides the seed.

    Attributes:
        modulus: ``p`` of the modular-addition task (``p²`` sequences, vocabulary ``p + 1``).
        d_model: transformer width.
        n_layer: transformer blocks.
        n_head: attention heads.
        mlp_widths: MLP layer widths, input 64 to output 10.
        mlp_samples: digits training samples of the MLP.
        num_probes: SLQ probes per block.
        lanczos_steps: Lanczos steps per probe (capped at the block size).
        steps: full-batch training steps per run.
        record_every: steps between recorded losses.
        sgd_lrs: heavy-ball SGD learning-rate grid.
        adam_lrs: Adam learning-rate grid (as many points as ``sgd_lrs``).
        momentum: heavy-ball momentum.
        betas: Adam's ``(β₁, β₂)``.
        threads: torch threads.
    """

    modulus: int
    d_model: int
    n_layer: int
    n_head: int
    mlp_widths: tuple[int, ...]
    mlp_samples: int
    num_probes: int
    lanczos_steps: int
    steps: int
    record_every: int
    sgd_lrs: tuple[float, ...]
    adam_lrs: tuple[float, ...]
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    threads: int | None = 1


PRESETS: dict[str, Preset] = {
    # CI: about 10 s of CPU per seed (a 1-layer d=16 transformer on 7², 2 SLQ probes).
    "quick": Preset(modulus=5, d_model=16, n_layer=1, n_head=2, mlp_widths=(64, 32, 32, 10),
                    mlp_samples=256, num_probes=2, lanczos_steps=12, steps=300,
                    record_every=10, sgd_lrs=(0.1, 1.0), adam_lrs=(0.003, 0.03)),
    # The real test: about 2–3 min of CPU per seed.
    "full": Preset(modulus=17, d_model=32, n_layer=1, n_head=2,
                   mlp_widths=(64, 64, 64, 64, 10), mlp_samples=512, num_probes=4,
                   lanczos_steps=40, steps=400, record_every=10,
                   sgd_lrs=(0.003, 0.01, 0.03, 0.1, 0.3, 1.0),
                   adam_lrs=(0.0003, 0.001, 0.003, 0.01, 0.03, 0.1)),
}

CLAIMS = (
    ClaimSpec(
        "transformer-heterogeneous",
        "A transformer's Hessian block spectra at initialization are heterogeneous (their "
        "densities differ a lot between parameter blocks), unlike an MLP's, whose blocks have "
        "similar spectra.",
        f"per seed: the mean pairwise JS distance between the transformer's block densities "
        f"(common grid and kernel, σ = {KERNEL_FRACTION:g} × span) is ≥ "
        f"{HETEROGENEITY_FACTOR:g} × the MLP's; every seed",
        partly="the factor is reached on some seeds but not all",
    ),
    ClaimSpec(
        "gap-follows-heterogeneity",
        "The gap between SGD and Adam follows the heterogeneity: Adam is much faster than SGD "
        "on the transformer, far less so on the MLP.",
        f"per seed: R = T_SGD / T_Adam (full-batch steps until the training loss reaches "
        f"{TARGET_FRACTION:g} × its initial value, each optimizer at the fastest learning "
        f"rate of its grid; censored at the budget) satisfies R_transformer ≥ "
        f"{GAP_FACTOR:g} × R_MLP; every seed (undecidable where both optimizers miss the "
        f"target or censored ratios straddle the factor: not tested)",
        partly="the factor is reached on some seeds but not all",
    ),
    ClaimSpec(
        "mlp-on-par",
        "Without block heterogeneity (the MLP) SGD performs on par with Adam.",
        f"per seed: {1 / PAR_FACTOR:g} ≤ R_MLP ≤ {PAR_FACTOR:g} (R = T_SGD / T_Adam as "
        f"above); every seed (not tested where undecidable)",
    ),
)
SPECS = {spec.id: spec for spec in CLAIMS}


# ------------------------------------------------------------------------------------------------
# Jensen–Shannon distance between densities on a common grid
# ------------------------------------------------------------------------------------------------


def normalize_density(density, grid) -> np.ndarray:
    """``density / ∫ density`` on ``grid`` (trapezoid rule); negative values clipped to 0."""
    p = np.clip(np.asarray(density, dtype=float), 0.0, None)
    mass = float(np.trapezoid(p, np.asarray(grid, dtype=float)))
    if not math.isfinite(mass) or mass <= 0:
        raise ValueError("a density with no positive mass on the grid cannot be normalized")
    return p / mass


def js_distance(p, q, grid) -> float:
    r"""Jensen–Shannon distance (divergence, nats) of two densities on a common grid.

    .. math::  D_{JS}(p, q) = \tfrac12 \int p \log\frac{p}{m} + \tfrac12 \int q \log\frac{q}{m},
               \qquad m = \tfrac12 (p + q),

    after normalizing ``p`` and ``q`` to unit mass on ``grid`` (trapezoid rule, also for the
    integrals; ``0 log 0 = 0``). ``0`` for equal densities, ``log 2`` for densities with
    disjoint supports (exactly, for any grid, since the integrand is then ``p log 2``); its
    square root is a metric (Endres & Schindelin 2003).
    """
    grid = np.asarray(grid, dtype=float)
    p, q = normalize_density(p, grid), normalize_density(q, grid)
    m = 0.5 * (p + q)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log(p / m), 0.0)
        kl_q = np.where(q > 0, q * np.log(q / m), 0.0)
    value = 0.5 * float(np.trapezoid(kl_p, grid)) + 0.5 * float(np.trapezoid(kl_q, grid))
    return min(max(value, 0.0), math.log(2.0))  # rounding only: D_JS lies in [0, log 2]


def pairwise_js(densities: dict[str, np.ndarray], grid) -> np.ndarray:
    """The symmetric matrix of :func:`js_distance` between every two blocks (zero diagonal)."""
    names = list(densities)
    out = np.zeros((len(names), len(names)))
    for i, j in itertools.combinations(range(len(names)), 2):
        out[i, j] = out[j, i] = js_distance(densities[names[i]], densities[names[j]], grid)
    return out


def off_diagonal(matrix) -> np.ndarray:
    """The entries above the diagonal (each pair once)."""
    matrix = np.asarray(matrix, dtype=float)
    return matrix[np.triu_indices(matrix.shape[0], k=1)]


def common_densities(quadratures: dict[str, tuple[np.ndarray, np.ndarray]], *,
                     num_points: int = GRID_POINTS, scaled: bool = False,
                     ) -> tuple[np.ndarray, dict[str, np.ndarray], float]:
    """Every block's SLQ rule smoothed with one kernel on one grid: ``(grid, densities, σ)``.

    ``quadratures[block] = (nodes, weights)``, each ``(probes, m)`` as returned by
    :func:`valleys.linalg.spectral_density`; the density is
    ``mean_probes Σ_j w_j N(t; θ_j, σ²)``, normalized to unit mass on the grid. The grid spans
    all blocks' nodes plus ``3σ`` and 5% on each side, ``σ = KERNEL_FRACTION ×`` the span (the
    same rule as ``spectral_density`` uses per block, applied to all blocks at once so that
    their densities are comparable). ``scaled=True`` first divides each block's nodes by its
    largest ``|node|`` (shape only).
    """
    rules = {}
    for block, (nodes, weights) in quadratures.items():
        nodes = np.asarray(nodes, dtype=float)
        if scaled:
            top = float(np.abs(nodes).max())
            nodes = nodes / top if top > 0 else nodes
        rules[block] = (nodes, np.asarray(weights, dtype=float))
    lo = min(float(n.min()) for n, _ in rules.values())
    hi = max(float(n.max()) for n, _ in rules.values())
    span = hi - lo
    sigma = KERNEL_FRACTION * span if span > 0 else KERNEL_FRACTION * max(abs(hi), 1.0)
    pad = 3 * sigma + 0.05 * span
    grid = np.linspace(lo - pad, hi + pad, num_points)
    densities = {}
    for block, (nodes, weights) in rules.items():
        z = (grid[:, None] - nodes.reshape(-1)[None, :]) / sigma
        raw = (weights.reshape(-1)[None, :] * np.exp(-0.5 * z * z)).sum(1)
        densities[block] = normalize_density(raw / nodes.shape[0], grid)
    return grid, densities, sigma


# ------------------------------------------------------------------------------------------------
# Data, models and blocks
# ------------------------------------------------------------------------------------------------


def modular_addition(p: int, device) -> dict[str, torch.Tensor]:
    """All ``p²`` sequences ``[a, b, =]`` (token ``p`` is ``=``) and answers ``(a + b) mod p``."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    ids = torch.stack([a, b, torch.full_like(a, p)], dim=1)
    return {"input_ids": ids.to(device), "targets": ((a + b) % p).to(device)}


def answer_losses(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of the answer predicted at the last position, one loss per sequence."""
    logits = model(batch["input_ids"])[:, -1]
    return F.cross_entropy(logits, batch["targets"], reduction="none")


def classification_losses(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
                          ) -> torch.Tensor:
    """Per-sample cross-entropy of a classifier."""
    X, y = batch
    return F.cross_entropy(model(X), y, reduction="none")


def build_transformer(config: Preset, seed: int, device) -> TinyGPT:
    """The seeded float64 TinyGPT of the preset (vocabulary ``p + 1``, sequences of 3)."""
    return TinyGPT(config.modulus + 1, d_model=config.d_model, n_layer=config.n_layer,
                   n_head=config.n_head, max_len=3, seed=seed).to(device, torch.float64)


def build_mlp(config: Preset, seed: int, device) -> MLP:
    """The seeded float64 GELU MLP of the preset."""
    return MLP(config.mlp_widths, activation=MLP_ACTIVATION, seed=10_000 + seed).to(
        device, torch.float64)


def digits(config: Preset, seed: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``mlp_samples`` of the seeded digits training split (float64)."""
    X, y = data.load_digits(seed=seed, dtype=torch.float64, device=device).train
    return X[: config.mlp_samples], y[: config.mlp_samples]


Slices = list[tuple[str, slice | None]]


def transformer_blocks(config: Preset) -> dict[str, Slices]:
    """``{block: [(parameter, flat slice or None for all of it)]}`` of TinyGPT (Q/K/V split)."""
    d = config.d_model
    blocks: dict[str, Slices] = {"embedding": [("wte.weight", None)],
                                 "positions": [("wpe.weight", None)]}
    for layer in range(config.n_layer):
        pre = f"blocks.{layer}."
        tag = f"L{layer}." if config.n_layer > 1 else ""
        blocks[f"{tag}ln1"] = [(pre + "ln1.weight", None), (pre + "ln1.bias", None)]
        for k, part in enumerate("QKV"):  # rows k·d … (k+1)·d of the fused qkv layer
            blocks[f"{tag}{part}"] = [(pre + "attn.qkv.weight", slice(k * d * d, (k + 1) * d * d)),
                                      (pre + "attn.qkv.bias", slice(k * d, (k + 1) * d))]
        blocks[f"{tag}attn_out"] = [(pre + "attn.proj.weight", None),
                                    (pre + "attn.proj.bias", None)]
        blocks[f"{tag}ln2"] = [(pre + "ln2.weight", None), (pre + "ln2.bias", None)]
        blocks[f"{tag}mlp_in"] = [(pre + "mlp.0.weight", None), (pre + "mlp.0.bias", None)]
        blocks[f"{tag}mlp_out"] = [(pre + "mlp.2.weight", None), (pre + "mlp.2.bias", None)]
    blocks["ln_f"] = [("ln_f.weight", None), ("ln_f.bias", None)]
    return blocks


def mlp_blocks(config: Preset) -> dict[str, Slices]:
    """One block per linear layer (weight and bias) of the MLP."""
    return {f"layer{i + 1}": [(f"net.{2 * i}.weight", None), (f"net.{2 * i}.bias", None)]
            for i in range(len(config.mlp_widths) - 1)}


def block_indices(objective: Objective, blocks: dict[str, Slices]) -> dict[str, torch.Tensor]:
    """Each block's coordinates in the objective's flat ``θ``."""
    offsets, start = {}, 0
    for name, numel in zip(objective.names, objective.numels, strict=True):
        offsets[name] = (start, numel)
        start += numel
    out = {}
    for block, members in blocks.items():
        parts = []
        for name, part in members:
            first, numel = offsets[name]
            span = range(numel)[part] if part is not None else range(numel)
            parts.append(torch.arange(first + span.start, first + span.stop))
        out[block] = torch.cat(parts)
    return out


# ------------------------------------------------------------------------------------------------
# Measurements
# ------------------------------------------------------------------------------------------------


def block_quadratures(objective: Objective, blocks: dict[str, Slices], config: Preset,
                      seed: int) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]],
                                          list[dict[str, Any]]]:
    """SLQ of every diagonal Hessian block: ``({block: (nodes, weights)}, rows)``."""
    H = hessian(objective)
    quadratures, rows = {}, []
    for i, (block, index) in enumerate(block_indices(objective, blocks).items()):
        slq = spectral_density(BlockOperator(H, index), num_probes=config.num_probes,
                               lanczos_steps=config.lanczos_steps, num_points=16,
                               seed=1000 * seed + i)
        nodes, weights = slq.nodes.cpu().numpy(), slq.weights.cpu().numpy()
        quadratures[block] = (nodes, weights)
        rows.append({"block": block, "num_params": int(index.numel()),
                     "ritz_max": float(nodes.max()), "ritz_min": float(nodes.min()),
                     "mean_eigenvalue": slq.moments(1), "matvecs": slq.matvecs})
    return quadratures, rows


def heterogeneity(quadratures: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Pairwise JS distances on the common grid, raw and scale-free, and figure densities."""
    grid, densities, sigma = common_densities(quadratures)
    js = pairwise_js(densities, grid)
    grid_s, densities_s, _ = common_densities(quadratures, scaled=True)
    js_s = pairwise_js(densities_s, grid_s)
    fig_grid, fig_densities, _ = common_densities(quadratures, num_points=FIGURE_POINTS)
    fig_grid_s, fig_densities_s, _ = common_densities(quadratures, num_points=FIGURE_POINTS,
                                                      scaled=True)
    pairs, pairs_s = off_diagonal(js), off_diagonal(js_s)
    return {"blocks": list(quadratures), "sigma": sigma, "js": js.tolist(),
            "js_mean": float(pairs.mean()), "js_max": float(pairs.max()),
            "js_scaled": js_s.tolist(), "js_scaled_mean": float(pairs_s.mean()),
            "js_scaled_max": float(pairs_s.max()), "grid": fig_grid.tolist(),
            "densities": {b: d.tolist() for b, d in fig_densities.items()},
            "grid_scaled": fig_grid_s.tolist(),
            "densities_scaled": {b: d.tolist() for b, d in fig_densities_s.items()}}


def train_run(build: Callable[[], torch.nn.Module], loss_fn, batch, optimizer: str, lr: float,
              config: Preset) -> dict[str, Any]:
    """Full-batch training from a fresh seeded model.

    The full-batch loss is evaluated at every step (it is the step's gradient pass), so
    ``hit_step``, the first step count after which the loss is at or below ``TARGET_FRACTION ×``
    the initial loss, is exact. It is ``None`` when the run never gets there, diverges, or does
    not *stay* trained (its final loss is above the target again): an unstable learning rate
    that touches the target once and climbs back does not count as fast. The curve is kept
    every ``record_every`` steps.
    """
    model = build()
    params = list(model.parameters())
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=config.momentum)
    else:
        opt = torch.optim.Adam(params, lr=lr, betas=config.betas, eps=1e-8)
    steps, losses, diverged, initial, hit = [], [], False, None, None
    for step in range(config.steps + 1):
        loss = loss_fn(model, batch).mean()
        value = loss.item()
        initial = value if initial is None else initial
        if step % config.record_every == 0 or step == config.steps:
            steps.append(step)
            losses.append(value)
        if not math.isfinite(value) or value > DIVERGENCE_FACTOR * initial:
            diverged = True
            break
        if hit is None and value <= TARGET_FRACTION * initial:
            hit = step
        if step == config.steps:
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if diverged or losses[-1] > TARGET_FRACTION * initial:
        hit = None
    return {"lr": lr, "steps": steps, "losses": losses, "diverged": diverged,
            "initial_loss": initial, "hit_step": hit,
            "final_loss": math.inf if diverged else losses[-1]}


def grid_search(build, loss_fn, batch, config: Preset) -> dict[str, Any]:
    """Every learning rate of each optimizer's grid (the same number of runs and steps for
    both). Per optimizer: ``best`` reaches the loss target in the fewest steps (ties and runs
    that never reach it: lowest final loss), ``best_final`` has the lowest final loss."""
    out = {}
    for optimizer in OPTIMIZERS:
        lrs = config.sgd_lrs if optimizer == "sgd" else config.adam_lrs
        runs = [train_run(build, loss_fn, batch, optimizer, lr, config) for lr in lrs]

        def speed(i: int, runs=runs) -> tuple[float, float]:
            hit = runs[i]["hit_step"]
            return (math.inf if hit is None else hit, runs[i]["final_loss"])

        best = min(range(len(runs)), key=speed)
        best_final = min(range(len(runs)), key=lambda i, runs=runs: runs[i]["final_loss"])
        out[optimizer] = {"runs": runs, "best": best, "best_lr": lrs[best],
                          "hit_step": runs[best]["hit_step"],
                          "best_at_grid_edge": runs[best]["hit_step"] is not None
                          and best in (0, len(lrs) - 1),
                          "best_final": best_final, "best_final_lr": lrs[best_final],
                          "best_final_loss": runs[best_final]["final_loss"]}
    return out


def measure_architecture(kind: str, config: Preset, seed: int, device) -> dict[str, Any]:
    """Block spectra at initialization, heterogeneity and the training grid of one
    architecture."""
    if kind == "transformer":
        batch = modular_addition(config.modulus, device)
        build = lambda: build_transformer(config, seed, device)  # noqa: E731
        loss_fn, blocks = answer_losses, transformer_blocks(config)
    else:
        batch = digits(config, seed, device)
        build = lambda: build_mlp(config, seed, device)  # noqa: E731
        loss_fn, blocks = classification_losses, mlp_blocks(config)
    model = build().eval()
    with warnings.catch_warnings():  # the fused-attention notice: the math backend is used
        warnings.simplefilter("ignore", UserWarning)
        objective = Objective.from_function(model, loss_fn, [batch])
    quadratures, rows = block_quadratures(objective, blocks, config, seed)
    record = {"num_params": sum(p.numel() for p in model.parameters()),
              "num_samples": objective.n, "block_table": rows,
              **heterogeneity(quadratures)}
    record["training"] = grid_search(build, loss_fn, batch, config)
    return record


def measure(config: Preset, seed: int, device: torch.device) -> dict[str, Any]:
    """Both architectures for one seed."""
    device = torch.device(device)
    return {kind: measure_architecture(kind, config, seed, device) for kind in ARCHITECTURES}


# ------------------------------------------------------------------------------------------------
# Criteria (fixed before any run)
# ------------------------------------------------------------------------------------------------


def gap_interval(arch: dict[str, Any], steps: int) -> tuple[float, float] | None:
    """``R = T_SGD / T_Adam`` (steps to the loss target, each optimizer at its fastest learning
    rate) as an interval: exact when both reach the target; ``[(steps + 1)/T_Adam, ∞]`` when
    SGD never does (right-censored); ``[0, T_SGD/(steps + 1)]`` when Adam never does;
    ``None`` when neither does (the set-up cannot test the claim)."""
    t_sgd = arch["training"]["sgd"]["hit_step"]
    t_adam = arch["training"]["adam"]["hit_step"]
    if t_sgd is None and t_adam is None:
        return None
    if t_sgd is None:
        return ((steps + 1) / t_adam, math.inf)
    if t_adam is None:
        return (0.0, t_sgd / (steps + 1))
    return (t_sgd / t_adam, t_sgd / t_adam)


def loss_ratio(arch: dict[str, Any]) -> float | None:
    """``L_SGD / L_Adam`` of the best final losses (reported, not judged)."""
    sgd = arch["training"]["sgd"]["best_final_loss"]
    adam = arch["training"]["adam"]["best_final_loss"]
    if not (math.isfinite(sgd) and math.isfinite(adam)) or adam <= 0:
        return None
    return sgd / adam


def _point(interval: tuple[float, float] | None) -> float | None:
    """A number for an interval: the value, or its finite bound when censored."""
    if interval is None:
        return None
    lo, hi = interval
    return lo if lo == hi or math.isinf(hi) else hi


def checks(record: dict[str, Any], config: Preset) -> dict[str, Any]:
    """The numbers the criteria judge for one seed (gaps as intervals, see
    :func:`gap_interval`; ``gap_*`` is the value or its censoring bound)."""
    t, m = record["transformer"], record["mlp"]
    r_t, r_m = gap_interval(t, config.steps), gap_interval(m, config.steps)
    return {
        "js_mean_transformer": t["js_mean"], "js_mean_mlp": m["js_mean"],
        "js_ratio": t["js_mean"] / m["js_mean"] if m["js_mean"] > 0 else math.inf,
        "gap_transformer": _point(r_t), "gap_mlp": _point(r_m),
        "gap_interval_transformer": r_t, "gap_interval_mlp": r_m,
        "loss_ratio_transformer": loss_ratio(t), "loss_ratio_mlp": loss_ratio(m),
    }


def passes(values: dict[str, Any]) -> dict[str, bool | None]:
    """Per-claim outcome of one seed's :func:`checks` (``None``: cannot be decided)."""
    js_ratio = values["js_ratio"]
    r_t, r_m = values["gap_interval_transformer"], values["gap_interval_mlp"]
    if r_t is None or r_m is None:
        follows = None
    elif r_t[0] >= GAP_FACTOR * r_m[1]:
        follows = True
    elif r_t[1] < GAP_FACTOR * r_m[0]:
        follows = False
    else:  # censored intervals that straddle the criterion
        follows = None
    if r_m is None:
        par = None
    elif 1 / PAR_FACTOR <= r_m[0] and r_m[1] <= PAR_FACTOR:
        par = True
    elif r_m[1] < 1 / PAR_FACTOR or r_m[0] > PAR_FACTOR:
        par = False
    else:
        par = None
    return {
        "transformer-heterogeneous": (None if js_ratio is None or math.isnan(js_ratio)
                                      else js_ratio >= HETEROGENEITY_FACTOR),
        "gap-follows-heterogeneity": follows,
        "mlp-on-par": par,
    }


MEASURED = {
    "transformer-heterogeneous": ("js_mean_transformer", "js_mean_mlp", "js_ratio"),
    "gap-follows-heterogeneity": ("gap_transformer", "gap_mlp", "loss_ratio_transformer",
                                  "loss_ratio_mlp"),
    "mlp-on-par": ("gap_mlp",),
}


def claims(records_by_seed: dict[int, dict[str, Any]], config: Preset) -> list[Claim]:
    """One verdict per :data:`CLAIMS` entry from the per-seed outcomes."""
    values = {s: checks(r, config) for s, r in records_by_seed.items()}
    outcomes = {s: passes(v) for s, v in values.items()}
    out = []
    for spec in CLAIMS:
        measured = {key: spread([values[s][key] for s in records_by_seed])
                    for key in MEASURED[spec.id]}
        out.append(spec.judge_per_seed({s: outcomes[s][spec.id] for s in records_by_seed},
                                       measured))
    return out


def summary(records_by_seed: dict[int, dict[str, Any]], config: Preset) -> dict[str, Any]:
    """Extra ``summary.json`` keys: per-seed heterogeneity and gaps, and the chosen rates."""
    per_seed = {}
    for seed, r in records_by_seed.items():
        entry = dict(checks(r, config))
        for kind in ARCHITECTURES:
            entry[f"js_max_{kind}"] = r[kind]["js_max"]
            entry[f"js_scaled_mean_{kind}"] = r[kind]["js_scaled_mean"]
            for optimizer in OPTIMIZERS:
                entry[f"best_lr_{optimizer}_{kind}"] = r[kind]["training"][optimizer]["best_lr"]
        per_seed[str(seed)] = entry
    return {"per_seed": per_seed}
