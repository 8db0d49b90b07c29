"""Small reference networks: an MLP, a small CNN, a small ResNet and a tiny GPT.

All of them are plain :class:`torch.nn.Module` s built for curvature and training-dynamics
experiments:

* ``seed`` makes the initialization deterministic without touching the caller's global random
  state (the parameters are created under :func:`torch.random.fork_rng` with the CPU generator
  seeded; PyTorch's default initializations are used). ``seed=None`` draws from the global
  generator like any ``nn.Module``.
* ``forward`` is free of in-place operations, ``.item()`` and data-dependent control flow, so
  the models work with :func:`torch.func.functional_call`, :func:`torch.func.vmap` over single
  samples (with a batch dimension of 1 inside the vmapped function) and in float64
  (``model.double()``).

The convolutional models take the shape of one input sample, ``input_shape``, and accept
batches shaped ``(n, *input_shape)``, ``(n, C, *spatial)`` or flat ``(n, prod(input_shape))``
(so flattened digits ``(n, 64)`` feed a model built for ``(8, 8)``). A 1-element
``input_shape`` ``(L,)`` is a single-channel signal (Conv1d), 3 elements ``(C, H, W)`` an image
(Conv2d). Two elements are ambiguous: by default ``(H, W)`` is a single-channel image; pass
``spatial_dims=1`` to read it as a multi-channel signal ``(C, L)``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from valleys._checks import is_integral
from valleys.errors import ArgumentTypeError, ArgumentValueError

__all__ = [
    "ACTIVATIONS",
    "MLP",
    "SmallCNN",
    "SmallResNet",
    "TinyGPT",
    "make_activation",
    "num_parameters",
]

#: Activation names accepted by the models, mapped to module factories.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "identity": nn.Identity,
}


def make_activation(name: str) -> nn.Module:
    """Return a fresh activation module by name.

    Args:
        name: one of the keys of :data:`ACTIVATIONS` (case-insensitive).

    Returns:
        The module.

    Raises:
        ValueError: for an unknown name; the message lists the valid ones.
    """
    if not isinstance(name, str) or name.lower() not in ACTIVATIONS:
        raise ArgumentValueError(
            f"unknown activation {name!r}; choose one of {', '.join(sorted(ACTIVATIONS))}"
        )
    return ACTIVATIONS[name.lower()]()


def num_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Count the scalar parameters of a model.

    Args:
        model: any module.
        trainable_only: count only parameters with ``requires_grad=True``.

    Returns:
        The total number of scalar entries over all (distinct) parameters.
    """
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Run parameter creation with the CPU generator seeded, restoring its state afterwards."""
    if seed is None:
        yield
        return
    if isinstance(seed, bool) or not is_integral(seed) or seed < 0:
        raise ArgumentValueError(f"seed must be a non-negative integer or None, got {seed!r}")
    # devices=[]: only the CPU generator is forked; the parameters are created on the CPU.
    # torch.default_generator.manual_seed (unlike torch.manual_seed) leaves CUDA generators alone.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(seed))
        yield


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not is_integral(value) or value < 1:
        raise ArgumentValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _int_tuple(values: Any, name: str, *, min_len: int = 1) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ArgumentTypeError(f"{name} must be a sequence of positive integers, got {values!r}")
    if len(values) < min_len:
        raise ArgumentValueError(f"{name} needs at least {min_len} entries, got {list(values)}")
    return tuple(_positive_int(v, f"every entry of {name}") for v in values)


class _InputAdapter(nn.Module):
    """Reshape inputs to ``(n, C, *spatial)`` for the convolutional models."""

    def __init__(self, input_shape: Sequence[int], spatial_dims: int | None) -> None:
        super().__init__()
        shape = _int_tuple(input_shape, "input_shape")
        if len(shape) > 3:
            raise ArgumentValueError(
                f"input_shape must be (L,), (C, L), (H, W) or (C, H, W), got {shape}"
            )
        if spatial_dims is None:
            spatial_dims = 1 if len(shape) == 1 else 2
        if spatial_dims not in (1, 2):
            raise ArgumentValueError(f"spatial_dims must be 1, 2 or None, got {spatial_dims!r}")
        if len(shape) < spatial_dims or len(shape) > spatial_dims + 1:
            raise ArgumentValueError(
                f"input_shape {shape} does not fit spatial_dims={spatial_dims}: expected "
                f"{'(L,) or (C, L)' if spatial_dims == 1 else '(H, W) or (C, H, W)'}"
            )
        has_channels = len(shape) == spatial_dims + 1
        self.input_shape = shape
        self.spatial_dims = spatial_dims
        self.in_channels = shape[0] if has_channels else 1
        self.spatial = shape[1:] if has_channels else shape
        self.full_shape = (self.in_channels, *self.spatial)
        self.numel = math.prod(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sample = tuple(x.shape[1:])
        # Shapes are static (also under vmap), so this branching is traceable.
        if x.ndim >= 2 and sample == self.full_shape:
            return x
        if x.ndim >= 2 and (sample == self.input_shape or sample == (self.numel,)):
            return x.reshape(x.shape[0], *self.full_shape)
        raise ArgumentValueError(
            f"expected inputs of shape (batch, {', '.join(map(str, self.input_shape))}), "
            f"(batch, {', '.join(map(str, self.full_shape))}) or (batch, {self.numel}), got "
            f"{tuple(x.shape)}; add a leading batch dimension for a single sample"
        )

    def extra_repr(self) -> str:
        return f"input_shape={self.input_shape}, full_shape={self.full_shape}"


def _conv_out(length: int, kernel_size: int, stride: int, padding: int) -> int:
    return (length + 2 * padding - kernel_size) // stride + 1


def _pool(x: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    # Global average over the spatial axes; a mean, not an in-place pooling kernel.
    return x.mean(dim=tuple(range(2, 2 + spatial_dims)))


# ------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------


class MLP(nn.Module):
    """A fully connected network ``Linear -> act -> ... -> Linear`` (no output activation).

    Args:
        widths: layer widths from input to output, e.g. ``(64, 128, 128, 10)`` is 64 inputs,
            two hidden layers of 128 and 10 outputs; at least two entries.
        activation: hidden nonlinearity, a key of :data:`ACTIVATIONS`.
        bias: whether the linear layers have biases.
        seed: seeds the initialization (PyTorch's default ``Linear`` init); ``None`` uses the
            global generator.

    Inputs of shape ``(n, widths[0])`` (or a single ``(widths[0],)`` vector) map to
    ``(n, widths[-1])``; inputs with more than two dimensions are flattened after the batch
    dimension, so ``(n, 1, 8, 8)`` works with ``widths[0] == 64``.
    """

    def __init__(
        self,
        widths: Sequence[int],
        activation: str = "relu",
        bias: bool = True,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.widths = _int_tuple(widths, "widths", min_len=2)
        make_activation(activation)  # validate before building anything
        self.activation = activation
        layers: list[nn.Module] = []
        with _seeded(seed):
            for i, (fan_in, fan_out) in enumerate(zip(self.widths[:-1], self.widths[1:],
                                                      strict=True)):
                if i > 0:
                    layers.append(make_activation(activation))
                layers.append(nn.Linear(fan_in, fan_out, bias=bias))
        self.net = nn.Sequential(*layers)

    @property
    def in_features(self) -> int:
        """Number of input features, ``widths[0]``."""
        return self.widths[0]

    @property
    def out_features(self) -> int:
        """Number of outputs, ``widths[-1]``."""
        return self.widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(n, *features)`` to ``(n, widths[-1])``."""
        if x.ndim > 2:
            x = x.flatten(1)
        if x.ndim == 0 or x.shape[-1] != self.widths[0]:
            raise ArgumentValueError(
                f"MLP expects {self.widths[0]} input features per sample, got input of shape "
                f"{tuple(x.shape)}"
            )
        return self.net(x)


class _ConvClassifier(nn.Module):
    """What the convolutional models share: the input adapter, ``num_classes`` and
    ``input_shape``."""

    def __init__(self, input_shape: Sequence[int], num_classes: int,
                 spatial_dims: int | None) -> None:
        super().__init__()
        self.adapter = _InputAdapter(input_shape, spatial_dims)
        self.num_classes = _positive_int(num_classes, "num_classes")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample, as given."""
        return self.adapter.input_shape


class SmallCNN(_ConvClassifier):
    """A few ``conv -> act`` layers, global pooling (or flattening) and a linear head.

    Args:
        input_shape: shape of one sample: ``(L,)`` or ``(C, L)`` for signals (Conv1d; MNIST-1D is
            ``(40,)``), ``(H, W)`` or ``(C, H, W)`` for images (Conv2d; digits are ``(8, 8)``).
        num_classes: number of outputs.
        channels: output channels of each conv layer (at least one layer).
        kernel_size: odd kernel size of every conv; padding ``kernel_size // 2`` keeps the
            length at stride 1.
        activation: nonlinearity after every conv, a key of :data:`ACTIVATIONS`.
        stride: stride of every conv.
        pool: ``"avg"`` for global average pooling or ``"flatten"`` to flatten the last
            feature map into the head.
        spatial_dims: 1 or 2 to override how a 2-element ``input_shape`` is read (see the
            module docstring); ``None`` infers it.
        seed: seeds the initialization; ``None`` uses the global generator.

    Output: logits of shape ``(n, num_classes)``.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (8, 16),
        kernel_size: int = 3,
        activation: str = "relu",
        *,
        stride: int = 1,
        pool: str = "avg",
        spatial_dims: int | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(input_shape, num_classes, spatial_dims)
        self.channels = _int_tuple(channels, "channels")
        kernel_size = _positive_int(kernel_size, "kernel_size")
        if kernel_size % 2 == 0:
            # Symmetric "same" padding needs an odd kernel; even kernels would grow the input.
            raise ArgumentValueError(f"kernel_size must be odd, got {kernel_size}")
        stride = _positive_int(stride, "stride")
        if pool not in ("avg", "flatten"):
            raise ArgumentValueError(f"pool must be 'avg' or 'flatten', got {pool!r}")
        make_activation(activation)
        self.pool = pool
        self.activation = activation
        dims = self.adapter.spatial_dims
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        padding = kernel_size // 2
        # With odd kernels and padding k // 2 every conv output has length >= 1.
        spatial = list(self.adapter.spatial)
        for _ in self.channels:
            spatial = [_conv_out(s, kernel_size, stride, padding) for s in spatial]
        self.feature_shape = (self.channels[-1], *spatial)
        head_in = self.channels[-1] if pool == "avg" else math.prod(self.feature_shape)
        layers: list[nn.Module] = []
        with _seeded(seed):
            c_in = self.adapter.in_channels
            for c_out in self.channels:
                layers += [conv(c_in, c_out, kernel_size, stride=stride, padding=padding),
                           make_activation(activation)]
                c_in = c_out
            self.features = nn.Sequential(*layers)
            self.head = nn.Linear(head_in, self.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a batch (see the class docstring for accepted shapes) to ``(n, num_classes)``."""
        h = self.features(self.adapter(x))
        h = _pool(h, self.adapter.spatial_dims) if self.pool == "avg" else h.flatten(1)
        return self.head(h)


class _ResidualBlock(nn.Module):
    """``x + bn2(conv2(act(bn1(conv1(x)))))``, with the BatchNorms optional."""

    def __init__(self, conv: type[nn.Module], norm: type[nn.Module] | None, width: int,
                 activation: str) -> None:
        super().__init__()
        self.conv1 = conv(width, width, 3, padding=1)
        self.norm1 = norm(width) if norm is not None else nn.Identity()
        self.act = make_activation(activation)
        self.conv2 = conv(width, width, 3, padding=1)
        self.norm2 = norm(width) if norm is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.norm2(self.conv2(self.act(self.norm1(self.conv1(x)))))


class SmallResNet(_ConvClassifier):
    """A stem conv, ``num_blocks`` residual blocks, global average pooling and a linear head.

    Each block computes ``x + conv(act(conv(x)))`` at constant width with 3-wide kernels and
    "same" padding; with ``batch_norm=True`` a BatchNorm follows each conv (stem included).

    Args:
        input_shape: shape of one sample, as for :class:`SmallCNN`.
        num_classes: number of outputs.
        width: channels of the stem and of every block.
        num_blocks: number of residual blocks (0 allowed: stem, pooling, head).
        activation: nonlinearity, a key of :data:`ACTIVATIONS`.
        batch_norm: add BatchNorm layers (off by default: BatchNorm couples the samples of a
            batch in training mode, which per-sample quantities usually must avoid; in eval
            mode it is a fixed affine map and works with vmap).
        spatial_dims: as for :class:`SmallCNN`.
        seed: seeds the initialization; ``None`` uses the global generator.

    Output: logits of shape ``(n, num_classes)``.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        width: int = 16,
        num_blocks: int = 2,
        activation: str = "relu",
        batch_norm: bool = False,
        *,
        spatial_dims: int | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(input_shape, num_classes, spatial_dims)
        self.width = _positive_int(width, "width")
        if isinstance(num_blocks, bool) or not is_integral(num_blocks) \
                or num_blocks < 0:
            raise ArgumentValueError(
                f"num_blocks must be a non-negative integer, got {num_blocks!r}")
        make_activation(activation)
        self.activation = activation
        self.batch_norm = bool(batch_norm)
        dims = self.adapter.spatial_dims
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        norm = (nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d) if batch_norm else None
        with _seeded(seed):
            self.stem = nn.Sequential(
                conv(self.adapter.in_channels, self.width, 3, padding=1),
                norm(self.width) if norm is not None else nn.Identity(),
                make_activation(activation),
            )
            self.blocks = nn.Sequential(
                *(_ResidualBlock(conv, norm, self.width, activation) for _ in range(num_blocks))
            )
            self.head = nn.Linear(self.width, self.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a batch (see :class:`SmallCNN` for accepted shapes) to ``(n, num_classes)``."""
        h = self.blocks(self.stem(self.adapter(x)))
        return self.head(_pool(h, self.adapter.spatial_dims))


# -- a small decoder-only transformer ------------------------------------------------------------
class _CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, h: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        B, T, D = h.shape
        q, k, v = self.qkv(h).split(D, dim=2)
        q, k, v = (t.reshape(B, T, self.n_head, D // self.n_head).transpose(1, 2)
                   for t in (q, k, v))
        mask = torch.ones(T, T, dtype=torch.bool, device=h.device).tril()
        if keep is not None:  # padded keys are never attended to
            mask = mask & keep[:, None, None, :].bool()
        out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(B, T, D))


class _Block(nn.Module):
    def __init__(self, d_model: int, n_head: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = _CausalSelfAttention(d_model, n_head)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(),
                                 nn.Linear(4 * d_model, d_model))

    def forward(self, h: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        h = h + self.attn(self.ln1(h), keep)
        return h + self.mlp(self.ln2(h))


class TinyGPT(nn.Module):
    """A GPT-style decoder: token and learned position embeddings, pre-LayerNorm blocks of
    causal multi-head self-attention and a GELU MLP, a final LayerNorm and an output layer tied
    to the token embedding (Radford et al. 2019, GPT-2's layout at toy size).

    ``forward(input_ids, attention_mask=None)`` maps ``(B, T)`` token ids to ``(B, T, vocab)``
    logits; ``attention_mask`` (1 = token, 0 = padding) keeps padded keys out of attention.
    Attention goes through ``F.scaled_dot_product_attention``, so on CPU and GPU it reaches the
    fused kernels; valleys' objectives detect that and use the math backend for curvature.
    Pair it with :func:`valleys.losses.next_token_losses` and
    :meth:`valleys.Objective.from_function`. Defaults: 2 layers, ``d_model = 32``.
    """

    def __init__(self, vocab_size: int = 64, *, d_model: int = 32, n_layer: int = 2,
                 n_head: int = 2, max_len: int = 32, seed: int | None = None) -> None:
        super().__init__()
        vocab_size = _positive_int(vocab_size, "vocab_size")
        d_model, n_layer = _positive_int(d_model, "d_model"), _positive_int(n_layer, "n_layer")
        n_head, max_len = _positive_int(n_head, "n_head"), _positive_int(max_len, "max_len")
        if d_model % n_head:
            raise ArgumentValueError(
                f"d_model = {d_model} must be a multiple of n_head = {n_head}")
        self.max_len = max_len
        with _seeded(seed):
            self.wte = nn.Embedding(vocab_size, d_model)
            self.wpe = nn.Embedding(max_len, d_model)
            self.blocks = nn.ModuleList(_Block(d_model, n_head) for _ in range(n_layer))
            self.ln_f = nn.LayerNorm(d_model)
            self.head = nn.Linear(d_model, vocab_size, bias=False)
            for module in self.modules():  # GPT-2's initialization scale
                if isinstance(module, nn.Linear | nn.Embedding):
                    nn.init.normal_(module.weight, std=0.02)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)
        self.head.weight = self.wte.weight  # weight tying

    def forward(self, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        T = input_ids.shape[1]
        if T > self.max_len:
            raise ArgumentValueError(f"sequences of length {T} exceed max_len = {self.max_len}")
        positions = torch.arange(T, device=input_ids.device)
        h = self.wte(input_ids) + self.wpe(positions)
        for block in self.blocks:
            h = block(h, attention_mask)
        return self.head(self.ln_f(h))
