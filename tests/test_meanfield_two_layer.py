"""Two-layer nets: exact gradients vs autograd, the mean-field velocity, conserved balancedness,
energy decay, the random-feature closed form, lazy vs mean-field training, norms, and the
Mei–Montanari–Nguyen radial PDE against quadrature and particles."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import integrate

from valleys.meanfield import (
    ParticleMeasure,
    a_posteriori_bound,
    a_priori_bound,
    autograd_field,
    balancedness,
    barron_norm,
    init_two_layer,
    mean_field_field,
    mmn,
    path_norm,
    rademacher_bound,
    simulate,
    train_two_layer,
    two_layer_gradients,
    two_layer_predict,
    two_layer_risk,
)


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def data(n=40, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.sin(X[:, 0]) + 0.5 * X[:, 1].abs()
    return X, y


def autograd_risk(a, W, X, y, scaling, activation, weights=None):
    m = a.shape[0]
    act = torch.relu if activation == "relu" else torch.tanh
    c = (weights / weights.sum() if weights is not None else torch.full_like(a, 1 / m)) \
        if scaling == "mean-field" else torch.full_like(a, 1 / math.sqrt(m))
    f = act(X @ W.T) @ (c * a)
    return 0.5 * (f - y).pow(2).mean()


@pytest.mark.parametrize("scaling", ["mean-field", "ntk"])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_gradients_equal_autograd(scaling, activation):
    X, y = data()
    a, W = init_two_layer(7, 5, seed=1)
    a_, W_ = a.clone().requires_grad_(True), W.clone().requires_grad_(True)
    loss = autograd_risk(a_, W_, X, y, scaling, activation)
    ga, gW = torch.autograd.grad(loss, (a_, W_))
    for chunk in (None, 3):
        g = two_layer_gradients(a, W, X, y, scaling=scaling, activation=activation,
                                chunk_size=chunk)
        assert g.risk == pytest.approx(float(loss.detach()), rel=1e-12)
        torch.testing.assert_close(g.grad_a, ga, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(g.grad_W, gW, rtol=1e-10, atol=1e-14)
    assert two_layer_risk(a, W, X, y, scaling=scaling, activation=activation) == \
        pytest.approx(float(loss.detach()), rel=1e-12)


def test_weighted_gradients_equal_autograd():
    X, y = data(seed=2)
    a, W = init_two_layer(6, 5, seed=3)
    w = torch.rand(6, generator=torch.Generator().manual_seed(4), dtype=torch.float64) + 0.1
    a_, W_ = a.clone().requires_grad_(True), W.clone().requires_grad_(True)
    ga, gW = torch.autograd.grad(autograd_risk(a_, W_, X, y, "mean-field", "relu", w), (a_, W_))
    g = two_layer_gradients(a, W, X, y, weights=w)
    torch.testing.assert_close(g.grad_a, ga)
    torch.testing.assert_close(g.grad_W, gW)


def test_mean_field_velocity_is_m_times_autograd_and_matches_the_generic_field():
    X, y = data(seed=5)
    m = 9
    a, W = init_two_layer(m, 5, seed=6)
    theta = torch.cat([a[:, None], W], dim=1)
    value = mean_field_field(X, y)(ParticleMeasure(theta))
    t_ = theta.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(autograd_risk(t_[:, 0], t_[:, 1:], X, y, "mean-field",
                                                "relu"), t_)
    torch.testing.assert_close(value.velocity, m * grad, rtol=1e-10, atol=1e-13)

    def risk_of_measure(x, p):  # R(Σ p_j δ_{θ_j}) written generically for autograd_field
        f = torch.relu(X @ x[:, 1:].T) @ (p * x[:, 0])
        return 0.5 * (f - y).pow(2).mean()

    generic = autograd_field(risk_of_measure)(ParticleMeasure(theta))
    torch.testing.assert_close(value.velocity, generic.velocity, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(value.first_variation, generic.first_variation, rtol=1e-10,
                               atol=1e-13)


def test_one_gd_step_changes_balancedness_by_exactly_h_squared_terms():
    X, y = data(seed=7)
    a, W = init_two_layer(8, 5, seed=8)
    h = 0.3
    g = two_layer_gradients(a, W, X, y)
    m = a.shape[0]
    run = train_two_layer(a, W, X, y, lr=h, steps=1, record_every=1)
    va, vW = m * g.grad_a, m * g.grad_W  # the mean-field velocity
    expected = h * h * (va.pow(2) - vW.pow(2).sum(1))
    torch.testing.assert_close(balancedness(run.a, run.W) - balancedness(a, W), expected,
                               rtol=1e-8, atol=1e-14)


def test_balancedness_drift_over_a_fixed_time_is_first_order_in_the_step():
    # Per step O(h²), so over a fixed flow time T the drift is O(h): halving h halves it.
    X, y = data(seed=9)
    a, W = init_two_layer(16, 5, seed=10)
    b0 = balancedness(a, W)
    drifts = []
    for h in (0.1, 0.05, 0.025):
        run = train_two_layer(a, W, X, y, lr=h, steps=round(2.0 / h), record_every=1000)
        drifts.append(float((balancedness(run.a, run.W) - b0).abs().max()))
    assert drifts[0] / drifts[1] == pytest.approx(2.0, rel=0.2)
    assert drifts[1] / drifts[2] == pytest.approx(2.0, rel=0.2)
    assert drifts[2] < 1e-2 * float(b0.abs().max())


def test_risk_is_non_increasing_for_small_steps_and_tanh_too():
    X, y = data(seed=11)
    for activation in ("relu", "tanh"):
        a, W = init_two_layer(50, 5, seed=12)
        run = train_two_layer(a, W, X, y, lr=0.05, steps=200, record_every=1,
                              activation=activation)
        risks = run.series("risk")
        assert all(b <= a_ + 1e-13 for a_, b in itertools.pairwise(risks))
        assert risks[-1] < 0.7 * risks[0]


def test_random_features_follow_the_closed_form_kernel_iteration():
    # W frozen: r_{k+1} = (I − η K) r_k with K = Φ Φᵀ / (n m), Φ = σ(X Wᵀ).
    X, y = data(seed=13)
    m, n, lr, steps = 30, X.shape[0], 0.5, 25
    a, W = init_two_layer(m, 5, seed=14)
    Phi = torch.relu(X @ W.T)
    K = Phi @ Phi.T / (n * m)
    r = Phi @ a / m - y
    for _ in range(steps):
        r = r - lr * K @ r
    run = train_two_layer(a, W, X, y, lr=lr, steps=steps, train_first_layer=False,
                          record_every=steps)
    torch.testing.assert_close(run.W, W)
    assert run.final_risk == pytest.approx(float(0.5 * r.pow(2).mean()), rel=1e-10)


def test_ntk_scaling_is_lazy_and_mean_field_is_not():
    # Relative movement of the first layer over the same flow time: ~1/sqrt(m) in the NTK
    # scaling, O(1) in the mean-field scaling.
    X, y = data(n=30, seed=15)
    moves = {}
    for scaling in ("ntk", "mean-field"):
        for m in (64, 16384):
            a, W = init_two_layer(m, 5, seed=16)
            run = train_two_layer(a, W, X, y, lr=0.2, steps=50, scaling=scaling,
                                  record_every=50)
            assert run.status == "completed"
            moves[scaling, m] = float((run.W - W).norm() / W.norm())
    assert moves["ntk", 64] / moves["ntk", 16384] == pytest.approx(16.0, rel=0.4)
    assert moves["mean-field", 64] / moves["mean-field", 16384] == pytest.approx(1.0, rel=0.2)
    assert moves["mean-field", 16384] > 0.3


def test_mean_field_loss_curves_converge_in_width():
    X, y = data(n=50, seed=17)
    curves = {}
    for m in (50, 400, 3200):
        a, W = init_two_layer(m, 5, seed=18)
        curves[m] = np.array(train_two_layer(a, W, X, y, lr=0.1, steps=100,
                                             record_every=10).series("risk"))
    gap_small = np.abs(curves[50] - curves[3200]).max()
    gap_mid = np.abs(curves[400] - curves[3200]).max()
    assert gap_mid < gap_small


def test_training_divergence_is_data_and_langevin_is_seeded():
    X, y = data(seed=19)
    a, W = init_two_layer(10, 5, seed=20)
    run = train_two_layer(a, W, X, y, lr=1e3, steps=50, record_every=1)
    assert run.status == "diverged" and run.steps < 50
    r1 = train_two_layer(a, W, X, y, lr=0.05, steps=20, temperature=0.01, seed=3)
    r2 = train_two_layer(a, W, X, y, lr=0.05, steps=20, temperature=0.01, seed=3)
    r3 = train_two_layer(a, W, X, y, lr=0.05, steps=20, temperature=0.01, seed=4)
    assert torch.equal(r1.a, r2.a) and not torch.equal(r1.a, r3.a)


def test_bad_shapes_and_names_are_refused():
    X, _y = data()
    a, W = init_two_layer(4, 5)
    with pytest.raises(ValueError, match="X must have shape"):
        two_layer_predict(a, W, X[:, :3])
    with pytest.raises(ValueError, match="unknown scaling"):
        two_layer_predict(a, W, X, scaling="standard")
    with pytest.raises(ValueError, match="unknown activation"):
        two_layer_predict(a, W, X, activation="gelu")
    with pytest.raises(ValueError, match="dtype"):
        two_layer_predict(a.float(), W, X)


def test_the_flow_stepper_equals_training():
    X, y = data(seed=21)
    a, W = init_two_layer(12, 5, seed=22)
    run = train_two_layer(a, W, X, y, lr=0.1, steps=5, record_every=5)
    flow = simulate(ParticleMeasure(torch.cat([a[:, None], W], 1)), mean_field_field(X, y),
                    lr=0.1, steps=5)
    torch.testing.assert_close(flow.measure.positions[:, 0], run.a)
    torch.testing.assert_close(flow.measure.positions[:, 1:], run.W)


# -- norms ----------------------------------------------------------------------------------
def test_path_and_barron_norms_are_invariant_under_relu_rescaling():
    X, _ = data()
    a, W = init_two_layer(20, 5, seed=23)
    kappa = torch.rand(20, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    kappa = kappa + 0.1
    a2, W2 = a / kappa, W * kappa[:, None]
    torch.testing.assert_close(two_layer_predict(a2, W2, X), two_layer_predict(a, W, X))
    assert path_norm(a2, W2) == pytest.approx(path_norm(a, W), rel=1e-12)
    assert barron_norm(a2, W2) == pytest.approx(barron_norm(a, W), rel=1e-12)
    assert path_norm(a, W) == pytest.approx(float((a.abs() * W.abs().sum(1)).mean()))
    assert path_norm(a, W) <= barron_norm(a, W, p=2)
    # NTK-scaled nets are measured in their mean-field form: f = (1/m) Σ (sqrt(m) a_j) σ(·).
    assert path_norm(a, W, scaling="ntk") == pytest.approx(math.sqrt(20) * path_norm(a, W))


def test_rademacher_bound_holds_on_a_sampled_class():
    # Sup over the vertices ±Q σ(±x_k) of the ℓ1 ball is a lower bound on Rad_n(F_Q).
    n, d, Q = 200, 4, 1.5
    g = torch.Generator().manual_seed(0)
    X = torch.rand(n, d, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randint(0, 2, (500, n), generator=g).double() * 2 - 1
    feats = torch.cat([torch.relu(X), torch.relu(-X)], dim=1)  # (n, 2d)
    empirical = float((eps @ feats).abs().max(dim=1).values.mean()) * Q / n
    bound = rademacher_bound(Q, n, d)
    assert empirical <= bound
    assert bound == pytest.approx(2 * Q * math.sqrt(2 * math.log(2 * d) / n))


def test_bounds_are_sums_of_their_terms_and_shrink_with_data():
    terms = a_priori_bound(1.0, m=100, n=1000, d=10)
    assert terms["total"] == pytest.approx(terms["approximation"] + terms["estimation"]
                                           + terms["confidence"])
    assert terms["approximation"] == pytest.approx(1 / 200)
    assert a_priori_bound(1.0, 100, 10_000, 10)["total"] < terms["total"]
    assert a_posteriori_bound(0.1, 1.0, 10_000, 10) < a_posteriori_bound(0.1, 1.0, 1000, 10)
    with pytest.raises(ValueError, match="delta"):
        a_posteriori_bound(0.1, 1.0, 100, 10, delta=2.0)


# -- Mei–Montanari–Nguyen -------------------------------------------------------------------
def test_hermite_moments_match_quadrature():
    from numpy.polynomial.hermite_e import hermeval

    P = mmn.GaussianProblem()
    for t in (0.3, 1.1, 2.7):
        E = mmn.hermite_moments(torch.tensor([t], dtype=torch.float64), P, 5)[0].numpy()
        for k in range(6):
            c = np.zeros(k + 1)
            c[k] = 1

            def f(g, k=k, c=c, t=t):
                s = float(P.sigma(torch.tensor(t * g, dtype=torch.float64)))
                return s * hermeval(g, c) * math.exp(-g * g / 2) / math.sqrt(2 * math.pi)

            ref = integrate.quad(f, -12, 12, points=[P.t1 / t, P.t2 / t], limit=200)[0]
            assert E[k] == pytest.approx(ref, abs=1e-7)


@pytest.mark.filterwarnings("ignore::scipy.integrate.IntegrationWarning")
def test_radial_interaction_matches_quadrature_over_angles():
    # Ū(r, r') = ½ Σ_s E_c K_s(c), K_s(c) = E[σ(s r G1) σ(s r' G2)] with corr(G1, G2) = c and
    # c the cosine of a uniform angle on S^{d−1} (density ∝ (1 − c²)^{(d−3)/2}): computed here
    # by 2-D Gauss–Hermite and adaptive quadrature in c, independently of the Hermite series.
    d, r, rp = 6, 0.9, 1.4
    P = mmn.GaussianProblem(d=d)
    _, U = mmn.radial_potentials(torch.tensor([r], dtype=torch.float64),
                                 torch.tensor([rp], dtype=torch.float64), P, max_order=12)
    nodes, w = np.polynomial.hermite_e.hermegauss(200)
    w = w / w.sum()

    def sig(t):
        return P.s0 + P.slope * (np.clip(t, P.t1, P.t2) - P.t1)

    def K(c, s):
        g2 = c * nodes[:, None] + math.sqrt(max(1 - c * c, 0.0)) * nodes[None, :]
        return float((w[:, None] * w[None, :] * sig(s * r * nodes[:, None])
                      * sig(s * rp * g2)).sum())

    def density(c):
        return (1 - c * c) ** ((d - 3) / 2)

    Z = integrate.quad(density, -1, 1)[0]
    ref = sum(0.5 * integrate.quad(lambda c, s=s: K(c, s) * density(c), -1, 1, limit=50)[0] / Z
              for s in (1 + P.delta, 1 - P.delta))
    assert float(U[0, 0]) == pytest.approx(ref, abs=0.02)  # quadrature of a kinked σ: ~5e-3


def test_pde_conserves_mass_and_its_risk_decreases():
    P = mmn.GaussianProblem()
    pde = mmn.solve_pde(P, r0=1.0, times=[0.0, 0.5, 1.0, 2.0], cells=200)
    torch.testing.assert_close(pde.masses.sum(1), torch.ones(4, dtype=torch.float64))
    assert bool((pde.masses >= 0).all())
    assert all(b < a for a, b in zip(pde.risk.tolist(), pde.risk[1:].tolist(), strict=False))


def test_particles_follow_the_radial_pde():
    P = mmn.GaussianProblem()
    times = [0.0, 0.5, 1.0]
    pde = mmn.solve_pde(P, r0=1.0, times=times, cells=300)
    part = mmn.simulate_particles(P, num_particles=300, r0=1.0, lr=0.01, times=times,
                                  batch_size=400, validation_size=2000, seed=0)
    levels = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
    q_pde = pde.quantiles(levels)
    q_part = torch.quantile(part.radii, levels, dim=1).T
    moved = float((q_pde[-1] - q_pde[0]).abs().max())
    assert moved > 0.4  # the radial law moves a lot...
    assert float((q_pde - q_part).abs().max()) < 0.1 * moved + 0.03  # ...and particles follow
