r"""Curvature per parameter block: the diagonal blocks of a curvature matrix, block by block.

For a partition of the parameters ``θ = (θ_b)_b`` the diagonal block of a curvature matrix
``A`` (the Hessian by default) is ``A_bb = P_b A P_bᵀ``, with ``P_b`` the selection of block
``b``'s coordinates. Its product with ``v_b`` is one product of ``A`` with ``v_b`` padded by
zeros, read back on the block, so no block needs its own objective or model surgery; each block
then gets the solvers of :mod:`valleys.linalg`: the top eigenvalues (Lanczos with error bounds),
the trace (exact for small blocks, Hutch++ with a standard error otherwise) and optionally the
spectral density (stochastic Lanczos quadrature).

``A_bb`` is the curvature of the loss in block ``b`` with every other block held fixed; its top
eigenvalue is the "layer-wise sharpness" of e.g. Sankararaman et al. (2020) and the per-block
spectra of Zhang et al., "Why transformers need Adam: a Hessian perspective" (NeurIPS 2024).
By Cauchy interlacing ``λ_max(A_bb) ≤ λ_max(A)`` and ``Σ_b tr(A_bb) = tr(A)``.

Blocks are given as ``{name: patterns}`` where ``patterns`` is a glob pattern on parameter names
(``"*.attn.*"``), a list of them, a predicate ``name -> bool``, or an ``nn.Module`` of the model
(its parameters); the default is one block per module that owns parameters directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from valleys._checks import integer, seed_value
from valleys._objective_checks import match_parameters
from valleys.errors import ArgumentTypeError, ArgumentValueError
from valleys.linalg import eigsh, spectral_density, trace
from valleys.objective import Objective
from valleys.operators import LinearOperator, ggn, hessian

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["BlockOperator", "block_spectra", "parameter_blocks", "plot_block_spectra"]

BlockSpec = str | Sequence[str] | Callable[[str], bool] | nn.Module
CURVATURES: dict[str, Callable[[Objective, torch.Tensor | None], LinearOperator]] = {
    "hessian": lambda obj, theta: hessian(obj, theta),
    "ggn": lambda obj, theta: ggn(obj, theta),
}
# Below this many parameters a block's trace is exact (p products); above, Hutch++.
_EXACT_TRACE_MAX = 256


def parameter_blocks(objective: Objective, blocks: Mapping[str, BlockSpec] | None = None,
                     ) -> dict[str, list[str]]:
    """Resolve a block specification to ``{block: [parameter names]}`` over ``objective.names``.

    Every block must select at least one of the objective's parameters, and no parameter may
    belong to two blocks (parameters in no block are left out of the analysis).
    """
    if not isinstance(objective, Objective):
        raise ArgumentTypeError(
            f"objective must be a valleys.Objective, got {type(objective).__name__}")
    names = list(objective.names)
    if blocks is None:
        grouped: dict[str, list[str]] = {}
        for name in names:
            owner = name.rsplit(".", 1)[0] if "." in name else "(root)"
            grouped.setdefault(owner, []).append(name)
        return grouped
    if not isinstance(blocks, Mapping) or not blocks:
        raise ArgumentTypeError(
            "blocks must be a non-empty mapping {block name: glob pattern(s), predicate or "
            f"module}}, got {blocks!r}")
    model_named = dict(objective.model.named_parameters())
    named = {n: model_named[n] for n in names}
    resolved: dict[str, list[str]] = {}
    owner_of: dict[str, str] = {}
    for block, spec in blocks.items():
        chosen = match_parameters(named, spec, what=f"block {block!r}")
        for name in chosen:
            if name in owner_of:
                raise ArgumentValueError(
                    f"parameter {name!r} is in blocks {owner_of[name]!r} and {block!r}; blocks "
                    "must not overlap")
            owner_of[name] = block
        resolved[str(block)] = chosen
    return resolved


class BlockOperator(LinearOperator):
    """The diagonal block ``P_b A P_bᵀ`` of an operator, for the coordinates ``index``."""

    def __init__(self, operator: LinearOperator, index: torch.Tensor) -> None:
        super().__init__(int(index.numel()), operator.dtype, operator.device,
                         symmetric=operator.symmetric)
        self.operator, self.index = operator, index.to(operator.device)

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        full = torch.zeros(self.operator.size, V.shape[1], dtype=V.dtype, device=V.device)
        full[self.index] = V
        return self.operator.matmat(full)[self.index]


def plot_block_spectra(table: pd.DataFrame) -> Any:
    """Bar charts of ``λ_max`` and the trace per block (and the densities, if computed), from
    the table :func:`block_spectra` returns."""
    import matplotlib.pyplot as plt  # deferred: plotting is optional for the numbers

    densities = table.attrs.get("densities", {})
    panels = 3 if densities else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.6))
    labels = list(table["block"])
    axes[0].bar(labels, table["top_eigenvalue"], yerr=table["error_1"])
    axes[0].set_title(f"λ_max of each diagonal block ({table.attrs.get('curvature', '')})")
    axes[1].bar(labels, table["trace"], yerr=table["trace_stderr"])
    axes[1].set_title("trace of each diagonal block")
    for ax in axes[:2]:
        ax.tick_params(axis="x", rotation=60)
    if densities:
        for block, (grid, density) in densities.items():
            axes[2].semilogy(grid, [max(d, 1e-12) for d in density], label=block)
        axes[2].set_title("spectral density (SLQ)")
        axes[2].legend(fontsize=7)
    fig.tight_layout()
    return fig


def block_spectra(
    objective: Objective,
    blocks: Mapping[str, BlockSpec] | None = None,
    theta: torch.Tensor | None = None,
    *,
    k: int = 1,
    curvature: str = "hessian",
    density: bool = False,
    tol: float = 1e-6,
    trace_matvecs: int = 60,
    seed: int = 0,
) -> pd.DataFrame:
    """The top-``k`` eigenvalues, trace and (optionally) spectral density of each diagonal block.

    Returns a ``pandas.DataFrame``, one row per block, with columns ``block``, ``num_params``,
    ``top_eigenvalue``, ``trace``, then ``lambda_1 … lambda_k`` (largest first) and
    ``error_1 … error_k`` (their error bounds), ``trace_stderr`` (0 when exact),
    ``trace_method``, ``converged`` and ``matvecs`` (products of the full operator spent on the
    block). ``table.attrs`` holds ``names`` (the parameters of each block), ``curvature`` and,
    with ``density=True``, ``densities`` (``{block: (grid, density)}`` as lists);
    :func:`plot_block_spectra` draws it.

    Args:
        objective: the empirical risk.
        blocks: ``{name: spec}`` (see the module docstring); default one block per module.
        theta: where (default: the model's parameters).
        k: eigenvalues per block (capped at the block's size).
        curvature: ``"hessian"`` or ``"ggn"``.
        density: also compute each block's SLQ density (costs ``10 × 80`` products a block).
        tol: relative accuracy of the eigenvalues.
        trace_matvecs: Hutch++ budget for blocks of more than 256 parameters (exact below).
        seed: start vectors and probes.
    """
    layout = parameter_blocks(objective, blocks)
    k = integer(k, "k", minimum=1)
    seed = seed_value(seed)
    trace_matvecs = integer(trace_matvecs, "trace_matvecs", minimum=3)
    if curvature not in CURVATURES:
        raise ArgumentValueError(f"curvature must be one of {tuple(CURVATURES)}, got {curvature!r}")
    full = CURVATURES[curvature](objective, theta)
    offsets, start = {}, 0
    for name, numel in zip(objective.names, objective.numels, strict=True):
        offsets[name] = (start, start + numel)
        start += numel
    rows, densities = [], {}
    for block, members in layout.items():
        index = torch.cat([torch.arange(*offsets[n]) for n in members])
        op = BlockOperator(full, index)
        before = full.num_matvecs
        top = eigsh(op, k=min(k, op.size), which="largest", tol=tol, seed=seed)
        if op.size <= _EXACT_TRACE_MAX:
            tr = trace(op, "exact")
        else:
            tr = trace(op, "hutch++", num_matvecs=trace_matvecs, seed=seed)
        row: dict[str, Any] = {"block": block, "num_params": op.size,
                               "top_eigenvalue": float(top.values[0]), "trace": tr.value}
        for j in range(k):
            within = j < top.values.numel()
            row[f"lambda_{j + 1}"] = float(top.values[j]) if within else float("nan")
            row[f"error_{j + 1}"] = float(top.error_bounds[j]) if within else float("nan")
        row.update(trace_stderr=tr.stderr, trace_method=tr.method, converged=bool(top.converged))
        if density:
            slq = spectral_density(op, seed=seed)
            densities[block] = (slq.grid.tolist(), slq.density.tolist())
        row["matvecs"] = full.num_matvecs - before
        rows.append(row)
    import pandas as pd  # deferred: pandas takes a while to import and only this needs it

    table = pd.DataFrame(rows)
    table.attrs.update(names=layout, curvature=curvature)
    if density:
        table.attrs["densities"] = densities
    return table
