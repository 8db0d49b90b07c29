r"""Per-sample factors of ``nn.Linear`` and ``nn.Conv1d``/``nn.Conv2d`` layers, from hooks.

For a layer ``z_i = W a_i + b`` the gradient of any per-sample quantity ``φ_i`` with respect to
``(W, b)`` is the rank-one ``(δ_i a_iᵀ, δ_i)``, ``δ_i = ∂φ_i/∂z_i``. A convolution is the same
map at every output position ``t`` on the patch ``a_it`` of its input (as ``F.unfold``), so its
per-sample gradient is ``(Σ_t δ_it a_itᵀ, Σ_t δ_it)``. So when ``θ`` is made of whole such
layers, per-sample gradients (and Jacobian rows) never need to be formed: the layer inputs
``a_i`` and the output cotangents ``δ_i`` (the *factors*) suffice.

:func:`record` runs a forward pass with forward hooks that record each layer's input ``a`` and
add a zero ``shift`` to its output, whose gradient is ``δ``; the model is not changed, and the
hooks live only for that pass. Users, each with its own ``φ``: the Gram path of
:mod:`valleys.stability.gram` (``φ = f_k``, ``δ`` detached), the mini-batch gradients of
:mod:`valleys.noise._minibatch` (``φ = ℓ``, detached) and the linear-layers algorithm of
:class:`valleys.operators.HessianVarianceOperator` (``φ = ℓ``, with ``a`` and ``δ`` kept as
differentiable functions of ``θ``). The first and the last take ``nn.Linear`` layers only
(their algorithms use the rank-one form); the mini-batch statistics also take convolutions
(``try_factored(..., types=LAYER_TYPES)``), whose per-sample gradients they form from the
factors.

What the hooks check (shared parameters, layers of another type or with a custom ``forward``,
partial layers, call counts, input shapes) is not all that can go wrong: a parameter can also
be used outside its layer's call (``F.linear(h, layer.weight)``), and then the gradient is no
longer the factored one. :func:`check_factored_gradient` (or :func:`check_recorded`, on a pass
already made) compares the two on a few samples. Every violation raises :class:`Unsupported`;
:func:`try_factored` turns it into the reason the callers give when they fall back to a path
that works for any model (or refuse, when the factored path was asked for).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import torch
from torch import nn
from torch.nn import functional as F

from valleys.objective import Objective

LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)
T = TypeVar("T")


class Unsupported(Exception):
    """The model does not fit the factored path (the caller falls back or explains)."""


class Layers(Sequence[nn.Module]):
    """The layers making up ``θ`` in the order they first appear in it (a sequence of modules).

    ``names[j]`` is layer ``j``'s module name and ``slots`` says, per entry of ``θ``, which
    layer's ``"weight"`` or ``"bias"`` it is.
    """

    def __init__(self, names: list[str], modules: list[nn.Module], slots: list[tuple]) -> None:
        self.names = names
        self.modules = modules
        self.slots = slots
        self.has_bias = [m.bias is not None for m in modules]
        self.kind = " or ".join(sorted({f"nn.{type(m).__name__}" for m in modules})) or "layer"

    def __len__(self) -> int:
        return len(self.modules)

    def __getitem__(self, index):
        return self.modules[index]

    def __iter__(self) -> Iterator[nn.Module]:
        return iter(self.modules)

    def where(self, index: int) -> str:
        return f"the nn.{type(self.modules[index]).__name__} {self.names[index] or '(model)'!r}"

    def flatten(self, per_layer: list[tuple]) -> torch.Tensor:
        """Per-layer ``(weight, [bias])`` blocks with a leading ``k`` as ``(k, p)`` in θ's
        layout."""
        return torch.cat(
            [per_layer[j][0 if attr == "weight" else 1].flatten(1) for j, attr in self.slots],
            dim=1,
        )

    def views(self, flat: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """The inverse of :meth:`flatten`: per layer, views ``{"weight": (k, *W.shape),
        ["bias": (k, out)]}`` of the rows of ``flat`` (``(k, p)``, θ's layout)."""
        shapes = [getattr(self.modules[j], attr).shape for j, attr in self.slots]
        pieces = flat.split([s.numel() for s in shapes], dim=1)
        out: list[dict[str, torch.Tensor]] = [{} for _ in self.modules]
        for (j, attr), shape, piece in zip(self.slots, shapes, pieces, strict=True):
            out[j][attr] = piece.view(-1, *shape)
        return out


def find_layers(objective: Objective, types: tuple[type, ...] = (nn.Linear,)) -> Layers | str:
    """The layers of ``θ``, or a string saying why ``θ`` is not made of whole layers of
    ``types`` (each a subclass of :data:`LAYER_TYPES` that keeps its class's ``forward``)."""
    model = objective.model
    kind = " or ".join(f"nn.{t.__name__}" for t in types)
    occurrences: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        occurrences.setdefault(id(p), []).append(name)
    named = dict(model.named_parameters())
    names: list[str] = []
    modules: list[nn.Module] = []
    slots = []
    for name in objective.names:
        shared = occurrences.get(id(named[name]), [])
        if len(shared) > 1:
            return f"parameter {name!r} is shared ({', '.join(shared)})"
        prefix, _, attr = name.rpartition(".")
        owner = model.get_submodule(prefix)
        base = next((t for t in types if isinstance(owner, t)), None)
        if base is None or type(owner).forward is not base.forward:
            return f"parameter {name!r} belongs to a {type(owner).__name__}, not an {kind}"
        if attr not in ("weight", "bias"):
            return f"parameter {name!r} is not the weight or bias of its {kind}"
        if isinstance(owner, (nn.Conv1d, nn.Conv2d)) and (
            owner.groups != 1 or owner.padding_mode != "zeros" or isinstance(owner.padding, str)
        ):
            # F.unfold takes neither groups, nor other padding modes, nor padding="same".
            return f"the nn.{type(owner).__name__} {prefix!r} has groups, a string padding or a " \
                "padding_mode other than 'zeros'"
        if prefix not in names:
            names.append(prefix)
            modules.append(owner)
        slots.append((names.index(prefix), attr))
    chosen = set(objective.names)
    for prefix, module in zip(names, modules, strict=True):
        for attr, p in module.named_parameters(recurse=False):
            if p is not None and f"{prefix}.{attr}".lstrip(".") not in chosen:
                return f"the nn.{type(module).__name__} {prefix or '(model)'!r} has {attr!r} " \
                    "outside θ; select whole layers"
    return Layers(names, modules, slots)


def linear_layers(objective: Objective) -> Layers | str:
    """The ``nn.Linear`` layers making up ``θ``, or why ``θ`` is not made of them."""
    return find_layers(objective, (nn.Linear,))


def try_factored(
    objective: Objective, run: Callable[[Layers], T], types: tuple[type, ...] = (nn.Linear,)
) -> tuple[T | None, str | None]:
    """``(run(layers), None)`` for the layers of ``θ`` (of ``types``, by default ``nn.Linear``
    only), or ``(None, reason)`` when ``θ`` is not made of them or ``run`` raises
    :class:`Unsupported`: the caller then takes its path for any model, or raises with
    ``reason`` when the factored path was asked for."""
    layers = find_layers(objective, types)
    if isinstance(layers, str):
        return None, layers
    try:
        return run(layers), None
    except Unsupported as error:
        return None, str(error)


def record(
    layers: Layers, run: Callable[[], torch.Tensor], batch: int
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """``run()`` (a forward pass over ``batch`` samples) with every layer's input recorded and a
    zero shift added to its output.

    Returns ``(run(), inputs, shifts)``: ``inputs[j]`` is layer ``j``'s input as it was (its
    graph kept) and ``shifts[j]`` a zero leaf shaped like its output, so that the gradient of
    ``Σ_i φ_i`` with respect to ``shifts`` is ``δ``. Raises :class:`Unsupported` when a layer is
    not called exactly once or gets an input without the batch of ``run``'s samples in front.
    """
    inputs: list = [None] * len(layers)
    shifts: list = [None] * len(layers)
    calls = [0] * len(layers)

    def hook(index: int):
        def tap(module, args, kwargs, output):
            calls[index] += 1
            if calls[index] > 1:
                raise Unsupported(f"{layers.where(index)} is called more than once per forward "
                                  "pass")
            a = args[0] if args else kwargs.get("input")
            rank = 2 if isinstance(module, nn.Linear) else 3 if isinstance(module, nn.Conv1d) else 4
            if not isinstance(a, torch.Tensor) or a.ndim != rank or a.shape[0] != batch:
                shape = tuple(a.shape) if isinstance(a, torch.Tensor) else None
                expected = "features" if rank == 2 else "channels, *positions"
                raise Unsupported(f"{layers.where(index)} gets an input of shape {shape}, not "
                                  f"(batch={batch}, {expected})")
            inputs[index] = a
            shifts[index] = torch.zeros_like(output, requires_grad=True)
            return output + shifts[index]

        return tap

    handles = [m.register_forward_hook(hook(j), with_kwargs=True) for j, m in enumerate(layers)]
    try:
        result = run()
    finally:
        for handle in handles:
            handle.remove()
    for index, count in enumerate(calls):
        if count != 1:
            raise Unsupported(
                f"{layers.where(index)} is called {count} times per forward pass, not once")
    return result, inputs, shifts


def forward_with_shifts(
    obj: Objective, theta: torch.Tensor, layers: Layers, X: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """:func:`record` of the model's outputs on ``X`` at ``θ`` (detached), inputs detached."""
    out, inputs, shifts = record(layers, lambda: obj.forward(theta.detach(), X), X.shape[0])
    return out, [a.detach() for a in inputs], shifts


def factors(
    layers: Layers, inputs: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The factors ``(a, δ)`` of each layer from its recorded input and its shift's gradient.

    An ``nn.Linear``'s are the input ``(b, in)`` and gradient ``(b, out)`` themselves (``None``,
    a layer whose output does not reach ``φ``, becomes zeros). A convolution's are its input's
    patches ``(b, T, in·kernel)`` and the gradient ``(b, T, out)`` at the ``T`` output positions.
    """
    acts, deltas = [], []
    for m, a, d in zip(layers, inputs, grads, strict=True):
        if isinstance(m, nn.Linear):
            acts.append(a)
            deltas.append(a.new_zeros(a.shape[0], m.out_features) if d is None else d)
            continue
        if isinstance(m, nn.Conv1d):  # as a Conv2d of height 1
            x, pad = a.unsqueeze(2), (0, *m.padding)
            kernel, stride, dilation = ((1, *v) for v in (m.kernel_size, m.stride, m.dilation))
        else:
            x, pad, kernel, stride, dilation = a, m.padding, m.kernel_size, m.stride, m.dilation
        patches = _patches(x, kernel, dilation, pad, stride)
        acts.append(patches)
        b = a.shape[0]
        d = a.new_zeros(b, m.out_channels, patches.shape[1]) if d is None else d.reshape(
            b, m.out_channels, -1)
        deltas.append(d.transpose(1, 2))
    return acts, deltas


def _patches(x: torch.Tensor, kernel: Sequence[int], dilation: Sequence[int],
             padding: Sequence[int], stride: Sequence[int]) -> torch.Tensor:
    """The input patches of a 2-D convolution, ``(b, T, channels·kh·kw)``: the entries and
    strides of ``F.unfold(x, ...).transpose(1, 2)``, from one strided copy of the padded input
    (CPU ``F.unfold`` loops over the samples: half the time of a factor pass on SmallCNN)."""
    if any(padding):
        x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    b, c, height, width = x.shape
    rows = (height - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    cols = (width - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    sb, sc, sh, sw = x.stride()
    # Positions innermost, as F.unfold lays them out: the copy reads rows of the image.
    view = x.as_strided(
        (b, c, kernel[0], kernel[1], rows, cols),
        (sb, sc, sh * dilation[0], sw * dilation[1], sh * stride[0], sw * stride[1]),
        x.storage_offset())
    return view.reshape(b, c * kernel[0] * kernel[1], rows * cols).transpose(1, 2)


def conv_sample_gradients(
    module: nn.Conv1d | nn.Conv2d, inputs: torch.Tensor, deltas: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A convolution's per-sample gradients ``(Σ_t δ_it a_itᵀ, Σ_t δ_it)`` from its recorded
    input ``(b, in, *positions)`` and output cotangent ``(b, out, *positions')`` (``None``:
    zeros), as ``(b, out·in·kernel)`` and ``(b, out)``.

    The weight gradient of one convolution whose groups are the samples: the batch folded into
    the channels, ``groups=b``. No patches are formed; on a CPU this took a quarter of the time
    of unfolding the input and one batched product.
    """
    b, out = inputs.shape[0], module.out_channels
    if deltas is None:
        return inputs.new_zeros(b, module.weight.numel()), inputs.new_zeros(b, out)
    spatial = inputs.shape[2:]
    weight_shape = (b * out, *module.weight.shape[1:])
    _, weight_grad, _ = torch.ops.aten.convolution_backward(
        deltas.reshape(1, b * out, *deltas.shape[2:]),
        inputs.reshape(1, b * inputs.shape[1], *spatial),
        inputs.new_empty(weight_shape),  # read for its shape only
        None, list(module.stride), list(module.padding), list(module.dilation), False,
        [0] * len(spatial), b, [False, True, False])
    return weight_grad.reshape(b, -1), deltas.flatten(2).sum(2)


def factored_gradient(
    layers: Layers, acts: Sequence[torch.Tensor], deltas: Sequence[torch.Tensor]
) -> torch.Tensor:
    """``Σ_i (Σ_t δ_it a_itᵀ, Σ_t δ_it)`` over the samples (and positions) of the factors, in
    ``θ``'s layout."""
    sums: list[tuple] = []
    for m, a, d in zip(layers, acts, deltas, strict=True):
        a2, d2 = a.reshape(-1, a.shape[-1]), d.reshape(-1, d.shape[-1])
        weight = (d2.T @ a2).reshape(1, *m.weight.shape)
        sums.append((weight,) if m.bias is None else (weight, d2.sum(0).unsqueeze(0)))
    return layers.flatten(sums)[0]


def per_sample_gradients(
    layers: Layers, acts: Sequence[torch.Tensor], deltas: Sequence[torch.Tensor]
) -> torch.Tensor:
    """``(Σ_t δ_it a_itᵀ, Σ_t δ_it)`` for every sample ``i``, as ``(n, p)`` in ``θ``'s layout."""
    blocks = []
    for m, a, d in zip(layers, acts, deltas, strict=True):
        a3, d3 = a.reshape(a.shape[0], -1, a.shape[-1]), d.reshape(d.shape[0], -1, d.shape[-1])
        blocks.append(((d3.transpose(1, 2) @ a3).reshape(-1, *m.weight.shape), d3.sum(1)))
    return layers.flatten(blocks)


def check_recorded(
    layers: Layers,
    total: torch.Tensor,
    leaf: torch.Tensor,
    inputs: Sequence[torch.Tensor],
    shifts: Sequence[torch.Tensor],
    *,
    retain_graph: bool = False,
) -> None:
    """Raise :class:`Unsupported` unless ``∇_θ Σ_i φ_i`` is the factored gradient.

    ``total = Σ_i φ_i`` was computed by :func:`record` at the differentiable ``leaf`` (``θ``);
    ``inputs`` and ``shifts`` are what that pass recorded. Both sides agree to rounding when
    ``θ`` enters ``φ`` only through the layers' calls; a mismatch above ``sqrt(eps)`` relative
    means it does not.
    """
    gradient, *grads = torch.autograd.grad(
        total, [leaf, *shifts], retain_graph=retain_graph, allow_unused=True)
    structured = factored_gradient(layers, *factors(layers, [a.detach() for a in inputs], grads))
    if gradient is None:
        gradient = torch.zeros_like(structured)
    error = float((structured - gradient).norm())
    scale = float(structured.norm() + gradient.norm())
    if error > torch.finfo(structured.dtype).eps ** 0.5 * scale:
        raise Unsupported(
            f"the loss depends on parameters of θ outside their {layers.kind} calls (tied or "
            "reused weights: the per-sample gradients are not (δ aᵀ, δ), relative mismatch "
            f"{error / scale:.1e})"
        )


def check_factored_gradient(
    obj: Objective,
    theta: torch.Tensor,
    layers: Layers,
    X: torch.Tensor,
    phi: Callable[[torch.Tensor], torch.Tensor],
    samples: int = 4,
) -> None:
    """:func:`check_recorded` on the first ``samples`` rows of ``X``, in one forward pass.

    ``phi(out)`` maps the model outputs of those rows to the scalar ``Σ_i φ_i``.
    """
    X = X[:samples]
    leaf = theta.detach().requires_grad_(True)
    with torch.enable_grad():
        total, inputs, shifts = record(layers, lambda: phi(obj.forward(leaf, X)), X.shape[0])
        check_recorded(layers, total, leaf, inputs, shifts)
