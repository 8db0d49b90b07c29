"""The :class:`Dataset` record every :mod:`valleys.data` loader returns."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from valleys.data._validation import Device, _check_float_dtype
from valleys.errors import ArgumentTypeError, ArgumentValueError


def _move(t: torch.Tensor | None, device: Device, dtype: torch.dtype | None) -> torch.Tensor | None:
    """Move ``t`` to ``device``, casting it to ``dtype`` if it is floating (``None`` passes)."""
    if t is None:
        return None
    if dtype is not None and t.is_floating_point():
        return t.to(device=device, dtype=dtype)
    return t.to(device=device)


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A supervised dataset split into train and test tensors.

    Attributes:
        name: a short human-readable name (``"digits"``, ``"mnist1d"``, ...).
        X_train: inputs, shape ``(n_train, *input_shape)``, floating.
        y_train: targets, shape ``(n_train,)`` (``int64`` class indices) or
            ``(n_train, k)`` (floating: regression targets or one-hot rows).
        X_test: test inputs, shape ``(n_test, *input_shape)``, or ``None`` when the data came
            without a test split (only possible for user data).
        y_test: test targets shaped like ``y_train``, or ``None`` together with ``X_test``.
        num_classes: number of classes for classification data, ``None`` for regression.
        info: free-form metadata (standardization statistics, generator parameters, teacher
            weights, class names, ...). Not copied or moved by :meth:`to`.
    """

    name: str
    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor | None = None
    y_test: torch.Tensor | None = None
    num_classes: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Only structural checks here; the user-facing constructors validate content (finite
        # values, label ranges) with messages that name the offending argument.
        for attr in ("X_train", "y_train"):
            if not isinstance(getattr(self, attr), torch.Tensor):
                raise ArgumentTypeError(f"Dataset.{attr} must be a torch.Tensor")
        if (self.X_test is None) != (self.y_test is None):
            raise ArgumentValueError("Dataset needs both X_test and y_test, or neither")
        pairs = [("train", self.X_train, self.y_train)]
        if self.X_test is not None:
            pairs.append(("test", self.X_test, self.y_test))
        for split, X, y in pairs:
            if not isinstance(X, torch.Tensor) or not isinstance(y, torch.Tensor):
                raise ArgumentTypeError(f"Dataset {split} inputs and targets must be torch.Tensors")
            if X.ndim == 0 or y.ndim == 0 or X.shape[0] != y.shape[0]:
                raise ArgumentValueError(
                    f"Dataset {split} split: X and y must have the same first dimension, got "
                    f"shapes {tuple(X.shape)} and {tuple(y.shape)}"
                )

    # -- views ----------------------------------------------------------------------------------
    @property
    def train(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(X_train, y_train)``."""
        return self.X_train, self.y_train

    @property
    def test(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(X_test, y_test)``; both ``None`` when the dataset has no test split."""
        return self.X_test, self.y_test

    @property
    def n_train(self) -> int:
        """Number of training samples."""
        return int(self.X_train.shape[0])

    @property
    def n_test(self) -> int:
        """Number of test samples (0 when there is no test split)."""
        return 0 if self.X_test is None else int(self.X_test.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample, ``X_train.shape[1:]``."""
        return tuple(self.X_train.shape[1:])

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the inputs."""
        return self.X_train.dtype

    @property
    def device(self) -> torch.device:
        """Device of the inputs."""
        return self.X_train.device

    def to(self, device: Device = None, dtype: torch.dtype | None = None) -> Dataset:
        """Return a copy on ``device`` with floating tensors cast to ``dtype``.

        Args:
            device: target device; ``None`` keeps each tensor where it is.
            dtype: a floating dtype applied to the inputs and to floating targets (regression or
                one-hot); integer class labels keep ``int64``. ``None`` keeps dtypes.

        Returns:
            A new :class:`Dataset`; ``info`` is shared (shallow-copied), not moved.
        """
        if dtype is not None:
            _check_float_dtype(dtype)

        return dataclasses.replace(
            self,
            X_train=_move(self.X_train, device, dtype),
            y_train=_move(self.y_train, device, dtype),
            X_test=_move(self.X_test, device, dtype),
            y_test=_move(self.y_test, device, dtype),
            info=dict(self.info),
        )

    def __repr__(self) -> str:
        # The default dataclass repr would print every tensor element.
        def desc(t: torch.Tensor | None) -> str:
            return "None" if t is None else f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}"

        return (
            f"Dataset(name={self.name!r}, X_train={desc(self.X_train)}, "
            f"y_train={desc(self.y_train)}, X_test={desc(self.X_test)}, "
            f"y_test={desc(self.y_test)}, num_classes={self.num_classes}, "
            f"device={self.device})"
        )
