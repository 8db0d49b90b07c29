"""Path norms of ReLU networks: the two-layer formula and the deep forward-pass identity."""

from __future__ import annotations

import torch
from torch import nn

from valleys._checks import positive_real
from valleys.errors import ArgumentTypeError, ArgumentValueError

__all__ = ["path_norm", "two_layer_path_norm", "two_layer_weights"]

# Modules that route values unchanged along the paths (or, for ReLU, gate them): the path norm
# is defined for networks built of Linear layers and these.
_PASS_THROUGH = (nn.ReLU, nn.Identity, nn.Flatten, nn.Dropout)


def _leaves(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if not list(m.children())]


def path_norm(model: nn.Module, p: float = 1.0) -> float:
    r"""The ℓ_p path norm of a ReLU network of ``Linear`` layers, by one forward pass.

    ``φ_p = (Σ_{paths input→output} Π_{edges e on the path} |w_e|^p)^{1/p}`` (Neyshabur,
    Tomioka & Srebro, COLT 2015), each bias being an edge from a constant unit 1 at its layer.
    Summing over paths layer by layer gives the forward pass ``h_0 = 1`` (all-ones input),
    ``h_{l+1} = |W_l|^p h_l + |b_l|^p`` (elementwise powers, ReLUs replaced by the identity),
    ``φ_p = (1ᵀ h_L)^{1/p}``, summed over every output. For a two-layer net
    ``Σ_j a_j σ(w_j·x + c_j)`` and ``p = 1`` this is E, Ma & Wu's (CMS 2019)
    ``‖θ‖_P = Σ_j |a_j| (‖w_j‖_1 + |c_j|)``.

    It is invariant under the rescaling of a hidden unit's incoming weights and bias by
    ``κ > 0`` and of its outgoing weights by ``1/κ``, which leaves a ReLU network's function
    unchanged.

    Args:
        model: a network whose leaf modules, in registration order (the order of an
            ``nn.Sequential`` or :class:`valleys.models.MLP`), are ``nn.Linear`` layers and
            ``nn.ReLU`` / ``nn.Identity`` / ``nn.Flatten`` / ``nn.Dropout``; any other module
            (another activation, a normalization, a convolution) raises.
        p: the exponent, ``> 0`` (1: the ℓ1 path norm; 2: the ℓ2 path norm ``φ_2``).

    Returns:
        ``φ_p`` as a float, computed in float64.
    """
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    p = positive_real(p, "p")
    leaves = _leaves(model)
    linears = [m for m in leaves if isinstance(m, nn.Linear)]
    if not linears:
        raise ArgumentValueError("path_norm needs a network with at least one nn.Linear layer")
    for m in leaves:
        if not isinstance(m, (nn.Linear, *_PASS_THROUGH)):
            raise ArgumentValueError(
                f"path_norm is defined here for ReLU networks of nn.Linear layers; the model "
                f"contains {type(m).__name__}, which the path-norm identity does not cover")
    h = None
    for lin in linears:
        W = lin.weight.detach().to(dtype=torch.float64).abs().pow(p)
        if h is None:
            h = torch.ones(W.shape[1], dtype=torch.float64, device=W.device)
        elif h.shape[0] != W.shape[1]:
            raise ArgumentValueError(
                f"consecutive Linear layers do not chain: {h.shape[0]} outputs feed a layer "
                f"with {W.shape[1]} inputs")
        h = W @ h
        if lin.bias is not None:
            h = h + lin.bias.detach().to(dtype=torch.float64).abs().pow(p)
    assert h is not None
    return float(h.sum().pow(1.0 / p))


def two_layer_path_norm(a: torch.Tensor, W: torch.Tensor, c: torch.Tensor | None = None, *,
                        q: float = 1.0) -> float:
    r"""``Σ_j |a_j| ‖(w_j, c_j)‖_q`` for ``f(x) = Σ_j a_j σ(w_j·x + c_j)``.

    ``q = 1`` is the path norm of E, Ma & Wu (CMS 2019; the authors' code
    ``leiwu0308/genErrTwoLayer`` ``models.py`` includes the bias), equal to
    :func:`path_norm` with ``p = 1``; it pairs with inputs in ``[-1, 1]^d``. ``q = 2`` is the
    variant for inputs in the Euclidean unit ball. (The ℓ2 *path* norm is
    ``path_norm(model, p=2) = (Σ_j a_j² ‖(w_j, c_j)‖_2²)^{1/2}``.)

    Args:
        a: outer weights, shape ``(m,)``.
        W: inner weights, shape ``(m, d)``.
        c: biases, shape ``(m,)``, or ``None`` (no biases).
        q: the inner norm's exponent, ``≥ 1``.
    """
    a, W = torch.as_tensor(a), torch.as_tensor(W)
    if a.ndim != 1 or W.ndim != 2 or W.shape[0] != a.shape[0]:
        raise ArgumentValueError(f"need a of shape (m,) and W of shape (m, d), got "
                                 f"{tuple(a.shape)} and {tuple(W.shape)}")
    if a.shape[0] == 0:
        raise ArgumentValueError("the network has width 0 (no hidden units)")
    q = positive_real(q, "q")
    if q < 1:
        raise ArgumentValueError(f"q must be >= 1 (a norm), got {q}")
    inner = W.detach().to(torch.float64)
    if c is not None:
        c = torch.as_tensor(c)
        if c.shape != a.shape:
            raise ArgumentValueError(f"c must have shape {tuple(a.shape)}, got {tuple(c.shape)}")
        inner = torch.cat([inner, c.detach().to(inner).reshape(-1, 1)], dim=1)
    norms = torch.linalg.vector_norm(inner, ord=q, dim=1)
    return float((a.detach().to(torch.float64).abs() * norms).sum())


def two_layer_weights(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(a, W, c)`` of a two-layer ReLU net ``Linear(d, m) → ReLU → Linear(m, 1)``.

    ``a`` has shape ``(m,)``, ``W`` ``(m, d)``, ``c`` ``(m,)`` (zeros without a first-layer
    bias); detached views. An output bias is refused: it is not part of E, Ma & Wu's model.
    """
    leaves = [m for m in _leaves(model) if not isinstance(m, nn.Identity | nn.Dropout)]
    if (len(leaves) != 3 or not isinstance(leaves[0], nn.Linear)
            or not isinstance(leaves[1], nn.ReLU) or not isinstance(leaves[2], nn.Linear)):
        raise ArgumentValueError("expected a two-layer ReLU network Linear(d, m) -> ReLU -> "
                                 "Linear(m, 1), got the leaf modules "
                                 f"{[type(m).__name__ for m in leaves]}")
    first, second = leaves[0], leaves[2]
    if second.out_features != 1 or second.bias is not None:
        raise ArgumentValueError("the output layer must be Linear(m, 1, bias=False)")
    W = first.weight.detach()
    c = first.bias.detach() if first.bias is not None else torch.zeros_like(W[:, 0])
    return second.weight.detach()[0], W, c
