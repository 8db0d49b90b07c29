"""The shared layer factors (valleys._layer_factors) against torch.func per-sample gradients."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn
from torch.func import grad, vmap

import valleys
from valleys._layer_factors import (
    LAYER_TYPES,
    Layers,
    Unsupported,
    check_factored_gradient,
    conv_sample_gradients,
    factored_gradient,
    factors,
    find_layers,
    forward_with_shifts,
    linear_layers,
    per_sample_gradients,
)
from valleys.noise import batch_indices, minibatch_gradients, minibatch_gradients_loop
from valleys.operators import HessianVarianceOperator
from valleys.stability.gram import gram_matrix

F64 = torch.float64
N, K = 7, 3


class Detour(nn.Module):
    """Linear layers, one without bias and one whose output never reaches the loss."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 5, bias=False)
        self.side = nn.Linear(5, 2)
        self.head = nn.Linear(5, K)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        self.side(h)  # computed and thrown away: δ = 0
        return self.head(h)


class Signal(nn.Module):
    """Conv1d (padding, stride) and Conv1d without bias, then a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(2, 3, 3, padding=1, stride=2)
        self.c2 = nn.Conv1d(3, 2, 2, bias=False, dilation=2)
        self.head = nn.Linear(2 * 3, K)

    def forward(self, x):
        return self.head(torch.relu(self.c2(torch.tanh(self.c1(x.view(-1, 2, 9))))).flatten(1))


class Image(nn.Module):
    """Conv2d (stride, padding, dilation, rectangular kernel), then a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 3, (3, 2), stride=(2, 1), padding=(1, 0))
        self.c2 = nn.Conv2d(3, 2, 2, dilation=(1, 2))
        self.head = nn.Linear(2 * 2 * 1, K)

    def forward(self, x):
        return self.head(torch.tanh(self.c2(torch.tanh(self.c1(x.view(-1, 1, 5, 4))))).flatten(1))


CASES = {"linear": (Detour, 4), "conv1d": (Signal, 18), "conv2d": (Image, 20)}


def objective(kind: str, loss: str = "ce", params=None) -> valleys.Objective:
    make, d = CASES[kind]
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    X = torch.randn(N, d, dtype=F64, generator=g)
    Y = torch.randint(0, K, (N,), generator=g) if loss == "ce" else torch.randn(N, K, dtype=F64)
    return valleys.Objective(make().double(), loss, (X, Y), params=params)


def recorded_factors(obj: valleys.Objective, layers: Layers):
    X, Y = next(iter(obj.chunks()))
    out, inputs, shifts = forward_with_shifts(obj, obj.parameters_vector(), layers, X)
    grads = torch.autograd.grad(obj.loss_fn(out, Y).sum(), shifts, allow_unused=True)
    return factors(layers, inputs, grads)


@pytest.mark.parametrize("kind", list(CASES))
def test_factors_reproduce_per_sample_gradients(kind):
    obj = objective(kind)
    layers = find_layers(obj, LAYER_TYPES)
    assert isinstance(layers, Layers), layers
    acts, deltas = recorded_factors(obj, layers)
    X, Y = next(iter(obj.chunks()))
    reference = vmap(grad(obj.sample_loss), in_dims=(None, 0, 0))(obj.parameters_vector(), X, Y)
    G = per_sample_gradients(layers, acts, deltas)
    torch.testing.assert_close(G, reference, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(factored_gradient(layers, acts, deltas), reference.sum(0),
                               rtol=1e-12, atol=1e-13)
    check_factored_gradient(obj, obj.parameters_vector(), layers, X,
                            lambda out: obj.loss_fn(out, Y[: out.shape[0]]).sum())


@pytest.mark.parametrize("kind", ["conv1d", "conv2d"])
def test_conv_sample_gradients_by_grouped_convolution(kind):
    """Stride, padding, dilation, rectangular kernels, no bias: the grouped-convolution weight
    gradient is each sample's gradient, and a layer not reaching the loss gets zeros."""
    obj = objective(kind)
    layers = find_layers(obj, LAYER_TYPES)
    X, Y = next(iter(obj.chunks()))
    out, inputs, shifts = forward_with_shifts(obj, obj.parameters_vector(), layers, X)
    grads = torch.autograd.grad(obj.loss_fn(out, Y).sum(), shifts, allow_unused=True)
    reference = vmap(grad(obj.sample_loss), in_dims=(None, 0, 0))(obj.parameters_vector(), X, Y)
    expected = layers.views(reference)
    for j, (m, a, d) in enumerate(zip(layers, inputs, grads, strict=True)):
        if isinstance(m, nn.Linear):
            continue
        gw, gb = conv_sample_gradients(m, a, d)
        torch.testing.assert_close(gw, expected[j]["weight"].flatten(1), rtol=1e-12, atol=1e-13)
        if m.bias is not None:
            torch.testing.assert_close(gb, expected[j]["bias"], rtol=1e-12, atol=1e-13)
        zeros = conv_sample_gradients(m, a, None)
        assert zeros[0].shape == gw.shape and not zeros[0].any() and not zeros[1].any()


def test_factors_of_a_subset_of_the_layers_and_views_invert_flatten():
    obj = objective("conv2d", params=["head.*", "c1.*"])
    layers = find_layers(obj, LAYER_TYPES)
    assert layers.names == ["c1", "head"]  # θ's order
    acts, deltas = recorded_factors(obj, layers)
    X, Y = next(iter(obj.chunks()))
    reference = vmap(grad(obj.sample_loss), in_dims=(None, 0, 0))(obj.parameters_vector(), X, Y)
    torch.testing.assert_close(per_sample_gradients(layers, acts, deltas), reference,
                               rtol=1e-12, atol=1e-13)
    views = layers.views(reference)
    assert [sorted(v) for v in views] == [["bias", "weight"], ["bias", "weight"]]
    assert views[0]["weight"].shape == (N, *layers[0].weight.shape)
    assert torch.equal(layers.flatten([(v["weight"], v["bias"]) for v in views]), reference)


def test_linear_only_by_default():
    reason = linear_layers(objective("conv1d"))
    assert reason == "parameter 'c1.weight' belongs to a Conv1d, not an nn.Linear"
    assert isinstance(find_layers(objective("conv1d"), LAYER_TYPES), Layers)


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 2, 1, groups=2)
        self.head = nn.Linear(4, K)

    def forward(self, x):
        return self.head(self.conv(x.view(-1, 2, 2)).flatten(1))


class Normed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.norm, self.b = nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, K)

    def forward(self, x):
        return self.b(self.norm(self.a(x)))


class Custom(nn.Linear):
    def forward(self, x):
        return super().forward(x) * 2


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, K)

    def forward(self, x):
        return self.b(torch.tanh(self.a(torch.tanh(self.a(x)))))


class Outside(nn.Module):
    """Each Linear called once, but the head's weight is also used outside its call."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, K)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        return self.b(h) + 0.5 * nn.functional.linear(h.square(), self.b.weight)


class Positions(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mix, self.head = nn.Linear(1, 2), nn.Linear(8, K)

    def forward(self, x):
        return self.head(self.mix(x.unsqueeze(-1)).flatten(1))


def data_objective(model: nn.Module, loss: str = "mse") -> valleys.Objective:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2)
    X = torch.randn(N, 4, dtype=F64, generator=g)
    Y = torch.randint(0, K, (N,), generator=g) if loss == "ce" else torch.randn(N, K, dtype=F64)
    return valleys.Objective(model.double(), loss, (X, Y))


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (Grouped, "groups"),
        (Normed, "belongs to a LayerNorm"),
        (lambda: Custom(4, K), "belongs to a Custom"),
    ],
)
def test_unsupported_structures_are_named(make, reason):
    assert reason in find_layers(data_objective(make()), LAYER_TYPES)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (Twice, "'a' is called more than once"),
        (Outside, "outside their nn.Linear calls"),
        (Positions, "gets an input of shape (4, 4, 1), not (batch=4, features)"),
    ],
)
def test_violations_found_on_the_forward_pass_raise_unsupported(make, reason):
    obj = data_objective(make())
    layers = linear_layers(obj)
    X, Y = next(iter(obj.chunks()))
    with pytest.raises(Unsupported) as caught:
        check_factored_gradient(obj, obj.parameters_vector(), layers, X,
                                lambda out: obj.loss_fn(out, Y[: out.shape[0]]).sum())
    assert reason in str(caught.value)
    assert all(not m._forward_hooks for m in obj.model.modules())  # hooks removed


@pytest.mark.parametrize("make", [Normed, Outside])
def test_every_caller_falls_back_with_the_shared_reason_and_stays_exact(make):
    """The three users of the factors refuse a model they cannot handle with the same reason,
    and their fallbacks (vmap, per-sample, Jacobian) stay exact."""
    obj = data_objective(make())
    X, Y = next(iter(obj.chunks()))
    reason = linear_layers(obj)
    if isinstance(reason, Layers):
        with pytest.raises(Unsupported) as caught:
            check_factored_gradient(obj, obj.parameters_vector(), reason, X,
                                    lambda out: obj.loss_fn(out, Y[: out.shape[0]]).sum())
        reason = str(caught.value).split(" (")[0]
    with pytest.warns(RuntimeWarning) if make is Normed else contextlib.nullcontext():
        op = HessianVarianceOperator(obj)
        op.matvec(torch.ones(obj.dim, dtype=F64))
    assert op.method == "vmap" and reason in op.fallback_reason
    idx = batch_indices(N, 3, 4, seed=0)
    torch.testing.assert_close(minibatch_gradients(obj, idx), minibatch_gradients_loop(obj, idx),
                               rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="does not apply") as caught:
        minibatch_gradients(obj, idx, method="linear-layers")
    assert reason in str(caught.value)
    G, _, method = gram_matrix(obj)
    assert method == "jacobian"
    J = torch.func.jacrev(lambda t: obj.forward(t, X))(obj.parameters_vector())
    J = J.reshape(N * K, -1)
    torch.testing.assert_close(G, J @ J.T, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="does not apply") as caught:
        gram_matrix(obj, method="linear-layers")
    assert reason in str(caught.value)

