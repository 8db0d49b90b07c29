"""Private plumbing of :mod:`valleys.smoothness`: arguments normalized onto an Objective.

Every public function of the package takes either a :class:`~valleys.Objective` or a plain
``nn.Module`` with inputs ``X``. :class:`_Source` turns both into an Objective that holds the
samples to evaluate (the given objective, or one built on the same model from ``X`` and ``Y``)
and a flat ``θ``: the model is evaluated by the Objective's functional call
(:meth:`~valleys.Objective.forward`, :meth:`~valleys.Objective.sample_output`), the samples
come from its :meth:`~valleys.Objective.chunks`, and its checks (train mode, dtypes, finite
data, a model that can take the inputs) apply. What this module adds is what the smoothness
measures need beyond that: a loss that may differ from the objective's (or none), whether the
samples come with targets, and chunks cut to the size of one ``vmap`` call.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from valleys._objective_checks import optional_positive_int
from valleys._records import record_to_dict
from valleys.errors import ArgumentTypeError, ArgumentValueError
from valleys.losses import LossFn, resolve_loss
from valleys.objective import Objective

Source = Objective | nn.Module

_DEFAULT_CHUNK = 256
# Elements of a per-chunk Jacobian block kept in memory at once (2^24 ≈ 134 MB in float64).
_JACOBIAN_BUDGET = 1 << 24


class _Record:
    """Base of the result records: a JSON-friendly :meth:`to_dict`."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict of all fields (tensors become nested lists)."""
        return record_to_dict(self)


def _no_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Stand-in loss of an Objective built around inputs ``X``: Jacobians and attacks need no
    loss but an Objective takes one; the measurement's own loss is kept by :class:`_Source`."""
    return outputs.new_zeros(outputs.shape[0])


class _Source:
    """``θ``, the samples to evaluate and the loss of one measurement, on an Objective.

    Attributes:
        objective: the Objective whose model is evaluated (at ``theta``) and whose data are the
            samples: ``source`` itself, or one built from ``X`` (and ``Y``) on its model.
        theta: the flat parameters, detached.
        loss_name, loss_fn: the loss (``loss=``, else the objective's; ``None`` with a plain
            model and no ``loss=``).
        has_targets: whether the samples come with targets (an Objective's data, or ``Y``).
        free: ``(start, numel)`` of the part of ``θ`` that parameter Jacobians differentiate:
            all of it, or none for a plain model whose parameters are all frozen (``θ`` then
            holds them only to evaluate the model).
    """

    def __init__(
        self,
        source: Source,
        X: torch.Tensor | None,
        Y: torch.Tensor | None,
        *,
        theta: torch.Tensor | None = None,
        loss: str | LossFn | None = None,
        allow_train_mode: bool = False,
    ) -> None:
        if isinstance(source, Objective):
            source.require_single_process("valleys.smoothness")
            model, params = source.model, source.names
            allow_train_mode = source.allow_train_mode
            self.loss_name, self.loss_fn = source.loss_name, source.loss_fn
            differentiable = True
        elif isinstance(source, nn.Module):
            if theta is not None:
                raise ArgumentTypeError(
                    "theta= is only accepted with an Objective; pass the model's "
                    "parameters by setting them on the model")
            if X is None:
                raise ArgumentTypeError(
                    "with a plain nn.Module, pass the inputs X (or give an Objective)")
            model, params = source, _theta_names(source)
            self.loss_name, self.loss_fn = None, None
            differentiable = any(p.requires_grad for p in source.parameters())
        else:
            raise ArgumentTypeError(
                f"expected a valleys.Objective or a torch.nn.Module, got {type(source).__name__}"
            )
        if loss is not None:
            self.loss_name, self.loss_fn = resolve_loss(loss)
        _check_data(X, Y)
        self.has_targets = X is None or Y is not None
        if X is None:
            self.objective = source
        else:
            # params= takes fnmatch patterns: escape the names so each matches only itself.
            targets = Y if Y is not None else X.new_zeros(X.shape[0], 0)
            self.objective = Objective(model, _no_loss, (X, targets),
                                       params=[glob.escape(k) for k in params],
                                       allow_train_mode=allow_train_mode)
        self.theta = self.objective.resolve_theta(theta).detach()
        self.free = (0, self.objective.dim if differentiable else 0)

    def block(self, name: str) -> tuple[int, tuple[int, ...], int]:
        """``(start, shape, numel)`` of the parameter ``name`` inside the flat θ."""
        obj = self.objective
        idx = obj.names.index(name)
        return sum(obj.numels[:idx]), tuple(obj.shapes[idx]), obj.numels[idx]

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """Outputs at the source's θ (detached: no graph to the parameters)."""
        return self.objective.forward(self.theta, X)

    def batches(self, chunk_size: int | None, *, need_targets: bool = False
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Yield ``(X, Y)`` chunks (``Y`` None without targets) of at most ``chunk_size``
        samples (default 256): the objective's chunks, cut to the size of one ``vmap`` call."""
        if need_targets and not self.has_targets:
            raise ArgumentValueError("targets Y are needed for this quantity; pass Y")
        step = _DEFAULT_CHUNK if chunk_size is None else chunk_size
        for X, Y in self.objective.chunks():
            for start in range(0, X.shape[0], step):
                yield (X[start:start + step],
                       Y[start:start + step] if self.has_targets else None)

    def samples(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All inputs and targets at once, on the parameters' device."""
        if not self.has_targets:
            raise ArgumentValueError("attacks need targets Y (int labels or one-hot targets)")
        Xs, Ys = zip(*self.objective.chunks(), strict=True)
        return torch.cat(Xs), torch.cat(Ys)

    @property
    def num_samples(self) -> int:
        return self.objective.n

    def probe(self, X: torch.Tensor) -> torch.Tensor:
        """Outputs of the first two samples (to read the output size and check targets)."""
        with torch.no_grad():
            return self.forward(X[:2])


def _theta_names(model: nn.Module) -> list[str]:
    """θ of a plain model: its trainable parameters, or all of them when every one is frozen
    (input Jacobians and attacks of a frozen model need them only to evaluate it)."""
    named = dict(model.named_parameters())
    if not named:
        raise ArgumentValueError(
            f"the model ({type(model).__name__}) has no parameters; the smoothness measures "
            "evaluate a model at its parameters θ (wrap a parameter-free function in a module "
            "with a parameter, or build a valleys.Objective)")
    trainable = [k for k, p in named.items() if p.requires_grad]
    return trainable or list(named)


def _check_data(X: torch.Tensor | None, Y: torch.Tensor | None) -> None:
    """What the Objective built around ``X`` does not check: ``X`` is a non-empty floating
    point batch (it is differentiated), ``Y`` a tensor, ``Y`` only with ``X``."""
    if X is None:
        if Y is not None:
            raise ArgumentValueError("targets Y were given without inputs X")
        return
    if not isinstance(X, torch.Tensor):
        raise ArgumentTypeError(f"X must be a torch tensor, got {type(X).__name__}")
    if X.ndim < 1 or X.shape[0] == 0:
        raise ArgumentValueError(f"X needs a leading batch dimension with at least one sample, got "
                                 f"shape {tuple(X.shape)}")
    if not X.is_floating_point():
        raise ArgumentTypeError(
            f"inputs must be floating point to be differentiated, got {X.dtype}")
    if Y is not None and not isinstance(Y, torch.Tensor):
        raise ArgumentTypeError(f"Y must be a torch tensor, got {type(Y).__name__}")


def _check_chunk(chunk_size: int | None) -> int | None:
    return optional_positive_int(chunk_size, "chunk_size")
