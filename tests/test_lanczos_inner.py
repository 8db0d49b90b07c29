"""eigsh in an inner product ⟨x, y⟩_M = xᵀMy against dense generalized eigensolvers.

The operators are ``A = BM`` with ``B`` symmetric, self-adjoint in ``⟨·,·⟩_M`` (``MA = MBM``).
For a positive definite ``M`` the eigenvalues are those of the pencil ``(MBM, M)``
(``scipy.linalg.eigh(MBM, M)``); for a singular PSD ``M`` (a Gram matrix ``XXᵀ`` with more rows
than columns) those of ``M^½ B M^½`` on ``range(M)``, i.e. of ``Λ^½ UᵀBU Λ^½`` with
``M = UΛUᵀ`` restricted to the nonzero ``Λ``.
"""

from __future__ import annotations

import pytest
import scipy.linalg
import torch
from conftest import sym_matrix

from valleys.linalg import EigshResult, eigsh
from valleys.operators._base import DenseOperator, LambdaOperator

F64 = torch.float64


def ordered(ev: torch.Tensor, k: int, which: str) -> torch.Tensor:
    ev = ev.sort().values
    if which == "largest":
        return ev.flip(0)[:k]
    if which == "smallest":
        return ev[:k]
    return ev[torch.argsort(ev.abs(), descending=True, stable=True)][:k]


def quotient_eigenvalues(B: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of ``BM`` on ``range(M)`` (``M`` PSD, possibly singular), float64."""
    lam, U = torch.linalg.eigh(M.double())
    keep = lam > 1e-10 * lam.max()
    half = U[:, keep] * lam[keep].sqrt()
    return torch.linalg.eigvalsh(half.T @ B.double() @ half)


def check_inner(res: EigshResult, A: torch.Tensor, M: torch.Tensor, truth: torch.Tensor,
                tol: float, slack: float = 1e-12) -> None:
    """Values within their bounds of the truth, bounds/residuals within ``tol``, the reported
    residuals the M-norms of ``Av − θv``, and M-orthonormal vectors."""
    k = truth.numel()
    scale = float(truth.abs().max())
    assert res.converged and res.message == ""
    vals, bounds = res.values.double(), res.error_bounds.double()
    assert torch.all((vals - truth).abs() <= bounds + slack * scale), (vals, truth, bounds)
    assert torch.all(res.residuals.double() <= tol * truth.abs() + slack * scale)
    V = res.vectors.double()
    Md, Ad = M.double(), A.double()
    torch.testing.assert_close(V.T @ Md @ V, torch.eye(k, dtype=F64), atol=1e-8, rtol=0)
    R = Ad @ V - V * vals
    true_res = (R * (Md @ R)).sum(0).clamp(min=0).sqrt()
    torch.testing.assert_close(res.residuals.double(), true_res, atol=1e-9 * scale, rtol=1e-6)


def _pd(p: int, seed: int) -> torch.Tensor:
    """A positive definite M with condition number 1e3."""
    return sym_matrix(torch.logspace(-2, 1, p, dtype=F64), seed=seed)


@pytest.mark.parametrize(
    ("which", "k", "accuracy"),
    [("largest", 1, "residual"), ("largest", 4, "value"), ("smallest", 4, "residual"),
     ("smallest", 1, "value"), ("magnitude", 4, "residual"), ("magnitude", 1, "value")],
)
def test_positive_definite_inner_matches_scipy_generalized_eigh(which, k, accuracy):
    p = 150
    B = sym_matrix(torch.linspace(-2, 3, p) ** 3, seed=1)
    M = _pd(p, seed=2)
    truth = torch.as_tensor(scipy.linalg.eigh((M @ B @ M).numpy(), M.numpy(), eigvals_only=True))
    truth = ordered(truth, k, which)
    Mop = DenseOperator(M)
    res = eigsh(DenseOperator(B) @ Mop, k, which, tol=1e-8, accuracy=accuracy, inner=Mop)
    check_inner(res, B @ M, M, truth, 1e-8 if accuracy == "residual" else 1.0)
    # Any M-self-adjoint operator works, not only a product with the very inner operator.
    general = DenseOperator(B @ M, symmetric=False)
    res2 = eigsh(general, k, which, tol=1e-8, accuracy=accuracy, inner=DenseOperator(M))
    check_inner(res2, B @ M, M, truth, 1e-8 if accuracy == "residual" else 1.0)


@pytest.mark.parametrize("which", ["largest", "magnitude"])
@pytest.mark.parametrize(("p", "rank"), [(120, 40), (60, 59), (30, 3)])
def test_singular_gram_inner_product(which, p, rank):
    """M = XXᵀ of rank < p, as the Gram matrix JJᵀ when nK > p."""
    g = torch.Generator().manual_seed(p + rank)
    X = torch.randn(p, rank, generator=g, dtype=F64)
    M = X @ X.T
    B = sym_matrix(torch.linspace(-1, 2, p), seed=3)
    k = min(3, rank)
    truth = ordered(quotient_eigenvalues(B, M), k, which)
    Mop = DenseOperator(M)
    res = eigsh(DenseOperator(B) @ Mop, k, which, tol=1e-7, inner=Mop)
    check_inner(res, B @ M, M, truth, 1e-7, slack=1e-10)
    assert res.error_bounds.max() < 1e-6 * truth.abs().max()


def test_exactly_singular_inner_exhausts_its_range_and_refuses_too_large_k():
    """A diagonal M with exact zeros: the Krylov space reaches range(M) (rank 5) exactly."""
    p = 12
    d = torch.zeros(p, dtype=F64)
    d[:5] = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.5], dtype=F64)
    M = torch.diag(d)
    B = sym_matrix(torch.linspace(-1, 1, p), seed=4)
    truth = quotient_eigenvalues(B, M)
    assert truth.numel() == 5
    Mop = DenseOperator(M)
    res = eigsh(DenseOperator(B) @ Mop, 2, "largest", tol=1e-10, inner=Mop)
    check_inner(res, B @ M, M, ordered(truth, 2, "largest"), 1e-10)
    with pytest.raises(ValueError, match="rank 5 < k = 6"):
        eigsh(DenseOperator(B) @ Mop, 6, "largest", tol=1e-10, inner=Mop)


def test_identity_inner_product_gives_the_euclidean_eigenpairs():
    A = sym_matrix(torch.linspace(-1, 4, 200), seed=5)
    ident = LambdaOperator(lambda v: v.clone(), 200, F64)
    res = eigsh(DenseOperator(A), 3, tol=1e-9, inner=ident)
    plain = eigsh(DenseOperator(A), 3, tol=1e-9)
    torch.testing.assert_close(res.values, plain.values, atol=1e-10, rtol=0)
    check_inner(res, A, torch.eye(200, dtype=F64), ordered(torch.linalg.eigvalsh(A), 3,
                                                           "largest"), 1e-9)


def test_products_with_m_are_reused_for_a_product_operator():
    """``B @ M`` costs one product with B and one with M per Lanczos step."""
    p = 100
    B = DenseOperator(sym_matrix(torch.linspace(0, 1, p) ** 4, seed=6))
    M = DenseOperator(_pd(p, seed=7))
    res = eigsh(B @ M, 1, tol=1e-8, inner=M)
    assert res.converged
    # Steps apply B to the kept M q; fresh products (verification, noise) go through B @ M.
    # M is applied once per step (the M-norm of the new vector) plus a few times per
    # verification; without the reuse it would be twice per step.
    assert B.num_matvecs == res.matvecs >= 10
    assert M.num_matvecs < 1.5 * res.matvecs


def test_float32_bounds_contain_the_float64_truth():
    p = 120
    B = sym_matrix(torch.linspace(-1, 3, p), seed=8)
    M = _pd(p, seed=9)
    truth = ordered(torch.as_tensor(scipy.linalg.eigh((M @ B @ M).numpy(), M.numpy(),
                                                      eigvals_only=True)), 2, "largest")
    Mop = DenseOperator(M.float())
    res = eigsh(DenseOperator(B.float()) @ Mop, 2, tol=1e-4, inner=Mop)
    assert res.converged and res.values.dtype == torch.float32
    assert torch.all((res.values.double() - truth).abs() <= res.error_bounds.double())


def test_bad_inner_products_are_refused():
    A = DenseOperator(sym_matrix(torch.linspace(0, 1, 10), seed=0))
    with pytest.raises(TypeError, match="inner must be a valleys LinearOperator"):
        eigsh(A, inner=torch.eye(10, dtype=F64))
    with pytest.raises(ValueError, match="symmetric positive semidefinite"):
        eigsh(A, inner=DenseOperator(torch.triu(torch.ones(10, 10, dtype=F64)), symmetric=False))
    with pytest.raises(ValueError, match="act on the operator's vectors"):
        eigsh(A, inner=DenseOperator(torch.eye(11, dtype=F64)))
    with pytest.raises(ValueError, match="act on the operator's vectors"):
        eigsh(A, inner=DenseOperator(torch.eye(10)))
    with pytest.raises(ValueError, match=r"1 <= k < p = 10"):
        eigsh(A, 10, inner=DenseOperator(torch.eye(10, dtype=F64)))
    with pytest.raises(ValueError, match="zero M-norm"):
        eigsh(A, inner=DenseOperator(torch.zeros(10, 10, dtype=F64)))
    # Without an inner product an asymmetric operator is still refused.
    with pytest.raises(ValueError, match="symmetric"):
        eigsh(DenseOperator(torch.triu(torch.ones(10, 10, dtype=F64)), symmetric=False))
