"""Small, offline, deterministic datasets and adapters for user data.

Every loader returns a :class:`Dataset`: train and test tensors plus a little metadata. Nothing
here touches the network: scikit-learn's digits ship with scikit-learn, MNIST-1D is *generated*
locally with the ``mnist1d`` package's own generator, and the synthetic problems
(:func:`teacher_student`, :func:`gaussian_mixture`) are drawn from NumPy generators seeded by the
``seed`` argument, so the same arguments always give bit-identical tensors and the caller's
global random state is left alone.

User data come in through :func:`from_tensors`, :func:`from_torch_dataset`,
:func:`load_image_folder` (a torchvision ``ImageFolder``-style directory, read with Pillow) and
:func:`load_idx` (the IDX format of MNIST and its relatives, optionally gzip-compressed).

Conventions:
    * Inputs ``X`` are floating tensors of shape ``(n, *input_shape)``.
    * Classification targets are ``int64`` class indices of shape ``(n,)``, or float one-hot rows
      of shape ``(n, num_classes)`` when ``one_hot=True`` (for a squared loss).
    * Regression targets are floating tensors of shape ``(n, output_dim)``.
    * ``standardize=True`` fits a per-feature mean and standard deviation on the *training* split
      only and applies them to both splits; the statistics are kept in ``info["standardization"]``
      so new inputs can be mapped the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import io
import math
import numbers
import os
import random
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "IMAGE_EXTENSIONS",
    "Dataset",
    "from_tensors",
    "from_torch_dataset",
    "gaussian_mixture",
    "load_digits",
    "load_idx",
    "load_image_folder",
    "load_mnist1d",
    "read_idx",
    "teacher_student",
]

#: File suffixes :func:`load_image_folder` treats as images (compared case-insensitively).
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".bmp",
    ".gif",
    ".jpeg",
    ".jpg",
    ".pgm",
    ".png",
    ".ppm",
    ".tif",
    ".tiff",
    ".webp",
)

Device = torch.device | str | None
PathLike = str | os.PathLike


# ------------------------------------------------------------------------------------------------
# The container
# ------------------------------------------------------------------------------------------------


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
                raise TypeError(f"Dataset.{attr} must be a torch.Tensor")
        if (self.X_test is None) != (self.y_test is None):
            raise ValueError("Dataset needs both X_test and y_test, or neither")
        pairs = [("train", self.X_train, self.y_train)]
        if self.X_test is not None:
            pairs.append(("test", self.X_test, self.y_test))
        for split, X, y in pairs:
            if not isinstance(X, torch.Tensor) or not isinstance(y, torch.Tensor):
                raise TypeError(f"Dataset {split} inputs and targets must be torch.Tensors")
            if X.ndim == 0 or y.ndim == 0 or X.shape[0] != y.shape[0]:
                raise ValueError(
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

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device=device)

        return dataclasses.replace(
            self,
            X_train=move(self.X_train),
            y_train=move(self.y_train),
            X_test=move(self.X_test),
            y_test=move(self.y_test),
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


# ------------------------------------------------------------------------------------------------
# Argument validation
# ------------------------------------------------------------------------------------------------


def _check_int(value: Any, name: str, *, minimum: int = 1) -> int:
    # bool is an Integral; reject it because `n_train=True` is certainly a mistake.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def _check_seed(seed: Any) -> int:
    return _check_int(seed, "seed", minimum=0)


def _check_real(value: Any, name: str, *, positive: bool = False, nonneg: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if nonneg and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _check_fraction(value: Any, name: str = "test_fraction") -> float:
    value = _check_real(value, name)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {value}")
    return value


def _check_float_dtype(dtype: Any) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(
            f"dtype must be a floating torch dtype such as torch.float32 or torch.float64, "
            f"got {dtype!r}"
        )
    return dtype


def _split_sizes(n: int, test_fraction: float) -> tuple[int, int]:
    n_test = round(n * test_fraction)
    n_train = n - n_test
    if n_test < 1 or n_train < 1:
        raise ValueError(
            f"test_fraction={test_fraction} of {n} samples leaves {n_train} training and "
            f"{n_test} test samples; both splits need at least one sample"
        )
    return n_train, n_test


# ------------------------------------------------------------------------------------------------
# Shared post-processing
# ------------------------------------------------------------------------------------------------


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
        X_train, X_test, stats = _standardize(X_train, X_test)
        info["standardization"] = {
            "mean": torch.as_tensor(stats["mean"]),
            "std": torch.as_tensor(stats["std"]),
            "constant_features": stats["constant_features"],
        }
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


# ------------------------------------------------------------------------------------------------
# Built-in datasets
# ------------------------------------------------------------------------------------------------


def load_digits(
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    standardize: bool = True,
    one_hot: bool = False,
    flatten: bool = True,
    dtype: torch.dtype = torch.float32,
    device: Device = None,
) -> Dataset:
    """scikit-learn's bundled 8×8 handwritten digits (1797 samples, 10 classes, no download).

    Args:
        seed: seeds the random train/test split.
        test_fraction: fraction of the 1797 samples held out for testing, in ``(0, 1)``.
        standardize: standardize each pixel with train-split statistics; the always-blank
            pixels are centred but not scaled (no NaN). Raw pixels are integers in ``[0, 16]``.
        one_hot: float one-hot targets of shape ``(n, 10)`` instead of ``int64`` labels.
        flatten: inputs of shape ``(n, 64)``; ``False`` gives images ``(n, 1, 8, 8)``.
        dtype: floating dtype of the inputs (and of one-hot targets).
        device: device of the returned tensors.

    Returns:
        A :class:`Dataset` named ``"digits"`` with ``num_classes=10``; with the default
        ``test_fraction`` it has 1438 training and 359 test samples.
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    seed = _check_seed(seed)
    test_fraction = _check_fraction(test_fraction)
    _check_float_dtype(dtype)
    X, y = _sk_load_digits(return_X_y=True)
    n = X.shape[0]
    n_train, _ = _split_sizes(n, test_fraction)
    perm = np.random.default_rng(seed).permutation(n)
    tr, te = perm[:n_train], perm[n_train:]
    if not flatten:
        X = X.reshape(n, 1, 8, 8)
    info: dict[str, Any] = {
        "source": "sklearn.datasets.load_digits",
        "seed": seed,
        "test_fraction": test_fraction,
        "train_indices": torch.as_tensor(tr),
        "test_indices": torch.as_tensor(te),
    }
    return _classification_dataset(
        "digits", X[tr], y[tr], X[te], y[te], num_classes=10, standardize=standardize,
        one_hot=one_hot, dtype=dtype, device=device, info=info,
    )


@contextlib.contextmanager
def _preserve_global_rng() -> Iterator[None]:
    # mnist1d's generator reseeds Python's and NumPy's *global* generators; give the caller
    # their state back afterwards.
    py_state = random.getstate()
    np_state = np.random.get_state()  # noqa: NPY002 (it is the legacy global state we protect)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)  # noqa: NPY002


def load_mnist1d(
    num_samples: int = 5000,
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    standardize: bool = True,
    one_hot: bool = False,
    dtype: torch.dtype = torch.float32,
    device: Device = None,
) -> Dataset:
    """MNIST-1D (Greydanus, 2020), generated locally: length-40 signals in 10 classes.

    The signals are produced by the ``mnist1d`` package's own generator
    (``mnist1d.data.make_dataset``) with its default transformation parameters; the
    downloadable pickle is never used. The package seeds Python's and NumPy's global generators
    while it runs; their previous states are restored before returning. The package's own
    default ``seed`` is 42, so ``seed=42`` reproduces its default generated data.

    Generation takes roughly 0.7 s per 5,000 samples on one CPU core (about 7 s for 50,000).

    Args:
        num_samples: total number of samples (train + test), a positive multiple of 10 because
            the generator makes the same number of samples for every class.
        seed: seeds the generator (and therefore the split, which is the generator's shuffle).
        test_fraction: fraction of samples held out for testing, in ``(0, 1)``; the default
            0.2 with ``num_samples=5000`` gives the usual 4000/1000 split.
        standardize: standardize each of the 40 positions with train-split statistics (the
            generator already scales the whole array to zero mean and unit variance).
        one_hot: float one-hot targets of shape ``(n, 10)`` instead of ``int64`` labels.
        dtype: floating dtype of the inputs (and of one-hot targets).
        device: device of the returned tensors.

    Returns:
        A :class:`Dataset` named ``"mnist1d"`` with inputs of shape ``(n, 40)`` and
        ``num_classes=10``; ``info["t"]`` is the generator's (rescaled) time grid, shape
        ``(40,)``.
    """
    num_samples = _check_int(num_samples, "num_samples")
    if num_samples % 10 != 0:
        raise ValueError(
            f"num_samples must be a multiple of 10 (MNIST-1D has the same number of samples in "
            f"each of its 10 classes), got {num_samples}; use {max(10, num_samples // 10 * 10)}"
        )
    seed = _check_seed(seed)
    test_fraction = _check_fraction(test_fraction)
    _check_float_dtype(dtype)
    n_train, _ = _split_sizes(num_samples, test_fraction)

    # Imported lazily: mnist1d pulls in matplotlib.pyplot and requests at import time.
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    # Split exactly where _split_sizes says rather than trusting float rounding of
    # int(num_samples * (1 - test_fraction)) inside the package.
    args.train_split = 1.0
    with _preserve_global_rng(), contextlib.redirect_stdout(io.StringIO()):
        data = make_dataset(args)
    X = np.asarray(data["x"], dtype=np.float64)
    y = np.asarray(data["y"], dtype=np.int64)
    if X.shape != (num_samples, 40) or y.shape != (num_samples,):
        raise RuntimeError(
            f"mnist1d.make_dataset returned arrays of shapes {X.shape} and {y.shape}; expected "
            f"({num_samples}, 40) and ({num_samples},). Is an incompatible mnist1d installed?"
        )
    info: dict[str, Any] = {
        "source": "mnist1d.data.make_dataset (generated offline)",
        "seed": seed,
        "test_fraction": test_fraction,
        "t": torch.as_tensor(np.asarray(data["t"], dtype=np.float64)),
        # train_split is omitted: the split happens here, at n_train.
        "generator_args": {
            k: v for k, v in vars(args).items() if k not in ("url", "train_split")
        },
    }
    return _classification_dataset(
        "mnist1d", X[:n_train], y[:n_train], X[n_train:], y[n_train:], num_classes=10,
        standardize=standardize, one_hot=one_hot, dtype=dtype, device=device, info=info,
    )


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
        raise ValueError(
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
        X_train, X_test, stats = _standardize(X_train, X_test)
        info["standardization"] = {
            "mean": torch.as_tensor(stats["mean"]),
            "std": torch.as_tensor(stats["std"]),
            "constant_features": stats["constant_features"],
        }
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
        raise ValueError(f"unknown layout {layout!r}; choose one of {list(_MIXTURE_LAYOUTS)}")
    if layout == "circle" and input_dim < 2:
        raise ValueError("layout='circle' needs input_dim >= 2; use layout='random' in 1-D")
    if layout == "simplex" and input_dim < num_classes - 1:
        raise ValueError(
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


# ------------------------------------------------------------------------------------------------
# User data: tensors and torch datasets
# ------------------------------------------------------------------------------------------------


def _validate_split(X: Any, y: Any, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Check one (X, y) pair and normalize integer labels to int64."""
    for arg, value in (("X", X), ("y", y)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"{where}: {arg} must be a torch.Tensor, got {type(value).__name__}; convert it "
                f"with torch.as_tensor({arg})"
            )
    if X.ndim == 0 or y.ndim == 0:
        raise ValueError(
            f"{where}: X and y need a leading sample dimension, got shapes {tuple(X.shape)} and "
            f"{tuple(y.shape)}"
        )
    if X.shape[0] != y.shape[0]:
        raise ValueError(
            f"{where}: X and y must have the same number of samples (first dimension), got "
            f"{X.shape[0]} and {y.shape[0]}"
        )
    if X.shape[0] == 0:
        raise ValueError(f"{where}: the data are empty (0 samples); pass at least one sample")
    if not X.is_floating_point():
        raise TypeError(
            f"{where}: X must be a floating tensor, got {X.dtype}; convert it, e.g. X.float() "
            f"(and rescale 8-bit images with X.float() / 255)"
        )
    if not torch.isfinite(X).all():
        raise ValueError(f"{where}: X contains NaN or infinite values; clean or impute them first")
    if y.dtype == torch.bool or y.is_complex():
        raise TypeError(
            f"{where}: y has dtype {y.dtype}; use int64 class indices (y.long()) or floating "
            f"regression targets (y.float())"
        )
    if y.is_floating_point():
        if not torch.isfinite(y).all():
            raise ValueError(f"{where}: y contains NaN or infinite values; clean them first")
    else:
        if y.ndim != 1:
            raise ValueError(
                f"{where}: integer targets are class indices and must have shape (n,), got "
                f"{tuple(y.shape)}; pass a floating tensor for multi-output regression targets"
            )
        y = y.long()
        if (y < 0).any():
            raise ValueError(f"{where}: class labels must be >= 0, got minimum {int(y.min())}")
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
        raise TypeError(f"name must be a string, got {type(name).__name__}")
    if dtype is not None:
        _check_float_dtype(dtype)
    X, y = _validate_split(*train, where="train data")
    X_test = y_test = None
    if test is not None:
        if not isinstance(test, Sequence) or len(test) != 2:
            raise TypeError("test must be a pair (X_test, y_test) or None")
        X_test, y_test = _validate_split(*test, where="test data")
        if X_test.shape[1:] != X.shape[1:]:
            raise ValueError(
                f"test inputs have per-sample shape {tuple(X_test.shape[1:])} but training "
                f"inputs have {tuple(X.shape[1:])}"
            )
        if y_test.is_floating_point() != y.is_floating_point() or y_test.shape[1:] != y.shape[1:]:
            raise ValueError(
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
                raise ValueError(
                    f"num_classes={num_classes} but the labels go up to {top}; labels must lie "
                    f"in [0, num_classes)"
                )
        elif y.ndim == 2 and y.shape[1] != num_classes:
            raise ValueError(
                f"num_classes={num_classes} but the float targets have {y.shape[1]} columns; "
                f"one-hot targets need one column per class"
            )
    elif classification:
        num_classes = max(int(t.max()) for t in labels) + 1

    def move(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        if dtype is not None and t.is_floating_point():
            return t.to(device=device, dtype=dtype)
        return t.to(device=device)

    return Dataset(
        name=name,
        X_train=move(X),
        y_train=move(y),
        X_test=move(X_test),
        y_test=move(y_test),
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
        raise TypeError(
            f"item {index}: could not convert {what} of type {type(value).__name__} to a tensor "
            f"({err}); give the dataset a transform that returns tensors (e.g. for PIL images)"
        ) from err


def _as_pair(item: Any, index: int, kind: str) -> tuple[Any, Any]:
    if isinstance(item, (str, bytes, Mapping)) or not isinstance(item, Sequence):
        raise TypeError(
            f"{kind} {index} is a {type(item).__name__}, not an (x, y) pair; the dataset must "
            f"yield (input, target) tuples"
        )
    if len(item) != 2:
        raise TypeError(
            f"{kind} {index} has {len(item)} elements, not 2; the dataset must yield "
            f"(input, target) pairs (drop or merge the extra fields first)"
        )
    return item[0], item[1]


def _stack_items(items: Iterable[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    for i, item in enumerate(items):
        x, y = _as_pair(item, i, "item")
        x, y = _as_tensor(x, "x", i), _as_tensor(y, "y", i)
        if xs and (x.shape != xs[0].shape or y.shape != ys[0].shape):
            raise ValueError(
                f"item {i} has shapes x{tuple(x.shape)}, y{tuple(y.shape)} but item 0 has "
                f"x{tuple(xs[0].shape)}, y{tuple(ys[0].shape)}; all items must share shapes "
                f"(resize or pad them in a transform)"
            )
        xs.append(x)
        ys.append(y)
    if not xs:
        raise ValueError("the dataset is empty: it yielded no items")
    return torch.stack(xs), torch.stack(ys)


def _cat_batches(loader: Iterable[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    for i, batch in enumerate(loader):
        x, y = _as_pair(batch, i, "batch")
        x, y = _as_tensor(x, "x", i), _as_tensor(y, "y", i)
        if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"batch {i}: x{tuple(x.shape)} and y{tuple(y.shape)} do not share a batch "
                f"dimension"
            )
        if xs and (x.shape[1:] != xs[0].shape[1:] or y.shape[1:] != ys[0].shape[1:]):
            raise ValueError(
                f"batch {i} has per-sample shapes x{tuple(x.shape[1:])}, y{tuple(y.shape[1:])} "
                f"but batch 0 has x{tuple(xs[0].shape[1:])}, y{tuple(ys[0].shape[1:])}"
            )
        xs.append(x)
        ys.append(y)
    if not xs or sum(x.shape[0] for x in xs) == 0:
        raise ValueError("the data loader is empty: it yielded no samples")
    return torch.cat(xs), torch.cat(ys)


def _materialize(source: Any) -> tuple[torch.Tensor, torch.Tensor]:
    from torch.utils.data import DataLoader, TensorDataset

    if isinstance(source, DataLoader):
        if source.batch_size is None and source.batch_sampler is None:
            # Automatic batching disabled: the loader yields single items.
            return _stack_items(source)
        return _cat_batches(source)
    if isinstance(source, TensorDataset):
        # Fast path: no need to index item by item.
        if len(source.tensors) != 2:
            raise TypeError(
                f"the TensorDataset holds {len(source.tensors)} tensors, not 2; it must hold "
                f"exactly (inputs, targets)"
            )
        X, y = source.tensors
        if X.shape[0] == 0:
            raise ValueError("the dataset is empty: it has no items")
        return X, y
    if hasattr(source, "__getitem__") and hasattr(source, "__len__"):
        n = len(source)
        if n == 0:
            raise ValueError("the dataset is empty: len(dataset) == 0")
        return _stack_items(source[i] for i in range(n))
    if isinstance(source, Iterable) and not isinstance(source, (str, bytes, torch.Tensor)):
        return _stack_items(source)
    if isinstance(source, torch.utils.data.Dataset):
        raise TypeError(
            f"{type(source).__name__} is a map-style dataset without __len__, so it cannot be "
            f"enumerated; implement __len__ or pass a DataLoader over it"
        )
    raise TypeError(
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


# ------------------------------------------------------------------------------------------------
# User data: image folders
# ------------------------------------------------------------------------------------------------


def _check_size(size: Any) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, numbers.Integral) and not isinstance(size, bool):
        size = (size, size)
    if not isinstance(size, Sequence) or len(size) != 2:
        raise ValueError(f"size must be None, an int or a pair (H, W), got {size!r}")
    return _check_int(size[0], "size[0] (height)"), _check_int(size[1], "size[1] (width)")


def load_image_folder(
    root: PathLike,
    *,
    grayscale: bool = False,
    size: int | tuple[int, int] | None = None,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    test_fraction: float | None = None,
    seed: int = 0,
    one_hot: bool = False,
    dtype: torch.dtype = torch.float32,
    device: Device = None,
) -> Dataset:
    """Read a torchvision ``ImageFolder``-style directory with Pillow.

    The layout is ``root/<class name>/**/<image>``: every (non-hidden) sub-directory of ``root``
    is a class, class names sorted alphabetically give the label indices, and every file below
    a class directory whose suffix is in ``extensions`` is an image of that class. Images are
    converted to RGB (or to 8-bit grayscale with ``grayscale=True``) and scaled to ``[0, 1]``.

    Args:
        root: the directory.
        grayscale: one channel instead of three.
        size: ``(H, W)`` (or an int for square images) to resize every image to, bilinearly;
            ``None`` requires all images to share one size.
        extensions: accepted file suffixes, case-insensitive.
        test_fraction: ``None`` keeps all images for training; a value in ``(0, 1)`` holds out
            a random fraction (chosen by ``seed``) for testing.
        seed: seeds the split.
        one_hot: float one-hot targets instead of ``int64`` labels.
        dtype: floating dtype of the images.
        device: device of the returned tensors.

    Returns:
        A :class:`Dataset` with ``X`` of shape ``(N, C, H, W)`` (``C`` is 1 or 3) in
        ``[0, 1]``; ``info`` holds ``classes`` (names in label order), ``class_to_idx`` and
        ``files`` (paths relative to ``root``, in the order of the original samples).

    Raises:
        FileNotFoundError: if ``root`` does not exist.
        NotADirectoryError: if ``root`` is a file.
        ValueError: if there are no class directories, a class has no images, images differ
            in size (without ``size``), or an image cannot be decoded or is not 8-bit.
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(
            f"{str(root)!r} is not a directory; pass the dataset's root folder"
        )
    target_size = _check_size(size)
    if isinstance(extensions, str):
        extensions = (extensions,)
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    if test_fraction is not None:
        test_fraction = _check_fraction(test_fraction)
    seed = _check_seed(seed)
    _check_float_dtype(dtype)

    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(
            f"no class directories in {str(root)!r}; expected one sub-folder per class "
            f"(root/<class>/<image>.png)"
        )
    files: list[Path] = []
    labels: list[int] = []
    empty: list[str] = []
    for label, cls in enumerate(classes):
        found = []
        for dirpath, dirnames, filenames in os.walk(root / cls, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fname in sorted(filenames):
                if not fname.startswith(".") and fname.lower().endswith(exts):
                    found.append(Path(dirpath) / fname)
        if not found:
            empty.append(cls)
        files.extend(found)
        labels.extend([label] * len(found))
    if empty:
        raise ValueError(
            f"no images with suffixes {list(exts)} in class folder(s) {empty} of "
            f"{str(root)!r}; remove the empty folders or add images"
        )

    mode = "L" if grayscale else "RGB"
    arrays: list[np.ndarray] = []
    first_size: tuple[int, int] | None = None
    for path in files:
        try:
            with Image.open(path) as im:
                if im.mode.startswith(("I", "F")):
                    raise ValueError(
                        f"image {str(path)!r} has mode {im.mode!r} (more than 8 bits per "
                        f"channel), which is not supported; convert it to 8-bit first"
                    )
                if target_size is None:
                    if first_size is None:
                        first_size = im.size
                    elif im.size != first_size:
                        raise ValueError(
                            f"images differ in size: {str(files[0])!r} is "
                            f"{first_size[1]}x{first_size[0]} (HxW) but {str(path)!r} is "
                            f"{im.size[1]}x{im.size[0]}; pass size=(H, W) to resize them"
                        )
                im = im.convert(mode)
                if target_size is not None and im.size != (target_size[1], target_size[0]):
                    # Pillow sizes are (width, height).
                    im = im.resize((target_size[1], target_size[0]), Image.Resampling.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"could not read image {str(path)!r}: {err}") from err
        arrays.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))

    X = torch.from_numpy(np.stack(arrays)).to(dtype=dtype).div_(255.0)
    y = torch.tensor(labels, dtype=torch.int64)
    rel_files = [str(p.relative_to(root)) for p in files]
    info: dict[str, Any] = {
        "root": str(root),
        "classes": classes,
        "class_to_idx": {c: i for i, c in enumerate(classes)},
        "files": rel_files,
    }
    X_test = y_test = None
    if test_fraction is not None:
        n_train, _ = _split_sizes(len(files), test_fraction)
        perm = torch.as_tensor(np.random.default_rng(seed).permutation(len(files)))
        tr, te = perm[:n_train], perm[n_train:]
        X, y, X_test, y_test = X[tr], y[tr], X[te], y[te]
        info["train_indices"], info["test_indices"] = tr, te

    num_classes = len(classes)

    def targets(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        if one_hot:
            return torch.nn.functional.one_hot(t, num_classes).to(dtype=dtype, device=device)
        return t.to(device=device)

    return Dataset(
        name=root.name or str(root),
        X_train=X.to(device=device),
        y_train=targets(y),
        X_test=None if X_test is None else X_test.to(device=device),
        y_test=targets(y_test),
        num_classes=num_classes,
        info=info,
    )


# ------------------------------------------------------------------------------------------------
# User data: IDX files
# ------------------------------------------------------------------------------------------------

# IDX type codes -> big-endian NumPy dtypes.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: PathLike) -> torch.Tensor:
    """Read one IDX file (the format of MNIST, Fashion-MNIST, EMNIST, ...).

    The header is two zero bytes, a type code (``0x08`` uint8, ``0x09`` int8, ``0x0B`` int16,
    ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64), the number of dimensions, and then one
    big-endian uint32 per dimension; the big-endian data follow. Files ending in ``.gz`` or
    starting with the gzip magic bytes are decompressed first.

    Args:
        path: the file.

    Returns:
        A tensor of the stored shape and of the matching native dtype (``torch.uint8`` for
        MNIST images and labels).

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: for a bad magic number, unknown type code, truncated header or a data size
            that does not match the header, or corrupt gzip data.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file {str(path)!r} does not exist")
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC or path.suffix.lower() == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(
                f"{str(path)!r} looks gzip-compressed (by its name or first bytes) but could "
                f"not be decompressed: {err}"
            ) from err
    if len(raw) < 4:
        raise ValueError(f"{str(path)!r} is too short ({len(raw)} bytes) to be an IDX file")
    if raw[0] != 0 or raw[1] != 0:
        raise ValueError(
            f"{str(path)!r} has bad magic number 0x{raw[:4].hex()}: an IDX file starts with two "
            f"zero bytes, a type code and the number of dimensions (e.g. 0x00000803 for MNIST "
            f"images, 0x00000801 for labels)"
        )
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(
            f"{str(path)!r} has unknown IDX type code 0x{code:02x}; expected one of "
            f"{', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)}"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(
            f"{str(path)!r} is truncated: its header announces {ndim} dimensions but the file "
            f"has only {len(raw)} bytes"
        )
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{str(path)!r} holds {len(raw) - header} data bytes but its header announces shape "
            f"{shape} of {dtype.name} ({expected} bytes); the file is truncated or corrupt"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    # astype to the native byte order also makes a writable copy for torch.from_numpy.
    return torch.from_numpy(data.astype(dtype.newbyteorder("="), copy=True))


def load_idx(
    images_path: PathLike, labels_path: PathLike | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Read an IDX images file and, optionally, the matching labels file.

    Args:
        images_path: IDX file of samples, shape ``(n, ...)`` (plain or gzip-compressed).
        labels_path: optional IDX file of integer labels, shape ``(n,)``.

    Returns:
        ``(images, labels)``: the images in their stored dtype (``uint8`` for MNIST; convert
        with ``images.float() / 255`` before :func:`from_tensors`), and the labels as ``int64``
        of shape ``(n,)``, or ``None`` without ``labels_path``.

    Raises:
        FileNotFoundError: if a file does not exist.
        ValueError: for malformed files (see :func:`read_idx`), non-integer or non-1-D labels,
            or a label count different from the number of images.
    """
    images = read_idx(images_path)
    if images.ndim == 0:
        raise ValueError(f"{str(images_path)!r} holds a scalar, not a stack of samples")
    if labels_path is None:
        return images, None
    labels = read_idx(labels_path)
    if labels.is_floating_point() or labels.ndim != 1:
        raise ValueError(
            f"labels file {str(labels_path)!r} must hold a 1-D array of integers, got "
            f"{labels.dtype} of shape {tuple(labels.shape)}"
        )
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{images.shape[0]} images in {str(images_path)!r} but {labels.shape[0]} labels in "
            f"{str(labels_path)!r}; did you pair the train images with the test labels?"
        )
    return images, labels.long()
