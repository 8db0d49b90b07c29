"""Shared post-processing for the built-in and synthetic datasets (private).

Train-split standardization, label-to-target conversion, assembling a classification
:class:`~valleys.data.Dataset` from NumPy arrays, and independent seeded NumPy streams.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from valleys.data._validation import Device
from valleys.data.dataset import Dataset


def _standardize(
    X_train: np.ndarray, X_test: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Per-feature standardization fitted on the training split only (float64 arithmetic)."""
    X_train = np.asarray(X_train, dtype=np.float64)
    X_test = np.asarray(X_test, dtype=np.float64)
    mean = X_train.mean(axis=0)
    std = X_train.std(axis=0)
    # (Numerically) constant features, e.g. digits' always-blank corner pixels, would divide by
    # zero; centre them and leave their scale alone instead.
    constant = std <= 1e3 * np.finfo(np.float64).eps * np.maximum(1.0, np.abs(mean))
    std = np.where(constant, 1.0, std)
    stats = {"mean": mean, "std": std, "constant_features": int(constant.sum())}
    return (X_train - mean) / std, (X_test - mean) / std, stats


def _standardize_into(
    info: dict[str, Any], X_train: np.ndarray, X_test: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_standardize` both splits and record the statistics in ``info["standardization"]``."""
    X_train, X_test, stats = _standardize(X_train, X_test)
    info["standardization"] = {
        "mean": torch.as_tensor(stats["mean"]),
        "std": torch.as_tensor(stats["std"]),
        "constant_features": stats["constant_features"],
    }
    return X_train, X_test


def _labels_to_targets(
    y: np.ndarray, num_classes: int, one_hot: bool, dtype: torch.dtype, device: Device
) -> torch.Tensor:
    labels = torch.as_tensor(np.asarray(y, dtype=np.int64))
    if one_hot:
        return torch.nn.functional.one_hot(labels, num_classes).to(dtype=dtype, device=device)
    return labels.to(device=device)


def _classification_dataset(
    name: str,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    *,
    num_classes: int,
    standardize: bool,
    one_hot: bool,
    dtype: torch.dtype,
    device: Device,
    info: dict[str, Any],
) -> Dataset:
    if standardize:
        X_train, X_test = _standardize_into(info, X_train, X_test)
    def inputs(X: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(X, dtype=np.float64)).to(dtype=dtype, device=device)

    return Dataset(
        name=name,
        X_train=inputs(X_train),
        y_train=_labels_to_targets(y_train, num_classes, one_hot, dtype, device),
        X_test=inputs(X_test),
        y_test=_labels_to_targets(y_test, num_classes, one_hot, dtype, device),
        num_classes=num_classes,
        info=info,
    )


def _child_rngs(seed: int, count: int) -> list[np.random.Generator]:
    # Independent streams per component, so e.g. changing n_test does not change the training
    # set and changing n_train does not change the teacher.
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(count)]
