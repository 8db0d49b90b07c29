"""Per-sample loss conventions, documented once.

Sharpness values are only comparable within one loss convention, so valleys names them:

==========  ===============================================================================
``"mse"``   ``ℓ(f, y) = ½ Σ_k (f_k − y_k)²``: half the squared error summed over outputs, then
            averaged over samples by :class:`~valleys.Objective`. This is the convention of the
            edge-of-stability literature (Cohen et al. 2021). PyTorch's ``MSELoss`` also averages
            over the K outputs and drops the ½, which scales every curvature by ``2/K``.
``"ce"``    ``ℓ(f, y) = −log softmax(f)_y`` for integer labels ``y``; with float targets of the
            same shape as ``f`` (probabilities), ``−Σ_k y_k log softmax(f)_k``.
callable    ``loss(outputs, targets) -> per-sample losses`` of shape ``(batch,)``.
==========  ===============================================================================

The squared error is written out rather than taken from ``F.mse_loss``, whose backward breaks
forward-over-reverse differentiation (pytorch/pytorch#123996).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from valleys.errors import ArgumentTypeError, ArgumentValueError

__all__ = ["LossFn", "cross_entropy", "next_token_losses", "resolve_loss", "squared_error"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def squared_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample ``½ Σ_k (f_k − y_k)²`` over all non-batch dimensions."""
    diff = outputs - targets
    return 0.5 * (diff * diff).reshape(diff.shape[0], -1).sum(dim=1)


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample softmax cross-entropy with integer labels or target probabilities."""
    return F.cross_entropy(outputs, targets, reduction="none")


def resolve_loss(loss: str | LossFn) -> tuple[str, LossFn]:
    """Return ``(name, per-sample loss function)`` for a loss name or callable."""
    if isinstance(loss, str):
        table = {"mse": squared_error, "ce": cross_entropy}
        if loss not in table:
            raise ArgumentValueError(
                f"unknown loss {loss!r}; use 'mse' (½·Σ squared error over outputs), 'ce' "
                "(cross-entropy) or a callable (outputs, targets) -> per-sample losses"
            )
        return loss, table[loss]
    if callable(loss):
        return getattr(loss, "__name__", "custom"), loss
    raise ArgumentTypeError(f"loss must be 'mse', 'ce' or a callable, got {type(loss).__name__}")


def check_targets(name: str, outputs: torch.Tensor, targets: torch.Tensor) -> None:
    """Raise a clear error when targets cannot go with outputs under a named loss."""
    if name == "mse":
        if not targets.is_floating_point():
            raise ArgumentTypeError(
                "loss 'mse' needs float targets of the model's output shape; for class labels "
                "use one-hot targets (valleys.data loaders take one_hot=True) or loss='ce'"
            )
        if targets.shape != outputs.shape:
            raise ArgumentValueError(
                f"loss 'mse' needs targets of the output shape {tuple(outputs.shape)}, got "
                f"{tuple(targets.shape)}; reshape the targets (e.g. y[:, None] for one output)"
            )
    elif name == "ce":
        if outputs.ndim != 2:
            raise ArgumentValueError(
                f"loss 'ce' needs outputs of shape (batch, classes), got {tuple(outputs.shape)}"
            )
        if outputs.shape[1] < 2:
            raise ArgumentValueError(
                f"loss 'ce' needs at least 2 outputs (classes), got {outputs.shape[1]}: the "
                "softmax of one output is 1, so the loss would be 0 whatever the model; for one "
                "output use loss='mse' or a binary cross-entropy callable"
            )
        if targets.is_floating_point():
            if targets.shape != outputs.shape:
                raise ArgumentValueError(
                    "loss 'ce' with float targets needs class probabilities of shape "
                    f"{tuple(outputs.shape)}, got {tuple(targets.shape)}"
                )
            if targets.numel() and bool((targets < 0).any()):
                raise ArgumentValueError(
                    "loss 'ce' with float targets needs class probabilities (non-negative, "
                    f"one row per sample), got a smallest entry of {float(targets.min()):.3g}; "
                    "for regression targets use loss='mse'"
                )
        elif targets.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
            if targets.shape != outputs.shape[:1]:
                raise ArgumentValueError(
                    f"loss 'ce' needs integer labels of shape ({outputs.shape[0]},), got "
                    f"{tuple(targets.shape)}"
                )
            if targets.dtype != torch.int64:
                raise ArgumentTypeError("loss 'ce' needs int64 labels; convert them with .long()")
            if targets.numel() and (targets.min() < 0 or targets.max() >= outputs.shape[1]):
                raise ArgumentValueError(
                    f"class labels must lie in [0, {outputs.shape[1]}) for a model with "
                    f"{outputs.shape[1]} outputs, got labels in "
                    f"[{int(targets.min())}, {int(targets.max())}]"
                )
        else:
            raise ArgumentTypeError(f"loss 'ce' needs int64 labels or float probabilities, got "
                                    f"{targets.dtype}")


def next_token_losses(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Language-model cross-entropy per predicted token, over non-padding tokens only.

    ``batch["input_ids"]`` ``(B, T)`` and optionally ``batch["attention_mask"]`` (1 = token,
    0 = padding). Position ``t`` predicts token ``t + 1``; a prediction counts when its target is
    a token. Returns a 1-D tensor (one loss per counted token), so the mean that
    :meth:`valleys.Objective.from_function` takes is the usual per-token language-model loss.
    The model is called as ``model(input_ids, attention_mask)`` when a mask is given.
    """
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    logits = model(ids) if mask is None else model(ids, mask)
    logits = logits[:, :-1].reshape(-1, logits.shape[-1])
    losses = torch.nn.functional.cross_entropy(logits, ids[:, 1:].reshape(-1), reduction="none")
    if mask is None:
        return losses
    return losses[mask[:, 1:].reshape(-1).bool()]
