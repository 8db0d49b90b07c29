"""Every curvature operator against a dense float64 oracle and against closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import MODEL_KINDS, DenseOracle, input_dim, make_data, make_model
from torch import nn

import valleys
from valleys.operators import DenseOperator, LambdaOperator, LowRankOperator

RTOL = 1e-8


def assert_close(A: torch.Tensor, B: torch.Tensor, rtol: float = RTOL) -> None:
    scale = max(B.abs().max().item(), 1e-12)
    err = (A - B).abs().max().item() / scale
    assert err < rtol, f"relative error {err:.2e} >= {rtol:.0e}"


CASES = [(kind, loss) for kind in MODEL_KINDS for loss in ("mse", "ce")]


@pytest.mark.parametrize(("kind", "loss"), CASES)
@pytest.mark.parametrize("chunk_size", [None, 5])
def test_operators_match_dense_oracle(kind, loss, chunk_size):
    model = make_model(kind)
    X, Y = make_data(loss, d=input_dim(kind))
    obj = valleys.Objective(model, loss, (X, Y), chunk_size=chunk_size)
    oracle = DenseOracle(obj, X, Y)
    H = oracle.hessian()
    Hi = oracle.sample_hessians()
    G = oracle.sample_gradients()
    g = G.mean(0)

    assert_close(valleys.hessian(obj).to_dense(), H)
    assert_close(valleys.hessian(obj, backend="forward-over-reverse").to_dense(), H)
    assert_close(valleys.ggn(obj).to_dense(), oracle.ggn())
    fisher = G.T @ G / obj.n
    assert_close(valleys.empirical_fisher(obj).to_dense(), fisher)
    assert_close(valleys.gradient_covariance(obj).to_dense(), fisher - torch.outer(g, g))
    sigma = (Hi @ Hi).mean(0) - H @ H
    assert_close(valleys.hessian_variance(obj).to_dense(), sigma)
    # The variance identity the stability theory rests on: Σ = mean (H_i − H)².
    assert_close(sigma, ((Hi - H) @ (Hi - H)).mean(0))


def test_matvec_and_matmat_agree_and_count():
    X, Y = make_data("ce")
    obj = valleys.Objective(make_model("mlp-tanh"), "ce", (X, Y))
    H = valleys.hessian(obj)
    V = torch.randn(obj.dim, 4, dtype=torch.float64)
    block = H.matmat(V)
    cols = torch.stack([H.matvec(V[:, j]) for j in range(4)], dim=1)
    assert_close(block, cols, 1e-12)
    assert H.num_matvecs == 8
    assert_close(H @ V[:, 0], cols[:, 0], 1e-12)


def test_operator_algebra_and_scipy_export():
    A = torch.randn(6, 6, dtype=torch.float64)
    A = A + A.T
    B = torch.randn(6, 6, dtype=torch.float64)
    B = B @ B.T
    opA, opB = DenseOperator(A), DenseOperator(B)
    assert_close((opA + 2.0 * opB - opB / 4).to_dense(), A + 1.75 * B, 1e-14)
    assert_close((-opA).to_dense(), -A, 1e-14)
    assert_close((opA @ opB).to_dense(), A @ B, 1e-14)
    assert not (opA @ opB).symmetric
    x = torch.randn(6, dtype=torch.float64).numpy()
    assert abs(opA.to_scipy() @ x - A.numpy() @ x).max() < 1e-12
    lam = LambdaOperator(lambda v: A @ v, 6, torch.float64)
    assert_close(lam.to_dense(), A, 1e-14)


def test_linear_least_squares_closed_form():
    g = torch.Generator().manual_seed(3)
    n, d = 40, 5
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(n, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(d, 1, bias=False).double()
    obj = valleys.Objective(model, "mse", (X, y))
    H = X.T @ X / n
    assert_close(valleys.hessian(obj).to_dense(), H, 1e-12)
    assert_close(valleys.ggn(obj).to_dense(), H, 1e-12)
    outer = torch.einsum("ni,nj->nij", X, X)
    sigma = (outer @ outer).mean(0) - H @ H
    assert_close(valleys.hessian_variance(obj).to_dense(), sigma, 1e-12)
    r = (X @ model.weight.detach().T - y).squeeze(1)
    fisher = torch.einsum("n,ni,nj->ij", r**2, X, X) / n
    assert_close(valleys.empirical_fisher(obj).to_dense(), fisher, 1e-12)
    top = torch.linalg.eigvalsh(H)[-1].item()
    assert valleys.sharpness(obj, tol=1e-10) == pytest.approx(top, rel=1e-9)
    nonuni = torch.linalg.eigvalsh(sigma)[-1].sqrt().item()
    assert valleys.nonuniformity(obj, tol=1e-10) == pytest.approx(nonuni, rel=1e-8)


def test_logistic_regression_closed_form_with_callable_loss():
    g = torch.Generator().manual_seed(4)
    n, d = 50, 4
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = (torch.rand(n, generator=g) < 0.5).double() * 2 - 1  # labels ±1

    def logistic(outputs, targets):
        return torch.nn.functional.softplus(-targets * outputs.squeeze(1))

    model = nn.Linear(d, 1, bias=False).double()
    obj = valleys.Objective(model, logistic, (X, y))
    z = X @ model.weight.detach().squeeze(0)
    s = torch.sigmoid(z)
    H = torch.einsum("n,ni,nj->ij", s * (1 - s), X, X) / n
    assert_close(valleys.hessian(obj).to_dense(), H, 1e-12)
    assert_close(valleys.ggn(obj).to_dense(), H, 1e-12)  # linear model: GGN = Hessian


def test_softmax_regression_closed_form():
    g = torch.Generator().manual_seed(5)
    n, d, k = 30, 3, 4
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, k, (n,), generator=g)
    model = nn.Linear(d, k, bias=False).double()
    obj = valleys.Objective(model, "ce", (X, y))
    p = (X @ model.weight.detach().T).softmax(-1)
    lam = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    # Flat layout of W (k × d) is row-major: index (class, feature).
    H = torch.einsum("nab,ni,nj->aibj", lam, X, X).reshape(k * d, k * d) / n
    assert_close(valleys.hessian(obj).to_dense(), H, 1e-12)


def test_iterable_batches_weight_every_sample_equally():
    X, Y = make_data("mse", n=17)
    model = make_model("mlp-tanh")
    whole = valleys.Objective(model, "mse", (X, Y))
    batches = [(X[:8], Y[:8]), (X[8:15], Y[8:15]), (X[15:], Y[15:])]  # 8 + 7 + 2
    split = valleys.Objective(model, "mse", batches)
    assert split.n == 17
    assert_close(valleys.hessian(split).to_dense(), valleys.hessian(whole).to_dense(), 1e-12)
    assert_close(
        valleys.hessian_variance(split).to_dense(), valleys.hessian_variance(whole).to_dense()
    )
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, Y), batch_size=5)
    via_loader = valleys.Objective(model, "mse", loader)
    assert_close(valleys.ggn(via_loader).to_dense(), valleys.ggn(whole).to_dense(), 1e-12)


def test_operator_is_a_snapshot_and_leaves_the_model_alone():
    X, Y = make_data("ce")
    model = make_model("mlp-tanh")
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    obj = valleys.Objective(model, "ce", (X, Y))
    H = valleys.hessian(obj)
    dense = H.to_dense()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert_close(H.to_dense(), dense, 1e-14)  # taken at θ when created
    assert model.training  # never switched to eval behind the user's back
    with torch.no_grad():
        for p, b in zip(model.parameters(), before, strict=True):
            p.copy_(b)


def test_parameter_subset_is_a_principal_submatrix():
    X, Y = make_data("ce")
    model = make_model("mlp-tanh")
    full = valleys.Objective(model, "ce", (X, Y))
    sub = valleys.Objective(model, "ce", (X, Y), params=["2.*"])
    H = valleys.hessian(full).to_dense()
    last = sum(full.numels[:2])
    assert sub.dim == full.dim - last
    assert_close(valleys.hessian(sub).to_dense(), H[last:, last:], 1e-12)


def test_float32_operators_agree_with_float64():
    X, Y = make_data("ce")
    model = make_model("mlp-tanh")
    H64 = valleys.hessian(valleys.Objective(model, "ce", (X, Y))).to_dense()
    model32 = make_model("mlp-tanh").float()
    H32 = valleys.hessian(valleys.Objective(model32, "ce", (X.float(), Y))).to_dense()
    assert H32.dtype == torch.float32
    assert_close(H32.double(), H64, 1e-5)


def test_operator_input_validation():
    X, Y = make_data("ce")
    obj = valleys.Objective(make_model("mlp-tanh"), "ce", (X, Y))
    H = valleys.hessian(obj)
    with pytest.raises(ValueError, match="shape"):
        H.matvec(torch.zeros(obj.dim + 1, dtype=torch.float64))
    with pytest.raises(TypeError, match="float64"):
        H.matvec(torch.zeros(obj.dim, dtype=torch.float32))
    with pytest.raises(TypeError, match="torch tensors"):
        H.matvec([0.0] * obj.dim)
    with pytest.raises(TypeError, match="Objective"):
        valleys.hessian("not an objective")
    with pytest.raises(ValueError, match="backend"):
        valleys.hessian(obj, backend="finite-differences")
    with pytest.raises(ValueError, match="shape"):
        valleys.hessian(obj, theta=torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="sample_block"):
        valleys.hessian_variance(obj, sample_block=0)
    with pytest.raises(ValueError, match="square"):
        DenseOperator(torch.zeros(2, 3))
    other = DenseOperator(torch.eye(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="cannot combine"):
        H + other


def test_operator_algebra_never_writes_into_inputs():
    identity = LambdaOperator(lambda v: v, 3, torch.float64)
    v = torch.ones(3, dtype=torch.float64)
    assert torch.equal((2.0 * identity).matvec(v), 2 * torch.ones(3, dtype=torch.float64))
    assert torch.equal((identity + identity).matvec(v), 2 * torch.ones(3, dtype=torch.float64))
    assert torch.equal(v, torch.ones(3, dtype=torch.float64))


def test_wide_products_split_into_vector_blocks_give_the_same_answer():
    X, Y = make_data("ce")
    obj = valleys.Objective(make_model("mlp-tanh"), "ce", (X, Y))
    for op in (valleys.hessian(obj), valleys.ggn(obj), valleys.empirical_fisher(obj)):
        V = torch.randn(obj.dim, 5, dtype=torch.float64)
        whole = op.matmat(V)
        op.vector_block = 2  # 5 vectors -> blocks of 2, 2, 1
        assert_close(op.matmat(V), whole, 1e-13)


def test_low_rank_operator_matches_dense():
    g = torch.Generator().manual_seed(7)
    p, r = 9, 3
    U = torch.randn(p, r, generator=g, dtype=torch.float64)
    V = torch.randn(p, r, generator=g, dtype=torch.float64)
    s = torch.tensor([2.0, -0.5, 3.0], dtype=torch.float64)
    X = torch.randn(p, 4, generator=g, dtype=torch.float64)
    sym = LowRankOperator(U, s)
    dense = U @ torch.diag(s) @ U.T
    assert sym.symmetric and sym.rank == r and sym.shape == (p, p)
    assert_close(sym.to_dense(), dense, 1e-14)
    assert_close(sym.matmat(X), dense @ X, 1e-14)
    assert_close(sym.matvec(X[:, 0]), dense @ X[:, 0], 1e-14)
    general = LowRankOperator(U, V=V)  # U Vᵀ: s defaults to ones
    assert not general.symmetric
    assert_close(general.to_dense(), U @ V.T, 1e-14)
    assert_close(general.matmat(X), U @ V.T @ X, 1e-14)
    zero = LowRankOperator(torch.zeros(p, 0, dtype=torch.float64))
    assert torch.equal(zero.to_dense(), torch.zeros(p, p, dtype=torch.float64))


def test_low_rank_deflation_removes_the_top_eigenpairs():
    from conftest import sym_matrix

    lam = torch.tensor([5.0, 4.0, 2.0, 1.0, 0.5, -1.0], dtype=torch.float64)
    A = sym_matrix(lam, seed=2)
    top = valleys.eigsh(DenseOperator(A), k=2, tol=1e-12)
    deflated = DenseOperator(A) - LowRankOperator(top.vectors, top.values)
    assert deflated.symmetric
    Q = top.vectors
    assert_close(deflated.to_dense(), A - Q @ torch.diag(top.values) @ Q.T, 1e-13)
    eig = torch.linalg.eigvalsh(deflated.to_dense())
    assert eig[-1].item() == pytest.approx(2.0, rel=1e-10)  # 5 and 4 are gone (now 0)
    assert valleys.eigsh(deflated, k=1, tol=1e-10).values[0].item() == pytest.approx(2.0, 1e-8)
    # A low-rank preconditioner σI + U diag(s) Uᵀ composes with the rest of the algebra.
    eye = DenseOperator(torch.eye(6, dtype=torch.float64))
    precond = 0.5 * eye + LowRankOperator(Q, torch.ones(2, dtype=torch.float64))
    assert_close(precond.to_dense(), 0.5 * torch.eye(6, dtype=torch.float64) + Q @ Q.T, 1e-14)


def test_low_rank_operator_validation():
    U = torch.zeros(4, 2, dtype=torch.float64)
    with pytest.raises(TypeError, match="2-D"):
        LowRankOperator(torch.zeros(4, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating"):
        LowRankOperator(torch.zeros(4, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"s of shape \(2,\)"):
        LowRankOperator(U, torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"V of shape \(4, 2\)"):
        LowRankOperator(U, V=torch.zeros(4, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="dtype"):
        LowRankOperator(U, torch.ones(2, dtype=torch.float32))
    with pytest.raises(ValueError, match="non-finite"):
        LowRankOperator(U, torch.tensor([1.0, math.nan], dtype=torch.float64))


def test_square_of_a_symmetric_operator_is_symmetric():
    A = DenseOperator(torch.eye(3, dtype=torch.float64) * 2)
    B = DenseOperator(torch.ones(3, 3, dtype=torch.float64))
    assert (A @ A).symmetric
    assert not (A @ B).symmetric
    assert not (DenseOperator(torch.triu(torch.ones(3, 3, dtype=torch.float64))) @ B).symmetric
