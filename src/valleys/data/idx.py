"""User data in the IDX format of MNIST and its relatives, optionally gzip-compressed."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import torch

from valleys.data._validation import PathLike
from valleys.errors import ArgumentValueError

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
            raise ArgumentValueError(
                f"{str(path)!r} looks gzip-compressed (by its name or first bytes) but could "
                f"not be decompressed: {err}"
            ) from err
    if len(raw) < 4:
        raise ArgumentValueError(f"{str(path)!r} is too short ({len(raw)} bytes) to be an IDX file")
    if raw[0] != 0 or raw[1] != 0:
        raise ArgumentValueError(
            f"{str(path)!r} has bad magic number 0x{raw[:4].hex()}: an IDX file starts with two "
            f"zero bytes, a type code and the number of dimensions (e.g. 0x00000803 for MNIST "
            f"images, 0x00000801 for labels)"
        )
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ArgumentValueError(
            f"{str(path)!r} has unknown IDX type code 0x{code:02x}; expected one of "
            f"{', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)}"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ArgumentValueError(
            f"{str(path)!r} is truncated: its header announces {ndim} dimensions but the file "
            f"has only {len(raw)} bytes"
        )
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) - header != expected:
        raise ArgumentValueError(
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
        raise ArgumentValueError(f"{str(images_path)!r} holds a scalar, not a stack of samples")
    if labels_path is None:
        return images, None
    labels = read_idx(labels_path)
    if labels.is_floating_point() or labels.ndim != 1:
        raise ArgumentValueError(
            f"labels file {str(labels_path)!r} must hold a 1-D array of integers, got "
            f"{labels.dtype} of shape {tuple(labels.shape)}"
        )
    if labels.shape[0] != images.shape[0]:
        raise ArgumentValueError(
            f"{images.shape[0]} images in {str(images_path)!r} but {labels.shape[0]} labels in "
            f"{str(labels_path)!r}; did you pair the train images with the test labels?"
        )
    return images, labels.long()
