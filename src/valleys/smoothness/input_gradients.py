"""Per-sample Jacobians: input Jacobians, input gradients of the loss, parameter Jacobians.

``∇_x f(x_i)`` for every output (:func:`input_jacobians`), ``∇_x ℓ_i``
(:func:`loss_input_gradients`) and ``∂f(x_i)/∂θ`` (:func:`parameter_jacobians`), each by
``vmap(jacrev(·))`` over the samples of a chunk. The chunk iterators here feed the seminorms of
:mod:`valleys.smoothness.sobolev` and the first-layer checks of
:mod:`valleys.smoothness.first_layer` without storing every Jacobian.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.func import jacrev, vmap

from valleys.errors import ArgumentValueError
from valleys.losses import LossFn, check_targets
from valleys.smoothness._source import (
    _DEFAULT_CHUNK,
    _JACOBIAN_BUDGET,
    Source,
    _check_chunk,
    _Source,
)

__all__ = ["input_jacobians", "loss_input_gradients", "parameter_jacobians"]


def _input_jacobian_fn(src: _Source) -> Callable[[torch.Tensor], torch.Tensor]:
    """``X ↦ (∂f_k(x_i)/∂x)_{i,k}`` at the source's θ, shape ``(chunk, K, *input_shape)``."""
    def single(x: torch.Tensor) -> torch.Tensor:
        return src.objective.sample_output(src.theta, x).reshape(-1)

    return vmap(jacrev(single))


def _iter_input_jacobians(
    src: _Source, chunk_size: int | None, *, need_targets: bool = False
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]:
    """Yield ``(X, Y, J)`` per chunk with ``J`` of shape ``(chunk, K, *input_shape)``."""
    jac = _input_jacobian_fn(src)
    first = True
    for X, Y in src.batches(chunk_size, need_targets=need_targets):
        if first:
            src.probe(X)
            first = False
        with torch.no_grad():
            J = jac(X)
        yield X, Y, J


def input_jacobians(
    source: Source,
    X: torch.Tensor | None = None,
    *,
    theta: torch.Tensor | None = None,
    chunk_size: int | None = None,
    allow_train_mode: bool = False,
) -> torch.Tensor:
    """Per-sample input Jacobians ``∇_x f(x_i)`` of every output.

    ``J[i, k] = ∂f_k(x_i)/∂x``, computed as ``vmap(jacrev(f))`` over the samples of each chunk
    (each sample passes through the model as a batch of one). Outputs with more than one
    dimension per sample are flattened to ``K`` entries.

    Args:
        source: a :class:`~valleys.Objective` (its model at ``θ``; its data unless ``X`` is
            given) or an ``nn.Module`` (then ``X`` is required).
        X: inputs ``(n, *input_shape)``; dtype must match the parameters.
        theta: flat parameters (Objective only; default: the model's current ones).
        chunk_size: samples per vmap call (default 256); bounds memory at
            ``chunk · K · input size``.
        allow_train_mode: accept a plain model with train-mode BatchNorm/dropout.

    Returns:
        A tensor of shape ``(n, K, *input_shape)`` on the parameters' device.
    """
    src = _Source(source, X, None, theta=theta, allow_train_mode=allow_train_mode)
    return torch.cat([J for _, _, J in _iter_input_jacobians(src, _check_chunk(chunk_size))])


def loss_input_gradients(
    source: Source,
    X: torch.Tensor | None = None,
    Y: torch.Tensor | None = None,
    *,
    loss: str | LossFn | None = None,
    theta: torch.Tensor | None = None,
    chunk_size: int | None = None,
    allow_train_mode: bool = False,
) -> torch.Tensor:
    """Per-sample input gradients of the loss, ``∇_x ℓ(f(x_i), y_i)``.

    Args:
        source: an Objective (its loss and data by default) or an ``nn.Module``.
        X, Y: inputs and targets (required with a plain model).
        loss: ``"mse"``, ``"ce"`` or a per-sample callable (see :mod:`valleys.losses`);
            required with a plain model, defaults to the objective's loss.
        theta, chunk_size, allow_train_mode: as for :func:`input_jacobians`.

    Returns:
        A tensor of shape ``(n, *input_shape)``.
    """
    src = _Source(source, X, Y, theta=theta, loss=loss, allow_train_mode=allow_train_mode)
    chunk_size = _check_chunk(chunk_size)
    if src.loss_fn is None:
        raise ArgumentValueError(
            "loss_input_gradients needs a loss: pass loss='mse', 'ce' or a callable")
    return torch.cat(list(_iter_loss_input_gradients(src, chunk_size)))


def _iter_loss_input_gradients(src: _Source, chunk_size: int | None) -> Iterator[torch.Tensor]:
    """Yield ``∇_x ℓ(f(x_i), y_i)`` per chunk, shape ``(chunk, *input_shape)``."""
    def single(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return src.loss_fn(src.forward(x.unsqueeze(0)), y.unsqueeze(0))[0]

    per_sample = vmap(jacrev(single))
    first = True
    for X, Y in src.batches(chunk_size, need_targets=True):
        if first:
            out = src.probe(X)
            if src.loss_name in ("mse", "ce"):
                check_targets(src.loss_name, out, Y[:2])
            first = False
        with torch.no_grad():
            yield per_sample(X, Y)


def _splice(theta: torch.Tensor, start: int, piece: torch.Tensor) -> torch.Tensor:
    return torch.cat([theta[:start], piece.reshape(-1), theta[start + piece.numel():]])


def _iter_parameter_jacobians(
    src: _Source, chunk_size: int | None, *, name: str | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]:
    """Yield ``(X, Y, G)`` with ``G`` the per-sample Jacobian of outputs w.r.t. θ (or one
    named parameter), shape ``(chunk, K, p)`` (or ``(chunk, K, *param_shape)``)."""
    theta, dim = src.theta, src.objective.dim
    if name is None:
        start, numel = src.free
        shape = (numel,)
    else:
        start, shape, numel = src.block(name)
    whole = name is None and numel == dim  # differentiate θ itself, no splicing needed

    def single(piece: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        full = piece if whole else _splice(theta, start, piece)
        return src.objective.sample_output(full, x).reshape(-1)

    jac = vmap(jacrev(single), in_dims=(None, 0))
    piece = theta[start:start + numel].reshape(shape)
    first = True
    for Xb, Yb in src.batches(chunk_size):
        if first:
            K = src.probe(Xb)[0].numel()
            step = chunk_size or max(1, min(_DEFAULT_CHUNK, _JACOBIAN_BUDGET // max(1, K * numel)))
            first = False
        for s in range(0, Xb.shape[0], step):
            X = Xb[s:s + step]
            with torch.no_grad():
                G = jac(piece, X)
            yield X, None if Yb is None else Yb[s:s + step], G


def parameter_jacobians(
    source: Source,
    X: torch.Tensor | None = None,
    *,
    theta: torch.Tensor | None = None,
    chunk_size: int | None = None,
    allow_train_mode: bool = False,
) -> torch.Tensor:
    """Per-sample parameter Jacobians of the outputs, ``∂f_k(x_i)/∂θ``.

    ``θ`` is the objective's parameter vector (or every trainable parameter of a plain model,
    in ``named_parameters`` order). Mind the memory: ``n · K · p`` entries.

    Returns:
        A tensor of shape ``(n, K, p)``.
    """
    src = _Source(source, X, None, theta=theta, allow_train_mode=allow_train_mode)
    return torch.cat([G for _, _, G in _iter_parameter_jacobians(src, _check_chunk(chunk_size))])

