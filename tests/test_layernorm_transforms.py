"""Per-sample curvature of normalization-layer models against a double-backward oracle.

On the installed torch two ``torch.func`` compositions are wrong for ``nn.LayerNorm``:

* any derivative of a ``jvp`` through it (``grad∘jvp``, ``jacrev∘jacfwd``, ``jacfwd∘jacfwd``):
  its forward-mode rule uses the saved mean and 1/std, which carry no derivative;
* an outer transform over a ``vmap`` of its backward (``jacrev∘jacrev``, ``torch.func.hessian``
  = ``jacfwd∘jacrev``, ``grad∘vmap∘grad``): functorch's batching rule for ``γ``'s gradient uses
  the same saved statistics, so the ``∂²/∂γ∂x`` block is missed (affine layers only).

The per-sample paths of valleys used both (reverse-over-forward products in the Hessian variance,
``vmap(torch.func.hessian)`` in the exact mean-square test). They now check a few samples against
double backward before use and take an exact composition when the check fails.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from _oracles import dense_hessian, hessian_variance, sample_ggns, sample_hessians
from torch import nn

import valleys
from valleys.operators import HessianVarianceOperator
from valleys.stability import exact_mean_square, per_sample_hessians, stability_analysis

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
N, D, WIDTH, K = 20, 5, 8, 3
RTOL = 1e-9


class ManualRMSNorm(nn.Module):
    """``x / sqrt(mean x² + ε) · γ`` from elementary operations (no fused kernel)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-6) * self.weight


class NotVmappable(nn.Module):
    """An MLP whose forward calls ``.item()``, which no ``vmap`` can trace."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(D, WIDTH)
        self.head = nn.Linear(WIDTH, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.abs().max().item() > 1e6:
            raise ValueError("inputs out of range")
        return self.head(torch.tanh(self.inner(x)))


def make_model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    norms = {
        "layernorm": lambda: nn.LayerNorm(WIDTH),
        "layernorm-plain": lambda: nn.LayerNorm(WIDTH, elementwise_affine=False),
        "rmsnorm-manual": lambda: ManualRMSNorm(WIDTH),
        "batchnorm-eval": lambda: nn.BatchNorm1d(WIDTH),
        "groupnorm": lambda: nn.GroupNorm(2, WIDTH),
    }
    if kind == "not-vmappable":
        return NotVmappable().double()
    model = nn.Sequential(nn.Linear(D, WIDTH), norms[kind](), nn.Tanh(), nn.Linear(WIDTH, K))
    model = model.double()
    with torch.no_grad():
        norm = model[1]
        for name, p in norm.named_parameters():  # away from the initial γ = 1, β = 0
            p.add_(0.4 * torch.randn_like(p) + (0.2 if name == "weight" else 0.0))
        if kind == "batchnorm-eval":
            norm.running_mean.normal_()
            norm.running_var.uniform_(0.5, 2.0)
    return model.eval()


def make_data(loss: str):
    g = torch.Generator().manual_seed(1)
    X = torch.randn(N, D, generator=g, dtype=F64)
    Y = torch.randint(0, K, (N,), generator=g) if loss == "ce" else torch.randn(N, K,
                                                                               generator=g,
                                                                               dtype=F64)
    return X, Y


_ORACLES: dict = {}


def problem(kind: str, loss: str, chunk_size: int | None = None):
    """``(objective, per-sample Hessians)``; the oracle is built once per model and loss."""
    obj = valleys.Objective(make_model(kind), loss, make_data(loss), chunk_size=chunk_size)
    if (kind, loss) not in _ORACLES:
        _ORACLES[kind, loss] = sample_hessians(obj)
    return obj, _ORACLES[kind, loss]


def rel_err(A: torch.Tensor, B: torch.Tensor) -> float:
    return float((A - B).norm() / B.norm())


# -- the Hessian variance and the non-uniformity ------------------------------------------------
@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("chunk_size", [None, 7])
def test_hessian_variance_of_layernorm_model_is_exact(loss, chunk_size):
    obj, Hs = problem("layernorm", loss, chunk_size)
    op = HessianVarianceOperator(obj)
    assert op.method == "vmap"  # LayerNorm parameters: no linear-layers path
    with pytest.warns(RuntimeWarning, match=r"reverse-over-forward.*nn\.LayerNorm '1'"):
        dense = op.to_dense()
    assert op.sample_products == "reverse-over-reverse"
    assert "double backward" in op.sample_products_reason
    assert rel_err(dense, hessian_variance(Hs)) < RTOL
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the check warns once per operator
        op.matvec(torch.ones(obj.dim, dtype=F64))


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_nonuniformity_of_layernorm_model_is_exact(loss):
    obj, Hs = problem("layernorm", loss)
    Sigma = hessian_variance(Hs)
    truth = math.sqrt(float(torch.linalg.eigvalsh(Sigma)[-1]))
    with pytest.warns(RuntimeWarning, match="LayerNorm"):
        s = valleys.nonuniformity(obj, tol=1e-10)
    assert s == pytest.approx(truth, rel=1e-8)
    with pytest.warns(RuntimeWarning, match="LayerNorm"):
        result = stability_analysis(obj, 0.05, 4, tol=1e-10)
    assert result.nonuniformity == pytest.approx(truth, rel=1e-6)
    sharp = float(torch.linalg.eigvalsh(Hs.mean(0))[-1])
    assert result.sharpness == pytest.approx(sharp, rel=1e-6)


def test_layernorm_without_affine_parameters():
    """θ is then whole Linear layers (the factored path, exact); the vmap path is checked too."""
    obj, Hs = problem("layernorm-plain", "ce")
    fast = HessianVarianceOperator(obj)
    assert fast.method == "linear-layers"
    assert rel_err(fast.to_dense(), hessian_variance(Hs)) < RTOL
    vmapped = HessianVarianceOperator(obj, method="vmap")
    with pytest.warns(RuntimeWarning, match="LayerNorm"):
        dense = vmapped.to_dense()
    assert vmapped.sample_products == "reverse-over-reverse"
    assert rel_err(dense, hessian_variance(Hs)) < RTOL


@pytest.mark.parametrize("kind", ["rmsnorm-manual", "batchnorm-eval", "groupnorm"])
def test_other_normalizations_keep_the_fast_products(kind):
    obj, Hs = problem(kind, "mse")
    op = HessianVarianceOperator(obj)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        dense = op.to_dense()
    assert (op.method, op.sample_products) == ("vmap", "reverse-over-forward")
    assert op.sample_products_reason is None
    assert rel_err(dense, hessian_variance(Hs)) < RTOL


def test_unvmappable_model_falls_back_to_double_backward():
    obj, Hs = problem("not-vmappable", "mse")
    op = HessianVarianceOperator(obj, method="vmap")
    with pytest.warns(RuntimeWarning, match="RuntimeError"):
        dense = op.to_dense()
    assert op.sample_products == "double-backward"
    assert rel_err(dense, hessian_variance(Hs)) < RTOL
    with pytest.warns(RuntimeWarning, match="double-backward"):
        assert rel_err(per_sample_hessians(obj), Hs) < RTOL
    G = sample_ggns(obj)
    Gm = G.mean(0)
    op = valleys.ggn_variance(obj)
    with pytest.warns(RuntimeWarning, match="Jacobians"):
        gv = op.to_dense()
    assert op.jacobian_algorithm == "backward"
    assert rel_err(gv, (G @ G).mean(0) - Gm @ Gm) < RTOL


# -- dense per-sample Hessians and the exact mean-square test -----------------------------------
@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_per_sample_hessians_of_layernorm_model_are_exact(loss):
    """``jacfwd∘grad`` (the first algorithm) is exact here, so no fallback and no warning."""
    obj, Hs = problem("layernorm", loss)
    lr = 1.0 / float(torch.linalg.eigvalsh(Hs.mean(0))[-1])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        fast = per_sample_hessians(obj)
        result = exact_mean_square(obj, lr, 4, method="lanczos", tol=1e-10)
    assert rel_err(fast, Hs) < RTOL
    assert rel_err(fast, fast.transpose(1, 2)) < RTOL
    reference = exact_mean_square(Hs, lr, 4, method="lanczos", tol=1e-10)
    assert result.spectral_radius == pytest.approx(reference.spectral_radius, rel=1e-8)
    assert result.sufficient_lambda_max == pytest.approx(reference.sufficient_lambda_max,
                                                         rel=1e-8)


# -- operators that never used a failing composition stay exact ---------------------------------
@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_hessian_ggn_and_gradient_covariance_of_layernorm_model(loss):
    obj, Hs = problem("layernorm", loss)
    theta = obj.parameters_vector()
    X, Y = make_data(loss)
    H = dense_hessian(lambda t: obj.chunk_losses(t, X, Y).mean(), theta)
    assert rel_err(Hs.mean(0), H) < 1e-12  # the two oracles agree
    assert rel_err(valleys.hessian(obj).to_dense(), H) < RTOL
    assert rel_err(valleys.hessian(obj, backend="forward-over-reverse").to_dense(), H) < RTOL
    G = sample_ggns(obj)
    Gm = G.mean(0)
    assert rel_err(valleys.ggn(obj).to_dense(), Gm) < RTOL
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # first-order vmap Jacobians pass
        gv = valleys.ggn_variance(obj).to_dense()
    assert rel_err(gv, (G @ G).mean(0) - Gm @ Gm) < RTOL
    grads = torch.stack([_sample_gradient(obj, theta, x, y)
                         for x, y in zip(X, Y, strict=True)])
    g = grads.mean(0)
    cov = grads.T @ grads / N - torch.outer(g, g)
    assert rel_err(valleys.gradient_covariance(obj).to_dense(), cov) < RTOL


def _sample_gradient(obj, theta, x, y) -> torch.Tensor:
    leaf = theta.detach().clone().requires_grad_(True)
    return torch.autograd.grad(obj.sample_loss(leaf, x, y), leaf)[0]
