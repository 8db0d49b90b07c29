r"""Per-sample factors of ``nn.Linear`` layers, recorded with hooks (no model change).

For a layer ``z_i = W a_i + b`` the gradient of any per-sample quantity ``φ_i`` with respect to
``(W, b)`` is the rank-one ``(δ_i a_iᵀ, δ_i)``, ``δ_i = ∂φ_i/∂z_i``. So when ``θ`` is made of
whole ``nn.Linear`` layers, per-sample gradients (and Jacobian rows) never need to be formed:
the layer inputs ``a_i`` and the output cotangents ``δ_i`` suffice. :func:`forward_with_shifts`
records ``a_i`` with a forward hook and adds a zero ``shift`` to each layer's output, whose
gradient is ``δ``. Users: the Gram path of :mod:`valleys.stability.gram` (``φ = f_k``) and the
mini-batch gradients of :mod:`valleys.noise.minibatch` (``φ = ℓ``).
"""

from __future__ import annotations

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
