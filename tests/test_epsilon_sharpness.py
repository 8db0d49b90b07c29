"""Sharpness brackets (SAM, ASAM, m-sharpness, Keskar) against closed forms on quadratics."""

import math

import pytest
import torch
from _oracles import dense_hessian
from torch import nn

import valleys
from valleys.landscape.epsilon_sharpness import (
    adaptive_sharpness,
    box_sharpness,
    m_sharpness,
    sam_sharpness,
)


def _linear_objective(seed=0, n=40, d=5, diagonal=False, at_minimum=True):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=gen, dtype=torch.float64)
    if diagonal:  # orthogonal columns with distinct norms: a diagonal Hessian
        q, _ = torch.linalg.qr(X)
        X = q * torch.linspace(1.0, 3.0, d, dtype=torch.float64)
    y = torch.randn(n, 1, generator=gen, dtype=torch.float64)
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        if at_minimum:
            model.weight.copy_(torch.linalg.lstsq(X, y).solution.T)
        else:
            model.weight.normal_(generator=gen)
    return valleys.Objective(model, "mse", (X, y))


def _risk(obj):
    X, Y = obj.batch(torch.arange(obj.n))
    return lambda t: obj.chunk_losses(t, X, Y).mean()


def _dense(obj):
    theta = obj.parameters_vector().detach()
    H = dense_hessian(_risk(obj), theta)
    return theta, obj.gradient(theta), H


def _trust_region_max(g, H, rho):
    """max_{‖δ‖≤ρ} gᵀδ + ½δᵀHδ for H ⪰ 0 (maximum on the sphere), by the secular equation."""
    lam, V = torch.linalg.eigh(H)
    c = V.T @ g
    if float(c.abs().max()) < 1e-14:
        return 0.5 * rho**2 * float(lam[-1])
    lo, hi = float(lam[-1]) + 1e-15, float(lam[-1]) + float(c.norm()) / rho + 1.0
    for _ in range(200):  # ‖(μ − λ)⁻¹c‖ decreases in μ > λ_max
        mid = 0.5 * (lo + hi)
        if float((c / (mid - lam)).norm()) > rho:
            lo = mid
        else:
            hi = mid
    u = c / (hi - lam)
    return float(c @ u + 0.5 * (u * lam) @ u)


def test_sam_at_a_minimum_is_half_rho_squared_lambda_max():
    obj = _linear_objective()
    _, g, H = _dense(obj)
    assert float(g.norm()) < 1e-10
    rho = 0.3
    exact = 0.5 * rho**2 * float(torch.linalg.eigvalsh(H)[-1])
    out = sam_sharpness(obj, rho, hessian_lipschitz=0.0)
    assert out.certified and out.kind == "sam"
    assert out.lower == pytest.approx(exact, rel=1e-9)
    assert out.upper == pytest.approx(exact, rel=1e-6)
    assert float(out.delta.norm()) <= rho * (1 + 1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sam_away_from_a_minimum_brackets_the_trust_region_maximum(seed):
    obj = _linear_objective(seed, at_minimum=False)
    theta, g, H = _dense(obj)
    rho = 0.5
    exact = _trust_region_max(g, H, rho)
    out = sam_sharpness(obj, rho, hessian_lipschitz=0.0, steps=60)
    assert out.lower <= exact * (1 + 1e-12)
    assert out.upper >= exact * (1 - 1e-12)
    assert out.lower == pytest.approx(exact, rel=1e-4)
    # The lower bound is achieved by the returned δ.
    achieved = float(obj.loss(theta + out.delta) - obj.loss(theta))
    assert achieved == pytest.approx(out.lower, rel=1e-12)


def test_gradient_lipschitz_bound_and_the_uncertified_default():
    obj = _linear_objective(3, at_minimum=False)
    _, g, H = _dense(obj)
    beta = float(torch.linalg.eigvalsh(H)[-1])
    rho = 0.2
    exact = _trust_region_max(g, H, rho)
    out = sam_sharpness(obj, rho, gradient_lipschitz=beta)
    assert out.certified
    assert out.upper == pytest.approx(rho * float(g.norm()) + 0.5 * beta * rho**2, rel=1e-12)
    assert out.lower <= exact <= out.upper
    plain = sam_sharpness(obj, rho)
    assert not plain.certified and "hessian_lipschitz" in plain.note


def test_asam_at_a_minimum_uses_the_scaled_hessian():
    obj = _linear_objective(4)
    theta, _, H = _dense(obj)
    eta, rho = 0.1, 0.4
    T = theta.abs() + eta
    exact = 0.5 * rho**2 * float(torch.linalg.eigvalsh(T[:, None] * H * T[None, :])[-1])
    out = adaptive_sharpness(obj, rho, eta=eta, hessian_lipschitz=0.0)
    assert out.kind == "asam"
    assert out.lower == pytest.approx(exact, rel=1e-9)
    assert out.upper == pytest.approx(exact, rel=1e-6)
    assert float((out.delta / T).norm()) <= rho * (1 + 1e-12)


def test_box_sharpness_with_a_diagonal_hessian_is_the_corner_value():
    obj = _linear_objective(5, diagonal=True)
    theta, _, H = _dense(obj)
    assert float((H - torch.diag(torch.diag(H))).abs().max()) < 1e-12
    eps = 0.05
    w = eps * (theta.abs() + 1)
    exact = 0.5 * float((torch.diag(H) * w**2).sum())
    out = box_sharpness(obj, eps, hessian_lipschitz=0.0)
    assert out.lower == pytest.approx(exact, rel=1e-10)
    assert out.lower <= out.upper * (1 + 1e-12)
    loss = float(obj.loss(theta))
    assert out.keskar[0] == pytest.approx(100 * exact / (1 + loss), rel=1e-10)
    assert bool((out.delta.abs() <= w * (1 + 1e-12)).all())


def test_m_sharpness_with_one_batch_of_everything_equals_sam():
    obj = _linear_objective(6, at_minimum=False)
    full = sam_sharpness(obj, 0.3, hessian_lipschitz=0.0)
    one = m_sharpness(obj, 0.3, m=obj.n, hessian_lipschitz=0.0)
    assert one.lower == pytest.approx(full.lower, rel=1e-9)
    assert one.upper == pytest.approx(full.upper, rel=1e-9)


def test_m_sharpness_is_the_mean_of_the_batch_closed_forms():
    obj = _linear_objective(7, n=40)
    theta = obj.parameters_vector().detach()
    X, y = obj.batch(torch.arange(obj.n))
    m, rho = 10, 0.25
    order = torch.randperm(obj.n, generator=torch.Generator().manual_seed(0))
    expected = []
    for b in range(obj.n // m):
        idx = order[b * m:(b + 1) * m]
        piece = valleys.Objective(obj.model, "mse", (X[idx], y[idx]))
        g = piece.gradient(theta)
        H = dense_hessian(_risk(piece), theta)
        expected.append(_trust_region_max(g, H, rho))
    out = m_sharpness(obj, rho, m=m, hessian_lipschitz=0.0, steps=60)
    assert out.lower == pytest.approx(sum(expected) / len(expected), rel=1e-4)
    assert out.lower <= sum(expected) / len(expected) * (1 + 1e-12) <= out.upper


def test_nonquadratic_lower_bound_is_achieved_and_feasible():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(30, 3, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 2, (30,), generator=gen)
    obj = valleys.Objective(model, "ce", (X, y))
    out = sam_sharpness(obj, 0.1, steps=10)
    theta = obj.parameters_vector().detach()
    assert float(out.delta.norm()) <= 0.1 * (1 + 1e-12)
    assert float(obj.loss(theta + out.delta) - obj.loss(theta)) == pytest.approx(out.lower)
    assert out.lower > 0 and math.isfinite(out.upper)
    assert out.gradient_evaluations == 1 + 3 * 10 and out.matvecs > 0


@pytest.mark.parametrize("call, match", [
    (lambda o: sam_sharpness(o, 0.0), "rho"),
    (lambda o: sam_sharpness(o, float("nan")), "rho"),
    (lambda o: sam_sharpness(o, 0.1, hessian_lipschitz=-1.0), "hessian_lipschitz"),
    (lambda o: sam_sharpness(o, 0.1, steps=0), "steps"),
    (lambda o: adaptive_sharpness(o, 0.1, eta=-0.1), "eta"),
    (lambda o: box_sharpness(o, -1e-3), "epsilon"),
    (lambda o: m_sharpness(o, 0.1, m=10_000), "exceeds"),
])
def test_bad_arguments_are_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call(_linear_objective())


def test_not_an_objective():
    with pytest.raises(TypeError, match=r"valleys\.Objective"):
        sam_sharpness(nn.Linear(2, 1), 0.1)
