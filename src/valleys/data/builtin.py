"""Built-in datasets that need no download: scikit-learn's digits and MNIST-1D.

MNIST-1D is *generated* locally with the ``mnist1d`` package's own generator; the caller's
global random state is restored afterwards.
"""

from __future__ import annotations

import contextlib
import io
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from valleys.data._postprocess import _classification_dataset
from valleys.data._validation import (
    Device,
    _check_float_dtype,
    _check_fraction,
    _check_int,
    _check_seed,
    _split_sizes,
)
from valleys.data.dataset import Dataset
from valleys.errors import ArgumentValueError


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
    # Deferred: importing sklearn.datasets takes ~0.7 s, which `import valleys` should not pay.
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
        raise ArgumentValueError(
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
