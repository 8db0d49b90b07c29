r"""Sharpness, non-uniformity and the SGD stability threshold from the Gram (NTK) matrix.

At an interpolating minimum of the square loss ``ℓ_i = ½‖f(x_i; θ) − y_i‖²`` (``K`` outputs,
residuals zero) the per-sample Hessians are ``H_i = J_iᵀJ_i`` with ``J_i = ∂f(x_i)/∂θ``
(``K × p``). Stack them into ``J`` (``nK × p``, row ``(i, k)`` at ``iK + k``) and let
``G = JJᵀ`` be the ``nK × nK`` Gram (empirical NTK) matrix, ``D = blockdiag(G_ii)`` its diagonal
``K × K`` blocks. Then

* ``H = JᵀJ / n``, so ``λ_max(H) = λ_max(G) / n``;
* ``(1/n) Σ_i H_i² = Jᵀ D J / n`` and ``Σ = (1/n) Σ_i H_i² − H² = Jᵀ B J / n`` with
  ``B = D − G/n``. The nonzero eigenvalues of ``JᵀBJ`` are those of ``BJJᵀ = BG``, i.e. of the
  symmetric ``G^{1/2} B G^{1/2}``; we find the largest by Lanczos on ``u ↦ BGu/n``, which is
  self-adjoint for the inner product ``⟨x, y⟩_G = xᵀGy`` (this is Lanczos on ``Σ`` itself in
  the coordinates ``v = Jᵀu``, so no square root or factorization of ``G`` is needed);
* ``A = H² + cΣ = Jᵀ[(1 − c) G/n² + c D/n] J``, so the sufficient condition
  ``ηA ⪯ 2H`` of Wu, Ma & E (2018) reads ``wᵀ(η[(1 − c) G/n + cD] − 2I) w <= 0`` for
  ``w ∈ range(G)``, and ``η* = 2 / λ_max(P[(1 − c) G/n + cD]P)`` with ``P`` the projector on
  ``range(G)``. We return ``2 / λ_max((1 − c) G/n + cD)``: exact when ``G`` is nonsingular
  (generic when ``p >= nK`` and the inputs are distinct), a lower bound otherwise. For
  ``B = 1`` it is ``2 / max_i ‖J_i‖²``: every sample alone must be stable.

Everything lives in ``nK`` dimensions. For the linear-layers method ``G`` is by default never
formed: ``Gu = J(Jᵀu)`` is applied through the per-layer factors below, at the cost of a
gradient-sized contraction per product, so the ``nK × nK`` matrix (14,380² for digits) and its
``O((nK)²)`` products are avoided (``form="dense"`` forms it). Away from exact
interpolation the residual term ``Σ_k r_ik ∇²f_ik`` of ``H_i`` is dropped: the numbers are then
those of the Gauss–Newton per-sample Hessians, not of ``∇²ℓ_i``. The maximum residual is
reported and a RuntimeWarning is issued when it exceeds ``residual_tol``.

Building ``G``:

* ``"linear-layers"`` (models whose ``θ`` consists of whole ``nn.Linear`` layers, each called
  once per forward pass on ``(batch, features)`` inputs): for a layer ``z = Wa + b`` the row of
  ``J`` for ``(i, k)`` is ``(δ_ik a_iᵀ, δ_ik)`` with ``δ_ik = ∂f_ik/∂z_i``, so
  ``G = Σ_layers (a_i·a_j + 1)(δ_ik·δ_jk')``: ``O((nK)² Σ widths)`` instead of ``O((nK)² p)``.
  ``a`` and ``δ`` (one backward pass per output, batched) are recorded with hooks that add a
  zero shift to each layer's output; the model is not changed.
* ``"jacobian"`` (any model): per-sample Jacobians (``vmap(jacrev)``) in sample chunks, and
  ``G_ab = J_a J_bᵀ`` block by block, keeping at most two chunks of ``J`` in memory (chunks
  are recomputed rather than stored when ``J`` is large): ``O((nK)² p)`` work.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch.func import jacrev, vmap

from valleys._checks import integer, relative_tolerance
from valleys._layer_factors import (
    Layers,
    check_factored_gradient,
    forward_with_shifts,
    try_factored,
)
from valleys._records import record_to_dict
from valleys.errors import ArgumentValueError
from valleys.linalg import eigsh
from valleys.objective import Objective
from valleys.operators import LambdaOperator, LinearOperator
from valleys.stability._common import check_batch_size, check_objective
from valleys.stability.criteria import sgd_noise_factor

__all__ = ["GramStabilityResult", "gram_matrix", "gram_sharpness_nonuniformity"]

METHODS = ("auto", "linear-layers", "jacobian")
FORMS = ("auto", "factored", "dense")
# Elements of the temporaries (Jacobian chunks, blocks of G products) kept near this size.
_BLOCK_ELEMENTS = 2**25
# Per layer (Ã, Δ): inputs with a column of ones for the bias, (n, in[+1]), and δ, (n, K, out).
Factors = list[tuple[torch.Tensor, torch.Tensor]]


# -- building G ---------------------------------------------------------------------------------
def _layer_factors(obj: Objective, theta: torch.Tensor, layers: Layers, X: torch.Tensor,
                   Y: torch.Tensor) -> tuple[Factors, torch.Tensor]:
    """Per-layer ``(ã, δ)`` of one chunk: ``ã`` (b, in[+1]), ``δ`` (b, K, out); and outputs."""
    out, inputs, shifts = forward_with_shifts(obj, theta, layers, X)
    b, K = out.shape
    cot = torch.eye(K, dtype=out.dtype, device=out.device)[:, None, :].expand(K, b, K)
    grads = torch.autograd.grad(out, shifts, cot.contiguous(), is_grads_batched=True,
                                allow_unused=True)
    factors = []
    for m, a, g in zip(layers, inputs, grads, strict=True):
        if m.bias is not None:
            a = torch.cat([a, torch.ones(b, 1, dtype=a.dtype, device=a.device)], dim=1)
        delta = torch.zeros(K, b, m.out_features, dtype=out.dtype, device=out.device) \
            if g is None else g
        factors.append((a, delta.permute(1, 0, 2)))
    return factors, out.detach()


def _linear_layer_factors(obj: Objective, theta: torch.Tensor, layers: Layers,
                          dtype: torch.dtype) -> tuple[Factors, torch.Tensor]:
    """Per-layer ``(Ã, Δ)`` of all samples, ``Ã`` (n, in[+1]) and ``Δ`` (n, K, out); residuals."""
    X, _ = next(iter(obj.chunks()))
    check_factored_gradient(obj, theta, layers, X, lambda out: out.sum())  # J rows = (δ aᵀ, δ)
    per_layer: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = [([], []) for _ in layers]
    residuals = []
    for X, Y in obj.chunks():
        factors, out = _layer_factors(obj, theta, layers, X, Y)
        residuals.append(out - Y)
        for (acc_a, acc_d), (a, d) in zip(per_layer, factors, strict=True):
            acc_a.append(a.to(dtype))
            acc_d.append(d.to(dtype))
    factors = [(torch.cat(acc_a), torch.cat(acc_d)) for acc_a, acc_d in per_layer]
    return factors, torch.cat(residuals)


def _dense_from_factors(factors: Factors, n: int, K: int, dtype: torch.dtype,
                        device: torch.device) -> torch.Tensor:
    """``G = Σ_layers (ÃÃᵀ ⊗ 1_{K×K}) ∘ (ΔΔᵀ)``, assembled in row blocks."""
    N = n * K
    G = torch.zeros(N, N, dtype=dtype, device=device)
    rows = max(1, _BLOCK_ELEMENTS // N // K)  # samples per row block
    for a, d in factors:
        flat = d.reshape(N, -1)
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            aa = a[start:stop] @ a.T  # (r, n)
            dd = (flat[start * K : stop * K] @ flat.T).view(stop - start, K, n, K)
            G[start * K : stop * K] += (dd * aa[:, None, :, None]).view(-1, N)
    return G


class _FactoredGram:
    r"""``G = JJᵀ`` applied through the layer factors, never formed.

    For one layer, row ``(i, k)`` of ``J`` is ``δ_ik ⊗ ã_i``, so ``(Gu)_ik = Σ_layers
    δ_ik · (Mᵀ ã_i)`` with ``M = Σ_j ã_j ⊗ (Σ_k' u_jk' δ_jk')`` (the layer's gradient for
    weights ``u``): ``O(n·K·out + n·in·out)`` per layer instead of ``O((nK)²)``.
    """

    def __init__(self, factors: Factors, n: int, K: int) -> None:
        self.factors, self.n, self.K = factors, n, K

    def matvec(self, u: torch.Tensor) -> torch.Tensor:
        u = u.view(self.n, self.K)
        out = torch.zeros_like(u)
        for a, d in self.factors:
            v = torch.einsum("nk,nko->no", u, d)
            y = a @ (a.T @ v)
            out += torch.einsum("nko,no->nk", d, y)
        return out.reshape(-1)

    def diagonal_blocks(self) -> torch.Tensor:
        """``G_ii = Σ_layers ‖ã_i‖² Δ_i Δ_iᵀ``, shape (n, K, K)."""
        # θ holds at least one layer, so the sum is a tensor (never the start value 0).
        return cast(torch.Tensor, sum(
            (a * a).sum(1)[:, None, None] * torch.bmm(d, d.transpose(1, 2))
            for a, d in self.factors
        ))


class _DenseGram:
    def __init__(self, G: torch.Tensor, n: int, K: int) -> None:
        self.G, self.n, self.K = G, n, K

    def matvec(self, u: torch.Tensor) -> torch.Tensor:
        return self.G @ u

    def diagonal_blocks(self) -> torch.Tensor:
        n, K = self.n, self.K
        return self.G.view(n, K, n, K).diagonal(dim1=0, dim2=2).permute(2, 0, 1)


def _gram_jacobian(obj: Objective, theta: torch.Tensor,
                   dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    def single(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return obj.forward(t, x.unsqueeze(0))[0]

    jac = vmap(jacrev(single), in_dims=(None, 0))
    theta = theta.detach()
    with torch.no_grad():
        outs = [(obj.forward(theta, X) - Y) for X, Y in obj.chunks()]
    residuals = torch.cat(outs)
    K = residuals.shape[1]
    N = obj.n * K
    X_all = torch.cat([X for X, _ in obj.chunks()])
    step = max(1, _BLOCK_ELEMENTS // (K * obj.dim))
    starts = list(range(0, obj.n, step))

    def block(s: int) -> torch.Tensor:
        return jac(theta, X_all[s : s + step]).reshape(-1, obj.dim).to(dtype)

    G = torch.empty(N, N, dtype=dtype, device=obj.device)
    store = len(starts) * step * K * obj.dim <= 4 * _BLOCK_ELEMENTS
    cache = [block(s) for s in starts] if store else None
    for ia, sa in enumerate(starts):
        Ja = cache[ia] if cache else block(sa)
        for ib in range(ia, len(starts)):
            sb = starts[ib]
            Jb = Ja if ib == ia else (cache[ib] if cache else block(sb))
            part = Ja @ Jb.T
            G[sa * K : sa * K + part.shape[0], sb * K : sb * K + part.shape[1]] = part
            G[sb * K : sb * K + part.shape[1], sa * K : sa * K + part.shape[0]] = part.T
    return G, residuals


def _build_gram(obj: Objective, theta: torch.Tensor | None, method: str, dtype: torch.dtype | None,
                form: str) -> tuple[_DenseGram | _FactoredGram, torch.Tensor, str, str]:
    """``(gram, residuals, method, form)`` with ``gram`` a ``_DenseGram`` or ``_FactoredGram``."""
    obj = check_objective(obj, "the Gram path")
    obj.require_single_process("the Gram path")
    if obj.loss_name != "mse":
        raise ArgumentValueError(
            f"the Gram path needs the square loss ('mse'), whose per-sample Hessians at "
            f"interpolation are J_iᵀJ_i; this objective uses {obj.loss_name!r}. Use "
            "valleys.stability.stability_analysis instead."
        )
    if method not in METHODS:
        raise ArgumentValueError(f"method must be one of {METHODS}, got {method!r}")
    if form not in FORMS:
        raise ArgumentValueError(f"form must be one of {FORMS}, got {form!r}")
    if form == "factored" and method == "jacobian":
        raise ArgumentValueError(
            "form='factored' needs method='linear-layers' (the layer factors); the jacobian "
            "method always forms G densely"
        )
    theta = obj.resolve_theta(theta)
    dtype = dtype or obj.dtype
    if method in ("auto", "linear-layers"):
        built, reason = try_factored(
            obj, lambda layers: _linear_layer_factors(obj, theta, layers, dtype))
        if reason is None:
            if built is None:  # try_factored returns a result exactly when reason is None
                raise RuntimeError("the linear-layers factors are missing")
            factors, r = built
            n, K = r.shape
            if form == "dense":
                G = _dense_from_factors(factors, n, K, dtype, obj.device)
                return _DenseGram(G, n, K), r, "linear-layers", "dense"
            return _FactoredGram(factors, n, K), r, "linear-layers", "factored"
        if method == "linear-layers" or form == "factored":
            raise ArgumentValueError(f"method='linear-layers' does not apply: {reason}")
    G, r = _gram_jacobian(obj, theta, dtype)
    n, K = r.shape
    return _DenseGram(G, n, K), r, "jacobian", "dense"


def gram_matrix(
    obj: Objective,
    theta: torch.Tensor | None = None,
    *,
    method: str = "auto",
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The Gram matrix ``G = JJᵀ`` of per-sample output Jacobians, and the residuals.

    Returns ``(G, residuals, method)``: ``G`` of shape ``(nK, nK)`` with row ``(i, k)`` at
    ``iK + k``, ``residuals = f(X; θ) − Y`` of shape ``(n, K)``, and the method used
    (``"linear-layers"`` or ``"jacobian"``; see the module docstring). For ``"auto"`` the
    linear-layers path is used when ``θ`` consists of whole ``nn.Linear`` layers.
    ``dtype``: of ``G`` (default the objective's).
    """
    gram, r, used, _ = _build_gram(obj, theta, method, dtype, "dense")
    if not isinstance(gram, _DenseGram):  # form="dense" always builds one
        raise RuntimeError("the dense Gram path returned a factored Gram matrix")
    return gram.G, r, used


# -- eigenvalues ----------------------------------------------------------------------------------
def _top_dense(op: LinearOperator, tol: float, seed: int | None) -> tuple[float, int, bool]:
    if op.size <= 2:
        return float(torch.linalg.eigvalsh(op.to_dense())[-1]), op.size, True
    result = eigsh(op, k=1, which="largest", tol=tol, seed=seed)
    return float(result.values[0]), int(result.matvecs), bool(result.converged)


def _top_in_gram(B: LinearOperator, G: LinearOperator, tol: float, seed: int | None,
                 max_steps: int) -> tuple[float, int, bool]:
    """``λ_max(G^½ B G^½)`` as the top eigenvalue of ``W = BG``, which is self-adjoint in
    ``⟨x, y⟩_G = xᵀGy``: :func:`~valleys.linalg.eigsh` with ``inner=G`` (one product with
    ``B`` and one with ``G`` per step). Its ``G``-norm residual equals ``‖Σv − λv‖`` for
    ``v = Jᵀu``. Returns the value, the products with ``G`` (one per product with ``B``) and
    whether it converged."""
    before = B.num_matvecs + G.num_matvecs
    if G.size <= 2:  # eigsh in an inner product needs k < size: the dense 2 x 2 problem
        values, vectors = torch.linalg.eigh(G.to_dense())
        half = (vectors * values.clamp(min=0).sqrt()) @ vectors.T
        value = float(torch.linalg.eigvalsh(half @ B.to_dense() @ half)[-1])
        return value, B.num_matvecs + G.num_matvecs - before, True
    result = eigsh(B @ G, k=1, which="largest", tol=tol, seed=seed, inner=G,
                   max_matvecs=max_steps)
    return (float(result.values[0]), B.num_matvecs + G.num_matvecs - before,
            bool(result.converged))


@dataclass(frozen=True)
class GramStabilityResult:
    """Sharpness, non-uniformity (and ``max_stable_lr``) from the Gram matrix ``G = JJᵀ``.

    Attributes:
        sharpness: ``λ_max(G)/n`` (``= λ_max(H)`` at an interpolating square-loss minimum).
        nonuniformity: ``sqrt(λ_max(Σ))`` with ``Σ = Jᵀ(D − G/n)J/n``.
        max_stable_lr: ``2/λ_max((1 − c)G/n + cD)`` for ``batch_size`` (``None`` without one);
            exact for nonsingular ``G``, otherwise a lower bound of the threshold.
        batch_size, noise_factor: ``B`` and ``c`` (``None`` without a batch size).
        n, num_outputs, gram_size: ``n``, ``K``, ``nK``.
        method: how ``G`` was built (``"linear-layers"`` or ``"jacobian"``).
        form: ``"factored"`` (``G`` applied through the layer factors, never formed) or
            ``"dense"``.
        max_residual: ``max |f(x_i)_k − y_ik|``; the numbers are exact only when it is 0.
        interpolating: ``max_residual <= residual_tol``.
        gram_seconds, eig_seconds: time to build ``G`` (or its factors) and to find the
            eigenvalues.
        matvecs: products with ``G`` in the eigenvalue solvers.
        converged: all eigenvalue solvers met ``tol``. tol, seed, wall_time: as usual.
    """

    sharpness: float
    nonuniformity: float
    max_stable_lr: float | None
    batch_size: int | None
    noise_factor: float | None
    n: int
    num_outputs: int
    gram_size: int
    method: str
    form: str
    max_residual: float
    interpolating: bool
    residual_tol: float
    gram_seconds: float
    eig_seconds: float
    matvecs: int
    converged: bool
    tol: float
    seed: int | None
    wall_time: float

    def to_dict(self) -> dict[str, Any]:
        return record_to_dict(self)


def gram_sharpness_nonuniformity(
    obj: Objective,
    *,
    batch_size: int | None = None,
    theta: torch.Tensor | None = None,
    method: str = "auto",
    form: str = "auto",
    dtype: torch.dtype | None = None,
    tol: float = 1e-8,
    seed: int | None = 0,
    residual_tol: float = 1e-6,
    max_steps: int = 500,
) -> GramStabilityResult:
    r"""Sharpness and non-uniformity at an interpolating square-loss minimum, from ``G = JJᵀ``.

    ``λ_max(H) = λ_max(G)/n`` and ``λ_max(Σ) = λ_max(G^{1/2}(D − G/n)G^{1/2})/n`` (module
    docstring), plus, given ``batch_size``, the threshold ``η*`` of the sufficient condition of
    Wu, Ma & E (2018), ``2/λ_max((1 − c)G/n + cD)``. Exact only at interpolation
    (``max_residual = 0``); otherwise these are Gauss–Newton values and a RuntimeWarning says so.

    Args:
        obj: an objective with ``loss="mse"``.
        batch_size: ``1 <= B <= n`` to also compute ``max_stable_lr``.
        theta: parameters (default: the model's current ones).
        method: ``"auto"``, ``"linear-layers"`` or ``"jacobian"`` (how ``G`` is built).
        form: ``"auto"``, ``"factored"`` or ``"dense"``. Factored (the default for the
            linear-layers method) applies ``G`` through per-layer factors in
            ``O(n·K·out + n·in·out)`` per product, never forming the ``nK × nK`` matrix;
            dense forms it (always so for the jacobian method).
        dtype: dtype of ``G`` and of the eigenvalue solvers (default the objective's; pass
            ``torch.float64`` for a float32 model to reduce round-off, at twice the memory).
        tol: relative residual tolerance of the eigenvalue solvers.
        seed: their seed.
        residual_tol: the largest ``|f − y|`` still called interpolating.
        max_steps: budget of products with ``W = BG`` for the non-uniformity (restarted
            Lanczos in the ``G`` inner product, verification products included).
    """
    t0 = time.perf_counter()
    obj = check_objective(obj, "gram_sharpness_nonuniformity")
    tol = relative_tolerance(tol)
    max_steps = integer(max_steps, "max_steps", minimum=1)
    c = None
    if batch_size is not None:
        batch_size = check_batch_size(batch_size, obj.n)
        c = sgd_noise_factor(obj.n, batch_size)
    gram, residuals, used, used_form = _build_gram(obj, theta, method, dtype, form)
    t1 = time.perf_counter()
    n, K = residuals.shape
    N = n * K
    max_residual = float(residuals.abs().max())
    interpolating = max_residual <= residual_tol
    if not interpolating:
        warnings.warn(
            f"max residual |f − y| = {max_residual:.3g} > residual_tol = {residual_tol:g}: θ is "
            "not an interpolating minimum, so the Gram-path numbers are Gauss–Newton values "
            "(per-sample Hessians without their residual terms), not those of ∇²ℓ_i",
            RuntimeWarning,
            stacklevel=2,
        )
    blocks = gram.diagonal_blocks()  # (n, K, K)
    dtype, device = blocks.dtype, blocks.device

    def apply_D(x: torch.Tensor) -> torch.Tensor:
        return torch.bmm(blocks, x.view(n, K, 1)).reshape(N)

    G_op = LambdaOperator(gram.matvec, N, dtype, device)
    lam_G, matvecs, converged = _top_dense(G_op, tol, seed)

    # Σ: the top eigenvalue of W = BG with B = (D − G/n)/n, in the G inner product; G = 0
    # (tr G = 0 for a PSD G) leaves nothing to iterate on and Σ = 0.
    lam_S = 0.0
    if float(blocks.diagonal(dim1=1, dim2=2).sum()) > 0:
        B_op = LambdaOperator(lambda x: (apply_D(x) - gram.matvec(x) / n) / n, N, dtype, device)
        lam_S, used_s, ok = _top_in_gram(B_op, G_op, tol, seed, max_steps)
        matvecs += used_s
        converged = converged and ok
    lr = None
    if c is not None:
        op = LambdaOperator(
            lambda x: (1.0 - c) * gram.matvec(x) / n + c * apply_D(x), N, dtype, device
        )
        lam_K, used_k, ok = _top_dense(op, tol, seed)
        matvecs += used_k
        converged = converged and ok
        lr = 2.0 / lam_K if lam_K > 0 else math.inf
    t2 = time.perf_counter()
    return GramStabilityResult(
        sharpness=lam_G / n,
        nonuniformity=math.sqrt(max(lam_S, 0.0)),
        max_stable_lr=lr,
        batch_size=batch_size,
        noise_factor=c,
        n=n,
        num_outputs=K,
        gram_size=N,
        method=used,
        form=used_form,
        max_residual=max_residual,
        interpolating=interpolating,
        residual_tol=residual_tol,
        gram_seconds=t1 - t0,
        eig_seconds=t2 - t1,
        matvecs=matvecs,
        converged=converged,
        tol=tol,
        seed=seed,
        wall_time=t2 - t0,
    )
