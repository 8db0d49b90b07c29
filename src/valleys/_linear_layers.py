r"""Per-sample factors of ``nn.Linear`` layers, recorded with hooks (no model change).

For a layer ``z_i = W a_i + b`` the gradient of any per-sample quantity ``φ_i`` with respect to
``(W, b)`` is the rank-one ``(δ_i a_iᵀ, δ_i)``, ``δ_i = ∂φ_i/∂z_i``. So when ``θ`` is made of
whole ``nn.Linear`` layers, per-sample gradients (and Jacobian rows) never need to be formed:
the layer inputs ``a_i`` and the output cotangents ``δ_i`` suffice. :func:`forward_with_shifts`
records ``a_i`` with a forward hook and adds a zero ``shift`` to each layer's output, whose
gradient is ``δ``. Users: the Gram path of :mod:`valleys.stability.gram` (``φ = f_k``) and the
mini-batch gradients of :mod:`valleys.noise._minibatch` (``φ = ℓ``).

Call counts and input shapes are checked by the hook, but a parameter of ``θ`` can also be used
outside its layer's call (``F.linear(h, layer.weight)``, tied weights); then the gradient is no
longer ``(δ aᵀ, δ)``. :func:`check_factored_gradient` compares the factored gradient with
autograd's on a few samples once, and raises :class:`Unsupported` when they differ.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from valleys.objective import Objective


class Unsupported(Exception):
    """The model does not fit the factored path (the caller falls back or explains)."""


def linear_layers(obj: Objective) -> list[nn.Linear] | str:
    """The ``nn.Linear`` modules that make up ``θ`` (in ``θ``'s order), or why they do not."""
    owner: dict[str, nn.Linear] = {}
    for prefix, module in obj.model.named_modules():
        if isinstance(module, nn.Linear):
            for pname, _ in module.named_parameters(recurse=False):
                owner[f"{prefix}.{pname}" if prefix else pname] = module
    theta_names = set(obj.names)
    outside = [k for k in obj.names if k not in owner]
    if outside:
        return f"parameters {outside[:3]} do not belong to nn.Linear layers"
    layers: list[nn.Linear] = []
    for name in obj.names:
        module = owner[name]
        if module not in layers:
            layers.append(module)
    for prefix, module in obj.model.named_modules():
        if module in layers:
            own = [
                f"{prefix}.{p}" if prefix else p for p, _ in module.named_parameters(recurse=False)
            ]
            if not all(k in theta_names for k in own):
                return f"layer {prefix!r} has only some of its parameters in θ"
    shared = {id(m) for m in layers}
    if len(shared) != len(layers):
        return "a layer appears twice"
    return layers


def forward_with_shifts(
    obj: Objective, theta: torch.Tensor, layers: list[nn.Linear], X: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Model outputs on ``X`` with each layer's input ``a`` recorded and a zero shift added.

    Returns ``(out, inputs, shifts)``: ``inputs[j]`` is layer ``j``'s input ``(b, in)``
    (detached) and ``shifts[j]`` a zeros ``(b, out)`` leaf added to its output, so that
    ``autograd.grad(φ, shifts)`` gives the cotangents ``δ``. Raises :class:`Unsupported` when a
    layer sees a non-2-D input or is not called exactly once (weight sharing).
    """
    inputs: dict[int, torch.Tensor] = {}
    shifts: dict[int, torch.Tensor] = {}
    calls: dict[int, int] = {}

    def hook(module, args, output):
        key = id(module)
        calls[key] = calls.get(key, 0) + 1
        if args[0].ndim != 2 or output.ndim != 2:
            raise Unsupported("a Linear layer received a non-2-D input")
        inputs[key] = args[0].detach()
        shift = torch.zeros_like(output, requires_grad=True)
        shifts[key] = shift
        return output + shift

    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        out = obj.forward(theta.detach(), X)
    finally:
        for h in handles:
            h.remove()
    if any(calls.get(id(m), 0) != 1 for m in layers):
        raise Unsupported("a Linear layer is not called exactly once per forward pass")
    return out, [inputs[id(m)] for m in layers], [shifts[id(m)] for m in layers]


def parameter_names(obj: Objective, layers: list[nn.Linear]) -> list[tuple[str, str | None]]:
    """The names in ``θ`` of each layer's weight and bias (``None`` for a layer without)."""
    prefix = {id(m): name for name, m in obj.model.named_modules()}
    names = []
    for m in layers:
        base = f"{prefix[id(m)]}." if prefix[id(m)] else ""
        names.append((base + "weight", base + "bias" if m.bias is not None else None))
    return names


def factored_gradient(
    obj: Objective, layers: list[nn.Linear], acts: list[torch.Tensor], deltas: list[torch.Tensor]
) -> torch.Tensor:
    """``Σ_i (δ_i a_iᵀ, δ_i)`` over the rows of ``acts`` and ``deltas``, in ``θ``'s layout."""
    named = {}
    for (weight, bias), a, d in zip(parameter_names(obj, layers), acts, deltas, strict=True):
        named[weight] = d.T @ a
        if bias is not None:
            named[bias] = d.sum(0)
    return obj.flatten(named)


def check_factored_gradient(
    obj: Objective,
    theta: torch.Tensor,
    layers: list[nn.Linear],
    X: torch.Tensor,
    phi: Callable[[torch.Tensor], torch.Tensor],
    samples: int = 4,
) -> None:
    """Raise :class:`Unsupported` unless ``∇_θ Σ_i φ_i = Σ_i (δ_i a_iᵀ, δ_i)`` on a few samples.

    ``phi(out)`` maps the model outputs of the first ``samples`` rows of ``X`` to the scalar
    ``Σ_i φ_i``. Both sides agree to rounding when ``θ`` enters the loss only through the
    layers' calls; a mismatch above ``sqrt(eps)`` relative means it does not.
    """
    X = X[:samples]
    leaf = theta.detach().requires_grad_(True)
    with torch.enable_grad():
        gradient = torch.autograd.grad(phi(obj.forward(leaf, X)), leaf, allow_unused=True)[0]
        out, acts, shifts = forward_with_shifts(obj, theta, layers, X)
        deltas = torch.autograd.grad(phi(out), shifts, allow_unused=True, materialize_grads=True)
    structured = factored_gradient(obj, layers, acts, deltas)
    if gradient is None:
        gradient = torch.zeros_like(structured)
    error = float((structured - gradient).norm())
    scale = float(structured.norm() + gradient.norm())
    if error > torch.finfo(theta.dtype).eps ** 0.5 * scale:
        raise Unsupported(
            "the loss depends on parameters of θ outside their nn.Linear calls (tied or reused "
            f"weights: the per-sample gradients are not (δ aᵀ, δ), relative mismatch "
            f"{error / scale:.1e})"
        )

