"""Every registered curvature operator on a tiny GPT (2 layers, d = 32: LayerNorm, embeddings,
causal attention through fused kernels, weight tying, per-token losses with padding), against
products built from the definitions by plain double backward, sample by sample."""

import pytest
import torch

import valleys
from valleys._attention import math_attention
from valleys.models import TinyGPT

pytestmark = pytest.mark.filterwarnings("ignore:the model reaches a fused")

PAD = -100


def token_loss(outputs, targets):
    """Per-sequence mean next-token cross-entropy over the non-padding targets."""
    logits = outputs[:, :-1]
    labels = targets[:, 1:]
    losses = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                               labels.reshape(-1), ignore_index=PAD,
                                               reduction="none").reshape(labels.shape)
    keep = (labels != PAD).to(outputs.dtype)
    return (losses * keep).sum(1) / keep.sum(1)


@pytest.fixture(scope="module")
def gpt():
    model = TinyGPT(16, d_model=32, n_layer=2, n_head=2, max_len=8, seed=0).double()
    gen = torch.Generator().manual_seed(0)
    X = torch.randint(0, 16, (3, 8), generator=gen)
    Y = X.clone()
    Y[1, 6:] = PAD  # padded ends: causal attention keeps them out of the real positions
    Y[2, 4:] = PAD
    obj = valleys.Objective(model, token_loss, (X, Y))
    theta = obj.parameters_vector()
    V = torch.randn(obj.dim, 2, generator=gen, dtype=torch.float64)
    return obj, theta, X, Y, V


def _sample_risk(obj, i, X, Y):
    return lambda t: obj.chunk_losses(t, X[i:i + 1], Y[i:i + 1])[0]


def _hvp(fn, theta, v):
    leaf = theta.clone().requires_grad_(True)
    with math_attention():
        g = torch.autograd.grad(fn(leaf), leaf, create_graph=True)[0]
        return torch.autograd.grad(g @ v, leaf)[0]


def _grad(fn, theta):
    leaf = theta.clone().requires_grad_(True)
    with math_attention():
        return torch.autograd.grad(fn(leaf), leaf)[0]


def _ggn_vp(obj, i, X, Y, theta, v):
    """J_iᵀ Λ_i J_i v with Λ_i the loss Hessian in the outputs (all by autograd)."""
    def out(t):
        return obj.forward(t, X[i:i + 1])
    with math_attention():
        f, jv = torch.func.jvp(out, (theta,), (v,))
        leaf = f.detach().requires_grad_(True)
        gl = torch.autograd.grad(obj.loss_fn(leaf, Y[i:i + 1]).sum(), leaf, create_graph=True)[0]
        lam_jv = torch.autograd.grad(gl, leaf, jv)[0]
        _, vjp = torch.func.vjp(out, theta)
        return vjp(lam_jv)[0]


def _oracle(name, obj, theta, X, Y, v):
    n = X.shape[0]
    risks = [_sample_risk(obj, i, X, Y) for i in range(n)]
    if name == "hessian":
        return sum(_hvp(r, theta, v) for r in risks) / n
    if name == "ggn":
        return sum(_ggn_vp(obj, i, X, Y, theta, v) for i in range(n)) / n
    grads = torch.stack([_grad(r, theta) for r in risks])
    mean = grads.mean(0)
    if name == "empirical_fisher":
        return grads.T @ (grads @ v) / n
    if name == "gradient_covariance":
        return grads.T @ (grads @ v) / n - mean * (mean @ v)
    if name == "hessian_variance":
        Hv = [_hvp(r, theta, v) for r in risks]
        second = sum(_hvp(r, theta, h) for r, h in zip(risks, Hv, strict=True)) / n
        Hbar_v = sum(Hv) / n
        return second - sum(_hvp(r, theta, Hbar_v) for r in risks) / n
    if name == "ggn_variance":
        Gv = [_ggn_vp(obj, i, X, Y, theta, v) for i in range(n)]
        second = sum(_ggn_vp(obj, i, X, Y, theta, g) for i, g in enumerate(Gv)) / n
        Gbar_v = sum(Gv) / n
        return second - sum(_ggn_vp(obj, i, X, Y, theta, Gbar_v) for i in range(n)) / n
    raise AssertionError(f"no oracle for {name}")


@pytest.mark.parametrize("name", list(valleys.operators.CURVATURES))
def test_every_operator_on_a_tiny_gpt(gpt, name):
    obj, theta, X, Y, V = gpt
    make = valleys.operators.CURVATURES[name].factory
    if name == "mc_fisher":  # samples labels from a known predictive law: refused, and says so
        with pytest.raises(ValueError, match="predictive distribution"):
            make(obj, theta)
        return
    op = make(obj, theta)
    for j in range(V.shape[1]):
        expected = _oracle(name, obj, theta, X, Y, V[:, j])
        got = op @ V[:, j]
        scale = float(expected.abs().max())
        torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-9 * scale)


def test_global_attention_settings_are_left_alone(gpt):
    obj, theta, *_ = gpt
    def settings():
        cuda = torch.backends.cuda
        return (cuda.flash_sdp_enabled(), cuda.mem_efficient_sdp_enabled(),
                cuda.math_sdp_enabled())

    before = settings()
    valleys.hessian(obj, theta) @ torch.ones(obj.dim, dtype=torch.float64)
    assert settings() == before
