r"""Input-smoothness of a network: input gradients, Sobolev seminorms, robustness.

Ma & Ying (2021), "On Linear Stability of SGD and Input-Smoothness of Neural Networks"
(NeurIPS 2021, arXiv 2105.13462), link the flatness of a minimum in *parameter* space to the
smoothness of the model in *input* space. The link is the multiplicative structure of the first
layer ``z₁ = W₁x + b₁``, ``f(x; θ) = g(z₁)``:

.. math::

    \frac{∂f_k}{∂W_1} = \frac{∂f_k}{∂z_1} x^\top, \qquad
    \Big\|\frac{∂f_k}{∂W_1}\Big\|_F = \Big\|\frac{∂f_k}{∂z_1}\Big\| \, \|x\|, \qquad
    ∇_x f_k = W_1^\top \frac{∂f_k}{∂z_1}.

This module measures the quantities involved:

* per-sample input Jacobians ``∇_x f(x_i)`` for every output (:func:`input_jacobians`) and
  input gradients of the loss ``∇_x ℓ_i`` (:func:`loss_input_gradients`), by
  ``vmap(jacrev(·))`` over the samples of a chunk;
* the coordinate-wise seminorm estimates of the authors' code (``get_gradW``/``get_gradx`` in
  ``ChaoMa93/Sobolev-Reg-of-SGD``), ``g_w(k)`` and ``g_x(k)``
  (:func:`parameter_gradient_norm`, :func:`input_gradient_norm`, :func:`coordinate_norm`), and
  Sobolev-type averages such as ``(1/n) Σ_i ‖∇_x f(x_i)‖_F²`` (:func:`input_smoothness`);
* the first-layer identity (:func:`first_layer_identity`) and the flatness bound it gives at
  an interpolating square-loss minimum (:func:`first_layer_bound`);
* accuracy under FGSM and PGD attacks in L2 and L∞ balls (:func:`adversarial_accuracy`,
  :func:`fgsm`, :func:`pgd`).

Every function takes either a :class:`~valleys.Objective` (its model, ``θ`` and data are used;
pass ``X`` to evaluate elsewhere) or a plain ``nn.Module`` with inputs ``X``. Models are
evaluated functionally with detached parameters, on the parameters' device and dtype; the model
is never modified and never put in train or eval mode. Models in train mode with BatchNorm,
InstanceNorm or dropout are refused, as by :class:`~valleys.Objective`.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev, vmap

from valleys._records import record_to_dict
from valleys.linalg import trace as _trace
from valleys.losses import LossFn, check_targets, resolve_loss
from valleys.models import MLP
from valleys.objective import Objective, _refuse_train_mode
from valleys.operators import ggn as _ggn
from valleys.operators import hessian as _hessian

__all__ = [
    "FirstLayerBound",
    "FirstLayerIdentity",
    "RobustnessResult",
    "SmoothnessReport",
    "adversarial_accuracy",
    "coordinate_norm",
    "fgsm",
    "find_first_layer",
    "first_layer_bound",
    "first_layer_identity",
    "input_gradient_norm",
    "input_jacobians",
    "input_smoothness",
    "loss_input_gradients",
    "parameter_gradient_norm",
    "parameter_jacobians",
    "pgd",
]

Source = Objective | nn.Module

NORMALIZATIONS = ("samples", "samples_outputs", "sum")
NORMS = ("linf", "l2")
ATTACKS = ("fgsm", "pgd")
_DEFAULT_CHUNK = 256
# Elements of a per-chunk Jacobian block kept in memory at once (2^24 ≈ 134 MB in float64).
_JACOBIAN_BUDGET = 1 << 24


# ------------------------------------------------------------------------------------------------
# Result records
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SmoothnessReport:
    """Input-smoothness summary of a model on a data set (Ma & Ying 2021).

    Attributes:
        n: number of samples.
        num_outputs: ``K``, outputs per sample (all output entries, flattened).
        k: order of the coordinate-wise norms ``g_x(k)``, ``g_w(k)``.
        normalization: how the sums in ``g_x``, ``g_w`` are normalized (see
            :func:`coordinate_norm`).
        g_x: ``g_x(k)``, coordinate-wise ℓ_{2k} norm of the input Jacobians.
        g_w: ``g_w(k)`` of the parameter Jacobians, or ``None`` when not computed.
        sobolev: ``(1/n) Σ_i ‖∇_x f(x_i)‖_F²`` (Frobenius over outputs and input entries),
            the squared Sobolev-type seminorm estimate. Equals ``g_x(1)²`` for ``"samples"``.
        sobolev_max: ``max_i ‖∇_x f(x_i)‖_F``.
        weighted_sobolev: ``(1/n) Σ_i ‖x_i‖² ‖∇_x f(x_i)‖_F²``, the left side of the
            first-layer bound (see :func:`first_layer_bound`).
        loss_sobolev: ``(1/n) Σ_i ‖∇_x ℓ_i‖²`` when targets and a loss were available, else
            ``None``.
    """

    n: int
    num_outputs: int
    k: float
    normalization: str
    g_x: float
    g_w: float | None
    sobolev: float
    sobolev_max: float
    weighted_sobolev: float
    loss_sobolev: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict of all fields."""
        return record_to_dict(self)


@dataclass(frozen=True, eq=False)
class FirstLayerIdentity:
    """The first-layer identity ``‖∂f_k/∂W₁‖_F = ‖∂f_k/∂z₁‖·‖x‖``, per sample and output.

    ``∂f_k/∂z₁`` is read off the parameter gradient as ``(∂f_k/∂W₁) x / ‖x‖²`` (it is set to 0
    for ``x = 0``). The identity holds exactly if and only if ``∂f_k/∂W₁`` is the rank-one
    matrix ``(∂f_k/∂z₁) xᵀ`` (equality case of Cauchy–Schwarz), which ``rank_one_error``
    measures; ``chain_rule_error`` measures ``∇_x f_k = W₁ᵀ ∂f_k/∂z₁``, which holds when the
    input enters the network only through the first layer.

    Attributes:
        first_layer: name of the first-layer weight.
        weight_grad_norms: ``(n, K)``, ``‖∂f_k(x_i)/∂W₁‖_F``.
        preactivation_grad_norms: ``(n, K)``, ``‖∂f_k(x_i)/∂z₁‖``.
        input_norms: ``(n,)``, ``‖x_i‖``.
        rank_one_error: ``max_{i,k} ‖∂f_k/∂W₁ − (∂f_k/∂z₁) x_iᵀ‖_F / max_{i,k} ‖∂f_k/∂W₁‖_F``.
        chain_rule_error: ``max_{i,k} ‖∇_x f_k − W₁ᵀ ∂f_k/∂z₁‖ / max_{i,k} ‖∇_x f_k‖``.
    """

    first_layer: str
    weight_grad_norms: torch.Tensor
    preactivation_grad_norms: torch.Tensor
    input_norms: torch.Tensor
    rank_one_error: float
    chain_rule_error: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict of all fields (tensors become nested lists)."""
        return record_to_dict(self)


@dataclass(frozen=True, eq=False)
class FirstLayerBound:
    """Both sides of the first-layer flatness bound (see :func:`first_layer_bound`).

    Attributes:
        lhs: ``(1/n) Σ_i ‖x_i‖² ‖∇_x f(x_i)‖_F²``.
        rhs: ``‖W₁‖₂² · tr(A)`` with ``A`` the Hessian (or GGN) of the objective.
        rhs_first_layer: ``‖W₁‖₂² · (1/n) Σ_i Σ_k ‖∂f_k(x_i)/∂W₁‖_F²``, the intermediate term
            (``lhs ≤ rhs_first_layer ≤ rhs`` when the bound applies).
        spectral_norm: ``‖W₁‖₂``, the largest singular value of the first-layer weight.
        trace: the estimate of ``tr(A)``.
        trace_stderr: its standard error (0 for the exact trace).
        trace_method: ``"exact"``, ``"hutch++"`` or ``"hutchinson"``.
        matrix: ``"hessian"`` or ``"ggn"``.
        max_residual: ``max_{i,k} |f_k(x_i) − y_ik|``.
        interpolating: ``max_residual <= interpolation_tol``.
        holds: ``lhs <= rhs``.
        first_layer: name of the first-layer weight.
        n: number of samples. num_outputs: ``K``.
        rank_one_error: see :class:`FirstLayerIdentity`; large values mean the named parameter
            does not multiply the input, and the bound does not apply.
        chain_rule_error: see :class:`FirstLayerIdentity`.
    """

    lhs: float
    rhs: float
    rhs_first_layer: float
    spectral_norm: float
    trace: float
    trace_stderr: float
    trace_method: str
    matrix: str
    max_residual: float
    interpolating: bool
    holds: bool
    first_layer: str
    n: int
    num_outputs: int
    rank_one_error: float
    chain_rule_error: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict of all fields."""
        return record_to_dict(self)


@dataclass(frozen=True, eq=False)
class RobustnessResult:
    """Accuracy under adversarial perturbations over a grid of radii.

    Attributes:
        radii: the radii ``ε``, in the order given.
        accuracies: accuracy at each radius. A sample counts as correct only if it is correct
            both clean and attacked (the unperturbed point lies in every ball). With
            ``cumulative=True`` a sample counts as broken at ``ε`` if the attack broke it at any
            radius ``≤ ε`` (a perturbation in a smaller ball lies in every larger one), so
            accuracies are non-increasing in ``ε``.
        raw_accuracies: accuracy of the attack run at each radius alone.
        clean_accuracy: accuracy on the unperturbed inputs.
        attack: ``"fgsm"`` or ``"pgd"``. norm: ``"linf"`` or ``"l2"``.
        steps: attack iterations (1 for FGSM).
        rel_step_size: step length as a fraction of ``ε`` (1 for FGSM).
        random_start: whether PGD started from a uniform random point of the ball.
        seed: seed of the random start.
        clamp: the input box ``(low, high)`` or ``None``.
        cumulative: see ``accuracies``.
        n: number of samples.
        wall_time: seconds spent.
    """

    radii: tuple[float, ...]
    accuracies: tuple[float, ...]
    raw_accuracies: tuple[float, ...]
    clean_accuracy: float
    attack: str
    norm: str
    steps: int
    rel_step_size: float
    random_start: bool
    seed: int | None
    clamp: tuple[float, float] | None
    cumulative: bool
    n: int
    wall_time: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict of all fields."""
        return record_to_dict(self)


# ------------------------------------------------------------------------------------------------
# Sources: an Objective or a plain model, evaluated functionally at a flat θ
# ------------------------------------------------------------------------------------------------


class _Source:
    """A model as a function ``forward(θ, X)`` of a flat θ, plus its data and loss."""

    def __init__(
        self,
        source: Source,
        X: torch.Tensor | None,
        Y: torch.Tensor | None,
        *,
        theta: torch.Tensor | None = None,
        loss: str | LossFn | None = None,
        allow_train_mode: bool = False,
    ) -> None:
        if isinstance(source, Objective):
            obj = source
            obj.require_single_process("valleys.smoothness")
            self.objective = obj
            self.model = obj.model
            self.names, self.shapes, self.numels = list(obj.names), obj.shapes, obj.numels
            self.dtype, self.device = obj.dtype, obj.device
            self.theta = (obj.parameters_vector() if theta is None else _checked_theta(obj, theta))
            self.forward_theta: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = obj.forward
            if loss is None:
                self.loss_name, self.loss_fn = obj.loss_name, obj.loss_fn
            else:
                self.loss_name, self.loss_fn = resolve_loss(loss)
        elif isinstance(source, nn.Module):
            if not allow_train_mode:
                _refuse_train_mode(source)
            self.objective = None
            self.model = source
            named = dict(source.named_parameters())
            self.names = [k for k, p in named.items() if p.requires_grad]
            variable = [named[k] for k in self.names]
            if len({(p.dtype, p.device) for p in variable}) > 1:
                raise TypeError("all trainable parameters must share one dtype and device")
            if variable:
                self.dtype, self.device = variable[0].dtype, variable[0].device
            elif X is not None:
                self.dtype, self.device = X.dtype, X.device
            else:
                self.dtype, self.device = torch.get_default_dtype(), torch.device("cpu")
            self.shapes = [p.shape for p in variable]
            self.numels = [p.numel() for p in variable]
            fixed = {k: v.detach() for k, v in named.items() if k not in set(self.names)}
            fixed.update({k: v.detach() for k, v in source.named_buffers()})
            self._fixed = fixed
            if theta is not None:
                raise TypeError("theta= is only accepted with an Objective; pass the model's "
                                "parameters by setting them on the model")
            self.theta = (torch.cat([p.detach().reshape(-1) for p in variable]) if variable
                          else torch.zeros(0, dtype=self.dtype, device=self.device))
            self.forward_theta = self._model_forward
            if loss is None:
                self.loss_name, self.loss_fn = None, None
            else:
                self.loss_name, self.loss_fn = resolve_loss(loss)
            if X is None:
                raise TypeError("with a plain nn.Module, pass the inputs X (or give an Objective)")
        else:
            raise TypeError(
                f"expected a valleys.Objective or a torch.nn.Module, got {type(source).__name__}"
            )
        self.theta = self.theta.detach()
        self.X, self.Y = _check_data(X, Y, self.dtype)

    @property
    def dim(self) -> int:
        return sum(self.numels)

    def _model_forward(self, theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(theta, self.numels)
        named = {k: t.view(s) for k, t, s in zip(self.names, pieces, self.shapes, strict=True)}
        return functional_call(self.model, {**self._fixed, **named}, (X,))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """Outputs at the source's θ (detached: no graph to the parameters)."""
        return self.forward_theta(self.theta, X)

    def batches(self, chunk_size: int | None, *, need_targets: bool = False
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Yield ``(X, Y)`` chunks (``Y`` may be None) of at most ``chunk_size`` samples."""
        step = _DEFAULT_CHUNK if chunk_size is None else chunk_size
        if self.X is not None:
            if need_targets and self.Y is None:
                raise ValueError("targets Y are needed for this quantity; pass Y")
            sources: Any = [(self.X, self.Y)]
        else:
            sources = self.objective.chunks()
        for X, Y in sources:
            for start in range(0, X.shape[0], step):
                yield (X[start:start + step].to(self.device),
                       None if Y is None else Y[start:start + step].to(self.device))

    @property
    def num_samples(self) -> int:
        return self.X.shape[0] if self.X is not None else self.objective.n

    def probe(self, X: torch.Tensor) -> torch.Tensor:
        """Run two samples through the model, turning shape errors into a ValueError."""
        try:
            with torch.no_grad():
                return self.forward(X[:2])
        except RuntimeError as err:
            raise ValueError(
                f"the model cannot be evaluated on inputs of shape {tuple(X.shape)} "
                f"(one sample: {tuple(X.shape[1:])}): {err}"
            ) from err


def _checked_theta(obj: Objective, theta: torch.Tensor) -> torch.Tensor:
    obj.check_vector(theta)
    return theta.to(obj.device)


def _check_data(
    X: torch.Tensor | None, Y: torch.Tensor | None, dtype: torch.dtype
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if X is None:
        if Y is not None:
            raise ValueError("targets Y were given without inputs X")
        return None, None
    if not isinstance(X, torch.Tensor):
        raise TypeError(f"X must be a torch tensor, got {type(X).__name__}")
    if X.ndim < 1 or X.shape[0] == 0:
        raise ValueError(f"X needs a leading batch dimension with at least one sample, got "
                         f"shape {tuple(X.shape)}")
    if not X.is_floating_point():
        raise TypeError(f"inputs must be floating point to be differentiated, got {X.dtype}")
    if X.dtype != dtype:
        raise TypeError(f"inputs are {X.dtype} but the model's parameters are {dtype}; convert "
                        f"one of them (X.to({dtype}) or model.to({X.dtype}))")
    if not torch.isfinite(X).all():
        raise ValueError("the inputs contain NaN or infinite values")
    if Y is not None:
        if not isinstance(Y, torch.Tensor):
            raise TypeError(f"Y must be a torch tensor, got {type(Y).__name__}")
        if Y.ndim < 1 or Y.shape[0] != X.shape[0]:
            raise ValueError(f"X and Y must have the same number of samples along dim 0, got "
                             f"X{tuple(X.shape)} and Y{tuple(Y.shape)}")
        if Y.is_floating_point() and Y.dtype != dtype:
            raise TypeError(f"targets are {Y.dtype} but the model's parameters are {dtype}")
    return X, Y


def _check_chunk(chunk_size: int | None) -> int | None:
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(
            chunk_size, numbers.Integral) or chunk_size <= 0):
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    return chunk_size


def _check_k(k: float) -> float:
    if isinstance(k, bool) or not isinstance(k, numbers.Real) or not math.isfinite(k) or k <= 0:
        raise ValueError(f"k must be a positive finite number, got {k!r}")
    return float(k)


def _check_normalization(normalization: str) -> str:
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    return normalization


# ------------------------------------------------------------------------------------------------
# Per-sample Jacobians
# ------------------------------------------------------------------------------------------------


def _input_jacobian_fn(src: _Source) -> Callable[[torch.Tensor], torch.Tensor]:
    def single(x: torch.Tensor) -> torch.Tensor:
        return src.forward(x.unsqueeze(0)).reshape(-1)

    return vmap(jacrev(single))


def _iter_input_jacobians(
    src: _Source, chunk_size: int | None, *, need_targets: bool = False
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]:
    """Yield ``(X, Y, J)`` per chunk with ``J`` of shape ``(chunk, K, *input_shape)``."""
    jac = _input_jacobian_fn(src)
    first = True
    for X, Y in src.batches(chunk_size, need_targets=need_targets):
        if first:
            src.probe(X)
            first = False
        with torch.no_grad():
            J = jac(X)
        yield X, Y, J


def input_jacobians(
    source: Source,
    X: torch.Tensor | None = None,
    *,
    theta: torch.Tensor | None = None,
    chunk_size: int | None = None,
    allow_train_mode: bool = False,
) -> torch.Tensor:
    """Per-sample input Jacobians ``∇_x f(x_i)`` of every output.

    ``J[i, k] = ∂f_k(x_i)/∂x``, computed as ``vmap(jacrev(f))`` over the samples of each chunk
    (each sample passes through the model as a batch of one). Outputs with more than one
    dimension per sample are flattened to ``K`` entries.

    Args:
        source: a :class:`~valleys.Objective` (its model at ``θ``; its data unless ``X`` is
            given) or an ``nn.Module`` (then ``X`` is required).
        X: inputs ``(n, *input_shape)``; dtype must match the parameters.
        theta: flat parameters (Objective only; default: the model's current ones).
        chunk_size: samples per vmap call (default 256); bounds memory at
            ``chunk · K · input size``.
        allow_train_mode: accept a plain model with train-mode BatchNorm/dropout.

    Returns:
        A tensor of shape ``(n, K, *input_shape)`` on the parameters' device.
    """
    src = _Source(source, X, None, theta=theta, allow_train_mode=allow_train_mode)
    _check_chunk(chunk_size)
    return torch.cat([J for _, _, J in _iter_input_jacobians(src, chunk_size)])


def loss_input_gradients(
    source: Source,
    X: torch.Tensor | None = None,
    Y: torch.Tensor | None = None,
    *,
    loss: str | LossFn | None = None,
    theta: torch.Tensor | None = None,
    chunk_size: int | None = None,
    allow_train_mode: bool = False,
) -> torch.Tensor:
    """Per-sample input gradients of the loss, ``∇_x ℓ(f(x_i), y_i)``.

    Args:
        source: an Objective (its loss and data by default) or an ``nn.Module``.
        X, Y: inputs and targets (required with a plain model).
        loss: ``"mse"``, ``"ce"`` or a per-sample callable (see :mod:`valleys.losses`);
            required with a plain model, defaults to the objective's loss.
        theta, chunk_size, allow_train_mode: as for :func:`input_jacobians`.

    Returns:
        A tensor of shape ``(n, *input_shape)``.
    """
    src = _Source(source, X, Y, theta=theta, loss=loss, allow_train_mode=allow_train_mode)
    _check_chunk(chunk_size)
    if src.loss_fn is None:
        raise ValueError("loss_input_gradients needs a loss: pass loss='mse', 'ce' or a callable")
    return torch.cat(list(_iter_loss_input_gradients(src, chunk_size)))


def _iter_loss_input_gradients(src: _Source, chunk_size: int | None) -> Iterator[torch.Tensor]:
    def single(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return src.loss_fn(src.forward(x.unsqueeze(0)), y.unsqueeze(0))[0]

    per_sample = vmap(jacrev(single))
    first = True
    for X, Y in src.batches(chunk_size, need_targets=True):
        if first:
            out = src.probe(X)
            if src.loss_name in ("mse", "ce"):
                check_targets(src.loss_name, out, Y[:2])
            first = False
        with torch.no_grad():
            yield per_sample(X, Y)


def _splice(theta: torch.Tensor, start: int, piece: torch.Tensor) -> torch.Tensor:
    return torch.cat([theta[:start], piece.reshape(-1), theta[start + piece.numel():]])


def _iter_parameter_jacobians(
    src: _Source, chunk_size: int | None, *, name: str | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]:
    """Yield ``(X, Y, G)`` with ``G`` the per-sample Jacobian of outputs w.r.t. θ (or one
    named parameter), shape ``(chunk, K, p)`` (or ``(chunk, K, *param_shape)``)."""
    if name is None:
        start, shape, theta = 0, (src.dim,), src.theta
        numel = src.dim
    else:
        idx = src.names.index(name)
        start = sum(src.numels[:idx])
        shape, numel = tuple(src.shapes[idx]), src.numels[idx]
        theta = src.theta

    def single(piece: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        full = piece if name is None else _splice(theta, start, piece)
        return src.forward_theta(full, x.unsqueeze(0)).reshape(-1)

    jac = vmap(jacrev(single), in_dims=(None, 0))
    piece = theta[start:start + numel].reshape(shape)
    first = True
    for Xb, Yb in src.batches(chunk_size):
        if first:
            K = src.probe(Xb)[0].numel()
            step = chunk_size or max(1, min(_DEFAULT_CHUNK, _JACOBIAN_BUDGET // max(1, K * numel)))
            first = False
        for s in range(0, Xb.shape[0], step):
            X = Xb[s:s + step]
            with torch.no_grad():
                G = jac(piece, X)
            yield X, None if Yb is None else Yb[s:s + step], G


def parameter_jacobians(
    source: Source,
    X: torch.Tensor | None = None,
    *,
    theta: torch.Tensor | None = None,
    chunk_size: int | None = None,
    allow_train_mode: bool = False,
) -> torch.Tensor:
    """Per-sample parameter Jacobians of the outputs, ``∂f_k(x_i)/∂θ``.

    ``θ`` is the objective's parameter vector (or every trainable parameter of a plain model,
    in ``named_parameters`` order). Mind the memory: ``n · K · p`` entries.

    Returns:
        A tensor of shape ``(n, K, p)``.
    """
    src = _Source(source, X, None, theta=theta, allow_train_mode=allow_train_mode)
    _check_chunk(chunk_size)
    return torch.cat([G for _, _, G in _iter_parameter_jacobians(src, chunk_size)])


# ------------------------------------------------------------------------------------------------
# Coordinate-wise seminorms g_w(k), g_x(k)
# ------------------------------------------------------------------------------------------------


class _PowerSum:
    """Overflow-safe running ``Σ |a|^q``, kept as ``m^q · s`` with ``m`` the running max."""

    def __init__(self, q: float) -> None:
        self.q, self.m, self.s, self.count = q, 0.0, 0.0, 0

    def add(self, a: torch.Tensor) -> None:
        a = a.detach().abs()
        if a.numel() == 0:
            return
        m_new = float(a.max())
        M = max(self.m, m_new)
        if M > 0:
            part = float((a / M).pow(self.q).sum(dtype=torch.float64))
            self.s = self.s * (self.m / M) ** self.q + part if self.m > 0 else part
            self.m = M

    def root(self, count: float) -> float:
        """``(Σ|a|^q / count)^{1/q}``."""
        if self.m == 0:
            return 0.0
        return self.m * (self.s / count) ** (1.0 / self.q)


def _normalizer(normalization: str, n: int, K: int) -> float:
    return {"samples": float(n), "samples_outputs": float(n * K), "sum": 1.0}[normalization]


def coordinate_norm(
    jacobians: torch.Tensor, k: float = 1, *, normalization: str = "samples"
) -> float:
    """Coordinate-wise ℓ_{2k} seminorm estimate of per-sample Jacobians (Ma & Ying 2021).

    .. math::  g(k) = \\Big(\\frac{1}{N} \\sum_{i=1}^n \\sum_{j=1}^K \\sum_c
               |J_{i,j,c}|^{2k}\\Big)^{1/(2k)}

    with ``J[i, j, c] = ∂f_j(x_i)/∂c`` over the coordinates ``c`` of the inputs (``g_x``) or
    of the parameters (``g_w``). This is ``get_gradx``/``get_gradW`` of the authors' code
    (``ChaoMa93/Sobolev-Reg-of-SGD``, ``src/utils.py``): a sum over output logits ``j`` and
    coordinates, divided by the number of samples. The normalization ``N`` is a parameter:

    * ``"samples"``: ``N = n``, the authors' convention (default);
    * ``"samples_outputs"``: ``N = n·K``, an average over outputs too (comparable across K);
    * ``"sum"``: ``N = 1``.

    ``|·|`` makes non-integer ``k`` well defined (for integer ``k`` the authors' ``g**(2k)``
    is the same). For ``k = 1`` and ``"samples"``, ``g(1)² = (1/n) Σ_i ‖J_i‖_F²``.

    Args:
        jacobians: ``(n, K, ...)`` per-sample Jacobians.
        k: positive order.
        normalization: ``"samples"``, ``"samples_outputs"`` or ``"sum"``.

    Returns:
        ``g(k)`` as a float.
    """
    k = _check_k(k)
    _check_normalization(normalization)
    if not isinstance(jacobians, torch.Tensor) or jacobians.ndim < 2:
        raise ValueError("jacobians must be a tensor of shape (n, K, ...) with n, K >= 1")
    acc = _PowerSum(2 * k)
    acc.add(jacobians)
    n, K = jacobians.shape[0], jacobians.shape[1]
    return acc.root(_normalizer(normalization, n, K))


def input_gradient_norm(
    source: Source,
    X: torch.Tensor | None = None,
    *,
    k: float = 1,
    normalization: str = "samples",
    theta: torch.Tensor | None = None,
    chunk_size: int | None = None,
    allow_train_mode: bool = False,
) -> float:
    """``g_x(k)``: the coordinate-wise ℓ_{2k} norm of the input Jacobians (Ma & Ying 2021).

    ``g_x(k) = ((1/N) Σ_i Σ_j Σ_c |∂f_j(x_i)/∂x_c|^{2k})^{1/(2k)}``, accumulated chunk by chunk
    without storing the Jacobians; see :func:`coordinate_norm` for ``N``. Ma & Ying show that
    linearly stable minima of SGD have small ``g_x`` (a Sobolev seminorm of ``f`` in ``x``).
    """
    src = _Source(source, X, None, theta=theta, allow_train_mode=allow_train_mode)
    return _jacobian_norm(_iter_input_jacobians, src, k, normalization, chunk_size)


def parameter_gradient_norm(
    source: Source,
    X: torch.Tensor | None = None,
    *,
    k: float = 1,
    normalization: str = "samples",
    theta: torch.Tensor | None = None,
    chunk_size: int | None = None,
    allow_train_mode: bool = False,
) -> float:
    """``g_w(k)``: the coordinate-wise ℓ_{2k} norm of the parameter Jacobians (Ma & Ying 2021).

    ``g_w(k) = ((1/N) Σ_i Σ_j Σ_c |∂f_j(x_i)/∂θ_c|^{2k})^{1/(2k)}`` over the objective's ``θ``
    (all trainable parameters of a plain model, as in the authors' ``get_gradW``); see
    :func:`coordinate_norm` for ``N``. For the ``"mse"`` convention at an interpolating
    minimum, ``g_w(1)² = tr(H)`` with ``"samples"``.
    """
    src = _Source(source, X, None, theta=theta, allow_train_mode=allow_train_mode)
    return _jacobian_norm(_iter_parameter_jacobians, src, k, normalization, chunk_size)


def _jacobian_norm(iterate, src, k: float, normalization: str, chunk_size) -> float:
    """The coordinate-wise ℓ_{2k} norm of the Jacobians ``iterate`` yields, chunk by chunk."""
    k = _check_k(k)
    _check_normalization(normalization)
    _check_chunk(chunk_size)
    acc, K = _PowerSum(2 * k), 1
    for _, _, J in iterate(src, chunk_size):
        acc.add(J)
        K = J.shape[1]
    return acc.root(_normalizer(normalization, src.num_samples, K))


def input_smoothness(
    source: Source,
    X: torch.Tensor | None = None,
    Y: torch.Tensor | None = None,
    *,
    k: float = 1,
    normalization: str = "samples",
    parameters: bool = True,
    loss: str | LossFn | None = None,
    theta: torch.Tensor | None = None,
    chunk_size: int | None = None,
    allow_train_mode: bool = False,
) -> SmoothnessReport:
    """Input-smoothness summary: ``g_x(k)``, ``g_w(k)`` and Sobolev-type averages.

    Computes, in one pass over the input Jacobians ``J_i = ∇_x f(x_i)`` (Ma & Ying 2021):
    ``g_x(k)``; ``(1/n) Σ_i ‖J_i‖_F²``; ``max_i ‖J_i‖_F``; ``(1/n) Σ_i ‖x_i‖² ‖J_i‖_F²``;
    with targets and a loss also ``(1/n) Σ_i ‖∇_x ℓ_i‖²``; and, if ``parameters``, ``g_w(k)``
    (a second pass over per-sample parameter Jacobians, ``chunk · K · p`` memory).

    Args:
        source, X: as for :func:`input_jacobians`.
        Y: targets (optional; an Objective's own data brings its targets).
        k, normalization: see :func:`coordinate_norm`.
        parameters: also compute ``g_w(k)``.
        loss: loss for ``loss_sobolev`` (default: the objective's; ``None`` with a plain model
            skips it).
        theta, chunk_size, allow_train_mode: as for :func:`input_jacobians`.
    """
    k = _check_k(k)
    _check_normalization(normalization)
    _check_chunk(chunk_size)
    src = _Source(source, X, Y, theta=theta, loss=loss, allow_train_mode=allow_train_mode)
    acc = _PowerSum(2 * k)
    sob = weighted = 0.0
    sob_max = 0.0
    K = 1
    for Xc, _, J in _iter_input_jacobians(src, chunk_size):
        acc.add(J)
        K = J.shape[1]
        sq = J.reshape(J.shape[0], -1).pow(2).sum(1, dtype=torch.float64)
        xsq = Xc.reshape(Xc.shape[0], -1).pow(2).sum(1, dtype=torch.float64)
        sob += float(sq.sum())
        weighted += float((sq * xsq).sum())
        sob_max = max(sob_max, float(sq.max().sqrt()))
    n = src.num_samples
    loss_sob = None
    has_targets = src.Y is not None or (src.X is None and src.objective is not None)
    if src.loss_fn is not None and has_targets:
        loss_sob = sum(float(g.reshape(g.shape[0], -1).pow(2).sum(dtype=torch.float64))
                       for g in _iter_loss_input_gradients(src, chunk_size)) / n
    g_w = None
    if parameters:
        acc_w = _PowerSum(2 * k)
        for _, _, G in _iter_parameter_jacobians(src, chunk_size):
            acc_w.add(G)
        g_w = acc_w.root(_normalizer(normalization, n, K))
    return SmoothnessReport(
        n=n, num_outputs=K, k=k, normalization=normalization,
        g_x=acc.root(_normalizer(normalization, n, K)), g_w=g_w, sobolev=sob / n,
        sobolev_max=sob_max, weighted_sobolev=weighted / n, loss_sobolev=loss_sob,
    )


# ------------------------------------------------------------------------------------------------
# The first layer
# ------------------------------------------------------------------------------------------------

# Parameter-free modules that may precede the first layer without changing the input's values.
_PASS_THROUGH = (nn.Flatten, nn.Identity)


def _leaves(seq: nn.Sequential, prefix: str) -> Iterator[tuple[str, nn.Module]]:
    """The modules of a (nested) Sequential in execution order, with their paths."""
    for name, child in seq.named_children():
        if isinstance(child, nn.Sequential):
            yield from _leaves(child, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", child


def _first_linear(seq: nn.Sequential, prefix: str) -> str | None:
    for path, module in _leaves(seq, prefix):
        if isinstance(module, nn.Linear):
            return f"{path}.weight"
        if not isinstance(module, _PASS_THROUGH):
            return None  # anything else (an activation, a conv, ...) comes before any Linear
    return None


def find_first_layer(source: Source, first_layer: str | None = None) -> str:
    """Name of the first-layer weight ``W₁``, the parameter that multiplies the input.

    For a bare ``nn.Linear`` it is its weight. For an ``nn.Sequential`` (possibly nested, with
    ``nn.Flatten``/``nn.Identity`` in front) and :class:`valleys.models.MLP` it is the weight of
    the first ``nn.Linear``. For other models name it, e.g. ``first_layer="net.0.weight"``; the
    name must be a 2-D parameter of the objective's ``θ``. Whether it really multiplies the raw
    input is checked numerically by :func:`first_layer_identity` (``rank_one_error`` and
    ``chain_rule_error``).

    Raises:
        ValueError: when it cannot be identified, is unknown, not 2-D or not part of ``θ``.
    """
    model = source.model if isinstance(source, Objective) else source
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an Objective or nn.Module, got {type(source).__name__}")
    named = dict(model.named_parameters())
    if first_layer is None:
        if isinstance(model, nn.Linear):
            first_layer = "weight"
        elif isinstance(model, MLP):
            first_layer = _first_linear(model.net, "net.")
        elif isinstance(model, nn.Sequential):
            first_layer = _first_linear(model, "")
        if first_layer is None:
            raise ValueError(
                f"cannot identify the first layer of a {type(model).__name__} (automatic only "
                "for nn.Sequential and valleys.models.MLP starting with nn.Linear); name the "
                "weight that multiplies the input, e.g. first_layer='net.0.weight'"
            )
    if not isinstance(first_layer, str):
        raise TypeError(f"first_layer must be a parameter name, got {type(first_layer).__name__}")
    if first_layer not in named:
        raise ValueError(f"first_layer {first_layer!r} is not a parameter of the model; "
                         f"parameters: {list(named)[:6]}{' ...' if len(named) > 6 else ''}")
    if named[first_layer].ndim != 2:
        raise ValueError(f"first_layer {first_layer!r} must be a 2-D weight (out, in), got shape "
                         f"{tuple(named[first_layer].shape)}")
    names = source.names if isinstance(source, Objective) else [
        k for k, p in named.items() if p.requires_grad]
    if first_layer not in names:
        raise ValueError(f"first_layer {first_layer!r} is not part of θ (frozen or excluded by "
                         "params=); the bound needs its curvature")
    return first_layer


def _first_layer_pass(
    src: _Source, name: str, chunk_size: int | None
) -> Iterator[dict[str, torch.Tensor]]:
    """Per chunk: the W₁-Jacobians, input Jacobians and the derived per-sample quantities."""
    idx = src.names.index(name)
    start = sum(src.numels[:idx])
    W = src.theta[start:start + src.numels[idx]].reshape(src.shapes[idx])
    X0, _ = next(src.batches(1))
    if X0[0].numel() != W.shape[1]:
        raise ValueError(f"first_layer {name!r} has input dimension {W.shape[1]} but a sample "
                         f"has {X0[0].numel()} entries; name the weight that multiplies the "
                         "input")
    jac_x = _input_jacobian_fn(src)
    for X, Y, G in _iter_parameter_jacobians(src, chunk_size, name=name):  # (c, K, h, d)
        x = X.reshape(X.shape[0], -1)
        with torch.no_grad():
            Jx = jac_x(X).reshape(X.shape[0], G.shape[1], -1)  # (c, K, d)
        xsq = (x * x).sum(1)
        safe = torch.where(xsq > 0, xsq, torch.ones_like(xsq))
        g = torch.einsum("ckhd,cd->ckh", G, x) / safe[:, None, None]  # ∂f/∂z₁
        g = torch.where((xsq > 0)[:, None, None], g, torch.zeros_like(g))
        rank_one = G - g[..., None] * x[:, None, None, :]
        chain = Jx - g @ W
        yield {
            "X": X, "Y": Y, "x": x, "G_norm": G.flatten(2).norm(dim=2), "g_norm": g.norm(dim=2),
            "x_norm": xsq.sqrt(), "Jx": Jx, "rank_one": rank_one.flatten(2).norm(dim=2),
            "chain": chain.norm(dim=2), "Jx_norm": Jx.norm(dim=2), "W": W,
        }


def _rel(err: float, scale: float) -> float:
    return err / scale if scale > 0 else err


def first_layer_identity(
    source: Source,
    X: torch.Tensor | None = None,
    *,
    first_layer: str | None = None,
    theta: torch.Tensor | None = None,
    chunk_size: int | None = None,
    allow_train_mode: bool = False,
) -> FirstLayerIdentity:
    """Check the multiplicative first-layer identity of Ma & Ying (2021) per sample and output.

    For a first layer ``z₁ = W₁x + b₁``: ``∂f_k/∂W₁ = (∂f_k/∂z₁) xᵀ`` (rank one), hence
    ``‖∂f_k/∂W₁‖_F = ‖∂f_k/∂z₁‖ · ‖x‖`` and ``∇_x f_k = W₁ᵀ ∂f_k/∂z₁``. The W₁-block of the
    per-sample parameter Jacobians comes from ``vmap(jacrev(·))``; see
    :class:`FirstLayerIdentity` for what is reported.

    Args:
        source, X, theta, chunk_size, allow_train_mode: as for :func:`input_jacobians`.
        first_layer: name of ``W₁`` (see :func:`find_first_layer`).
    """
    _check_chunk(chunk_size)
    src = _Source(source, X, None, theta=theta, allow_train_mode=allow_train_mode)
    name = find_first_layer(source if isinstance(source, Objective) else src.model, first_layer)
    parts = list(_first_layer_pass(src, name, chunk_size))
    G_norm = torch.cat([p["G_norm"] for p in parts])
    Jx_norm = torch.cat([p["Jx_norm"] for p in parts])
    return FirstLayerIdentity(
        first_layer=name,
        weight_grad_norms=G_norm,
        preactivation_grad_norms=torch.cat([p["g_norm"] for p in parts]),
        input_norms=torch.cat([p["x_norm"] for p in parts]),
        rank_one_error=_rel(max(float(p["rank_one"].max()) for p in parts), float(G_norm.max())),
        chain_rule_error=_rel(max(float(p["chain"].max()) for p in parts), float(Jx_norm.max())),
    )


def first_layer_bound(
    objective: Objective,
    theta: torch.Tensor | None = None,
    *,
    first_layer: str | None = None,
    matrix: str = "hessian",
    trace_method: str = "auto",
    num_matvecs: int = 100,
    seed: int | None = 0,
    interpolation_tol: float = 1e-6,
    chunk_size: int | None = None,
) -> FirstLayerBound:
    """Both sides of the first-layer flatness bound of Ma & Ying (2021) for the square loss.

    With the ``"mse"`` convention ``ℓ_i = ½ Σ_{k=1}^K (f_k(x_i) − y_ik)²`` the Hessian is
    ``H = (1/n) Σ_i J_iᵀ J_i + (1/n) Σ_i Σ_k r_ik ∇²f_k(x_i)`` with ``J_i = ∂f(x_i)/∂θ``
    (``K × p``) and residuals ``r_ik``; the first term is the GGN. At an interpolating minimum
    ``r = 0``, so ``tr(H) = tr(GGN) = (1/n) Σ_i ‖J_i‖_F² ≥ (1/n) Σ_i Σ_k ‖∂f_k(x_i)/∂W₁‖_F²``.
    The first-layer identity gives ``‖∂f_k/∂W₁‖_F = ‖g_ik‖ ‖x_i‖`` and
    ``‖∇_x f_k(x_i)‖ = ‖W₁ᵀ g_ik‖ ≤ ‖W₁‖₂ ‖g_ik‖`` with ``g_ik = ∂f_k/∂z₁``. Hence, with
    constant exactly 1 for this convention,

    .. math::  \\frac1n \\sum_i \\|x_i\\|^2 \\|∇_x f(x_i)\\|_F^2
               \\;\\le\\; \\|W_1\\|_2^2 \\cdot \\frac1n \\sum_i\\sum_k
               \\Big\\|\\frac{∂f_k(x_i)}{∂W_1}\\Big\\|_F^2
               \\;\\le\\; \\|W_1\\|_2^2\\, \\mathrm{tr}(H).

    ``‖·‖_F`` sums over the ``K`` outputs. Under PyTorch's ``MSELoss`` (mean over outputs, no
    ½) the Hessian is ``2/K`` times this one, so the constant becomes ``K/2``. With
    ``matrix="ggn"`` the bound holds at every θ (``tr(GGN) = (1/n) Σ_i ‖J_i‖_F²``); with
    ``matrix="hessian"`` only where the residual term vanishes (``interpolating``). It needs the
    input to enter only through ``W₁`` (reported as ``chain_rule_error``).

    Args:
        objective: an Objective with loss ``"mse"``.
        theta: flat parameters (default: the model's current ones).
        first_layer: name of ``W₁`` (see :func:`find_first_layer`).
        matrix: ``"hessian"`` (default) or ``"ggn"``.
        trace_method: ``"exact"``, ``"hutch++"``, ``"hutchinson"`` or ``"auto"`` (exact up to
            2000 parameters, Hutch++ above); see :func:`valleys.trace`.
        num_matvecs, seed: for the stochastic trace methods.
        interpolation_tol: ``interpolating`` means ``max_{i,k} |f_k(x_i) − y_ik| <=`` this.
        chunk_size: samples per Jacobian block (default: sized to about 2^24 entries).

    Returns:
        A :class:`FirstLayerBound`.
    """
    if not isinstance(objective, Objective):
        raise TypeError(f"first_layer_bound needs a valleys.Objective, got "
                        f"{type(objective).__name__}")
    if objective.loss_name != "mse":
        raise ValueError(f"the first-layer bound is derived for the square loss 'mse' "
                         f"(½ Σ_k (f_k − y_k)²); the objective uses {objective.loss_name!r}")
    if matrix not in ("hessian", "ggn"):
        raise ValueError(f"matrix must be 'hessian' or 'ggn', got {matrix!r}")
    if trace_method not in ("auto", "exact", "hutch++", "hutchinson"):
        raise ValueError(f"unknown trace_method {trace_method!r}")
    if not (isinstance(interpolation_tol, numbers.Real) and interpolation_tol >= 0):
        raise ValueError(f"interpolation_tol must be >= 0, got {interpolation_tol!r}")
    _check_chunk(chunk_size)
    src = _Source(objective, None, None, theta=theta)
    name = find_first_layer(objective, first_layer)

    lhs = first = 0.0
    max_res = 0.0
    rank_one = chain = G_max = Jx_max = 0.0
    K = 1
    W = None
    for part in _first_layer_pass(src, name, chunk_size):
        W, K = part["W"], part["G_norm"].shape[1]
        xsq = part["x_norm"].double() ** 2
        lhs += float((xsq * part["Jx"].double().pow(2).sum((1, 2))).sum())
        first += float(part["G_norm"].double().pow(2).sum())
        rank_one, chain = max(rank_one, float(part["rank_one"].max())), max(
            chain, float(part["chain"].max()))
        G_max, Jx_max = max(G_max, float(part["G_norm"].max())), max(
            Jx_max, float(part["Jx_norm"].max()))
        with torch.no_grad():
            out = src.forward(part["X"])
        max_res = max(max_res, float((out - part["Y"]).abs().max()))
    n = objective.n
    lhs, first = lhs / n, first / n
    spectral = float(torch.linalg.matrix_norm(W.double(), ord=2))
    op = (_hessian if matrix == "hessian" else _ggn)(objective, src.theta)
    method = trace_method
    if method == "auto":
        method = "exact" if objective.dim <= 2000 else "hutch++"
    tr = _trace(op, method, num_matvecs=num_matvecs, seed=seed)
    rhs = spectral**2 * tr.value
    return FirstLayerBound(
        lhs=lhs, rhs=rhs, rhs_first_layer=spectral**2 * first, spectral_norm=spectral,
        trace=tr.value, trace_stderr=tr.stderr, trace_method=method, matrix=matrix,
        max_residual=max_res, interpolating=max_res <= interpolation_tol, holds=lhs <= rhs,
        first_layer=name, n=n, num_outputs=K, rank_one_error=_rel(rank_one, G_max),
        chain_rule_error=_rel(chain, Jx_max),
    )


# ------------------------------------------------------------------------------------------------
# Adversarial robustness
# ------------------------------------------------------------------------------------------------


def _labels(Y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Integer labels from int labels or one-hot/probability targets (argmax)."""
    if Y.is_floating_point():
        if Y.ndim != 2 or Y.shape[1] != num_classes:
            raise ValueError(f"float targets must be one-hot/probabilities of shape (n, "
                             f"{num_classes}), got {tuple(Y.shape)}")
        return Y.argmax(dim=1)
    if Y.dtype == torch.bool or Y.ndim != 1:
        raise ValueError(f"integer labels must have shape (n,), got {tuple(Y.shape)} "
                         f"({Y.dtype})")
    if Y.numel() and (int(Y.min()) < 0 or int(Y.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got "
                         f"[{int(Y.min())}, {int(Y.max())}]")
    return Y.long()


def _check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return norm


def _check_eps(eps: Any, what: str = "radius") -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not math.isfinite(eps) \
            or eps < 0:
        raise ValueError(f"{what} must be a non-negative finite number, got {eps!r}")
    return float(eps)


def _check_clamp(clamp: Any, X: torch.Tensor) -> tuple[float, float] | None:
    if clamp is None:
        return None
    if not (isinstance(clamp, Sequence) and len(clamp) == 2
            and all(isinstance(c, numbers.Real) for c in clamp)):
        raise TypeError(f"clamp must be a pair (low, high) of numbers or None, got {clamp!r}")
    lo, hi = float(clamp[0]), float(clamp[1])
    if not lo < hi:
        raise ValueError(f"clamp needs low < high, got {clamp!r}")
    if float(X.min()) < lo or float(X.max()) > hi:
        raise ValueError(f"the inputs lie outside the clamp box [{lo}, {hi}]")
    return lo, hi


def _per_sample_norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    flat = t.reshape(t.shape[0], -1)
    n = flat.abs().amax(dim=1) if norm == "linf" else flat.norm(dim=1)
    return n.reshape(-1, *([1] * (t.ndim - 1)))


def _ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent unit direction for the norm: sign(g) (L∞) or g/‖g‖ (L2)."""
    if norm == "linf":
        return grad.sign()
    n = _per_sample_norm(grad, "l2")
    return torch.where(n > 0, grad / torch.where(n > 0, n, torch.ones_like(n)),
                       torch.zeros_like(grad))


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    n = _per_sample_norm(delta, "l2")
    scale = torch.where(n > eps, eps / torch.where(n > 0, n, torch.ones_like(n)),
                        torch.ones_like(n))
    return delta * scale


def _clamped(x: torch.Tensor, clamp: tuple[float, float] | None) -> torch.Tensor:
    return x if clamp is None else x.clamp(clamp[0], clamp[1])


def _loss_grad(forward: Callable, x: torch.Tensor, labels: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(∇_x Σ_i CE(f(x_i), y_i), logits)``."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = forward(x)
        loss = F.cross_entropy(logits, labels, reduction="sum")
        (g,) = torch.autograd.grad(loss, x)
    return g, logits.detach()


def _fgsm_batch(forward: Callable, X: torch.Tensor, labels: torch.Tensor, eps: float,
                norm: str, clamp: tuple[float, float] | None) -> torch.Tensor:
    if eps == 0:
        return X.clone()
    g, _ = _loss_grad(forward, X, labels)
    return _clamped(X + eps * _ascent_direction(g, norm), clamp).detach()


def _random_start(X: torch.Tensor, eps: float, norm: str, gen: torch.Generator) -> torch.Tensor:
    if norm == "linf":
        u = torch.rand(X.shape, generator=gen, dtype=X.dtype, device=X.device)
        return (2 * u - 1) * eps
    d = X[0].numel()
    z = torch.randn(X.shape, generator=gen, dtype=X.dtype, device=X.device)
    z = z / _per_sample_norm(z, "l2").clamp_min(torch.finfo(X.dtype).tiny)
    r = torch.rand((X.shape[0],), generator=gen, dtype=X.dtype, device=X.device) ** (1.0 / d)
    return z * (eps * r).reshape(-1, *([1] * (X.ndim - 1)))


def _pgd_batch(forward: Callable, X: torch.Tensor, labels: torch.Tensor, eps: float, norm: str,
               steps: int, rel_step: float, random_start: bool, gen: torch.Generator | None,
               clamp: tuple[float, float] | None) -> torch.Tensor:
    if eps == 0:
        return X.clone()
    alpha = rel_step * eps
    delta = _random_start(X, eps, norm, gen) if random_start else torch.zeros_like(X)
    x_adv = _clamped(X + delta, clamp)
    best = x_adv.clone()
    found = torch.zeros(X.shape[0], dtype=torch.bool, device=X.device)
    shape = (-1, *([1] * (X.ndim - 1)))
    for _ in range(steps):
        g, logits = _loss_grad(forward, x_adv, labels)
        new = (logits.argmax(1) != labels) & ~found
        best = torch.where(new.reshape(shape), x_adv, best)
        found |= new
        delta = _project(x_adv + alpha * _ascent_direction(g, norm) - X, eps, norm)
        x_adv = _clamped(X + delta, clamp).detach()
    # Keep the first iterate that fooled the model; otherwise the last one.
    best = torch.where(found.reshape(shape), best, x_adv)
    return best.detach()


def _attack_setup(source, X, Y, theta, allow_train_mode, norm, clamp):
    src = _Source(source, X, Y, theta=theta, allow_train_mode=allow_train_mode)
    _check_norm(norm)
    if src.X is None:
        Xs, Ys = zip(*[(a, b) for a, b in src.batches(None)], strict=True)
        Xall, Yall = torch.cat(Xs), torch.cat(Ys)
    else:
        if src.Y is None:
            raise ValueError("attacks need targets Y (int labels or one-hot targets)")
        Xall, Yall = src.X.to(src.device), src.Y.to(src.device)
    out = src.probe(Xall)
    if out.ndim != 2:
        raise ValueError(f"attacks need logits of shape (batch, classes), got "
                         f"{tuple(out.shape)}")
    labels = _labels(Yall, out.shape[1])
    box = _check_clamp(clamp, Xall)
    return src, Xall, labels, box


def _check_steps(steps: Any) -> int:
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    return int(steps)


def _check_rel_step(rel_step_size: Any, steps: int) -> float:
    if rel_step_size is None:
        return 2.5 / steps
    if isinstance(rel_step_size, bool) or not isinstance(rel_step_size, numbers.Real) \
            or not math.isfinite(rel_step_size) or rel_step_size <= 0:
        raise ValueError(f"rel_step_size must be a positive number, got {rel_step_size!r}")
    return float(rel_step_size)


def fgsm(
    source: Source,
    X: torch.Tensor,
    Y: torch.Tensor,
    eps: float,
    *,
    norm: str = "linf",
    clamp: tuple[float, float] | None = None,
    theta: torch.Tensor | None = None,
    allow_train_mode: bool = False,
) -> torch.Tensor:
    """Fast gradient (sign) method: one steepest-ascent step of the cross-entropy.

    ``x' = x + ε·sign(∇_x ℓ)`` in L∞ (Goodfellow et al. 2015) or ``x' = x + ε·∇_x ℓ/‖∇_x ℓ‖₂``
    in L2, with ``ℓ`` the cross-entropy of the logits (labels from ``argmax`` of one-hot
    targets), then clamped to ``clamp`` if given (which keeps ``‖x' − x‖ ≤ ε`` for inputs inside
    the box). A zero gradient gives no step.

    Returns:
        The perturbed inputs, same shape as ``X``.
    """
    eps = _check_eps(eps)
    src, Xall, labels, box = _attack_setup(source, X, Y, theta, allow_train_mode, norm, clamp)
    return _fgsm_batch(src.forward, Xall, labels, eps, norm, box)


def pgd(
    source: Source,
    X: torch.Tensor,
    Y: torch.Tensor,
    eps: float,
    *,
    norm: str = "linf",
    steps: int = 10,
    rel_step_size: float | None = None,
    random_start: bool = True,
    seed: int | None = 0,
    clamp: tuple[float, float] | None = None,
    theta: torch.Tensor | None = None,
    allow_train_mode: bool = False,
) -> torch.Tensor:
    """Projected gradient ascent on the cross-entropy in an L∞ or L2 ball (Madry et al. 2018).

    From ``x`` (or a uniform random point of the ball, drawn with ``seed``) repeat ``steps``
    times: step ``α = rel_step_size·ε`` along the steepest-ascent direction (``sign(g)`` or
    ``g/‖g‖₂``), project onto the ball ``‖x' − x‖ ≤ ε`` and clamp to the box. For each sample
    the first iterate that is misclassified is returned (else the last), so the attack never
    "unbreaks" a sample.

    Args:
        rel_step_size: ``α/ε``; default ``2.5/steps``.
        seed: seed of the random start (``None``: the global generator).
        Other arguments as for :func:`fgsm`.
    """
    eps = _check_eps(eps)
    steps = _check_steps(steps)
    rel = _check_rel_step(rel_step_size, steps)
    src, Xall, labels, box = _attack_setup(source, X, Y, theta, allow_train_mode, norm, clamp)
    gen = _make_generator(seed, Xall.device) if random_start else None
    return _pgd_batch(src.forward, Xall, labels, eps, norm, steps, rel, random_start, gen, box)


def _make_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
    return torch.Generator(device=device).manual_seed(int(seed))


def adversarial_accuracy(
    source: Source,
    X: torch.Tensor | None = None,
    Y: torch.Tensor | None = None,
    radii: float | Sequence[float] = (0.0, 0.1),
    *,
    attack: str = "pgd",
    norm: str = "linf",
    steps: int = 10,
    rel_step_size: float | None = None,
    random_start: bool = True,
    seed: int | None = 0,
    clamp: tuple[float, float] | None = None,
    batch_size: int = 256,
    cumulative: bool = True,
    theta: torch.Tensor | None = None,
    allow_train_mode: bool = False,
) -> RobustnessResult:
    """Classification accuracy under FGSM or PGD attacks over a grid of radii.

    Ma & Ying (2021) bound adversarial robustness by the input-smoothness that SGD's linear
    stability enforces; this measures it. For each radius ``ε`` every sample is attacked
    (:func:`fgsm` or :func:`pgd`, cross-entropy on the logits, batches of ``batch_size``) and
    counted correct if ``argmax f(x') = y``. ``ε = 0`` gives the clean accuracy exactly. The
    random start of PGD is seeded once per call, so results are reproducible.

    Args:
        source: an Objective (its model at θ and its data by default) or an ``nn.Module``.
        X, Y: inputs and labels (int ``(n,)`` or one-hot/probabilities ``(n, K)``).
        radii: a radius or a sequence of non-negative radii.
        attack: ``"fgsm"`` or ``"pgd"``.
        norm: ``"linf"`` or ``"l2"`` (per sample, over all input entries).
        steps, rel_step_size, random_start, seed: PGD parameters (see :func:`pgd`).
        clamp: a box ``(low, high)`` the inputs (and adversarial inputs) live in.
        batch_size: samples attacked at once.
        cumulative: count a sample broken at ``ε`` if broken at any radius ``≤ ε``
            (see :class:`RobustnessResult`).
        theta, allow_train_mode: as for :func:`input_jacobians`.

    Returns:
        A :class:`RobustnessResult`.
    """
    t0 = time.perf_counter()
    if attack not in ATTACKS:
        raise ValueError(f"attack must be one of {ATTACKS}, got {attack!r}")
    _check_norm(norm)
    if isinstance(radii, numbers.Real) and not isinstance(radii, bool):
        radii = [radii]
    if isinstance(radii, torch.Tensor):
        radii = radii.reshape(-1).tolist()
    if isinstance(radii, str) or not isinstance(radii, Sequence) or len(radii) == 0:
        raise ValueError(f"radii must be a non-empty sequence of non-negative numbers, got "
                         f"{radii!r}")
    eps_list = [_check_eps(r, "every radius") for r in radii]
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if attack == "pgd":
        steps = _check_steps(steps)
        rel = _check_rel_step(rel_step_size, steps)
    else:
        steps, rel, random_start = 1, 1.0, False
    src, Xall, labels, box = _attack_setup(source, X, Y, theta, allow_train_mode, norm, clamp)
    gen = _make_generator(seed, Xall.device) if attack == "pgd" and random_start else None
    n = Xall.shape[0]

    def correct(x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return src.forward(x_adv).argmax(1) == y

    clean = torch.cat([correct(Xall[s:s + batch_size], labels[s:s + batch_size])
                       for s in range(0, n, batch_size)])
    raw: dict[int, torch.Tensor] = {}
    for j, eps in enumerate(eps_list):
        if eps == 0:
            raw[j] = clean
            continue
        parts = []
        for s in range(0, n, batch_size):
            xb, yb = Xall[s:s + batch_size], labels[s:s + batch_size]
            if attack == "fgsm":
                x_adv = _fgsm_batch(src.forward, xb, yb, eps, norm, box)
            else:
                x_adv = _pgd_batch(src.forward, xb, yb, eps, norm, steps, rel, random_start,
                                   gen, box)
            parts.append(correct(x_adv, yb))
        raw[j] = torch.cat(parts) & clean
    accs_raw = tuple(float(raw[j].double().mean()) for j in range(len(eps_list)))
    if cumulative:
        alive = clean.clone()
        cum: dict[int, float] = {}
        for j in sorted(range(len(eps_list)), key=lambda i: eps_list[i]):
            alive &= raw[j]
            cum[j] = float(alive.double().mean())
        accs = tuple(cum[j] for j in range(len(eps_list)))
    else:
        accs = accs_raw
    return RobustnessResult(
        radii=tuple(eps_list), accuracies=accs, raw_accuracies=accs_raw,
        clean_accuracy=float(clean.double().mean()), attack=attack, norm=norm, steps=steps,
        rel_step_size=rel, random_start=bool(random_start), seed=seed if gen is not None else None,
        clamp=box, cumulative=bool(cumulative), n=n, wall_time=time.perf_counter() - t0,
    )
