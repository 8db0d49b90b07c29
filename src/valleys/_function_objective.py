r"""An :class:`~valleys.Objective` from any per-sample loss function and any batches.

``Objective.from_function(model, fn, data)`` serves models whose batches are not ``(X, Y)``
pairs or whose loss is not a function of the outputs alone: language models (dict batches,
per-token cross-entropy over non-padding tokens), contrastive losses, physics-informed losses
whose residual holds derivatives of the network with respect to its inputs. ``fn(model, batch)``
calls the model as usual and returns the batch's per-sample (or per-token) losses, a 1-D tensor;
the risk is their mean over everything the data yields,

.. math::  L(θ) = \frac1n \sum_{b} \sum_{i=1}^{n_b} ℓ_{b,i}(θ), \qquad n = \sum_b n_b .

valleys evaluates ``fn`` at any flat ``θ`` with :func:`torch.func.functional_call` on a wrapper
module that holds the model, so ``fn`` needs no changes and the model is never modified. The
Hessian, its products, traces, spectra, sharpness, the gradient covariance and the empirical
Fisher all work; the quantities that need separate model outputs and a known loss (the GGN and
its variance, the Monte-Carlo Fisher, accuracy) or an indexable data set (mini-batches by index,
per-sample Hessians) are refused with a message saying so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, jacrev
from torch.utils._pytree import tree_leaves, tree_map

from valleys._objective_checks import check_reiterable, refuse_train_mode
from valleys.errors import ArgumentTypeError, ArgumentValueError
from valleys.objective import Objective

__all__ = ["FunctionObjective"]

LossFunction = Callable[[nn.Module, Any], torch.Tensor]


class _Call(nn.Module):
    """``forward(batch) = fn(model, batch)``: lets ``functional_call`` reach inside ``fn``."""

    def __init__(self, model: nn.Module, fn: LossFunction) -> None:
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, batch: Any) -> torch.Tensor:
        return self.fn(self.model, batch)


def _refuse(what: str) -> Callable[..., Any]:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise ArgumentValueError(
            f"{what} needs an Objective built as Objective(model, loss, (X, Y)) (separate model "
            "outputs, a known loss and indexable samples); this one comes from "
            "Objective.from_function, which only knows the per-sample losses")
    return refuse


def _fingerprint(batch: Any) -> tuple[tuple[tuple[int, ...], torch.dtype, float], ...]:
    """Shapes, dtypes and float64 sums of a batch's tensors: a later pass must match."""
    leaves = [leaf for leaf in tree_leaves(batch) if isinstance(leaf, torch.Tensor)]
    return tuple((tuple(t.shape), t.dtype, float(t.detach().double().sum())) for t in leaves)


class FunctionObjective(Objective):
    """The risk ``L(θ) = (1/n) Σ_b Σ_i ℓ_{b,i}(θ)`` of ``fn(model, batch) -> ℓ_b`` over ``data``.

    Build it with :meth:`valleys.Objective.from_function`; see the module docstring.
    """

    def __init__(self, model: nn.Module, fn: LossFunction, data: Iterable[Any], *,
                 params: Sequence[str] | Callable[[str], bool] | nn.Module | None = None,
                 allow_train_mode: bool = False) -> None:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        if not isinstance(model, nn.Module):
            raise ArgumentTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(fn):
            raise ArgumentTypeError(
                f"fn must be a function fn(model, batch) -> per-sample losses, got {fn!r}")
        if isinstance(data, torch.Tensor) or (isinstance(data, dict)):
            raise ArgumentTypeError(
                "data must be an iterable of batches (e.g. a list of dicts or a DataLoader); "
                "wrap a single batch in a list: [batch]")
        check_reiterable(data)
        if not allow_train_mode:
            refuse_train_mode(model)
        self.distributed, self.rank, self.world_size = False, 0, 1
        self.model, self.allow_train_mode, self.chunk_size = model, allow_train_mode, None
        self.loss_name, self.loss_fn = "function", _refuse("the loss applied to model outputs")
        self._set_layout(model, params)
        self._call = _Call(model, fn)
        self._tensors, self._batches = None, data
        self.n = self._count_and_check()
        self.shard_sizes, self.shard_chunks, self.shard_start = (self.n,), (self.num_chunks,), 0

    # Everything below overrides Objective's (X, Y)-based internals; the rest is inherited.
    def _count_and_check(self) -> int:
        theta = self.parameters_vector()
        self._prints, self._counts = [], []
        for index, raw in enumerate(self._batch_source()):
            # Fingerprints are taken where the data lives, as on every later pass (a float64 sum
            # on another device may round differently).
            self._prints.append(_fingerprint(raw))
            batch = self._to_device(raw)
            with torch.no_grad():
                if index == 0:
                    self._detect_fused_attention(partial(self.chunk_losses, theta, batch))
                losses = self.chunk_losses(theta, batch, None)
                if not torch.isfinite(losses).all():
                    raise ArgumentValueError(
                        f"fn(model, batch) returned non-finite losses on batch {index}")
                if index == 0 and not self.allow_train_mode:
                    again = self.chunk_losses(theta, batch, None)
                    if not torch.equal(losses, again):
                        raise ArgumentValueError(
                            "fn(model, batch) gives different losses for the same batch and "
                            "parameters (dropout active?), so the curvature would be random; "
                            "make it deterministic or pass allow_train_mode=True")
            self._counts.append(losses.numel())
        self._num_chunks = len(self._counts)
        n = sum(self._counts)
        if n == 0:
            raise ArgumentValueError("the data yields no losses; an objective needs at least one")
        return n

    def _to_device(self, batch: Any) -> Any:
        return tree_map(lambda t: t.to(self.device) if isinstance(t, torch.Tensor) else t, batch)

    def chunks(self) -> Iterator[tuple[Any, None]]:  # type: ignore[override]
        """Yield ``(batch, None)`` on the parameters' device; every pass is checked against the
        first (batch count, shapes, dtypes and sums), so changing data raises."""
        count = 0
        for index, batch in enumerate(self._batch_source()):
            if index >= len(self._prints) or _fingerprint(batch) != self._prints[index]:
                raise ArgumentValueError(
                    f"batch {index} of the data differs from the first pass (shuffled, "
                    "augmented or changed data?); the objective must see the same batches on "
                    "every pass")
            count = index + 1
            yield self._to_device(batch), None
        if count != len(self._prints):
            raise ArgumentValueError(
                f"the data yielded {count} batches on this pass and {len(self._prints)} on the "
                "first; the objective must see the same batches on every pass")

    def chunk_losses(self, theta: torch.Tensor, X: Any, Y: Any = None) -> torch.Tensor:
        """``fn(model, batch)`` at ``θ``: the batch's per-sample losses (``Y`` is unused)."""
        named = {f"model.{k}": v for k, v in {**self._fixed, **self.unflatten(theta)}.items()}
        # fn may differentiate inside (a PDE residual's u_x, u_xx), so autograd stays on even
        # where the caller evaluates without gradients; the result is then detached.
        grad_enabled = torch.is_grad_enabled()
        with torch.enable_grad(), self._attention_context():
            losses = functional_call(self._call, named, (X,))
        if isinstance(losses, torch.Tensor) and not grad_enabled:
            losses = losses.detach()
        if not isinstance(losses, torch.Tensor) or losses.ndim != 1:
            shape = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses)
            raise ArgumentValueError(
                "fn(model, batch) must return the per-sample (or per-token) losses as a 1-D "
                f"tensor, got {shape}; return e.g. losses.reshape(-1)[mask.reshape(-1)]")
        return losses

    def iter_per_sample_gradients(self, theta: torch.Tensor | None = None,
                                  ) -> Iterator[torch.Tensor]:
        """Per-sample gradients batch by batch, as the Jacobian of the batch's losses."""
        theta = self.resolve_theta(theta).detach()
        for batch, _ in self.chunks():
            yield jacrev(lambda t, b=batch: self.chunk_losses(t, b))(theta)

    forward = _refuse("the model outputs f(X; θ)")
    sample_loss = _refuse("a per-sample loss")
    sample_output = _refuse("a per-sample output")
    accuracy = _refuse("accuracy")
    batch = _refuse("a mini-batch by index")
    batch_loss_and_gradient = _refuse("a mini-batch by index")

    def __repr__(self) -> str:
        return (f"Objective.from_function(n={self.n}, dim={self.dim}, batches={self.num_chunks}, "
                f"dtype={self.dtype}, device={self.device})")
