"""Input-smoothness (Ma & Ying 2021): input gradients, g_w/g_x, the first-layer bound, attacks.

Oracles: finite differences, closed forms for linear models, per-sample Jacobians straight
from torch.func, and the authors' per-sample, per-logit backprop loop for g_w/g_x.
"""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from torch import nn
from torch.func import jacrev, vmap

import valleys
from valleys import smoothness as sm
from valleys.models import MLP, SmallCNN

F64 = torch.float64


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def mlp(widths=(4, 7, 6, 3), activation="tanh", seed=0):
    return MLP(widths, activation, seed=seed).double()


# ------------------------------------------------------------------------------------------------
# Input gradients
# ------------------------------------------------------------------------------------------------


def test_input_jacobians_of_linear_model_are_the_weight():
    torch.manual_seed(0)
    lin = nn.Linear(5, 3).double()
    X, Y = randn(9, 5), randn(9, 3, seed=1)
    for J in (sm.input_jacobians(lin, X, chunk_size=4),
              sm.input_jacobians(valleys.Objective(lin, "mse", (X, Y), chunk_size=2))):
        assert J.shape == (9, 3, 5)
        torch.testing.assert_close(J, lin.weight.detach().expand(9, 3, 5), rtol=0, atol=0)
    # ∇_x ½‖Wx + b − y‖² = Wᵀ(Wx + b − y).
    G = sm.loss_input_gradients(lin, X, Y, loss="mse")
    W, b = lin.weight.detach(), lin.bias.detach()
    torch.testing.assert_close(G, (X @ W.T + b - Y) @ W, rtol=1e-12, atol=1e-12)


def central_differences(fn, X, h=1e-6):
    """``(n, K, *input_shape)`` Jacobians of a batched ``fn`` by central differences."""
    flat = X.reshape(X.shape[0], -1)
    cols = []
    for c in range(flat.shape[1]):
        e = torch.zeros_like(flat)
        e[:, c] = h
        up, down = fn((flat + e).reshape(X.shape)), fn((flat - e).reshape(X.shape))
        cols.append((up - down).reshape(X.shape[0], -1) / (2 * h))
    return torch.stack(cols, dim=-1).reshape(X.shape[0], -1, *X.shape[1:])


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_input_jacobians_match_finite_differences(kind):
    if kind == "mlp":
        model, X = mlp(), randn(6, 4)
    else:
        model, X = SmallCNN((5, 5), 3, channels=(2,), activation="tanh", seed=0).double(), \
            randn(4, 5, 5)
    J = sm.input_jacobians(model, X, chunk_size=3)
    assert J.shape == (X.shape[0], 3, *X.shape[1:])
    with torch.no_grad():
        fd = central_differences(model, X)
    torch.testing.assert_close(J, fd, rtol=1e-7, atol=1e-8)

    Y = torch.tensor([0, 2, 1, 1, 0, 2][: X.shape[0]])
    G = sm.loss_input_gradients(model, X, Y, loss="ce")
    assert G.shape == X.shape
    with torch.no_grad():
        fd_loss = central_differences(
            lambda Z: nn.functional.cross_entropy(model(Z), Y, reduction="none")[:, None], X)
    torch.testing.assert_close(G, fd_loss[:, 0], rtol=1e-7, atol=1e-8)


def test_objective_uses_theta_and_its_data():
    model = mlp()
    X, Y = randn(8, 4), randn(8, 3, seed=1)
    obj = valleys.Objective(model, "mse", (X, Y), chunk_size=3)
    theta = obj.parameters_vector() * 0.5
    J = sm.input_jacobians(obj, theta=theta)
    obj.set_parameters(theta)  # the (local) model now sits at θ
    # Chunks of 3 against one batch of 8: BLAS may pick other kernels, so equal up to rounding.
    torch.testing.assert_close(J, sm.input_jacobians(model, X), rtol=1e-12, atol=1e-15)
    # An explicit X overrides the objective's data.
    torch.testing.assert_close(sm.input_jacobians(obj, X[:2]), J[:2], rtol=0, atol=0)


def test_a_plain_model_is_evaluated_through_an_objective():
    """A plain module gets the Objective's functional call, layout and checks."""
    model, X = mlp(), randn(8, 4)
    obj = valleys.Objective(model, "mse", (X, randn(8, 3, seed=1)))
    torch.testing.assert_close(sm.parameter_jacobians(model, X, chunk_size=3),
                               sm.parameter_jacobians(obj, chunk_size=3), rtol=0, atol=0)

    class Noisy(nn.Module):  # dropout hidden in forward: random Jacobians
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3).double()

        def forward(self, x):
            return nn.functional.dropout(self.lin(x), 0.5, training=True)

    with pytest.raises(ValueError, match="different outputs for the same inputs"):
        sm.input_jacobians(Noisy(), X)


def test_frozen_and_parameter_free_models():
    model, X = mlp(), randn(5, 4)
    J = sm.input_jacobians(model, X)
    frozen = mlp().requires_grad_(False)
    # A frozen model is evaluated at all its parameters; its parameter Jacobians are empty.
    torch.testing.assert_close(sm.input_jacobians(frozen, X), J, rtol=0, atol=0)
    assert sm.parameter_jacobians(frozen, X).shape == (5, 3, 0)
    assert sm.input_smoothness(frozen, X).g_w == 0.0
    with pytest.raises(ValueError, match="has no parameters"):
        sm.input_jacobians(nn.Tanh(), X)


def test_objective_with_explicit_inputs_and_unusual_parameter_names():
    class Odd(nn.Module):  # parameter names that are fnmatch patterns of other names
        def __init__(self):
            super().__init__()
            self.add_module("a[0]", nn.Linear(4, 4).double())
            self.add_module("a0", nn.Linear(4, 3).double())

        def forward(self, x):
            return self.a0(torch.tanh(getattr(self, "a[0]")(x)))

    torch.manual_seed(0)
    model, X = Odd(), randn(6, 4)
    obj = valleys.Objective(model, "mse", (X[:2], randn(2, 3)), params=["a?0?.*", "a0.*"])
    assert obj.names == ["a[0].weight", "a[0].bias", "a0.weight", "a0.bias"]
    torch.testing.assert_close(sm.parameter_jacobians(obj, X),
                               sm.parameter_jacobians(model, X), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# g_w(k), g_x(k)
# ------------------------------------------------------------------------------------------------


def authors_loop(model, X, k, wrt):
    """``get_gradW``/``get_gradx`` of ChaoMa93/Sobolev-Reg-of-SGD: per sample, per logit."""
    total = 0.0
    for x in X:
        x = x[None].clone().requires_grad_(True)
        logits = model(x)
        for j in range(logits.shape[1]):
            inputs = [x] if wrt == "x" else list(model.parameters())
            grads = torch.autograd.grad(logits[0, j], inputs, retain_graph=True)
            total += sum(float((g**(2 * k)).sum()) for g in grads)
    return (total / X.shape[0]) ** (1 / (2 * k))


@pytest.mark.parametrize("k", [1, 2])
def test_g_w_and_g_x_match_the_authors_definition(k):
    model, X = mlp((3, 5, 2)), randn(5, 3)
    assert sm.input_gradient_norm(model, X, k=k, chunk_size=2) == pytest.approx(
        authors_loop(model, X, k, "x"), rel=1e-12)
    assert sm.parameter_gradient_norm(model, X, k=k, chunk_size=2) == pytest.approx(
        authors_loop(model, X, k, "w"), rel=1e-12)


def test_coordinate_norm_normalizations_and_scaling():
    J = randn(4, 3, 5)
    direct = float((J.abs() ** 3).sum())
    assert sm.coordinate_norm(J, 1.5, normalization="sum") == pytest.approx(direct ** (1 / 3))
    assert sm.coordinate_norm(J, 1.5) == pytest.approx((direct / 4) ** (1 / 3))
    assert sm.coordinate_norm(J, 1.5, normalization="samples_outputs") == pytest.approx(
        (direct / 12) ** (1 / 3))
    # Overflow-safe: |J|^(2k) of 1e200 overflows float64, the norm does not.
    assert sm.coordinate_norm(1e200 * J, 2) == pytest.approx(1e200 * sm.coordinate_norm(J, 2))
    # g_x(1)² is the Sobolev average (1/n) Σ ‖∇_x f(x_i)‖_F².
    model, X = mlp(), randn(6, 4)
    report = sm.input_smoothness(model, X, parameters=False)
    Jx = sm.input_jacobians(model, X)
    assert report.sobolev == pytest.approx(float(Jx.pow(2).sum()) / 6, rel=1e-12)
    assert report.g_x ** 2 == pytest.approx(report.sobolev, rel=1e-12)
    norms = Jx.flatten(1).norm(dim=1)
    assert report.sobolev_max == pytest.approx(float(norms.max()), rel=1e-12)
    assert report.weighted_sobolev == pytest.approx(
        float((X.pow(2).sum(1) * norms**2).mean()), rel=1e-12)
    assert report.g_w is None and report.loss_sobolev is None
    json.dumps(report.to_dict())


# ------------------------------------------------------------------------------------------------
# The first layer
# ------------------------------------------------------------------------------------------------


def test_first_layer_identity_against_torch_func():
    model, X = mlp((4, 7, 6, 3)), randn(10, 4)
    obj = valleys.Objective(model, "mse", (X, randn(10, 3, seed=1)))
    res = sm.first_layer_identity(obj, chunk_size=4)
    assert res.first_layer == "net.0.weight"
    theta = obj.parameters_vector()

    # ‖∂f_k/∂W₁‖_F from the full per-sample parameter Jacobians.
    def single(t, x):
        return obj.forward(t, x[None])[0]

    J = vmap(jacrev(single), in_dims=(None, 0))(theta, X)  # (n, K, p)
    W1 = J[:, :, : 7 * 4]
    torch.testing.assert_close(res.weight_grad_norms, W1.norm(dim=2), rtol=1e-12, atol=0)
    # ‖∂f_k/∂z₁‖ from the tail of the network evaluated at z₁ = W₁x + b₁.
    first, tail = model.net[0], model.net[1:]
    with torch.no_grad():
        z1 = first(X)
    with torch.no_grad():
        g = vmap(jacrev(lambda z: tail(z[None])[0]))(z1)  # (n, K, h)
    torch.testing.assert_close(res.preactivation_grad_norms, g.norm(dim=2), rtol=1e-12, atol=0)
    torch.testing.assert_close(res.input_norms, X.norm(dim=1), rtol=1e-14, atol=0)
    # The identity ‖∂f/∂W₁‖_F = ‖∂f/∂z₁‖·‖x‖, per sample and output, to 1e-10.
    rhs = g.norm(dim=2) * X.norm(dim=1)[:, None]
    assert float((W1.norm(dim=2) - rhs).abs().max()) < 1e-10
    assert res.rank_one_error < 1e-12 and res.chain_rule_error < 1e-12
    json.dumps(res.to_dict())


def test_identity_flags_inputs_that_bypass_the_first_layer():
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.head = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.head(x + torch.tanh(self.a(x)))

    torch.manual_seed(0)
    model, X = Skip().double(), randn(5, 4)
    with pytest.raises(ValueError, match="cannot identify the first layer"):
        sm.first_layer_identity(model, X)
    res = sm.first_layer_identity(model, X, first_layer="a.weight")
    assert res.rank_one_error < 1e-12  # ∂f/∂W_a is still rank one ...
    assert res.chain_rule_error > 1e-2  # ... but ∇_x f ≠ W_aᵀ ∂f/∂z_a


def train_to_interpolation(model, X, Y, tol=1e-10):
    obj = valleys.Objective(model, "mse", (X, Y))
    opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=500, tolerance_grad=1e-14,
                            tolerance_change=1e-16, history_size=50,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = 0.5 * (model(X) - Y).pow(2).sum(1).mean()
        loss.backward()
        return loss

    for _ in range(6):
        opt.step(closure)
        if float(obj.loss()) < tol:
            break
    return obj


def test_bound_at_an_interpolating_minimum():
    data = valleys.data.teacher_student(n_train=6, n_test=1, input_dim=3, output_dim=2,
                                        teacher_width=4, seed=0, dtype=F64)
    X, Y = data.train
    model = mlp((3, 24, 2), seed=1)
    obj = train_to_interpolation(model, X, Y)
    assert float(obj.loss()) < 1e-10
    bound = sm.first_layer_bound(obj, trace_method="exact")
    assert bound.interpolating and bound.max_residual < 1e-5
    assert bound.holds and 0 < bound.lhs <= bound.rhs_first_layer <= bound.rhs
    assert bound.trace_stderr == 0 and bound.trace_method == "exact"
    # At interpolation tr(H) = tr(GGN) = (1/n) Σ_i ‖J_i‖_F² = g_w(1)².
    ggn = sm.first_layer_bound(obj, matrix="ggn")
    assert bound.trace == pytest.approx(ggn.trace, rel=1e-4)
    assert ggn.trace == pytest.approx(sm.parameter_gradient_norm(obj) ** 2, rel=1e-10)
    assert bound.rhs == pytest.approx(bound.spectral_norm**2 * bound.trace, rel=1e-14)
    json.dumps(bound.to_dict())


def test_bound_on_a_linear_model_in_closed_form():
    # f = Wx: ∇_x f_k = W_k, tr(H) = K · (1/n) Σ‖x_i‖², so the bound reads
    # ‖W‖_F² · m ≤ ‖W‖₂² · K · m with m = (1/n) Σ‖x_i‖²: it holds since rank W ≤ K.
    X, Y = randn(7, 5), randn(7, 3, seed=1)
    lin = nn.Linear(5, 3, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(randn(3, 5, seed=2))
    obj = valleys.Objective(lin, "mse", (X, Y))
    m = float(X.pow(2).sum(1).mean())
    W = lin.weight.detach()
    b = sm.first_layer_bound(obj)
    assert b.first_layer == "weight" and not b.interpolating
    assert b.lhs == pytest.approx(float(W.pow(2).sum()) * m, rel=1e-12)
    assert b.trace == pytest.approx(3 * m, rel=1e-12)
    assert b.rhs == pytest.approx(float(torch.linalg.matrix_norm(W, 2)) ** 2 * 3 * m, rel=1e-12)
    assert b.holds
    # Equality when all singular values of W are equal (orthogonal rows of equal norm).
    Q, _ = torch.linalg.qr(randn(5, 3, seed=3))
    with torch.no_grad():
        lin.weight.copy_(2.0 * Q.T)
    b = sm.first_layer_bound(obj)
    assert b.lhs == pytest.approx(b.rhs, rel=1e-12)


# ------------------------------------------------------------------------------------------------
# Adversarial robustness
# ------------------------------------------------------------------------------------------------


def binary_linear(seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(6, 2).double()
    X = randn(200, 6, seed=seed)
    with torch.no_grad():
        y = (lin(X).argmax(1) + (torch.rand(200) < 0.1).long()) % 2  # ~90% clean accuracy
    return lin, X, y


@pytest.mark.parametrize("norm,dual", [("linf", 1), ("l2", 2)])
def test_fgsm_on_a_binary_linear_classifier_matches_the_closed_form(norm, dual):
    lin, X, y = binary_linear()
    W, b = lin.weight.detach(), lin.bias.detach()
    radii = [0.0, 0.05, 0.1, 0.2, 0.4]
    res = sm.adversarial_accuracy(lin, X, y, radii, attack="fgsm", norm=norm, batch_size=64)
    # Margin of the true class over the other: (w_y − w_j)ᵀx + (b_y − b_j).
    dw = W[y] - W[1 - y]
    margin = (dw * X).sum(1) + b[y] - b[1 - y]
    expected = [float((margin > eps * dw.norm(p=dual, dim=1)).double().mean()) for eps in radii]
    assert res.raw_accuracies == pytest.approx(expected, abs=0)
    assert res.accuracies == pytest.approx(expected, abs=0)
    assert res.clean_accuracy == expected[0] and res.steps == 1
    # FGSM is the optimal attack on a linear binary classifier: PGD from x finds the same
    # accuracy; from a random start it cannot do better and comes close.
    pgd = sm.adversarial_accuracy(lin, X, y, radii, norm=norm, steps=5, random_start=False)
    assert pgd.accuracies == pytest.approx(expected, abs=0)
    pgd = sm.adversarial_accuracy(lin, X, y, radii, norm=norm, steps=5, seed=1)
    for a, e in zip(pgd.accuracies, expected, strict=True):
        assert e <= a <= e + 0.03


@pytest.fixture(scope="module")
def classifier():
    """A small MLP fitted to a 3-class Gaussian mixture (inputs in [-3, 3] after clamping)."""
    g = torch.Generator().manual_seed(0)
    means = 2.0 * torch.randn(3, 5, generator=g, dtype=F64)
    y = torch.arange(90) % 3
    X = (means[y] + torch.randn(90, 5, generator=g, dtype=F64)).clamp(-3, 3)
    model = mlp((5, 16, 3), seed=0)
    opt = torch.optim.LBFGS(model.parameters(), max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(X), y)
        loss.backward()
        return loss

    opt.step(closure)
    return model, X, y


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_is_stronger_than_fgsm_and_accuracy_falls_with_radius(classifier, norm):
    model, X, y = classifier
    radii = [0.0, 0.25, 0.5, 1.0, 2.0] if norm == "l2" else [0.0, 0.1, 0.2, 0.4, 0.8]
    f = sm.adversarial_accuracy(model, X, y, radii, attack="fgsm", norm=norm)
    p = sm.adversarial_accuracy(model, X, y, radii, norm=norm, steps=10, batch_size=32)
    with torch.no_grad():
        clean = float((model(X).argmax(1) == y).double().mean())
    assert f.accuracies[0] == p.accuracies[0] == p.clean_accuracy == clean
    for a, b in zip(p.accuracies, f.accuracies, strict=True):
        assert a <= b + 1 / 90  # up to a tie
    for acc in (f.accuracies, p.accuracies):
        assert all(a >= b for a, b in itertools.pairwise(acc))
    assert p.accuracies[-1] < clean  # the attack bites
    # Same seed, same numbers; one-hot targets are read by argmax.
    onehot = nn.functional.one_hot(y, 3).to(F64)
    again = sm.adversarial_accuracy(model, X, onehot, radii, norm=norm, steps=10, batch_size=32)
    assert again.accuracies == p.accuracies
    json.dumps(p.to_dict())


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("clamp", [None, (-3.0, 3.0)])
def test_perturbations_stay_in_the_ball_and_the_box(classifier, norm, clamp):
    model, X, y = classifier
    eps = 0.7
    for X_adv in (sm.fgsm(model, X, y, eps, norm=norm, clamp=clamp),
                  sm.pgd(model, X, y, eps, norm=norm, clamp=clamp, steps=7, seed=3)):
        d = (X_adv - X).flatten(1)
        size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
        assert float(size.max()) <= eps * (1 + 1e-12)
        assert float(size.max()) > 0.5 * eps
        if clamp is not None:
            assert float(X_adv.min()) >= -3 and float(X_adv.max()) <= 3
    torch.testing.assert_close(sm.pgd(model, X, y, 0.0), X, rtol=0, atol=0)


def test_attacks_on_an_objective_with_one_hot_targets(classifier):
    model, X, y = classifier
    obj = valleys.Objective(model, "mse", (X, nn.functional.one_hot(y, 3).to(F64)))
    a = sm.adversarial_accuracy(obj, radii=[0.0, 0.3])
    b = sm.adversarial_accuracy(model, X, y, [0.0, 0.3])
    assert a.accuracies == b.accuracies


# ------------------------------------------------------------------------------------------------
# Bad inputs
# ------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors(classifier):
    model, X, y = classifier
    with pytest.raises(ValueError, match="input features"):
        sm.input_jacobians(model, randn(4, 6))
    with pytest.raises(ValueError, match="cannot be evaluated"):
        sm.input_jacobians(nn.Linear(5, 2).double(), randn(4, 6))
    with pytest.raises(TypeError, match="float32"):
        sm.input_jacobians(model, X.float())
    with pytest.raises(TypeError, match="pass the inputs X"):
        sm.input_jacobians(model)
    with pytest.raises(ValueError, match="same number of samples"):
        sm.adversarial_accuracy(model, X, y[:-1], [0.1])
    with pytest.raises(ValueError, match="non-negative"):
        sm.adversarial_accuracy(model, X, y, [0.1, -0.2])
    with pytest.raises(ValueError, match="norm must be one of"):
        sm.adversarial_accuracy(model, X, y, [0.1], norm="l1")
    with pytest.raises(ValueError, match="attack must be one of"):
        sm.adversarial_accuracy(model, X, y, [0.1], attack="cw")
    with pytest.raises(ValueError, match="outside the clamp box"):
        sm.adversarial_accuracy(model, X, y, [0.1], clamp=(0.0, 1.0))
    with pytest.raises(ValueError, match="labels must lie"):
        sm.adversarial_accuracy(model, X, y + 3, [0.1])
    with pytest.raises(ValueError, match="k must be"):
        sm.input_gradient_norm(model, X, k=0)
    with pytest.raises(ValueError, match="normalization"):
        sm.input_gradient_norm(model, X, normalization="mean")
    bn = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)).double()
    with pytest.raises(ValueError, match="train mode"):
        sm.input_jacobians(bn, X)
    with pytest.raises(ValueError, match="train mode"):
        sm.adversarial_accuracy(bn, X, y, [0.1])
    assert bn.training  # never switched by valleys
    assert sm.input_jacobians(bn.eval(), X[:3]).shape == (3, 3, 5)
    # First layer: not 2-D, wrong input dimension, not a Sequential, not the square loss.
    Y = nn.functional.one_hot(y, 3).to(F64)
    obj = valleys.Objective(model, "mse", (X, Y))
    with pytest.raises(ValueError, match="2-D"):
        sm.first_layer_bound(obj, first_layer="net.0.bias")
    with pytest.raises(ValueError, match="input dimension"):
        sm.first_layer_bound(obj, first_layer="net.2.weight")
    with pytest.raises(ValueError, match="not a parameter"):
        sm.first_layer_bound(obj, first_layer="net.9.weight")
    with pytest.raises(ValueError, match="square loss"):
        sm.first_layer_bound(valleys.Objective(model, "ce", (X, y)))
    act_first = nn.Sequential(nn.Tanh(), nn.Linear(5, 3)).double()
    with pytest.raises(ValueError, match="cannot identify"):
        sm.find_first_layer(act_first)
    assert sm.find_first_layer(nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(5, 3)))) \
        == "1.0.weight"
