"""Thick-restart Lanczos and power iteration against dense eigensolvers and ARPACK."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from conftest import sym_matrix

import valleys
from valleys.linalg import EigshResult, eigsh, power_iteration
from valleys.operators._base import DenseOperator, LambdaOperator


def reference(A: torch.Tensor, k: int, which: str) -> torch.Tensor:
    ev = torch.linalg.eigvalsh(A.double())
    if which == "largest":
        return ev.flip(0)[:k]
    if which == "smallest":
        return ev[:k]
    return ev[torch.argsort(ev.abs(), descending=True, stable=True)][:k]


def check(A: torch.Tensor, res: EigshResult, k: int, which: str, tol: float, slack: float):
    """Values within their error bounds of the truth, bounds within ``tol`` (``accuracy``),
    reported residuals equal to the recomputed ones, orthonormal vectors."""
    assert res.converged and res.message == ""
    p = A.shape[0]
    assert res.values.shape == res.residuals.shape == res.error_bounds.shape == (k,)
    assert res.vectors.shape == (p, k) and res.vectors.dtype == A.dtype
    scale = float(torch.linalg.matrix_norm(A.double(), ord=2))
    ref = reference(A, k, which)
    vals = res.values.double()
    bounds = res.error_bounds.double()
    assert torch.all((vals - ref).abs() <= bounds + slack * scale), (vals, ref, bounds)
    criterion = bounds if res.accuracy == "value" else res.residuals.double()
    floor = torch.finfo(A.dtype).eps ** 0.5 * scale  # tol is absolute below sqrt(eps) ‖A‖
    assert torch.all(criterion <= tol * ref.abs().clamp(min=floor) + slack * scale), criterion
    V = res.vectors.double()
    assert torch.allclose(V.T @ V, torch.eye(k, dtype=torch.float64), atol=1e3 * slack)
    true_res = torch.linalg.vector_norm(A.double() @ V - V * vals, dim=0)
    assert torch.allclose(res.residuals.double(), true_res, rtol=0, atol=slack * scale)


SEPARATED = torch.cat(
    [torch.tensor([10, 8, 6.5, 5, 4, 3.2, 2.5, 2, 1.6, 1.3]), torch.linspace(-1, 1, 390)]
)
CLUSTERED = torch.cat([1 - 1e-3 * torch.arange(12.0), torch.linspace(0, 0.9, 288)])
INDEFINITE = torch.linspace(-3, 2, 500)
NEGATIVE = -torch.linspace(1, 5, 300)
LOW_RANK = torch.cat([torch.arange(10, 0, -1.0) / 2, torch.zeros(490)])


@pytest.mark.parametrize(
    ("spectrum", "which", "k"),
    [
        (SEPARATED, "largest", 1),
        (SEPARATED, "largest", 5),
        (SEPARATED, "largest", 10),
        (SEPARATED, "magnitude", 5),
        (CLUSTERED, "largest", 5),
        (CLUSTERED, "largest", 10),
        (INDEFINITE, "smallest", 5),
        (INDEFINITE, "magnitude", 5),
        (INDEFINITE, "largest", 3),
        (NEGATIVE, "largest", 3),
        (NEGATIVE, "smallest", 3),
        (NEGATIVE, "magnitude", 1),
        (LOW_RANK, "largest", 10),
        (LOW_RANK, "magnitude", 3),
        (LOW_RANK, "smallest", 2),  # the repeated zero: found through the near-breakdown rule
    ],
)
def test_matches_dense_eigensolver(spectrum, which, k):
    A = sym_matrix(spectrum)
    res = eigsh(DenseOperator(A), k=k, which=which, tol=1e-6)
    check(A, res, k, which, tol=1e-6, slack=1e-9)
    assert res.matvecs <= 1000 and res.method == "lanczos" and res.which == which


@pytest.mark.parametrize("which", ["largest", "smallest", "magnitude"])
def test_tiny_operator_is_exact(which):
    A = sym_matrix([3.0, 1.5, -2.0, 0.5, -0.1])
    res = eigsh(DenseOperator(A), k=4, which=which, tol=1e-10)
    check(A, res, 4, which, tol=1e-10, slack=1e-12)
    # The Krylov space is R^5 after 5 products; then 4 verify the pairs and, against the
    # recurrence's prediction of the same products, measure the noise.
    assert res.matvecs == 5 + 4


def test_repeated_eigenvalue_after_breakdown():
    op = DenseOperator(torch.eye(50, dtype=torch.float64) * 2.0)
    res = eigsh(op, k=3)
    assert res.converged and torch.allclose(res.values, torch.full((3,), 2.0, dtype=torch.float64))
    V = res.vectors
    assert torch.allclose(V.T @ V, torch.eye(3, dtype=torch.float64), atol=1e-12)


def test_eigenvector_start_still_finds_the_top():
    A = sym_matrix(INDEFINITE)
    _, U = torch.linalg.eigh(A)
    res = eigsh(DenseOperator(A), k=1, v0=U[:, 200].clone())  # an interior eigenvector
    check(A, res, 1, "largest", tol=1e-4, slack=1e-9)
    warm = eigsh(DenseOperator(A), k=1, v0=U[:, -1].clone())  # the answer itself
    assert warm.converged and abs(warm.values.item() - 2.0) < 1e-10


def _counting(A: torch.Tensor):
    count = [0]

    def matvec(v):
        count[0] += 1
        return A @ v

    return LambdaOperator(matvec, A.shape[0], A.dtype), count


def _arpack_matvecs(A: torch.Tensor, k: int, seed: int) -> int:
    from scipy.sparse.linalg import eigsh as arpack

    op, count = _counting(A)
    v0 = np.random.default_rng(seed).standard_normal(A.shape[0])
    arpack(op.to_scipy(), k=k, which="LA", tol=1e-4, v0=v0)
    return count[0]


GAP_09 = torch.cat([torch.tensor([1.0, 0.9]), torch.linspace(0.85, 0.0, 498)])  # λ2/λ1 = 0.9
GEOMETRIC = 0.95 ** torch.arange(500.0)
POWER_LAW = 1.0 / (1.0 + torch.arange(500.0))


@pytest.mark.parametrize(
    ("spectrum", "k", "ratio"),
    [(GAP_09, 1, 1.0), (GEOMETRIC, 1, 1.0), (GEOMETRIC, 10, 1.2), (POWER_LAW, 10, 1.2)],
)
def test_matvecs_versus_arpack(spectrum, k, ratio):
    """Same tolerance criterion, same basis size (20, resp. 2k + 1): per-step convergence tests
    should make top-1 no more expensive than ARPACK, which checks once per restart cycle."""
    A = sym_matrix(spectrum)
    ours = []
    for seed in range(4):
        op, count = _counting(A)
        res = eigsh(op, k=k, tol=1e-4, accuracy="residual", seed=seed)
        check(A, res, k, "largest", tol=1e-4, slack=1e-9)
        assert res.matvecs == count[0] == op.num_matvecs
        ours.append(res.matvecs)
    arpack = [_arpack_matvecs(A, k, seed) for seed in range(4)]
    print(f"top-{k}: valleys matvecs {ours}, ARPACK {arpack}")
    assert np.mean(ours) <= ratio * np.mean(arpack)


def test_same_seed_same_result_and_seed_matters():
    op = DenseOperator(sym_matrix(INDEFINITE))
    a, b = eigsh(op, k=3, seed=7), eigsh(op, k=3, seed=7)
    assert torch.equal(a.values, b.values) and torch.equal(a.vectors, b.vectors)
    assert a.matvecs == b.matvecs
    c = eigsh(op, k=3, seed=8)
    assert not torch.equal(a.vectors, c.vectors)


def test_float32():
    A = sym_matrix(INDEFINITE, dtype=torch.float32)
    res = eigsh(DenseOperator(A), k=5, which="magnitude", tol=1e-4)
    assert res.values.dtype == res.vectors.dtype == res.residuals.dtype == torch.float32
    check(A, res, 5, "magnitude", tol=1e-4, slack=1e-5)


def test_budget_respected_and_reported():
    op = DenseOperator(sym_matrix(torch.linspace(1, 2, 400)))
    with pytest.warns(RuntimeWarning, match="did not converge"):
        res = eigsh(op, k=5, tol=1e-8, max_matvecs=30)
    assert not res.converged and res.matvecs == op.num_matvecs and 25 <= res.matvecs <= 30
    assert res.values.shape == (5,) and torch.all(res.residuals > 0)
    json.dumps(res.to_dict())
    assert "vectors" not in res.to_dict()


def test_power_iteration():
    A = sym_matrix(torch.cat([torch.tensor([-1.0, 0.8]), torch.linspace(0.7, -0.5, 198)]))
    res = power_iteration(DenseOperator(A), tol=1e-4)
    assert res.method == "power" and res.which == "magnitude" and res.converged
    check(A, res, 1, "magnitude", tol=1e-4, slack=1e-12)
    lanczos = eigsh(DenseOperator(A), k=1, which="magnitude", tol=1e-4)
    assert lanczos.matvecs < res.matvecs
    with pytest.warns(RuntimeWarning, match="did not converge"):
        capped = power_iteration(DenseOperator(A), tol=1e-12, max_matvecs=5)
    assert not capped.converged and capped.matvecs == 5


def test_bad_inputs():
    A = sym_matrix(torch.linspace(-1, 1, 20))
    op = DenseOperator(A)
    with pytest.raises(TypeError, match="LinearOperator"):
        eigsh(A)
    with pytest.raises(ValueError, match="symmetric"):
        eigsh(DenseOperator(torch.triu(A) + 1.0))
    for k in (0, 21, 2.0, True):
        with pytest.raises(ValueError, match="k must be"):
            eigsh(op, k=k)
    with pytest.raises(ValueError, match="which"):
        eigsh(op, which="LM")
    for tol in (0.0, -1e-3, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="tol"):
            eigsh(op, tol=tol)
    with pytest.raises(ValueError, match="ncv"):
        eigsh(op, k=5, ncv=6)
    with pytest.raises(ValueError, match="max_matvecs"):
        eigsh(op, k=3, max_matvecs=2)
    with pytest.raises(ValueError, match="shape"):
        eigsh(op, v0=torch.ones(19, dtype=torch.float64))
    with pytest.raises(TypeError, match="dtype"):
        eigsh(op, v0=torch.ones(20))
    with pytest.raises(ValueError, match="nonzero"):
        eigsh(op, v0=torch.zeros(20, dtype=torch.float64))
    with pytest.raises(TypeError, match="seed"):
        eigsh(op, seed=1.5)
    nan_op = LambdaOperator(lambda v: v * float("nan"), 20, torch.float64)
    with pytest.raises(ValueError, match="NaN/inf"):
        eigsh(nan_op)
    with pytest.raises(ValueError, match="NaN/inf"):
        power_iteration(nan_op)
    with pytest.raises(ValueError, match="tol"):
        power_iteration(op, tol=0)


def test_operator_that_mutates_its_input_cannot_corrupt_the_basis():
    A = sym_matrix(INDEFINITE[::5])

    def rude(v):
        out = A @ v
        v.zero_()  # scribbles on its input
        return out

    op = LambdaOperator(rude, A.shape[0], A.dtype)
    check(A, eigsh(op, k=3, tol=1e-6), 3, "largest", tol=1e-6, slack=1e-9)
    check(A, power_iteration(op, tol=1e-3, max_matvecs=5000), 1, "magnitude", 1e-3, 1e-9)


def test_every_eigenpair_and_one_parameter_models_use_the_dense_matrix():
    import valleys
    from valleys import Objective

    g = torch.Generator().manual_seed(3)
    X = torch.randn(12, 1, generator=g, dtype=torch.float64)
    model = torch.nn.Linear(1, 1, bias=False).double()
    obj = Objective(model, "mse", (X, 2.0 * X))
    # ½(wx - y)² averaged over samples: the Hessian is mean(x²), exactly.
    assert valleys.sharpness(obj) == pytest.approx(float((X**2).mean()), rel=1e-12)
    A = torch.randn(5, 5, generator=g, dtype=torch.float64)
    A = A + A.T
    op = DenseOperator(A)
    for which in ("largest", "smallest", "magnitude"):
        result = eigsh(op, k=5, which=which)
        truth = torch.linalg.eigvalsh(A)
        expected = {"largest": truth.flip(0), "smallest": truth,
                    "magnitude": truth[truth.abs().argsort(descending=True)]}[which]
        assert result.method == "dense" and result.converged and result.matvecs == 5
        assert torch.allclose(result.values, expected, atol=1e-12)
        assert float(result.residuals.max()) < 1e-12
    with pytest.raises(ValueError, match=r"1 <= k <= p = 5 \(the operator's size\), got 6"):
        eigsh(op, k=6)


# -- honest answers in low precision and for unreachable tolerances ---------------------------
def _bf16_operator(A: torch.Tensor) -> LambdaOperator:
    """Products rounded like a bfloat16 model's: the matrix and the vector in bfloat16."""
    A16 = A.to(torch.bfloat16)
    return LambdaOperator(lambda v: A16 @ v, A.shape[0], torch.bfloat16)


def test_bfloat16_products_are_flagged_not_reported_converged():
    A = sym_matrix(SEPARATED)
    truth = float(torch.linalg.eigvalsh(A)[-1])
    with pytest.warns(RuntimeWarning, match="below what torch.bfloat16 products resolve"):
        res = eigsh(_bf16_operator(A), k=3, tol=1e-4)
    assert not res.converged and "bfloat16" in res.message
    # The basis and the results are float32; the bounds contain the true error.
    assert res.values.dtype == res.error_bounds.dtype == torch.float32
    assert abs(float(res.values[0]) - truth) <= float(res.error_bounds[0])
    assert res.noise > 1e-3 * truth  # bfloat16 products: noise of order 1e-2 ‖A‖ is measured
    # A tolerance the dtype can deliver converges, and the bound still holds.
    loose = eigsh(_bf16_operator(A), k=1, tol=5e-2)
    assert loose.converged and abs(float(loose.values[0]) - truth) <= float(loose.error_bounds[0])


@pytest.mark.parametrize("level", [1e-7, 1e-5])
def test_product_noise_is_read_from_the_verification_products_at_no_extra_cost(level,
                                                                               monkeypatch):
    """Products with additive noise of norm ``level·‖A‖`` per unit input: the noise eigsh
    measures from the verification products against the recurrence's prediction is of that
    size (the linearity defect of independent noise is about √2 of it, times the factor 3),
    and no product beyond the Lanczos steps and the k verifications is spent on it."""
    A = sym_matrix(SEPARATED).float()
    gen = torch.Generator().manual_seed(0)
    anorm = float(torch.linalg.matrix_norm(A, ord=2))

    def noisy(v):
        n = torch.randn(v.shape, generator=gen, dtype=v.dtype)
        return A @ v + level * anorm * torch.linalg.vector_norm(v) * n / n.norm()

    def two_more_products(*args):
        raise AssertionError("eigsh spent two products on the noise")

    monkeypatch.setattr(valleys.linalg._certify._Certifier, "_decide_noise", two_more_products)
    calls = []
    op = LambdaOperator(lambda v: calls.append(1) or noisy(v), A.shape[0], torch.float32)
    res = eigsh(op, k=2, tol=1e-3, accuracy="value", seed=0)
    assert res.converged and len(calls) == res.matvecs
    assert level * anorm <= res.noise <= 10 * level * anorm, (res.noise, level * anorm)
    truth = torch.linalg.eigvalsh(A.double()).flip(0)[:2]
    assert bool(((res.values.double() - truth).abs() <= res.error_bounds.double()).all())


def test_noise_read_from_the_recorded_products_is_not_the_basis_orthogonality():
    """float32 over 2·10⁶ coordinates: the basis is orthonormal only to ~1e-5 (inner-product
    rounding), which puts the symmetric T off the recorded recurrence by ~1e-5·‖A‖. The
    prediction of the verification products comes from the recorded (Hessenberg) relation, so
    the noise it measures is the products' own, a few ulps of ‖A‖ for an exact diagonal
    operator (the symmetric T gave 330 ulps, and 3 more products)."""
    p = 2_000_000
    gen = torch.Generator().manual_seed(0)
    d = torch.rand(p, generator=gen) * torch.linspace(0, 1, p) ** 4
    d[-1] = 2.0
    res = eigsh(LambdaOperator(lambda v: d * v, p, torch.float32), k=1, tol=1e-4, seed=0)
    ulp = torch.finfo(torch.float32).eps * 2.0
    assert res.converged and res.restarts == 0
    assert 0 < res.noise <= 30 * ulp, res.noise / ulp
    assert abs(float(res.values[0]) - 2.0) <= float(res.error_bounds[0])


def test_a_tolerance_below_rounding_is_flagged_with_a_nonzero_residual():
    A = sym_matrix(SEPARATED)
    with pytest.warns(RuntimeWarning, match="tol=1e-300 is below"):
        res = eigsh(DenseOperator(A), k=1, tol=1e-300)
    assert not res.converged and float(res.residuals[0]) > 0 and float(res.error_bounds[0]) > 0
    truth = float(torch.linalg.eigvalsh(A)[-1])
    assert abs(float(res.values[0]) - truth) <= float(res.error_bounds[0]) < 1e-12 * truth


@pytest.mark.parametrize("spectrum", [SEPARATED, CLUSTERED, INDEFINITE])
@pytest.mark.parametrize("accuracy", ["residual", "value"])
def test_error_bounds_contain_the_true_error_from_a_cold_start(spectrum, accuracy):
    A = sym_matrix(spectrum)
    truth = torch.linalg.eigvalsh(A)
    for seed in range(4):
        res = eigsh(DenseOperator(A), k=3, tol=1e-5, accuracy=accuracy, seed=seed)
        # nearest eigenvalue: the bound's meaning (a Krylov space may miss a copy)
        err = (res.values[:, None] - truth[None, :]).abs().min(dim=1).values
        assert res.converged and bool((err <= res.error_bounds).all()), (err, res.error_bounds)


def test_residual_bound_holds_where_the_kato_temple_gap_estimate_fails():
    """A warm start from the previous top vector of a slowly rotating operator whose top
    eigenvalues cluster within 1 %: Ritz values far below look like a gap that the unresolved
    cluster fills. The default (residual) bound stays valid."""
    from test_tracking_warm_block import drifting_sequence

    previous = None
    for t, A in enumerate(drifting_sequence(steps=8)):
        res = eigsh(DenseOperator(A), k=1, tol=1e-6, v0=previous, seed=t)
        top = float(torch.linalg.eigvalsh(A)[-1])
        assert abs(float(res.values[0]) - top) <= float(res.error_bounds[0])
        previous = res.vectors[:, 0]


def test_sharpness_can_return_the_record():
    import valleys
    from valleys import Objective

    g = torch.Generator().manual_seed(0)
    X = torch.randn(30, 4, generator=g, dtype=torch.float64)
    obj = Objective(torch.nn.Linear(4, 1, bias=False).double(), "mse", (X, X[:, :1]))
    truth = float(torch.linalg.eigvalsh(X.T @ X / 30)[-1])  # ½(wx − y)²: H = XᵀX / n
    res = valleys.sharpness(obj, return_result=True)
    assert isinstance(res, EigshResult) and res.converged
    assert abs(float(res.values[0]) - truth) <= float(res.error_bounds[0]) <= 1e-4 * truth
    assert valleys.sharpness(obj) == pytest.approx(float(res.values[0]), rel=1e-12)
    with pytest.raises(TypeError, match="return_result"):
        valleys.sharpness(obj, return_result="yes")
    with pytest.warns(RuntimeWarning), pytest.raises(ValueError, match="return_result=True"):
        valleys.sharpness(obj, tol=1e-300)


def test_smallest_and_both_ends_of_an_indefinite_hessian():
    """The most negative curvature and both ends in one call, against the dense spectrum."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.Tanh(),
                                torch.nn.Linear(6, 2)).double()
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(40, 2, generator=gen, dtype=torch.float64) * 3
    obj = valleys.Objective(model, "mse", (X, y))
    op = valleys.hessian(obj)
    exact = torch.linalg.eigvalsh(op.to_dense())
    assert float(exact[0]) < 0  # indefinite away from a minimum
    low = valleys.eigsh(op, k=2, which="smallest", tol=1e-10, seed=0)
    torch.testing.assert_close(low.values, exact[:2], rtol=1e-8, atol=1e-10)
    both = valleys.eigsh(op, k=4, which="both", tol=1e-10, seed=0)
    expected = torch.stack([exact[-1], exact[0], exact[-2], exact[1]])
    torch.testing.assert_close(both.values, expected, rtol=1e-8, atol=1e-10)
    assert bool((both.error_bounds >= (both.values - expected).abs()).all())
    block = valleys.linalg.block_eigsh(op, torch.randn(op.size, 3, generator=gen,
                                                       dtype=torch.float64),
                                       k=3, which="both", tol=1e-8)[0]
    torch.testing.assert_close(block.values, expected[:3], rtol=1e-6, atol=1e-8)


@functools.cache
def _network_problem(loss: str, dtype: torch.dtype):
    """A small tanh MLP on fixed data after some gradient descent, with its dense float64
    Hessian's eigenvalues; the objective evaluates the model in ``dtype``."""
    import copy

    from _oracles import dense_hessian

    g = torch.Generator().manual_seed(3)
    X = torch.randn(64, 5, generator=g, dtype=torch.float64)
    Y = torch.randint(0, 3, (64,), generator=g) if loss == "ce" else \
        torch.randn(64, 3, generator=g, dtype=torch.float64)
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(5, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3))
    obj = valleys.Objective(model.double(), loss, (X, Y))
    theta = obj.parameters_vector()
    for _ in range(200):  # towards a minimum, where the top of the spectrum stands out
        theta = theta - 0.5 * obj.gradient(theta)
    obj.set_parameters(theta)
    truth = torch.linalg.eigvalsh(
        dense_hessian(lambda t: obj.chunk_losses(t, X, Y).mean(), theta))
    if dtype == torch.float64:
        return obj, truth
    data = (X.to(dtype), Y if loss == "ce" else Y.to(dtype))
    return valleys.Objective(copy.deepcopy(model).to(dtype), loss, data), truth


@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("accuracy", ["value", "residual"])
def test_error_bounds_on_networks_contain_the_error_and_are_not_loose(loss, dtype, accuracy):
    """Issue #18: on networks with a dense float64 truth, every bound contains the error, and
    exceeds it by at most 100x (the error floored at what the products resolve: their noise
    and the rounding of the basis)."""
    obj, truth = _network_problem(loss, dtype)
    H = valleys.hessian(obj)
    eps = torch.finfo(dtype).eps
    for k, tol, seed in [(1, 1e-3, 0), (1, 1e-5, 1), (3, 1e-4, 2), (3, 1e-6, 3)]:
        if tol < 100 * eps:
            continue
        res = eigsh(H, k=k, tol=tol, accuracy=accuracy, seed=seed)
        assert res.converged, res.message
        err = (res.values.double()[:, None] - truth[None, :]).abs().min(dim=1).values
        bounds = res.error_bounds.double()
        floor = res.noise + 10 * eps * float(truth.abs().max())
        assert bool((err <= bounds).all()), (k, tol, err, bounds)
        assert bool((bounds <= 100 * err.clamp(min=floor)).all()), (k, tol, err, bounds, floor)


def test_value_accuracy_stops_earlier_than_the_residual_at_equal_tol():
    """On a separated spectrum the Kato–Temple bound reaches tol in fewer products than the
    residual, and both answers are within their bounds of the truth."""
    A = sym_matrix(SEPARATED)
    truth = torch.linalg.eigvalsh(A).flip(0)
    value = eigsh(DenseOperator(A), k=3, tol=1e-6, accuracy="value", seed=0)
    residual = eigsh(DenseOperator(A), k=3, tol=1e-6, accuracy="residual", seed=0)
    assert value.matvecs < residual.matvecs
    for res in (value, residual):
        assert bool(((res.values - truth[:3]).abs() <= res.error_bounds).all())
    assert bool((value.error_bounds <= 1e-6 * truth[:3]).all())
    assert bool((value.error_bounds < value.residuals).all())  # the gap was established


def test_basis_device_and_its_memory_are_reported():
    """The basis can live on another device (here the same CPU, named): same numbers, and the
    record reports the (ncv + 1) · p entries it held; bad devices are refused."""
    A = sym_matrix(SEPARATED)
    here = eigsh(DenseOperator(A), k=2, tol=1e-6, seed=0, ncv=12)
    there = eigsh(DenseOperator(A), k=2, tol=1e-6, seed=0, ncv=12, basis_device="cpu")
    assert torch.equal(here.values, there.values) and there.vectors.device == A.device
    assert here.basis_bytes == there.basis_bytes == 13 * A.shape[0] * A.element_size()
    assert there.basis_device == "cpu" and here.basis_device is None
    with pytest.raises(ValueError, match="basis_device"):
        eigsh(DenseOperator(A), k=1, basis_device="not-a-device")
    with pytest.raises(TypeError, match="basis_device"):
        eigsh(DenseOperator(A), k=1, basis_device=3)
