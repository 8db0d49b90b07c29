"""User data from a torchvision ``ImageFolder``-style directory, read with Pillow."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from valleys._checks import is_integral
from valleys.data._validation import (
    Device,
    PathLike,
    _check_float_dtype,
    _check_fraction,
    _check_int,
    _check_seed,
    _split_sizes,
)
from valleys.data.dataset import Dataset
from valleys.errors import ArgumentValueError

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


def _check_size(size: Any) -> tuple[int, int] | None:
    if size is None:
        return None
    if is_integral(size) and not isinstance(size, bool):
        size = (size, size)
    if not isinstance(size, Sequence) or len(size) != 2:
        raise ArgumentValueError(f"size must be None, an int or a pair (H, W), got {size!r}")
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
        raise ArgumentValueError(
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
        raise ArgumentValueError(
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
                    raise ArgumentValueError(
                        f"image {str(path)!r} has mode {im.mode!r} (more than 8 bits per "
                        f"channel), which is not supported; convert it to 8-bit first"
                    )
                if target_size is None:
                    if first_size is None:
                        first_size = im.size
                    elif im.size != first_size:
                        raise ArgumentValueError(
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
            raise ArgumentValueError(f"could not read image {str(path)!r}: {err}") from err
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
