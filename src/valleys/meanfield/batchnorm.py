r"""Batch normalization as a change of metric (Ma & Ying 2021, arXiv 2110.08725).

**The model.** A two-layer network with batch normalization (BN) on the hidden
pre-activations, in the mean-field scaling, with full-batch (population) statistics of the
inputs ``x_1..x_n``, ``μ = mean(x)``, ``Σ = cov(x)`` (biased, as BN computes them):

.. math:: f(x; a, W) = \frac1m \sum_{k=1}^m a_k\, σ\Big(\frac{w_k^\top (x-μ)}{s_k}\Big),
          \qquad s_k = \sqrt{w_k^\top Σ w_k},

trained on ``L = (1/2n) Σ_i (f(x_i) − y_i)²``. BN has no ``ε`` here (``eps=0``): a positive
``ε`` breaks the scale invariance every statement below rests on. The BN gain is absorbed in
``a_k`` and the BN shift is omitted. Mean-field particle gradient descent moves each neuron by
``η m ∇_{θ_k} L`` (= ``η ∇_θ δL/δρ``), so the step does not depend on the width ``m``.

**Invariances** (hold for any loss that sees ``w`` only through BN outputs):

1. ``f`` is invariant under ``w_k → c w_k`` for ``c > 0`` (not ``c < 0`` unless ``σ`` is odd).
2. Euler's identity for degree-0 homogeneity: ``⟨∇_{w_k} L, w_k⟩ = 0``.
3. Hence under the gradient flow ``‖w_k‖`` is conserved, and under GD
   ``‖w_k'‖² = ‖w_k‖² + η_k²‖∇_{w_k}L‖²`` exactly (``η_k = ηm`` here): the norm only grows.
4. The direction moves with the effective step ``η/‖w_k‖²``: GD from ``c w`` with step
   ``c² η`` (first layer only) follows the same directions as GD from ``w`` with ``η``.

**The Riemannian formulation** (derived here from the model; the paper's own formula was not
available to us). Write ``u = φ(w) = w/s`` with ``s = \sqrt{wᵀΣw}``. Then ``u`` lies on the
ellipsoid ``E = {u : uᵀΣu = 1}`` and ``f(x; a, W) = g(x; a, U)`` where

.. math:: g(x; a, U) = \frac1m \sum_k a_k\, σ\big(u_k^\top (x-μ)\big)

is the same network *without BN* (on centred inputs, i.e. a bias tied to ``u``), restricted
to the manifold ``ℳ = ℝ^m × E^m``. Let ``G(a, U)`` be its loss and ``∇_u G`` its Euclidean
gradient. The differential of ``φ`` is ``Dφ(w) = Π_u / s`` with the (oblique) projection
``Π_u = I − u uᵀΣ`` onto the tangent space ``T_uE = {ξ : uᵀΣξ = 0}``; its kernel is
``span(u)``. The chain rule gives ``∇_w L = Π_uᵀ ∇_u G / s`` (which is ⟂ ``w``: fact 2).

*Metric.* The gradient flow ``ẇ = −∇_w L`` conserves ``r = ‖w‖`` and pushes forward to
``u̇ = −(1/s²) Π_u Π_uᵀ ∇_u G``, with ``s = r/‖u‖``. This is the Riemannian gradient flow of
``G`` on ``E`` for the quotient metric of ``w ↦ φ(w)`` (the metric for which ``Dφ`` maps the
horizontal space ``w^⟂`` isometrically onto ``T_uE``): the norm of ``ξ ∈ T_uE`` is the smallest
Euclidean norm of a ``ζ`` with ``Dφ ζ = ξ``. Those ``ζ`` are ``s(ξ + c u)``, and minimizing over
``c`` gives

.. math:: \langle ξ, ζ\rangle_{g} = \frac{r^2}{\|u\|^2}\; ξ^\top\Big(I - \frac{u u^\top}
          {\|u\|^2}\Big) ζ, \qquad ξ, ζ ∈ T_uE,

with Riemannian gradient ``grad_g G = (1/s²) Π_u Π_uᵀ ∇_u G = Π_u Π_uᵀ ∇_u G ‖u‖²/r²``. For
whitened data (``Σ = I``) ``E`` is the unit sphere and ``g = r²·(round metric)``. BN therefore
changes the metric of the BN-free network by a factor ``r_k²`` per neuron (a per-neuron
learning rate ``η/r_k²``) and by the ``Σ``-dependent shape above; ``a`` keeps the Euclidean
metric. In the mean-field limit the particles ``(a_k, u_k, r_k)`` move by the Wasserstein
gradient flow on ``ℳ`` with this metric, ``r_k`` being a conserved label.

*Discrete steps.* GD with BN, mapped through ``φ``, is *exactly* Riemannian GD without BN with

* the retraction ``R_u(ξ) = N(u + P_u^⟂ ξ)``, where ``N(v) = v/\sqrt{vᵀΣv}`` and
  ``P_u^⟂ = I − uuᵀ/‖u‖²`` (the image under ``φ`` of a Euclidean step along the horizontal
  lift of ``ξ``; ``R_u(0) = u`` and ``DR_u(0) = id`` since ``Π_u P_u^⟂ ξ = ξ`` on ``T_uE``);
* the step ``u' = R_u(−η_k grad_g G)`` where ``g`` uses the current ``r_k``;
* the metric scale updated by the norm recursion
  ``r_k'² = r_k² + η_k² ‖grad_g G‖_g²`` (because ``∇_w L`` is the horizontal lift of
  ``grad_g G``, ``‖∇_w L‖ = ‖grad_g G‖_g``).

Indeed ``w − η∇_wL = s(u − (η/s²)Π_uᵀ∇_uG)`` and ``Π_uᵀ∇_uG/s² = P_u^⟂ grad_g G`` (both lie in
``u^⟂`` and ``P_u^⟂Π_u = P_u^⟂``), and ``N`` discards the factor ``s``.
:func:`compare_bn_riemannian` runs both and reports their step-by-step mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from valleys._checks import positive_real
from valleys._records import record_to_dict
from valleys.errors import ArgumentTypeError, ArgumentValueError

__all__ = [
    "BNRiemannianComparison",
    "bn_forward",
    "bn_gd_step",
    "bn_loss",
    "bn_statistics",
    "compare_bn_riemannian",
    "horizontal_lift",
    "manifold_forward",
    "manifold_loss",
    "metric_inner",
    "retract",
    "riemannian_gd_step",
    "riemannian_gradient",
    "tangent_projection",
    "to_manifold",
]

_ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh}


def _activation(name: str):
    if name not in _ACTIVATIONS:
        raise ArgumentValueError(
            f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


def _check_data(X: torch.Tensor, y: torch.Tensor | None = None) -> None:
    if not isinstance(X, torch.Tensor) or X.ndim != 2:
        raise ArgumentTypeError("X must be a 2-D tensor of inputs (n, d)")
    if not X.is_floating_point():
        raise ArgumentTypeError(f"X must be floating point, got {X.dtype}")
    if X.shape[0] < 2:
        raise ArgumentValueError("batch normalization needs at least 2 samples")
    if y is not None and (y.ndim != 1 or y.shape[0] != X.shape[0]):
        raise ArgumentValueError(f"y must have shape ({X.shape[0]},), got {tuple(y.shape)}")


def _check_params(a: torch.Tensor, W: torch.Tensor, d: int) -> None:
    if a.ndim != 1 or W.ndim != 2 or W.shape != (a.shape[0], d):
        raise ArgumentValueError(
            f"expected a of shape (m,) and W of shape (m, {d}); got {tuple(a.shape)} and "
            f"{tuple(W.shape)}"
        )


def bn_statistics(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch mean ``μ`` and biased covariance ``Σ = (1/n) Σ_i (x_i−μ)(x_i−μ)ᵀ`` BN uses."""
    _check_data(X)
    mean = X.mean(0)
    centred = X - mean
    return mean, centred.T @ centred / X.shape[0]


def bn_forward(X: torch.Tensor, a: torch.Tensor, W: torch.Tensor, *, activation: str = "relu",
               eps: float = 0.0) -> torch.Tensor:
    r"""``f(x_i) = (1/m) Σ_k a_k σ(BN(w_kᵀx)_i)`` with BN over the batch ``X`` (train mode).

    ``BN(z)_i = (z_i − mean(z)) / sqrt(var(z) + eps)`` (biased variance, no affine part).

    Raises:
        ValueError: if a neuron's pre-activation has zero variance over the batch and
            ``eps == 0`` (its direction is undefined).
    """
    _check_data(X)
    _check_params(a, W, X.shape[1])
    if eps < 0:
        raise ArgumentValueError(f"eps must be >= 0, got {eps}")
    z = X @ W.T
    z = z - z.mean(0)
    var = (z * z).mean(0)
    if eps == 0 and bool((var <= 0).any()):
        raise ArgumentValueError("a neuron has zero pre-activation variance over the batch; "
                                 "BN is undefined for it (use eps > 0 or change W)")
    return _activation(activation)(z / torch.sqrt(var + eps)) @ a / a.shape[0]


def bn_loss(X: torch.Tensor, y: torch.Tensor, a: torch.Tensor, W: torch.Tensor, *,
            activation: str = "relu", eps: float = 0.0) -> torch.Tensor:
    """Square loss ``(1/2n) Σ_i (f(x_i) − y_i)²`` of the BN network."""
    _check_data(X, y)
    r = bn_forward(X, a, W, activation=activation, eps=eps) - y
    return 0.5 * (r * r).mean()


def to_manifold(W: torch.Tensor, cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``φ(w_k) = w_k / sqrt(w_kᵀΣw_k)`` on the ellipsoid, and the norms ``r_k = ‖w_k‖``."""
    s2 = torch.einsum("ki,ij,kj->k", W, cov, W)
    if bool((s2 <= 0).any()):
        raise ArgumentValueError("some w_k has w_kᵀΣw_k = 0: BN is undefined for that neuron")
    return W / torch.sqrt(s2)[:, None], torch.linalg.vector_norm(W, dim=1)


def manifold_forward(X: torch.Tensor, a: torch.Tensor, U: torch.Tensor, mean: torch.Tensor, *,
                     activation: str = "relu") -> torch.Tensor:
    """The BN-free network ``g(x) = (1/m) Σ_k a_k σ(u_kᵀ(x − μ))`` (``u_k`` on the ellipsoid)."""
    _check_params(a, U, X.shape[1])
    return _activation(activation)((X - mean) @ U.T) @ a / a.shape[0]


def manifold_loss(X: torch.Tensor, y: torch.Tensor, a: torch.Tensor, U: torch.Tensor,
                  mean: torch.Tensor, *, activation: str = "relu") -> torch.Tensor:
    """Square loss ``(1/2n) Σ_i (g(x_i) − y_i)²`` of the BN-free network."""
    _check_data(X, y)
    r = manifold_forward(X, a, U, mean, activation=activation) - y
    return 0.5 * (r * r).mean()


def tangent_projection(U: torch.Tensor, V: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """``Π_u v = v − u (uᵀΣv)`` row by row: onto ``T_uE = {ξ : uᵀΣξ = 0}`` along ``u``."""
    return V - U * ((U @ cov) * V).sum(1, keepdim=True)


def _tangent_projection_T(U: torch.Tensor, V: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """``Π_uᵀ v = v − Σu (uᵀv)`` row by row (onto ``u^⟂`` along ``Σu``)."""
    return V - (U @ cov) * (U * V).sum(1, keepdim=True)


def _metric_scale(U: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """``s_k² = r_k² / ‖u_k‖²`` (the BN scale ``w_kᵀΣw_k`` of the neuron)."""
    return radius**2 / (U * U).sum(1)


def metric_inner(U: torch.Tensor, xi: torch.Tensor, zeta: torch.Tensor,
                 radius: torch.Tensor) -> torch.Tensor:
    r"""``⟨ξ_k, ζ_k⟩_g = (r_k²/‖u_k‖²) ξ_kᵀ(I − u_k u_kᵀ/‖u_k‖²) ζ_k`` for each neuron ``k``.

    The metric BN induces on the ellipsoid (module docstring); ``ξ, ζ`` must be tangent.
    """
    norm2 = (U * U).sum(1)
    plain = (xi * zeta).sum(1) - (U * xi).sum(1) * (U * zeta).sum(1) / norm2
    return radius**2 / norm2 * plain


def riemannian_gradient(U: torch.Tensor, euclid_grad: torch.Tensor, cov: torch.Tensor,
                        radius: torch.Tensor) -> torch.Tensor:
    """``grad_g G = (‖u‖²/r²) Π_u Π_uᵀ ∇_u G`` per neuron: the Riemannian gradient for
    :func:`metric_inner` (``⟨grad_g G, ξ⟩_g = ∇_uGᵀξ`` for every tangent ``ξ``)."""
    inner = _tangent_projection_T(U, euclid_grad, cov)
    return tangent_projection(U, inner, cov) / _metric_scale(U, radius)[:, None]


def horizontal_lift(U: torch.Tensor, xi: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """``s (I − uuᵀ/‖u‖²) ξ``: the smallest ``ζ`` with ``Dφ(w) ζ = ξ`` (``w = s u``).

    Its Euclidean norm is ``‖ξ‖_g``; the lift of ``grad_g G`` is the BN gradient ``∇_w L``.
    """
    norm2 = (U * U).sum(1, keepdim=True)
    s = torch.sqrt(_metric_scale(U, radius))[:, None]
    return s * (xi - U * (U * xi).sum(1, keepdim=True) / norm2)


def retract(U: torch.Tensor, xi: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """``R_u(ξ) = N(u + (I − uuᵀ/‖u‖²) ξ)`` with ``N(v) = v / sqrt(vᵀΣv)``, per neuron."""
    norm2 = (U * U).sum(1, keepdim=True)
    V = U + xi - U * (U * xi).sum(1, keepdim=True) / norm2
    return V / torch.sqrt(torch.einsum("ki,ij,kj->k", V, cov, V))[:, None]


def bn_gd_step(X: torch.Tensor, y: torch.Tensor, a: torch.Tensor, W: torch.Tensor, lr: float, *,
               activation: str = "relu", train_a: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One mean-field-scaled GD step on the BN network (gradients by autograd).

    ``θ_k ← θ_k − η m ∇_{θ_k} L`` for ``θ_k = (a_k, w_k)``; ``a`` stays put if not ``train_a``.

    Returns:
        ``(a', W', loss, grad_W)`` with the loss and first-layer gradient at ``(a, W)``.
    """
    a_ = a.detach().requires_grad_(train_a)
    W_ = W.detach().requires_grad_(True)
    loss = bn_loss(X, y, a_, W_, activation=activation)
    inputs = (a_, W_) if train_a else (W_,)
    grads = torch.autograd.grad(loss, inputs)
    step = lr * a.shape[0]
    grad_W = grads[-1]
    a_new = a.detach() - step * grads[0] if train_a else a.detach()
    return a_new, W.detach() - step * grad_W, loss.detach(), grad_W


def riemannian_gd_step(X: torch.Tensor, y: torch.Tensor, a: torch.Tensor, U: torch.Tensor,
                       radius: torch.Tensor, lr: float, mean: torch.Tensor, cov: torch.Tensor,
                       *, activation: str = "relu", train_a: bool = True
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One mean-field-scaled Riemannian GD step of the BN-free network on ``ℝ^m × E^m``.

    ``a ← a − ηm∇_aG``, ``u ← R_u(−ηm grad_g G)``, ``r² ← r² + (ηm)²‖grad_g G‖_g²``, with the
    metric of :func:`metric_inner`; the Euclidean gradient ``∇_u G`` comes from autograd.

    Returns:
        ``(a', U', r', loss)`` with the loss at ``(a, U)``.
    """
    a_ = a.detach().requires_grad_(train_a)
    U_ = U.detach().requires_grad_(True)
    loss = manifold_loss(X, y, a_, U_, mean, activation=activation)
    inputs = (a_, U_) if train_a else (U_,)
    grads = torch.autograd.grad(loss, inputs)
    step = lr * a.shape[0]
    U = U.detach()
    rgrad = riemannian_gradient(U, grads[-1], cov, radius)
    sq_norm = metric_inner(U, rgrad, rgrad, radius)
    a_new = a.detach() - step * grads[0] if train_a else a.detach()
    return (a_new, retract(U, -step * rgrad, cov), torch.sqrt(radius**2 + step**2 * sq_norm),
            loss.detach())


@dataclass(frozen=True)
class BNRiemannianComparison:
    """GD with BN against Riemannian GD without BN, step by step.

    Attributes:
        loss_bn: loss of the BN network at steps ``0..T`` (tensor, ``T+1``).
        loss_riemannian: loss of the BN-free network on the manifold at steps ``0..T``.
        mismatch: per step, the largest relative difference ``‖x − x'‖/‖x'‖`` over
            ``x ∈ {a, φ(W) vs U, ‖w_k‖ vs r_k, outputs on X}`` (``T+1``).
        max_relative_mismatch: ``max(mismatch)``.
        norm_sq: ``‖w_k‖²`` of the BN run, shape ``(T+1, m)``.
        norm_sq_predicted: ``‖w_k^0‖² + Σ_{s<t} (ηm)²‖∇_{w_k}L^s‖²`` (the growth law).
        euler_inner: per step, ``max_k |⟨∇_{w_k}L, w_k⟩| / (‖∇_{w_k}L‖‖w_k‖)`` (Euler, ≈ 0).
        lr: the step ``η`` (particles move by ``ηm``).
        width: ``m``.
        diverged: whether a non-finite value stopped the run early.
    """

    loss_bn: torch.Tensor
    loss_riemannian: torch.Tensor
    mismatch: torch.Tensor
    max_relative_mismatch: float
    norm_sq: torch.Tensor
    norm_sq_predicted: torch.Tensor
    euler_inner: torch.Tensor
    lr: float
    width: int
    diverged: bool

    def to_dict(self) -> dict:
        return record_to_dict(self)


def _rel(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x - ref) / torch.linalg.vector_norm(ref).clamp_min(
        torch.finfo(ref.dtype).tiny)


def compare_bn_riemannian(X: torch.Tensor, y: torch.Tensor, a0: torch.Tensor, W0: torch.Tensor,
                          lr: float, steps: int, *, activation: str = "relu",
                          train_a: bool = True) -> BNRiemannianComparison:
    """Run ``steps`` of GD with BN and of Riemannian GD without BN from the same point.

    The BN run starts at ``(a0, W0)``; the Riemannian run at ``(a0, φ(W0))`` with ``r = ‖W0‖``.
    Both use the data statistics ``μ, Σ`` of ``X`` (full-batch BN). See the module docstring
    for why the two should agree to rounding error.
    """
    _check_data(X, y)
    _check_params(a0, W0, X.shape[1])
    if steps < 0:
        raise ArgumentValueError(f"steps must be >= 0, got {steps}")
    positive_real(lr, "lr")
    mean, cov = bn_statistics(X)
    a_bn, W = a0.detach(), W0.detach()
    a_r = a0.detach()
    U, radius = to_manifold(W, cov)
    step = lr * a0.shape[0]
    losses_bn, losses_r, mismatch, norms, predicted, euler = [], [], [], [], [], []
    pred = (W * W).sum(1)
    diverged = False
    for t in range(steps + 1):
        U_bn, r_bn = to_manifold(W, cov)
        out_bn = bn_forward(X, a_bn, W, activation=activation)
        out_r = manifold_forward(X, a_r, U, mean, activation=activation)
        mismatch.append(torch.stack([_rel(a_bn, a_r), _rel(U_bn, U), _rel(r_bn, radius),
                                     _rel(out_bn, out_r)]).max())
        norms.append((W * W).sum(1))
        predicted.append(pred)
        if t == steps:
            losses_bn.append(bn_loss(X, y, a_bn, W, activation=activation))
            losses_r.append(manifold_loss(X, y, a_r, U, mean, activation=activation))
            break
        a_bn, W_new, loss_bn, grad_W = bn_gd_step(X, y, a_bn, W, lr, activation=activation,
                                                  train_a=train_a)
        inner = (grad_W * W).sum(1).abs()
        scale = torch.linalg.vector_norm(grad_W, dim=1) * torch.linalg.vector_norm(W, dim=1)
        euler.append((inner / scale.clamp_min(torch.finfo(W.dtype).tiny)).max())
        pred = pred + step**2 * (grad_W * grad_W).sum(1)
        W = W_new
        a_r, U, radius, loss_r = riemannian_gd_step(X, y, a_r, U, radius, lr, mean, cov,
                                                    activation=activation, train_a=train_a)
        losses_bn.append(loss_bn)
        losses_r.append(loss_r)
        if not (torch.isfinite(W).all() and torch.isfinite(U).all() and torch.isfinite(a_bn).all()):
            diverged = True
            break
    mm = torch.stack(mismatch)
    empty = torch.zeros(0, dtype=X.dtype, device=X.device)
    return BNRiemannianComparison(
        loss_bn=torch.stack(losses_bn), loss_riemannian=torch.stack(losses_r), mismatch=mm,
        max_relative_mismatch=float(mm.max()), norm_sq=torch.stack(norms),
        norm_sq_predicted=torch.stack(predicted),
        euler_inner=torch.stack(euler) if euler else empty, lr=lr, width=int(a0.shape[0]),
        diverged=diverged,
    )
