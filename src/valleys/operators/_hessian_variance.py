"""The variance of per-sample Hessians, whose top eigenvalue defines SGD's non-uniformity."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import torch
from torch import nn
from torch.func import grad, jvp, vmap

from valleys._checks import is_integral
from valleys._layer_factors import (
    Layers,
    Unsupported,
    check_factored_gradient,
    check_recorded,
    record,
    try_factored,
)
from valleys.errors import ArgumentValueError
from valleys.objective import Objective
from valleys.operators._algorithm_check import (
    CHECK_SAMPLES,
    first_agreeing,
    first_samples,
    hessian_vector_product,
    probe_vectors,
    sample_gradient_graph,
    warn_rejected,
)
from valleys.operators._base import LinearOperator
from valleys.operators._hessian import HessianOperator
from valleys.operators._registry import register_curvature

__all__ = ["HessianVarianceOperator", "hessian_variance"]

METHODS = ("auto", "linear-layers", "vmap")
# Per-sample Hessian-vector products of the vmap method, in the order they are tried; the last
# is the reference itself (plain double backward, one sample at a time, never under vmap).
SAMPLE_PRODUCTS = ("reverse-over-forward", "reverse-over-reverse", "double-backward")

# Per-sample products materialize a (samples × p) block; keep it near this many elements.
_BLOCK_ELEMENTS = 2**24
# Above this many (chunk samples × parameters) the linear-layers path applies vectors one by one.
_BATCH_WORK = 2**20


class HessianVarianceOperator(LinearOperator):
    r"""Variance of the per-sample Hessians (Wu, Ma & E, NeurIPS 2018),

    .. math::  Σ = \frac1n \sum_{i=1}^n H_i^2 − H^2 = \frac1n \sum_{i=1}^n (H_i − H)^2,
               \qquad H_i = ∇^2_θ ℓ_i(θ), \quad H = \frac1n \sum_i H_i .

    ``Σ`` is positive semi-definite; ``sqrt(λ_max(Σ))`` is the *non-uniformity* of a minimum.
    A product is ``Σv = (1/n) Σ_i H_i u_i − H(Hv)`` with ``u_i = H_i v`` and
    ``Hv = (1/n) Σ_i u_i``. Two exact algorithms compute it.

    ``"linear-layers"``, for models whose ``θ`` is made of whole ``nn.Linear`` layers. For a
    layer ``z_i = W a_i + b`` the per-sample gradient is ``(δ_i a_iᵀ, δ_i)`` with
    ``δ_i = ∂ℓ_i/∂z_i``, so every per-sample gradient is a function of the map
    ``F: θ ↦ (a(θ), δ(θ))`` of all layers' inputs and output gradients, batched over the samples
    (``n × width`` tensors, never ``n × p``). Differentiating along ``v``,

    .. math::  u_i = H_i v = \big(\dot δ_i a_iᵀ + δ_i \dot a_iᵀ,\; \dot δ_i\big),
               \qquad (\dot a, \dot δ) = J_F\, v ,

    and, since ``Σ_i H_i u_i = ∇_θ Σ_i ⟨∇ℓ_i(θ), u_i⟩`` with ``u_i`` held fixed and
    ``⟨∇ℓ_i, u_i⟩ = Σ_layers δ_i·(U_i a_i + u^b_i)`` depends on θ only through ``(a, δ)``,

    .. math::  \sum_i H_i u_i = J_Fᵀ c, \qquad
               c_{δ_i} = \dot δ_i (a_i·a_i) + δ_i (\dot a_i·a_i) + \dot δ_i, \quad
               c_{a_i} = (δ_i·\dot δ_i)\, a_i + (δ_i·δ_i)\, \dot a_i

    (the last term of ``c_δ`` only for layers with a bias). ``H(Hv) = (1/n) J_Fᵀ c'`` likewise,
    with ``c'_{δ_i} = W' a_i + b'`` and ``c'_{a_i} = W'ᵀ δ_i`` for ``(W', b')`` the layer's block
    of ``Hv``. ``δ`` is the gradient of ``Σ_i ℓ_i`` with respect to zero shifts that forward hooks
    add to the layers' outputs, and the inputs ``a`` are recorded by the same hooks; since ``a``
    and ``δ`` stay differentiable functions of ``θ``, activations' second derivatives and
    residual paths are all accounted for by autograd. Both Jacobian products are reverse passes:
    ``J_Fᵀ c`` directly, and ``J_F v = ∂_w ⟨J_Fᵀ w, v⟩`` through the graph of ``w ↦ J_Fᵀ w``
    (linear in ``w``, built once). With the data in one chunk both graphs are cached, so a
    product is two reverse passes plus a few ``O(n × widths)`` operations (``H(Hv)`` is folded
    into the second pass); with several chunks the graphs are rebuilt per chunk and ``H(Hv)``
    comes from :class:`~valleys.operators.HessianOperator`. Memory is a few times that of
    a gradient's graph on one chunk. This is the per-sample structure of linear layers that
    BackPACK (Dangel, Kunstner & Hennig 2020) and "ghost" per-sample-gradient methods exploit.

    It applies when every parameter of ``θ`` belongs to an ``nn.Linear``, every such layer has
    all its parameters in ``θ``, no parameter is shared, each of those layers is called exactly
    once per forward pass on a 2-D ``(batch, features)`` input, and the parameters enter the loss
    only through those calls. Parameter-free code in between (activations, reshapes, residual
    additions, custom ``forward`` code) is fine; samples must be processed independently, as for
    every per-sample quantity in valleys. The conditions are checked when the operator is built
    (on two samples, including a comparison of ``Σ_i (δ_i a_iᵀ, δ_i)`` with autograd's gradient)
    and the call counts again whenever a graph is built; the hooks are attached only while graphs
    are built and never change the model otherwise.

    ``"vmap"``, any model: ``u_i`` for all samples of a block, then ``Σ_i H_i u_i``, and
    ``H(Hv)`` from the Hessian operator. It materializes a ``(block × p)`` tensor and is
    memory-bound. The per-sample products (attribute ``sample_products``) are, in this order:

    * ``"reverse-over-forward"`` (fastest): ``u_i = ∇_θ ∂_v ℓ_i`` (``grad`` of ``jvp``) under
      ``vmap`` over samples, and ``Σ_i H_i u_i = ∇_θ Σ_i ∂_{u_i} ℓ_i`` by one reverse pass
      through a ``vmap`` of directional derivatives;
    * ``"reverse-over-reverse"``: ``H_i w = ∇_θ ⟨∇ℓ_i, w⟩`` (``grad`` of ``grad``) under ``vmap``
      over samples, for ``w = v`` and for ``w = u_i``; no forward-mode rule and no transform
      over a ``vmap`` is involved;
    * ``"double-backward"``: the same products by plain autograd, one sample at a time.

    Composed ``torch.func`` transforms can be wrong where plain autograd is right: on torch 2.13
    ``nn.LayerNorm``'s forward-mode rule and functorch's batching rule of its backward use the
    saved mean and ``1/std`` as constants, so any derivative of a ``jvp`` through it (the first
    algorithm) misses terms (``Σ`` was 16–24% off on a Linear–LayerNorm–Linear model). So the
    first vector product checks each vectorized algorithm once, on the first
    ``CHECK_SAMPLES`` samples and a fixed random vector, against double backward (relative
    mismatch at most ``sqrt(eps)``) and takes the first that agrees; one that raises (say on
    ``.item()`` under ``vmap``) counts as disagreeing. When the fastest is rejected it warns
    once per operator, naming the cause. On an MLP 64-256-256-10 and a Linear–LayerNorm–Linear
    64-128-10 model (n = 512, CPU, one thread) the check took 15–20 ms, and
    ``"reverse-over-reverse"`` products were 2.5–3.5 times slower than reverse-over-forward ones
    and ``"double-backward"`` products 3–10 times.

    On an MLP 64-256-256-10 (ReLU, squared loss, n = 1797, float32, 2 CPU threads) one product
    took about 23 ms with ``"linear-layers"`` (one chunk; 55 ms in four chunks), 0.9 s with
    ``"vmap"`` and 1.3–1.5 s with a loop over samples as in the original code
    (``leiwu0/sgd.stability``); the first product, which builds the graphs, costs about twice a
    later one.

    Args:
        objective: the empirical risk.
        theta: parameters (default: the model's current ones).
        method: ``"auto"`` (``"linear-layers"`` where applicable, else ``"vmap"``),
            ``"linear-layers"`` (raises ``ValueError`` on a model it does not support) or
            ``"vmap"``.
        sample_block: samples per vectorized block of the vmap path (default: about 16M
            entries per block).

    Attributes:
        method: the algorithm in use, ``"linear-layers"`` or ``"vmap"``. With ``"auto"`` it
            turns to ``"vmap"`` if a product finds the model unsupported.
        fallback_reason: why ``"auto"`` chose ``"vmap"`` (``None`` otherwise).
        sample_products: per-sample algorithm of the vmap method, one of ``SAMPLE_PRODUCTS``
            (``None`` until the first vmap product chooses it).
        sample_products_reason: why faster algorithms were rejected (``None`` if none was).
    """

    def __init__(
        self,
        objective: Objective,
        theta: torch.Tensor | None = None,
        *,
        method: str = "auto",
        sample_block: int | None = None,
    ) -> None:
        if method not in METHODS:
            raise ArgumentValueError(
                f"unknown Hessian-variance method {method!r}; choose one of {METHODS}")
        if sample_block is not None and (
            not is_integral(sample_block) or isinstance(sample_block, bool)
            or sample_block <= 0
        ):
            raise ArgumentValueError(
                f"sample_block must be a positive integer, got {sample_block!r}")
        sample_block = None if sample_block is None else int(sample_block)
        self.hessian = HessianOperator(objective, theta)
        super().__init__(objective.dim, objective.dtype, objective.device, symmetric=True)
        self.objective = objective
        self.theta = self.hessian.theta
        self.sample_block = sample_block or max(1, _BLOCK_ELEMENTS // objective.dim)
        self.requested_method = method
        self.fallback_reason: str | None = None
        self._layers: Layers | None = None
        self._verified = False  # the gradient check passed on a whole chunk
        self._cache: list[_Graph] | None = None
        self.method = "vmap"
        if method != "vmap":
            layers, reason = try_factored(
                objective, lambda found: _probe(objective, self.theta, found))
            if objective.distributed and not objective.all_ranks(reason is None):
                # Every rank must take the same path: their collectives differ.
                reason = reason or "the structure check failed on another rank"
            if reason is None:
                self._layers = layers
                self.method = "linear-layers"
            elif method == "linear-layers":
                raise ArgumentValueError(
                    f"method='linear-layers' does not apply to this model: {reason}")
            else:
                self.fallback_reason = reason

        self.sample_products: str | None = None
        self.sample_products_reason: str | None = None
        self._vectorized = _vectorized_products(objective, self.theta)

    def _factored_layers(self) -> Layers:
        """The layers of the linear-layers method (set whenever it is the method)."""
        if self._layers is None:
            raise RuntimeError("the linear-layers method has no layers (it was given up)")
        return self._layers

    # -- products -----------------------------------------------------------------------------
    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self._product(v.unsqueeze(0))[0]

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self._product(V.T.contiguous()).T

    def _product(self, V: torch.Tensor) -> torch.Tensor:
        """``Σ`` applied to the rows of ``V`` (shape ``(k, p)``); works under ``no_grad`` too."""
        with torch.enable_grad():
            if self.method == "linear-layers":
                try:
                    step = _rows_per_block(self._factored_layers(), self.objective)
                    return torch.cat(
                        [
                            self._linear_layers_product(V[j : j + step])
                            for j in range(0, V.shape[0], step)
                        ]
                    )
                except Unsupported as error:
                    if self.requested_method == "linear-layers":
                        raise ArgumentValueError(
                            f"method='linear-layers' does not apply to this model: {error}"
                        ) from None
                    self.method, self.fallback_reason = "vmap", str(error)
                    self._layers = self._cache = None
            return torch.stack([self._vmap_product(v) for v in V])

    def _vmap_product(self, v: torch.Tensor) -> torch.Tensor:
        products = self.sample_products
        if products is None:
            products = self._choose_sample_products()
        second_moment = torch.zeros_like(v)
        hv = torch.zeros_like(v)
        if products == "double-backward":
            for X, Y in self.objective.chunks():
                U, S = _double_backward_products(self.objective, self.theta, X, Y, v)
                hv += U.sum(0)
                second_moment += S
        else:
            sample_hvps, sum_of_products = self._vectorized[products]
            for X, Y in self._blocks():
                U = sample_hvps(v, X, Y)
                hv += U.sum(0)
                second_moment += sum_of_products(X, Y, U)
        n = self.objective.n
        second_moment, hv = self.objective.reduce(
            torch.stack([second_moment, hv]), inputs=(v, self.theta)
        )
        return second_moment / n - self.hessian.matvec(hv / n)

    def _choose_sample_products(self) -> str:
        """Pick the first vectorized algorithm that agrees with double backward on a few samples
        (returned, and kept in ``sample_products``).

        The reference ``(u_i, Σ_i H_i u_i)`` for a fixed random ``v`` comes from
        :func:`_double_backward_products`; every rank takes the same algorithm (their
        collectives must match), so a rejection on one rank rejects it everywhere.
        """
        X, Y = first_samples(self.objective, CHECK_SAMPLES)
        v = probe_vectors(self.objective, 1)[0]
        reference = _double_backward_products(self.objective, self.theta, X, Y, v)

        def candidate(name: str) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
            sample_hvps, sum_of_products = self._vectorized[name]
            return lambda: (sample_hvps(v, X, Y), sum_of_products(X, Y, reference[0]))

        names = SAMPLE_PRODUCTS[:-1]
        samples = 0 if X is None else X.shape[0]
        chosen, rejected = first_agreeing(
            self.objective, [(name, candidate(name)) for name in names], reference, samples
        )
        self.sample_products = products = chosen or SAMPLE_PRODUCTS[-1]
        if rejected:
            self.sample_products_reason = warn_rejected(
                "hessian_variance: per-sample Hessian-vector products", rejected,
                self.sample_products, self.objective.model,
            )
        return products

    def _blocks(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for X, Y in self.objective.chunks():
            for start in range(0, X.shape[0], self.sample_block):
                stop = start + self.sample_block
                yield X[start:stop], Y[start:stop]

    def _graph(self, X: torch.Tensor, Y: torch.Tensor) -> _Graph:
        graph = _Graph(self._factored_layers(), self.objective, self.theta, X, Y,
                       verify=not self._verified)
        self._verified = True
        return graph

    def _linear_layers_product(self, V: torch.Tensor) -> torch.Tensor:
        """``Σ`` on the rows of ``V`` from the layers' map ``F(θ) = (a(θ), δ(θ))``."""
        layers, n = self._factored_layers(), self.objective.n
        if max(self.objective.shard_chunks) == 1:  # on every rank, so all take this path
            # One chunk: keep the graphs, and fold H(Hv) = (1/n) J_Fᵀ c_{Hv} into the reverse
            # pass that gives Σ_i H_i u_i.
            if self._cache is None:
                self._cache = [self._graph(X, Y) for X, Y in self.objective.chunks()]
            graph = self._cache[0]
            dacts, ddeltas = graph.tangents(V)
            sums = _sum_over_samples(layers, graph.acts, graph.deltas, dacts, ddeltas, V.shape[0])
            if self.objective.distributed:
                # Summed over ranks in one all-reduce, in θ's layout.
                flat = self.objective.reduce(layers.flatten(sums), inputs=(V, self.theta))
                sums = [(v["weight"], v["bias"]) if "bias" in v else (v["weight"],)
                        for v in layers.views(flat)]
            w = [tuple(t / n for t in pieces) for pieces in sums]
            cotangents = _cotangents(layers, graph.acts, graph.deltas, dacts, ddeltas, w)
            return self.objective.reduce(graph.reverse(cotangents, V, retain_graph=True)) / n
        second_moment = torch.zeros_like(V)
        hv = torch.zeros_like(V)
        for X, Y in self.objective.chunks():
            graph = self._graph(X, Y)
            dacts, ddeltas = graph.tangents(V)
            sums = _sum_over_samples(layers, graph.acts, graph.deltas, dacts, ddeltas, V.shape[0])
            hv += layers.flatten(sums)
            cotangents = _cotangents(layers, graph.acts, graph.deltas, dacts, ddeltas)
            second_moment += graph.reverse(cotangents, V, retain_graph=False)
            del graph
        second_moment, hv = self.objective.reduce(
            torch.cat([second_moment, hv]), inputs=(V, self.theta)
        ).split(V.shape[0])
        return second_moment / n - self.hessian.matmat((hv / n).T.contiguous()).T


# -- vectorized per-sample products and their check against double backward -------------------
def _vectorized_products(
    objective: Objective, theta: torch.Tensor
) -> dict[str, tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]]:
    """Per vectorized algorithm: ``(v, X, Y) ↦ (H_i v)_i`` and ``(X, Y, U) ↦ Σ_i H_i u_i``."""
    loss = objective.sample_loss

    def rof_hvp(v: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # Reverse over forward: ~4x faster here than jvp(grad) under vmap.
        return grad(lambda t: jvp(lambda s: loss(s, x, y), (t,), (v,))[1])(theta)

    def directional(t: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                    u: torch.Tensor) -> torch.Tensor:
        return jvp(lambda s: loss(s, x, y), (t,), (u,))[1]

    rof_sum = grad(
        lambda t, X, Y, U: vmap(directional, in_dims=(None, 0, 0, 0))(t, X, Y, U).sum()
    )

    def ror_hvp(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return grad(lambda t: (grad(loss)(t, x, y) * w).sum())(theta)

    return {
        "reverse-over-forward": (
            vmap(rof_hvp, in_dims=(None, 0, 0)),
            lambda X, Y, U: rof_sum(theta, X, Y, U),
        ),
        "reverse-over-reverse": (
            vmap(ror_hvp, in_dims=(None, 0, 0)),
            lambda X, Y, U: vmap(ror_hvp)(U, X, Y).sum(0),
        ),
    }


def _double_backward_products(
    objective: Objective, theta: torch.Tensor, X: torch.Tensor | None, Y: torch.Tensor | None,
    v: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U, Σ_i H_i u_i)`` with rows ``u_i = H_i v``, one sample at a time (the reference)."""
    rows = []
    total = torch.zeros_like(v)
    for x, y in zip(X, Y, strict=True) if X is not None and Y is not None else ():
        leaf, g = sample_gradient_graph(objective, theta, x, y)
        u = hessian_vector_product(leaf, g, v)
        total += hessian_vector_product(leaf, g, u, retain_graph=False)
        rows.append(u)
    return (torch.stack(rows) if rows else v.new_zeros(0, v.numel())), total


# -- the linear-layers algorithm ----------------------------------------------------------------
def _probe(objective: Objective, theta: torch.Tensor, layers: Layers) -> Layers:
    """``layers`` once the loss of two samples showed no violated condition (else raises)."""
    X, Y = next(iter(objective.chunks()))
    check_factored_gradient(objective, theta, layers, X,
                            lambda out: objective.loss_fn(out, Y[: out.shape[0]]).sum(), 2)
    return layers


def _grad(outputs: Any, inputs: torch.Tensor | Sequence[torch.Tensor], cotangents: Any, k: int, *,
          retain_graph: bool) -> tuple[torch.Tensor, ...]:
    """Vector-Jacobian products for cotangents with a leading dimension ``k`` (kept)."""
    inputs = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
    out = torch.autograd.grad(
        outputs,
        inputs,
        [c[0] for c in cotangents] if k == 1 else cotangents,
        retain_graph=retain_graph,
        allow_unused=True,
        is_grads_batched=k > 1,
    )
    return tuple(
        x.new_zeros(k, *x.shape) if t is None else t.unsqueeze(0) if k == 1 else t
        for t, x in zip(out, inputs, strict=True)
    )


# Per layer, (weight, [bias]) blocks with a leading k.
Blocks = list[tuple[torch.Tensor, ...]]
# Cotangents on F's outputs, by ("a" or "d", layer index).
Cotangents = dict[tuple[str, int], torch.Tensor]


class _Graph:
    """The autograd graph of ``F(θ) = (a(θ), δ(θ))`` on one chunk, and of ``w ↦ J_Fᵀ w``.

    ``F``'s outputs that depend on θ are kept in ``outputs``; ``g = J_Fᵀ w`` is built once with
    dummy cotangents ``w`` (it is linear in them), so ``J_F v = ∂_w ⟨g(w), v⟩`` costs one reverse
    pass per product (the "double-vjp" trick) and needs no forward-mode derivatives.
    """

    def __init__(self, layers: Layers, objective: Objective, theta: torch.Tensor, X: torch.Tensor,
                 Y: torch.Tensor, *, verify: bool) -> None:
        self.leaf = theta.detach().requires_grad_(True)
        # F's outputs: the layers' inputs a and the gradients δ of Σ_i ℓ_i with respect to
        # zero shifts of their outputs (δ_i = ∂ℓ_i/∂z_i: samples are processed independently).
        total, acts, shifts = record(
            layers, lambda: objective.chunk_losses(self.leaf, X, Y).sum(), X.shape[0])
        if verify:  # once per operator, on a whole chunk
            check_recorded(layers, total, self.leaf, acts, shifts, retain_graph=True)
        self.acts = tuple(acts)
        self.deltas = torch.autograd.grad(
            total, shifts, create_graph=True, allow_unused=True, materialize_grads=True
        )
        self.slots = [("a", i, t) for i, t in enumerate(self.acts) if t.requires_grad]
        self.slots += [("d", i, t) for i, t in enumerate(self.deltas) if t.requires_grad]
        self.outputs = [t for _, _, t in self.slots]
        self.dummies = [torch.zeros_like(t, requires_grad=True) for t in self.outputs]
        self.g = None
        if self.outputs:
            self.g = torch.autograd.grad(
                self.outputs,
                self.leaf,
                self.dummies,
                create_graph=True,
                allow_unused=True,
                materialize_grads=True,
            )[0]

    def tangents(self, V: torch.Tensor) -> tuple[list[Any], list[Any]]:
        """``(ȧ, δ̇) = J_F v`` for the rows of ``V`` (``None`` where ``F`` is constant)."""
        dacts: list[Any] = [None] * len(self.acts)
        ddeltas: list[Any] = [None] * len(self.deltas)
        if self.g is None or not self.g.requires_grad:
            return dacts, ddeltas
        k = V.shape[0]
        out = _grad(self.g, self.dummies, [V], k, retain_graph=True)
        for (kind, index, _), t in zip(self.slots, out, strict=True):
            (dacts if kind == "a" else ddeltas)[index] = t
        return dacts, ddeltas

    def reverse(self, cotangents: Cotangents, V: torch.Tensor, *,
                retain_graph: bool) -> torch.Tensor:
        """``J_Fᵀ c`` for cotangents ``{(kind, layer): c}`` with a leading ``k``."""
        pairs = [
            (t, cotangents[kind, index])
            for kind, index, t in self.slots
            if (kind, index) in cotangents
        ]
        if not pairs:
            return torch.zeros_like(V)
        outputs, cots = zip(*pairs, strict=True)
        return _grad(list(outputs), self.leaf, list(cots), V.shape[0], retain_graph=retain_graph)[0]


def _rows_per_block(layers: Layers, objective: Objective) -> int:
    """Vectors per batched product (``is_grads_batched``), bounded by memory.

    Batching only pays where per-product overheads dominate: with ``chunk × p`` above
    ``_BATCH_WORK`` the products are compute-bound, and batched reverse passes measured
    10–25% slower than one vector at a time on CPU.
    """
    chunk = objective.chunk_size or objective.n
    if chunk * objective.dim >= _BATCH_WORK:
        return 1
    # try_factored finds nn.Linear layers only.
    widths = sum(m.in_features + m.out_features for m in cast(Sequence[nn.Linear], layers))
    return max(1, _BLOCK_ELEMENTS // (widths * chunk))


def _sum_over_samples(layers: Layers, acts: Sequence[torch.Tensor], deltas: Sequence[torch.Tensor],
                      dacts: list[Any], ddeltas: list[Any], k: int) -> Blocks:
    """``Σ_i u_i`` per layer: ``(Σ_i δ̇_i a_iᵀ + δ_i ȧ_iᵀ, [Σ_i δ̇_i])``, leading ``k``."""
    sums: Blocks = []
    for a, d, da, dd, bias in zip(acts, deltas, dacts, ddeltas, layers.has_bias, strict=True):
        a0, d0 = a.detach(), d.detach()
        weight = a0.new_zeros(k, d0.shape[1], a0.shape[1])
        if dd is not None:
            weight = weight + dd.transpose(1, 2) @ a0
        if da is not None:
            weight = weight + d0.T @ da
        if not bias:
            sums.append((weight,))
        else:
            sums.append((weight, d0.new_zeros(k, d0.shape[1]) if dd is None else dd.sum(1)))
    return sums


def _cotangents(layers: Layers, acts: Sequence[torch.Tensor], deltas: Sequence[torch.Tensor],
                dacts: list[Any], ddeltas: list[Any], w: Blocks | None = None) -> Cotangents:
    """Cotangents ``c`` on ``F``'s outputs with ``J_Fᵀ c = Σ_i H_i u_i − n H w``.

    ``Σ_i ⟨∇ℓ_i(θ), u_i⟩ = Σ_layers Σ_i δ_i·(U_i a_i + u^b_i)`` with ``u_i`` held fixed; its
    derivatives in ``δ_i`` and ``a_i`` are ``c``. Likewise ``Σ_i ⟨∇ℓ_i(θ), w⟩``, whose
    gradient is ``n H w``, has derivatives ``(W_w a_i + b_w, W_wᵀ δ_i)``; they are
    subtracted when ``w`` (per layer ``(W_w, [b_w])`` with a leading ``k``) is given.
    Keys are ``("d", layer)`` and ``("a", layer)``.
    """
    out: Cotangents = {}
    for index, (a, d, da, dd) in enumerate(zip(acts, deltas, dacts, ddeltas, strict=True)):
        bias = layers.has_bias[index]
        a0, d0 = a.detach(), d.detach()
        if d.requires_grad:
            c: torch.Tensor | int = 0  # stays 0 (no cotangent) when nothing depends on θ
            if dd is not None:
                aa = (a0 * a0).sum(1, keepdim=True)
                c = dd * (aa + 1 if bias else aa)
            if da is not None:
                c = c + d0 * (da * a0).sum(2, keepdim=True)
            if w is not None:
                c = c - a0 @ w[index][0].transpose(1, 2)
                if bias:
                    c = c - w[index][1].unsqueeze(1)
            if isinstance(c, torch.Tensor):
                out["d", index] = c
        if a.requires_grad:
            c = 0
            if dd is not None:
                c = (d0 * dd).sum(2, keepdim=True) * a0
            if da is not None:
                c = c + (d0 * d0).sum(1, keepdim=True) * da
            if w is not None:
                c = c - d0 @ w[index][0]
            if isinstance(c, torch.Tensor):
                out["a", index] = c
    return out


@register_curvature(HessianVarianceOperator)
def hessian_variance(
    objective: Objective,
    theta: torch.Tensor | None = None,
    *,
    method: str = "auto",
    sample_block: int | None = None,
) -> HessianVarianceOperator:
    """The per-sample Hessian variance ``(1/n) Σ H_i² − H²`` as a linear operator."""
    return HessianVarianceOperator(objective, theta, method=method, sample_block=sample_block)
