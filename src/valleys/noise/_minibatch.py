r"""Mini-batch gradient noise at a fixed θ: samples, covariance, spectrum, alignment with H.

For a mini-batch ``b`` of ``B`` samples the gradient is ``g_b = (1/B) Σ_{i∈b} g_i`` with
``g_i = ∇ℓ_i(θ)``; its noise is ``ξ_b = g_b − g``, ``g = ∇L(θ)``. With the per-sample gradient
covariance ``C = (1/n) Σ_i (g_i − g)(g_i − g)ᵀ`` (:func:`valleys.gradient_covariance`),

* batches drawn **without replacement** (``B`` distinct samples): ``Cov(ξ_b) = c·C`` with
  ``c = (n − B)/(B(n − 1))`` (finite-population correction; Wu, Ma & E 2018);
* **with replacement**: ``Cov(ξ_b) = C/B``.

Mini-batch gradients of all batches come from one pass over the data, not one forward and
backward pass per batch (``benchmarks/bench_noise.py`` measures the difference):

* ``method="layer-factors"`` (``θ`` made of whole ``nn.Linear``, ``nn.Conv1d`` and
  ``nn.Conv2d`` layers; the default when it applies; ``"linear-layers"`` is the same for
  ``nn.Linear`` layers only): a linear layer's per-sample gradient is ``(δ_i a_iᵀ, δ_i)``,
  ``δ_i = ∂ℓ_i/∂z_i``, so ``g_b = (1/B) Σ_{i∈b} (δ_i a_iᵀ, δ_i)`` is one batched matrix product
  ``Δ_bᵀ A_b`` per layer over the gathered rows of the recorded ``A`` and ``Δ`` (one forward
  and backward pass over the data, :mod:`valleys._layer_factors`). A convolution's per-sample
  gradient ``Σ_t δ_it a_itᵀ`` (patches ``a_it``, output positions ``t``) is formed once per
  sample and each batch sums ``B`` of them.
* ``method="per-sample"`` (any model): each data chunk's per-sample gradients ``G_c``
  (``vmap(grad)``) are combined into all batches by one sparse product ``W_c G_c``, ``W`` the
  ``(batches × n)`` matrix of sample weights ``(count in batch)/B``.

Statistics of the noise rarely need all ``num_batches × p`` batch gradients at once.
Projections ``⟨ξ_b, v⟩`` (:func:`minibatch_projections`), selected entries
(:func:`minibatch_coordinates`, e.g. tail-index samples) and the empirical covariance product
``(1/m) Σ_b ξ_b ξ_bᵀ V`` (:func:`minibatch_covariance_product`) are linear in the per-sample
gradients, so they come from ``n`` per-sample values (``δ_iᵀ V a_i`` from the factors) at a
cost that does not grow with the number of batches. Norms ``‖ξ_b‖²``
(:func:`minibatch_squared_norms`) and anything else stream blocks of batch gradients through
one reused, cache-sized buffer (:func:`iter_minibatch_gradients`).

Alignment of the noise with the curvature: ``tr(CH)/(‖C‖_F ‖H‖_F)`` (cosine similarity of the
two matrices; 1 when ``C ∝ H``) and the overlap ``‖U_Cᵀ U_H‖_F²/k`` of their top-``k``
eigenspaces (1: the same subspace; ``k/p`` on average for random subspaces).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from valleys._checks import integer, is_integral, seed_value
from valleys._layer_factors import (
    LAYER_TYPES,
    Layers,
    check_factored_gradient,
    conv_sample_gradients,
    forward_with_shifts,
    try_factored,
)
from valleys._records import record_to_dict
from valleys.errors import ArgumentTypeError, ArgumentValueError
from valleys.objective import Objective

__all__ = [
    "MINIBATCH_METHODS",
    "NoiseStatistics",
    "batch_indices",
    "hessian_alignment",
    "iter_minibatch_gradients",
    "minibatch_coordinates",
    "minibatch_covariance_product",
    "minibatch_gradients",
    "minibatch_gradients_loop",
    "minibatch_noise",
    "minibatch_projections",
    "minibatch_squared_norms",
    "noise_covariance",
    "noise_factor",
    "noise_statistics",
    "subspace_overlap",
]


def noise_factor(n: int, batch_size: int, *, replacement: bool = False) -> float:
    """``Cov(g_b) = factor · C``: ``(n−B)/(B(n−1))`` without replacement, ``1/B`` with."""
    n = integer(n, "n", minimum=2)
    if (isinstance(batch_size, bool) or not is_integral(batch_size)
            or batch_size < 1 or (not replacement and batch_size > n)):
        raise ArgumentValueError(f"batch_size must be an integer in [1, n={n}], got {batch_size!r}")
    batch_size = int(batch_size)
    if replacement:
        return 1.0 / batch_size
    return (n - batch_size) / (batch_size * (n - 1))


def batch_indices(
    n: int, batch_size: int, num_batches: int, *, replacement: bool = False, seed: int = 0
) -> torch.Tensor:
    """``(num_batches, B)`` sample indices: each row ``B`` distinct samples (or with replacement).

    Rows are independent (the ``"subset"`` / ``"replacement"`` sampling of
    :class:`valleys.train.TrainConfig`); a ``torch.Generator`` seeded with ``seed`` draws them.
    Without replacement each row is the head of a random permutation (``num_batches × n``
    uniforms are drawn and sorted, so memory is ``O(num_batches·n)``).
    """
    noise_factor(n, batch_size, replacement=replacement)
    n, batch_size = int(n), int(batch_size)
    num_batches = integer(num_batches, "num_batches", minimum=1)
    gen = torch.Generator().manual_seed(seed_value(seed))
    if replacement:
        return torch.randint(n, (num_batches, batch_size), generator=gen)
    # argsort of uniform keys: a random permutation per row, without a Python loop.
    return torch.rand((num_batches, n), generator=gen).argsort(dim=1)[:, :batch_size]


def _check_objective(objective: object) -> None:
    if not isinstance(objective, Objective):
        raise ArgumentTypeError(
            f"objective must be a valleys.Objective, got {type(objective).__name__}; "
            "build one with valleys.Objective(model, loss, (X, Y))")


def _check_indices(indices: torch.Tensor, n: int) -> torch.Tensor:
    if not isinstance(indices, torch.Tensor) or indices.ndim != 2 or indices.dtype not in (
        torch.int64, torch.int32
    ):
        raise ArgumentTypeError(
            "indices must be an integer tensor of shape (num_batches, batch_size)")
    if indices.shape[1] == 0:
        raise ArgumentValueError(
            f"indices has shape {tuple(indices.shape)}: every batch needs at least "
            "one sample index")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= n):
        raise ArgumentValueError(f"indices must lie in [0, n={n})")
    return indices.long()


MINIBATCH_METHODS = ("auto", "layer-factors", "linear-layers", "per-sample")
# The layer types each factored method takes ("auto" tries the widest).
_FACTOR_TYPES: dict[str, tuple[type, ...]] = {
    "auto": LAYER_TYPES, "layer-factors": LAYER_TYPES, "linear-layers": (nn.Linear,)}

# Elements of one block of batch gradients (batches × p): blocks this size stay in cache.
_BLOCK_ELEMENTS = 2**20


def _check_method(method: object) -> str:
    if method not in MINIBATCH_METHODS:
        raise ArgumentValueError(f"method must be one of {MINIBATCH_METHODS}, got {method!r}")
    return str(method)


class _Factored:
    """This process's per-sample gradients in factored form, from one forward/backward pass.

    An ``nn.Linear`` keeps its factors ``A`` (``n × in``) and ``Δ`` (``n × out``): its
    per-sample gradient ``(δ_i a_iᵀ, δ_i)`` is never formed. A convolution keeps its per-sample
    gradient ``(Σ_t δ_it a_itᵀ, Σ_t δ_it)`` (``n × out·in·kernel``), formed chunk by chunk by one
    grouped convolution (:func:`conv_sample_gradients`): it is smaller than the unfolded factors
    (``T·(in·kernel + out)`` per sample), and a batch gradient is then a sum of ``B`` rows
    instead of a product over ``B·T`` rows.
    """

    def __init__(self, objective: Objective, theta: torch.Tensor, layers: Layers) -> None:
        X, Y = next(iter(objective.chunks()))
        check_factored_gradient(objective, theta, layers, X,
                                lambda out: objective.loss_fn(out, Y[: out.shape[0]]).sum())
        parts: list[list[tuple[torch.Tensor, ...]]] = [[] for _ in layers]
        total = torch.zeros(objective.dim, dtype=objective.dtype, device=objective.device)
        for X, Y in objective.chunks():
            out, acts, shifts = forward_with_shifts(objective, theta, layers, X)
            grads = torch.autograd.grad(objective.loss_fn(out, Y).sum(), shifts,
                                        allow_unused=True)
            sums: list[tuple[torch.Tensor, ...]] = []
            for j, (m, a, d) in enumerate(zip(layers, acts, grads, strict=True)):
                if isinstance(m, nn.Linear):
                    if d is None:  # a layer not reaching the loss
                        d = a.new_zeros(a.shape[0], m.out_features)
                    parts[j].append((a, d))
                    sums.append(((d.T @ a)[None], d.sum(0, keepdim=True)))
                else:
                    gw, gb = conv_sample_gradients(m, a, d)
                    parts[j].append((gw, gb))
                    sums.append((gw.sum(0, keepdim=True), gb.sum(0, keepdim=True)))
            total += layers.flatten(sums)[0]
        self.layers = layers
        self.linear = [isinstance(m, nn.Linear) for m in layers]
        # Linear: (A, Δ); convolution: (weight gradients (n, out·in·kernel), bias gradients).
        self.blocks = [tuple(torch.cat(piece) for piece in zip(*p, strict=True)) for p in parts]
        self.n = self.blocks[0][0].shape[0]
        self.total = total  # Σ_i g_i over this process's samples
        self.slot_sizes = [getattr(layers[j], attr).numel() for j, attr in layers.slots]

    def fill(self, rows: torch.Tensor, weight: torch.Tensor | None, scale: float,
             out: torch.Tensor) -> None:
        """``out[b] = scale·Σ_k w_bk g_{rows[b, k]}`` (``w = 1`` when ``weight`` is ``None``)
        in ``θ``'s layout, from :meth:`slot_blocks`."""
        torch.cat(self.slot_blocks(rows, scale, weight), dim=1, out=out)

    def slot_blocks(self, rows: torch.Tensor, scale: float,
                    weight: torch.Tensor | None = None) -> list[torch.Tensor]:
        """``scale·Σ_k w_bk g_{rows[b, k]}`` for a block of batches (``w = 1`` when ``weight``
        is ``None``), one ``(blk, size)`` tensor per entry of ``layers.slots`` (θ's order): per
        linear layer one batched product ``(scale·w·Δ_b)ᵀ A_b``, per convolution one
        gather-sum, each layer's computed while the previous ones are still in cache."""
        w = torch.full(rows.shape, scale, dtype=self.total.dtype, device=self.total.device)
        if weight is not None:
            w *= weight
        flat = rows.reshape(-1)
        parts: list[dict[str, torch.Tensor]] = []
        for linear, block in zip(self.linear, self.blocks, strict=True):
            if linear:
                a, d = block
                # index_select, not d[rows]: a 2-D advanced index is several times slower.
                dw = d.index_select(0, flat).view(*rows.shape, -1).mul_(w[:, :, None])
                ar = a.index_select(0, flat).view(*rows.shape, -1)             # (blk, B, in)
                parts.append({"weight": torch.bmm(dw.transpose(1, 2), ar), "bias": dw.sum(1)})
            else:
                parts.append({attr: F.embedding_bag(rows, G, mode="sum", per_sample_weights=w)
                              for attr, G in zip(("weight", "bias"), block, strict=False)})
        return [parts[j][attr].flatten(1) for j, attr in self.layers.slots]

    def squared_norms(self, rows: torch.Tensor, scale: float,
                      center: torch.Tensor | None) -> torch.Tensor:
        """``‖scale·Σ_k g_{rows[b, k]} − center‖²`` per row ``b`` of ``rows`` (this process's
        samples only), from :meth:`slot_blocks`."""
        total = self.total.new_zeros(rows.shape[0])
        refs = None if center is None else center.split(self.slot_sizes)
        for i, X in enumerate(self.slot_blocks(rows, scale)):
            if refs is not None:
                X -= refs[i]
            total += torch.linalg.vector_norm(X, dim=1).square()  # one fused reduction
        return total

    def slot_coordinates(self, rows: torch.Tensor, scale: float, coords: torch.Tensor,
                         out: torch.Tensor) -> None:
        """``out = (scale·Σ_k g_{rows[b, k]})[coords]`` (``coords`` sorted), from
        :meth:`slot_blocks`."""
        bounds = torch.tensor([0, *self.slot_sizes], device=coords.device).cumsum(0)
        edges = torch.searchsorted(coords, bounds).tolist()
        for i, X in enumerate(self.slot_blocks(rows, scale)):
            lo, hi = edges[i], edges[i + 1]
            if hi > lo:
                torch.index_select(X, 1, coords[lo:hi] - int(bounds[i]), out=out[:, lo:hi])

    def project(self, V: torch.Tensor) -> torch.Tensor:
        """Per-sample ``⟨g_i, v_k⟩`` (``n × k``) for ``V`` ``(p, k)``: ``δ_iᵀ V_W a_i + δ_iᵀ v_b``
        per linear layer (``n·in·out·k`` multiply-adds, no per-sample gradient formed)."""
        k = V.shape[1]
        result = V.new_zeros(self.n, k)
        for linear, block, view in zip(self.linear, self.blocks, self.layers.views(V.T),
                                       strict=True):
            if linear:
                a, d = block
                w = view["weight"]                                         # (k, out, in)
                av = (a @ w.reshape(-1, w.shape[-1]).T).view(self.n, k, -1)  # (n, k, out)
                result += torch.einsum("nko,no->nk", av, d)
                if "bias" in view:
                    result += d @ view["bias"].T
                continue
            for attr, G in zip(("weight", "bias"), block, strict=False):
                if attr in view:
                    result += G @ view[attr].reshape(k, -1).T
        return result

    def coordinates(self, coords: torch.Tensor) -> torch.Tensor:
        """Per-sample gradient entries ``g_i[coords]`` (``n × m``, ``coords`` sorted):
        ``δ_i[o]·a_i[c]`` for the weight ``(o, c)`` of a linear layer, ``δ_i[o]`` for its bias
        ``o``."""
        # ``coords`` come sorted: each layer's are one block of columns, written in place by
        # gathers of factor columns.
        ordered = coords
        result = self.total.new_empty(self.n, coords.numel())
        offset = 0
        for j, attr in self.layers.slots:
            shape = getattr(self.layers[j], attr).shape
            size = math.prod(shape)
            lo, hi = (int(x) for x in torch.searchsorted(
                ordered, torch.tensor([offset, offset + size], device=coords.device)))
            if hi > lo:
                local = ordered[lo:hi] - offset
                block = self.blocks[j]
                out = result[:, lo:hi]
                if not self.linear[j]:
                    torch.index_select(block[0 if attr == "weight" else 1], 1, local, out=out)
                elif attr == "weight":
                    a, d = block
                    torch.mul(d.index_select(1, local // shape[1]),
                              a.index_select(1, local % shape[1]), out=out)
                else:
                    torch.index_select(block[1], 1, local, out=out)
            offset += size
        return result

    def combine(self, w: torch.Tensor) -> torch.Tensor:
        """``Σ_i w_ik g_i`` as ``(k, p)`` for weights ``w`` ``(n, k)``: per linear layer one
        product ``(w ⊙ Δ)ᵀ A`` (``n·in·out·k`` multiply-adds)."""
        k = w.shape[1]
        out = w.new_empty(k, self.total.shape[0])
        for linear, block, view in zip(self.linear, self.blocks, self.layers.views(out),
                                       strict=True):
            if linear:
                a, d = block
                wd = (w[:, :, None] * d[:, None, :]).reshape(self.n, -1)   # (n, k·out)
                view["weight"].copy_((wd.T @ a).view_as(view["weight"]))
                if "bias" in view:
                    view["bias"].copy_(w.T @ d)
                continue
            for attr, G in zip(("weight", "bias"), block, strict=False):
                if attr in view:
                    view[attr].copy_((w.T @ G).view_as(view[attr]))
        return out


def _factored(objective: Objective, theta: torch.Tensor, method: str) -> _Factored | None:
    """The factored form for ``method`` ("auto", "layer-factors", "linear-layers"), ``None``
    when "auto" falls back; raises with the reason when a factored method was asked for."""
    if method == "per-sample":
        return None
    built, reason = try_factored(objective, lambda layers: _Factored(objective, theta, layers),
                                 types=_FACTOR_TYPES[method])
    if reason is not None and method != "auto":
        raise ArgumentValueError(f"method={method!r} does not apply: {reason}; use "
                                 "method='per-sample' (any model)")
    return built


def _local_rows(objective: Objective, indices: torch.Tensor,
                n_local: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``indices`` as rows of this process's samples, and the weight ``1/0`` of each entry
    (``None`` when all are this process's): other ranks' samples get any row, weight 0."""
    local = (indices - objective.shard_start).to(objective.device)
    inside = (local >= 0) & (local < n_local)
    if bool(inside.all()):
        return local, None
    return torch.where(inside, local, torch.zeros_like(local)), inside.to(objective.dtype)


def _batch_sums(values: torch.Tensor, rows: torch.Tensor,
                weight: torch.Tensor | None) -> torch.Tensor:
    """``Σ_{i∈b} values_i`` for every batch (row of ``rows``): one gather-sum."""
    return F.embedding_bag(rows, values, mode="sum", per_sample_weights=weight)


def minibatch_gradients(
    objective: Objective,
    indices: torch.Tensor,
    theta: torch.Tensor | None = None,
    *,
    return_mean: bool = False,
    method: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Gradients ``g_b = (1/B) Σ_{i∈b} ∇ℓ_i(θ)`` of all batches ``b`` (rows of ``indices``).

    Vectorized (module docstring): ``method="layer-factors"`` through the layer factors of
    ``nn.Linear`` and ``nn.Conv1d``/``nn.Conv2d`` layers (``"linear-layers"``: the same, for
    ``nn.Linear`` layers only), ``"per-sample"`` through per-sample gradients chunk by chunk
    (the objective's ``chunk_size`` bounds memory), ``"auto"`` the first when ``θ`` is made of
    whole such layers each called once per forward pass, else the last. Returns
    ``(num_batches, p)``; with ``return_mean`` also the full gradient ``g`` (from the same
    pass). Statistics of the batch gradients need not hold them all:
    :func:`iter_minibatch_gradients` streams blocks through one reused buffer, and
    :func:`minibatch_projections`, :func:`minibatch_coordinates`,
    :func:`minibatch_squared_norms` and :func:`minibatch_covariance_product` compute common
    ones directly.

    On a sharded objective ``indices`` are global; each rank adds the gradients of its own
    samples to every batch and one all-reduce sums the partial batch gradients (no per-sample
    quantity leaves its rank).
    """
    method, indices, theta = _checked_arguments(objective, indices, theta, method)
    fac = _factored(objective, theta, method)
    if fac is None:
        both = _per_sample_gradients(objective, theta, indices)
    else:
        both = torch.empty((indices.shape[0] + 1, objective.dim), dtype=objective.dtype,
                           device=objective.device)
        rows, weight = _local_rows(objective, indices, fac.n)
        block = max(1, _BLOCK_ELEMENTS // objective.dim)
        for start in range(0, indices.shape[0], block):
            stop = min(start + block, indices.shape[0])  # not into the last row (Σ_i g_i)
            fac.fill(rows[start:stop], None if weight is None else weight[start:stop],
                     1.0 / indices.shape[1], both[start:stop])
        both[-1] = fac.total
    # One (num_batches + 1, p) tensor, the last row Σ_i g_i: one all-reduce, and no copy.
    both = objective.reduce(both, inputs=(theta,))
    out, mean = both[:-1], both[-1] / objective.n
    return (out, mean) if return_mean else out


def iter_minibatch_gradients(
    objective: Objective,
    indices: torch.Tensor,
    theta: torch.Tensor | None = None,
    *,
    noise: bool = False,
    block_size: int | None = None,
    method: str = "auto",
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, G)``: the gradients ``g_b`` (or, with ``noise``, ``ξ_b = g_b − g``) of
    batches ``start, start+1, …`` as the rows of ``G``, block by block.

    The same values as :func:`minibatch_gradients`, but ``G`` is a view of **one reused
    buffer** of ``block_size`` rows (default: about 2²⁰ entries, so it stays in cache):
    statistics of all batch gradients then need ``block_size·p`` memory instead of
    ``num_batches·p``, and skip the first touch of a freshly allocated result (for 1,000
    batches of a 26k-parameter model that alone is about as long as computing them). Copy
    ``G`` to keep it past the next step. With the factored methods one forward/backward pass
    over the data comes first; the per-sample path computes all batches before the first
    block. On a sharded objective every rank must consume every block (one all-reduce each).
    """
    method, indices, theta = _checked_arguments(objective, indices, theta, method)
    num_batches, B = indices.shape
    if block_size is None:
        block_size = max(1, _BLOCK_ELEMENTS // objective.dim)
    block_size = integer(block_size, "block_size", minimum=1)
    fac = _factored(objective, theta, method)
    if fac is None:
        G, g = minibatch_gradients(objective, indices, theta, return_mean=True,
                                   method="per-sample")
        if noise:
            G -= g
        for start in range(0, num_batches, block_size):
            yield start, G[start : start + block_size]
        return
    g = objective.reduce(fac.total.clone(), inputs=(theta,)) / objective.n
    rows, weight = _local_rows(objective, indices, fac.n)
    buffer = torch.empty((min(block_size, num_batches), objective.dim), dtype=objective.dtype,
                         device=objective.device)
    for start in range(0, num_batches, block_size):
        stop = min(start + block_size, num_batches)
        G = buffer[: stop - start]
        fac.fill(rows[start:stop], None if weight is None else weight[start:stop], 1.0 / B, G)
        G = objective.reduce(G, inputs=(theta,))
        if noise:
            G -= g
        yield start, G


def _per_sample_values(
    objective: Objective, theta: torch.Tensor, fac: _Factored | None,
    factored: Callable[[_Factored], torch.Tensor], dense: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """A linear statistic of every per-sample gradient of this process (``n_local × k``):
    from the factors, or from per-sample gradients chunk by chunk (``vmap(grad)``)."""
    if fac is not None:
        return factored(fac)
    return torch.cat([dense(G) for G in objective.iter_per_sample_gradients(theta)])


def _batch_means_of(objective: Objective, theta: torch.Tensor, indices: torch.Tensor,
                    values: torch.Tensor, noise: bool) -> torch.Tensor:
    """``(1/B) Σ_{i∈b} values_i`` per batch, minus the mean over all samples with ``noise``;
    one all-reduce on a sharded objective."""
    rows, weight = _local_rows(objective, indices, values.shape[0])
    scale = torch.full(rows.shape, 1.0 / indices.shape[1], dtype=values.dtype,
                       device=values.device)
    out = _batch_sums(values, rows, scale if weight is None else scale * weight)
    if objective.distributed:  # one all-reduce: the batch sums and Σ_i values_i
        both = objective.reduce(torch.cat([out, values.sum(0, keepdim=True)]), inputs=(theta,))
        out, total = both[:-1], both[-1]
    else:
        total = values.sum(0)
    return out.sub_(total / objective.n) if noise else out


def _check_directions(V: object, dim: int) -> tuple[torch.Tensor, bool]:
    if not isinstance(V, torch.Tensor) or not V.is_floating_point() or V.ndim not in (1, 2) \
            or V.shape[0] != dim:
        shape = tuple(V.shape) if isinstance(V, torch.Tensor) else type(V).__name__
        raise ArgumentValueError(
            f"directions must be a floating tensor of shape (p,) or (p, k) with p = {dim}, got "
            f"{shape}; stack k directions as the columns of a (p, k) tensor")
    if not bool(torch.isfinite(V).all()):
        raise ArgumentValueError("directions contain NaN or infinite entries")
    return (V[:, None], True) if V.ndim == 1 else (V, False)


def _checked_arguments(objective: Objective, indices: torch.Tensor,
                       theta: torch.Tensor | None, method: str
                       ) -> tuple[str, torch.Tensor, torch.Tensor]:
    """The arguments every mini-batch statistic shares, checked once: ``(method, indices,
    θ)``."""
    _check_objective(objective)
    return (_check_method(method), _check_indices(indices, objective.n),
            objective.resolve_theta(theta))


def minibatch_projections(
    objective: Objective,
    indices: torch.Tensor,
    directions: torch.Tensor,
    theta: torch.Tensor | None = None,
    *,
    noise: bool = True,
    method: str = "auto",
) -> torch.Tensor:
    """``⟨ξ_b, v_k⟩`` (or ``⟨g_b, v_k⟩`` with ``noise=False``) for every batch ``b`` and every
    column ``v_k`` of ``directions`` (``(p, k)``, or ``(p,)``): ``(num_batches, k)`` (or
    ``(num_batches,)``).

    A projection is linear in the gradient, so ``⟨g_b, v⟩ = (1/B) Σ_{i∈b} ⟨g_i, v⟩``: the
    ``n`` per-sample projections are computed once and every batch is a sum of ``B`` of them.
    From the layer factors ``⟨δ_i a_iᵀ, V⟩ = δ_iᵀ V a_i`` (no per-sample gradient is formed);
    the cost, ``O(n·p·k)``, does not grow with the number of batches, where the loop pays a
    forward/backward per batch. ``ξ_b = g_b − g``: ``⟨g, v⟩`` is the mean of the per-sample
    projections. Other models take per-sample gradients (``method="per-sample"``).
    """
    method, indices, theta = _checked_arguments(objective, indices, theta, method)
    V, single = _check_directions(directions, objective.dim)
    V = V.to(device=objective.device, dtype=objective.dtype)
    fac = _factored(objective, theta, method)
    values = _per_sample_values(objective, theta, fac, lambda f: f.project(V), lambda G: G @ V)
    out = _batch_means_of(objective, theta, indices, values, noise)
    return out[:, 0] if single else out


def minibatch_coordinates(
    objective: Objective,
    indices: torch.Tensor,
    coordinates: torch.Tensor,
    theta: torch.Tensor | None = None,
    *,
    noise: bool = True,
    method: str = "auto",
) -> torch.Tensor:
    """The entries ``ξ_b[coordinates]`` (or ``g_b[coordinates]``) of every batch:
    ``(num_batches, m)``; the same as ``minibatch_gradients(...)[:, coordinates]`` (minus
    ``g``), without forming the batch gradients.

    For tail-index samples of the noise of selected parameters. A weight entry ``(o, c)`` of
    a linear layer has per-sample gradients ``δ_i[o]·a_i[c]`` (its bias ``δ_i[o]``), so the
    ``n × m`` per-sample entries cost ``O(n·m)`` from the factors and each batch is a sum of
    ``B`` of them.
    """
    method, indices, theta = _checked_arguments(objective, indices, theta, method)
    if not isinstance(coordinates, torch.Tensor) or coordinates.ndim != 1 or \
            coordinates.dtype not in (torch.int64, torch.int32) or coordinates.numel() == 0:
        raise ArgumentValueError(
            "coordinates must be a non-empty 1-D integer tensor of parameter indices, got "
            f"{coordinates!r:.80}")
    if int(coordinates.min()) < 0 or int(coordinates.max()) >= objective.dim:
        raise ArgumentValueError(f"coordinates must lie in [0, p={objective.dim})")
    # Sorted, a layer's coordinates are contiguous; the batch values are put back in order.
    coords, order = coordinates.long().to(objective.device).sort()
    fac = _factored(objective, theta, method)
    m, (num_batches, B) = coords.numel(), indices.shape
    # Gathering and summing n·m + num_batches·B·m scattered values is memory-bound; forming
    # whole batch gradients block by block costs num_batches·B·p multiply-adds, but in dense
    # products at several times the rate. The factor 8 is that ratio, roughly, on a CPU.
    if fac is not None and not objective.distributed and \
            8 * (fac.n + num_batches * B) * m > num_batches * B * objective.dim:
        out = fac.total.new_empty(num_batches, m)
        rows = indices.to(objective.device)
        block = max(1, _BLOCK_ELEMENTS // objective.dim)
        for start in range(0, num_batches, block):
            fac.slot_coordinates(rows[start : start + block], 1.0 / B, coords,
                                 out[start : start + block])
        if noise:
            out -= fac.total[coords] / objective.n
    else:
        values = _per_sample_values(objective, theta, fac, lambda f: f.coordinates(coords),
                                    lambda G: G[:, coords])
        out = _batch_means_of(objective, theta, indices, values, noise)
    return out.index_select(1, order.argsort())


def minibatch_squared_norms(
    objective: Objective,
    indices: torch.Tensor,
    theta: torch.Tensor | None = None,
    *,
    noise: bool = True,
    method: str = "auto",
) -> torch.Tensor:
    """``‖ξ_b‖²`` (or ``‖g_b‖²`` with ``noise=False``) of every batch: ``(num_batches,)``.

    The batch gradients of a block of batches are formed layer by layer from the factors and
    reduced to norms while in cache (or stream through :func:`iter_minibatch_gradients`, for
    other models and sharded objectives): no ``num_batches × p`` result is allocated. (The
    alternative ``‖g_b‖² = (1/B²) Σ_{i,j∈b} ⟨g_i, g_j⟩`` from factor Gram matrices costs
    ``B²·Σ(in + out)`` per batch and layer, no less than forming ``g_b`` (``B·in·out``) for
    layers as wide as the batch, and it cancels badly in float32 for the noise.)
    """
    method, indices, theta = _checked_arguments(objective, indices, theta, method)
    fac = None if objective.distributed else _factored(objective, theta, method)
    if fac is None:  # per-sample path, or sharded: blocks of the all-reduced batch gradients
        norms = [torch.linalg.vector_norm(G, dim=1).square() for _, G in iter_minibatch_gradients(
            objective, indices, theta, noise=noise, method=method)]
        return torch.cat(norms)
    g = fac.total / objective.n if noise else None
    rows = indices.to(objective.device)
    block = max(1, _BLOCK_ELEMENTS // objective.dim)
    return torch.cat([fac.squared_norms(rows[start : start + block], 1.0 / indices.shape[1], g)
                      for start in range(0, indices.shape[0], block)])


def minibatch_covariance_product(
    objective: Objective,
    indices: torch.Tensor,
    directions: torch.Tensor,
    theta: torch.Tensor | None = None,
    *,
    method: str = "auto",
) -> torch.Tensor:
    """The empirical noise covariance of the batches times ``directions``:
    ``Σ̂ V = (1/m) Σ_b ξ_b ξ_bᵀ V`` for ``m`` batches, ``(p, k)`` (or ``(p,)``).

    Its expectation over random batches is ``noise_factor(n, B)·C V`` (exact:
    :func:`noise_covariance`); this is the Monte-Carlo estimate that training with these
    batches sees. With ``P_bk = ⟨ξ_b, v_k⟩`` (:func:`minibatch_projections`),
    ``Σ_b ξ_b P_bk = Σ_i w_ik g_i − g Σ_b P_bk``, ``w_ik = (1/B) Σ_{b∋i} P_bk``: one weighted
    sum of per-sample gradients per direction, ``(w ⊙ Δ)ᵀ A`` per linear layer, so the cost
    does not grow with ``m``.
    """
    method, indices, theta = _checked_arguments(objective, indices, theta, method)
    V, single = _check_directions(directions, objective.dim)
    V = V.to(device=objective.device, dtype=objective.dtype)
    fac = _factored(objective, theta, method)
    values = _per_sample_values(objective, theta, fac, lambda f: f.project(V), lambda G: G @ V)
    P = _batch_means_of(objective, theta, indices, values, noise=True)    # (m, k), global
    m, B = indices.shape
    rows, weight = _local_rows(objective, indices, values.shape[0])
    contrib = (P / B)[:, None, :].expand(m, B, P.shape[1])
    if weight is not None:
        contrib = contrib * weight[:, :, None]
    w = values.new_zeros(values.shape).index_add_(0, rows.reshape(-1),
                                                  contrib.reshape(m * B, -1))
    if fac is not None:
        both = torch.cat([fac.combine(w), fac.total[None]])
    else:
        both = w.new_zeros(w.shape[1] + 1, objective.dim)
        offset = 0
        for G in objective.iter_per_sample_gradients(theta):
            both[:-1] += w[offset : offset + G.shape[0]].T @ G
            both[-1] += G.sum(0)
            offset += G.shape[0]
    both = objective.reduce(both, inputs=(theta,))
    g = both[-1] / objective.n
    out = (both[:-1] - P.sum(0)[:, None] * g).T / m
    return out[:, 0] if single else out


def _per_sample_gradients(objective: Objective, theta: torch.Tensor, indices: torch.Tensor):
    """This process's share of every batch gradient, and ``Σ_i g_i`` in the last row."""
    both = torch.zeros((indices.shape[0] + 1, objective.dim), dtype=objective.dtype,
                       device=objective.device)
    out, mean = both[:-1], both[-1]
    offset = objective.shard_start
    for G in objective.iter_per_sample_gradients(theta):
        c = G.shape[0]
        local = indices - offset
        inside = (local >= 0) & (local < c)
        if bool(inside.any()):
            # Sparse weights (B of n entries per row): the product costs num_batches·B·p
            # multiply-adds instead of num_batches·n·p for a dense W.
            rows, cols = inside.nonzero(as_tuple=True)
            W = torch.sparse_coo_tensor(
                torch.stack([rows, local[rows, cols]]).to(G.device),
                torch.full((rows.numel(),), 1.0 / indices.shape[1], dtype=G.dtype,
                           device=G.device),
                (indices.shape[0], c),
                check_invariants=False,  # built from valid indices just above
            ).coalesce()  # duplicates (sampling with replacement) add up
            out += torch.sparse.mm(W, G)
        mean += G.sum(0)
        offset += c
    return both


def minibatch_gradients_loop(
    objective: Objective, indices: torch.Tensor, theta: torch.Tensor | None = None
) -> torch.Tensor:
    """The reference: one forward/backward pass per batch, in a Python loop (tensor data)."""
    _check_objective(objective)
    indices = _check_indices(indices, objective.n)
    leaf = objective.resolve_theta(theta).detach().requires_grad_(True)
    rows = []
    for idx in indices:
        X, Y = objective.batch(idx)
        loss = objective.chunk_losses(leaf, X, Y).mean()
        rows.append(torch.autograd.grad(loss, leaf)[0])
    return torch.stack(rows)


def minibatch_noise(
    objective: Objective,
    theta: torch.Tensor | None = None,
    *,
    batch_size: int,
    num_batches: int,
    replacement: bool = False,
    seed: int = 0,
    coordinates: torch.Tensor | None = None,
    method: str = "auto",
) -> torch.Tensor:
    """``num_batches`` noise samples ``ξ_b = g_b − g``, shape ``(num_batches, p)``.

    Batches as in :func:`batch_indices`. ``Cov(ξ_b) = noise_factor(n, B)·C``. With
    ``coordinates`` (1-D parameter indices) only those entries, ``(num_batches, m)``, by
    :func:`minibatch_coordinates` (the same values as ``minibatch_noise(...)[:, coordinates]``,
    without forming the ``num_batches × p`` noise).
    """
    _check_objective(objective)
    idx = batch_indices(objective.n, batch_size, num_batches, replacement=replacement, seed=seed)
    if coordinates is not None:
        return minibatch_coordinates(objective, idx, coordinates, theta, method=method)
    G, g = minibatch_gradients(objective, idx, theta, return_mean=True, method=method)
    return G.sub_(g)


def noise_covariance(
    objective: Objective,
    theta: torch.Tensor | None = None,
    *,
    batch_size: int,
    replacement: bool = False,
):
    """The mini-batch noise covariance ``noise_factor(n, B) · C`` as a linear operator.

    ``C`` is :func:`valleys.gradient_covariance` (matrix-free: double-vjp products).
    """
    from valleys.operators import gradient_covariance

    _check_objective(objective)
    factor = noise_factor(objective.n, batch_size, replacement=replacement)
    return gradient_covariance(objective, theta) * factor


def _deviations(objective: Objective, theta: torch.Tensor) -> torch.Tensor:
    G = objective.per_sample_gradients(theta)
    return G - G.mean(0)


def hessian_alignment(C: torch.Tensor, H: torch.Tensor) -> float:
    """``tr(CH)/(‖C‖_F‖H‖_F)`` for dense symmetric matrices (0 if either vanishes)."""
    for name, M in (("C", C), ("H", H)):
        if not isinstance(M, torch.Tensor) or M.ndim != 2 or M.shape[0] != M.shape[1]:
            raise ArgumentValueError(f"{name} must be a square matrix (a 2-D tensor), got "
                                     f"{tuple(getattr(M, 'shape', ()))}")
    if C.shape != H.shape:
        raise ArgumentValueError(f"C and H must have the same shape, got {tuple(C.shape)} and "
                                 f"{tuple(H.shape)}")
    denom = float(torch.linalg.matrix_norm(C) * torch.linalg.matrix_norm(H))
    return float((C * H).sum()) / denom if denom > 0 else 0.0


def subspace_overlap(U: torch.Tensor, V: torch.Tensor) -> float:
    """``‖Uᵀ V‖_F² / k`` for orthonormal ``(p, k)`` bases: 1 for equal spans, 0 if orthogonal."""
    for name, M in (("U", U), ("V", V)):
        if not isinstance(M, torch.Tensor) or M.ndim != 2 or M.shape[1] == 0:
            raise ArgumentValueError(
                f"{name} must be a (p, k) tensor of k >= 1 orthonormal columns, got "
                f"{tuple(getattr(M, 'shape', ()))}; reshape a single vector with "
                "u[:, None]")
    if U.shape != V.shape:
        raise ArgumentValueError(
            f"bases must have the same shape, got {tuple(U.shape)}, {tuple(V.shape)}")
    return float((U.T @ V).pow(2).sum()) / U.shape[1]


@dataclass(frozen=True, eq=False)
class NoiseStatistics:
    """Spectral summary of the mini-batch noise covariance ``Σ_B = c·C`` at θ.

    Attributes:
        n: samples; ``batch_size``, ``replacement`` and ``factor`` (``c``) as in the call.
        top_eigenvalues: ``(k,)`` largest eigenvalues of ``Σ_B``, descending.
        trace: ``tr Σ_B``; frobenius: ``‖Σ_B‖_F``; effective_rank: ``tr Σ_B / λ_max``.
        alignment: ``tr(Σ_B H)/(‖Σ_B‖_F‖H‖_F)`` (``None`` unless ``hessian=True``).
        overlap: top-``k`` eigenspace overlap of ``Σ_B`` and ``H`` (``None`` likewise).
        hessian_top: ``(k,)`` top Hessian eigenvalues (``None`` likewise).
        method: ``"gram"`` (exact, from the ``n × n`` Gram matrix of per-sample deviations) or
            ``"lanczos"`` (matrix-free; see :func:`noise_statistics`).
        wall_time: seconds spent.
    """

    n: int
    batch_size: int
    replacement: bool
    factor: float
    top_eigenvalues: torch.Tensor
    trace: float
    frobenius: float
    effective_rank: float
    alignment: float | None
    overlap: float | None
    hessian_top: torch.Tensor | None
    method: str
    wall_time: float

    def to_dict(self) -> dict[str, Any]:
        return record_to_dict(self)


def noise_statistics(
    objective: Objective,
    theta: torch.Tensor | None = None,
    *,
    batch_size: int,
    k: int = 5,
    replacement: bool = False,
    hessian: bool = False,
    method: str = "gram",
    num_matvecs: int = 60,
    seed: int = 0,
) -> NoiseStatistics:
    """Top eigenvalues, trace, effective rank of ``Σ_B`` and its alignment with the Hessian.

    ``method="gram"`` (exact, small ``n·p``): from the per-sample deviations ``D = G − ḡ``
    (``n × p``, kept in memory) the nonzero spectrum of ``C = DᵀD/n`` is that of the Gram matrix
    ``DDᵀ/n``, eigenvectors ``U = DᵀV/√(nλ)``, ``‖C‖_F = ‖DDᵀ‖_F/n``. With ``hessian=True`` the
    alignment uses ``tr(CH) = (1/n) Σ_i d_iᵀ H d_i`` and ``‖H‖_F`` from the dense Hessian (keep
    ``p`` to a few thousand), and the top-``k`` Hessian eigenvectors for the overlap.

    ``method="lanczos"`` (matrix-free, any size): the top ``k`` eigenpairs of the operator
    :func:`noise_covariance` by :func:`valleys.eigsh`; the trace exactly from streamed
    per-sample gradient norms, ``tr C = (1/n)Σ‖g_i‖² − ‖g‖²``; ``‖Σ_B‖_F² = tr(Σ_B²)`` and, with
    ``hessian=True``, ``tr(Σ_B H)`` and ``‖H‖_F² = tr(H²)`` by Hutch++ with ``num_matvecs``
    products each (:func:`valleys.trace`; exact once ``num_matvecs >= 3p``), the Hessian's top
    ``k`` eigenpairs by eigsh.
    """
    started = time.perf_counter()
    _check_objective(objective)
    theta = objective.resolve_theta(theta)
    factor = noise_factor(objective.n, batch_size, replacement=replacement)
    k = integer(k, "k", minimum=1)
    if method not in ("gram", "lanczos"):
        raise ArgumentValueError(f"method must be 'gram' or 'lanczos', got {method!r}")
    if method == "lanczos":
        return _statistics_lanczos(objective, theta, batch_size, factor, k, replacement, hessian,
                                   num_matvecs, seed, started)
    objective.require_single_process("noise_statistics(method='gram')")
    D = _deviations(objective, theta)
    n = objective.n
    gram = (D @ D.T) / n
    evals, evecs = torch.linalg.eigh(gram)
    evals, evecs = evals.flip(0), evecs.flip(1)
    k_eff = min(k, n, objective.dim)
    top = evals[:k_eff].clamp_min(0) * factor
    tr = float(D.pow(2).sum()) / n * factor
    fro = float(torch.linalg.matrix_norm(gram)) * factor
    eff = tr / float(top[0]) if float(top[0]) > 0 else math.nan
    alignment = overlap = hessian_top = None
    if hessian:
        from valleys.operators import hessian as hessian_op

        H = hessian_op(objective, theta)
        Hd = H.to_dense()
        Hd = 0.5 * (Hd + Hd.T)
        tr_ch = float((D * (D @ Hd)).sum()) / n * factor
        alignment = tr_ch / (fro * float(torch.linalg.matrix_norm(Hd))) if fro > 0 else 0.0
        h_evals, h_evecs = torch.linalg.eigh(Hd)
        hessian_top = h_evals.flip(0)[:k_eff]
        lam = evals[:k_eff].clamp_min(torch.finfo(D.dtype).tiny)
        U_C = (D.T @ evecs[:, :k_eff]) / torch.sqrt(n * lam)
        overlap = subspace_overlap(U_C, h_evecs.flip(1)[:, :k_eff])
    return NoiseStatistics(
        n=n, batch_size=batch_size, replacement=replacement, factor=factor, top_eigenvalues=top,
        trace=tr, frobenius=fro, effective_rank=eff, alignment=alignment, overlap=overlap,
        hessian_top=hessian_top, method="gram", wall_time=time.perf_counter() - started,
    )


def _statistics_lanczos(objective, theta, batch_size, factor, k, replacement, hessian,
                        num_matvecs, seed, started) -> NoiseStatistics:
    from valleys.linalg import eigsh, trace
    from valleys.operators import hessian as hessian_op

    op = noise_covariance(objective, theta, batch_size=batch_size, replacement=replacement)
    k_eff = min(k, objective.dim - 1)
    top = eigsh(op, k=k_eff, which="largest", seed=seed)
    total = torch.zeros(objective.dim, dtype=objective.dtype, device=objective.device)
    squares = torch.zeros((), dtype=objective.dtype, device=objective.device)
    for G in objective.iter_per_sample_gradients(theta):
        total += G.sum(0)
        squares += G.pow(2).sum()
    packed = objective.reduce(torch.cat([total, squares.reshape(1)]), inputs=(theta,))
    total, squares = packed[:-1], packed[-1]
    g = total / objective.n
    tr = (float(squares) / objective.n - float(g @ g)) * factor
    fro = math.sqrt(max(trace(op @ op, num_matvecs=num_matvecs, seed=seed).value, 0.0))
    values = top.values.clamp_min(0)
    eff = tr / float(values[0]) if float(values[0]) > 0 else math.nan
    alignment = overlap = hessian_top = None
    if hessian:
        H = hessian_op(objective, theta)
        tr_ch = trace(op @ H, num_matvecs=num_matvecs, seed=seed).value
        h_fro = math.sqrt(max(trace(H @ H, num_matvecs=num_matvecs, seed=seed).value, 0.0))
        alignment = tr_ch / (fro * h_fro) if fro > 0 and h_fro > 0 else 0.0
        h_top = eigsh(H, k=k_eff, which="largest", seed=seed)
        hessian_top = h_top.values
        overlap = subspace_overlap(top.vectors, h_top.vectors)
    return NoiseStatistics(
        n=objective.n, batch_size=batch_size, replacement=replacement, factor=factor,
        top_eigenvalues=values, trace=tr, frobenius=fro, effective_rank=eff,
        alignment=alignment, overlap=overlap, hessian_top=hessian_top, method="lanczos",
        wall_time=time.perf_counter() - started,
    )
