"""The Gram (NTK) path at an interpolating square-loss minimum, against the operator path."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import interpolating_problem
from torch import nn

import valleys
from valleys.stability import (
    gram_matrix,
    gram_sharpness_nonuniformity,
    max_stable_lr_analysis,
)

F64 = torch.float64


@pytest.fixture(scope="module")
def interpolating():
    return interpolating_problem()


@pytest.mark.parametrize(
    ("method", "form"),
    [("linear-layers", "factored"), ("linear-layers", "dense"), ("jacobian", "dense")],
)
def test_gram_matches_operators_and_dense(interpolating, method, form):
    obj, oracle = interpolating
    a = float(torch.linalg.eigvalsh(oracle["H"])[-1])
    s = float(torch.linalg.eigvalsh(oracle["Sigma"])[-1]) ** 0.5
    a_op = valleys.sharpness(obj, tol=1e-10)
    s_op = valleys.nonuniformity(obj, tol=1e-10)
    for batch_size in (1, 3, obj.n):
        g = gram_sharpness_nonuniformity(obj, batch_size=batch_size, method=method, form=form)
        assert (g.method, g.form) == (method, form) and g.interpolating and g.converged
        assert g.gram_size == obj.n * 2
        assert g.sharpness == pytest.approx(a, rel=1e-8)
        assert g.sharpness == pytest.approx(a_op, rel=1e-6)
        assert g.nonuniformity == pytest.approx(s, rel=1e-8)
        assert g.nonuniformity == pytest.approx(s_op, rel=1e-6)
        lr = max_stable_lr_analysis(obj, batch_size, tol=1e-10).lr
        assert g.max_stable_lr == pytest.approx(lr, rel=1e-6)
    assert g.to_dict()["max_residual"] < 1e-9


def test_gram_matrix_is_jjt(interpolating):
    obj, _ = interpolating
    G1, r1, m1 = gram_matrix(obj, method="linear-layers")
    G2, r2, m2 = gram_matrix(obj, method="jacobian")
    assert (m1, m2) == ("linear-layers", "jacobian")
    assert torch.allclose(G1, G2, atol=1e-12, rtol=1e-10)
    assert torch.allclose(r1, r2) and r1.shape == (obj.n, 2)
    # H = JᵀJ/n at interpolation: trace(H) = trace(G)/n.
    H = valleys.hessian(obj).to_dense()
    assert float(torch.trace(G1)) / obj.n == pytest.approx(float(torch.trace(H)), rel=1e-8)


def test_gram_flags_non_interpolating_point(interpolating):
    obj, _ = interpolating
    theta = obj.parameters_vector() + 1e-2
    with pytest.warns(RuntimeWarning, match="not an interpolating minimum"):
        g = gram_sharpness_nonuniformity(obj, theta=theta)
    assert not g.interpolating and g.max_residual > 1e-6 and g.max_stable_lr is None


def test_gram_refuses_other_losses_and_bad_methods(interpolating):
    obj, _ = interpolating
    ce = valleys.Objective(
        nn.Linear(3, 2).double(), "ce", (torch.randn(4, 3, dtype=F64), torch.tensor([0, 1, 0, 1]))
    )
    with pytest.raises(ValueError, match="square loss"):
        gram_sharpness_nonuniformity(ce)
    with pytest.raises(ValueError, match="method must be"):
        gram_matrix(obj, method="ntk")
    with pytest.raises(ValueError, match="form must be"):
        gram_sharpness_nonuniformity(obj, form="sparse")
    with pytest.raises(ValueError, match="form='factored' needs method='linear-layers'"):
        gram_sharpness_nonuniformity(obj, method="jacobian", form="factored")
    with pytest.raises(ValueError, match="exceeds the number of samples"):
        gram_sharpness_nonuniformity(obj, batch_size=obj.n + 1)


def test_gram_falls_back_for_non_linear_parameters():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)
            self.scale = nn.Parameter(torch.ones(2))

        def forward(self, x):
            return self.lin(x) * self.scale

    model = Scaled().double()
    X = torch.randn(5, 3, dtype=F64)
    obj = valleys.Objective(model, "mse", (X, torch.zeros(5, 2, dtype=F64)))
    _, _, method = gram_matrix(obj)
    assert method == "jacobian"
    assert gram_sharpness_nonuniformity(obj, residual_tol=math.inf).form == "dense"
    with pytest.raises(ValueError, match=r"linear-layers.*does not apply"):
        gram_sharpness_nonuniformity(obj, form="factored")
    with pytest.raises(ValueError, match=r"linear-layers.*does not apply"):
        gram_matrix(obj, method="linear-layers")


def test_gram_detects_tied_weights_and_falls_back():
    """A Linear weight also used outside its call breaks J rows = (δ aᵀ, δ): the layer-factor
    path would give a wrong G, so it is refused and the Jacobian path is taken."""

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 2)

        def forward(self, x):
            h = torch.tanh(self.a(x))
            return self.b(h) + 0.5 * nn.functional.linear(h, self.b.weight)

    torch.manual_seed(0)
    X = torch.randn(6, 3, dtype=F64)
    obj = valleys.Objective(Tied().double(), "mse", (X, torch.zeros(6, 2, dtype=F64)))
    G, _, method = gram_matrix(obj)
    assert method == "jacobian"
    J = torch.func.jacrev(lambda t: obj.forward(t, X))(obj.parameters_vector()).reshape(12, -1)
    torch.testing.assert_close(G, J @ J.T, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"outside their nn\.Linear calls"):
        gram_matrix(obj, method="linear-layers")


def test_gram_with_singular_g_matches_the_jacobian_oracle():
    """nK > p: G = JJᵀ is singular, and the non-uniformity comes from Lanczos in the (degenerate)
    G inner product. Gauss–Newton values (residual terms dropped) against a dense oracle built
    from J: Σ = Jᵀ(D − G/n)J/n, H = JᵀJ/n."""
    torch.manual_seed(1)
    n, K = 40, 3
    X = torch.randn(n, 3, dtype=F64)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, K)).double()  # p = 31
    obj = valleys.Objective(model, "mse", (X, torch.zeros(n, K, dtype=F64)))
    theta = obj.parameters_vector()
    J = torch.func.jacrev(lambda t: obj.forward(t, X))(theta).reshape(n * K, -1)
    assert J.shape[1] < n * K
    G = J @ J.T
    D = torch.block_diag(*[G[i * K : (i + 1) * K, i * K : (i + 1) * K] for i in range(n)])
    sigma = J.T @ (D - G / n) @ J / n
    s = float(torch.linalg.eigvalsh(sigma)[-1]) ** 0.5
    a = float(torch.linalg.eigvalsh(J.T @ J)[-1]) / n
    for method, form in [("linear-layers", "factored"), ("jacobian", "dense")]:
        with pytest.warns(RuntimeWarning, match="not an interpolating minimum"):
            g = gram_sharpness_nonuniformity(obj, batch_size=4, method=method, form=form)
        assert g.converged
        assert g.sharpness == pytest.approx(a, rel=1e-9)
        assert g.nonuniformity == pytest.approx(s, rel=1e-9)
    with pytest.raises(ValueError, match="max_steps"):
        gram_sharpness_nonuniformity(obj, max_steps=0, residual_tol=math.inf)
