"""Low-rank matrix sensing and completion with the Burer–Monteiro factorisation ``X = UUᵀ``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from valleys._checks import integer, positive_real, seed_value
from valleys.errors import ArgumentTypeError, ArgumentValueError
from valleys.objective import Objective

__all__ = [
    "BurerMonteiroResult",
    "MatrixSensing",
    "bm_gradient",
    "matrix_completion_problem",
    "matrix_sensing_problem",
    "numerical_rank",
]


def numerical_rank(M: torch.Tensor, rtol: float = 1e-2) -> int:
    """Number of singular values of ``M`` above ``rtol · σ_max(M)`` (0 for a zero matrix)."""
    rtol = positive_real(rtol, "rtol")
    s = torch.linalg.svdvals(M)
    if float(s[0]) == 0:
        return 0
    return int((s > rtol * s[0]).sum())


def bm_gradient(A: torch.Tensor, y: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    r"""Gradient of ``f(U) = (1/2m) Σ_i (⟨A_i, UUᵀ⟩ − y_i)²``:
    ``∇f(U) = (1/m) Σ_i r_i (A_i + A_iᵀ) U``, ``r_i = ⟨A_i, UUᵀ⟩ − y_i``."""
    _check(A, y, U)
    return _gradient(A.reshape(A.shape[0], -1), y, U)


def _gradient(A_flat: torch.Tensor, y: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """:func:`bm_gradient` with the ``A_i`` flattened to rows (one matmul each way)."""
    d = U.shape[0]
    r = A_flat @ (U @ U.T).reshape(-1) - y
    S = (A_flat.T @ r).reshape(d, d) / A_flat.shape[0]
    return (S + S.T) @ U


def _check(A: torch.Tensor, y: torch.Tensor, U: torch.Tensor) -> None:
    if not all(isinstance(t, torch.Tensor) for t in (A, y, U)):
        raise ArgumentTypeError("A, y and U must be torch tensors")
    if A.ndim != 3 or A.shape[1] != A.shape[2] or y.shape != (A.shape[0],):
        raise ArgumentValueError(f"A must be (m, d, d) and y (m,), got {tuple(A.shape)} and "
                                 f"{tuple(y.shape)}")
    if U.ndim != 2 or U.shape[0] != A.shape[1]:
        raise ArgumentValueError(f"U must be (d, k) with d = {A.shape[1]}, got {tuple(U.shape)}")


class _Factor(nn.Module):
    """``U`` as the parameter; the forward pass maps stacked ``A_i`` to ``⟨A_i, UUᵀ⟩``."""

    def __init__(self, U: torch.Tensor) -> None:
        super().__init__()
        self.U = nn.Parameter(U.clone())

    def forward(self, A: torch.Tensor) -> torch.Tensor:
        return torch.einsum("mij,ij->m", A, self.U @ self.U.T)[:, None]


@dataclass(frozen=True, eq=False)
class BurerMonteiroResult:
    """Outcome of :meth:`MatrixSensing.gradient_descent`.

    Attributes:
        U: the final factor; ``X`` is ``UUᵀ``.
        losses: ``f(U_t)`` every ``record_every`` steps (first and last included).
        relative_error: ``‖UUᵀ − X*‖_F / ‖X*‖_F``.
        nuclear_norm: ``‖UUᵀ‖_*``.
        rank: :func:`numerical_rank` of ``UUᵀ`` (``rtol = 1e-2``).
    """

    U: torch.Tensor
    losses: list[float]
    relative_error: float
    nuclear_norm: float
    rank: int

    @property
    def X(self) -> torch.Tensor:
        return self.U @ self.U.T


@dataclass(frozen=True, eq=False)
class MatrixSensing:
    """``y_i = ⟨A_i, X*⟩`` with symmetric Gaussian ``A_i`` and a PSD rank-``r`` ``X*``.

    Attributes:
        A: ``(m, d, d)`` symmetric sensing matrices.
        y: ``(m,)`` measurements.
        X_star: ``(d, d)`` the target, ``‖X*‖_op = 1``.
        rank: ``r``.
    """

    A: torch.Tensor
    y: torch.Tensor
    X_star: torch.Tensor
    rank: int

    def objective(self, U: torch.Tensor) -> Objective:
        r"""``f(U) = (1/m) Σ_i ½ (⟨A_i, UUᵀ⟩ − y_i)²`` as an :class:`~valleys.Objective` with
        parameter ``U`` (its gradient is :func:`bm_gradient`)."""
        _check(self.A, self.y, U)
        return Objective(_Factor(U.to(self.A.dtype)), "mse", (self.A, self.y[:, None]))

    def gradient_descent(self, init_scale: float, *, lr: float, steps: int,
                         width: int | None = None, record_every: int = 100
                         ) -> BurerMonteiroResult:
        r"""GD on ``f(U)`` from the small initialisation ``U₀ = α [I_d]_{:, :k}`` (``k = width``,
        default ``d``: the over-parametrised ``U ∈ R^{d×d}`` of Gunasekar et al. 2017 and Li,
        Ma & Zhang 2018): ``U ← U − η ∇f(U)``."""
        alpha = positive_real(init_scale, "init_scale")
        lr = positive_real(lr, "lr")
        steps = integer(steps, "steps", minimum=0)
        record_every = integer(record_every, "record_every", minimum=1)
        d = self.A.shape[1]
        width = d if width is None else integer(width, "width", minimum=1)
        if width > d:
            raise ArgumentValueError(f"width {width} exceeds the dimension d = {d}")
        U = alpha * torch.eye(d, width, dtype=self.A.dtype, device=self.A.device)
        m = self.A.shape[0]
        A_flat = self.A.reshape(m, -1)

        def loss(U: torch.Tensor) -> float:
            r = A_flat @ (U @ U.T).reshape(-1) - self.y
            return float(r.pow(2).sum() / (2 * m))

        losses = [loss(U)]
        for t in range(1, steps + 1):
            U = U - lr * _gradient(A_flat, self.y, U)
            if not torch.isfinite(U).all():
                break
            if t % record_every == 0 or t == steps:
                losses.append(loss(U))
        X = U @ U.T
        finite = bool(torch.isfinite(X).all())
        error = torch.linalg.matrix_norm(X - self.X_star) / torch.linalg.matrix_norm(self.X_star)
        return BurerMonteiroResult(
            U, losses, float(error), float(torch.linalg.matrix_norm(X, ord="nuc"))
            if finite else float("nan"), numerical_rank(X) if finite else -1)


def matrix_sensing_problem(d: int, rank: int, m: int, *, seed: int = 0,
                           dtype: torch.dtype = torch.float64,
                           device: str | torch.device = "cpu") -> MatrixSensing:
    """Symmetric Gaussian sensing ``A_i = (G_i + G_iᵀ)/2`` (``G_i`` standard Gaussian) of the
    PSD rank-``rank`` matrix ``X* = Q diag(λ) Qᵀ``, ``Q`` a random orthonormal ``d × rank``
    frame and ``λ`` evenly spaced from 1 down to 0.5 (``‖X*‖_op = 1``, a well-separated rank)."""
    d = integer(d, "d", minimum=1)
    rank = integer(rank, "rank", minimum=1)
    m = integer(m, "m", minimum=1, hint="the number of measurements must be positive")
    if rank > d:
        raise ArgumentValueError(f"rank {rank} exceeds the dimension d = {d}")
    g = torch.Generator(device="cpu").manual_seed(seed_value(seed))
    G = torch.randn(m, d, d, generator=g, dtype=torch.float64)
    A = (G + G.transpose(1, 2)) / 2
    Q, _ = torch.linalg.qr(torch.randn(d, rank, generator=g, dtype=torch.float64))
    lam = torch.linspace(1.0, 0.5, rank, dtype=torch.float64)
    X = (Q * lam) @ Q.T
    y = torch.einsum("mij,ij->m", A, X)
    return MatrixSensing(A.to(device, dtype), y.to(device, dtype), X.to(device, dtype), rank)



def matrix_completion_problem(d: int, rank: int, m: int, *, seed: int = 0,
                              dtype: torch.dtype = torch.float64,
                              device: str | torch.device = "cpu") -> MatrixSensing:
    """Matrix completion as sensing: ``m`` entries ``(i, j)``, ``i ≤ j``, of the same PSD
    rank-``rank`` target as :func:`matrix_sensing_problem`, drawn uniformly without replacement,
    observed through ``A_k = (e_i e_jᵀ + e_j e_iᵀ)/2`` (so ``⟨A_k, X⟩ = X_ij`` for symmetric
    ``X``). Burer–Monteiro GD then fits the observed entries only (Gunasekar et al. 2017 study
    completion from small initialization); recovery needs enough entries of an incoherent
    target (a random frame is incoherent with high probability)."""
    d = integer(d, "d", minimum=1)
    rank = integer(rank, "rank", minimum=1)
    pairs = d * (d + 1) // 2
    m = integer(m, "m", minimum=1, hint="the number of observed entries must be positive")
    if m > pairs:
        raise ArgumentValueError(
            f"m = {m} observed entries exceed the {pairs} distinct entries (i <= j) of a "
            f"symmetric {d} x {d} matrix")
    target = matrix_sensing_problem(d, rank, 1, seed=seed).X_star  # same law of targets
    g = torch.Generator(device="cpu").manual_seed(seed_value(seed) + 1)
    rows, cols = torch.triu_indices(d, d)
    chosen = torch.randperm(pairs, generator=g)[:m]
    i, j = rows[chosen], cols[chosen]
    A = torch.zeros(m, d, d, dtype=torch.float64)
    k = torch.arange(m)
    A[k, i, j] += 0.5
    A[k, j, i] += 0.5
    y = target[i, j]
    return MatrixSensing(A.to(device, dtype), y.to(device, dtype), target.to(device, dtype),
                         rank)
