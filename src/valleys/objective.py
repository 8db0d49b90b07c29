"""The empirical risk as a first-class object.

An :class:`Objective` is the finite sum

.. math::  L(θ) = \\frac1n \\sum_{i=1}^n ℓ\\big(f(x_i; θ), y_i\\big)

of a model ``f``, a per-sample loss ``ℓ`` (see :mod:`valleys.losses` for the conventions) and a
data set of ``n`` samples. It converts between the model's named parameters and flat vectors
(operators and solvers work on flat vectors), and evaluates the loss, its gradient and
per-sample quantities by accumulating over chunks of data, so memory stays bounded however
large ``n`` is. Nothing here changes the model: it is evaluated functionally
(:func:`torch.func.functional_call`) at whatever flat parameter vector ``θ`` is asked for.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from valleys import distributed as vdist
from valleys._attention import math_attention, needs_math_attention
from valleys._fingerprint import (
    DTYPE_CODES,
    check_batch_size,
    check_handshake,
    check_pass,
    checksum,
    first_pass_checksum,
    probe_vector,
    stack_checksums,
)
from valleys._objective_checks import (
    check_batch,
    check_deterministic,
    check_indices,
    normalize_data,
    optional_positive_int,
    refuse_train_mode,
    select_parameters,
)
from valleys.errors import ArgumentTypeError, ArgumentValueError
from valleys.losses import LossFn, check_targets, resolve_loss

__all__ = ["Objective"]

Batch = tuple[torch.Tensor, torch.Tensor]

# Samples evaluated at construction to detect hidden randomness or batch dependence.
_PROBE_SAMPLES = 8


class Objective:
    """Empirical risk ``L(θ) = (1/n) Σ_i ℓ(f(x_i; θ), y_i)`` of a model on a data set.

    Args:
        model: any ``nn.Module``. It is called functionally and never modified. Modules that
            are stochastic or batch-dependent in train mode (BatchNorm, InstanceNorm, dropout)
            must be in eval mode (``model.eval()``), because curvature operators must be
            deterministic; pass ``allow_train_mode=True`` to accept them anyway.
        loss: ``"mse"``, ``"ce"`` or a callable ``(outputs, targets) -> per-sample losses``.
        data: a pair of tensors ``(X, Y)`` or a re-iterable of ``(X, Y)`` batches (a list, a
            ``DataLoader`` without shuffling). Batches may differ in size; every sample gets
            weight ``1/n``. Every pass over an iterable must yield the same batches in the same
            order: a random sampler is refused when the objective is built, a one-shot
            iterator (a generator) too, and any later pass whose batch count, sizes or
            checksums differ from the first raises a ``ValueError`` naming the batch.
        chunk_size: largest number of samples evaluated at once (``None``: a tensor pair is one
            chunk, an iterable's batches are used as they come). Chunking trades speed for memory.
        params: the parameters that form ``θ``: names or ``fnmatch`` patterns (``"layers.0.*"``),
            a predicate ``name -> bool``, or modules of the model (their parameters); the
            others stay fixed at their current values, so every operator and solver works on
            that subset (the diagonal block of the full matrix). Default: every parameter with
            ``requires_grad``.
        allow_train_mode: accept stochastic modules in train mode (results then vary per call).
        distributed: shard the samples over the processes of the default
            :mod:`torch.distributed` group (see :mod:`valleys.distributed`). ``data`` is then
            this rank's shard; the global data set is the shards concatenated in rank order,
            shards may differ in size, and each sample still gets weight ``1/n`` with ``n`` the
            global count. The loss, the gradient and every operator's product sum their partial
            results over ranks (one all-reduce each), so all ranks see full-data quantities;
            every rank must make the same calls with the same ``θ`` and vectors (same seeds).
            Per-sample quantities (:meth:`per_sample_losses`, per-sample gradients) stay local
            to the shard: no per-sample data crosses the network. Construction checks, with one
            all-gather, that every shard is non-empty and that all ranks hold the same ``θ``
            layout and values, raising the same error on every rank otherwise.

    A ``torch.nn.parallel.DistributedDataParallel`` (or ``DataParallel``) wrapper is unwrapped:
    its ``.module`` is the model (parameter names without the ``module.`` prefix).

    Attributes:
        n: number of samples (global when distributed).
        dim: number of parameters in ``θ``.
        dtype: the parameters' dtype (``device``: their device).
        names: layout of the flat vector: the parameters' names (``shapes``: their shapes).
        distributed: whether sharded (``rank``, ``world_size``: this process and the group).
        shard_sizes: samples of every rank's shard (one entry on one process); ``shard_chunks``
            the chunks of each, ``shard_start`` the global index of this shard's first sample.
    """

    shard_sizes: tuple[int, ...]
    shard_chunks: tuple[int, ...]
    # The data: a pair of tensors, or (when that is None) a re-iterable of batches.
    _tensors: Batch | None
    _batches: Iterable[Any] | None

    def __init__(
        self,
        model: nn.Module,
        loss: str | LossFn,
        data: Batch | Iterable[Batch],
        *,
        chunk_size: int | None = None,
        params: Sequence[str] | Callable[[str], bool] | nn.Module | None = None,
        allow_train_mode: bool = False,
        distributed: bool = False,
    ) -> None:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        self.distributed = bool(distributed)
        self.rank, self.world_size = 0, 1
        if not self.distributed:
            self._build(model, loss, data, chunk_size, params, allow_train_mode)
            self.shard_sizes, self.shard_chunks, self.shard_start = (self.n,), (self.num_chunks,), 0
            return
        if not vdist.is_initialized():
            raise ArgumentValueError(
                "distributed=True needs an initialized torch.distributed process group: launch "
                "with torchrun and call valleys.distributed.init() (or "
                "torch.distributed.init_process_group) before building the Objective"
            )
        self.rank, self.world_size = vdist.rank(), vdist.world_size()
        try:
            self._build(model, loss, data, chunk_size, params, allow_train_mode)
            failure = None
        except Exception as error:  # re-raised below, after telling the other ranks
            failure = error
        self._handshake(failure)

    def _build(
        self,
        model: nn.Module,
        loss: str | LossFn,
        data: Batch | Iterable[Batch],
        chunk_size: int | None,
        params: Sequence[str] | Callable[[str], bool] | nn.Module | None,
        allow_train_mode: bool,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ArgumentTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        chunk_size = optional_positive_int(chunk_size, "chunk_size")
        if not allow_train_mode:
            refuse_train_mode(model)
        self.model = model
        self.loss_name, self.loss_fn = resolve_loss(loss)
        self.chunk_size = chunk_size
        self.allow_train_mode = allow_train_mode
        self._set_layout(model, params)
        self._tensors, self._batches = normalize_data(data)
        self.n = self._count_and_check()

    def _set_layout(self, model: nn.Module, params: object) -> None:
        """The flat layout of θ: names, shapes, dtype and device, and the fixed tensors."""
        named = dict(model.named_parameters())
        self.names = select_parameters(named, params)
        variable = [named[k] for k in self.names]
        dtypes = {p.dtype for p in variable}
        devices = {p.device for p in variable}
        if len(dtypes) > 1 or len(devices) > 1:
            raise ArgumentTypeError(
                f"all parameters of θ must share one dtype and device, found {dtypes} on "
                f"{devices}; convert the model with model.to(dtype, device)"
            )
        self.dtype = variable[0].dtype
        if not self.dtype.is_floating_point:
            raise ArgumentTypeError(f"parameters must be floating point, got {self.dtype}")
        self.device = variable[0].device
        if self.distributed:
            vdist.check_model_device(self.device)
        self.shapes = [p.shape for p in variable]
        self.numels = [p.numel() for p in variable]
        self.dim = sum(self.numels)
        # Frozen parameters and buffers are passed to functional_call alongside θ.
        self._fixed: dict[str, torch.Tensor] = {
            k: v for k, v in named.items() if k not in set(self.names)}
        self._fixed.update(dict(model.named_buffers()))

    @classmethod
    def from_function(
        cls,
        model: nn.Module,
        fn: Callable[[nn.Module, object], torch.Tensor],
        data: Iterable[object],
        *,
        params: Sequence[str] | Callable[[str], bool] | nn.Module | None = None,
        allow_train_mode: bool = False,
    ) -> Objective:
        """The risk of any per-sample loss ``fn(model, batch)`` over any re-iterable of batches.

        ``data`` yields batches of any structure (dicts, tuples, nested tensors); ``fn`` calls
        the model normally and returns the batch's per-sample (or per-token) losses as a 1-D
        tensor, and ``L(θ)`` is their mean over all batches. valleys evaluates ``fn`` at any
        ``θ`` through :func:`torch.func.functional_call`. Hessian products (also through input
        derivatives inside ``fn``), spectra, traces, the gradient covariance and the empirical
        Fisher work; quantities needing separate outputs and a known loss (GGN, accuracy) or
        indexable samples raise. See :mod:`valleys._function_objective`.
        """
        # Deferred: the subclass module imports this one.
        from valleys._function_objective import FunctionObjective

        return FunctionObjective(model, fn, data, params=params,
                                 allow_train_mode=allow_train_mode)

    def _handshake(self, failure: Exception | None) -> None:
        """All-gather (status, shard size, chunks, layout, θ fingerprint) and check them.

        Every rank reaches this collective even when its own construction failed, so a bad
        shard raises on all ranks instead of leaving the others blocked in their first sum.
        """
        info = torch.full((6,), math.nan, dtype=torch.float64)
        info[0] = 0.0 if failure is None else 1.0
        if failure is None:
            probe = probe_vector(self.dim, torch.float64, torch.device("cpu"))
            theta = self.parameters_vector().detach().to("cpu", torch.float64)
            info[1:] = torch.tensor(
                [self.n, self.num_chunks, self.dim, DTYPE_CODES.get(self.dtype, -1),
                 float(theta @ probe)], dtype=torch.float64,
            )
        gathered = vdist.all_gather_rows(info)
        sizes, chunks = check_handshake(gathered, failure)
        self.shard_sizes = tuple(sizes)
        self.shard_chunks = tuple(chunks)
        self.shard_start = sum(sizes[: self.rank])
        self._local_n = self.n
        self.n = sum(sizes)
        self._probe_vector = probe_vector(self.dim, self.dtype, self.device)

    # -- reductions over ranks --------------------------------------------------------------
    def reduce(
        self, partial: torch.Tensor, *, inputs: Sequence[torch.Tensor] = ()
    ) -> torch.Tensor:
        """Sum a partial result over the ranks (returned as is on a single process).

        ``inputs`` are the flat vectors (or ``(k, dim)`` blocks) the partial result was
        computed from; a fingerprint of each rides along in the same all-reduce, and every rank
        raises if they differ between ranks (different seeds or θ would otherwise mix silently).
        """
        if not self.distributed:
            return partial
        probes = tuple(
            t.detach().reshape(-1, self.dim).to(self._probe_vector.dtype) @ self._probe_vector
            for t in inputs
        )
        return vdist.all_reduce_sum(
            partial, probes=probes, what=f"a sum over the {self.world_size} ranks' shards"
        )

    def require_single_process(self, caller: str) -> None:
        """Refuse a sharded objective in ``caller``, which needs all per-sample data at once."""
        if self.distributed:
            raise ArgumentValueError(
                f"{caller} needs every sample's data in one process (per-sample Jacobians, "
                "Hessians or Gram matrices), so it does not accept a distributed Objective; use "
                "the operator path (valleys.stability.stability_analysis, valleys.nonuniformity), "
                "which sums over ranks, or build a single-process Objective"
            )

    def all_ranks(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every rank (one small all-reduce when distributed)."""
        if not self.distributed:
            return bool(flag)
        count = self.reduce(torch.tensor([float(bool(flag))], dtype=torch.float64,
                                         device=self.device))
        return int(count.item()) == self.world_size

    # -- parameters <-> flat vectors --------------------------------------------------------
    def parameters_vector(self) -> torch.Tensor:
        """A copy of the model's current θ as a flat vector."""
        named = dict(self.model.named_parameters())
        return torch.cat([named[k].detach().reshape(-1) for k in self.names]).clone()

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a flat vector into named, shaped views (differentiable)."""
        self.check_vector(theta)
        pieces = torch.split(theta, self.numels)
        return {k: t.view(s) for k, t, s in zip(self.names, pieces, self.shapes, strict=True)}

    def flatten(self, named: dict[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate named tensors (same layout as θ) into a flat vector."""
        missing = [k for k in self.names if k not in named]
        if missing:
            raise ArgumentValueError(f"missing parameters {missing[:3]} to flatten")
        return torch.cat([named[k].reshape(-1) for k in self.names])

    def set_parameters(self, theta: torch.Tensor) -> None:
        """Write a flat vector into the model's parameters (explicit, in place)."""
        named = dict(self.model.named_parameters())
        with torch.no_grad():
            for k, t in self.unflatten(theta).items():
                named[k].copy_(t)

    def check_vector(self, theta: torch.Tensor, what: str = "θ") -> None:
        """Raise a clear error unless ``theta`` is a flat vector of this objective's layout."""
        if not isinstance(theta, torch.Tensor):
            raise ArgumentTypeError(f"{what} must be a torch tensor, got {type(theta).__name__}")
        if theta.shape != (self.dim,):
            raise ArgumentValueError(
                f"{what} must be a flat vector of shape ({self.dim},), got {tuple(theta.shape)}; "
                "use Objective.flatten / parameters_vector to build one"
            )
        if theta.dtype != self.dtype:
            raise ArgumentTypeError(f"{what} has dtype {theta.dtype}, the model uses {self.dtype}")

    def resolve_theta(self, theta: torch.Tensor | None) -> torch.Tensor:
        """``theta`` checked and on the right device, or a copy of the current parameters."""
        if theta is None:
            return self.parameters_vector()
        self.check_vector(theta)
        return theta.to(self.device)

    # -- data -------------------------------------------------------------------------------
    def chunks(self) -> Iterator[Batch]:
        """Yield ``(X, Y)`` chunks on the parameters' device, covering the data once.

        For an iterable of batches, every pass is checked against the first (the one made when
        the objective was built): batch count and sizes as each batch arrives, and a checksum
        of every batch once the pass is complete, so data that changes between passes (a
        shuffling sampler, random augmentation, a one-shot source) raises a ``ValueError``
        instead of silently giving a wrong loss. A pass stopped early is not checked.
        """
        if self._tensors is not None:  # a pair of tensors cannot reorder itself: no checks
            X, Y = self._tensors
            step = self.chunk_size or X.shape[0]
            for start in range(0, X.shape[0], step):
                yield (
                    X[start : start + step].to(self.device, non_blocking=True),
                    Y[start : start + step].to(self.device, non_blocking=True),
                )
            return
        # Checksums accumulate on the device; they are compared once, at the end of the pass
        # (one synchronization per pass, not one per batch).
        seen = torch.zeros_like(self._fingerprint[:, 0])
        count = 0
        for index, (X, Y) in enumerate(self._batch_source()):
            check_batch_size(index, X, Y, self._batch_sizes)
            step = self.chunk_size or X.shape[0]
            for start in range(0, X.shape[0], step):
                Xc = X[start : start + step].to(self.device, non_blocking=True)
                Yc = Y[start : start + step].to(self.device, non_blocking=True)
                seen[index] += checksum(Xc, Yc, start)
                yield Xc, Yc
            count = index + 1
        check_pass(seen, count, self._fingerprint)

    def batch(self, indices: torch.Tensor) -> Batch:
        """The samples ``indices`` as ``(X, Y)`` on the parameters' device (tensor data only)."""
        if self.distributed:
            raise ArgumentValueError(
                "a sharded objective holds only this rank's samples, so it cannot return a "
                "mini-batch by global index; use batch_loss_and_gradient(theta, indices), which "
                "sums each rank's part of the batch over ranks"
            )
        if self._tensors is None:
            raise ArgumentValueError(
                "mini-batches by index need the data as a pair of tensors (X, Y); this objective "
                "was built from an iterable of batches"
            )
        X, Y = self._tensors
        indices = check_indices(indices, self.n).to(X.device)
        return X[indices].to(self.device), Y[indices].to(self.device)

    def batch_loss_and_gradient(
        self, theta: torch.Tensor | None, indices: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean loss ``(1/B) Σ_{i∈batch} ℓ_i(θ)`` and its gradient for a mini-batch of indices.

        ``indices`` (length ``B``, repeats allowed) index the global data set ``0..n−1``. When
        distributed, every rank must pass the same indices (draw them from the same seeded
        generator); each evaluates the ones in its shard and the sums are all-reduced, so the
        step equals the single-process one.
        """
        leaf = self.resolve_theta(theta).detach().requires_grad_(True)
        if self._tensors is None:
            raise ArgumentValueError(
                "mini-batches by index need the data as a pair of tensors (X, Y); this objective "
                "was built from an iterable of batches"
            )
        indices = check_indices(indices, self.n)
        count = indices.numel()
        X, Y = self._tensors
        if self.distributed:
            local = indices - self.shard_start
            local = local[(local >= 0) & (local < self._local_n)]
        else:
            local = indices
        local = local.to(X.device)
        with torch.enable_grad():
            total = self.chunk_losses(leaf, X[local].to(self.device), Y[local].to(self.device))
            total = total.sum()
            gradient = torch.autograd.grad(total, leaf, allow_unused=True)[0]
        if gradient is None:  # an empty local part of the batch
            gradient = torch.zeros_like(leaf)
        both = self.reduce(torch.cat([total.detach().reshape(1), gradient]), inputs=(leaf,))
        return both[0] / count, both[1:] / count

    def _batch_source(self) -> Iterable[Any]:
        """The re-iterable of batches of an objective not built from a pair of tensors."""
        if self._batches is None:
            raise RuntimeError("this objective holds a pair of tensors, not batches")
        return self._batches

    @property
    def num_chunks(self) -> int:
        """How many chunks one pass over the data takes (counted when the objective was built)."""
        return self._num_chunks

    def _count_and_check(self) -> int:
        n = 0
        first = True
        self._num_chunks = 0
        batches = [self._tensors] if self._tensors is not None else self._batch_source()
        classes = None
        # The first pass's batch sizes and checksums, against which chunks() checks every
        # later pass of an iterable (computed on the batches' own device: no transfer here).
        sizes: list[int] = []
        checksums: list[torch.Tensor] = []
        for index, (X, Y) in enumerate(batches):
            check_batch(X, Y, self.dtype)
            if X.shape[0] == 0 and self._tensors is None:
                raise ArgumentValueError(
                    f"batch {index} of the data is empty; drop empty batches (e.g. "
                    "a DataLoader with drop_last=True, or filter them out)")
            self._num_chunks += -(-X.shape[0] // (self.chunk_size or max(X.shape[0], 1)))
            if self._tensors is None:
                sizes.append(X.shape[0])
                checksums.append(first_pass_checksum(X, Y, self.chunk_size or X.shape[0]))
            if first and X.shape[0] > 0:
                # Run two samples through the model once so shape errors surface here.
                with torch.no_grad():
                    try:
                        probe = X[:2].to(self.device)
                        self._detect_fused_attention(
                            partial(self.forward, self.parameters_vector(), probe))
                        out = self.forward(self.parameters_vector(), probe)
                    except RuntimeError as error:  # shapes or dtypes the model cannot take
                        kind = (ArgumentTypeError if not X.is_floating_point()
                                else ArgumentValueError)
                        raise kind(
                            f"the model cannot be evaluated on the inputs of shape "
                            f"{tuple(X.shape)} and dtype {X.dtype} (batch {index}): {error}"
                        ) from error
                check_targets(self.loss_name, out, Y[:2].to(self.device))
                if not self.allow_train_mode:
                    check_deterministic(partial(self.forward, self.parameters_vector()),
                                        X[:_PROBE_SAMPLES].to(self.device), self.dtype)
                if self.loss_name == "ce" and not Y.is_floating_point():
                    classes = out.shape[1]
                if self.loss_name not in ("mse", "ce"):
                    value = self.loss_fn(out, Y[:2].to(self.device))
                    if value.shape != (out.shape[0],):
                        raise ArgumentValueError(
                            "a custom loss must return per-sample losses of shape (batch,), got "
                            f"{tuple(value.shape)}; use reduction='none' and sum over outputs"
                        )
                first = False
            if classes is not None and Y.numel():
                # Every label of every batch, once: a bad label deep in the data would
                # otherwise fail as an IndexError in the middle of a computation.
                low, high = int(Y.min()), int(Y.max())
                if low < 0 or high >= classes:
                    raise ArgumentValueError(
                        f"batch {index}: class labels must lie in [0, {classes}) "
                        f"for a model with {classes} outputs, got labels in "
                        f"[{low}, {high}]")
            n += X.shape[0]
        if n == 0 and not self.distributed:  # a sharded objective checks all shards at once
            raise ArgumentValueError(
                "the data set is empty; an objective needs at least one sample")
        self._batch_sizes = tuple(sizes)
        self._fingerprint = stack_checksums(checksums, self.device)
        return n

    # -- evaluation -------------------------------------------------------------------------
    def forward(self, theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """Model outputs ``f(X; θ)`` for a batch ``X``."""
        named = self.unflatten(theta)
        with self._attention_context():
            return functional_call(self.model, {**self._fixed, **named}, (X,))

    # Fused attention kernels have no double backward (see valleys._attention): a model that
    # reaches one is evaluated with the math backend, inside valleys' own calls only.
    _math_attention = False

    def _detect_fused_attention(self, forward: Callable[[], object]) -> None:
        self._math_attention = self._math_attention or needs_math_attention(forward)

    def _attention_context(self) -> contextlib.AbstractContextManager[None]:
        return math_attention() if self._math_attention else contextlib.nullcontext()

    def chunk_losses(self, theta: torch.Tensor, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        """Per-sample losses ``ℓ(f(x_i; θ), y_i)`` of one chunk, shape ``(batch,)``."""
        return self.loss_fn(self.forward(theta, X), Y)

    def sample_loss(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Loss of a single sample (no batch dimension), for ``vmap`` over samples."""
        return self.chunk_losses(theta, x.unsqueeze(0), y.unsqueeze(0))[0]

    def sample_output(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Model output ``f(x; θ)`` of a single sample (no batch dimension), for ``vmap``.

        The sample passes through the model as a batch of one, so ``vmap(jacrev(·))`` of it
        gives per-sample Jacobians: in ``x`` the input Jacobians ``∇_x f(x_i; θ)``, in ``θ``
        the parameter Jacobians ``∂f(x_i; θ)/∂θ``.
        """
        return self.forward(theta, x.unsqueeze(0))[0]

    def chunk_risk(self, theta: torch.Tensor, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        """This chunk's share of ``L``: ``(1/n) Σ_{i in chunk} ℓ_i``; shares sum to ``L(θ)``."""
        return self.chunk_losses(theta, X, Y).sum() / self.n

    def accumulate(
        self,
        fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        *,
        inputs: Sequence[torch.Tensor] = (),
    ) -> torch.Tensor:
        """Sum ``fn(X, Y)`` over all chunks (the one reduction every full-data quantity uses).

        When distributed, the shard's sum is then summed over ranks (:meth:`reduce`, with the
        vectors ``inputs`` checked to agree across ranks).
        """
        total = None
        for X, Y in self.chunks():
            part = fn(X, Y)
            total = part if total is None else total.add_(part)
        if total is None:  # construction refuses data without samples
            raise RuntimeError("the objective's data yielded no chunks")
        return self.reduce(total, inputs=inputs)

    def loss(self, theta: torch.Tensor | None = None) -> torch.Tensor:
        """``L(θ)`` as a 0-d tensor (at the model's current parameters by default)."""
        theta = self.resolve_theta(theta)
        with torch.no_grad():
            return self.accumulate(lambda X, Y: self.chunk_risk(theta, X, Y), inputs=(theta,))

    def gradient(self, theta: torch.Tensor | None = None) -> torch.Tensor:
        """``∇L(θ)`` as a flat vector."""
        return self.loss_and_gradient(theta)[1]

    def loss_and_gradient(self, theta: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """``(L(θ), ∇L(θ))`` in one pass over the data."""
        leaf = self.resolve_theta(theta).detach().requires_grad_(True)
        value = torch.zeros((), dtype=self.dtype, device=self.device)
        gradient = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        for X, Y in self.chunks():
            part = self.chunk_risk(leaf, X, Y)
            gradient += torch.autograd.grad(part, leaf)[0]
            value += part.detach()
        if self.distributed:
            both = self.reduce(torch.cat([value.reshape(1), gradient]), inputs=(leaf,))
            value, gradient = both[0], both[1:]
        return value, gradient

    def accuracy(self, theta: torch.Tensor | None = None) -> float:
        """Fraction of samples whose largest output is the label (integer or one-hot targets)."""
        theta = self.resolve_theta(theta)

        def correct(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
            out = self.forward(theta, X)
            if out.ndim != 2 or out.shape[1] < 2:
                raise ArgumentValueError("accuracy needs outputs of shape (batch, classes)")
            labels = Y if not Y.is_floating_point() else Y.argmax(dim=1)
            return (out.argmax(dim=1) == labels).sum()

        with torch.no_grad():
            return float(self.accumulate(correct, inputs=(theta,))) / self.n

    def per_sample_losses(self, theta: torch.Tensor | None = None) -> torch.Tensor:
        """The ``n`` per-sample losses ``ℓ_i(θ)`` (when distributed: this shard's only)."""
        theta = self.resolve_theta(theta)
        with torch.no_grad():
            return torch.cat([self.chunk_losses(theta, X, Y) for X, Y in self.chunks()])

    def iter_per_sample_gradients(
        self, theta: torch.Tensor | None = None
    ) -> Iterator[torch.Tensor]:
        """Yield per-sample gradients ``∇ℓ_i(θ)`` chunk by chunk, each of shape ``(chunk, dim)``.

        Computed with ``vmap(grad(ℓ))`` over the samples of a chunk (when distributed: the
        chunks of this shard only; they never leave the process).
        """
        theta = self.resolve_theta(theta).detach()
        per_sample = vmap(grad(self.sample_loss), in_dims=(None, 0, 0))
        for X, Y in self.chunks():
            yield per_sample(theta, X, Y)

    def per_sample_gradients(self, theta: torch.Tensor | None = None) -> torch.Tensor:
        """All per-sample gradients as an ``(n, dim)`` tensor (mind the memory: ``n·dim``)."""
        return torch.cat(list(self.iter_per_sample_gradients(theta)))

    def __repr__(self) -> str:
        return (
            f"Objective(model={type(self.model).__name__}, loss={self.loss_name!r}, n={self.n}, "
            f"dim={self.dim}, dtype={self.dtype}, device={self.device}, "
            f"chunk_size={self.chunk_size}"
            + (f", rank={self.rank}/{self.world_size}" if self.distributed else "")
            + ")"
        )

