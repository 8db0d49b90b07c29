"""Argument checks of :class:`~valleys.Objective`: model mode, parameter selection, data.

Each check raises :class:`~valleys.errors.ArgumentValueError` or
:class:`~valleys.errors.ArgumentTypeError` with a message that says how to fix the call. They
live here, apart from the objective's arithmetic, and are reused by the modules that accept a
plain model next to an Objective (:mod:`valleys.smoothness`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from typing import Any, cast

import torch
from torch import nn

from valleys._checks import is_integral
from valleys.errors import ArgumentTypeError, ArgumentValueError

__all__ = [
    "BatchIterable",
    "check_batch",
    "check_deterministic",
    "check_indices",
    "check_reiterable",
    "normalize_data",
    "optional_positive_int",
    "refuse_train_mode",
    "select_parameters",
]

Batch = tuple[torch.Tensor, torch.Tensor]

# Modules whose forward pass is not a deterministic function of (θ, x) in train mode.
_STOCHASTIC_IN_TRAIN = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.modules.dropout._DropoutNd,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)

# How far two evaluations of the same samples may differ by rounding alone (other batch sizes
# pick other kernels).
_DETERMINISM_RTOL = {torch.float64: 1e-9, torch.float32: 1e-4}


def optional_positive_int(value: object, name: str) -> int | None:
    """``value`` as an int if it is a positive integer of any type (not a bool), or ``None``."""
    if value is not None and (
        not is_integral(value) or isinstance(value, bool) or value <= 0
    ):
        raise ArgumentValueError(f"{name} must be a positive integer or None, got {value!r}")
    return None if value is None else int(value)


def refuse_train_mode(model: nn.Module) -> None:
    """Refuse a model in train mode with stochastic or batch-dependent modules."""
    offenders = [
        name or type(model).__name__
        for name, m in model.named_modules()
        if m.training and isinstance(m, _STOCHASTIC_IN_TRAIN)
    ]
    if offenders:
        raise ArgumentValueError(
            f"the model is in train mode with stochastic or batch-dependent modules "
            f"({', '.join(offenders[:3])}{', ...' if len(offenders) > 3 else ''}), so curvature "
            "operators would not be deterministic. Call model.eval() first (valleys never does it "
            "for you), or pass allow_train_mode=True if you really want train-mode behaviour."
        )


def check_deterministic(forward: Callable[[torch.Tensor], torch.Tensor], X: torch.Tensor,
                        dtype: torch.dtype) -> None:
    """Refuse a model whose outputs are random or depend on the batch they are computed in.

    Module types cannot reveal everything: ``F.dropout(training=True)`` or ``nn.RReLU`` in
    ``forward``, or eval-mode BatchNorm with ``track_running_stats=False`` (batch
    statistics). So the samples ``X`` are evaluated twice, and once split in two halves;
    ``forward`` maps a batch to the model's outputs at fixed parameters.
    """
    rtol = _DETERMINISM_RTOL.get(dtype, 3e-2)
    with torch.no_grad():
        first = forward(X)
        again = forward(X)
        half = X.shape[0] // 2
        split = torch.cat([forward(X[:half]), forward(X[half:])]) if half else first
    scale = float(first.abs().max()) if first.numel() else 0.0

    def differ(a: torch.Tensor, b: torch.Tensor) -> bool:
        return not torch.allclose(a, b, rtol=rtol, atol=rtol * scale)

    if differ(first, again):
        raise ArgumentValueError(
            "the model gives different outputs for the same inputs and parameters (dropout "
            "or RReLU active in forward, e.g. F.dropout(..., training=True)?), so losses "
            "and curvature would be random; make forward deterministic, or pass "
            "allow_train_mode=True to accept it"
        )
    if differ(first, split):
        raise ArgumentValueError(
            "the model's outputs depend on which samples share a batch (batch statistics, "
            "e.g. BatchNorm or InstanceNorm with track_running_stats=False), so results "
            "would depend on chunking; use running statistics, or pass "
            "allow_train_mode=True to accept it"
        )


def match_parameters(named: dict[str, nn.Parameter], spec: object, what: str = "params",
                     ) -> list[str]:
    """Names in ``named`` (in its order) selected by ``spec``: an ``fnmatch`` pattern or a
    sequence of them (every pattern must match something), a predicate ``name -> bool``, or an
    ``nn.Module`` / sequence of modules whose parameters are in ``named``."""
    if isinstance(spec, str):
        spec = [spec]
    if isinstance(spec, nn.Module):
        spec = [spec]
    by_identity = {id(p): k for k, p in named.items()}
    chosen: set[str] = set()
    if callable(spec) and not isinstance(spec, nn.Module | Sequence):
        chosen = {k for k in named if spec(k)}
    elif isinstance(spec, Sequence) and spec and all(isinstance(m, nn.Module) for m in spec):
        for module in spec:
            owned = {by_identity[id(p)] for p in module.parameters() if id(p) in by_identity}
            if not owned:
                raise ArgumentValueError(
                    f"{what}: the module {type(module).__name__} holds none of the model's "
                    "parameters")
            chosen |= owned
    elif isinstance(spec, Sequence) and spec and all(isinstance(s, str) for s in spec):
        for pattern in spec:
            hits = {k for k in named if fnmatch.fnmatchcase(k, pattern)}
            if not hits:
                raise ArgumentValueError(
                    f"{what}: parameter pattern {pattern!r} matches none of the model's "
                    f"parameters {list(named)[:6]}{' ...' if len(named) > 6 else ''}")
            chosen |= hits
    else:
        raise ArgumentTypeError(
            f"{what} must be parameter names or fnmatch patterns, a predicate name -> bool, or "
            f"modules of the model, got {spec!r}")
    if not chosen:
        raise ArgumentValueError(f"{what} selects none of the model's parameters")
    return [k for k in named if k in chosen]  # keep the model's order


def select_parameters(named: dict[str, nn.Parameter], params: object) -> list[str]:
    """Names of the parameters that form θ, in the model's order: those ``params`` selects
    (see :func:`match_parameters`), or (``None``) every parameter with ``requires_grad``."""
    if params is None:
        names = [k for k, p in named.items() if p.requires_grad]
        if not names:
            raise ArgumentValueError("the model has no parameters with requires_grad=True")
        return names
    return match_parameters(named, params)


def check_indices(indices: object, n: int) -> torch.Tensor:
    """Mini-batch indices: a non-empty 1-D integer tensor (or sequence) with values in [0, n)."""
    try:
        idx = torch.as_tensor(indices)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ArgumentTypeError(f"indices must be a 1-D integer tensor, got {indices!r}") from error
    if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
        raise ArgumentTypeError(f"indices must be integers (a long tensor), got dtype {idx.dtype}")
    if idx.ndim != 1 or idx.numel() == 0:
        raise ArgumentValueError(
            f"indices must be a non-empty 1-D tensor (a mini-batch needs at least one "
            f"index), got shape {tuple(idx.shape)}")
    low, high = int(idx.min()), int(idx.max())
    if low < 0 or high >= n:
        raise ArgumentValueError(
            f"indices must lie in [0, {n}) (the number of samples), got values in "
            f"[{low}, {high}]; negative indices are not wrapped")
    return idx.long()


def check_batch(X: torch.Tensor, Y: torch.Tensor, dtype: torch.dtype) -> None:
    """One batch ``(X, Y)``: tensors with one sample count, float ones in the parameters'
    ``dtype`` and finite."""
    if not isinstance(X, torch.Tensor) or not isinstance(Y, torch.Tensor):
        raise ArgumentTypeError("inputs and targets must be torch tensors")
    if X.ndim == 0 or Y.ndim == 0 or X.shape[0] != Y.shape[0]:
        raise ArgumentValueError(
            f"inputs and targets must have the same number of samples along dim 0, got "
            f"X{tuple(X.shape)} and Y{tuple(Y.shape)}"
        )
    if X.is_floating_point() and X.dtype != dtype:
        raise ArgumentTypeError(
            f"inputs are {X.dtype} but the model's parameters are {dtype}; convert one of them "
            f"(X.to({dtype}) or model.to({X.dtype}))"
        )
    if Y.is_floating_point() and Y.dtype != dtype:
        raise ArgumentTypeError(f"targets are {Y.dtype} but the model's parameters are {dtype}")
    for name, t in (("inputs", X), ("targets", Y)):
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ArgumentValueError(
                f"the {name} contain NaN or infinite values; clean the data first")


def normalize_data(data: object) -> tuple[Batch | None, BatchIterable | None]:
    """``(tensors, None)`` for a pair of tensors, ``(None, batches)`` for a re-iterable of
    batches that yields the same data on every pass (random samplers, ``drop_last``, padding
    samplers and one-shot iterators are refused)."""
    if isinstance(data, tuple | list) and len(data) == 2 and all(
        isinstance(t, torch.Tensor) for t in data
    ):
        return (data[0], data[1]), None
    if isinstance(data, torch.Tensor):
        raise ArgumentTypeError(
            "data must be a pair (X, Y) of tensors or an iterable of (X, Y) batches")
    if isinstance(data, tuple | list) and len(data) == 2 and all(
        type(t).__module__ == "numpy" for t in data
    ):
        raise ArgumentTypeError("data is a pair of NumPy arrays; convert them first, e.g. "
                                "(torch.as_tensor(X, dtype=torch.float64), torch.as_tensor(y))")
    check_reiterable(data)
    # check_reiterable raised unless data is an Iterable.
    return None, BatchIterable(cast(Iterable[Any], data))


def check_reiterable(data: object) -> None:
    """Refuse data an objective cannot pass over twice with the same result: one-shot
    iterators, random samplers, ``drop_last`` and padding samplers."""
    if isinstance(data, Iterator):
        raise ArgumentTypeError(
            "data is a one-shot iterator (e.g. a generator); curvature solvers pass over the data "
            "many times, so give a list of batches or a DataLoader instead"
        )
    if not isinstance(data, Iterable):
        raise ArgumentTypeError(
            f"data must be a pair (X, Y) of tensors or an iterable of (X, Y) batches, got "
            f"{type(data).__name__}"
        )
    sampler = getattr(data, "sampler", None)
    # A batch_sampler= given to a DataLoader hides its own sampler behind a sequential one.
    inner = getattr(getattr(data, "batch_sampler", None), "sampler", None)
    random_samplers = (torch.utils.data.RandomSampler, torch.utils.data.SubsetRandomSampler,
                       torch.utils.data.WeightedRandomSampler)
    if isinstance(sampler, random_samplers) or isinstance(inner, random_samplers):
        kind = type(sampler if isinstance(sampler, random_samplers) else inner).__name__
        raise ArgumentValueError(
            f"the DataLoader draws its samples at random ({kind}, e.g. shuffle=True); the "
            "objective must see the same data on every pass, so build it with shuffle=False "
            "and a sequential sampler, or pass the data as tensors (X, Y)"
        )
    if getattr(data, "drop_last", False):
        raise ArgumentValueError("the DataLoader has drop_last=True, which silently drops samples")
    # A DistributedSampler's dataset is Sized: the sampler itself takes len() of it.
    if isinstance(sampler, torch.utils.data.DistributedSampler) and (
        sampler.drop_last or sampler.total_size != len(cast(Sized, sampler.dataset))
    ):
        raise ArgumentValueError(
            "the DataLoader's DistributedSampler pads or drops samples to give every rank the same "
            f"number ({len(cast(Sized, sampler.dataset))} samples, {sampler.total_size} after "
            "padding), "
            "which would count some twice; give each rank a contiguous shard instead "
            "(valleys.distributed.shard(X, Y) or a torch.utils.data.Subset)"
        )


class BatchIterable:
    """Re-iterable view of a user's batches that checks each item is an (X, Y) pair."""

    def __init__(self, batches: Iterable[Any]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[Batch]:
        for item in self.batches:
            if not (isinstance(item, tuple | list) and len(item) == 2):
                raise ArgumentTypeError(
                    f"each batch must be a pair (X, Y) of tensors, got {type(item).__name__}"
                )
            yield item[0], item[1]
