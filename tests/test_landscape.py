"""valleys.landscape against closed forms and dense torch.func oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import DenseOracle, make_data, make_model
from torch import nn

import valleys
from valleys import landscape as L
from valleys.landscape import SqrtLoss, SqrtValley

# --- growth exponents -----------------------------------------------------------------------


def test_growth_exponent_of_a_quadratic_is_two():
    ts = np.logspace(-3, 1, 21)
    assert L.growth_exponent(ts, 0.5 * 7.3 * ts**2) == pytest.approx(2.0, abs=1e-12)
    # both signs, raw losses with a baseline
    ts2 = np.concatenate([-ts, ts])
    assert L.growth_exponent(ts2, 3.0 + 2.0 * ts2**2, baseline=3.0) == pytest.approx(2.0, abs=1e-9)


def test_growth_exponent_recovers_power_with_quadratic_core():
    # digest paper 4 (d)3: |t|^1.5 plus a tiny quadratic core; the outer range gives 1.5 ± 0.05
    ts = np.logspace(-1, 2, 31)
    inc = np.abs(ts) ** 1.5 + 1e-6 * ts**2
    assert L.growth_exponent(ts, inc) == pytest.approx(1.5, abs=0.05)


@pytest.mark.parametrize(
    ("ts", "losses", "match"),
    [
        ([1.0, 2.0], [1.0], "same shape"),
        ([1.0], [1.0], "at least 2"),
        ([0.0, 1.0], [1.0, 2.0], "non-zero"),
        ([1.0, 2.0], [1.0, -2.0], "not positive"),
        ([1.0, 2.0], [0.0, 2.0], "not positive"),
        ([1.0, -1.0], [1.0, 1.0], "two distinct"),
        ([1.0, float("nan")], [1.0, 2.0], "finite"),
        ([[1.0, 2.0]], [[1.0, 2.0]], "1-D"),
    ],
)
def test_growth_exponent_validates(ts, losses, match):
    with pytest.raises(ValueError, match=match):
        L.growth_exponent(ts, losses)


def test_growth_exponent_baseline_validated_and_subtracted():
    with pytest.raises(ValueError, match="not positive"):
        L.growth_exponent([1.0, 2.0], [1.0, 4.0], baseline=1.0)  # ΔL(1) = 0
    with pytest.raises(ValueError, match="baseline"):
        L.growth_exponent([1.0, 2.0], [1.0, 4.0], baseline=float("inf"))


def test_local_exponent_profile_of_sqrt_loss_matches_closed_form():
    f = SqrtLoss(2.5)
    xs = np.logspace(-3, 3, 601)
    prof = L.growth_profile(xs, f.value(xs))
    exact = SqrtLoss.local_exponent(prof.scales)
    # secant slopes on a log grid of ratio 10^0.01: error O(h²) of the exact derivative
    assert np.max(np.abs(prof.exponents - exact)) < 1e-4
    # quadratic to within 0.2 while 1 + 1/sqrt(1+x²) >= 1.8, i.e. |x| <= 0.75
    assert prof.quadratic_radius == pytest.approx(0.75, rel=0.03)
    assert not prof.quadratic_everywhere
    d = prof.to_dict()
    assert len(d["scales"]) == len(d["exponents"]) == 600


def test_profile_edge_cases():
    ts = np.logspace(-2, 0, 5)
    assert L.growth_profile(ts, ts**2).quadratic_everywhere
    assert L.growth_profile(ts, ts).quadratic_radius == 0.0
    with pytest.raises(ValueError, match="distinct"):
        L.growth_profile([-1.0, 1.0, 2.0], [1.0, 1.0, 4.0])
    with pytest.raises(ValueError, match="tolerance"):
        L.growth_profile(ts, ts**2, tolerance=0)


# --- toys -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("lr", "amplitude"), [(1.5, 0.0), (3.0, 1.1180), (5.0, 2.2913)])
def test_sqrt_loss_gd_two_cycle_matches_closed_form(lr, amplitude):
    f = SqrtLoss()
    assert f.two_cycle_amplitude(lr) == pytest.approx(amplitude, abs=1e-4)
    xs = f.gd(0.3, lr, 4000)
    assert abs(abs(xs[-1]) - f.two_cycle_amplitude(lr)) < 1e-9
    if amplitude:
        assert xs[-1] == pytest.approx(-xs[-2], abs=1e-9)  # x -> -x


def test_sqrt_loss_general_curvature_and_cycle_multiplier():
    f = SqrtLoss(4.0)
    lr = 0.9  # lr · curvature = 3.6 > 2
    x_star = f.two_cycle_amplitude(lr)
    assert x_star == pytest.approx(math.sqrt(1.8**2 - 1))
    assert lr * f.curvature / math.sqrt(1 + x_star**2) == pytest.approx(2.0)  # cycle condition
    xs = f.gd(0.01, lr, 3000)
    assert abs(xs[-1]) == pytest.approx(x_star, abs=1e-9)

    def two_steps(x):
        for _ in range(2):
            x = x - lr * float(f.grad(x))
        return x

    h = 1e-6
    slope = (two_steps(x_star + h) - two_steps(x_star - h)) / (2 * h)
    assert slope == pytest.approx(f.two_cycle_multiplier(lr), rel=1e-6)
    assert slope < 1
    with pytest.raises(ValueError, match="no 2-cycle"):
        f.two_cycle_multiplier(0.4)
    # contrast: the quadratic with the same curvature diverges at this step size
    x = 0.01
    for _ in range(200):
        x = x - lr * f.curvature * x
    assert abs(x) > 1e6


def test_sqrt_loss_derivatives_match_autograd():
    f = SqrtLoss(1.7)
    x = torch.tensor([-3.0, -0.2, 0.0, 0.5, 4.0], dtype=torch.float64)

    def fn(v):
        return 1.7 * (torch.sqrt(1 + v * v) - 1)

    g = torch.func.vmap(torch.func.grad(fn))(x)
    h = torch.func.vmap(torch.func.hessian(fn))(x)
    np.testing.assert_allclose(f.value(x.numpy()), fn(x).numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(f.grad(x.numpy()), g.numpy(), rtol=1e-12)
    np.testing.assert_allclose(f.hess(x.numpy()), h.numpy(), rtol=1e-12)


def test_valley_hessian_matches_autograd():
    v = SqrtValley(c0=1.3, eps=0.2)

    def F(z):
        return 1.3 * torch.exp(0.2 * z[1]) * (torch.sqrt(1 + z[0] ** 2) - 1)

    for x, y in [(0.0, 0.5), (0.7, -1.0), (2.0, 3.0)]:
        z = torch.tensor([x, y], dtype=torch.float64)
        np.testing.assert_allclose(v.hessian(x, y), torch.func.hessian(F)(z).numpy(), rtol=1e-12)
        np.testing.assert_allclose(v.grad(x, y), torch.func.grad(F)(z).numpy(), rtol=1e-12)
    assert v.hessian(0.0, 0.4)[0, 0] == pytest.approx(float(v.floor_sharpness(0.4)))


@pytest.mark.parametrize("lr", [0.5, 2.0])
@pytest.mark.parametrize("start", [1.5, 3.0])
def test_valley_drift_pulls_sharpness_to_two_over_lr(lr, start):
    eps = 0.05
    v = SqrtValley(c0=1.0, eps=eps)
    traj = v.gd(0.1, v.y_for_sharpness(start * 2 / lr), lr, 20000)
    final = float(v.floor_sharpness(traj[-1, 1])) * lr / 2
    # GD cannot stay where c > 2/η; a slow valley undershoots by O(ε²) only
    assert 1 - eps**2 <= final <= 1.0
    assert abs(traj[-1, 0]) < 1e-12
    losses = v.value(traj[:, 0], traj[:, 1])
    assert losses[-1] < 1e-20 < losses[0]


def test_valley_below_threshold_does_not_drift():
    v = SqrtValley(c0=1.0, eps=0.05)
    lr = 1.0
    y0 = v.y_for_sharpness(0.8 * 2 / lr)
    traj = v.gd(0.1, y0, lr, 5000)
    assert float(v.floor_sharpness(traj[-1, 1])) * lr / 2 == pytest.approx(0.8, rel=1e-3)


def test_valley_drift_rate_matches_adiabatic_prediction():
    v = SqrtValley(c0=1.0, eps=0.01)
    lr = 1.0
    y0 = v.y_for_sharpness(2.5 * 2 / lr)
    x0 = SqrtLoss(float(v.floor_sharpness(y0))).two_cycle_amplitude(lr)  # start on the cycle
    traj = v.gd(x0, y0, lr, 2)
    measured = v.eps * (traj[2, 1] - traj[0, 1]) / 2  # Δ log c per step
    assert measured == pytest.approx(v.adiabatic_drift(y0, lr), rel=1e-3)
    assert measured < 0


def test_toys_validate():
    with pytest.raises(ValueError, match="curvature"):
        SqrtLoss(-1.0)
    with pytest.raises(ValueError, match="lr"):
        SqrtLoss().gd(0.1, 0.0, 3)
    with pytest.raises(ValueError, match="steps"):
        SqrtValley().gd(0.1, 0.0, 1.0, -1)


# --- scans on models ------------------------------------------------------------------------


def _objective(kind="mlp-tanh", loss="mse", chunk_size=None):
    model = make_model(kind)
    X, Y = make_data(loss, d=16 if kind == "cnn" else 5)
    return valleys.Objective(model, loss, (X, Y), chunk_size=chunk_size), X, Y


@pytest.mark.parametrize("kind", ["mlp-tanh", "cnn", "residual"])
@pytest.mark.parametrize("chunk_size", [None, 4])
def test_batched_loss_matches_loop(kind, chunk_size):
    obj, _, _ = _objective(kind, "ce" if kind == "cnn" else "mse", chunk_size)
    g = torch.Generator().manual_seed(0)
    thetas = obj.parameters_vector() + 0.3 * torch.randn(37, obj.dim, generator=g,
                                                         dtype=torch.float64)
    batched = L.batched_loss(obj, thetas, points_per_chunk=8)
    np.testing.assert_allclose(batched.numpy(), L.loop_loss(obj, thetas).numpy(), rtol=1e-12)


def test_batched_loss_with_batchnorm_in_eval_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3))
    model = model.double()
    with torch.no_grad():
        model(torch.randn(20, 5, dtype=torch.float64))  # non-trivial running statistics
    model.eval()
    X, Y = make_data("mse")
    obj = valleys.Objective(model, "mse", (X, Y))
    thetas = obj.parameters_vector() + 0.1 * torch.randn(5, obj.dim, dtype=torch.float64)
    np.testing.assert_allclose(L.batched_loss(obj, thetas).numpy(),
                               L.loop_loss(obj, thetas).numpy(), rtol=1e-12)
    assert not model.training  # untouched


def test_batched_loss_validates():
    obj, _, _ = _objective()
    with pytest.raises(ValueError, match="shape"):
        L.batched_loss(obj, torch.zeros(3, obj.dim + 1, dtype=torch.float64))
    with pytest.raises(TypeError, match="dtype"):
        L.batched_loss(obj, torch.zeros(3, obj.dim))
    with pytest.raises(ValueError, match="points_per_chunk"):
        L.batched_loss(obj, torch.zeros(3, obj.dim, dtype=torch.float64), points_per_chunk=0)
    with pytest.raises(ValueError, match="method"):
        L.batched_loss(obj, torch.zeros(3, obj.dim, dtype=torch.float64), method="jit")


def test_loop_method_equals_vmap():
    obj, _, _ = _objective()
    u = L.random_direction(obj, normalization="layer", bias_bn="filter", seed=9)
    ts = torch.linspace(-1, 1, 7, dtype=torch.float64)
    a = L.loss_along_line(obj, u, ts, method="vmap")
    b = L.loss_along_line(obj, u, ts, method="loop")
    np.testing.assert_allclose(a.losses.numpy(), b.losses.numpy(), rtol=1e-13)


def test_top_eigen_directions_match_dense_hessian():
    obj, X, Y = _objective()
    H = DenseOracle(obj, X, Y).hessian()
    evals, _ = torch.linalg.eigh(H)
    top = L.top_eigen_directions(obj, k=2, tol=1e-10)
    np.testing.assert_allclose(top.values.numpy(), evals.flip(0)[:2].numpy(), rtol=1e-8)
    u = top.vectors[:, 0]
    assert float(u @ H @ u) == pytest.approx(float(evals[-1]), rel=1e-8)
    assert u[u.abs().argmax()] > 0  # sign convention


def test_line_curvature_matches_dense_hessian():
    obj, X, Y = _objective()
    theta = obj.parameters_vector()
    H = DenseOracle(obj, X, Y).hessian()
    u = L.top_eigen_directions(obj, k=1, tol=1e-10).vectors[:, 0]
    h = 1e-4
    scan = L.loss_along_line(obj, u, [-h, 0.0, h])
    second = float(scan.losses[0] + scan.losses[2] - 2 * scan.losses[1]) / h**2
    assert second == pytest.approx(float(u @ H @ u), rel=1e-5)
    assert scan.base_loss == pytest.approx(float(obj.loss(theta)), rel=1e-14)
    assert torch.equal(obj.parameters_vector(), theta)  # the model is not moved


def test_exponent_of_a_quadratic_objective_is_two():
    # a linear least-squares model: L is exactly quadratic around its minimizer
    torch.manual_seed(0)
    X = torch.randn(30, 4, dtype=torch.float64)
    Y = torch.randn(30, 2, dtype=torch.float64)
    model = nn.Linear(4, 2, bias=False).double()
    W = torch.linalg.lstsq(X, Y).solution  # (4, 2)
    with torch.no_grad():
        model.weight.copy_(W.T)
    obj = valleys.Objective(model, "mse", (X, Y))
    top = L.top_eigen_directions(obj, k=1, tol=1e-12)
    ts = torch.logspace(-3, 1, 17, dtype=torch.float64)
    scan = L.loss_along_line(obj, top.vectors[:, 0], ts)
    p = L.growth_exponent(scan.ts, scan.increments)
    assert p == pytest.approx(2.0, abs=1e-6)
    # and the increment is exactly ½ λ t²
    np.testing.assert_allclose(scan.increments.numpy(), 0.5 * float(top.values[0]) * ts.numpy()**2,
                               rtol=1e-6)


def test_loss_on_plane_and_interpolation():
    obj, _, _ = _objective()
    theta = obj.parameters_vector()
    d1 = L.random_direction(obj, normalization="filter", bias_bn="zero", seed=1)
    d2 = L.random_direction(obj, normalization="filter", bias_bn="zero", seed=2)
    a = torch.linspace(-1, 1, 5, dtype=torch.float64)
    b = torch.linspace(-0.5, 0.5, 3, dtype=torch.float64)
    scan = L.loss_on_plane(obj, d1, d2, a, b, points_per_chunk=4)
    assert scan.losses.shape == (5, 3)
    for i, j in [(0, 0), (2, 1), (4, 2), (1, 2)]:
        expected = obj.loss(theta + a[i] * d1 + b[j] * d2)
        assert float(scan.losses[i, j]) == pytest.approx(float(expected), rel=1e-12)
    other = theta + d1
    line = L.interpolate(obj, theta, other, [0.0, 0.5, 1.0])
    assert float(line.losses[0]) == pytest.approx(float(obj.loss(theta)), rel=1e-12)
    assert float(line.losses[2]) == pytest.approx(float(obj.loss(other)), rel=1e-12)
    assert line.base_loss == pytest.approx(float(obj.loss(theta)))
    assert set(scan.to_dict()) >= {"alphas", "betas", "losses", "base_loss"}


def test_plane_grid_batched_is_faster_than_loop_and_equal():
    obj, _, _ = _objective()
    d1 = L.random_direction(obj, normalization="filter", bias_bn="filter", seed=3)
    d2 = L.random_direction(obj, normalization="filter", bias_bn="filter", seed=4)
    timing = L.grid_timing(obj, d1, d2, size=51, radius=1.0, points_per_chunk=512)
    assert timing["points"] == 51 * 51
    assert timing["max_abs_difference"] < 1e-10
    # a timing, not a correctness claim; printed for the record (pytest -s)
    print(f"51x51 grid: batched {timing['batched_s']:.3f}s, loop {timing['loop_s']:.3f}s, "
          f"ratio {timing['speedup']:.1f}")


def test_scan_validation():
    obj, _, _ = _objective()
    u = torch.ones(obj.dim, dtype=torch.float64)
    with pytest.raises(ValueError, match="ts"):
        L.loss_along_line(obj, u, [])
    with pytest.raises(ValueError, match="finite"):
        L.loss_along_line(obj, u, [float("nan")])
    with pytest.raises(ValueError, match="flat vector"):
        L.loss_along_line(obj, u[:-1], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        L.loss_along_line(obj, u * float("nan"), [1.0])


# --- filter normalization -------------------------------------------------------------------


def _filters(obj, vec):
    return obj.unflatten(vec)


@pytest.mark.parametrize("kind", ["mlp-tanh", "cnn"])
def test_filter_normalization_gives_each_filter_the_weight_filter_norm(kind):
    obj, _, _ = _objective(kind, "ce" if kind == "cnn" else "mse")
    theta = obj.parameters_vector()
    d = L.random_direction(obj, normalization="filter", bias_bn="zero", seed=0)
    W, D = _filters(obj, theta), _filters(obj, d)
    checked = 0
    for name in obj.names:
        if W[name].ndim >= 2:
            wn = W[name].reshape(W[name].shape[0], -1).norm(dim=1)
            dn = D[name].reshape(D[name].shape[0], -1).norm(dim=1)
            np.testing.assert_allclose(dn.numpy(), wn.numpy(), rtol=1e-12)
            checked += 1
        else:
            assert torch.count_nonzero(D[name]) == 0  # bias_bn="zero"
    assert checked >= 2


def test_bias_bn_choices_and_layer_normalization():
    obj, _, _ = _objective()
    theta = obj.parameters_vector()
    raw = torch.randn(obj.dim, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    W = obj.unflatten(theta)
    same = obj.unflatten(L.normalize_direction(obj, raw, normalization="filter",
                                               bias_bn="weights"))
    filt = obj.unflatten(L.normalize_direction(obj, raw, normalization="filter",
                                               bias_bn="filter"))
    layer = obj.unflatten(L.normalize_direction(obj, raw, normalization="layer",
                                                bias_bn="filter"))
    for name in obj.names:
        if W[name].ndim == 1:
            assert torch.equal(same[name], W[name])
            assert float(filt[name].norm()) == pytest.approx(float(W[name].norm()))
        else:
            assert float(layer[name].norm()) == pytest.approx(float(W[name].norm()))
    none = L.normalize_direction(obj, raw, normalization="none", bias_bn="zero")
    assert torch.equal(none, raw)


def test_random_direction_is_seeded_and_explicit():
    obj, _, _ = _objective()
    a = L.random_direction(obj, normalization="filter", bias_bn="zero", seed=7)
    b = L.random_direction(obj, normalization="filter", bias_bn="zero", seed=7)
    assert torch.equal(a, b)
    with pytest.raises(TypeError):
        L.random_direction(obj, normalization="filter", seed=7)  # bias_bn has no default
    with pytest.raises(ValueError, match="bias_bn"):
        L.random_direction(obj, normalization="filter", bias_bn="ignore", seed=7)
    with pytest.raises(ValueError, match="normalization"):
        L.random_direction(obj, normalization="unit", bias_bn="zero", seed=7)
    with pytest.raises(ValueError, match="exactly one"):
        L.random_direction(obj, normalization="filter", bias_bn="zero")


def test_float32_objective_keeps_dtype():
    model = make_model("mlp-tanh").float()
    X, Y = make_data("mse")
    obj = valleys.Objective(model, "mse", (X.float(), Y.float()))
    d = L.random_direction(obj, normalization="filter", bias_bn="zero", seed=0)
    assert d.dtype == torch.float32
    scan = L.loss_along_line(obj, d, [0.0, 0.5])
    assert scan.losses.dtype == torch.float64  # records are float64 on the host
    expected = float(obj.loss(obj.parameters_vector() + 0.5 * d))
    assert float(scan.losses[1]) == pytest.approx(expected, rel=1e-6)
