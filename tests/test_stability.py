"""Linear stability of SGD (Wu, Ma & E 2018): closed forms, the operator condition, bad inputs."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import interpolating_problem
from torch import nn

import valleys
from valleys.stability import (
    critical_lr,
    is_stable,
    max_stable_lr,
    max_stable_lr_analysis,
    necessary_bounds,
    second_moment_map,
    sgd_criterion,
    sgd_noise_factor,
    stability_analysis,
    stability_region,
)

F64 = torch.float64


def random_psd(n: int, p: int, rank: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(n, rank, p, generator=g, dtype=F64)
    return J.transpose(1, 2) @ J


# -- the identity behind the criterion -------------------------------------------------------
@pytest.mark.parametrize("batch_size", [1, 2, 3, 5])
def test_batch_average_identity_by_enumeration(batch_size):
    n, p, lr = 5, 4, 0.3
    Hs = random_psd(n, p, 2, seed=batch_size)
    eye = torch.eye(p, dtype=F64)
    batches = list(itertools.combinations(range(n), batch_size))
    lhs = sum(
        (eye - lr * Hs[list(b)].mean(0)) @ (eye - lr * Hs[list(b)].mean(0)) for b in batches
    ) / len(batches)
    H = Hs.mean(0)
    Sigma = (Hs @ Hs).mean(0) - H @ H
    c = sgd_noise_factor(n, batch_size)
    rhs = (eye - lr * H) @ (eye - lr * H) + lr**2 * c * Sigma
    assert torch.allclose(lhs, rhs, atol=1e-12, rtol=0)
    # The same matrix is T(I) for the exact second-moment map.
    assert torch.allclose(second_moment_map(Hs, lr, batch_size)(eye), rhs, atol=1e-12, rtol=0)


def test_noise_factor_values():
    assert sgd_noise_factor(10, 1) == 1.0
    assert sgd_noise_factor(10, 10) == 0.0
    assert sgd_noise_factor(1, 1) == 0.0
    assert sgd_noise_factor(6, 3) == pytest.approx(3 / 15)


# -- the 1-D criterion against Monte Carlo ----------------------------------------------------
@pytest.mark.parametrize("batch_size", [1, 2, 4])
def test_criterion_matches_monte_carlo(batch_size):
    """One SGD step multiplies E[x²] by E[(1 − η a_ξ)²]; after t independent steps, crit^t.

    x_t² is a product of t i.i.d. factors, so the sample mean of x_t² over R runs has standard
    error std(x_t²)/sqrt(R) by the CLT; we accept 5 standard errors (a false alarm has
    probability ~6e-7, and the seed makes the test deterministic).
    """
    n, lr, t, runs = 6, 0.8, 4, 200_000
    a_i = torch.tensor([0.2, 0.9, 1.5, 2.4, 3.0, 4.1], dtype=F64)
    a, s = float(a_i.mean()), float(a_i.std(unbiased=False))
    crit = sgd_criterion(a, s, lr, batch_size, n)
    gen = torch.Generator().manual_seed(batch_size)
    x = torch.ones(runs, dtype=F64)
    for _ in range(t):
        idx = torch.rand(runs, n, generator=gen).argsort(dim=1)[:, :batch_size]
        x = (1 - lr * a_i[idx].mean(1)) * x
    x2 = x**2
    se = float(x2.std()) / math.sqrt(runs)
    assert abs(float(x2.mean()) - crit**t) < 5 * se
    assert 5 * se < 0.1 * crit**t  # the test resolves a 10% error


# -- the poster toy ---------------------------------------------------------------------------
C_TOY = (0.1, 1.9)


def toy_grad(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Derivative of f_c(x) = min{x², c (x − 1)²} (the active branch)."""
    left = x**2 <= c * (x - 1) ** 2
    return torch.where(left, 2 * x, 2 * c * (x - 1))


class Toy(nn.Module):
    def __init__(self, x0: float) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.tensor([x0], dtype=F64))

    def forward(self, idx):
        return self.x.expand(idx.shape[0], 1)


def toy_loss(out, c):
    x = out[:, 0]
    return torch.minimum(x**2, c * (x - 1) ** 2)


def toy_objective(x0: float) -> valleys.Objective:
    c = torch.tensor(C_TOY, dtype=F64)
    return valleys.Objective(Toy(x0), toy_loss, (torch.zeros(2, 1, dtype=F64), c))


def test_poster_toy_numbers():
    assert sgd_criterion(2.0, 1.8, 0.7, 1, 2) == pytest.approx(1.7476, abs=1e-12)
    assert sgd_criterion(2.0, 1.8, 0.7, 2, 2) == pytest.approx(0.16, abs=1e-12)
    obj = toy_objective(1.0)
    sgd = stability_analysis(obj, 0.7, 1)
    assert sgd.sharpness == pytest.approx(2.0, rel=1e-10)
    assert sgd.nonuniformity == pytest.approx(1.8, rel=1e-10)
    assert not sgd.verdict and sgd.lambda_max == pytest.approx(1.7476, rel=1e-10)
    gd = stability_analysis(obj, 0.7, 2)
    assert gd.verdict and gd.lambda_max == pytest.approx(0.16, rel=1e-10)
    assert max_stable_lr(obj, 1) == pytest.approx(2 * 2.0 / (4.0 + 1.8**2), rel=1e-10)
    assert max_stable_lr(obj, 2) == pytest.approx(1.0, rel=1e-10)
    # The left minimum x = 0 has a_i = (2, 2): s = 0, stable for both.
    left = toy_objective(0.0)
    assert is_stable(left, 0.7, 1) and is_stable(left, 0.7, 2)


def test_poster_toy_escape():
    c = torch.tensor(C_TOY, dtype=F64)
    lr, steps, runs = 0.7, 300, 20
    gen = torch.Generator().manual_seed(0)
    x = torch.full((runs,), 1.001, dtype=F64)
    for _ in range(steps):  # SGD, B = 1: one of the two functions per step
        pick = torch.randint(0, 2, (runs,), generator=gen)
        x = x - lr * toy_grad(x, c[pick])
    assert torch.all(x.abs() < 1e-8), x
    y = torch.tensor(1.001, dtype=F64)
    for _ in range(steps):  # GD
        y = y - lr * toy_grad(y, c).mean()
    assert abs(float(y) - 1.0) < 1e-8


# -- max_stable_lr ------------------------------------------------------------------------------
class Diagonal(nn.Module):
    """``ℓ_i = ½ Σ_k x_ik² w_k²``: every per-sample Hessian is ``diag(x_i²)`` (they commute)."""

    def __init__(self, p: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(p, dtype=F64))

    def forward(self, x):
        return x * self.w


@pytest.fixture(scope="module")
def diagonal():
    n, p = 7, 5
    X = torch.randn(n, p, generator=torch.Generator().manual_seed(3), dtype=F64)
    obj = valleys.Objective(Diagonal(p), "mse", (X, torch.zeros(n, p, dtype=F64)))
    return obj, X**2


@pytest.mark.parametrize("batch_size", [1, 2, 4, 7])
def test_max_stable_lr_commuting_closed_form(diagonal, batch_size):
    obj, D = diagonal
    n = obj.n
    a_k, s_k = D.mean(0), D.std(0, unbiased=False)
    pairs = zip(a_k.tolist(), s_k.tolist(), strict=True)
    exact = min(critical_lr(a, s, batch_size, n) for a, s in pairs)
    result = max_stable_lr_analysis(obj, batch_size)
    assert result.converged and result.note is None
    assert result.lr == pytest.approx(exact, rel=1e-7)
    assert result.lr <= result.gd_lr * (1 + 1e-12)
    # The flip: just below stable, just above unstable.
    assert is_stable(obj, exact * (1 - 1e-4), batch_size)
    assert not is_stable(obj, exact * (1 + 1e-4), batch_size)


def test_max_stable_lr_at_overparameterized_minimum(interpolating):
    obj, oracle = interpolating
    H = oracle["H"]
    evals, evecs = torch.linalg.eigh(H)
    gd = 2 / float(evals[-1])
    assert max_stable_lr(obj, obj.n) == pytest.approx(gd, rel=1e-7)
    keep = evals > 1e-10 * evals[-1]
    Q = evecs[:, keep] / evals[keep].sqrt()  # H^{-1/2} on range(H)
    for batch_size in (1, 3, 6):
        c = sgd_noise_factor(obj.n, batch_size)
        A = H @ H + c * oracle["Sigma"]
        exact = 2 / float(torch.linalg.eigvalsh(Q.T @ A @ Q)[-1])
        result = max_stable_lr_analysis(obj, batch_size)
        assert result.converged
        assert result.lr == pytest.approx(exact, rel=1e-6)
        assert result.lr <= gd * (1 + 1e-9)
        a_max, s_max = necessary_bounds(result.lr, batch_size, obj.n)
        # The necessary bounds hold at η*: a <= 2/η*, s <= 1/(η* sqrt c).
        assert float(evals[-1]) <= a_max * (1 + 1e-9)
        s = math.sqrt(float(torch.linalg.eigvalsh(oracle["Sigma"])[-1]))
        assert s <= s_max * (1 + 1e-9)
        # The flat directions (λ = 1 exactly) must not be declared unstable by round-off.
        half = stability_analysis(obj, 0.5 * result.lr, batch_size)
        assert half.verdict and half.lambda_max == pytest.approx(1.0, abs=1e-9)
        assert is_stable(obj, result.lr * (1 - 1e-4), batch_size)
        assert not is_stable(obj, result.lr * (1 + 1e-4), batch_size)


def test_stability_result_record(diagonal):
    obj, _ = diagonal
    r = stability_analysis(obj, 0.05, 2)
    d = r.to_dict()
    assert d["verdict"] is True and d["batch_size"] == 2 and d["n"] == obj.n
    assert r.margin == pytest.approx(1 - r.lambda_max)
    assert r.within_necessary_bounds is True and r.matvecs > 0
    with pytest.raises(AttributeError):
        r.lr = 1.0  # frozen
    m = max_stable_lr_analysis(obj, 2).to_dict()
    assert m["iterations"] == len(m["history"]) and m["lr"] > 0


# -- plotting helpers -----------------------------------------------------------------------
def test_region_and_critical_lr():
    lr, B, n = 0.1, 4, 100
    region = stability_region(lr, B, n, num=101)
    c = sgd_noise_factor(n, B)
    inner = region.sharpness[1:-1]
    edge = zip(inner, region.nonuniformity[1:-1], strict=True)
    crit = [sgd_criterion(a, s, lr, B, n) for a, s in edge]
    assert max(abs(x - 1) for x in crit) < 1e-12
    assert region.nonuniformity.max() == pytest.approx(1 / (lr * math.sqrt(c)))
    assert region.max_nonuniformity == pytest.approx(math.sqrt(B * (n - 1) / (n - B)) / lr)
    assert region.to_dict()["lr"] == lr
    gd = stability_region(lr, n, n)
    assert math.isinf(gd.nonuniformity[50]) and math.isinf(gd.max_nonuniformity)
    etas = critical_lr(5.0, 20.0, [1, 10, 100], n)
    assert etas[-1] == pytest.approx(2 / 5.0) and etas[0] < etas[1] < etas[2]
    for eta, b in zip(etas, [1, 10, 100], strict=True):
        assert sgd_criterion(5.0, 20.0, eta, b, n) == pytest.approx(1.0)


# -- bad inputs ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": 0.0}, "lr must be a positive"),
        ({"lr": -1.0}, "lr must be a positive"),
        ({"lr": math.inf}, "lr must be a positive"),
        ({"lr": math.nan}, "lr must be a positive"),
        ({"batch_size": 0}, "at least 1"),
        ({"batch_size": 11}, "exceeds the number of samples"),
        ({"batch_size": 2.5}, "integer"),
        ({"n": 0}, "n .* must be an integer >= 1"),
        ({"sharpness": math.nan}, "sharpness must be finite"),
        ({"nonuniformity": -1.0}, "non-negative"),
        ({"nonuniformity": math.inf}, "nonuniformity must be finite"),
    ],
)
def test_criterion_bad_inputs(kwargs, match):
    args = {"sharpness": 1.0, "nonuniformity": 1.0, "lr": 0.1, "batch_size": 2, "n": 10}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        sgd_criterion(**args)


def test_operator_functions_bad_inputs(diagonal):
    obj, _ = diagonal
    with pytest.raises(ValueError, match="lr must be a positive"):
        is_stable(obj, 0.0, 1)
    with pytest.raises(ValueError, match="exceeds the number of samples"):
        max_stable_lr(obj, obj.n + 1)
    with pytest.raises(ValueError, match="at least 1"):
        stability_analysis(obj, 0.1, 0)
    with pytest.raises(ValueError, match="tol"):
        stability_analysis(obj, 0.1, 1, tol=0.0)
    with pytest.raises(TypeError, match=r"valleys\.Objective"):
        is_stable("model", 0.1, 1)
    with pytest.raises(ValueError, match="lr must be a positive"):
        necessary_bounds(-0.1, 1, 2)


@pytest.fixture(scope="module")
def interpolating():
    return interpolating_problem()
