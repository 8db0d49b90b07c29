r"""Coordinate-wise seminorms ``g_x(k)``, ``g_w(k)`` and Sobolev-type averages (Ma & Ying 2021).

``g(k) = ((1/N) Σ_i Σ_j Σ_c |J_{i,j,c}|^{2k})^{1/(2k)}`` of the input Jacobians (``g_x``,
:func:`input_gradient_norm`) or of the parameter Jacobians (``g_w``,
:func:`parameter_gradient_norm`), as ``get_gradx``/``get_gradW`` of the authors' code
(``ChaoMa93/Sobolev-Reg-of-SGD``); :func:`coordinate_norm` for Jacobians already at hand; and
:func:`input_smoothness`, which adds ``(1/n) Σ_i ‖∇_x f(x_i)‖_F²`` and its relatives in one
:class:`SmoothnessReport`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from valleys._checks import is_real
from valleys.errors import ArgumentValueError
from valleys.losses import LossFn
from valleys.smoothness._source import Source, _check_chunk, _Record, _Source
from valleys.smoothness.input_gradients import (
    _iter_input_jacobians,
    _iter_loss_input_gradients,
    _iter_parameter_jacobians,
)

__all__ = [
    "SmoothnessReport",
    "coordinate_norm",
    "input_gradient_norm",
    "input_smoothness",
    "parameter_gradient_norm",
]

NORMALIZATIONS = ("samples", "samples_outputs", "sum")


@dataclass(frozen=True, eq=False)
class SmoothnessReport(_Record):
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


def _check_k(k: float) -> float:
    if isinstance(k, bool) or not is_real(k) or not math.isfinite(k) or k <= 0:
        raise ArgumentValueError(f"k must be a positive finite number, got {k!r}")
    return float(k)


def _check_normalization(normalization: str) -> str:
    if normalization not in NORMALIZATIONS:
        raise ArgumentValueError(
            f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    return normalization


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
        raise ArgumentValueError("jacobians must be a tensor of shape (n, K, ...) with n, K >= 1")
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
    if src.loss_fn is not None and src.has_targets:
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
