"""valleys.theory: path norms against brute-force path enumeration, Barron-norm estimates
against closed forms, Rademacher terms against their formulas, the regularized fit."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from valleys.errors import ArgumentTypeError, ArgumentValueError
from valleys.experiments.common import torch_threads
from valleys.models import MLP
from valleys.theory import (
    a_priori_terms,
    barron_norm_from_samples,
    gaussian_fourier_transform,
    gaussian_spectral_moments,
    l1_rademacher,
    massart_bound,
    path_norm,
    path_norm_regularized_fit,
    penalty_weight,
    rademacher_bound,
    ridge_barron_norm,
    spectral_barron_bound,
    spectral_moments,
    two_layer_path_norm,
    two_layer_relu,
    two_layer_weights,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Small fits: one thread avoids oversubscription on a shared machine."""
    with torch_threads(1):
        yield


def _net(widths, bias=True, seed=0):
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(a, b, bias=bias))
    return nn.Sequential(*layers).double()


@torch.no_grad()
def _brute_force(model, p=1.0):
    """Σ over every input→output path of Π |w_e|^p, biases as edges from constant units."""
    linears = [m for m in model if isinstance(m, nn.Linear)]
    total = 0.0
    # a path starts at an input unit (layer 0) or at the constant unit of layer l (its bias)
    for start in range(len(linears)):
        first = linears[start]
        sources = ([*range(first.in_features)] if start == 0 else [])
        sources += [None] if first.bias is not None else []
        for src in sources:
            # enumerate the hidden units chosen at each later layer
            outs = [range(lin.out_features) for lin in linears[start:]]
            for units in itertools.product(*outs):
                w0 = (first.bias[units[0]] if src is None else first.weight[units[0], src])
                prod = abs(float(w0)) ** p
                for k in range(1, len(units)):
                    prod *= abs(float(linears[start + k].weight[units[k], units[k - 1]])) ** p
                total += prod
    return total ** (1 / p)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("p", [1.0, 2.0])
def test_path_norm_matches_enumeration(bias, p):
    model = _net((3, 4, 5, 2), bias=bias)
    assert path_norm(model, p) == pytest.approx(_brute_force(model, p), rel=1e-12)


def test_path_norm_two_layer_formula_and_mlp():
    model = two_layer_relu(6, 9, seed=3, dtype=torch.float64)
    with torch.no_grad():
        model[0].bias.uniform_(-1, 1)
    a, W, c = two_layer_weights(model)
    expected = float((a.abs() * (W.abs().sum(1) + c.abs())).sum())
    assert two_layer_path_norm(a, W, c) == pytest.approx(expected, rel=1e-12)
    assert path_norm(model) == pytest.approx(expected, rel=1e-12)
    # the l2 path norm is (Σ a_j² ‖(w_j, c_j)‖²)^½
    l2 = float((a.pow(2) * (W.pow(2).sum(1) + c.pow(2))).sum().sqrt())
    assert path_norm(model, 2) == pytest.approx(l2, rel=1e-12)
    l2_inner = float((a.abs() * (W.pow(2).sum(1) + c.pow(2)).sqrt()).sum())
    assert two_layer_path_norm(a, W, c, q=2) == pytest.approx(l2_inner, rel=1e-12)
    mlp = MLP((3, 4, 5, 2), seed=0).double()
    assert path_norm(mlp) == pytest.approx(_brute_force(mlp.net), rel=1e-12)


def test_path_norm_rescaling_invariance():
    model = _net((3, 6, 4, 1), bias=True, seed=1)
    x = torch.randn(20, 3, dtype=torch.float64)
    before, out = path_norm(model), model(x)
    frob = sum(float(p.detach().pow(2).sum()) for p in model.parameters())
    kappa = torch.logspace(-1, 1, 6, dtype=torch.float64)
    with torch.no_grad():
        model[0].weight.mul_(kappa[:, None])
        model[0].bias.mul_(kappa)
        model[2].weight.div_(kappa[None, :])
    assert path_norm(model) == pytest.approx(before, rel=1e-12)
    assert torch.allclose(model(x), out, rtol=1e-12, atol=1e-12)
    assert sum(float(p.detach().pow(2).sum()) for p in model.parameters()) != pytest.approx(frob)


def test_path_norm_bad_inputs():
    with pytest.raises(ArgumentValueError, match="Tanh"):
        path_norm(nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)))
    with pytest.raises(ArgumentValueError, match="ReLU networks"):
        path_norm(MLP((2, 3, 1), activation="tanh"))
    with pytest.raises(ArgumentValueError, match=r"nn\.Linear"):
        path_norm(nn.Sequential(nn.ReLU()))
    with pytest.raises(ArgumentTypeError):
        path_norm("net")
    with pytest.raises(ArgumentValueError):
        path_norm(_net((2, 3, 1)), p=0)
    with pytest.raises(ArgumentValueError, match="width 0"):
        two_layer_path_norm(torch.zeros(0), torch.zeros(0, 3))
    with pytest.raises(ArgumentValueError, match="m \\(width\\)"):
        two_layer_relu(3, 0)
    with pytest.raises(ArgumentValueError):
        two_layer_path_norm(torch.ones(2), torch.ones(2, 3), q=0.5)
    with pytest.raises(ArgumentValueError, match="two-layer"):
        two_layer_weights(_net((2, 3, 3, 1)))


def test_ridge_barron_norm_exact_in_one_orthant():
    g = torch.Generator().manual_seed(0)
    W = torch.rand(5, 4, generator=g, dtype=torch.float64)
    c = torch.rand(5, generator=g, dtype=torch.float64)
    a = torch.rand(5, generator=g, dtype=torch.float64)
    est = ridge_barron_norm(a, W, c)
    assert est.exact
    assert est.upper == pytest.approx(float((a * (W.sum(1) + c)).sum()), rel=1e-12)
    # mixed signs: a valid bracket, lower <= upper; the sup over random cube points is below
    a2 = a * torch.tensor([1.0, -1, 1, -1, 1], dtype=torch.float64)
    W2 = W * torch.where(torch.rand(5, 4, generator=g) < 0.5, -1.0, 1.0).double()
    est2 = ridge_barron_norm(a2, W2, c)
    X = torch.rand(2000, 4, generator=g, dtype=torch.float64) * 2 - 1
    values = (torch.relu(X @ W2.T + c) @ a2).abs().max()
    assert est2.lower <= est2.upper
    assert float(values) <= est2.upper
    assert ridge_barron_norm(a2, W2, c, points=X).lower >= float(values) - 1e-12
    with pytest.raises(ArgumentValueError, match="cube"):
        ridge_barron_norm(a2, W2, c, points=2 * torch.ones(1, 4))


@pytest.mark.parametrize("d,s", [(1, 1.0), (5, 1.0), (10, 0.5)])
def test_gaussian_spectral_moments_monte_carlo(d, s):
    exact = gaussian_spectral_moments(d, s)
    for scale in (1.0 / s, 1.2 / s):  # exact sampling, then real importance weights
        mc = spectral_moments(lambda w: gaussian_fourier_transform(w, s), d, samples=200_000,
                              proposal_scale=scale, seed=1)
        for key in ("gamma", "barron_first", "mass"):
            value, err = getattr(mc, key), getattr(mc, key + "_stderr")
            assert abs(value - exact[key]) <= max(5 * err, 1e-12), (key, value, exact[key])
            assert abs(value - exact[key]) <= 0.02 * exact[key]


def test_gaussian_closed_forms_digest_values():
    # digest A3 (V-num): d=5,s=1: C_f 2.1277; d=10,s=0.5: C_f 6.1687; gamma formula
    assert gaussian_spectral_moments(1)["barron_first"] == pytest.approx(0.7979, abs=1e-4)
    assert gaussian_spectral_moments(5)["barron_first"] == pytest.approx(2.1277, abs=1e-4)
    assert gaussian_spectral_moments(10, 0.5)["barron_first"] == pytest.approx(6.1687, abs=1e-4)
    assert gaussian_spectral_moments(5)["gamma"] == pytest.approx(5 + 40 / math.pi, rel=1e-14)
    # f(0) = ∫ f̂ = 1: the transform is a probability density (quadrature, d = 1)
    w = torch.linspace(-40, 40, 80001, dtype=torch.float64).reshape(-1, 1)
    assert float(torch.trapezoid(gaussian_fourier_transform(w, 0.7), w[:, 0])) == \
        pytest.approx(1.0, abs=1e-10)


def test_spectral_barron_bound():
    gamma = gaussian_spectral_moments(3)["gamma"]
    bound = spectral_barron_bound(gamma, 1.0, 0.0)
    assert bound == pytest.approx(3 * gamma + 1.0)
    assert bound >= 1.0  # ≥ sup |f| = f(0) = 1, the lower bound of ridge_barron_norm
    with pytest.raises(ArgumentValueError):
        spectral_barron_bound(-1.0, 0.0, 0.0)
    with pytest.raises(ArgumentValueError):
        spectral_moments(lambda w: w[:, 0], 2, samples=0)
    with pytest.raises(ArgumentValueError, match="shape"):
        spectral_moments(lambda w: w, 2, samples=10)


def test_rademacher_terms():
    assert massart_bound(100, 10) == pytest.approx(math.sqrt(2 * math.log(20) / 100))
    assert rademacher_bound(3.0, 100, 10, x_max=0.5) == pytest.approx(
        2 * 3.0 * 0.5 * math.sqrt(2 * math.log(20) / 100))
    g = torch.Generator().manual_seed(0)
    for n, d in ((100, 10), (1000, 50), (200, 1000)):
        X = torch.rand(n, d, generator=g, dtype=torch.float64) * 2 - 1
        value, err = l1_rademacher(X, draws=500, seed=1)
        assert 0 < value <= massart_bound(n, d)
        assert err < 0.1 * value
    t = a_priori_terms(2.0, 50, 400, 10, lam=4.0, delta=0.1)
    assert t.approximation == pytest.approx(4.0 / 50)
    assert t.estimation == pytest.approx(4.0 * 2.0 * math.sqrt(math.log(20) / 400))
    assert t.confidence == pytest.approx(math.sqrt(math.log(400 / 0.1) / 400))
    assert t.total == pytest.approx(t.approximation + t.estimation + t.confidence)
    for bad in (lambda: massart_bound(0, 3), lambda: rademacher_bound(-1.0, 10, 3),
                lambda: a_priori_terms(1.0, 0, 10, 3), lambda: a_priori_terms(1.0, 5, 0, 3),
                lambda: a_priori_terms(1.0, 5, 10, 3, lam=-1.0),
                lambda: a_priori_terms(1.0, 5, 10, 3, delta=1.0),
                lambda: l1_rademacher(torch.zeros(0, 3))):
        with pytest.raises(ArgumentValueError):
            bad()


def test_penalty_weight_scalings():
    assert penalty_weight(2.0, 100, 10) == pytest.approx(2.0 * math.sqrt(math.log(20) / 100))
    assert penalty_weight(2.0, 100, 784, "code") == pytest.approx(2.0 * math.log10(784) / 100)
    with pytest.raises(ArgumentValueError, match="lam"):
        penalty_weight(-0.1, 10, 3)
    with pytest.raises(ArgumentValueError, match="n"):
        penalty_weight(1.0, 0, 3)
    with pytest.raises(ArgumentValueError, match="scaling"):
        penalty_weight(1.0, 10, 3, "other")


def _ridge_data(n=200, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, d, generator=g, dtype=torch.float64) * 2 - 1
    w = torch.tensor([0.5, 0.3, 0.0, 0.0], dtype=torch.float64)[:d]
    return X, torch.relu(X @ w + 0.2)  # one ridge, ‖f‖_B = 0.5 + 0.3 + 0.2 = 1 exactly


def test_regularized_fit_decreases_objective_and_shrinks():
    X, y = _ridge_data()
    norms = []
    for lam in (0.0, 0.3, 1.0, 3.0):
        fit = path_norm_regularized_fit(X, y, width=20, lam=lam, steps=400, seed=0)
        assert fit.objective[-1] < fit.objective[0]
        assert fit.weight == pytest.approx(penalty_weight(lam, 200, 4))
        J = fit.train_risk + fit.weight * fit.path_norm
        assert float(fit.objective[-1]) == pytest.approx(J, rel=1e-9)
        norms.append(fit.path_norm)
    assert all(a > b for a, b in itertools.pairwise(norms)), norms
    gd = path_norm_regularized_fit(X, y, width=20, lam=0.3, steps=300, lr=0.05, optimizer="gd")
    assert gd.objective[-1] < gd.objective[0]
    for kwargs in ({"width": 0}, {"width": 5, "lam": -1.0}, {}, {"width": 5, "steps": 0},
                   {"width": 5, "optimizer": "sgd"},
                   {"model": nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 1))}):
        with pytest.raises(ArgumentValueError):
            path_norm_regularized_fit(X, y, **kwargs)
    with pytest.raises(ArgumentValueError, match="shape"):
        path_norm_regularized_fit(X[:0], y[:0], width=3)


def test_barron_norm_from_samples_single_ridge():
    X, y = _ridge_data(n=400)
    estimate, fit = barron_norm_from_samples(X, y, width=32, lam=0.02, steps=1500)
    assert fit.train_risk < 1e-3
    assert 0.8 <= estimate <= 1.3  # the exact norm is 1
