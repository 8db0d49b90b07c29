r"""Exact mean-square stability of linearized SGD, for small problems.

Linearized at an interpolating minimum, SGD is ``x_{t+1} = (I − ηH_ξ) x_t`` with
``H_ξ = (1/B) Σ_{i∈ξ} H_i`` for a uniformly random batch ``ξ`` of ``B`` of the ``n`` samples drawn
without replacement, independently at each step. The second moment ``S_t = E[x_t x_tᵀ]``
evolves by the linear map

.. math::  T(S) = E_ξ[(I − ηH_ξ)\, S\, (I − ηH_ξ)]
               = S − η(HS + SH) + η^2\Big[(1 − c)\, HSH + \frac{c}{n} \sum_i H_i S H_i\Big],

with ``c = (n − B)/(B(n − 1))``. The last form uses the pair probabilities of sampling without
replacement, ``P(i ∈ ξ) = B/n`` and ``P(i, j ∈ ξ) = B(B − 1)/(n(n − 1))`` for ``i ≠ j``:
``E[H_ξ S H_ξ] = (1/B²)[(B/n) Σ_i H_i S H_i + B(B−1)/(n(n−1)) Σ_{i≠j} H_i S H_j]``, and
``Σ_{i≠j} H_i S H_j = n² HSH − Σ_i H_i S H_i``. So ``E‖x_t‖² = tr T^t(x_0x_0ᵀ)`` and linearized
SGD is mean-square stable iff the spectral radius ``ρ(T) <= 1`` (Mulayoff & Michaeli, 2023,
analyse this exact threshold).

``T`` maps PSD matrices to PSD matrices and is self-adjoint for the Frobenius inner product
(``⟨N, T(S)⟩ = E tr(N (I−ηH_ξ) S (I−ηH_ξ)) = ⟨T(N), S⟩``), so by the Perron–Frobenius theorem
for cones ``ρ(T)`` is its largest eigenvalue, attained at a PSD matrix. Since ``S ⪯ λ_max(S) I``
and ``T`` is monotone on the PSD order, ``λ_max(T(S)) <= λ_max(S) λ_max(T(I))``: hence

.. math::  ρ(T) \le λ_{max}(T(I)) = λ_{max}\big((I − ηH)^2 + η^2 cΣ\big),

the sufficient condition of Wu, Ma & E (2018), with equality in one dimension or when the
``H_i`` commute; conversely ``ρ(T) >= ⟨vvᵀ, T(vvᵀ)⟩ = E[(1 − η vᵀH_ξv)²]`` for every unit ``v``,
and ``ρ(T) >= tr T(I) / p``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.func import grad, jacfwd, jacrev, vmap

from valleys._checks import relative_tolerance
from valleys._records import record_to_dict
from valleys.errors import ArgumentTypeError, ArgumentValueError
from valleys.linalg import eigsh
from valleys.objective import Objective
from valleys.operators import LambdaOperator
from valleys.operators._algorithm_check import (
    CHECK_SAMPLES,
    first_agreeing,
    first_samples,
    hessian_vector_product,
    probe_vectors,
    sample_gradient_graph,
    warn_rejected,
)
from valleys.stability._common import (
    check_batch_size,
    check_lr,
    default_tol,
)
from valleys.stability.criteria import sgd_noise_factor

__all__ = [
    "ExactMeanSquareResult",
    "exact_mean_square",
    "per_sample_hessians",
    "second_moment_map",
]

MAX_DIM = 200
# Up to this p the p² × p² matrix of T is formed and diagonalized densely.
_DENSE_DIM = 32
# Dense per-sample Hessian algorithms in the order tried; the last is the reference itself.
HESSIAN_ALGORITHMS = ("forward-over-reverse", "reverse-over-reverse", "double-backward")
# Samples per vectorized block: keeps the (block, p, p) output near this many elements.
_BLOCK_ELEMENTS = 2**24


def _check_dim(p: int, max_dim: int) -> None:
    if p > max_dim:
        raise ArgumentValueError(
            f"the exact mean-square test builds n dense {p}x{p} per-sample Hessians and works "
            f"on {p}x{p} matrices of the second moment; p = {p} exceeds max_dim = {max_dim}. "
            "Use valleys.stability.stability_analysis (the sufficient condition, operator-based) "
            "for large models, or restrict θ with Objective(..., params=[...])."
        )


def per_sample_hessians(
    obj: Objective, theta: torch.Tensor | None = None, *, max_dim: int = MAX_DIM
) -> torch.Tensor:
    """Dense per-sample Hessians ``H_i = ∇²ℓ_i(θ)``, shape ``(n, p, p)``, for small ``p``.

    Vectorized over the samples of a block with ``vmap``, by the first of
    ``HESSIAN_ALGORITHMS`` that agrees with double backward on the first ``CHECK_SAMPLES``
    samples (``H_i w`` and ``H_iᵀ w`` for two fixed random ``w``, relative mismatch at most
    ``sqrt(eps)``): ``jacfwd`` of ``grad`` (forward over reverse), ``jacrev`` of ``grad``, and
    last plain double backward row by row, one sample at a time (``p`` backward passes per
    sample). ``torch.func.hessian`` (``jacfwd∘jacrev``) is not used: on torch 2.13 it is wrong
    for ``nn.LayerNorm`` models, since the inner ``jacrev`` runs functorch's batching rule of the
    layer-norm backward, which treats the saved statistics as constants, and the outer ``jacfwd``
    differentiates it. A rejected algorithm triggers a ``RuntimeWarning`` naming the cause.

    Raises:
        ValueError: if ``p > max_dim`` (default 200).
    """
    if not isinstance(obj, Objective):
        raise ArgumentTypeError(
            f"per_sample_hessians needs a valleys.Objective, got {type(obj).__name__}")
    obj.require_single_process("per_sample_hessians")
    _check_dim(obj.dim, max_dim)
    theta = obj.resolve_theta(theta).detach()
    algorithm = _choose_hessian_algorithm(obj, theta)
    if algorithm == "double-backward":
        return torch.cat([_hessians_by_rows(obj, theta, X, Y) for X, Y in obj.chunks()])
    per_sample = _vectorized_hessians(obj)[algorithm]
    step = max(1, _BLOCK_ELEMENTS // obj.dim**2)
    return torch.cat([
        per_sample(theta, X[start : start + step], Y[start : start + step])
        for X, Y in obj.chunks()
        for start in range(0, X.shape[0], step)
    ])


def _vectorized_hessians(obj: Objective) -> dict[str, Callable[..., torch.Tensor]]:
    gradient = grad(obj.sample_loss)
    return {
        "forward-over-reverse": vmap(jacfwd(gradient), in_dims=(None, 0, 0)),
        "reverse-over-reverse": vmap(jacrev(gradient), in_dims=(None, 0, 0)),
    }


def _hessians_by_rows(obj: Objective, theta: torch.Tensor, X: torch.Tensor,
                      Y: torch.Tensor) -> torch.Tensor:
    """``H_i`` row by row by double backward (``H_i e_j``), one sample at a time."""
    eye = torch.eye(obj.dim, dtype=theta.dtype, device=theta.device)
    out = []
    for x, y in zip(X, Y, strict=True):
        leaf, g = sample_gradient_graph(obj, theta, x, y)
        out.append(torch.stack([hessian_vector_product(leaf, g, e) for e in eye]))
    return torch.stack(out) if out else theta.new_zeros(0, obj.dim, obj.dim)


def _choose_hessian_algorithm(obj: Objective, theta: torch.Tensor) -> str:
    """The first of ``HESSIAN_ALGORITHMS`` that agrees with double backward on a few samples."""
    X, Y = first_samples(obj, CHECK_SAMPLES)
    if X is None:
        return HESSIAN_ALGORITHMS[0]
    W = probe_vectors(obj, 2)
    rows = []
    for x, y in zip(X, Y, strict=True):
        leaf, g = sample_gradient_graph(obj, theta, x, y)
        rows.append(torch.stack([hessian_vector_product(leaf, g, w) for w in W]))
    reference = torch.stack(rows)  # (samples, 2, p): H_i w, which also equals H_iᵀ w

    def candidate(name: str) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
        def run() -> tuple[torch.Tensor, torch.Tensor]:
            Hs = _vectorized_hessians(obj)[name](theta, X, Y)
            return Hs @ W.T, Hs.transpose(1, 2) @ W.T

        return run

    names = HESSIAN_ALGORITHMS[:-1]
    target = reference.transpose(1, 2)  # (samples, p, 2)
    chosen, rejected = first_agreeing(
        obj, [(name, candidate(name)) for name in names], (target, target), X.shape[0]
    )
    chosen = chosen or HESSIAN_ALGORITHMS[-1]
    if rejected:
        warn_rejected("per_sample_hessians: vectorized dense Hessians", rejected, chosen,
                      obj.model)
    return chosen


def _check_hessians(hessians: object, max_dim: int) -> torch.Tensor:
    if not isinstance(hessians, torch.Tensor) or hessians.ndim != 3:
        raise ArgumentTypeError(
            "expected a valleys.Objective or a tensor of per-sample Hessians of shape (n, p, p), "
            f"got {type(hessians).__name__} of shape {tuple(getattr(hessians, 'shape', ()))}"
        )
    n, p, q = hessians.shape
    if p != q or n < 1:
        raise ArgumentValueError(f"per-sample Hessians must have shape (n, p, p), got {(n, p, q)}")
    if not hessians.is_floating_point() or not torch.isfinite(hessians).all():
        raise ArgumentValueError("per-sample Hessians must be finite floating-point matrices")
    _check_dim(p, max_dim)
    scale = max(float(hessians.abs().max()), 1.0)
    if not torch.allclose(hessians, hessians.transpose(1, 2), atol=1e-6 * scale, rtol=0):
        raise ArgumentValueError("per-sample Hessians must be symmetric")
    return (hessians + hessians.transpose(1, 2)) / 2


def second_moment_map(
    hessians: torch.Tensor, lr: float, batch_size: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    r"""The map ``S ↦ E_ξ[(I − ηH_ξ) S (I − ηH_ξ)]`` on (batches of) ``p × p`` matrices.

    ``hessians`` has shape ``(n, p, p)``; the returned function accepts ``(p, p)`` or
    ``(k, p, p)`` tensors. ``E[x_{t+1}x_{t+1}ᵀ] = T(E[x_t x_tᵀ])`` for linearized SGD with
    batches of ``batch_size`` drawn without replacement (closed form in the module docstring).
    """
    Hs = _check_hessians(hessians, max_dim=10**9)
    lr = check_lr(lr)
    n = Hs.shape[0]
    c = sgd_noise_factor(n, check_batch_size(batch_size, n))
    H = Hs.mean(0)

    def apply(S: torch.Tensor) -> torch.Tensor:
        HS = H @ S
        out = S - lr * (HS + S @ H)
        quad = (1.0 - c) * (HS @ H)
        if c > 0:
            quad = quad + c * torch.einsum("nij,...jk,nkl->...il", Hs, S, Hs) / n
        return out + lr * lr * quad

    return apply


def _dense_matrix(Hs: torch.Tensor, lr: float, c: float) -> torch.Tensor:
    """``T`` as a ``p² × p²`` matrix on row-major ``vec`` (``vec(ASB) = (A ⊗ Bᵀ) vec S``)."""
    n, p, _ = Hs.shape
    H = Hs.mean(0)
    eye = torch.eye(p, dtype=Hs.dtype, device=Hs.device)
    T = torch.kron(eye, eye) - lr * (torch.kron(H, eye) + torch.kron(eye, H))
    quad = (1.0 - c) * torch.kron(H, H)
    if c > 0:
        quad = quad + c * torch.einsum("nij,nkl->ikjl", Hs, Hs).reshape(p * p, p * p) / n
    return T + lr * lr * quad


@dataclass(frozen=True, eq=False)
class ExactMeanSquareResult:
    """Exact mean-square stability of linearized SGD next to the sufficient condition.

    Attributes:
        spectral_radius: ``ρ(T)``, the asymptotic growth factor per step of ``E‖x_t‖²``.
        stable: ``spectral_radius <= 1 + tol``.
        sufficient_lambda_max: ``λ_max(T(I)) = λ_max{(I − ηH)² + η²cΣ}`` (Wu, Ma & E 2018);
            always ``>= spectral_radius``. sufficient_stable: ``sufficient_lambda_max <= 1 + tol``.
        gap: ``sufficient_lambda_max − spectral_radius`` (how loose the sufficient condition is).
        eigenmatrix: the ``p × p`` PSD matrix ``S`` with ``T(S) = ρ S`` (unit Frobenius norm,
            positive trace): the second-moment shape that grows fastest.
        lr, batch_size, n, dim, noise_factor: ``η``, ``B``, ``n``, ``p``, ``c``.
        method: ``"dense"`` (``p² × p²`` matrix) or ``"lanczos"`` (:func:`valleys.eigsh` on ``T``).
        matvecs: applications of ``T`` (``p²`` for dense). tol: tolerance. wall_time: seconds.
    """

    spectral_radius: float
    stable: bool
    sufficient_lambda_max: float
    sufficient_stable: bool
    gap: float
    eigenmatrix: torch.Tensor
    lr: float
    batch_size: int
    n: int
    dim: int
    noise_factor: float
    method: str
    matvecs: int
    tol: float
    wall_time: float

    def to_dict(self) -> dict[str, Any]:
        return record_to_dict(self, drop=("eigenmatrix",))


def exact_mean_square(
    source: Objective | torch.Tensor,
    lr: float,
    batch_size: int,
    *,
    theta: torch.Tensor | None = None,
    method: str = "auto",
    tol: float | None = None,
    seed: int | None = 0,
    max_dim: int = MAX_DIM,
) -> ExactMeanSquareResult:
    r"""Exact mean-square stability test of linearized SGD: the spectral radius of ``T``.

    ``T(S) = E_ξ[(I − ηH_ξ) S (I − ηH_ξ)]`` over batches of ``B`` drawn without replacement
    (closed form with pair probabilities; no enumeration of batches). Linearized SGD at the
    minimum is mean-square stable iff ``ρ(T) <= 1``; the sufficient condition of Wu, Ma & E
    (2018) is ``λ_max(T(I)) <= 1`` and ``ρ(T) <= λ_max(T(I))`` always (Mulayoff & Michaeli
    2023 study the exact threshold). Both are reported.

    Args:
        source: an :class:`~valleys.Objective` (per-sample Hessians are built densely with
            :func:`per_sample_hessians`) or a tensor of per-sample Hessians ``(n, p, p)``.
        lr: ``η > 0``. batch_size: ``1 <= B <= n``.
        theta: parameters for an objective (default: the model's current ones).
        method: ``"dense"`` (eigenvalues of the ``p² × p²`` matrix of ``T``), ``"lanczos"``
            (Lanczos on ``T`` as a symmetric operator on ``R^{p²}``, ``O(n p³)`` per product) or
            ``"auto"`` (dense for ``p <= 32``).
        tol: verdict slack and Lanczos tolerance (default ``1e-7`` float64, ``1e-4`` otherwise).
        seed: Lanczos seed.
        max_dim: refuse ``p`` above this (default 200).
    """
    t0 = time.perf_counter()
    if isinstance(source, Objective):
        Hs = per_sample_hessians(source, theta, max_dim=max_dim)
    else:
        Hs = _check_hessians(source, max_dim)
    lr = check_lr(lr)
    n, p, _ = Hs.shape
    batch_size = check_batch_size(batch_size, n)
    c = sgd_noise_factor(n, batch_size)
    tol = default_tol(Hs.dtype) if tol is None else relative_tolerance(tol)
    if method not in ("auto", "dense", "lanczos"):
        raise ArgumentValueError(f"method must be 'auto', 'dense' or 'lanczos', got {method!r}")
    if method == "auto":
        method = "dense" if p <= _DENSE_DIM else "lanczos"
    if p == 1:
        method = "dense"

    apply = second_moment_map(Hs, lr, batch_size)
    eye = torch.eye(p, dtype=Hs.dtype, device=Hs.device)
    sufficient = float(torch.linalg.eigvalsh(apply(eye))[-1])

    if method == "dense":
        values, vectors = torch.linalg.eigh(_dense_matrix(Hs, lr, c))
        rho = float(values.abs().max())
        vec = vectors[:, -1]
        matvecs = p * p
    else:

        def matvec(v: torch.Tensor) -> torch.Tensor:
            return apply(v.view(p, p)).reshape(-1)

        op = LambdaOperator(matvec, p * p, Hs.dtype, Hs.device, symmetric=True)
        # Start inside the PSD cone (the identity plus noise) for a good Perron vector overlap.
        gen = torch.Generator(device=Hs.device).manual_seed(0 if seed is None else int(seed))
        v0 = eye.reshape(-1) + 0.1 * torch.randn(p * p, generator=gen, dtype=Hs.dtype,
                                                  device=Hs.device) / p
        result = eigsh(op, k=1, which="largest", tol=tol, seed=seed, v0=v0)
        rho = float(result.values[0])
        vec = result.vectors[:, 0]
        matvecs = int(result.matvecs)
    S = vec.view(p, p)
    S = (S + S.T) / 2
    S = S * torch.sign(torch.trace(S)) / torch.linalg.matrix_norm(S).clamp(min=1e-300)
    return ExactMeanSquareResult(
        spectral_radius=rho,
        stable=rho <= 1.0 + tol,
        sufficient_lambda_max=sufficient,
        sufficient_stable=sufficient <= 1.0 + tol,
        gap=sufficient - rho,
        eigenmatrix=S,
        lr=lr,
        batch_size=batch_size,
        n=n,
        dim=p,
        noise_factor=c,
        method=method,
        matvecs=matvecs,
        tol=tol,
        wall_time=time.perf_counter() - t0,
    )
