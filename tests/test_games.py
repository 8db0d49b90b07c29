"""valleys.games: the dynamics against closed forms (quadratic–bilinear, torus, sphere, RPS).

Oracles (derived in valleys.games.payoffs): the regularised equilibrium N(0, τ/a) × N(0, τ/b)
of K = xᵀAy + (a/2)|x|² − (b/2)|y|² for any A, with the discrete-time stationary variance
τ/(a(1 − ηa/2)); the quasistatic mean rate λ_min(aI + AAᵀ/b) (x slow) or λ_min(bI + AᵀA/a)
(y slow); the covariance rate 2a; the descent–ascent mean matrix [[−a, −A], [Aᵀ, −b]]; the
uniform equilibrium of translation-invariant torus games; rock–paper–scissors weights-only
mirror descent–ascent cycling while its averages converge. Statistical tolerances are several
standard errors wide at fixed seeds.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from valleys.games import (
    QuadraticBilinear,
    Sphere,
    SphereBilinear,
    TranslationGame,
    fourier_amplitude,
    gaussian_fit,
    ni_monitor,
    rock_paper_scissors,
    solve,
)

A = torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=torch.float64)
GAME = QuadraticBilinear(A, a=1.0, b=2.0)


pytestmark = pytest.mark.usefixtures("one_thread")


def _normal(n, d, seed, shift=0.0, scale=1.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return shift + scale * torch.randn(n, d, generator=g, dtype=dtype)


# -- validation ---------------------------------------------------------------------------------


def test_validation_messages():
    x, y = _normal(4, 2, 0), _normal(5, 2, 1)
    ok = dict(temperature=0.1, steps=2, lr=0.1, seed=0)
    with pytest.raises(ValueError, match=r"quasistatic.*descent-ascent.*wfr"):
        solve(GAME, x, y, "gda", **ok)
    with pytest.raises(ValueError, match="temperature"):
        solve(GAME, x, y, "wfr", **{**ok, "temperature": -1.0})
    with pytest.raises(ValueError, match="lr"):
        solve(GAME, x, y, "wfr", **{**ok, "lr": 0.0})
    with pytest.raises(ValueError, match="steps"):
        solve(GAME, x, y, "wfr", **{**ok, "steps": 0})
    with pytest.raises(ValueError, match=r"shape \(n, d\)"):
        solve(GAME, x[0], y, "wfr", **ok)
    with pytest.raises(TypeError, match="unknown option"):
        solve(GAME, x, y, "wfr", **ok, inner_step=3)
    with pytest.raises(ValueError, match="only used by method='wfr'"):
        solve(GAME, x, y, "quasistatic", **ok, x_weights=torch.full((4,), 0.25,
                                                                   dtype=torch.float64))
    with pytest.raises(ValueError, match="only used by method='quasistatic'"):
        solve(GAME, x, y, "wfr", **ok, inner_steps=3)
    with pytest.raises(ValueError, match="sum to 1"):
        solve(GAME, x, y, "wfr", **ok, x_weights=torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="unit vectors"):
        solve(SphereBilinear(torch.eye(3)), _normal(4, 3, 0), _normal(4, 3, 1), "wfr", **ok,
              x_space="sphere", y_space="sphere")
    with pytest.raises(ValueError, match=r"\(4, 5\) matrix"):
        solve(lambda a, b: (a @ b.T).sum(1), x, y, "descent-ascent", **ok)
    with pytest.raises(ValueError, match="inner_steps"):
        solve(GAME, x, y, "quasistatic", **ok, inner_steps=0)
    with pytest.raises(ValueError, match="unknown strategy space"):
        solve(GAME, x, y, "wfr", **ok, x_space="cube")


def test_seeded_reproducible_and_dtype():
    x, y = _normal(20, 2, 0), _normal(20, 2, 1)
    a = solve(GAME, x, y, "quasistatic", temperature=0.3, steps=5, lr=0.05, seed=3)
    b = solve(GAME, x, y, "quasistatic", temperature=0.3, steps=5, lr=0.05, seed=3)
    c = solve(GAME, x, y, "quasistatic", temperature=0.3, steps=5, lr=0.05, seed=4)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)
    assert a.evaluations == 5 * 11 and a.steps == 5 and a.status == "finished"
    f = solve(GAME, x.float(), y.float(), "wfr", temperature=0.3, steps=3, lr=0.05, seed=0)
    assert f.x.dtype == torch.float32 and f.x_weights.dtype == torch.float32
    assert f.x_weights.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert set(a.to_dict()) >= {"x", "y", "method", "status", "evaluations"}


def test_divergence_is_recorded():
    x, y = _normal(10, 2, 0, shift=1.0), _normal(10, 2, 1)
    result = solve(GAME, x, y, "descent-ascent", temperature=0.0, steps=2000, lr=5.0, seed=0)
    assert result.status == "diverged" and result.diverged
    assert result.steps < 2000
    assert torch.isfinite(result.x).all() and torch.isfinite(result.y).all()


def test_time_budget_stops():
    x, y = _normal(10, 2, 0), _normal(10, 2, 1)
    result = solve(GAME, x, y, "descent-ascent", temperature=0.1, steps=10**7, lr=0.01, seed=0,
                   time_budget=0.2)
    assert result.status == "time_budget" and 0 < result.steps < 10**7


# -- the quadratic–bilinear game ------------------------------------------------------------------


@pytest.mark.parametrize("method,options", [
    ("quasistatic", {"slow": "x", "inner_steps": 5, "inner_lr": 0.05}),
    ("quasistatic", {"slow": "y", "inner_steps": 5, "inner_lr": 0.05}),
    ("descent-ascent", {}),
    ("wfr", {"mirror_lr": 0.0}),
])
def test_quadratic_equilibrium_covariances(method, options):
    """Stationary covariances τ/(c(1 − ηc/2)) ≈ τ/a, τ/b and zero means, for any A."""
    n, tau, lr = 300, 0.5, 0.05
    x0, y0 = _normal(n, 2, 0, shift=2.0), _normal(n, 2, 1, shift=-1.0)
    result = solve(GAME, x0, y0, method, temperature=tau, steps=100, lr=lr, seed=0, **options)
    for z, player in ((result.x, "x"), (result.y, "y")):
        mean, cov = gaussian_fit(z)
        step = options.get("inner_lr", lr) if (method == "quasistatic"
                                              and options["slow"] != player) else lr
        expected = GAME.discrete_variance(tau, step, player)
        # sample-variance standard error ~ v sqrt(2/n) per coordinate (0.058 v for the mean
        # of the two at n = 300); the mean's s.e. is sqrt(v/n).
        assert torch.diag(cov).mean().item() == pytest.approx(expected, rel=0.2)
        assert abs(cov[0, 1].item()) < 0.15 * expected
        assert mean.abs().max().item() < 5 * math.sqrt(expected / n) + 0.02


@pytest.mark.parametrize("slow", ["x", "y"])
def test_quasistatic_mean_rate(slow):
    """τ = 0, converged inner loop: the slow mean decays at λ_min(aI + AAᵀ/b) (x slow)."""
    M = GAME.quasistatic_mean_matrix(slow)
    _, vectors = torch.linalg.eigh(M)
    direction = vectors[:, 0]
    lr, steps = 0.01, 100
    slow0 = _normal(5, 2, 0, scale=0.1) - (_normal(5, 2, 0, scale=0.1).mean(0)) + 2 * direction
    fast0 = torch.zeros(5, 2, dtype=torch.float64)
    x0, y0 = (slow0, fast0) if slow == "x" else (fast0, slow0)
    result = solve(GAME, x0, y0, "quasistatic", temperature=0.0, steps=steps, lr=lr, seed=0,
                   slow=slow, inner_steps=60, inner_lr=0.1)
    final = (result.x if slow == "x" else result.y).mean(0)
    rate = -math.log(final.norm().item() / 2.0) / (lr * steps)
    assert rate == pytest.approx(GAME.quasistatic_mean_rate(slow), rel=0.03)
    assert final @ direction > 0  # no rotation: the mean decays along the eigenvector


def test_quasistatic_covariance_rate():
    """Σ_x(t) − τ/a decays at 2a under the quasistatic flow."""
    tau, lr, steps = 0.05, 0.01, 50
    x0, y0 = _normal(200, 2, 0, scale=2.0), _normal(200, 2, 1, scale=0.1)
    x0 = x0 - x0.mean(0)
    result = solve(GAME, x0, y0, "quasistatic", temperature=tau, steps=steps, lr=lr, seed=0,
                   inner_steps=5, inner_lr=0.1)
    start = torch.trace(gaussian_fit(x0)[1]).item() / 2 - tau / GAME.a
    end = torch.trace(gaussian_fit(result.x)[1]).item() / 2 - tau / GAME.a
    rate = -math.log(end / start) / (lr * steps)
    assert rate == pytest.approx(GAME.covariance_rate("x"), rel=0.05)


def test_descent_ascent_mean_dynamics():
    """τ = 0: the means follow exp(Jt) with J = [[−aI, −A], [Aᵀ, −bI]] (rotation + decay)."""
    lr, steps = 0.002, 500
    x0, y0 = _normal(5, 2, 0, shift=1.0), _normal(5, 2, 1, shift=-0.5)
    result = solve(GAME, x0, y0, "descent-ascent", temperature=0.0, steps=steps, lr=lr, seed=0)
    m0 = torch.cat([x0.mean(0), y0.mean(0)])
    predicted = torch.linalg.matrix_exp(GAME.descent_ascent_mean_matrix() * lr * steps) @ m0
    got = torch.cat([result.x.mean(0), result.y.mean(0)])
    assert (got - predicted).norm().item() < 0.02 * m0.norm().item()


def test_ni_monitor_records_curve():
    x0, y0 = _normal(50, 2, 0, shift=1.5), _normal(50, 2, 1)
    result = solve(GAME, x0, y0, "descent-ascent", temperature=0.0, steps=40, lr=0.05, seed=0,
                   monitor=ni_monitor(GAME, restarts=4, steps=30), record_every=10)
    steps = [h["step"] for h in result.history]
    assert steps == [0, 10, 20, 30, 40]
    for h in result.history:
        assert h["ni_error"] == pytest.approx(h["x_exploitability"] + h["y_exploitability"])
    assert result.history[-1]["ni_error"] < result.history[0]["ni_error"]


# -- torus and sphere -----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["quasistatic", "descent-ascent", "wfr"])
def test_torus_translation_game_flattens(method):
    """Uniform × uniform is the regularised equilibrium; Fourier modes fall to O(n^{-1/2})."""
    n, tau = 200, 0.5
    game = TranslationGame("cos")
    g = torch.Generator().manual_seed(0)
    x0 = 0.3 * torch.randn(n, 1, generator=g, dtype=torch.float64) + 1.0
    y0 = 0.3 * torch.randn(n, 1, generator=g, dtype=torch.float64) + 4.0
    options = {"x_space": "torus", "y_space": "torus"}
    if method == "quasistatic":
        options.update(inner_steps=3)
    result = solve(game, x0, y0, method, temperature=tau, steps=150, lr=0.1, seed=0, **options)
    assert ((result.x >= 0) & (result.x < 2 * math.pi)).all()
    assert fourier_amplitude(x0) > 0.9
    # |ĉ| of n uniform points: Rayleigh with E|ĉ|² = 1/n; 4/sqrt(n) is a 1e-7 tail.
    assert fourier_amplitude(result.x, result.x_weights) < 4 / math.sqrt(n)
    assert fourier_amplitude(result.y, result.y_weights) < 4 / math.sqrt(n)


def test_sine_game_descent_ascent_cycles_quasistatic_converges():
    """K = sin(x − y), low τ: DA's clouds chase each other round the circle (pure-strategy
    cycling, slowly blurred by diffusion); the quasistatic flow of the convex F(p) flattens p."""
    n, tau, lr, steps = 100, 0.05, 0.05, 300
    game = TranslationGame("sin")
    g = torch.Generator().manual_seed(0)
    x0 = torch.remainder(0.3 * torch.randn(n, 1, generator=g, dtype=torch.float64) + 1.0,
                         2 * math.pi)
    y0 = torch.remainder(0.3 * torch.randn(n, 1, generator=g, dtype=torch.float64) + 2.5,
                         2 * math.pi)

    def phase(state):
        return {"phase": math.atan2(torch.sin(state.x).mean().item(),
                                    torch.cos(state.x).mean().item())}

    options = {"x_space": "torus", "y_space": "torus", "monitor": phase, "record_every": 5}
    da = solve(game, x0, y0, "descent-ascent", temperature=tau, steps=steps, lr=lr, seed=0,
               **options)
    qs = solve(game, x0, y0, "quasistatic", temperature=tau, steps=steps, lr=lr, seed=0,
               inner_steps=5, **options)
    turned = abs(np.unwrap([h["phase"] for h in da.history])[-1] - da.history[0]["phase"])
    start = game.ni_error(x0, y0)
    assert turned > math.pi  # measured: 6.7 rad, about a lap
    assert game.ni_error(da.x, da.y) > 0.15 * start  # measured: 0.30 (diffusion blurs)
    # E|ĉ| = sqrt(π/(4n)) per player at the uniform equilibrium; measured 0.23 vs bound 0.71
    assert game.ni_error(qs.x, qs.y) < 4 * 2 * math.sqrt(math.pi / (4 * n))


def test_sphere_stays_on_sphere_and_flattens():
    n, d = 300, 3
    space = Sphere()
    g = torch.Generator().manual_seed(0)
    x0 = space.retract(torch.randn(n, d, generator=g, dtype=torch.float64) * 0.2
                       + torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    y0 = space.uniform(n, d, generator=g)
    game = SphereBilinear(torch.eye(d, dtype=torch.float64))
    result = solve(game, x0, y0, "quasistatic", temperature=0.3, steps=100, lr=0.05, seed=0,
                   x_space="sphere", y_space="sphere", inner_steps=3)
    assert torch.allclose(result.x.norm(dim=1), torch.ones(n, dtype=torch.float64))
    assert x0.mean(0).norm().item() > 0.9
    # the mean of n uniform unit vectors in R^3 has E|m|² = 1/n.
    assert result.x.mean(0).norm().item() < 4 / math.sqrt(n)
    assert game.ni_error(result.x, result.y) < 8 / math.sqrt(n)


# -- rock–paper–scissors through weights alone -----------------------------------------------------


def _kl_uniform(w):
    return float((torch.full_like(w, 1 / 3) * torch.log((1 / 3) / w)).sum())


def _rps(lr, steps):
    game = rock_paper_scissors()
    x, y = game.pure_strategies()
    wx = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    wy = torch.tensor([0.2, 0.2, 0.6], dtype=torch.float64)

    def monitor(state):
        return {"kl": _kl_uniform(state.x_weights) + _kl_uniform(state.y_weights)}

    result = solve(game, x, y, "wfr", temperature=0.0, steps=steps, lr=lr, seed=0,
                   transport=False, x_weights=wx, y_weights=wy, monitor=monitor,
                   record_every=steps // 30)
    return game, x, result


def test_rock_paper_scissors_cycles_and_averages_converge():
    game, x, result = _rps(0.01, 3000)  # time horizon 30: several cycles
    _, _, half = _rps(0.005, 6000)      # same horizon, half the step
    assert torch.equal(result.x, x)  # positions frozen
    kl = [h["kl"] for h in result.history]
    kl_half = [h["kl"] for h in half.history]
    # Continuous mirror descent–ascent conserves KL(p*‖p) + KL(q*‖q); each Euler step adds
    # O(η²), so the drift over a fixed horizon is O(η): halving η halves it.
    assert all(b >= a - 1e-12 for a, b in itertools.pairwise(kl))  # spirals outward
    drift, drift_half = kl[-1] - kl[0], kl_half[-1] - kl_half[0]
    assert drift_half < 0.06 * kl[0]
    assert drift / drift_half == pytest.approx(2.0, rel=0.2)
    # so the last iterate never gets closer to (1/3, 1/3, 1/3)² than it started (in KL)
    assert min(kl) >= kl[0] - 1e-12 and kl[0] > 0.3
    # averages converge (like 1/T over the cycles); the last iterate does not
    _, _, long = _rps(0.01, 10000)
    err_30 = (result.x_weights_avg - 1 / 3).abs().max().item()
    err_100 = max((long.x_weights_avg - 1 / 3).abs().max().item(),
                  (long.y_weights_avg - 1 / 3).abs().max().item())
    assert err_100 < 0.02 and err_100 < err_30
    assert game.ni_error(long.x_weights_avg, long.y_weights_avg) < 0.25 * game.ni_error(
        long.x_weights, long.y_weights)


# -- snapshots (for animations) -------------------------------------------------------------------


@pytest.mark.parametrize("method,options", [
    ("quasistatic", {"inner_steps": 3}), ("descent-ascent", {}), ("wfr", {"mirror_lr": 0.5}),
])
def test_snapshots_count_shapes_and_final_state(method, options):
    x, y = _normal(6, 2, 0, shift=1.0), _normal(4, 3, 1)
    B = torch.ones(2, 3, dtype=torch.float64)
    game = QuadraticBilinear(B, a=1.0, b=2.0)
    kw = dict(temperature=0.2, steps=10, lr=0.05, seed=5, **options)
    r = solve(game, x, y, method, snapshot_every=3, **kw)
    assert [s.step for s in r.snapshots] == [0, 3, 6, 9, 10]
    per_step = options.get("inner_steps", 0) + 1
    assert [s.evaluations for s in r.snapshots] == [per_step * k for k in (0, 3, 6, 9, 10)]
    for s in r.snapshots:
        assert s.x.shape == (6, 2) and s.y.shape == (4, 3) and s.x.dtype == torch.float64
        if method == "wfr":
            assert s.x_weights.shape == (6,) and s.y_weights.shape == (4,)
            assert s.x_weights.sum().item() == pytest.approx(1.0, abs=1e-12)
        else:
            assert s.x_weights is None and s.y_weights is None
    assert torch.equal(r.snapshots[0].x, x) and torch.equal(r.snapshots[0].y, y)
    last = r.snapshots[-1]
    assert torch.equal(last.x, r.x) and torch.equal(last.y, r.y)
    if method == "wfr":
        assert torch.equal(last.x_weights, r.x_weights)
        assert torch.equal(last.y_weights, r.y_weights)
        assert torch.equal(last.x_weights_avg, r.x_weights_avg)
    # intermediate snapshots are the states of a shorter run with the same seed
    short = solve(game, x, y, method, **{**kw, "steps": 6})
    assert torch.equal(r.snapshots[2].x, short.x) and torch.equal(r.snapshots[2].y, short.y)
    # off by default, and keeping snapshots does not change the numbers
    plain = solve(game, x, y, method, **kw)
    assert plain.snapshots == ()
    assert torch.equal(plain.x, r.x) and torch.equal(plain.y, r.y)
    assert "snapshots" not in r.to_dict()


def test_snapshots_capped_evenly_spaced():
    x, y = _normal(5, 2, 0), _normal(5, 2, 1)
    r = solve(GAME, x, y, "descent-ascent", temperature=0.1, steps=100, lr=0.01, seed=0,
              snapshot_every=1, max_snapshots=10)
    steps = [s.step for s in r.snapshots]
    # 1, 2, 4, 8 overflow the cap in turn; interval 16 keeps 0..96 (7) plus the final state
    assert steps == [0, 16, 32, 48, 64, 80, 96, 100]
    assert torch.equal(r.snapshots[-1].x, r.x)
    r = solve(GAME, x, y, "descent-ascent", temperature=0.1, steps=37, lr=0.01, seed=0,
              snapshot_every=1, max_snapshots=5)
    # interval 8 fills the cap (0..32); the final state replaces the last in-between one
    assert [s.step for s in r.snapshots] == [0, 8, 16, 24, 37]
    assert torch.equal(r.snapshots[-1].y, r.y)
    with pytest.raises(ValueError, match="snapshot_every"):
        solve(GAME, x, y, "wfr", temperature=0.1, steps=2, lr=0.1, snapshot_every=0)
    with pytest.raises(ValueError, match="max_snapshots"):
        solve(GAME, x, y, "wfr", temperature=0.1, steps=2, lr=0.1, snapshot_every=1,
              max_snapshots=1)


def test_snapshots_end_at_last_finite_state():
    x, y = _normal(10, 2, 0, shift=1.0), _normal(10, 2, 1)
    r = solve(GAME, x, y, "descent-ascent", temperature=0.0, steps=2000, lr=5.0, seed=0,
              snapshot_every=1, max_snapshots=8)
    assert r.diverged and 2 <= len(r.snapshots) <= 8
    assert r.snapshots[-1].step == r.steps and torch.equal(r.snapshots[-1].x, r.x)
    assert all(torch.isfinite(s.x).all() and torch.isfinite(s.y).all() for s in r.snapshots)
    r = solve(GAME, x, y, "descent-ascent", temperature=0.1, steps=10**7, lr=0.001, seed=0,
              time_budget=0.2, snapshot_every=1, max_snapshots=20)
    assert r.status == "time_budget" and len(r.snapshots) <= 20
    assert r.snapshots[-1].step == r.steps and torch.equal(r.snapshots[-1].y, r.y)
