r"""Mini-batch gradient noise at a fixed θ: samples, covariance, spectrum, alignment with H.

For a mini-batch ``b`` of ``B`` samples the gradient is ``g_b = (1/B) Σ_{i∈b} g_i`` with
``g_i = ∇ℓ_i(θ)``; its noise is ``ξ_b = g_b − g``, ``g = ∇L(θ)``. With the per-sample gradient
covariance ``C = (1/n) Σ_i (g_i − g)(g_i − g)ᵀ`` (:func:`valleys.gradient_covariance`),

* batches drawn **without replacement** (``B`` distinct samples): ``Cov(ξ_b) = c·C`` with
  ``c = (n − B)/(B(n − 1))`` (finite-population correction; Wu, Ma & E 2018);
* **with replacement**: ``Cov(ξ_b) = C/B``.

Mini-batch gradients of all batches come from one pass over the data, not one forward and
backward pass per batch (``benchmarks/bench_noise.py`` measures the difference):

* ``method="linear-layers"`` (``θ`` made of whole ``nn.Linear`` layers, the default when it
  applies): a layer's per-sample gradient is ``(δ_i a_iᵀ, δ_i)``, ``δ_i = ∂ℓ_i/∂z_i``, so
  ``g_b = (1/B) Σ_{i∈b} (δ_i a_iᵀ, δ_i)`` is one batched matrix product ``Δ_bᵀ A_b`` per layer
  over the gathered rows of the recorded ``A`` and ``Δ`` (one forward and backward pass over the
  data, :mod:`valleys._layer_factors`). Per-sample gradients are never formed.
* ``method="per-sample"`` (any model): each data chunk's per-sample gradients ``G_c``
  (``vmap(grad)``) are combined into all batches by one sparse product ``W_c G_c``, ``W`` the
  ``(batches × n)`` matrix of sample weights ``(count in batch)/B``.

Alignment of the noise with the curvature: ``tr(CH)/(‖C‖_F ‖H‖_F)`` (cosine similarity of the
two matrices; 1 when ``C ∝ H``) and the overlap ``‖U_Cᵀ U_H‖_F²/k`` of their top-``k``
eigenspaces (1: the same subspace; ``k/p`` on average for random subspaces).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from valleys._checks import integer, is_integral, seed_value
from valleys._layer_factors import (
    check_factored_gradient,
    factored_gradient,
    factors,
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
    "minibatch_gradients",
    "minibatch_gradients_loop",
    "minibatch_noise",
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


MINIBATCH_METHODS = ("auto", "linear-layers", "per-sample")

# Elements of one block of batch gradients (batches × p): blocks this size stay in cache.
_BLOCK_ELEMENTS = 2**20


def minibatch_gradients(
    objective: Objective,
    indices: torch.Tensor,
    theta: torch.Tensor | None = None,
    *,
    return_mean: bool = False,
    method: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Gradients ``g_b = (1/B) Σ_{i∈b} ∇ℓ_i(θ)`` of all batches ``b`` (rows of ``indices``).

    Vectorized (module docstring): ``method="linear-layers"`` through the layer factors,
    ``"per-sample"`` through per-sample gradients chunk by chunk (the objective's
    ``chunk_size`` bounds memory), ``"auto"`` the first when ``θ`` is made of whole
    ``nn.Linear`` layers each called once per forward pass, else the second. Returns
    ``(num_batches, p)``; with ``return_mean`` also the full gradient ``g`` (from the same
    pass).

    On a sharded objective ``indices`` are global; each rank adds the gradients of its own
    samples to every batch and one all-reduce sums the partial batch gradients (no per-sample
    quantity leaves its rank).
    """
    _check_objective(objective)
    if method not in MINIBATCH_METHODS:
        raise ArgumentValueError(f"method must be one of {MINIBATCH_METHODS}, got {method!r}")
    indices = _check_indices(indices, objective.n)
    theta = objective.resolve_theta(theta)
    both = None
    if method != "per-sample":
        both, reason = try_factored(
            objective, lambda layers: _linear_layers_gradients(objective, theta, layers, indices))
        if reason is not None and method == "linear-layers":
            raise ArgumentValueError(f"method='linear-layers' does not apply: {reason}; use "
                                     "method='per-sample' (any model)")
    if both is None:
        both = _per_sample_gradients(objective, theta, indices)
    # One (num_batches + 1, p) tensor, the last row Σ_i g_i: one all-reduce, and no copy.
    both = objective.reduce(both, inputs=(theta,))
    out, mean = both[:-1], both[-1] / objective.n
    return (out, mean) if return_mean else out


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


def _linear_layers_gradients(objective: Objective, theta: torch.Tensor, layers, indices):
    """This process's share of every batch gradient, and ``Σ_i g_i`` in the last row, from
    the layer factors.

    One forward and backward pass records ``a_i`` and ``δ_i = ∂ℓ_i/∂z_i`` of every layer for
    this process's samples; then ``g_b = (1/B) Σ_{i∈b} (δ_i a_iᵀ, δ_i)`` for blocks of batches
    by one batched product per layer, written straight into ``θ``'s layout.
    """
    inputs: list[list[torch.Tensor]] = [[] for _ in layers]
    deltas: list[list[torch.Tensor]] = [[] for _ in layers]
    X, Y = next(iter(objective.chunks()))
    check_factored_gradient(objective, theta, layers, X,
                            lambda out: objective.loss_fn(out, Y[: out.shape[0]]).sum())
    for X, Y in objective.chunks():
        out, acts, shifts = forward_with_shifts(objective, theta, layers, X)
        grads = torch.autograd.grad(objective.loss_fn(out, Y).sum(), shifts, allow_unused=True)
        for j, (a, d) in enumerate(zip(*factors(layers, acts, grads), strict=True)):
            inputs[j].append(a)
            deltas[j].append(d)  # zeros for a layer whose output does not reach the loss
    A = [torch.cat(a) for a in inputs]
    D = [torch.cat(d) for d in deltas]
    num_batches, B = indices.shape
    local = (indices - objective.shard_start).to(objective.device)
    inside = (local >= 0) & (local < A[0].shape[0])
    # Samples of other ranks' shards: any row, weight 0 (their rank adds them).
    weight = None if bool(inside.all()) else inside.to(objective.dtype)[:, :, None]
    local = torch.where(inside, local, torch.zeros_like(local))
    both = torch.empty((num_batches + 1, objective.dim), dtype=objective.dtype,
                       device=objective.device)
    grads, mean = both[:-1], both[-1]
    block = max(1, _BLOCK_ELEMENTS // objective.dim)
    for start in range(0, num_batches, block):
        rows = local[start : start + block]
        views = layers.views(grads[start : start + block])
        for a, d, view in zip(A, D, views, strict=True):
            dw = d[rows]                                               # (blk, B, out)
            if weight is not None:
                dw = dw * weight[start : start + block]
            view["weight"].copy_(torch.bmm(dw.transpose(1, 2), a[rows]))
            if "bias" in view:
                view["bias"].copy_(dw.sum(1))
    grads /= B
    mean.copy_(factored_gradient(layers, A, D))
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
) -> torch.Tensor:
    """``num_batches`` noise samples ``ξ_b = g_b − g``, shape ``(num_batches, p)``.

    Batches as in :func:`batch_indices`. ``Cov(ξ_b) = noise_factor(n, B)·C``.
    """
    _check_objective(objective)
    idx = batch_indices(objective.n, batch_size, num_batches, replacement=replacement, seed=seed)
    G, g = minibatch_gradients(objective, idx, theta, return_mean=True)
    return G - g


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
