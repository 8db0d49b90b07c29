"""The Hessian of the empirical risk."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch
from torch.func import grad, jvp, vmap

from valleys.errors import ArgumentValueError
from valleys.objective import Objective
from valleys.operators._backend_choice import (
    BackendChoice,
    choice_key,
    lookup_choice,
    relative_difference,
    store_choice,
    synchronize,
    time_round_robin,
)
from valleys.operators._curvature import CurvatureOperator, vjp_rows
from valleys.operators._registry import register_curvature

__all__ = ["HessianOperator", "hessian"]

BACKENDS = ("double-backward", "forward-over-reverse")
# "auto" takes forward-over-reverse only when it is clearly faster: below this fraction of double
# backward's time. Near ties go to double backward, which needs no forward-mode rules and whose
# choice then does not flip with timing noise from one machine state to the next.
FORWARD_MARGIN = 0.9
# Timed rounds of the calibration, after one warm-up of each call.
CALIBRATION_REPEATS = 3


class HessianOperator(CurvatureOperator):
    r"""Hessian of the empirical risk,

    .. math::  H = ∇^2 L(θ) = \frac1n \sum_{i=1}^n ∇^2_θ\, ℓ\big(f(x_i; θ), y_i\big).

    Products ``Hv`` come from one of two automatic-differentiation schemes:

    * ``"double-backward"`` (reverse over reverse, Pearlmutter 1994): ``Hv = ∇_θ⟨∇L(θ), v⟩``.
      With cached chunks the first-order graph ``∇L(θ)`` is built once, so each product is a
      single extra backward pass (about 1.2–2.4 gradients on small MLPs).
    * ``"forward-over-reverse"``: ``Hv = d/dε ∇L(θ + εv)|₀`` with :func:`torch.func.jvp` of
      :func:`torch.func.grad`. Never caches; needs forward-mode rules for every op.

    ``backend="auto"`` (the default) chooses by measurement: it times one product of each
    scheme and one gradient on the first chunk of data (one warm-up each, then the median of
    :data:`CALIBRATION_REPEATS` interleaved rounds; double backward through a reused graph when
    the operator caches its chunks) and keeps forward-over-reverse only when it takes less than
    :data:`FORWARD_MARGIN` of double backward's time. Forward-over-reverse is also dropped when
    it raises (an op without a forward-mode rule) or when its product differs from double
    backward's by more than ``sqrt(eps)`` of the dtype. The measurement costs about 4
    gradients and 8 products on the first chunk, and holds double backward's graph and a
    forward-over-reverse product at once; it is made once per key: the choice is remembered
    per architecture, loss, chunk shapes, dtype, device (type and hardware), CPU thread count
    and torch version, in the process and on disk (``$VALLEYS_CACHE_DIR/hvp_backend``, see
    :mod:`valleys.operators._backend_choice`), so later operators skip the measurement and the
    same machine makes the same choice in later runs. A distributed objective is not timed (its
    ranks could disagree): it uses double backward. ``auto`` may thus pick either scheme on
    different machines; both compute the same Hessian and agree to rounding, and an explicit
    ``backend=`` always wins (pass one for bitwise-identical products across machines).

    The record of the choice is :attr:`backend_choice`: the chosen scheme, why, the measured
    seconds per product of each scheme and per gradient, and their ratio. The calibration's
    products are reported there (``backend_choice.products``) and are *not* counted in
    :attr:`num_matvecs`, which counts only the vectors the operator is applied to by callers.

    Args:
        objective: the empirical risk.
        theta: flat parameters (default: the model's current ones, copied now).
        backend: ``"auto"``, ``"double-backward"`` or ``"forward-over-reverse"``.
        cache: keep each chunk's first-order graph between products (double backward only;
            default: when the data is one chunk).

    Attributes:
        backend: the scheme in use, ``"double-backward"`` or ``"forward-over-reverse"``.
        backend_choice: the :class:`~valleys.operators.BackendChoice` record.
    """

    backend_choice: BackendChoice

    def __init__(
        self,
        objective: Objective,
        theta: torch.Tensor | None = None,
        *,
        backend: str = "auto",
        cache: bool | None = None,
    ) -> None:
        if not isinstance(backend, str) or backend not in ("auto", *BACKENDS):
            raise ArgumentValueError(
                f"unknown Hessian backend {backend!r}; choose one of {('auto', *BACKENDS)}")
        super().__init__(objective, theta,
                         cache=False if backend == "forward-over-reverse" else cache)
        if backend == "auto":
            self.backend_choice = self._choose_backend()
        else:
            self.backend_choice = BackendChoice(backend, "explicit", "backend= was given")
        self.backend = self.backend_choice.backend
        if self.backend == "forward-over-reverse":
            self.cache, self._cached = False, None

    # -- products ------------------------------------------------------------------------------
    def _prepare(self, X: torch.Tensor, Y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.backend == "forward-over-reverse":
            return X, Y
        return _first_order_graph(self.objective, self._leaf(), X, Y)

    def _apply(self, state: tuple[torch.Tensor, torch.Tensor], V: torch.Tensor) -> torch.Tensor:
        if self.backend == "forward-over-reverse":
            X, Y = state
            return _forward_over_reverse(self.objective, self.theta, X, Y, V)
        leaf, g = state
        return vjp_rows(g, leaf, V)

    # -- backend="auto" ------------------------------------------------------------------------
    def _choose_backend(self) -> BackendChoice:
        """Reuse the choice stored for this key, or measure one (see the class docstring)."""
        if self.objective.distributed:
            return BackendChoice(
                "double-backward", "fixed",
                "a distributed objective is not timed: ranks timing separately could choose "
                "differently, so every rank uses double backward")
        X, Y = self._first_chunk()
        key, signature = choice_key(self.objective, X, Y, graph_reused=self.cache)
        found = lookup_choice(key)
        if found is not None:
            return found
        # The calibration draws no random numbers of its own (its vector comes from a private
        # generator), but a model in train mode would: the global streams are restored after.
        device = self.device
        with torch.random.fork_rng(devices=[] if device.type == "cpu" else None,
                                   device_type=None if device.type == "cpu" else device.type):
            choice = self._calibrate(X, Y, key, signature)
        if choice.source != "measured":
            return choice
        problem = store_choice(choice)
        if problem is not None:
            choice = dataclasses.replace(
                choice, reason=f"{choice.reason}; not saved to disk ({problem}), so a later "
                "run measures again")
        # The graph built for the timing is dropped, not kept as the operator's cache: products
        # build theirs at the first product, as with an explicit backend, so they see the
        # model as it is then.
        return choice

    def _first_chunk(self) -> tuple[Any, Any]:
        """The first ``(X, Y)`` of a pass, stopping the pass there (an unfinished pass is not
        checked against the first one, and reads nothing more)."""
        chunks = self.objective.chunks()
        try:
            return next(iter(chunks))
        finally:
            close = getattr(chunks, "close", None)
            if callable(close):
                close()

    def _calibrate(
        self, X: Any, Y: Any, key: str, signature: dict[str, Any]
    ) -> BackendChoice:
        """Time both schemes and one gradient on the chunk ``(X, Y)``; return the choice."""
        objective, device = self.objective, self.device
        unit = torch.randn(self.size, generator=torch.Generator().manual_seed(0),
                           dtype=torch.float64)
        V = (unit / torch.linalg.vector_norm(unit)).to(device=device, dtype=self.dtype)[None]
        leaf = self._leaf()

        def gradient() -> torch.Tensor:
            return torch.autograd.grad(objective.chunk_risk(leaf, X, Y), leaf)[0]

        kept: list[tuple[torch.Tensor, torch.Tensor]] = []  # the reused graph, if any

        def double_backward() -> torch.Tensor:
            leaf_g = kept[0] if kept else _first_order_graph(objective, self._leaf(), X, Y)
            return vjp_rows(leaf_g[1], leaf_g[0], V)

        def forward_over_reverse() -> torch.Tensor:
            return _forward_over_reverse(objective, self.theta, X, Y, V)

        seconds_per_graph: float | None = None
        try:
            gradient()  # warm-up: the first pass pays for allocations and kernel selection
            if self.cache:
                synchronize(device)
                start = time.perf_counter()
                kept.append(_first_order_graph(objective, self._leaf(), X, Y))
                synchronize(device)
                seconds_per_graph = time.perf_counter() - start
            reference = double_backward()
        except Exception:
            # What fails here fails in every product too: let the first product raise it,
            # where it did before "auto" measured anything (nothing is stored).
            return BackendChoice("double-backward", "fixed",
                                 "the gradient or double backward raised during the "
                                 "calibration, so nothing was measured")
        if not bool(torch.isfinite(reference).all()):
            return BackendChoice("double-backward", "fixed",
                                 "the Hessian-vector product is not finite at this θ, so "
                                 "nothing was measured (or stored)")
        failure, agreement = None, None
        try:
            trial = forward_over_reverse()
        except Exception as error:  # any op without a forward-mode or batching rule
            failure = f"it raised {type(error).__name__}: {str(error).strip()[:300]}"
        else:
            agreement = relative_difference(trial, reference)
            tolerance = torch.finfo(self.dtype).eps ** 0.5
            if not agreement <= tolerance:
                failure = (f"its product differs from double backward's by {agreement:.1e} "
                           f"(relative), beyond rounding ({tolerance:.1e})")
        calls = {"gradient": gradient, "double-backward": double_backward}
        if failure is None:
            calls["forward-over-reverse"] = forward_over_reverse
        times = time_round_robin(calls, device, repeats=CALIBRATION_REPEATS)
        double, forward = times["double-backward"], times.get("forward-over-reverse")
        if forward is None:
            backend = "double-backward"
            reason = f"forward-over-reverse is not usable here: {failure}"
        elif forward < FORWARD_MARGIN * double:
            backend = "forward-over-reverse"
            reason = (f"measured faster: forward-over-reverse took {forward / double:.2f}× "
                      "the time of double backward")
        else:
            backend = "double-backward"
            reason = (f"measured: forward-over-reverse took {forward / double:.2f}× the time "
                      f"of double backward (it is chosen below {FORWARD_MARGIN:g}×)")
        choice = BackendChoice(
            backend=backend, source="measured", reason=reason,
            seconds_per_hvp={"double-backward": double, "forward-over-reverse": forward},
            seconds_per_gradient=times["gradient"], seconds_per_graph=seconds_per_graph,
            hvp_over_gradient=times[backend] / times["gradient"] if times["gradient"] > 0
            else None,
            graph_reused=self.cache, agreement=agreement, failure=failure,
            products=2 + CALIBRATION_REPEATS * (len(calls) - 1),
            gradients=1 + CALIBRATION_REPEATS, key=key, signature=signature,
        )
        return choice


def _first_order_graph(
    objective: Objective, leaf: torch.Tensor, X: Any, Y: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(θ, ∇L_chunk(θ))`` with the gradient's graph kept, for products ``∇_θ⟨∇L, v⟩``."""
    g = torch.autograd.grad(objective.chunk_risk(leaf, X, Y), leaf, create_graph=True)[0]
    return leaf, g


def _forward_over_reverse(
    objective: Objective, theta: torch.Tensor, X: Any, Y: Any, V: torch.Tensor
) -> torch.Tensor:
    """Rows ``H_chunk v`` for the rows ``v`` of ``V``: the directional derivative of the chunk's
    gradient, ``jvp(grad(L_chunk), θ, v)``, batched over ``V`` by ``vmap``."""
    gradient = grad(lambda t: objective.chunk_risk(t, X, Y))
    return vmap(lambda v: jvp(gradient, (theta,), (v,))[1])(V)


@register_curvature(HessianOperator)
def hessian(
    objective: Objective,
    theta: torch.Tensor | None = None,
    *,
    backend: str = "auto",
    cache: bool | None = None,
) -> HessianOperator:
    """The Hessian ``∇²L(θ)`` of an objective as an operator (see :class:`HessianOperator`)."""
    return HessianOperator(objective, theta, backend=backend, cache=cache)
