"""The linear-layers algorithm of HessianVarianceOperator against a dense float64 oracle."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import hessian, vmap

import valleys
from valleys.operators import HessianVarianceOperator

N, D, K = 13, 5, 3


def oracle(obj: valleys.Objective, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """``Σ = mean_i H_i² − H²`` from dense per-sample Hessians.

    ``torch.func.hessian`` is a sound oracle for these models (no normalization layers); for
    LayerNorm models it is not, see ``_oracles.py`` and ``test_layernorm_transforms.py``.
    """
    theta = obj.parameters_vector()
    Hi = vmap(hessian(obj.sample_loss), in_dims=(None, 0, 0))(theta, X, Y)
    H = Hi.mean(0)
    return (Hi @ Hi).mean(0) - H @ H


def rel_err(A: torch.Tensor, B: torch.Tensor) -> float:
    return (A - B).abs().max().item() / max(B.abs().max().item(), 1e-300)


def data(loss: str, n: int = N, d: int = D, dtype=torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=dtype)
    Y = torch.randint(0, K, (n,), generator=g) if loss == "ce" else torch.randn(n, K, dtype=dtype)
    return X, Y


def mlp(act: type[nn.Module], bias: bool = True) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Linear(D, 6, bias=bias), act(), nn.Linear(6, 4, bias=bias), act(), nn.Linear(4, K)
    ).double()


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(D, 4)
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4, bias=False)
        self.head = nn.Linear(4, K)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        h = h + self.b(torch.relu(self.a(h))) * 0.5  # custom code between layers
        return self.head(h.flatten(1))


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 2, 3)
        self.head = nn.Linear(2 * (D - 2), K)

    def forward(self, x):
        return self.head(torch.tanh(self.conv(x.unsqueeze(1))).flatten(1))


class TwiceUsed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(D, D)
        self.head = nn.Linear(D, K)

    def forward(self, x):
        return self.head(torch.tanh(self.inner(torch.tanh(self.inner(x)))))


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(D, D)
        self.b = nn.Linear(D, D)
        self.b.weight = self.a.weight
        self.head = nn.Linear(D, K)

    def forward(self, x):
        return self.head(torch.tanh(self.b(torch.tanh(self.a(x)))))


class WeightUsedOutside(nn.Module):
    """Calls each Linear once but also uses a weight directly (not a rank-one structure)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(D, D)
        self.head = nn.Linear(D, K)

    def forward(self, x):
        h = torch.tanh(self.inner(x))
        return self.head(h) + 0.3 * nn.functional.linear(h.square(), self.head.weight)


class Sequence(nn.Module):
    """A Linear applied to 3-D inputs (batch, positions, features)."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Linear(1, 2)
        self.head = nn.Linear(2 * D, K)

    def forward(self, x):
        return self.head(torch.tanh(self.mix(x.unsqueeze(-1))).flatten(1))


class Switch(nn.Module):
    """Changes once ``mode`` is set (after the operator was built)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(D, D)
        self.head = nn.Linear(D, K)
        self.mode = None

    def forward(self, x):
        h = torch.tanh(self.inner(x))
        if self.mode == "twice":
            h = torch.tanh(self.inner(h))
        out = self.head(h)
        if self.mode == "outside":
            out = out + nn.functional.linear(h.square(), self.head.weight)
        return out


def check(model, loss, *, chunk_size=None, params=None, method="linear-layers", tol=1e-10):
    X, Y = data(loss)
    obj = valleys.Objective(model.double(), loss, (X, Y), chunk_size=chunk_size, params=params)
    op = HessianVarianceOperator(obj)
    assert op.method == method, op.fallback_reason
    dense = op.to_dense()
    assert op.method == method, op.fallback_reason
    assert rel_err(dense, oracle(obj, X, Y)) < tol
    if method == "vmap":  # the fastest per-sample products pass their check on these models
        assert op.sample_products == "reverse-over-forward", op.sample_products_reason
    return op


@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("act", [nn.Tanh, nn.ReLU])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("chunk_size", [None, 5])
def test_mlp_matches_oracle(loss, act, bias, chunk_size):
    op = check(mlp(act, bias), loss, chunk_size=chunk_size)
    assert op.fallback_reason is None


@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("chunk_size", [None, 4])
def test_residual_custom_module_matches_oracle(loss, chunk_size):
    torch.manual_seed(2)
    check(Residual(), loss, chunk_size=chunk_size)


def test_single_linear_model_and_custom_loss():
    torch.manual_seed(3)

    def softplus_loss(outputs, targets):
        return nn.functional.softplus(outputs - targets).sum(1)

    X, Y = data("mse")
    obj = valleys.Objective(nn.Linear(D, K).double(), softplus_loss, (X, Y))
    op = HessianVarianceOperator(obj)
    assert op.method == "linear-layers"
    assert rel_err(op.to_dense(), oracle(obj, X, Y)) < 1e-10


@pytest.mark.parametrize("chunk_size", [None, 5])
def test_parameter_subset_of_whole_layers(chunk_size):
    check(mlp(nn.Tanh), "ce", chunk_size=chunk_size, params=["2.*", "4.*"])
    check(mlp(nn.Tanh), "mse", chunk_size=chunk_size, params=["0.*"])


def test_subset_with_weight_only_falls_back():
    op = check(mlp(nn.Tanh), "mse", params=["2.weight", "4.*"], method="vmap")
    assert "outside θ" in op.fallback_reason


@pytest.mark.parametrize(
    ("make", "reason", "loss"),
    [
        (TinyCNN, "Conv1d", "ce"),
        (TwiceUsed, "more than once", "mse"),
        (Tied, "shared", "ce"),
        (Sequence, "shape", "mse"),
        (WeightUsedOutside, "outside their nn.Linear calls", "ce"),
    ],
)
def test_unsupported_models_fall_back_and_stay_exact(make, reason, loss):
    torch.manual_seed(4)
    op = check(make(), loss, method="vmap")
    assert reason in op.fallback_reason
    X, Y = data(loss)
    obj = valleys.Objective(make().double(), loss, (X, Y))
    with pytest.raises(ValueError, match="linear-layers"):
        HessianVarianceOperator(obj, method="linear-layers")


@pytest.mark.parametrize(
    ("mode", "reason"), [("twice", "more than once"), ("outside", "outside their nn.Linear")]
)
@pytest.mark.parametrize("chunk_size", [None, 6])
def test_fallback_during_a_product(mode, reason, chunk_size):
    torch.manual_seed(5)
    X, Y = data("mse")
    model = Switch().double()
    obj = valleys.Objective(model, "mse", (X, Y), chunk_size=chunk_size)
    op = HessianVarianceOperator(obj)
    forced = HessianVarianceOperator(obj, method="linear-layers")
    assert op.method == forced.method == "linear-layers"
    model.mode = mode  # the checks made when the operators were built no longer hold
    assert rel_err(op.to_dense(), oracle(obj, X, Y)) < 1e-10
    assert op.method == "vmap"
    assert reason in op.fallback_reason
    with pytest.raises(ValueError, match=reason):
        forced.matvec(torch.ones(obj.dim, dtype=torch.float64))
    assert all(not m._forward_hooks for m in model.modules())


class Spare(nn.Module):
    """An nn.Linear in θ that the forward pass never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.body = mlp(nn.Tanh)
        self.spare = nn.Linear(2, 2)

    def forward(self, x):
        return self.body(x)


def test_unused_layer_falls_back():
    op = check(Spare(), "mse", method="vmap")
    assert "'spare' is called 0 times" in op.fallback_reason


def test_float32_fast_and_vmap_agree_and_matmat_matches_matvec():
    model = mlp(nn.ReLU).float()
    X, Y = data("ce", n=40, dtype=torch.float32)
    for chunk_size in (None, 16):
        obj = valleys.Objective(model, "ce", (X, Y), chunk_size=chunk_size)
        fast = HessianVarianceOperator(obj)
        slow = HessianVarianceOperator(obj, method="vmap")
        assert (fast.method, slow.method) == ("linear-layers", "vmap")
        V = torch.randn(obj.dim, 7, generator=torch.Generator().manual_seed(0))
        block = fast.matmat(V)
        cols = torch.stack([fast.matvec(V[:, j]) for j in range(V.shape[1])], 1)
        assert rel_err(block, cols) < 1e-5
        assert rel_err(block, slow.matmat(V)) < 1e-4
        # The float32 check (tolerance sqrt(eps)) keeps the fast products.
        assert slow.sample_products == "reverse-over-forward", slow.sample_products_reason
        assert fast.num_matvecs == 14


def test_model_is_left_alone():
    model = mlp(nn.Tanh)
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    X, Y = data("mse")
    obj = valleys.Objective(model, "mse", (X, Y))
    op = HessianVarianceOperator(obj)
    ones = torch.ones(obj.dim, dtype=torch.float64)
    with torch.no_grad():
        product = op.matvec(ones)
    assert rel_err(product, oracle(obj, X, Y) @ ones) < 1e-10
    assert model.training
    assert all(not m._forward_hooks for m in model.modules())
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    assert model(X).shape == (N, K)


def test_method_validation():
    X, Y = data("mse")
    obj = valleys.Objective(mlp(nn.Tanh), "mse", (X, Y))
    with pytest.raises(ValueError, match="method"):
        HessianVarianceOperator(obj, method="fast")
    assert valleys.hessian_variance(obj, method="vmap").method == "vmap"
    assert valleys.hessian_variance(obj).method == "linear-layers"
