"""User data as tensors: :func:`from_tensors` and :func:`from_torch_dataset`.

Both validate the data (shapes, finite values, label ranges) with messages that name the
offending split; torch datasets and data loaders are materialized into tensors first.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from valleys.data._validation import Device, _check_float_dtype, _check_int
from valleys.data.dataset import Dataset, _move
from valleys.errors import ArgumentTypeError, ArgumentValueError


def _validate_split(X: Any, y: Any, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Check one (X, y) pair and normalize integer labels to int64."""
    for arg, value in (("X", X), ("y", y)):
        if not isinstance(value, torch.Tensor):
            raise ArgumentTypeError(
                f"{where}: {arg} must be a torch.Tensor, got {type(value).__name__}; convert it "
                f"with torch.as_tensor({arg})"
            )
    if X.ndim == 0 or y.ndim == 0:
        raise ArgumentValueError(
            f"{where}: X and y need a leading sample dimension, got shapes {tuple(X.shape)} and "
            f"{tuple(y.shape)}"
        )
    if X.shape[0] != y.shape[0]:
        raise ArgumentValueError(
            f"{where}: X and y must have the same number of samples (first dimension), got "
            f"{X.shape[0]} and {y.shape[0]}"
        )
    if X.shape[0] == 0:
        raise ArgumentValueError(
            f"{where}: the data are empty (0 samples); pass at least one sample")
    if not X.is_floating_point():
        raise ArgumentTypeError(
            f"{where}: X must be a floating tensor, got {X.dtype}; convert it, e.g. X.float() "
            f"(and rescale 8-bit images with X.float() / 255)"
        )
    if not torch.isfinite(X).all():
        raise ArgumentValueError(
            f"{where}: X contains NaN or infinite values; clean or impute them first")
    if y.dtype == torch.bool or y.is_complex():
        raise ArgumentTypeError(
            f"{where}: y has dtype {y.dtype}; use int64 class indices (y.long()) or floating "
            f"regression targets (y.float())"
        )
    if y.is_floating_point():
        if not torch.isfinite(y).all():
            raise ArgumentValueError(
                f"{where}: y contains NaN or infinite values; clean them first")
    else:
        if y.ndim != 1:
            raise ArgumentValueError(
                f"{where}: integer targets are class indices and must have shape (n,), got "
                f"{tuple(y.shape)}; pass a floating tensor for multi-output regression targets"
            )
        y = y.long()
        if (y < 0).any():
            raise ArgumentValueError(
                f"{where}: class labels must be >= 0, got minimum {int(y.min())}")
    return X, y


def _assemble(
    train: tuple[Any, Any],
    test: tuple[Any, Any] | None,
    *,
    name: str,
    num_classes: int | None,
    dtype: torch.dtype | None,
    device: Device,
    info: dict[str, Any] | None = None,
) -> Dataset:
    if not isinstance(name, str):
        raise ArgumentTypeError(f"name must be a string, got {type(name).__name__}")
    if dtype is not None:
        _check_float_dtype(dtype)
    X, y = _validate_split(*train, where="train data")
    X_test = y_test = None
    if test is not None:
        if not isinstance(test, Sequence) or len(test) != 2:
            raise ArgumentTypeError("test must be a pair (X_test, y_test) or None")
        X_test, y_test = _validate_split(*test, where="test data")
        if X_test.shape[1:] != X.shape[1:]:
            raise ArgumentValueError(
                f"test inputs have per-sample shape {tuple(X_test.shape[1:])} but training "
                f"inputs have {tuple(X.shape[1:])}"
            )
        if y_test.is_floating_point() != y.is_floating_point() or y_test.shape[1:] != y.shape[1:]:
            raise ArgumentValueError(
                f"test targets ({y_test.dtype}, per-sample shape {tuple(y_test.shape[1:])}) do "
                f"not match training targets ({y.dtype}, per-sample shape {tuple(y.shape[1:])})"
            )
    classification = not y.is_floating_point()
    labels = [t for t in (y, y_test) if t is not None]
    if num_classes is not None:
        num_classes = _check_int(num_classes, "num_classes")
        if classification:
            top = max(int(t.max()) for t in labels)
            if top >= num_classes:
                raise ArgumentValueError(
                    f"num_classes={num_classes} but the labels go up to {top}; labels must lie "
                    f"in [0, num_classes)"
                )
        elif y.ndim == 2 and y.shape[1] != num_classes:
            raise ArgumentValueError(
                f"num_classes={num_classes} but the float targets have {y.shape[1]} columns; "
                f"one-hot targets need one column per class"
            )
    elif classification:
        num_classes = max(int(t.max()) for t in labels) + 1

    return Dataset(
        name=name,
        X_train=_move(X, device, dtype),
        y_train=_move(y, device, dtype),
        X_test=_move(X_test, device, dtype),
        y_test=_move(y_test, device, dtype),
        num_classes=num_classes,
        info=dict(info or {}),
    )


def from_tensors(
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    test: tuple[torch.Tensor, torch.Tensor] | None = None,
    name: str = "tensors",
    num_classes: int | None = None,
    dtype: torch.dtype | None = None,
    device: Device = None,
) -> Dataset:
    """Wrap user tensors in a :class:`Dataset`, validating them.

    Args:
        X: floating inputs, shape ``(n, *input_shape)``, finite.
        y: targets with first dimension ``n``: integer class indices of shape ``(n,)``
            (converted to ``int64``) or finite floating targets of any shape ``(n, ...)``.
        test: optional ``(X_test, y_test)`` with the same per-sample shapes and target kind.
        name: name of the dataset.
        num_classes: number of classes; inferred as ``max label + 1`` for integer targets when
            ``None``. For floating targets it marks one-hot targets and must match their width.
        dtype: optional floating dtype for the inputs and floating targets.
        device: optional device to move the tensors to.

    Returns:
        A :class:`Dataset`; ``X_test``/``y_test`` are ``None`` without ``test``. The tensors are
        not copied unless a dtype/device change requires it.

    Raises:
        TypeError: for non-tensor arguments, non-floating ``X`` or boolean/complex ``y``.
        ValueError: for mismatched lengths, empty data, NaN/inf values or labels out of range.
    """
    return _assemble((X, y), test, name=name, num_classes=num_classes, dtype=dtype,
                     device=device)


def _as_tensor(value: Any, what: str, index: int) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    try:
        return torch.as_tensor(np.asarray(value) if not np.isscalar(value) else value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ArgumentTypeError(
            f"item {index}: could not convert {what} of type {type(value).__name__} to a tensor "
            f"({err}); give the dataset a transform that returns tensors (e.g. for PIL images)"
        ) from err


def _as_pair(item: Any, index: int, kind: str) -> tuple[Any, Any]:
    if isinstance(item, (str, bytes, Mapping)) or not isinstance(item, Sequence):
        raise ArgumentTypeError(
            f"{kind} {index} is a {type(item).__name__}, not an (x, y) pair; the dataset must "
            f"yield (input, target) tuples"
        )
    if len(item) != 2:
        raise ArgumentTypeError(
            f"{kind} {index} has {len(item)} elements, not 2; the dataset must yield "
            f"(input, target) pairs (drop or merge the extra fields first)"
        )
    return item[0], item[1]


def _tensor_pairs(
    items: Iterable[Any], kind: str
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """``(index, x, y)`` for each ``(x, y)`` item or batch, converted to tensors."""
    for i, item in enumerate(items):
        x, y = _as_pair(item, i, kind)
        yield i, _as_tensor(x, "x", i), _as_tensor(y, "y", i)


def _stack_items(items: Iterable[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    for i, x, y in _tensor_pairs(items, "item"):
        if xs and (x.shape != xs[0].shape or y.shape != ys[0].shape):
            raise ArgumentValueError(
                f"item {i} has shapes x{tuple(x.shape)}, y{tuple(y.shape)} but item 0 has "
                f"x{tuple(xs[0].shape)}, y{tuple(ys[0].shape)}; all items must share shapes "
                f"(resize or pad them in a transform)"
            )
        xs.append(x)
        ys.append(y)
    if not xs:
        raise ArgumentValueError("the dataset is empty: it yielded no items")
    return torch.stack(xs), torch.stack(ys)


def _cat_batches(loader: Iterable[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    for i, x, y in _tensor_pairs(loader, "batch"):
        if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
            raise ArgumentValueError(
                f"batch {i}: x{tuple(x.shape)} and y{tuple(y.shape)} do not share a batch "
                f"dimension"
            )
        if xs and (x.shape[1:] != xs[0].shape[1:] or y.shape[1:] != ys[0].shape[1:]):
            raise ArgumentValueError(
                f"batch {i} has per-sample shapes x{tuple(x.shape[1:])}, y{tuple(y.shape[1:])} "
                f"but batch 0 has x{tuple(xs[0].shape[1:])}, y{tuple(ys[0].shape[1:])}"
            )
        xs.append(x)
        ys.append(y)
    if not xs or sum(x.shape[0] for x in xs) == 0:
        raise ArgumentValueError("the data loader is empty: it yielded no samples")
    return torch.cat(xs), torch.cat(ys)


def _materialize(source: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(source, DataLoader):
        if source.batch_size is None and source.batch_sampler is None:
            # Automatic batching disabled: the loader yields single items.
            return _stack_items(source)
        return _cat_batches(source)
    if isinstance(source, TensorDataset):
        # Fast path: no need to index item by item.
        if len(source.tensors) != 2:
            raise ArgumentTypeError(
                f"the TensorDataset holds {len(source.tensors)} tensors, not 2; it must hold "
                f"exactly (inputs, targets)"
            )
        X, y = source.tensors
        if X.shape[0] == 0:
            raise ArgumentValueError("the dataset is empty: it has no items")
        return X, y
    if hasattr(source, "__getitem__") and hasattr(source, "__len__"):
        n = len(source)
        if n == 0:
            raise ArgumentValueError("the dataset is empty: len(dataset) == 0")
        return _stack_items(source[i] for i in range(n))
    if isinstance(source, Iterable) and not isinstance(source, (str, bytes, torch.Tensor)):
        return _stack_items(source)
    if isinstance(source, torch.utils.data.Dataset):
        raise ArgumentTypeError(
            f"{type(source).__name__} is a map-style dataset without __len__, so it cannot be "
            f"enumerated; implement __len__ or pass a DataLoader over it"
        )
    raise ArgumentTypeError(
        f"expected a torch.utils.data.Dataset or DataLoader, got {type(source).__name__}; for "
        f"tensors use from_tensors"
    )


def from_torch_dataset(
    dataset: Any,
    *,
    test: Any = None,
    name: str = "torch_dataset",
    num_classes: int | None = None,
    dtype: torch.dtype | None = None,
    device: Device = None,
) -> Dataset:
    """Materialize a torch ``Dataset`` or ``DataLoader`` of ``(x, y)`` pairs into tensors.

    Map-style datasets are indexed ``0 .. len-1`` and their items stacked; iterable datasets
    are iterated; data loaders are iterated once and their batches concatenated (so a
    shuffling loader gives a shuffled, but complete, dataset). Items may be tensors, NumPy
    arrays or Python numbers.

    Args:
        dataset: the training data: a ``torch.utils.data.Dataset`` (items ``(x, y)``) or a
            ``DataLoader`` (batches ``(x, y)``).
        test: optional test data of the same kind.
        name: name of the dataset.
        num_classes: see :func:`from_tensors`.
        dtype: optional floating dtype for the inputs and floating targets.
        device: optional device to move the tensors to.

    Returns:
        A :class:`Dataset` validated like :func:`from_tensors`.

    Raises:
        TypeError: if items are not ``(x, y)`` pairs or cannot be converted to tensors.
        ValueError: if the data are empty or items have inconsistent shapes.
    """
    train = _materialize(dataset)
    test_pair = None if test is None else _materialize(test)
    return _assemble(train, test_pair, name=name, num_classes=num_classes, dtype=dtype,
                     device=device)
