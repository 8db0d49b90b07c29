"""Private plumbing of :mod:`valleys.smoothness`: sources, data checks, result records.

Every public function of the package takes either a :class:`~valleys.Objective` or a plain
``nn.Module`` with inputs ``X``. :class:`_Source` turns both into one interface: a function
``forward(θ, X)`` of a flat ``θ`` (the objective's own :meth:`~valleys.Objective.forward` or a
``functional_call`` of the module with detached parameters and buffers), the data in chunks
(the caller's ``X``, ``Y`` or the objective's :meth:`~valleys.Objective.chunks`) and a loss.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from valleys._records import record_to_dict
from valleys.errors import ArgumentTypeError, ArgumentValueError
from valleys.losses import LossFn, resolve_loss
from valleys.objective import Objective, _refuse_train_mode

Source = Objective | nn.Module

_DEFAULT_CHUNK = 256
# Elements of a per-chunk Jacobian block kept in memory at once (2^24 ≈ 134 MB in float64).
_JACOBIAN_BUDGET = 1 << 24


class _Record:
    """Base of the result records: a JSON-friendly :meth:`to_dict`."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict of all fields (tensors become nested lists)."""
        return record_to_dict(self)


# ------------------------------------------------------------------------------------------------
# Sources: an Objective or a plain model, evaluated functionally at a flat θ
# ------------------------------------------------------------------------------------------------


class _Source:
    """A model as a function ``forward(θ, X)`` of a flat θ, plus its data and loss."""

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
            obj = source
            obj.require_single_process("valleys.smoothness")
            self.objective = obj
            self.model = obj.model
            self.names, self.shapes, self.numels = list(obj.names), obj.shapes, obj.numels
            self.dtype, self.device = obj.dtype, obj.device
            self.theta = (obj.parameters_vector() if theta is None else _checked_theta(obj, theta))
            self.forward_theta: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = obj.forward
            if loss is None:
                self.loss_name, self.loss_fn = obj.loss_name, obj.loss_fn
            else:
                self.loss_name, self.loss_fn = resolve_loss(loss)
        elif isinstance(source, nn.Module):
            if not allow_train_mode:
                _refuse_train_mode(source)
            self.objective = None
            self.model = source
            named = dict(source.named_parameters())
            self.names = [k for k, p in named.items() if p.requires_grad]
            variable = [named[k] for k in self.names]
            if len({(p.dtype, p.device) for p in variable}) > 1:
                raise ArgumentTypeError("all trainable parameters must share one dtype and device")
            if variable:
                self.dtype, self.device = variable[0].dtype, variable[0].device
            elif X is not None:
                self.dtype, self.device = X.dtype, X.device
            else:
                self.dtype, self.device = torch.get_default_dtype(), torch.device("cpu")
            self.shapes = [p.shape for p in variable]
            self.numels = [p.numel() for p in variable]
            fixed = {k: v.detach() for k, v in named.items() if k not in set(self.names)}
            fixed.update({k: v.detach() for k, v in source.named_buffers()})
            self._fixed = fixed
            if theta is not None:
                raise ArgumentTypeError(
                    "theta= is only accepted with an Objective; pass the model's "
                    "parameters by setting them on the model")
            self.theta = (torch.cat([p.detach().reshape(-1) for p in variable]) if variable
                          else torch.zeros(0, dtype=self.dtype, device=self.device))
            self.forward_theta = self._model_forward
            if loss is None:
                self.loss_name, self.loss_fn = None, None
            else:
                self.loss_name, self.loss_fn = resolve_loss(loss)
            if X is None:
                raise ArgumentTypeError(
                    "with a plain nn.Module, pass the inputs X (or give an Objective)")
        else:
            raise ArgumentTypeError(
                f"expected a valleys.Objective or a torch.nn.Module, got {type(source).__name__}"
            )
        self.theta = self.theta.detach()
        self.X, self.Y = _check_data(X, Y, self.dtype)

    @property
    def dim(self) -> int:
        return sum(self.numels)

    def block(self, name: str) -> tuple[int, tuple[int, ...], int]:
        """``(start, shape, numel)`` of the parameter ``name`` inside the flat θ."""
        idx = self.names.index(name)
        return sum(self.numels[:idx]), tuple(self.shapes[idx]), self.numels[idx]

    def _model_forward(self, theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(theta, self.numels)
        named = {k: t.view(s) for k, t, s in zip(self.names, pieces, self.shapes, strict=True)}
        return functional_call(self.model, {**self._fixed, **named}, (X,))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """Outputs at the source's θ (detached: no graph to the parameters)."""
        return self.forward_theta(self.theta, X)

    def batches(self, chunk_size: int | None, *, need_targets: bool = False
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Yield ``(X, Y)`` chunks (``Y`` may be None) of at most ``chunk_size`` samples."""
        step = _DEFAULT_CHUNK if chunk_size is None else chunk_size
        if self.X is not None:
            if need_targets and self.Y is None:
                raise ArgumentValueError("targets Y are needed for this quantity; pass Y")
            sources: Any = [(self.X, self.Y)]
        else:
            sources = self.objective.chunks()
        for X, Y in sources:
            for start in range(0, X.shape[0], step):
                yield (X[start:start + step].to(self.device),
                       None if Y is None else Y[start:start + step].to(self.device))

    @property
    def num_samples(self) -> int:
        return self.X.shape[0] if self.X is not None else self.objective.n

    def probe(self, X: torch.Tensor) -> torch.Tensor:
        """Run two samples through the model, turning shape errors into a ValueError."""
        try:
            with torch.no_grad():
                return self.forward(X[:2])
        except RuntimeError as err:
            raise ArgumentValueError(
                f"the model cannot be evaluated on inputs of shape {tuple(X.shape)} "
                f"(one sample: {tuple(X.shape[1:])}): {err}"
            ) from err


def _checked_theta(obj: Objective, theta: torch.Tensor) -> torch.Tensor:
    obj.check_vector(theta)
    return theta.to(obj.device)


def _check_data(
    X: torch.Tensor | None, Y: torch.Tensor | None, dtype: torch.dtype
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if X is None:
        if Y is not None:
            raise ArgumentValueError("targets Y were given without inputs X")
        return None, None
    if not isinstance(X, torch.Tensor):
        raise ArgumentTypeError(f"X must be a torch tensor, got {type(X).__name__}")
    if X.ndim < 1 or X.shape[0] == 0:
        raise ArgumentValueError(f"X needs a leading batch dimension with at least one sample, got "
                                 f"shape {tuple(X.shape)}")
    if not X.is_floating_point():
        raise ArgumentTypeError(
            f"inputs must be floating point to be differentiated, got {X.dtype}")
    if X.dtype != dtype:
        raise ArgumentTypeError(
            f"inputs are {X.dtype} but the model's parameters are {dtype}; convert "
            f"one of them (X.to({dtype}) or model.to({X.dtype}))")
    if not torch.isfinite(X).all():
        raise ArgumentValueError("the inputs contain NaN or infinite values")
    if Y is not None:
        if not isinstance(Y, torch.Tensor):
            raise ArgumentTypeError(f"Y must be a torch tensor, got {type(Y).__name__}")
        if Y.ndim < 1 or Y.shape[0] != X.shape[0]:
            raise ArgumentValueError(
                f"X and Y must have the same number of samples along dim 0, got "
                f"X{tuple(X.shape)} and Y{tuple(Y.shape)}")
        if Y.is_floating_point() and Y.dtype != dtype:
            raise ArgumentTypeError(f"targets are {Y.dtype} but the model's parameters are {dtype}")
    return X, Y


def _check_chunk(chunk_size: int | None) -> int | None:
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(
            chunk_size, numbers.Integral) or chunk_size <= 0):
        raise ArgumentValueError(
            f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    return chunk_size
