"""Block warm starts of sharpness tracking (the default): ``block_eigsh`` against dense
eigensolvers, ``SharpnessTracker(warm_block=m)`` against a dense torch.func Hessian, and the
saving of warm blocks over cold starts on a slowly drifting sequence of matrices."""

from __future__ import annotations

import pytest
import torch
from conftest import make_data, make_model, sym_matrix
from torch.func import hessian as dense_hessian

import valleys
from valleys.linalg import eigsh
from valleys.linalg._lanczos import block_eigsh
from valleys.operators._base import DenseOperator
from valleys.train import SharpnessTracker, train

SEPARATED = torch.cat(
    [torch.tensor([10, 8, 6.5, 5, 4, 3.2, 2.5, 2, 1.6, 1.3]), torch.linspace(-1, 1, 290)]
)
CLUSTERED = torch.cat([1 - 1e-3 * torch.arange(12.0), torch.linspace(0, 0.9, 288)])
INDEFINITE = torch.linspace(-3, 2, 300)


def reference(A: torch.Tensor, k: int, which: str) -> torch.Tensor:
    ev = torch.linalg.eigvalsh(A.double())
    if which == "largest":
        return ev.flip(0)[:k]
    if which == "smallest":
        return ev[:k]
    return ev[torch.argsort(ev.abs(), descending=True, stable=True)][:k]


@pytest.mark.parametrize(
    ("spectrum", "which", "k", "m"),
    [
        (SEPARATED, "largest", 1, 1),
        (SEPARATED, "largest", 3, 5),
        (CLUSTERED, "largest", 1, 4),
        (CLUSTERED, "largest", 5, 5),
        (INDEFINITE, "magnitude", 3, 4),
        (INDEFINITE, "smallest", 2, 1),
    ],
)
def test_block_eigsh_matches_dense_eigensolver(spectrum, which, k, m):
    A = sym_matrix(spectrum, seed=3)
    V0 = torch.randn(A.shape[0], m, generator=torch.Generator().manual_seed(1),
                     dtype=torch.float64)
    tol = 1e-10
    res, ritz = block_eigsh(DenseOperator(A), V0, k=k, which=which, tol=tol)
    assert res.converged and res.method == "block-davidson"
    ref = reference(A, k, which)
    assert torch.allclose(res.values, ref, rtol=1e-9, atol=0), (res.values, ref)
    V = res.vectors
    assert torch.allclose(V.T @ V, torch.eye(k, dtype=torch.float64), atol=1e-10)
    true_res = torch.linalg.vector_norm(A @ V - V * res.values, dim=0)
    # Reported residuals are the true ones; the error bounds contain the true errors and meet
    # the criterion of eigsh (accuracy="value").
    assert torch.allclose(res.residuals, true_res, rtol=0, atol=1e-12 * ref.abs().max())
    assert bool(((res.values - ref).abs() <= res.error_bounds + 1e-14 * ref.abs().max()).all())
    assert bool((res.error_bounds <= tol * res.values.abs() * (1 + 1e-6)).all())
    assert torch.equal(ritz[:, :k], V) and ritz.shape[1] <= 20 + m


def test_exact_top_block_is_accepted_with_m_products_and_interior_block_is_not_kept():
    A = sym_matrix(SEPARATED, seed=4)
    evals, evecs = torch.linalg.eigh(A)
    res, _ = block_eigsh(DenseOperator(A), evecs[:, -3:], k=2, tol=1e-8)
    assert res.matvecs == 3 and res.converged
    assert torch.allclose(res.values, evals.flip(0)[:2], rtol=1e-12)
    # A slightly perturbed block of interior eigenvectors (the tracker's warm noise after a
    # crossing): the residuals are not small, so the basis grows and the true top is found.
    V0 = evecs[:, 100:103] + 1e-2 * torch.randn(300, 3, generator=torch.Generator().manual_seed(0),
                                                 dtype=torch.float64)
    res, _ = block_eigsh(DenseOperator(A), V0, k=2, tol=1e-8)
    assert res.converged and res.matvecs > 3
    assert torch.allclose(res.values, evals.flip(0)[:2], rtol=1e-7)


def test_float32_and_dependent_columns():
    A = sym_matrix(CLUSTERED, seed=5, dtype=torch.float32)
    v = torch.randn(300, 1, generator=torch.Generator().manual_seed(2))
    V0 = torch.cat([v, 2 * v, v], dim=1)  # rank one: the copies are dropped
    res, _ = block_eigsh(DenseOperator(A), V0, k=2, tol=1e-4)
    assert res.converged and res.values.dtype == torch.float32
    assert torch.allclose(res.values.double(), reference(A, 2, "largest"), rtol=1e-4)


def test_block_eigsh_bad_inputs():
    op = DenseOperator(sym_matrix(SEPARATED, seed=0))
    V0 = torch.randn(300, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="shape"):
        block_eigsh(op, V0[:, 0], k=1)
    with pytest.raises(ValueError, match="shape"):
        block_eigsh(op, V0[:10], k=1)
    with pytest.raises(TypeError, match="dtype"):
        block_eigsh(op, V0.float(), k=1)
    with pytest.raises(ValueError, match="finite"):
        block_eigsh(op, V0 * float("nan"), k=1)
    with pytest.raises(ValueError, match="k must"):
        block_eigsh(op, V0, k=0)
    with pytest.raises(ValueError, match="which"):
        block_eigsh(op, V0, k=1, which="top")
    with pytest.raises(ValueError, match="tol"):
        block_eigsh(op, V0, k=1, tol=0)


def drifting_sequence(steps: int = 15, p: int = 300, rate: float = 0.03):
    """``A_t = U_t diag(λ) U_tᵀ`` with ``U_t = exp(t·rate·K) U_0`` (``K`` skew): the
    eigenvectors rotate slowly; the top 12 eigenvalues cluster within 11 % as at the edge of
    stability."""
    g = torch.Generator().manual_seed(0)
    spectrum = torch.cat([1 - 0.01 * torch.arange(12.0, dtype=torch.float64),
                          torch.linspace(-0.2, 0.5, p - 12, dtype=torch.float64)])
    U, _ = torch.linalg.qr(torch.randn(p, p, generator=g, dtype=torch.float64))
    K = torch.randn(p, p, generator=g, dtype=torch.float64)
    R = torch.linalg.matrix_exp(rate * (K - K.T) / (2 * p**0.5))
    for _ in range(steps):
        A = (U * spectrum) @ U.T
        yield (A + A.T) / 2
        U = R @ U


def test_warm_block_uses_fewer_matvecs_than_cold_on_a_drifting_sequence():
    tol, k, m = 1e-6, 1, 3
    cold = warm = block_total = 0
    previous = block = None
    for t, A in enumerate(drifting_sequence()):
        op = DenseOperator(A)
        top = torch.linalg.eigvalsh(A).flip(0)[:k]
        cold += eigsh(op, k=k, tol=tol, seed=t).matvecs
        w = eigsh(op, k=k, tol=tol, v0=previous, seed=t)
        previous, warm = w.vectors[:, 0], warm + w.matvecs
        V0 = torch.randn(300, 1, generator=torch.Generator().manual_seed(t),
                         dtype=torch.float64) if block is None else block
        res, ritz = block_eigsh(op, V0, k=k, tol=tol, seed=t)
        block, block_total = ritz[:, :m], block_total + res.matvecs
        assert res.converged and torch.allclose(res.values, top, rtol=1e-9)
    # Measured (seeded, deterministic): cold 657, single-vector warm 417, block 326.
    assert block_total < 0.6 * cold, (block_total, cold)
    assert block_total < warm, (block_total, warm)


# -- the tracker option ---------------------------------------------------------------------
def tiny_problem(n: int = 13):
    X, Y = make_data("mse", n=n)
    model = make_model("mlp-tanh")  # p = 57, float64
    return valleys.Objective(model, "mse", (X, Y)), X, Y


class Snapshots:
    def __init__(self) -> None:
        self.thetas: dict[int, torch.Tensor] = {}

    def __call__(self, step, theta):
        self.thetas[step] = theta.clone()


@pytest.mark.parametrize(("k", "m", "ncv"), [(1, 3, None), (3, 6, None), (1, 3, 5), (2, 5, 6)])
def test_tracker_with_warm_block_matches_the_dense_hessian(k, m, ncv):
    """Also with a small basis (``ncv``), which restarts often to save memory."""
    obj, X, Y = tiny_problem()
    tracker = SharpnessTracker(obj, k=k, every=2, tol=1e-10, warm_block=m, ncv=ncv)
    snaps = Snapshots()
    result = train(obj, lr=0.2, steps=20, record_every=2, callbacks=[tracker, snaps])
    for row in result.records:
        theta = snaps.thetas[row["step"]]
        H = dense_hessian(lambda t: obj.chunk_losses(t, X, Y).mean())(theta)
        top = torch.linalg.eigvalsh(H).flip(0)[:k]
        got = torch.tensor([row[f"eig_{i + 1}"] for i in range(k)], dtype=torch.float64)
        assert torch.allclose(got, top, rtol=1e-7, atol=1e-9), (got, top)
        assert row["converged"] and row["sharpness"] == row["eig_1"]
    assert [h["warm"] for h in tracker.history] == [False] + [True] * 10


def test_tracker_warm_block_saves_matvecs_and_is_reproducible():
    obj, _, _ = tiny_problem()

    def run(**kwargs):
        tracker = SharpnessTracker(obj, k=1, every=1, tol=1e-6, **kwargs)
        frame = train(obj, lr=0.1, steps=30, record_every=1,
                      callbacks=[tracker]).to_dataframe()
        return tracker, frame

    block, frame = run(warm_block=3)
    cold, cold_frame = run(warm_start=False)
    assert torch.allclose(torch.tensor(frame["sharpness"].values),
                          torch.tensor(cold_frame["sharpness"].values), rtol=1e-5)
    # Measured: 371 (block), 567 (cold), 436 (single-vector warm) on this p = 57 toy.
    assert block.total_matvecs < 0.8 * cold.total_matvecs, (block.total_matvecs,
                                                            cold.total_matvecs)
    again, frame2 = run(warm_block=3)
    assert again.total_matvecs == block.total_matvecs
    assert frame2["sharpness"].tolist() == frame["sharpness"].tolist()
    default, _ = run()  # the default warm start is this block of 2k + 1 = 3 vectors
    assert default.warm_block == 3 and default.history == block.history
    _, single_frame = run(warm_block=1)
    assert torch.allclose(torch.tensor(single_frame["sharpness"].values),
                          torch.tensor(cold_frame["sharpness"].values), rtol=1e-5)


def test_default_warm_block_is_2k_plus_1_below_the_dimension():
    obj, _, _ = tiny_problem()
    assert SharpnessTracker(obj, k=1).warm_block == 3
    assert SharpnessTracker(obj, k=4).warm_block == 9
    assert SharpnessTracker(obj, k=obj.dim - 1).warm_block == obj.dim - 1
    assert SharpnessTracker(obj, k=2, warm_start=False).warm_block is None


def test_tracker_warm_block_validation():
    obj, _, _ = tiny_problem()
    for bad in (0, 1.5, True, obj.dim):
        with pytest.raises(ValueError, match="warm_block"):
            SharpnessTracker(obj, k=1, warm_block=bad)
    with pytest.raises(ValueError, match="warm_block"):
        SharpnessTracker(obj, k=3, warm_block=2)
    with pytest.raises(ValueError, match="warm_start"):
        SharpnessTracker(obj, k=1, warm_block=2, warm_start=False)
    for bad in (2, 3.0, True):
        with pytest.raises(ValueError, match="ncv"):
            SharpnessTracker(obj, k=1, ncv=bad)


def test_preconditioned_tracker_with_warm_block_matches_the_dense_symmetric_form():
    from valleys.train import optimizer_preconditioner

    obj, X, Y = tiny_problem()
    tracker = SharpnessTracker(obj, k=2, every=3, tol=1e-10, preconditioned=True, warm_block=3)

    class Keep:
        def setup(self, context):
            self.context, self.seen = context, {}

        def __call__(self, step, theta):
            P = optimizer_preconditioner(self.context.optimizer, self.context.param)
            self.seen[step] = (theta.clone(), None if P is None else P.clone())

    keep = Keep()
    result = train(obj, optimizer="adam", lr=0.01, steps=12, record_every=3,
                   callbacks=[keep, tracker])
    for record in result.records[1:]:
        theta, P = keep.seen[record["step"]]
        H = dense_hessian(lambda t: obj.chunk_losses(t, X, Y).mean())(theta)
        d = P.rsqrt()
        top = torch.linalg.eigvalsh(d[:, None] * H * d[None, :]).flip(0)[:2]
        got = torch.tensor([record["precond_eig_1"], record["precond_eig_2"]],
                           dtype=torch.float64)
        assert torch.allclose(got, top, rtol=1e-7), (got, top)
