r"""The first layer: the identity ``‖∂f_k/∂W₁‖_F = ‖∂f_k/∂z₁‖·‖x‖`` and the flatness bound.

For a first layer ``z₁ = W₁x + b₁`` (Ma & Ying 2021), :func:`find_first_layer` names ``W₁``,
:func:`first_layer_identity` checks the rank-one structure of ``∂f_k/∂W₁`` and the chain rule
``∇_x f_k = W₁ᵀ ∂f_k/∂z₁`` numerically, and :func:`first_layer_bound` evaluates both sides of
``(1/n) Σ_i ‖x_i‖² ‖∇_x f(x_i)‖_F² ≤ ‖W₁‖₂² tr(H)`` at a square-loss minimum.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from valleys._checks import is_real
from valleys.errors import ArgumentTypeError, ArgumentValueError
from valleys.linalg import TRACE_METHODS
from valleys.linalg import trace as _trace
from valleys.models import MLP
from valleys.objective import Objective
from valleys.operators import ggn as _ggn
from valleys.operators import hessian as _hessian
from valleys.smoothness._source import Source, _check_chunk, _Record, _Source
from valleys.smoothness.input_gradients import _input_jacobian_fn, _iter_parameter_jacobians

__all__ = [
    "FirstLayerBound",
    "FirstLayerIdentity",
    "find_first_layer",
    "first_layer_bound",
    "first_layer_identity",
]


@dataclass(frozen=True, eq=False)
class FirstLayerIdentity(_Record):
    """The first-layer identity ``‖∂f_k/∂W₁‖_F = ‖∂f_k/∂z₁‖·‖x‖``, per sample and output.

    ``∂f_k/∂z₁`` is read off the parameter gradient as ``(∂f_k/∂W₁) x / ‖x‖²`` (it is set to 0
    for ``x = 0``). The identity holds exactly if and only if ``∂f_k/∂W₁`` is the rank-one
    matrix ``(∂f_k/∂z₁) xᵀ`` (equality case of Cauchy–Schwarz), which ``rank_one_error``
    measures; ``chain_rule_error`` measures ``∇_x f_k = W₁ᵀ ∂f_k/∂z₁``, which holds when the
    input enters the network only through the first layer.

    Attributes:
        first_layer: name of the first-layer weight.
        weight_grad_norms: ``(n, K)``, ``‖∂f_k(x_i)/∂W₁‖_F``.
        preactivation_grad_norms: ``(n, K)``, ``‖∂f_k(x_i)/∂z₁‖``.
        input_norms: ``(n,)``, ``‖x_i‖``.
        rank_one_error: ``max_{i,k} ‖∂f_k/∂W₁ − (∂f_k/∂z₁) x_iᵀ‖_F / max_{i,k} ‖∂f_k/∂W₁‖_F``.
        chain_rule_error: ``max_{i,k} ‖∇_x f_k − W₁ᵀ ∂f_k/∂z₁‖ / max_{i,k} ‖∇_x f_k‖``.
    """

    first_layer: str
    weight_grad_norms: torch.Tensor
    preactivation_grad_norms: torch.Tensor
    input_norms: torch.Tensor
    rank_one_error: float
    chain_rule_error: float


@dataclass(frozen=True, eq=False)
class FirstLayerBound(_Record):
    """Both sides of the first-layer flatness bound (see :func:`first_layer_bound`).

    Attributes:
        lhs: ``(1/n) Σ_i ‖x_i‖² ‖∇_x f(x_i)‖_F²``.
        rhs: ``‖W₁‖₂² · tr(A)`` with ``A`` the Hessian (or GGN) of the objective.
        rhs_first_layer: ``‖W₁‖₂² · (1/n) Σ_i Σ_k ‖∂f_k(x_i)/∂W₁‖_F²``, the intermediate term
            (``lhs ≤ rhs_first_layer ≤ rhs`` when the bound applies).
        spectral_norm: ``‖W₁‖₂``, the largest singular value of the first-layer weight.
        trace: the estimate of ``tr(A)``.
        trace_stderr: its standard error (0 for the exact trace).
        trace_method: ``"exact"``, ``"hutch++"`` or ``"hutchinson"``.
        matrix: ``"hessian"`` or ``"ggn"``.
        max_residual: ``max_{i,k} |f_k(x_i) − y_ik|``.
        interpolating: ``max_residual <= interpolation_tol``.
        holds: ``lhs <= rhs``.
        first_layer: name of the first-layer weight.
        n: number of samples. num_outputs: ``K``.
        rank_one_error: see :class:`FirstLayerIdentity`; large values mean the named parameter
            does not multiply the input, and the bound does not apply.
        chain_rule_error: see :class:`FirstLayerIdentity`.
    """

    lhs: float
    rhs: float
    rhs_first_layer: float
    spectral_norm: float
    trace: float
    trace_stderr: float
    trace_method: str
    matrix: str
    max_residual: float
    interpolating: bool
    holds: bool
    first_layer: str
    n: int
    num_outputs: int
    rank_one_error: float
    chain_rule_error: float


# Parameter-free modules that may precede the first layer without changing the input's values.
_PASS_THROUGH = (nn.Flatten, nn.Identity)


def _leaves(seq: nn.Sequential, prefix: str) -> Iterator[tuple[str, nn.Module]]:
    """The modules of a (nested) Sequential in execution order, with their paths."""
    for name, child in seq.named_children():
        if isinstance(child, nn.Sequential):
            yield from _leaves(child, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", child


def _first_linear(seq: nn.Sequential, prefix: str) -> str | None:
    for path, module in _leaves(seq, prefix):
        if isinstance(module, nn.Linear):
            return f"{path}.weight"
        if not isinstance(module, _PASS_THROUGH):
            return None  # anything else (an activation, a conv, ...) comes before any Linear
    return None


def find_first_layer(source: Source, first_layer: str | None = None) -> str:
    """Name of the first-layer weight ``W₁``, the parameter that multiplies the input.

    For a bare ``nn.Linear`` it is its weight. For an ``nn.Sequential`` (possibly nested, with
    ``nn.Flatten``/``nn.Identity`` in front) and :class:`valleys.models.MLP` it is the weight of
    the first ``nn.Linear``. For other models name it, e.g. ``first_layer="net.0.weight"``; the
    name must be a 2-D parameter of the objective's ``θ``. Whether it really multiplies the raw
    input is checked numerically by :func:`first_layer_identity` (``rank_one_error`` and
    ``chain_rule_error``).

    Raises:
        ValueError: when it cannot be identified, is unknown, not 2-D or not part of ``θ``.
    """
    model = source.model if isinstance(source, Objective) else source
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"expected an Objective or nn.Module, got {type(source).__name__}")
    named = dict(model.named_parameters())
    if first_layer is None:
        if isinstance(model, nn.Linear):
            first_layer = "weight"
        elif isinstance(model, MLP):
            first_layer = _first_linear(model.net, "net.")
        elif isinstance(model, nn.Sequential):
            first_layer = _first_linear(model, "")
        if first_layer is None:
            raise ArgumentValueError(
                f"cannot identify the first layer of a {type(model).__name__} (automatic only "
                "for nn.Sequential and valleys.models.MLP starting with nn.Linear); name the "
                "weight that multiplies the input, e.g. first_layer='net.0.weight'"
            )
    if not isinstance(first_layer, str):
        raise ArgumentTypeError(
            f"first_layer must be a parameter name, got {type(first_layer).__name__}")
    if first_layer not in named:
        raise ArgumentValueError(f"first_layer {first_layer!r} is not a parameter of the model; "
                                 f"parameters: {list(named)[:6]}{' ...' if len(named) > 6 else ''}")
    if named[first_layer].ndim != 2:
        raise ArgumentValueError(
            f"first_layer {first_layer!r} must be a 2-D weight (out, in), got shape "
            f"{tuple(named[first_layer].shape)}")
    names = source.names if isinstance(source, Objective) else [
        k for k, p in named.items() if p.requires_grad]
    if first_layer not in names:
        raise ArgumentValueError(
            f"first_layer {first_layer!r} is not part of θ (frozen or excluded by "
            "params=); the bound needs its curvature")
    return first_layer


def _first_layer_pass(
    src: _Source, name: str, chunk_size: int | None
) -> Iterator[dict[str, torch.Tensor]]:
    """Per chunk: the W₁-Jacobians, input Jacobians and the derived per-sample quantities."""
    start, shape, numel = src.block(name)
    W = src.theta[start:start + numel].reshape(shape)
    X0, _ = next(src.batches(1))
    if X0[0].numel() != W.shape[1]:
        raise ArgumentValueError(
            f"first_layer {name!r} has input dimension {W.shape[1]} but a sample "
            f"has {X0[0].numel()} entries; name the weight that multiplies the "
            "input")
    jac_x = _input_jacobian_fn(src)
    for X, Y, G in _iter_parameter_jacobians(src, chunk_size, name=name):  # (c, K, h, d)
        x = X.reshape(X.shape[0], -1)
        with torch.no_grad():
            Jx = jac_x(X).reshape(X.shape[0], G.shape[1], -1)  # (c, K, d)
        xsq = (x * x).sum(1)
        safe = torch.where(xsq > 0, xsq, torch.ones_like(xsq))
        g = torch.einsum("ckhd,cd->ckh", G, x) / safe[:, None, None]  # ∂f/∂z₁
        g = torch.where((xsq > 0)[:, None, None], g, torch.zeros_like(g))
        rank_one = G - g[..., None] * x[:, None, None, :]
        chain = Jx - g @ W
        yield {
            "X": X, "Y": Y, "x": x, "G_norm": G.flatten(2).norm(dim=2), "g_norm": g.norm(dim=2),
            "x_norm": xsq.sqrt(), "Jx": Jx, "rank_one": rank_one.flatten(2).norm(dim=2),
            "chain": chain.norm(dim=2), "Jx_norm": Jx.norm(dim=2), "W": W,
        }


def _rel(err: float, scale: float) -> float:
    return err / scale if scale > 0 else err


def first_layer_identity(
    source: Source,
    X: torch.Tensor | None = None,
    *,
    first_layer: str | None = None,
    theta: torch.Tensor | None = None,
    chunk_size: int | None = None,
    allow_train_mode: bool = False,
) -> FirstLayerIdentity:
    """Check the multiplicative first-layer identity of Ma & Ying (2021) per sample and output.

    For a first layer ``z₁ = W₁x + b₁``: ``∂f_k/∂W₁ = (∂f_k/∂z₁) xᵀ`` (rank one), hence
    ``‖∂f_k/∂W₁‖_F = ‖∂f_k/∂z₁‖ · ‖x‖`` and ``∇_x f_k = W₁ᵀ ∂f_k/∂z₁``. The W₁-block of the
    per-sample parameter Jacobians comes from ``vmap(jacrev(·))``; see
    :class:`FirstLayerIdentity` for what is reported.

    Args:
        source, X, theta, chunk_size, allow_train_mode: as for :func:`input_jacobians`.
        first_layer: name of ``W₁`` (see :func:`find_first_layer`).
    """
    _check_chunk(chunk_size)
    src = _Source(source, X, None, theta=theta, allow_train_mode=allow_train_mode)
    name = find_first_layer(source, first_layer)
    parts = list(_first_layer_pass(src, name, chunk_size))
    G_norm = torch.cat([p["G_norm"] for p in parts])
    Jx_norm = torch.cat([p["Jx_norm"] for p in parts])
    return FirstLayerIdentity(
        first_layer=name,
        weight_grad_norms=G_norm,
        preactivation_grad_norms=torch.cat([p["g_norm"] for p in parts]),
        input_norms=torch.cat([p["x_norm"] for p in parts]),
        rank_one_error=_rel(max(float(p["rank_one"].max()) for p in parts), float(G_norm.max())),
        chain_rule_error=_rel(max(float(p["chain"].max()) for p in parts), float(Jx_norm.max())),
    )


def first_layer_bound(
    objective: Objective,
    theta: torch.Tensor | None = None,
    *,
    first_layer: str | None = None,
    matrix: str = "hessian",
    trace_method: str = "auto",
    num_matvecs: int = 100,
    seed: int | None = 0,
    interpolation_tol: float = 1e-6,
    chunk_size: int | None = None,
) -> FirstLayerBound:
    """Both sides of the first-layer flatness bound of Ma & Ying (2021) for the square loss.

    With the ``"mse"`` convention ``ℓ_i = ½ Σ_{k=1}^K (f_k(x_i) − y_ik)²`` the Hessian is
    ``H = (1/n) Σ_i J_iᵀ J_i + (1/n) Σ_i Σ_k r_ik ∇²f_k(x_i)`` with ``J_i = ∂f(x_i)/∂θ``
    (``K × p``) and residuals ``r_ik``; the first term is the GGN. At an interpolating minimum
    ``r = 0``, so ``tr(H) = tr(GGN) = (1/n) Σ_i ‖J_i‖_F² ≥ (1/n) Σ_i Σ_k ‖∂f_k(x_i)/∂W₁‖_F²``.
    The first-layer identity gives ``‖∂f_k/∂W₁‖_F = ‖g_ik‖ ‖x_i‖`` and
    ``‖∇_x f_k(x_i)‖ = ‖W₁ᵀ g_ik‖ ≤ ‖W₁‖₂ ‖g_ik‖`` with ``g_ik = ∂f_k/∂z₁``. Hence, with
    constant exactly 1 for this convention,

    .. math::  \\frac1n \\sum_i \\|x_i\\|^2 \\|∇_x f(x_i)\\|_F^2
               \\;\\le\\; \\|W_1\\|_2^2 \\cdot \\frac1n \\sum_i\\sum_k
               \\Big\\|\\frac{∂f_k(x_i)}{∂W_1}\\Big\\|_F^2
               \\;\\le\\; \\|W_1\\|_2^2\\, \\mathrm{tr}(H).

    ``‖·‖_F`` sums over the ``K`` outputs. Under PyTorch's ``MSELoss`` (mean over outputs, no
    ½) the Hessian is ``2/K`` times this one, so the constant becomes ``K/2``. With
    ``matrix="ggn"`` the bound holds at every θ (``tr(GGN) = (1/n) Σ_i ‖J_i‖_F²``); with
    ``matrix="hessian"`` only where the residual term vanishes (``interpolating``). It needs the
    input to enter only through ``W₁`` (reported as ``chain_rule_error``).

    Args:
        objective: an Objective with loss ``"mse"``.
        theta: flat parameters (default: the model's current ones).
        first_layer: name of ``W₁`` (see :func:`find_first_layer`).
        matrix: ``"hessian"`` (default) or ``"ggn"``.
        trace_method: ``"exact"``, ``"hutch++"``, ``"hutchinson"`` or ``"auto"`` (exact up to
            2000 parameters, Hutch++ above); see :func:`valleys.trace`.
        num_matvecs, seed: for the stochastic trace methods.
        interpolation_tol: ``interpolating`` means ``max_{i,k} |f_k(x_i) − y_ik| <=`` this.
        chunk_size: samples per Jacobian block (default: sized to about 2^24 entries).

    Returns:
        A :class:`FirstLayerBound`.
    """
    if not isinstance(objective, Objective):
        raise ArgumentTypeError(f"first_layer_bound needs a valleys.Objective, got "
                                f"{type(objective).__name__}")
    if objective.loss_name != "mse":
        raise ArgumentValueError(
            f"the first-layer bound is derived for the square loss 'mse' "
            f"(½ Σ_k (f_k − y_k)²); the objective uses {objective.loss_name!r}")
    if matrix not in ("hessian", "ggn"):
        raise ArgumentValueError(f"matrix must be 'hessian' or 'ggn', got {matrix!r}")
    if trace_method not in ("auto", *TRACE_METHODS):
        raise ArgumentValueError(f"unknown trace_method {trace_method!r}")
    if not (is_real(interpolation_tol) and interpolation_tol >= 0):
        raise ArgumentValueError(f"interpolation_tol must be >= 0, got {interpolation_tol!r}")
    _check_chunk(chunk_size)
    src = _Source(objective, None, None, theta=theta)
    name = find_first_layer(objective, first_layer)

    lhs = first = 0.0
    max_res = 0.0
    rank_one = chain = G_max = Jx_max = 0.0
    K = 1
    W = None
    for part in _first_layer_pass(src, name, chunk_size):
        W, K = part["W"], part["G_norm"].shape[1]
        xsq = part["x_norm"].double() ** 2
        lhs += float((xsq * part["Jx"].double().pow(2).sum((1, 2))).sum())
        first += float(part["G_norm"].double().pow(2).sum())
        rank_one, chain = max(rank_one, float(part["rank_one"].max())), max(
            chain, float(part["chain"].max()))
        G_max, Jx_max = max(G_max, float(part["G_norm"].max())), max(
            Jx_max, float(part["Jx_norm"].max()))
        with torch.no_grad():
            out = src.forward(part["X"])
        max_res = max(max_res, float((out - part["Y"]).abs().max()))
    n = objective.n
    lhs, first = lhs / n, first / n
    spectral = float(torch.linalg.matrix_norm(W.double(), ord=2))
    op = (_hessian if matrix == "hessian" else _ggn)(objective, src.theta)
    method = trace_method
    if method == "auto":
        method = "exact" if objective.dim <= 2000 else "hutch++"
    tr = _trace(op, method, num_matvecs=num_matvecs, seed=seed)
    rhs = spectral**2 * tr.value
    return FirstLayerBound(
        lhs=lhs, rhs=rhs, rhs_first_layer=spectral**2 * first, spectral_norm=spectral,
        trace=tr.value, trace_stderr=tr.stderr, trace_method=method, matrix=matrix,
        max_residual=max_res, interpolating=max_res <= interpolation_tol, holds=lhs <= rhs,
        first_layer=name, n=n, num_outputs=K, rank_one_error=_rel(rank_one, G_max),
        chain_rule_error=_rel(chain, Jx_max),
    )
