r"""Particle measures: an empirical measure ``μ = Σ_j p_j δ_{x_j}`` and distances between them.

A :class:`ParticleMeasure` holds ``positions`` (shape ``(n, D)``) and optional ``weights``
(shape ``(n,)``; ``None`` means uniform ``p_j = 1/n``). The probabilities ``p_j`` are always
``weights / weights.sum()``; the measure never rescales what it was given, it only reads it that
way. Everything is plain torch on the positions' device and dtype.

Distances (mean-field references: Mei, Montanari & Nguyen, PNAS 2018; Chizat & Bach,
NeurIPS 2018):

* :func:`wasserstein`: the exact ``W_p`` through POT's network simplex (``ot.emd2``), with the
  exact sorted-quantile formula ``W_p^p = ∫_0^1 |F^{-1}(s) − G^{-1}(s)|^p ds`` in 1-D
  (``ot.wasserstein_1d``).
* :func:`sinkhorn`: the entropic optimal-transport cost ``OT_ε`` (``ot.sinkhorn2``, log-domain)
  and, by default, the debiased Sinkhorn divergence ``OT_ε(μ,ν) − ½OT_ε(μ,μ) − ½OT_ε(ν,ν)``.
* :func:`mmd`: the maximum mean discrepancy
  ``MMD²(μ,ν) = Σ p_i p_j k(x_i,x_j) − 2 Σ p_i q_j k(x_i,y_j) + Σ q_i q_j k(y_i,y_j)``
  (the V-statistic of the weighted measures), summed in row chunks so that memory stays
  ``O(chunk · n)``.
* :func:`gaussian_wasserstein2`: the closed form between Gaussians (the Bures formula), a test
  oracle.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from valleys.errors import ArgumentTypeError, ArgumentValueError

__all__ = [
    "ParticleMeasure",
    "gaussian_wasserstein2",
    "kernel_sum",
    "mmd",
    "sinkhorn",
    "wasserstein",
]

KERNELS = ("gaussian", "laplace", "energy")


@dataclass(frozen=True)
class ParticleMeasure:
    """An empirical measure ``μ = Σ_j p_j δ_{x_j}`` on ``R^D``.

    Attributes:
        positions: ``(n, D)`` particle positions (use ``x[:, None]`` for 1-D samples).
        weights: ``(n,)`` non-negative masses, or ``None`` for uniform weights. The
            probabilities are ``weights / weights.sum()``; :attr:`mass` is the total.
    """

    positions: torch.Tensor
    weights: torch.Tensor | None = None

    def __post_init__(self) -> None:
        x = self.positions
        if not isinstance(x, torch.Tensor):
            raise ArgumentTypeError(f"positions must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 2 or x.shape[0] == 0:
            raise ArgumentValueError(
                f"positions must have shape (n, D) with n >= 1, got {tuple(x.shape)}; "
                "for 1-D samples pass x[:, None]"
            )
        if not x.is_floating_point():
            raise ArgumentTypeError(f"positions must be floating point, got {x.dtype}")
        w = self.weights
        if w is None:
            return
        if not isinstance(w, torch.Tensor):
            raise ArgumentTypeError(
                f"weights must be a torch.Tensor or None, got {type(w).__name__}")
        if w.shape != (x.shape[0],):
            raise ArgumentValueError(
                f"weights must have shape ({x.shape[0]},), got {tuple(w.shape)}")
        if w.dtype != x.dtype or w.device != x.device:
            raise ArgumentValueError(
                f"weights ({w.dtype}, {w.device}) must match positions ({x.dtype}, {x.device})"
            )
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or not float(w.sum()) > 0:
            raise ArgumentValueError("weights must be finite, non-negative and have a positive sum")

    # -- basic properties -----------------------------------------------------------------
    @property
    def n(self) -> int:
        """Number of particles."""
        return self.positions.shape[0]

    @property
    def dim(self) -> int:
        """Dimension ``D`` of the space."""
        return self.positions.shape[1]

    @property
    def mass(self) -> float:
        """Total mass ``Σ weights`` (1 for uniform weights)."""
        return 1.0 if self.weights is None else float(self.weights.sum())

    @property
    def probabilities(self) -> torch.Tensor:
        """``p_j = weights_j / Σ weights`` (``1/n`` each when unweighted)."""
        x = self.positions
        if self.weights is None:
            return torch.full((self.n,), 1.0 / self.n, dtype=x.dtype, device=x.device)
        return self.weights / self.weights.sum()

    def effective_sample_size(self) -> float:
        """``1 / Σ p_j²``: ``n`` for uniform weights, 1 when one particle holds all the mass."""
        return float(1.0 / (self.probabilities**2).sum())

    def with_positions(self, positions: torch.Tensor) -> ParticleMeasure:
        return ParticleMeasure(positions, self.weights)

    def with_weights(self, weights: torch.Tensor | None) -> ParticleMeasure:
        return ParticleMeasure(self.positions, weights)

    # -- moments --------------------------------------------------------------------------
    def expect(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``∫ fn dμ = Σ_j p_j fn(x_j)`` for ``fn`` mapping ``(n, D)`` to ``(n, ...)``."""
        values = fn(self.positions)
        p = self.probabilities
        return torch.tensordot(p, values, dims=([0], [0]))

    def mean(self) -> torch.Tensor:
        """``E_μ[x]``, shape ``(D,)``."""
        return self.probabilities @ self.positions

    def covariance(self) -> torch.Tensor:
        """``E_μ[(x − m)(x − m)ᵀ]`` (the measure's own covariance, no Bessel correction)."""
        centred = self.positions - self.mean()
        return (centred * self.probabilities[:, None]).T @ centred

    def moment(self, order: float) -> torch.Tensor:
        """``E_μ ‖x‖^order`` (Euclidean norm)."""
        if order < 0:
            raise ArgumentValueError(f"order must be >= 0, got {order}")
        return self.probabilities @ self.positions.norm(dim=1).pow(order)

    def histogram(
        self,
        bins: int = 50,
        *,
        coordinate: int | None = 0,
        range: tuple[float, float] | None = None,
        density: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Weighted histogram of one coordinate (or of ``‖x‖`` with ``coordinate=None``).

        Returns ``(values, edges)``: ``bins`` values (a probability density when ``density``,
        else the probability per bin) and ``bins + 1`` edges. Mass outside ``range`` is dropped
        (the values then integrate to less than 1). Works on any device (no ``torch.histogram``,
        which is CPU only).
        """
        if bins < 1:
            raise ArgumentValueError(f"bins must be >= 1, got {bins}")
        if coordinate is None:
            values = self.positions.norm(dim=1)
        else:
            if not -self.dim <= coordinate < self.dim:
                raise ArgumentValueError(f"coordinate {coordinate} out of range for D={self.dim}")
            values = self.positions[:, coordinate].contiguous()
        lo, hi = (float(values.min()), float(values.max())) if range is None else range
        if not hi > lo:
            hi = lo + 1.0  # all particles at one point: one unit-wide window
        edges = torch.linspace(lo, hi, bins + 1, dtype=values.dtype, device=values.device)
        index = torch.bucketize(values, edges, right=True) - 1
        index = torch.where(values == edges[-1], bins - 1, index)  # the last edge is closed
        inside = (index >= 0) & (index < bins)
        out = torch.zeros(bins, dtype=values.dtype, device=values.device)
        out.index_add_(0, index[inside], self.probabilities[inside])
        if density:
            out = out / (edges[1:] - edges[:-1])
        return out, edges


# -- distances -----------------------------------------------------------------------------
def _check_pair(mu: ParticleMeasure, nu: ParticleMeasure) -> None:
    if not isinstance(mu, ParticleMeasure) or not isinstance(nu, ParticleMeasure):
        raise ArgumentTypeError("both arguments must be ParticleMeasure objects")
    if mu.dim != nu.dim:
        raise ArgumentValueError(f"measures live in different dimensions: {mu.dim} vs {nu.dim}")
    if mu.positions.dtype != nu.positions.dtype or mu.positions.device != nu.positions.device:
        raise ArgumentValueError("both measures must have the same dtype and device")


def _cost(mu: ParticleMeasure, nu: ParticleMeasure, p: float) -> torch.Tensor:
    return torch.cdist(mu.positions, nu.positions).pow(p)


def wasserstein(mu: ParticleMeasure, nu: ParticleMeasure, p: float = 2.0, *,
                num_iter_max: int = 1_000_000) -> float:
    """The exact Wasserstein distance ``W_p(μ, ν)`` between two particle measures.

    ``W_p^p = min_{π ∈ Π(μ,ν)} Σ π_ij ‖x_i − y_j‖^p``, solved exactly by POT's network simplex
    (``ot.emd2``; cost ``O(n³)``, meant for up to a few thousand particles). In one dimension
    the sorted-quantile formula is used instead (``ot.wasserstein_1d``, ``O(n log n)``).
    """
    import ot  # deferred: POT takes ~0.3-1 s to import, too much for `import valleys`

    _check_pair(mu, nu)
    if p < 1:
        raise ArgumentValueError(f"p must be >= 1, got {p}")
    a, b = mu.probabilities, nu.probabilities
    if mu.dim == 1:
        with warnings.catch_warnings():  # POT's 1-D solver uses the deprecated `x.T` on 1-D
            warnings.simplefilter("ignore", UserWarning)
            value = ot.wasserstein_1d(mu.positions[:, 0], nu.positions[:, 0], a, b, p=p)
    else:
        value = ot.emd2(a, b, _cost(mu, nu, p), numItermax=num_iter_max)
    return float(value) ** (1.0 / p)


def sinkhorn(mu: ParticleMeasure, nu: ParticleMeasure, reg: float, *, p: float = 2.0,
             debiased: bool = True, num_iter_max: int = 10_000, tol: float = 1e-9) -> float:
    """Entropic OT between particle measures (POT's log-domain Sinkhorn).

    ``OT_ε(μ,ν) = min_π Σ π_ij ‖x_i − y_j‖^p + ε KL(π | μ⊗ν)``, reported as the transport
    cost ``Σ π*_ij c_ij`` at the entropic optimum (what ``ot.sinkhorn2`` returns). With
    ``debiased=True`` (default) the Sinkhorn divergence
    ``S_ε = OT_ε(μ,ν) − ½ OT_ε(μ,μ) − ½ OT_ε(ν,ν)`` (Genevay et al. 2018; Feydy et al. 2019),
    which vanishes for ``μ = ν``. ``reg`` is ``ε`` in the units of the cost.
    """
    import ot  # deferred: POT takes ~0.3-1 s to import, too much for `import valleys`

    _check_pair(mu, nu)
    if not reg > 0:
        raise ArgumentValueError(f"reg must be > 0, got {reg}")

    def cost(m1: ParticleMeasure, m2: ParticleMeasure) -> float:
        value = ot.sinkhorn2(m1.probabilities, m2.probabilities, _cost(m1, m2, p), reg,
                             method="sinkhorn_log", numItermax=num_iter_max, stopThr=tol)
        return float(value)

    value = cost(mu, nu)
    if debiased:
        value -= 0.5 * (cost(mu, mu) + cost(nu, nu))
    return value


def _kernel(name: str, bandwidth: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if name not in KERNELS:
        raise ArgumentValueError(f"unknown kernel {name!r}; choose one of {KERNELS}")
    if name != "energy" and not bandwidth > 0:
        raise ArgumentValueError(f"bandwidth must be > 0, got {bandwidth}")

    def gaussian(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.exp(-torch.cdist(x, y).pow(2) / (2 * bandwidth**2))

    def laplace(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.exp(-torch.cdist(x, y) / bandwidth)

    def energy(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -torch.cdist(x, y)

    return {"gaussian": gaussian, "laplace": laplace, "energy": energy}[name]


def kernel_sum(mu: ParticleMeasure, nu: ParticleMeasure, kernel: str = "gaussian",
               bandwidth: float = 1.0, *, chunk_size: int = 4096) -> torch.Tensor:
    """``Σ_ij p_i q_j k(x_i, y_j)``, in row chunks of ``μ`` (memory ``O(chunk · n_ν)``)."""
    _check_pair(mu, nu)
    if chunk_size < 1:
        raise ArgumentValueError(f"chunk_size must be >= 1, got {chunk_size}")
    k = _kernel(kernel, bandwidth)
    p, q = mu.probabilities, nu.probabilities
    total = mu.positions.new_zeros(())
    for start in range(0, mu.n, chunk_size):
        rows = slice(start, start + chunk_size)
        total = total + p[rows] @ (k(mu.positions[rows], nu.positions) @ q)
    return total


def mmd(mu: ParticleMeasure, nu: ParticleMeasure, kernel: str = "gaussian",
        bandwidth: float = 1.0, *, squared: bool = False, chunk_size: int = 4096) -> float:
    """Maximum mean discrepancy between two particle measures.

    ``MMD² = E k(x,x') − 2 E k(x,y) + E k(y,y')`` with ``x, x' ~ μ`` and ``y, y' ~ ν``
    independent (the V-statistic: the diagonal terms are included, so the value is the exact
    MMD of the two discrete measures and ``MMD(μ, μ) = 0``). Kernels: ``"gaussian"``
    ``exp(−‖x−y‖²/(2h²))``, ``"laplace"`` ``exp(−‖x−y‖/h)``, ``"energy"`` ``−‖x−y‖`` (then
    ``MMD²`` is half the energy distance). Returns ``MMD`` (or ``MMD²`` with ``squared``);
    round-off below zero is clipped to 0.
    """
    value = (kernel_sum(mu, mu, kernel, bandwidth, chunk_size=chunk_size)
             - 2 * kernel_sum(mu, nu, kernel, bandwidth, chunk_size=chunk_size)
             + kernel_sum(nu, nu, kernel, bandwidth, chunk_size=chunk_size))
    value = max(float(value), 0.0)
    return value if squared else math.sqrt(value)


def gaussian_wasserstein2(m1: torch.Tensor, cov1: torch.Tensor, m2: torch.Tensor,
                          cov2: torch.Tensor) -> float:
    """``W_2`` between ``N(m1, Σ1)`` and ``N(m2, Σ2)`` (closed form).

    ``W_2² = ‖m1 − m2‖² + tr Σ1 + tr Σ2 − 2 tr (Σ2^{1/2} Σ1 Σ2^{1/2})^{1/2}``
    (Dowson & Landau 1982; Givens & Shortt 1984). Matrix square roots by symmetric eigh.
    """

    def sqrtm(S: torch.Tensor) -> torch.Tensor:
        values, vectors = torch.linalg.eigh((S + S.T) / 2)
        return (vectors * values.clamp_min(0).sqrt()) @ vectors.T

    root2 = sqrtm(cov2)
    cross = sqrtm(root2 @ cov1 @ root2)
    value = (m1 - m2).pow(2).sum() + cov1.trace() + cov2.trace() - 2 * cross.trace()
    return math.sqrt(max(float(value), 0.0))
