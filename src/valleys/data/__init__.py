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

Layout:
    * :mod:`~valleys.data.dataset` -- the :class:`Dataset` record.
    * :mod:`~valleys.data.builtin` -- :func:`load_digits`, :func:`load_mnist1d`.
    * :mod:`~valleys.data.synthetic` -- :func:`teacher_student`, :func:`gaussian_mixture`.
    * :mod:`~valleys.data.loaders` -- :func:`from_tensors`, :func:`from_torch_dataset`.
    * :mod:`~valleys.data.image_folder` -- :func:`load_image_folder`, :data:`IMAGE_EXTENSIONS`.
    * :mod:`~valleys.data.idx` -- :func:`read_idx`, :func:`load_idx`.
    * ``_validation`` and ``_postprocess`` -- private argument checks and shared post-processing.
"""

from __future__ import annotations

from valleys.data.builtin import load_digits, load_mnist1d
from valleys.data.dataset import Dataset
from valleys.data.idx import load_idx, read_idx
from valleys.data.image_folder import IMAGE_EXTENSIONS, load_image_folder
from valleys.data.loaders import from_tensors, from_torch_dataset
from valleys.data.synthetic import gaussian_mixture, teacher_student

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
