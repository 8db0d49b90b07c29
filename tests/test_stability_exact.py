"""The exact mean-square test (spectral radius of the second-moment map) for small problems."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from valleys.stability import (
    exact_mean_square,
    second_moment_map,
    sgd_criterion,
    sgd_noise_factor,
)

F64 = torch.float64


def psd_family(n: int, p: int, seed: int, rank: int = 1, ridge: float = 0.05) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(n, rank, p, generator=g, dtype=F64)
    return J.transpose(1, 2) @ J + ridge * torch.eye(p, dtype=F64)


def enumerated_map(Hs: torch.Tensor, lr: float, batch_size: int) -> torch.Tensor:
    """``E_ξ[(I − ηH_ξ) ⊗ (I − ηH_ξ)]`` by listing every batch (the oracle)."""
    n, p, _ = Hs.shape
    eye = torch.eye(p, dtype=F64)
    batches = list(itertools.combinations(range(n), batch_size))
    total = torch.zeros(p * p, p * p, dtype=F64)
    for b in batches:
        Q = eye - lr * Hs[list(b)].mean(0)
        total += torch.kron(Q, Q)
    return total / len(batches)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 5])
def test_closed_form_map_matches_enumeration(batch_size):
    n, p, lr = 5, 3, 0.4
    Hs = psd_family(n, p, seed=batch_size, rank=2)
    S = torch.randn(p, p, generator=torch.Generator().manual_seed(9), dtype=F64)
    oracle = (enumerated_map(Hs, lr, batch_size) @ S.reshape(-1)).view(p, p)
    assert torch.allclose(second_moment_map(Hs, lr, batch_size)(S), oracle, atol=1e-12)
    rho = float(torch.linalg.eigvals(enumerated_map(Hs, lr, batch_size)).abs().max())
    for method in ("dense", "lanczos"):
        result = exact_mean_square(Hs, lr, batch_size, method=method)
        assert result.spectral_radius == pytest.approx(rho, rel=1e-7)


@pytest.mark.parametrize("batch_size", [1, 2, 4, 6])
def test_one_dimension_is_exactly_the_criterion(batch_size):
    a_i = torch.tensor([0.3, 1.1, 1.7, 2.2, 2.9, 3.6], dtype=F64)
    a, s = float(a_i.mean()), float(a_i.std(unbiased=False))
    for lr in (0.2, 0.5, 0.9):
        result = exact_mean_square(a_i.view(-1, 1, 1), lr, batch_size)
        crit = sgd_criterion(a, s, lr, batch_size, 6)
        assert result.spectral_radius == pytest.approx(crit, abs=1e-12)
        assert result.sufficient_lambda_max == pytest.approx(crit, abs=1e-12)
        assert result.stable == (crit <= 1)


def test_sufficient_condition_bounds_the_spectral_radius():
    """ρ(T) <= λ_max(T(I)) always; ρ(T) >= tr T(I)/p and >= E[(1 − η vᵀH_ξ v)²] for unit v."""
    gaps = []
    for seed in range(30):
        n, p = 5, 3
        Hs = psd_family(n, p, seed, rank=1 + seed % 3, ridge=0.02 * (seed % 2))
        lam = float(torch.linalg.eigvalsh(Hs.mean(0))[-1])
        for batch_size in (1, 2, 4, 5):
            lr = (0.3 + 0.1 * (seed % 15)) / lam
            r = exact_mean_square(Hs, lr, batch_size)
            assert r.spectral_radius <= r.sufficient_lambda_max + 1e-12
            M = second_moment_map(Hs, lr, batch_size)(torch.eye(p, dtype=F64))
            assert r.spectral_radius >= float(torch.trace(M)) / p - 1e-12
            v = torch.linalg.eigh(M).eigenvectors[:, -1]
            c = sgd_noise_factor(n, batch_size)
            q = torch.einsum("i,nij,j->n", v, Hs, v)  # 1-D curvatures along v
            along = sgd_criterion(float(q.mean()), float(q.std(unbiased=False)), lr,
                                  batch_size, n)
            assert r.spectral_radius >= along - 1e-12
            assert c > 0 or r.gap == pytest.approx(0.0, abs=1e-12)  # GD: exact
            # The eigenmatrix is PSD: T preserves the PSD cone (Perron–Frobenius).
            assert float(torch.linalg.eigvalsh(r.eigenmatrix)[0]) >= -1e-8
            gaps.append(r.gap)
    assert max(gaps) > 0.05  # the sufficient condition is strictly loose in several dimensions


def test_monte_carlo_2d_matches_spectral_radius():
    """Start linearized SGD with E[x_0x_0ᵀ] = S*, the Perron eigenmatrix: E‖x_t‖² = ρ^t tr S*.

    With 400k runs the CLT standard error of the mean of ‖x_t‖² is about 0.5%; we accept five
    of them, and check that the sufficient condition's λ_max^t is rejected at that precision.
    """
    Hs = psd_family(4, 2, seed=15)
    lr = 1.0 / float(torch.linalg.eigvalsh(Hs.mean(0))[-1])
    batch_size, t, runs = 1, 5, 400_000
    r = exact_mean_square(Hs, lr, batch_size)
    S = r.eigenmatrix
    evals, evecs = torch.linalg.eigh(S)
    root = evecs * evals.clamp(min=0).sqrt()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(runs, 2, generator=gen, dtype=F64) @ root.T
    eye = torch.eye(2, dtype=F64)
    for _ in range(t):
        idx = torch.randint(0, 4, (runs,), generator=gen)
        x = torch.einsum("rij,rj->ri", eye - lr * Hs[idx], x)
    sq = (x**2).sum(1) / float(torch.trace(S))
    mean, se = float(sq.mean()), float(sq.std()) / math.sqrt(runs)
    assert abs(mean - r.spectral_radius**t) < 5 * se
    assert abs(mean - r.sufficient_lambda_max**t) > 20 * se


def test_objective_input_and_refusals():
    from torch import nn

    import valleys

    X = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    obj = valleys.Objective(nn.Linear(3, 1).double(), "mse", (X, torch.zeros(6, 1, dtype=F64)))
    r = exact_mean_square(obj, 0.1, 2)
    assert r.dim == 4 and r.n == 6 and r.to_dict()["method"] == "dense"
    assert "eigenmatrix" not in r.to_dict()
    big = valleys.Objective(nn.Linear(40, 5).double(), "mse",
                            (torch.randn(3, 40, dtype=F64), torch.zeros(3, 5, dtype=F64)))
    with pytest.raises(ValueError, match="exceeds max_dim"):
        exact_mean_square(big, 0.1, 1)
    Hs = psd_family(4, 2, seed=0)
    with pytest.raises(ValueError, match="exceeds the number of samples"):
        exact_mean_square(Hs, 0.1, 5)
    with pytest.raises(ValueError, match="lr must be a positive"):
        exact_mean_square(Hs, float("nan"), 1)
    with pytest.raises(ValueError, match="symmetric"):
        exact_mean_square(torch.randn(4, 2, 2, dtype=F64), 0.1, 1)
    with pytest.raises(ValueError, match="finite"):
        exact_mean_square(torch.full((4, 2, 2), float("inf"), dtype=F64), 0.1, 1)


def test_per_sample_hessians_match_double_backward():
    """The vectorized dense Hessians (``jacfwd∘grad``) against row-by-row double backward."""
    import warnings

    from _oracles import sample_hessians
    from torch import nn

    import valleys
    from valleys.stability import per_sample_hessians

    g = torch.Generator().manual_seed(2)
    X = torch.randn(7, 3, generator=g, dtype=F64)
    Y = torch.randint(0, 2, (7,), generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    obj = valleys.Objective(model, "ce", (X, Y), chunk_size=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the check passes: no fallback
        Hs = per_sample_hessians(obj)
    reference = sample_hessians(obj)
    assert float((Hs - reference).norm() / reference.norm()) < 1e-12
