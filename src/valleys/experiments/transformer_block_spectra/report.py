"""The transformer-block-spectra results table and report prose; every number comes from the
records."""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import pandas as pd

from valleys.experiments.common import format_cell, format_spread, markdown_table
from valleys.experiments.protocol import Claim
from valleys.experiments.transformer_block_spectra.measure import (
    ARCHITECTURES,
    GAP_FACTOR,
    HETEROGENEITY_FACTOR,
    KERNEL_FRACTION,
    MLP_ACTIVATION,
    OPTIMIZERS,
    PAR_FACTOR,
    TARGET_FRACTION,
    Preset,
    checks,
)

_stats = partial(format_spread, digits=3)  # mean [min, max] over seeds


def table(records_by_seed: dict[int, dict[str, Any]], config: Preset) -> pd.DataFrame:
    """Tidy rows ``seed, architecture, quantity, setting, value``: per block the SLQ summary,
    per architecture the JS summaries, per training run its final loss and steps to target."""
    rows = []
    for seed, r in records_by_seed.items():
        for kind in ARCHITECTURES:
            arch = r[kind]
            base = {"seed": seed, "architecture": kind}
            for key in ("js_mean", "js_max", "js_scaled_mean", "js_scaled_max", "sigma",
                        "num_params"):
                rows.append({**base, "quantity": key, "setting": "", "value": arch[key]})
            for block in arch["block_table"]:
                for key in ("num_params", "ritz_max", "ritz_min", "mean_eigenvalue"):
                    rows.append({**base, "quantity": key, "setting": f"block={block['block']}",
                                 "value": block[key]})
            for optimizer in OPTIMIZERS:
                for run in arch["training"][optimizer]["runs"]:
                    setting = f"optimizer={optimizer}, lr={run['lr']:g}"
                    rows.append({**base, "quantity": "final_loss", "setting": setting,
                                 "value": run["final_loss"]})
                    rows.append({**base, "quantity": "hit_step", "setting": setting,
                                 "value": run["hit_step"]})
    return pd.DataFrame(rows)


def _interval(interval) -> str:
    if interval is None:
        return "– (neither optimizer reached the target)"
    lo, hi = interval
    if lo == hi:
        return format_cell(lo)
    if math.isinf(hi):
        return f"> {format_cell(lo)} (SGD never reached the target)"
    return f"< {format_cell(hi)} (Adam never reached the target)"


def _scale_spread(arch: dict[str, Any]) -> float:
    """Largest over smallest block ``max |Ritz value|``: how far apart the blocks' curvature
    scales lie (shown, not judged)."""
    tops = [max(abs(b["ritz_max"]), abs(b["ritz_min"])) for b in arch["block_table"]]
    low = min(tops)
    return math.inf if low == 0 else max(tops) / low


def report(records_by_seed: dict[int, dict[str, Any]], config: Preset,
           claims: list[Claim]) -> str:
    """Set-up, results (per seed and mean [min, max] over seeds) and discussion."""
    seeds = list(records_by_seed)
    values = {s: checks(r, config) for s, r in records_by_seed.items()}
    verdicts = {c.id: c.verdict for c in claims}
    first = records_by_seed[seeds[0]]

    def over(key: str) -> str:
        return _stats([values[s][key] for s in seeds])

    def over_scale(kind: str) -> str:
        return _stats([_scale_spread(records_by_seed[s][kind]) for s in seeds])

    per_seed = []
    for s in seeds:
        v = values[s]
        per_seed.append({
            "seed": s, "JS mean transformer": v["js_mean_transformer"],
            "JS mean MLP": v["js_mean_mlp"], "ratio": v["js_ratio"],
            "R transformer": _interval(v["gap_interval_transformer"]),
            "R MLP": _interval(v["gap_interval_mlp"]),
            "L ratio transformer": v["loss_ratio_transformer"],
            "L ratio MLP": v["loss_ratio_mlp"]})
    extra = []
    for s in seeds:
        r = records_by_seed[s]
        row: dict[str, Any] = {"seed": s}
        for kind in ARCHITECTURES:
            row[f"JS max {kind}"] = r[kind]["js_max"]
            row[f"JS scaled mean {kind}"] = r[kind]["js_scaled_mean"]
            row[f"scale spread {kind}"] = _scale_spread(r[kind])
        extra.append(row)
    runs = []
    for s in seeds:
        for kind in ARCHITECTURES:
            for optimizer in OPTIMIZERS:
                t = records_by_seed[s][kind]["training"][optimizer]
                grid = config.sgd_lrs if optimizer == "sgd" else config.adam_lrs
                chosen = t["best_lr"] if t["hit_step"] is not None else t["best_final_lr"]
                runs.append({"seed": s, "architecture": kind, "optimizer": optimizer,
                             "fastest lr": t["best_lr"], "steps to target": t["hit_step"],
                             "at grid edge": chosen in (grid[0], grid[-1]),
                             "lowest-loss lr": t["best_final_lr"],
                             "lowest final loss": t["best_final_loss"]})
    block_tables = []
    for kind in ARCHITECTURES:
        arch = first[kind]
        block_tables += [f"**{kind}** ({arch['num_params']} parameters, {arch['num_samples']} "
                         f"losses; kernel σ = {arch['sigma']:.3g}):", "",
                         markdown_table(arch["block_table"], ["block", "num_params", "ritz_max",
                                                              "ritz_min", "mean_eigenvalue"]),
                         ""]
    lr_text = ", ".join(f"{x:g}" for x in config.sgd_lrs)
    adam_text = ", ".join(f"{x:g}" for x in config.adam_lrs)
    edge = [f"seed {row['seed']} {row['architecture']} {row['optimizer']}" for row in runs
            if row["at grid edge"]]
    lines = [
        "## Set-up",
        "",
        f"- {len(seeds)} seeds ({', '.join(map(str, seeds))}); each draws both "
        "initializations, the digits split and the SLQ probes. float64 throughout.",
        f"- Transformer: `TinyGPT(vocab={config.modulus + 1}, d_model={config.d_model}, "
        f"n_layer={config.n_layer}, n_head={config.n_head})`, GPT-2 initialization, on all "
        f"{config.modulus ** 2} sequences `[a, b, =]` of addition mod {config.modulus}; loss: "
        "cross-entropy of the answer predicted at `=`.",
        f"- MLP: `MLP({config.mlp_widths}, activation={MLP_ACTIVATION!r})` (PyTorch default "
        f"initialization) on the first {config.mlp_samples} samples of the seeded digits "
        "training split; cross-entropy.",
        "- Blocks: one per layer (weight with bias), LayerNorm gain with shift, the fused qkv "
        "layer split into Q, K and V; token embedding (tied to the output layer) and position "
        "embedding one block each.",
        f"- Spectra: SLQ of each diagonal Hessian block at initialization, {config.num_probes} "
        f"probes × {config.lanczos_steps} Lanczos steps (capped at the block size). JS "
        f"distances on one grid per architecture and seed with one Gaussian kernel, σ = "
        f"{KERNEL_FRACTION:g} × the span of all its blocks' Ritz values; densities normalized "
        "to unit mass; D_JS(p, q) = ½∫p log(p/m) + ½∫q log(q/m), m = (p+q)/2, in nats, ≤ log 2.",
        f"- Training: full batch, {config.steps} steps per run, SGD with heavy-ball momentum "
        f"{config.momentum:g} over lr ∈ {{{lr_text}}} and Adam (β = {config.betas}) over lr ∈ "
        f"{{{adam_text}}}: {len(config.sgd_lrs)} runs each from the same initialization. Gap "
        f"R = T_SGD / T_Adam, T the steps until the loss reaches {TARGET_FRACTION:g} × its "
        "initial value at the optimizer's fastest learning rate (censored at the budget).",
        "",
        "## Results",
        "",
        "Per seed (R: steps ratio, judged; L ratio: ratio of the best final losses, not "
        "judged):",
        "",
        markdown_table(per_seed, list(per_seed[0])),
        "",
        f"Over seeds: mean JS transformer {over('js_mean_transformer')}, MLP "
        f"{over('js_mean_mlp')}, ratio {over('js_ratio')} (criterion ≥ "
        f"{HETEROGENEITY_FACTOR:g}).",
        "",
        "Not judged: the largest pairwise JS, the mean JS of the rescaled (shape-only) "
        "densities, and the scale spread (largest over smallest block max |eigenvalue|):",
        "",
        markdown_table(extra, list(extra[0])),
        "",
        f"Block spectra, seed {seeds[0]}:",
        "",
        *block_tables,
        "Learning rates:",
        "",
        markdown_table(runs, list(runs[0])),
        "",
        ("Chosen learning rate (the fastest, or the lowest-loss one where no run reached the "
         "target) at an edge of its grid, so the grid may be too narrow there: "
         + ", ".join(edge) + ".") if edge else
        "No chosen learning rate lies at an edge of its grid.",
        "",
        "## Discussion",
        "",
        f"Verdicts: heterogeneity **{verdicts['transformer-heterogeneous']}**, gap follows "
        f"heterogeneity **{verdicts['gap-follows-heterogeneity']}** (factor {GAP_FACTOR:g}), "
        f"SGD on par on the MLP **{verdicts['mlp-on-par']}** (within a factor "
        f"{PAR_FACTOR:g}).",
        "",
        f"Scale against shape: the blocks' curvature scales (largest |Ritz value| per block) "
        f"spread over a factor {over_scale('transformer')} in the transformer and "
        f"{over_scale('mlp')} in the MLP, and the ratio of the best final losses (not judged) "
        f"is {over('loss_ratio_transformer')} on the transformer against "
        f"{over('loss_ratio_mlp')} on the MLP; the judged steps ratio could not be decided "
        "on the transformer because SGD never reached the loss target within the budget.",
        "",
        "The JS distance on one linear eigenvalue axis compares the blocks' densities where "
        "they lie: a block whose eigenvalues are many orders of magnitude smaller than the "
        "largest block's collapses into one kernel-wide peak at zero, indistinguishable from "
        "any other such block, so blocks that differ only in (tiny) scale add little to the "
        "mean. The scale spread column shows how far apart the blocks' curvature scales are; "
        "the rescaled JS compares shapes only (the paper's plots rescale each block by its "
        "10th largest eigenvalue). Which of these the paper's JS₀ matches we could not "
        "verify, so only the pre-stated common-axis measure is judged.",
        "",
        "Pilots before the final run: the quick preset, and one seed of the full preset to "
        "time it. They changed two details of the gap, both stated in `measure.py`: the judged "
        "gap became the steps-to-target ratio instead of the ratio of final losses (which, "
        "when both optimizers fit the data, compares two numbers near zero), and a run must "
        "end below the target to count as having reached it (an unstable learning rate "
        "touched the target once and climbed back). The JS measure, the kernel, the blocks, "
        "the factors and the full preset (sizes, grids, budget) were not changed after any "
        "run; the quick preset's task size, budget and grids were adjusted after its first "
        "pilot so that Adam trains its transformer within the CI budget.",
        "",
        "What the set-up can show: whether, in toy models at initialization with exact "
        "Hessian-vector products, the transformer's block spectra differ more between blocks "
        "than the MLP's by the pre-stated measure, and whether full-batch SGD lags Adam more "
        "on the transformer. What it cannot show: the paper's scale (10⁷–10⁹ parameters, "
        "mini-batch training on real text and images, tuned schedules, many blocks per "
        "layer type); a one-layer transformer on a small modular-addition table has a long "
        "initial plateau, so its steps-to-target measure mixes plateau escape with "
        "conditioning; SLQ with few probes adds noise to every JS value (a floor that two "
        "identical spectra would also show); and two architectures on two different tasks "
        "cannot separate the effect of the architecture from that of the data.",
        "",
    ]
    return "\n".join(lines)
