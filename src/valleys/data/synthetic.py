"""Synthetic problem generators: teacher-student regression and Gaussian mixtures.

Everything is drawn from NumPy generators seeded by the ``seed`` argument (independent
streams per component), so the same arguments give bit-identical tensors and the global
random state is left alone.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from valleys.data._postprocess import _child_rngs, _classification_dataset, _standardize_into
from valleys.data._validation import (
    Device,
    _check_float_dtype,
    _check_int,
    _check_real,
    _check_seed,
)
from valleys.data.dataset import Dataset
from valleys.errors import ArgumentValueError

_TEACHER_ACTIVATIONS = {
    "tanh": np.tanh,
    "relu": lambda z: np.maximum(z, 0.0),
    "linear": lambda z: z,
}


def teacher_student(
    n_train: int = 1000,
    n_test: int = 1000,
    input_dim: int = 10,
    teacher_width: int = 4,
    output_dim: int = 1,
    activation: str = "tanh",
    noise: float = 0.0,
    *,
    seed: int = 0,
    standardize: bool = False,
    dtype: torch.dtype = torch.float32,
    device: Device = None,
) -> Dataset:
    """Regression on the outputs of a random two-layer teacher network.

    Inputs are i.i.d. standard Gaussian, ``x ~ N(0, I_d)``. The teacher (no biases) is
    ``f(x) = W2 @ act(W1 @ x)`` with ``W1[i, j] ~ N(0, 1/input_dim)`` (pre-activations are
    ``O(1)``) and ``W2[i, j] ~ N(0, 1/teacher_width)``; targets are ``y = f(x) + noise * ε``
    with ``ε ~ N(0, I)``. All draws happen in float64 and are cast to ``dtype`` at the end.

    Args:
        n_train: number of training samples.
        n_test: number of test samples.
        input_dim: input dimension ``d``.
        teacher_width: hidden width of the teacher.
        output_dim: number of outputs.
        activation: teacher nonlinearity, ``"tanh"``, ``"relu"`` or ``"linear"``.
        noise: standard deviation of the additive Gaussian label noise (>= 0).
        seed: seeds the teacher, the inputs and the noise (independent streams: changing
            ``n_test`` does not change the teacher or the training set).
        standardize: standardize the inputs with train-split statistics. Off by default: the
            inputs are already standard Gaussian, and the recorded teacher acts on the raw
            (unstandardized) inputs.
        dtype: floating dtype of inputs, targets and recorded teacher weights.
        device: device of the returned tensors.

    Returns:
        A :class:`Dataset` named ``"teacher_student"`` with ``X`` of shape ``(n, input_dim)``,
        float targets of shape ``(n, output_dim)`` and ``num_classes=None``.
        ``info["teacher"]`` holds ``W1`` ``(teacher_width, input_dim)``, ``W2``
        ``(output_dim, teacher_width)`` and the activation name; with ``noise=0`` and
        ``standardize=False``, ``y == act(X @ W1.T) @ W2.T``.
    """
    n_train = _check_int(n_train, "n_train")
    n_test = _check_int(n_test, "n_test")
    input_dim = _check_int(input_dim, "input_dim")
    teacher_width = _check_int(teacher_width, "teacher_width")
    output_dim = _check_int(output_dim, "output_dim")
    if activation not in _TEACHER_ACTIVATIONS:
        raise ArgumentValueError(
            f"unknown teacher activation {activation!r}; choose one of "
            f"{sorted(_TEACHER_ACTIVATIONS)}"
        )
    noise = _check_real(noise, "noise", nonneg=True)
    seed = _check_seed(seed)
    _check_float_dtype(dtype)

    g_teacher, g_train, g_test, g_noise_train, g_noise_test = _child_rngs(seed, 5)
    W1 = g_teacher.standard_normal((teacher_width, input_dim)) / math.sqrt(input_dim)
    W2 = g_teacher.standard_normal((output_dim, teacher_width)) / math.sqrt(teacher_width)
    act = _TEACHER_ACTIVATIONS[activation]
    X_train = g_train.standard_normal((n_train, input_dim))
    X_test = g_test.standard_normal((n_test, input_dim))
    y_train = act(X_train @ W1.T) @ W2.T
    y_test = act(X_test @ W1.T) @ W2.T
    if noise > 0:
        y_train = y_train + noise * g_noise_train.standard_normal(y_train.shape)
        y_test = y_test + noise * g_noise_test.standard_normal(y_test.shape)

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a).to(dtype=dtype, device=device)

    info: dict[str, Any] = {
        "seed": seed,
        "noise": noise,
        "teacher": {"W1": tensor(W1), "W2": tensor(W2), "activation": activation},
    }
    if standardize:
        X_train, X_test = _standardize_into(info, X_train, X_test)
    return Dataset(
        name="teacher_student",
        X_train=tensor(X_train),
        y_train=tensor(y_train),
        X_test=tensor(X_test),
        y_test=tensor(y_test),
        num_classes=None,
        info=info,
    )


_MIXTURE_LAYOUTS = ("random", "circle", "simplex")


def _mixture_means(
    layout: str, num_classes: int, input_dim: int, separation: float, rng: np.random.Generator
) -> np.ndarray:
    if layout == "random":
        # Means ~ N(0, s² I) with s = separation / sqrt(2 d): the expected squared distance
        # between two means is then separation².
        return rng.standard_normal((num_classes, input_dim)) * separation / math.sqrt(
            2 * input_dim
        )
    means = np.zeros((num_classes, input_dim))
    if layout == "circle":
        # Equally spaced on a circle in the first two coordinates, with a random phase;
        # adjacent means are `separation` apart.
        radius = separation / (2 * math.sin(math.pi / num_classes)) if num_classes > 1 else 0.0
        angles = rng.uniform(0, 2 * math.pi) + 2 * math.pi * np.arange(num_classes) / num_classes
        means[:, 0] = radius * np.cos(angles)
        means[:, 1] = radius * np.sin(angles)
        return means
    # Regular simplex: centred standard basis vectors of R^K, expressed in an orthonormal basis
    # of their (K-1)-dimensional span, so every pair of means is `separation` apart.
    centred = np.eye(num_classes) - 1.0 / num_classes
    u, s, _ = np.linalg.svd(centred)
    coords = u[:, : num_classes - 1] * s[: num_classes - 1]
    means[:, : num_classes - 1] = coords * separation / math.sqrt(2)
    return means


def gaussian_mixture(
    n_train: int = 1000,
    n_test: int = 1000,
    input_dim: int = 2,
    num_classes: int = 3,
    separation: float = 4.0,
    std: float = 1.0,
    layout: str = "random",
    *,
    seed: int = 0,
    standardize: bool = False,
    one_hot: bool = False,
    dtype: torch.dtype = torch.float32,
    device: Device = None,
) -> Dataset:
    """Classification of points drawn from isotropic Gaussian clusters, one per class.

    Labels are balanced (class counts differ by at most one) and shuffled; a point of class
    ``k`` is ``mean_k + std * N(0, I)``.

    Args:
        n_train: number of training samples.
        n_test: number of test samples.
        input_dim: input dimension.
        num_classes: number of classes (clusters), at least 2.
        separation: distance scale between class means: the typical (root-mean-square)
            pairwise distance for ``layout="random"``, the distance between neighbours for
            ``"circle"``, the distance between every pair for ``"simplex"``.
        std: standard deviation of every cluster (> 0).
        layout: ``"random"`` (means drawn from a Gaussian by ``seed``), ``"circle"`` (equally
            spaced on a circle in the first two coordinates, random phase; needs
            ``input_dim >= 2``) or ``"simplex"`` (vertices of a regular simplex; needs
            ``input_dim >= num_classes - 1``).
        seed: seeds the means, labels and noise (independent streams for train and test).
        standardize: standardize the inputs with train-split statistics (off by default; the
            recorded means are in the raw coordinates).
        one_hot: float one-hot targets of shape ``(n, num_classes)`` instead of ``int64`` labels.
        dtype: floating dtype of the inputs (and of one-hot targets).
        device: device of the returned tensors.

    Returns:
        A :class:`Dataset` named ``"gaussian_mixture"`` with ``X`` of shape ``(n, input_dim)``;
        ``info["means"]`` has shape ``(num_classes, input_dim)``.
    """
    n_train = _check_int(n_train, "n_train")
    n_test = _check_int(n_test, "n_test")
    input_dim = _check_int(input_dim, "input_dim")
    num_classes = _check_int(num_classes, "num_classes", minimum=2)
    separation = _check_real(separation, "separation", nonneg=True)
    std = _check_real(std, "std", positive=True)
    if layout not in _MIXTURE_LAYOUTS:
        raise ArgumentValueError(
            f"unknown layout {layout!r}; choose one of {list(_MIXTURE_LAYOUTS)}")
    if layout == "circle" and input_dim < 2:
        raise ArgumentValueError("layout='circle' needs input_dim >= 2; use layout='random' in 1-D")
    if layout == "simplex" and input_dim < num_classes - 1:
        raise ArgumentValueError(
            f"layout='simplex' with {num_classes} classes needs input_dim >= {num_classes - 1}, "
            f"got {input_dim}; raise input_dim or use layout='random'"
        )
    seed = _check_seed(seed)
    _check_float_dtype(dtype)

    g_means, g_train, g_test = _child_rngs(seed, 3)
    means = _mixture_means(layout, num_classes, input_dim, separation, g_means)

    def draw(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.permutation(np.arange(n) % num_classes)
        return means[labels] + std * rng.standard_normal((n, input_dim)), labels

    X_train, y_train = draw(n_train, g_train)
    X_test, y_test = draw(n_test, g_test)
    info: dict[str, Any] = {
        "seed": seed,
        "layout": layout,
        "separation": separation,
        "std": std,
        "means": torch.as_tensor(means).to(dtype=dtype, device=device),
    }
    return _classification_dataset(
        "gaussian_mixture", X_train, y_train, X_test, y_test, num_classes=num_classes,
        standardize=standardize, one_hot=one_hot, dtype=dtype, device=device, info=info,
    )
