"""Dense float64 oracles built by plain double backward, one row at a time.

``torch.func`` compositions are not trustworthy references for every model: on the installed
torch, ``torch.func.hessian`` (``jacfwd∘jacrev``) and ``jacrev∘jacrev`` are wrong for models
with ``nn.LayerNorm`` (functorch's batching rule of the layer-norm backward treats the saved mean
and 1/std as constants, and an outer transform differentiates that rule), and so is every
derivative of a ``jvp`` through it (its forward-mode rule has the same defect). Plain autograd
with one cotangent per backward pass runs none of these rules, so the oracles here are built
that way: ``H[j] = ∇_θ (∇f(θ))_j`` row by row, never under ``vmap`` or ``is_grads_batched``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

import valleys


def dense_hessian(fn: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor) -> torch.Tensor:
    """``∇²fn(θ)`` as a dense ``p × p`` matrix, row ``j`` by a backward pass of ``(∇fn)_j``."""
    leaf = theta.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        g = torch.autograd.grad(fn(leaf), leaf, create_graph=True)[0]
        rows = []
        for j in range(leaf.numel()):
            row = None
            if g.requires_grad:
                row = torch.autograd.grad(g[j], leaf, retain_graph=True, allow_unused=True)[0]
            rows.append(torch.zeros_like(leaf) if row is None else row)
    return torch.stack(rows)


def _samples(obj: valleys.Objective):
    for X, Y in obj.chunks():
        yield from zip(X, Y, strict=True)


def sample_hessians(obj: valleys.Objective, theta: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample Hessians ``∇²ℓ_i(θ)``, shape ``(n, p, p)``."""
    theta = obj.parameters_vector() if theta is None else theta
    return torch.stack(
        [dense_hessian(lambda t, x=x, y=y: obj.sample_loss(t, x, y), theta)
         for x, y in _samples(obj)]
    )


def hessian_variance(Hs: torch.Tensor) -> torch.Tensor:
    """``Σ = mean_i H_i² − H²`` from per-sample Hessians."""
    H = Hs.mean(0)
    return (Hs @ Hs).mean(0) - H @ H


def sample_jacobians(obj: valleys.Objective, theta: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample output Jacobians ``J_i = ∂f(x_i)/∂θ``, shape ``(n, K, p)``, row by row."""
    theta = obj.parameters_vector() if theta is None else theta
    out = []
    for x, _ in _samples(obj):
        leaf = theta.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            f = obj.forward(leaf, x.unsqueeze(0))[0].reshape(-1)
            out.append(torch.stack(
                [torch.autograd.grad(f[k], leaf, retain_graph=True)[0] for k in range(f.numel())]
            ))
    return torch.stack(out)


def sample_ggns(obj: valleys.Objective, theta: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample Gauss–Newton matrices ``J_iᵀΛ_iJ_i`` for ``"mse"`` or ``"ce"``."""
    theta = obj.parameters_vector() if theta is None else theta
    J = sample_jacobians(obj, theta)
    X = torch.cat([X for X, _ in obj.chunks()])
    out = obj.forward(theta.detach(), X).detach()
    if obj.loss_name == "mse":
        lam = torch.eye(out.shape[1], dtype=out.dtype).expand(out.shape[0], -1, -1)
    elif obj.loss_name == "ce":
        p = out.softmax(-1)
        lam = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    else:
        raise ValueError(f"no closed-form output Hessian for loss {obj.loss_name!r}")
    return J.transpose(1, 2) @ lam @ J
