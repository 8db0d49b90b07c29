r"""Two-layer networks in the mean-field and NTK scalings, and the random-feature model.

The network is ``f(x) = Σ_j c_j a_j σ(w_jᵀx)`` with ``m`` neurons, ``a ∈ R^m``, ``W ∈ R^{m×d}``
(add a constant input column to ``X`` for biases), and

* **mean-field** scaling ``c_j = p_j`` (``1/m`` by default): ``f`` is the integral
  ``∫ a σ(wᵀx) ρ(da, dw)`` against the particle measure ``ρ = Σ_j p_j δ_{(a_j, w_j)}``
  (Mei–Montanari–Nguyen 2018; Chizat–Bach 2018; Rotskoff–Vanden-Eijnden 2018; E–Ma–Wu 2020);
* **NTK** scaling ``c_j = 1/sqrt(m)`` (Jacot et al. 2018);
* the **random-feature** model: the mean-field net with ``W`` frozen (E–Ma–Wu's scaled RF).

The risk is the ``"mse"`` convention of valleys, ``R = (1/2n) Σ_i (f(x_i) − y_i)²``.

**Gradients** (exact, no autograd; :func:`gradients`), with ``r_i = f(x_i) − y_i`` and
``z_ij = w_jᵀx_i``::

    ∂R/∂a_j = c_j (1/n) Σ_i r_i σ(z_ij)            ∂R/∂w_j = c_j a_j (1/n) Σ_i r_i σ'(z_ij) x_i

**Mean-field flow.** With ``R`` a functional of ``ρ``, the first variation is
``δR/δρ(a, w) = (1/n) Σ_i r_i a σ(wᵀx_i)`` and the Wasserstein velocity is its gradient
``∇_{(a,w)} δR/δρ = (∂R/∂a_j, ∂R/∂w_j) / p_j`` — ``m`` times the parameter gradient. Training
with ``θ_j ← θ_j − η m ∇_{θ_j} R`` is therefore the forward-Euler discretization of the
Wasserstein gradient flow, with a flow-time step ``η`` independent of ``m`` (E–Ma–Wu's
"discretization principle"). In the NTK scaling the natural step is ``η ∇_θ R`` (the tangent
kernel is ``O(1)``).

**Conserved quantity (ReLU).** Since ``σ'(z) z = σ(z)``, ``d/dt a_j² = d/dt ‖w_j‖²`` along the
flow, so the balancedness ``a_j² − ‖w_j‖²`` of every neuron is conserved; a GD step of size
``h`` on the pair changes it by exactly ``h² (g_a² − ‖g_w‖²)`` (Chizat–Bach 2018's
2-homogeneity; Du, Hu & Lee 2018).

Memory: the ``n × m`` pre-activations are formed ``chunk_size`` data points at a time, so the
working memory is ``O(chunk_size · m)`` (default: about 2¹⁹ entries, at least 32 rows:
cache-sized, which measured fastest in ``benchmarks/bench_meanfield.py``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from valleys._checks import finite_real, integer, seed_value
from valleys._records import record_to_dict
from valleys.errors import ArgumentTypeError, ArgumentValueError
from valleys.meanfield.flows import FieldValue
from valleys.meanfield.particles import ParticleMeasure

__all__ = [
    "ACTIVATIONS",
    "SCALINGS",
    "TwoLayerGradients",
    "TwoLayerRun",
    "balancedness",
    "gradients",
    "init_two_layer",
    "mean_field_field",
    "predict",
    "risk",
    "train",
]

ACTIVATIONS = ("relu", "tanh")
SCALINGS = ("mean-field", "ntk")
DEFAULT_CHUNK_ELEMENTS = 1 << 19  # a cache-sized (chunk, m) work array
MIN_CHUNK = 32


@dataclass(frozen=True)
class TwoLayerGradients:
    """Risk and exact partial derivatives of a two-layer net at one point.

    Attributes:
        risk: ``R = (1/2n) Σ (f − y)²``.
        grad_a: ``(m,)`` ``∂R/∂a``.
        grad_W: ``(m, d)`` ``∂R/∂W``.
        first_variation: ``(m,)`` ``δR/δρ(a_j, w_j) = (1/n) Σ_i r_i a_j σ(w_jᵀx_i)``.
    """

    risk: float
    grad_a: torch.Tensor
    grad_W: torch.Tensor
    first_variation: torch.Tensor


def _validate(a: torch.Tensor, W: torch.Tensor, X: torch.Tensor,
              y: torch.Tensor | None = None) -> None:
    for name, t in (("a", a), ("W", W), ("X", X)) + ((("y", y),) if y is not None else ()):
        if not isinstance(t, torch.Tensor):
            raise ArgumentTypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if a.ndim != 1 or W.ndim != 2 or W.shape[0] != a.shape[0]:
        raise ArgumentValueError(
            f"need a of shape (m,) and W of shape (m, d); got {tuple(a.shape)} "
            f"and {tuple(W.shape)}")
    if X.ndim != 2 or X.shape[1] != W.shape[1]:
        raise ArgumentValueError(f"X must have shape (n, {W.shape[1]}), got {tuple(X.shape)}")
    if y is not None and y.shape != (X.shape[0],):
        raise ArgumentValueError(f"y must have shape ({X.shape[0]},), got {tuple(y.shape)}")
    dtypes = {t.dtype for t in (a, W, X) + ((y,) if y is not None else ())}
    devices = {t.device for t in (a, W, X) + ((y,) if y is not None else ())}
    if len(dtypes) > 1 or len(devices) > 1:
        raise ArgumentValueError(
            f"a, W, X, y must share one dtype and device; got {dtypes}, {devices}")


def _coefficients(m: int, scaling: str, weights: torch.Tensor | None,
                  like: torch.Tensor) -> torch.Tensor:
    """``c_j``: ``p_j`` (mean-field, ``1/m`` when unweighted) or ``1/sqrt(m)`` (NTK)."""
    if scaling not in SCALINGS:
        raise ArgumentValueError(f"unknown scaling {scaling!r}; choose one of {SCALINGS}")
    if scaling == "ntk":
        if weights is not None:
            raise ArgumentValueError("weights are only meaningful in the mean-field scaling")
        return torch.full((m,), 1.0 / math.sqrt(m), dtype=like.dtype, device=like.device)
    if weights is None:
        return torch.full((m,), 1.0 / m, dtype=like.dtype, device=like.device)
    if weights.shape != (m,):
        raise ArgumentValueError(f"weights must have shape ({m},), got {tuple(weights.shape)}")
    return weights / weights.sum()


def _chunk(m: int, chunk_size: int | None) -> int:
    if chunk_size is None:
        return max(MIN_CHUNK, DEFAULT_CHUNK_ELEMENTS // max(m, 1))
    if chunk_size < 1:
        raise ArgumentValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return chunk_size


def _activate(Z: torch.Tensor, activation: str) -> torch.Tensor:
    """σ(Z) in place (Z is a scratch buffer)."""
    if activation == "relu":
        return Z.clamp_min_(0)
    if activation == "tanh":
        return Z.tanh_()
    raise ArgumentValueError(f"unknown activation {activation!r}; choose one of {ACTIVATIONS}")


def _derivative(H: torch.Tensor, activation: str) -> torch.Tensor:
    """``σ'(Z)`` from ``H = σ(Z)``, in place (ReLU: σ'(0) = 0)."""
    if activation == "relu":
        return H.sign_()
    return H.square_().neg_().add_(1)  # tanh' = 1 − tanh²


def predict(a: torch.Tensor, W: torch.Tensor, X: torch.Tensor, *, scaling: str = "mean-field",
            activation: str = "relu", weights: torch.Tensor | None = None,
            chunk_size: int | None = None) -> torch.Tensor:
    """``f(x_i) = Σ_j c_j a_j σ(w_jᵀx_i)`` for every row of ``X`` (shape ``(n,)``)."""
    _validate(a, W, X)
    ca = _coefficients(a.shape[0], scaling, weights, a) * a
    step = _chunk(a.shape[0], chunk_size)
    outs = [_activate(X[s:s + step] @ W.T, activation) @ ca for s in range(0, X.shape[0], step)]
    return torch.cat(outs)


def risk(a: torch.Tensor, W: torch.Tensor, X: torch.Tensor, y: torch.Tensor, **kwargs) -> float:
    """``R = (1/2n) Σ_i (f(x_i) − y_i)²`` (keyword arguments as in :func:`predict`)."""
    _validate(a, W, X, y)
    return float(0.5 * (predict(a, W, X, **kwargs) - y).pow(2).mean())


def gradients(a: torch.Tensor, W: torch.Tensor, X: torch.Tensor, y: torch.Tensor, *,
              scaling: str = "mean-field", activation: str = "relu",
              weights: torch.Tensor | None = None, chunk_size: int | None = None,
              first_layer: bool = True) -> TwoLayerGradients:
    """Risk and exact ``∂R/∂a``, ``∂R/∂W`` in one pass over data chunks (see module docstring).

    With ``first_layer=False`` the ``W`` gradient is skipped (returned as zeros): the
    random-feature model's cost. Memory ``O(chunk_size · m)``.
    """
    _validate(a, W, X, y)
    with torch.no_grad():  # explicit formulas; the work array is written with out=
        return _gradients(a, W, X, y, scaling, activation, weights, chunk_size, first_layer)


def _gradients(a, W, X, y, scaling, activation, weights, chunk_size, first_layer):
    m, n = a.shape[0], X.shape[0]
    c = _coefficients(m, scaling, weights, a)
    ca = c * a
    step = min(_chunk(m, chunk_size), n)
    sum_a = torch.zeros_like(a)
    sum_W = torch.zeros_like(W)
    total = a.new_zeros(())
    buffer = X.new_empty(step, m)  # one (chunk, m) work array, reused by every chunk
    for s in range(0, n, step):
        Xc = X[s:s + step]
        H = _activate(torch.matmul(Xc, W.T, out=buffer[:Xc.shape[0]]), activation)
        r = H @ ca - y[s:s + step]
        total = total + r @ r
        sum_a.addmv_(H.T, r)  # Σ_i r_i σ(z_ij)
        if first_layer:  # Σ_i σ'(z_ij) r_i x_i = σ'(Z)ᵀ (r ⊙ X): no pass to scale by r
            sum_W.addmm_(_derivative(H, activation).T, r[:, None] * Xc)
    grad_a = c * sum_a / n
    grad_W = ca[:, None] * sum_W / n
    return TwoLayerGradients(float(0.5 * total / n), grad_a, grad_W, a * sum_a / n)


def mean_field_field(X: torch.Tensor, y: torch.Tensor, *, activation: str = "relu",
                     chunk_size: int | None = None, train_first_layer: bool = True):
    """The Wasserstein field of the mean-field risk, for :mod:`valleys.meanfield.flows`.

    Particles are ``θ_j = (a_j, w_j) ∈ R^{1+d}`` (positions ``[a | W]``, shape ``(m, 1+d)``)
    with the measure's probabilities as ``p_j``. The velocity is
    ``∇_θ δR/δρ(θ_j) = ∇_{θ_j} R / p_j`` (zero in the ``w`` block when
    ``train_first_layer=False``, the random-feature model); the first variation is
    ``(1/n) Σ_i r_i a_j σ(w_jᵀx_i)``.
    """

    def field_fn(measure: ParticleMeasure) -> FieldValue:
        theta = measure.positions
        a, W = theta[:, 0], theta[:, 1:]
        p = measure.probabilities
        g = gradients(a, W, X, y, scaling="mean-field", activation=activation, weights=p,
                      chunk_size=chunk_size, first_layer=train_first_layer)
        velocity = torch.cat([g.grad_a[:, None], g.grad_W], dim=1) / p[:, None]
        return FieldValue(velocity, g.first_variation, g.risk)

    return field_fn


def balancedness(a: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """``a_j² − ‖w_j‖²`` per neuron (conserved by the ReLU gradient flow)."""
    return a.pow(2) - W.pow(2).sum(dim=1)


def init_two_layer(m: int, d: int, *, scale_a: float = 1.0, scale_w: float = 1.0,
                   seed: int = 0, dtype: torch.dtype = torch.float64,
                   device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``a_j ~ N(0, scale_a²)``, ``w_j ~ N(0, scale_w²/d · I)``, i.i.d. (seeded on the CPU).

    The first ``min(m', m)`` neurons are the same for every ``m`` with the same seed, so nets of
    different widths share their first particles.
    """
    m, d = integer(m, "m (the width)", minimum=1), integer(d, "d (the input dimension)", minimum=1)
    scale_a, scale_w = finite_real(scale_a, "scale_a"), finite_real(scale_w, "scale_w")
    g = torch.Generator().manual_seed(seed_value(seed))
    theta = torch.randn(m, 1 + d, generator=g, dtype=torch.float64)
    a = theta[:, 0] * scale_a
    W = theta[:, 1:] * (scale_w / math.sqrt(d))
    return a.to(dtype=dtype, device=device), W.to(dtype=dtype, device=device)


@dataclass(frozen=True)
class TwoLayerRun:
    """A training run of :func:`train`.

    Attributes:
        a, W: final parameters.
        status: ``"completed"`` or ``"diverged"``.
        steps: steps taken.
        records: dicts with ``step``, ``time`` (``step·lr``), ``risk`` and, when test data was
            given, ``test_risk``.
        config: the run's settings.
        wall_time: seconds.
    """

    a: torch.Tensor
    W: torch.Tensor
    status: str
    steps: int
    records: tuple[dict[str, Any], ...]
    config: dict[str, Any] = field(default_factory=dict)
    wall_time: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return record_to_dict(self, drop=("a", "W"))

    @property
    def final_risk(self) -> float:
        return float(self.records[-1]["risk"])

    def series(self, key: str) -> list[float]:
        return [float(r.get(key, math.nan)) for r in self.records]


def train(a: torch.Tensor, W: torch.Tensor, X: torch.Tensor, y: torch.Tensor, *, lr: float,
          steps: int, scaling: str = "mean-field", activation: str = "relu",
          train_first_layer: bool = True, temperature: float = 0.0, seed: int = 0,
          record_every: int = 10, test: tuple[torch.Tensor, torch.Tensor] | None = None,
          chunk_size: int | None = None, divergence_factor: float = 1e6) -> TwoLayerRun:
    """Full-batch training of a two-layer net (the inputs are not modified).

    Mean-field scaling: ``θ_j ← θ_j − lr · m ∇_{θ_j} R`` (+ ``sqrt(2·lr·τ) ξ_j`` with
    ``temperature`` τ > 0: noisy/Langevin dynamics), i.e. the forward-Euler step of the
    Wasserstein flow of flow-time ``lr`` (see :mod:`valleys.meanfield.flows`). NTK scaling:
    ``θ ← θ − lr ∇_θ R``. ``train_first_layer=False`` freezes ``W`` (random features).
    A run whose risk becomes non-finite or exceeds ``divergence_factor`` times the initial
    risk stops with ``status="diverged"``.
    """
    _validate(a, W, X, y)
    for name, t in (("a", a), ("W", W), ("X", X), ("y", y)):
        if not bool(torch.isfinite(t).all()):
            raise ArgumentValueError(f"{name} contains NaN or infinite values; clean it first")
    if not lr > 0 or steps < 0 or record_every < 1 or temperature < 0:
        raise ArgumentValueError("need lr > 0, steps >= 0, record_every >= 1, temperature >= 0")
    if test is not None:
        _validate(a, W, test[0], test[1])
    m = a.shape[0]
    scale = lr * (m if scaling == "mean-field" else 1.0)
    kw = {"scaling": scaling, "activation": activation, "chunk_size": chunk_size}
    gen = torch.Generator(device=a.device).manual_seed(seed) if temperature > 0 else None
    a, W = a.clone(), W.clone()
    records: list[dict[str, Any]] = []
    started, status, initial, k = time.perf_counter(), "completed", None, 0

    def record(k: int, value: float) -> None:
        entry: dict[str, Any] = {"step": k, "time": k * lr, "risk": value}
        if test is not None:
            entry["test_risk"] = risk(a, W, test[0], test[1], **kw)
        records.append(entry)

    for k in range(steps + 1):
        g = gradients(a, W, X, y, first_layer=train_first_layer, **kw)
        initial = g.risk if initial is None else initial
        if k % record_every == 0 or k == steps:
            record(k, g.risk)
        if not math.isfinite(g.risk) or g.risk > divergence_factor * max(initial, 1e-300):
            status = "diverged"
            if records[-1]["step"] != k:
                record(k, g.risk)
            break
        if k == steps:
            break
        a = a - scale * g.grad_a
        if train_first_layer:
            W = W - scale * g.grad_W
        if gen is not None:
            noise = math.sqrt(2 * lr * temperature)
            a = a + noise * torch.randn(a.shape, generator=gen, dtype=a.dtype, device=a.device)
            if train_first_layer:
                W = W + noise * torch.randn(W.shape, generator=gen, dtype=W.dtype,
                                            device=W.device)
    config = {"lr": lr, "steps": steps, "scaling": scaling, "activation": activation,
              "train_first_layer": train_first_layer, "temperature": temperature, "seed": seed,
              "m": m, "n": X.shape[0], "d": X.shape[1]}
    return TwoLayerRun(a, W, status, k, tuple(records), config, time.perf_counter() - started)
