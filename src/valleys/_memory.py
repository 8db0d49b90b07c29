r"""How much memory a curvature computation will hold on the compute device, before running it.

:func:`memory_estimate` answers "will ``valleys.sharpness(obj)`` fit on this GPU?" without
running it at full size. The part that depends on the model and the chunk size (the forward
pass, the first-order graph kept for double backward, and the transients of one
Hessian-vector product) is *measured* on one or two tiny slices of the data and extrapolated
linearly in the number of samples; the solver's part (Lanczos basis, work vectors, Hutch++
sketches) follows from the solver's own sizes. Nothing runs on the full data set.

The measurement runs the real operator code (the very ``hessian``/``hessian_variance``
products the solver will call) on a copy of the objective restricted to ``s`` samples, under a
``TorchDispatchMode`` that records every storage an operation creates on the device and frees
it when the storage is released. That gives the exact peak of live tensor bytes of a product
``P(s, b)`` on ``s`` samples and ``b`` vectors at once (products over several vectors are
batched, which multiplies the backward pass's transients), and the bytes ``R(s)`` still held
afterwards (the cached first-order graph, when the operator caches it). Both are affine in
``s`` and ``b`` for any model that processes samples independently, so four measurements fix

.. math::  P(s, b) = P_{00} + P_{10} s + b\,(P_{01} + P_{11} s),

which is then evaluated at the chunk size ``c`` and at the largest block of vectors ``b`` the
computation uses. Caching allocators (CUDA's) round allocations up and keep freed blocks, so
the device may show a few percent more; the estimate is of what torch allocates.
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map

from valleys._checks import is_integral
from valleys.errors import ArgumentTypeError, ArgumentValueError
from valleys.objective import Objective

__all__ = ["memory_estimate"]

WHATS = ("sharpness", "top-k", "trace", "nonuniformity")
# Keys of the breakdown that add up to the total (host_basis is not on the device).
DEVICE_KEYS = ("model", "data", "chunk_copy", "theta", "graph", "product", "vectors", "basis")
# Mirrors of the solvers' sizes (valleys.operators._curvature, valleys.linalg._trace).
_SAMPLE_VECTORS = 2**16
_TRACE_BLOCK = 64
# The graph is measured on slices of s and 2s samples, s = max(2, chunk // _SLICE_FRACTION):
# large enough that the per-sample part dominates p-sized constants, 1/64 of a product's cost.
_SLICE_FRACTION = 64


class _LiveBytes(TorchDispatchMode):
    """Peak and current bytes of the storages that operations create on one device type.

    Every operation's outputs pass through :meth:`__torch_dispatch__`; a storage seen for the
    first time is counted, and a weak reference to it takes it off when torch frees it (storages
    keep their Python object as long as they live, so the callback marks the real release).
    Storages that existed before (``ignore``: parameters, data) are never counted, nor are
    results that share an input's storage (views, in-place operations).
    """

    def __init__(self, device_type: str, ignore: Sequence[torch.Tensor] = ()) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.device_type = device_type
        self.ignore = {_storage(t)[0] for t in ignore}
        self.live: dict[int, int] = {}
        self.refs: dict[int, Any] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        # Views and in-place results share an input's storage: nothing new was allocated.
        inputs = {key for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)
                  for key, _ in [_storage(t)]}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == self.device_type:
                self._count(t, inputs)
        return out

    def _count(self, t: torch.Tensor, inputs: set[int]) -> None:
        key, storage = _storage(t)
        if storage is None or key in self.live or key in self.ignore or key in inputs:
            return
        size = storage.nbytes()
        if size == 0:
            return
        self.live[key] = size
        self.refs[key] = weakref.ref(storage, functools.partial(self._free, key))
        self.current += size
        self.peak = max(self.peak, self.current)

    def _free(self, key: int, _ref: object) -> None:
        self.current -= self.live.pop(key, 0)
        self.refs.pop(key, None)


def _storage(t: torch.Tensor) -> tuple[int, Any]:
    """``(data pointer, storage)`` of the plain tensor under any functorch wrappers (vmap, grad
    and jvp levels wrap the tensors that dispatch sees); ``(0, None)`` without a storage."""
    while torch._C._functorch.is_functorch_wrapped_tensor(t):
        t = torch._C._functorch.get_unwrapped(t)
    try:
        storage = t.untyped_storage()
        return storage.data_ptr(), storage
    except (RuntimeError, NotImplementedError):  # sparse, nested or storage-less tensors
        return 0, None


def memory_estimate(
    obj: Objective,
    k: int = 1,
    what: str = "sharpness",
    *,
    ncv: int | None = None,
    basis_dtype: torch.dtype | None = None,
    basis_device: str | torch.device | None = None,
    chunk_size: int | None = None,
    num_matvecs: int = 100,
    backend: str = "auto",
    breakdown: bool = False,
) -> int | dict[str, int]:
    r"""Bytes a curvature computation will hold on the objective's device, before running it.

    ``what`` names the computation, with the solvers' defaults:

    * ``"sharpness"``: :func:`valleys.sharpness` (``eigsh(hessian(obj), k=1)``);
    * ``"top-k"``: ``valleys.eigsh(valleys.hessian(obj), k=k)``;
    * ``"trace"``: ``valleys.trace(valleys.hessian(obj), num_matvecs=num_matvecs)`` (Hutch++);
    * ``"nonuniformity"``: :func:`valleys.nonuniformity` (top eigenvalue of
      ``hessian_variance(obj)``).

    The total is the sum of (``breakdown=True`` returns them, with ``"total"`` and
    ``"host_basis"``):

    * ``model``: the model's parameters and buffers (held before the call);
    * ``data``: the data tensors already on the device (held before the call);
    * ``chunk_copy``: one chunk copied to the device, when the data lives elsewhere;
    * ``theta``: the operator's copy of ``θ``, ``p × itemsize``;
    * ``graph``: the first-order graph (forward activations and the graph of ``∇L`` built with
      ``create_graph``) that the operator keeps between products when the data is one chunk
      (``0`` otherwise: it is rebuilt, inside each product, per chunk);
    * ``product``: the peak of one product on top of that: with ``c`` samples per chunk and
      ``b`` vectors per batched product, ``P(c, b) − graph`` where
      ``P(s, b) = P₀₀ + P₁₀ s + b (P₀₁ + P₁₁ s)`` is fitted to the measured peaks of the real
      operator code on slices of ``s`` and ``2s`` samples,
      ``s = max(2, ⌊c/64⌋)``, and 1 and 2 vectors (see the module
      docstring); ``b`` is the solver's largest block (``max(k, 2)`` for eigsh: its
      verification and noise products; ``min(64, ⌊65536 / c⌋)`` for Hutch++), capped at the
      operator's own limit ``⌊65536 / c⌋`` vectors per batched pass;
    * ``vectors``: the solver's other ``p``-vectors in the work dtype ``w`` (the operator's
      dtype, at least float32): for eigsh ``(4 + 3k) p w`` (Gram-Schmidt temporaries, Ritz
      vectors, their products and residuals) plus the thick-restart copy of the kept vectors
      ``n_keep p w`` with ``n_keep = min(k + max((ncv − k) // 2, 1), ncv − 1)``; for Hutch++
      ``5 ⌊m/3⌋ p w`` (sketch, its product, ``Q``, the block copies and ``A Q``);
    * ``basis``: the Lanczos basis, ``(ncv + 1) × p × itemsize(basis_dtype)`` with the solver's
      default ``ncv = min(max(2k + 1, 20), p)``; with ``basis_device="cpu"`` (on another
      device) it is reported as ``host_basis`` instead and not counted.

    Why measured, not modelled: the graph of a double backward depends on every operation of
    the model (attention keeps its ``T × T`` scores, a GELU its input, LayerNorm its statistics),
    so a formula per layer type would miss the next model. Counting what torch actually
    allocates on two tiny slices is exact for them and linear in the samples for any model that
    treats samples independently. The measured product is the one the solver will call, so the
    estimate follows valleys' own code paths (cached or rebuilt graphs, batched vectors, the
    math attention backend, the linear-layers or vmap algorithm of the Hessian variance; for the
    variance, the graph is its own kept graphs plus the Hessian's). The
    vmap path of the variance materializes at most ``sample_block`` per-sample rows; the linear
    fit ignores that cap, so there the estimate errs on the high side.

    Accuracy: on CPU (MLPs with 0.17–1.1 M parameters and 2,000–4,000 samples, one chunk and
    four chunks) the resident-set increase of the whole computation in a fresh process was
    0.79–1.11 times ``total − model − data`` for the sharpness, the top 10 and the Hutch++
    trace, and 0.95 for the non-uniformity; ``tests/test_memory_estimate.py`` requires 0.5–2.
    The increase also holds what is not a tensor (code and buffers that the first backward
    pass loads, allocator slack, Python objects), a few tens of MB, so for small models the
    measured increase can be several times the estimate. The measurement itself costs about
    eight products on ``1/64`` and ``1/32`` of a chunk (sixteen with ``backend="auto"``) and
    builds two small objectives.

    Args:
        obj: the :class:`~valleys.Objective`.
        k: number of eigenpairs (``"top-k"`` only; ``"sharpness"`` and ``"nonuniformity"``
            use 1), ``1 <= k < p``.
        what: ``"sharpness"``, ``"top-k"``, ``"trace"`` or ``"nonuniformity"``.
        ncv: Lanczos basis size, as passed to :func:`valleys.eigsh` (default the solver's).
        basis_dtype: dtype the basis is stored in, as passed to :func:`valleys.eigsh`
            (default: the work dtype, the operator's but at least float32).
        basis_device: device the basis is stored on (``"cpu"``: host memory), as passed to
            :func:`valleys.eigsh` (default: the operator's device).
        chunk_size: estimate for the objective rebuilt with this ``chunk_size`` (default: its
            own). Objectives from :meth:`~valleys.Objective.from_function` use their batches
            as they come and refuse it.
        num_matvecs: Hutch++ budget (``"trace"`` only).
        backend: the Hessian-vector product scheme, as passed to :func:`valleys.hessian`:
            ``"double-backward"`` (keeps the first-order graph of a single chunk),
            ``"forward-over-reverse"`` (keeps none; ``vmap`` over the vectors) or ``"auto"``
            (the default): both are measured, and the estimate is double backward's kept graph
            plus the larger of the two products, because the automatic choice times both
            schemes at full size with that graph alive (when a stored choice is reused, this
            bounds either outcome). ``"nonuniformity"`` always counts ``"auto"``, which its
            inner Hessian operator uses.
        breakdown: return the dict of parts (above) instead of the total.

    Returns:
        The total in bytes (an ``int``), or with ``breakdown=True`` a dict of the parts, their
        ``"total"`` and the ``"host_basis"`` bytes (not part of the total).

    Raises:
        TypeError: ``obj`` is not an Objective, or an argument has the wrong type.
        ValueError: unknown ``what``, ``k`` outside ``[1, p)``, a bad ``ncv``, ``chunk_size``
            or ``num_matvecs``, a distributed objective, or ``"nonuniformity"`` on an objective
            from :meth:`~valleys.Objective.from_function`.
    """
    from valleys.linalg._certify import _work_dtype
    from valleys.operators import hessian, hessian_variance
    from valleys.operators._hessian import BACKENDS

    if not isinstance(obj, Objective):
        raise ArgumentTypeError(
            f"memory_estimate needs a valleys.Objective, got {type(obj).__name__}; build one "
            "with valleys.Objective(model, loss, (X, Y))")
    if not isinstance(what, str) or what not in WHATS:
        raise ArgumentValueError(f"unknown what={what!r}; choose one of {WHATS}")
    if not isinstance(backend, str) or backend not in ("auto", *BACKENDS):
        raise ArgumentValueError(
            f"unknown backend {backend!r}; choose one of {('auto', *BACKENDS)} (as passed to "
            "valleys.hessian)")
    if not isinstance(breakdown, bool):
        raise ArgumentTypeError(f"breakdown must be True or False, got {breakdown!r}")
    if obj.distributed:
        raise ArgumentValueError(
            "memory_estimate measures one process's share; call it on a single-process "
            "Objective built from one rank's shard")
    p = obj.dim
    k = _count(k, "k", 1)
    if what in ("sharpness", "nonuniformity"):
        if k != 1:
            raise ArgumentValueError(
                f"what={what!r} computes one eigenvalue, so k must be 1 (got {k}); use "
                "what='top-k' for several")
    if what != "trace" and k >= p:
        raise ArgumentValueError(
            f"k = {k} must be below the number of parameters p = {p} (k = p computes the dense "
            "matrix, p² entries, instead of a Lanczos basis)")
    num_matvecs = _count(num_matvecs, "num_matvecs", 3)
    function = obj.loss_name == "function"
    if what == "nonuniformity" and function:
        raise ArgumentValueError(
            "what='nonuniformity' needs an Objective(model, loss, (X, Y)); the Hessian variance "
            "of an objective from Objective.from_function is not available")
    if chunk_size is not None:
        chunk_size = _count(chunk_size, "chunk_size", 1)
        if function:
            raise ArgumentValueError(
                "chunk_size cannot be overridden for an objective from Objective.from_function "
                "(its batches are evaluated as they come); re-batch the data instead")
    work = _work_dtype(obj.dtype)
    from valleys.linalg._krylov import _BLOCK
    from valleys.linalg._lanczos import _basis_size, _check_basis_device, _check_basis_dtype

    low = _check_basis_dtype(basis_dtype, obj.dtype, with_inner=False)
    basis_dtype = work if low is None else low

    host = _check_basis_device(basis_device) or obj.device
    if what != "trace":
        ncv = _basis_size(ncv, k, p)

    # -- what the data looks like: chunk size, batches, resident bytes ------------------------
    layout = _Layout(obj, chunk_size)
    c = layout.chunk
    # CurvatureOperator.vector_block: vectors per batched pass.
    per_pass = max(1, _SAMPLE_VECTORS // min(layout.step or obj.n, obj.n))
    if what == "trace":
        b = min(_TRACE_BLOCK, num_matvecs, per_pass)
    else:
        b = min(max(k, 2), per_pass)

    def operator(scheme: str) -> Callable[[Objective], Any]:
        return lambda sub: hessian(sub, backend=scheme, cache=layout.cached)

    # Per scheme: the graph kept between products and the peak of one product above it.
    # "auto" times both schemes at full size, keeping double backward's graph through the
    # timing of the other, and may keep either: graph plus the larger product bounds both.
    # The Hessian variance builds such a Hessian operator (with "auto") for its H(Hv) term.
    schemes = BACKENDS if backend == "auto" or what == "nonuniformity" else (backend,)
    graph, product = 0, 0
    for scheme in schemes:
        fit = _measure(obj, layout, operator(scheme), warm_up=False)
        kept = fit.retained(c) if layout.cached and scheme == "double-backward" else 0
        graph = max(graph, kept)
        product = max(product, fit.peak(c, b) - kept)
    if what == "nonuniformity":
        # Its own graphs (the map of the layers' inputs and output gradients, and that of its
        # Jacobian products) are kept next to the Hessian's.
        fit = _measure(obj, layout, hessian_variance, warm_up=True)
        kept = fit.retained(c) if layout.cached else 0
        graph += kept
        product = max(product, fit.peak(c, b) - kept)
    parts = dict.fromkeys(DEVICE_KEYS, 0)
    parts["model"] = layout.model_bytes
    parts["data"] = layout.resident_data
    parts["chunk_copy"] = layout.chunk_copy
    item = torch.empty((), dtype=obj.dtype).element_size()
    witem = torch.empty((), dtype=work).element_size()
    parts["theta"] = p * item
    parts["graph"] = graph
    parts["product"] = product
    if what == "trace":
        parts["vectors"] = 5 * max(num_matvecs // 3, 1) * p * witem
        host_basis = 0
    else:
        assert ncv is not None
        n_keep = min(k + max((ncv - k) // 2, 1), ncv - 1)
        # (a low basis also widens _BLOCK of its columns at a time for each product with it)
        parts["vectors"] = (4 + 3 * k + n_keep + (_BLOCK if low else 0)) * p * witem
        basis = (ncv + 1) * p * torch.empty((), dtype=basis_dtype).element_size()
        on_device = host.type == obj.device.type and (
            host.index is None or obj.device.index is None or host.index == obj.device.index)
        parts["basis"] = basis if on_device else 0
        host_basis = 0 if on_device else basis
    total = sum(parts.values())
    if not breakdown:
        return int(total)
    return {**{key: int(v) for key, v in parts.items()}, "total": int(total),
            "host_basis": int(host_basis)}


def _count(value: object, name: str, low: int) -> int:
    if isinstance(value, bool) or not is_integral(value):
        raise ArgumentTypeError(f"{name} must be an integer, got {value!r}")
    if int(value) < low:
        raise ArgumentValueError(f"{name} must be at least {low}, got {value!r}")
    return int(value)


def _nbytes(tree: Any) -> int:
    return sum(t.nbytes for t in tree_leaves(tree) if isinstance(t, torch.Tensor))


def _on(tree: Any, device: torch.device) -> bool:
    leaves = [t for t in tree_leaves(tree) if isinstance(t, torch.Tensor)]
    return bool(leaves) and all(t.device == device for t in leaves)


class _Layout:
    """Chunk size, whether the operator caches, the data's resident bytes, and slices of it."""

    def __init__(self, obj: Objective, chunk_size: int | None) -> None:
        self.obj = obj
        model = obj.model
        tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
        self.model_bytes = sum(t.nbytes for t in tensors.values() if t.device == obj.device)
        self.function = obj.loss_name == "function"
        pair = getattr(obj, "_tensors", None)
        if self.function:
            batches = list(obj._batch_source())
            sizes = [_leading(batch) for batch in batches]
            index = max(range(len(sizes)), key=sizes.__getitem__)
            self.first = batches[index]
            self.chunk, self.step = sizes[index], None
            chunks = len(batches)
            self.resident_data = sum(_nbytes(b) for b in batches if _on(b, obj.device))
            self.chunk_copy = 0 if _on(self.first, obj.device) else _nbytes(self.first)
        else:
            step = obj.chunk_size if chunk_size is None else chunk_size
            if pair is not None:
                batches = [pair]
            else:
                source = obj._batch_source()
                # A DataLoader is not iterated here: its first batch stands for all of them.
                batches = list(source) if isinstance(source, Sequence) else [next(iter(source))]
            sizes = [int(b[0].shape[0]) for b in batches]
            index = max(range(len(sizes)), key=sizes.__getitem__)
            X, Y = batches[index]
            self.first = (X, Y)
            self.step = step
            self.chunk = min(step or sizes[index], sizes[index])
            if pair is not None or isinstance(obj._batch_source(), Sequence):
                chunks = sum(-(-size // (step or size)) for size in sizes)
            else:
                chunks = max(obj.num_chunks, 2 if step and sizes[index] > step else 1)
            self.resident_data = sum(_nbytes(b) for b in batches if _on(b, obj.device))
            per_sample = (X.nbytes + Y.nbytes) / max(X.shape[0], 1)
            self.chunk_copy = 0 if _on((X, Y), obj.device) else int(per_sample * self.chunk)
        self.multi = chunks > 1
        self.cached = not self.multi
        self._subs: dict[int, Objective] = {}

    def slice(self, s: int) -> Any:
        """A batch of the first ``s`` samples of the largest batch (on the objective's device)."""
        device = self.obj.device
        if self.function:
            lead = _leading(self.first)
            return tree_map(
                lambda t: t[:s].to(device) if isinstance(t, torch.Tensor) and t.ndim
                and t.shape[0] == lead else t, self.first)
        X, Y = self.first
        return X[:s].to(device), Y[:s].to(device)

    def sub_objective(self, s: int) -> Objective:
        """The objective on ``s`` samples, in the same regime: one chunk, or two of ``s``
        (built once per ``s``: construction runs checks of its own)."""
        if s not in self._subs:
            self._subs[s] = self._build_sub(s)
        return self._subs[s]

    def _build_sub(self, s: int) -> Objective:
        obj = self.obj
        batch = self.slice(s)
        if self.function:
            call = obj._call  # type: ignore[attr-defined]
            return Objective.from_function(obj.model, call.fn, [batch] * (2 if self.multi else 1),
                                           params=list(obj.names),
                                           allow_train_mode=obj.allow_train_mode)
        X, Y = batch
        if self.multi:
            X, Y = torch.cat([X, X]), torch.cat([Y, Y])
        loss = obj.loss_name if obj.loss_name in ("mse", "ce") else obj.loss_fn
        return Objective(obj.model, loss, (X, Y), chunk_size=s if self.multi else None,
                         params=list(obj.names), allow_train_mode=obj.allow_train_mode)


def _leading(batch: Any) -> int:
    leaves = [t for t in tree_leaves(batch) if isinstance(t, torch.Tensor) and t.ndim]
    if not leaves:
        raise ArgumentValueError(
            "memory_estimate needs batches with at least one tensor with a batch dimension")
    return int(leaves[0].shape[0])


class _Fit:
    """``P(s, b) = P00 + P10 s + b (P01 + P11 s)`` and ``R(s) = R0 + R1 s`` from measurements."""

    def __init__(self, points: dict[tuple[int, int], tuple[int, int]]) -> None:
        (s1, s2) = sorted({s for s, _ in points})
        p11, p12 = points[s1, 1][0], points[s1, 2][0]
        p21, p22 = points[s2, 1][0], points[s2, 2][0]
        r1 = (points[s1, 1][1] + points[s1, 2][1]) / 2
        r2 = (points[s2, 1][1] + points[s2, 2][1]) / 2
        self.s = (s1, s2)
        # Per-vector part at s1 and s2, then affine in s; likewise the one-vector part.
        v1, v2 = max(p12 - p11, 0), max(p22 - p21, 0)
        o1, o2 = p11 - v1, p21 - v2
        self.vec = _affine(s1, v1, s2, v2)
        self.base = _affine(s1, o1, s2, o2)
        self.ret = _affine(s1, r1, s2, r2)

    def peak(self, c: int, b: int) -> int:
        return max(math.ceil(self.base(c) + b * self.vec(c)), 0)

    def retained(self, c: int) -> int:
        return max(math.ceil(self.ret(c)), 0)


def _affine(s1: int, y1: float, s2: int, y2: float) -> Callable[[int], float]:
    if s1 == s2:
        return lambda s: y1 * s / s1
    slope = max((y2 - y1) / (s2 - s1), 0.0)
    intercept = y1 - slope * s1
    return lambda s: intercept + slope * s


def _measure(obj: Objective, layout: _Layout, operator: Callable[[Objective], Any], *,
             warm_up: bool) -> _Fit:
    """Peak and retained bytes of one product of ``operator`` on 2 slices × 1 and 2 vectors
    (after one unmeasured product with ``warm_up``)."""
    small = min(max(2, layout.chunk // _SLICE_FRACTION), layout.chunk)
    large = min(2 * small, layout.chunk)
    if small == large:
        small = max(1, large // 2)
    points: dict[tuple[int, int], tuple[int, int]] = {}
    gen = torch.Generator(device="cpu").manual_seed(0)
    for s in sorted({small, large}):
        for b in (1, 2):
            sub = layout.sub_objective(s)
            op = operator(sub)
            V = torch.randn(obj.dim, b, generator=gen, dtype=obj.dtype).to(obj.device)
            if warm_up:  # one-time checks (the variance's choice of algorithm) ...
                op.matmat(V)
                _drop_caches(op)  # ... then the graphs are built again, inside the measurement
            ignore = [op.theta, V, *obj.model.parameters(), *obj.model.buffers()]
            with _LiveBytes(obj.device.type, ignore) as tracker:
                out = op.matmat(V)
                del out
                retained = tracker.current
            points[s, b] = (tracker.peak, retained)
            del op
    if len({s for s, _ in points}) == 1:  # a single-sample chunk: no slope to fit
        s = small
        points.update({(s + 1, b): v for (_, b), v in list(points.items())})
    return _Fit(points)


def _drop_caches(op: Any) -> None:
    """Forget the graphs an operator (and the Hessian inside a variance operator) keeps."""
    for owner in (op, getattr(op, "hessian", None)):
        for name in ("_cached", "_cache"):
            if owner is not None and hasattr(owner, name):
                setattr(owner, name, None)
