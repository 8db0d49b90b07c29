"""Named built-in problems: a data set, a model, a loss and a deterministic training recipe.

The CLI, the tests and the benchmarks all refer to these by name, so that numbers measured in
different places are about the same minimum:

================  ===========================================================================
``digits-mlp``    scikit-learn digits (1,438 training samples), MLP 64-128-128-10 tanh, ``"ce"``
``digits-mse``    digits, MLP 64-256-256-10 ReLU, ``"mse"`` on one-hot targets
``mnist1d-mlp``   MNIST-1D (4,000 training samples), MLP 40-512-512-10 ReLU, ``"ce"``
================  ===========================================================================

``load_problem(name, trained=True)`` returns the model at its *fixed checkpoint*: trained from a
seeded initialization by a seeded recipe (Adam, shuffled mini-batches from a seeded generator).
The checkpoint is cached on disk (``$VALLEYS_CACHE_DIR`` or ``~/.cache/valleys``) under a key
that includes the recipe, so a changed recipe never reuses a stale file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from valleys import data as datasets
from valleys._checks import available_device, writable_folder
from valleys.distributed import shard
from valleys.errors import ArgumentTypeError, ArgumentValueError
from valleys.losses import resolve_loss
from valleys.models import MLP
from valleys.objective import Objective

__all__ = ["PROBLEMS", "Problem", "ProblemSpec", "Recipe", "load_problem"]


@dataclass(frozen=True)
class Recipe:
    """How a problem's checkpoint is trained: Adam on shuffled mini-batches, fixed epochs."""

    epochs: int
    batch_size: int = 64
    lr: float = 1e-3


@dataclass(frozen=True)
class ProblemSpec:
    name: str
    description: str
    dataset: Callable[..., datasets.Dataset]
    widths: tuple[int, ...]
    activation: str
    loss: str
    recipe: Recipe
    data_kwargs: dict = field(default_factory=dict)


PROBLEMS: dict[str, ProblemSpec] = {
    spec.name: spec
    for spec in (
        ProblemSpec(
            "digits-mlp",
            "digits, MLP 64-128-128-10 tanh, cross-entropy",
            datasets.load_digits,
            (64, 128, 128, 10),
            "tanh",
            "ce",
            Recipe(epochs=60),
        ),
        ProblemSpec(
            "digits-mse",
            "digits, MLP 64-256-256-10 ReLU, squared loss on one-hot targets",
            datasets.load_digits,
            (64, 256, 256, 10),
            "relu",
            "mse",
            Recipe(epochs=60),
            {"one_hot": True},
        ),
        ProblemSpec(
            "mnist1d-mlp",
            "MNIST-1D (4,000 training samples), MLP 40-512-512-10 ReLU, cross-entropy",
            datasets.load_mnist1d,
            (40, 512, 512, 10),
            "relu",
            "ce",
            Recipe(epochs=30),
        ),
    )
}


@dataclass
class Problem:
    """A built-in problem, ready to analyse.

    Attributes:
        name: the problem's name. model: the network (eval mode; at the checkpoint if trained).
        loss: the loss convention. data: the :class:`~valleys.data.Dataset`.
        checkpoint: where the trained weights came from (``None`` for the initialization).
        history: final training loss and accuracy of the checkpoint's recipe.
    """

    name: str
    model: nn.Module
    loss: str
    data: datasets.Dataset
    checkpoint: Path | None = None
    history: dict = field(default_factory=dict)

    def objective(
        self, split: str = "train", *, chunk_size: int | None = None, distributed: bool = False
    ) -> Objective:
        """The empirical risk of the model on the train (default) or test split.

        ``distributed=True``: this rank's contiguous shard of the split, summed over the ranks
        of the initialized process group (see :mod:`valleys.distributed`).
        """
        if split not in ("train", "test"):
            raise ArgumentValueError(f"split must be 'train' or 'test', got {split!r}")
        data = getattr(self.data, split)
        if distributed:
            data = shard(*data)
        return Objective(
            self.model, self.loss, data, chunk_size=chunk_size, distributed=distributed
        )


def load_problem(
    name: str,
    *,
    trained: bool = True,
    seed: int = 0,
    num_samples: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    cache_dir: str | Path | None = None,
) -> Problem:
    """Build a named problem, at its trained checkpoint or at initialization.

    Args:
        name: one of :data:`PROBLEMS`.
        trained: train (or load the cached) checkpoint; ``False`` returns the initialization.
        seed: seeds the data split, the initialization and the training order.
        num_samples: for MNIST-1D, how many samples to generate (train + test, multiple of 10;
            default 5,000 gives 4,000 training samples). Larger sets reuse the checkpoint
            trained on the default size: the point is a fixed minimum, evaluated on more data.
        dtype, device: where the model and data live (training itself runs in float32 on the
            CPU, so checkpoints are the same everywhere).
        cache_dir: checkpoint folder (default ``$VALLEYS_CACHE_DIR`` or ``~/.cache/valleys``).
    """
    if not isinstance(name, str) or name not in PROBLEMS:
        raise ArgumentValueError(f"unknown problem {name!r}; choose one of {sorted(PROBLEMS)}")
    # Checked before any training: a bad device or dtype should cost nothing.
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ArgumentTypeError(f"dtype must be a floating torch.dtype such as torch.float64, got "
                                f"{dtype!r}")
    if device is not None:
        available_device(device)
    spec = PROBLEMS[name]
    if num_samples is not None and spec.dataset is not datasets.load_mnist1d:
        raise ArgumentValueError(f"num_samples applies to MNIST-1D problems only, not {name!r}")
    model = MLP(spec.widths, activation=spec.activation, seed=seed).eval()
    checkpoint, history = None, {}
    if trained:
        train_data = spec.dataset(seed=seed, **spec.data_kwargs)
        checkpoint = _checkpoint_path(spec, seed, cache_dir)
        saved = _load_verified(checkpoint)
        if saved is not None:
            model.load_state_dict(saved["state_dict"])
            history = json.loads(saved["history"])
        else:
            writable_folder(checkpoint.parent, "the checkpoint cache",
                            hint="set VALLEYS_CACHE_DIR (or cache_dir=) to a writable folder")
            history = _train(model, spec, train_data, seed)
            _save_atomically(checkpoint, {"state_dict": model.state_dict(),
                                          "history": json.dumps(history)})
    extra = {} if num_samples is None else {"num_samples": num_samples}
    data = spec.dataset(seed=seed, **spec.data_kwargs, **extra)
    return Problem(
        name=name,
        model=model.to(device=device, dtype=dtype),
        loss=spec.loss,
        data=data.to(device=device, dtype=dtype),
        checkpoint=checkpoint,
        history=history,
    )


def _checkpoint_path(spec: ProblemSpec, seed: int, cache_dir: str | Path | None) -> Path:
    root = Path(cache_dir or os.environ.get("VALLEYS_CACHE_DIR") or Path.home() / ".cache/valleys")
    key = json.dumps(
        [spec.widths, spec.activation, spec.loss, asdict(spec.recipe), spec.data_kwargs, seed,
         torch.__version__.split("+")[0]],
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return root / "checkpoints" / f"{spec.name}-seed{seed}-{digest}.pt"


def _train(model: nn.Module, spec: ProblemSpec, data: datasets.Dataset, seed: int) -> dict:
    """Adam on shuffled mini-batches; every random choice comes from ``seed``."""
    _, loss_fn = resolve_loss(spec.loss)
    X, Y = data.train
    recipe = spec.recipe
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    model.train()
    for _ in range(recipe.epochs):
        order = torch.randperm(X.shape[0], generator=generator)
        for start in range(0, X.shape[0], recipe.batch_size):
            idx = order[start : start + recipe.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(X[idx]), Y[idx]).mean().backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        out = model(X)
        labels = Y.argmax(1) if Y.is_floating_point() else Y
        return {
            "train_loss": float(loss_fn(out, Y).mean()),
            "train_accuracy": float((out.argmax(1) == labels).double().mean()),
            "recipe": asdict(recipe),
        }


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _load_verified(path: Path) -> dict | None:
    """The cached checkpoint if its content matches the hash stored beside it; ``None`` (with a
    warning naming the file and the reason) when it is missing, damaged or altered."""
    if not path.exists():
        return None
    digest = _digest_path(path)
    reason = None
    if not digest.exists():
        reason = "it has no content hash beside it (an interrupted write, or an old cache)"
    # One read: the bytes loaded are the bytes verified, even if another process replaces the
    # file in between.
    elif digest.read_text(encoding="utf-8").strip() != _digest(content := path.read_bytes()):
        reason = "its content does not match the hash stored beside it (changed or truncated)"
    else:
        try:
            saved = torch.load(io.BytesIO(content), map_location="cpu", weights_only=True)
            if not {"state_dict", "history"} <= set(saved):
                raise KeyError("state_dict/history")
            return saved
        except Exception as error:  # any unreadable file is retrained, never used
            reason = f"it cannot be read ({type(error).__name__}: {error})"
    warnings.warn(f"cached checkpoint {str(path)!r} is not used: {reason}; training it again",
                  UserWarning, stacklevel=3)
    return None


def _save_atomically(path: Path, payload: dict) -> None:
    """Write the checkpoint, then its content hash (a kill in between leaves a checkpoint
    without a hash, which is retrained rather than trusted)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    content = buffer.getvalue()  # hashed as written, not read back (another writer may race)
    _write_atomically(path, content)
    _write_atomically(_digest_path(path), (_digest(content) + "\n").encode())


def _write_atomically(path: Path, content: bytes) -> None:
    """A temporary file in the same folder, flushed to disk, then renamed over ``path``: a
    reader sees the old file or the whole new one, after a kill or a power cut alike."""
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(handle.name, path)
