r"""The multi-dimensional linear-stability condition of SGD at a minimum, with operators.

Wu, Ma & E (NeurIPS 2018, eq. (4)): a minimum ``θ*`` at which every per-sample gradient
vanishes is linearly (mean-square) stable for SGD with learning rate ``η`` and batch size ``B``
(mini-batches drawn without replacement from ``n`` samples) if

.. math::  λ_{max}(M) \le 1, \qquad M = (I − ηH)^2 + η^2 c\,Σ = E_ξ[(I − ηH_ξ)^2],
           \qquad c = \frac{n − B}{B(n − 1)} ,

with ``H`` the Hessian and ``Σ = (1/n) Σ_i H_i² − H²`` the per-sample Hessian variance. It is
sufficient, not necessary: ``M = T(I)`` for the exact second-moment map ``T`` of
:mod:`valleys.stability.exact`, whose spectral radius is ``<= λ_max(M)`` (Mulayoff & Michaeli,
2023, give the exact threshold). In one dimension (or when the ``H_i`` commute) it is exact.

Writing ``M = I + η(ηA − 2H)`` with the PSD matrix ``A = H² + cΣ = (1 − c)H² + c·(1/n)Σ_i H_i²``
(``0 <= c <= 1``), the condition is ``λ_max(ηA − 2H) <= 0``, i.e.

.. math::  η \le η^* = 2 \min_{v:\,vᵀAv > 0} \frac{vᵀHv}{vᵀAv} .

:func:`max_stable_lr` computes ``η*`` by Dinkelbach's method, which is Newton's method on the
convex function ``g(η) = λ_max(ηA − 2H)``: from ``η_0 = 2/λ_max(H)`` (``η* <= η_0`` because
``A ⪰ H²``; for GD, ``c = 0``, it is the answer), take the top eigenvector ``v_k`` of ``M(η_k)``
and set ``η_{k+1} = 2 v_kᵀHv_k / v_kᵀAv_k``. Every iterate is an upper bound on ``η*`` (it is
``2 R(v)`` for some ``v``), the sequence decreases, and it converges superlinearly; it stops
once ``λ_max(M(η_k)) <= 1 + tol``.

**Tolerance and flat directions.** At an over-parameterized minimum ``H`` has a large null
space. If ``H_i = J_iᵀJ_i`` (square loss at interpolation) or more generally all ``H_i ⪰ 0``,
``Hv = 0`` forces ``H_i v = 0`` for every ``i``, so ``Σv = 0`` and ``Mv = v``: ``λ_max(M) = 1``
*exactly* there and the minimum is (marginally) stable along it. Round-off puts such
eigenvalues at ``1 ± O(eps)``, so every verdict here is ``λ_max(M) <= 1 + tol`` with a relative
tolerance ``tol`` (``M ≈ I``, so relative and absolute agree). The same ``tol`` is the Lanczos
relative-residual tolerance, which bounds the error of the computed ``λ_max(M)`` (a Ritz value,
hence never above the true one up to rounding). Defaults: ``1e-7`` in float64, ``1e-4``
otherwise. A Krylov method can miss an eigenvalue whose eigenvector is nearly orthogonal to its
start; the seed makes results reproducible.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from valleys._checks import integer, relative_tolerance
from valleys._records import record_to_dict
from valleys.errors import ArgumentValueError
from valleys.linalg import eigsh
from valleys.objective import Objective
from valleys.operators import (
    GGNVarianceOperator,
    HessianVarianceOperator,
    LambdaOperator,
    LinearOperator,
    ggn,
    ggn_variance,
    hessian,
    hessian_variance,
)
from valleys.stability._common import (
    check_batch_size,
    check_lr,
    check_objective,
    default_tol,
)
from valleys.stability.criteria import necessary_bounds, sgd_noise_factor

__all__ = [
    "MaxStableLRResult",
    "StabilityResult",
    "is_stable",
    "max_stable_lr",
    "max_stable_lr_analysis",
    "stability_analysis",
]

# Below this dimension M is formed densely (eigsh needs k < p, and it is cheaper anyway).
_DENSE_DIM = 2
CURVATURES = ("hessian", "ggn")


def _check_curvature(curvature: str, method: str) -> str:
    if curvature not in CURVATURES:
        raise ArgumentValueError(
            f"curvature must be one of {CURVATURES} (the per-sample matrices H_i: exact "
            f"Hessians, or Gauss–Newton parts J_iᵀΛ_iJ_i), got {curvature!r}"
        )
    if curvature == "ggn" and method != "auto":
        raise ArgumentValueError(
            f"method={method!r} selects a Hessian-variance algorithm; with curvature='ggn' the "
            "GGN variance has one algorithm, so leave method='auto'"
        )
    return curvature


def _variance(obj: Objective, theta: torch.Tensor | None, method: str,
              curvature: str) -> GGNVarianceOperator | HessianVarianceOperator:
    if curvature == "ggn":
        return ggn_variance(obj, theta)
    return hessian_variance(obj, theta, method=method)


class _Operators:
    """``H``, ``Σ`` (only when ``c > 0``) and ``A = H² + cΣ`` at one ``θ``.

    With ``curvature="ggn"`` every per-sample Hessian is replaced by its Gauss–Newton part, so
    ``H`` is the GGN and ``Σ`` the GGN variance.
    """

    def __init__(
        self,
        obj: Objective,
        batch_size: int,
        theta: torch.Tensor | None,
        method: str,
        curvature: str = "hessian",
    ) -> None:
        self.n = obj.n
        self.c = sgd_noise_factor(obj.n, batch_size)
        self.sigma: LinearOperator | None = None
        if self.c > 0:
            sigma = _variance(obj, theta, method, curvature)
            self.sigma = sigma
            # shares θ and the cached graphs (the GGN variance exactly when curvature="ggn")
            self.H = sigma.ggn if isinstance(sigma, GGNVarianceOperator) else sigma.hessian
        else:
            self.H = ggn(obj, theta) if curvature == "ggn" else hessian(obj, theta)
        self.dim, self.dtype, self.device = obj.dim, obj.dtype, obj.device

    def apply_A(self, v: torch.Tensor, Hv: torch.Tensor) -> torch.Tensor:
        out = self.H.matvec(Hv)
        if self.sigma is not None:
            out = out + self.c * self.sigma.matvec(v)
        return out

    def M(self, lr: float) -> LinearOperator:
        """``M(η) v = v − 2η Hv + η² Av`` as a symmetric operator."""

        def matvec(v: torch.Tensor) -> torch.Tensor:
            Hv = self.H.matvec(v)
            return v - (2.0 * lr) * Hv + (lr * lr) * self.apply_A(v, Hv)

        return LambdaOperator(matvec, self.dim, self.dtype, self.device, symmetric=True)

    def counts(self) -> tuple[int, int]:
        return self.H.num_matvecs, 0 if self.sigma is None else self.sigma.num_matvecs


def _top(op: LinearOperator, *, tol: float, seed: int | None, max_matvecs: int | None,
         v0: torch.Tensor | None = None) -> tuple[float, torch.Tensor, float, bool, int]:
    """Top eigenpair ``(λ, v, residual, converged, matvecs)`` of a symmetric operator."""
    if op.size <= _DENSE_DIM:
        values, vectors = torch.linalg.eigh(op.to_dense())
        return float(values[-1]), vectors[:, -1], 0.0, True, op.size
    result = eigsh(op, k=1, which="largest", tol=tol, seed=seed, max_matvecs=max_matvecs, v0=v0)
    return (
        float(result.values[0]),
        result.vectors[:, 0],
        float(result.residuals[0]),
        bool(result.converged),
        int(result.matvecs),
    )


@dataclass(frozen=True)
class StabilityResult:
    """The verdict of the sufficient condition ``λ_max{(I − ηH)² + η²cΣ} <= 1`` at one ``θ``.

    Attributes:
        verdict: ``lambda_max <= 1 + tol`` (linearly stable by the sufficient condition).
        margin: ``1 − lambda_max`` (negative: unstable).
        lambda_max: ``λ_max(M)``, the worst mean-square growth factor of one SGD step along a
            fixed direction; the Ritz value found by Lanczos.
        residual: Lanczos residual ``‖Mv − λv‖`` of that value. converged: Lanczos met ``tol``.
        lr, batch_size, n: the inputs. noise_factor: ``c = (n − B)/(B(n − 1))``.
        sharpness, nonuniformity: ``λ_max(H)`` and ``sqrt(λ_max(Σ))`` (``None`` unless
            ``components=True``).
        max_sharpness, max_nonuniformity: the necessary bounds ``2/η`` and
            ``(1/η) sqrt(B(n−1)/(n−B))``.
        within_necessary_bounds: whether ``(sharpness, nonuniformity)`` satisfies them (``None``
            without components).
        matvecs: products with ``M``. hessian_matvecs, variance_matvecs: products with ``H``
            and ``Σ`` (one ``M`` product is two ``H`` and one ``Σ`` products).
        tol: verdict slack and Lanczos tolerance. seed: Lanczos seed. wall_time: seconds.
        curvature: ``"hessian"`` or ``"ggn"`` (which per-sample matrices were used).
    """

    verdict: bool
    margin: float
    lambda_max: float
    residual: float
    converged: bool
    lr: float
    batch_size: int
    n: int
    noise_factor: float
    sharpness: float | None
    nonuniformity: float | None
    max_sharpness: float
    max_nonuniformity: float
    within_necessary_bounds: bool | None
    matvecs: int
    hessian_matvecs: int
    variance_matvecs: int
    tol: float
    seed: int | None
    wall_time: float
    curvature: str = "hessian"

    @property
    def stable(self) -> bool:
        return self.verdict

    def to_dict(self) -> dict[str, Any]:
        return record_to_dict(self)


def stability_analysis(
    obj: Objective,
    lr: float,
    batch_size: int,
    *,
    theta: torch.Tensor | None = None,
    tol: float | None = None,
    seed: int | None = 0,
    max_matvecs: int | None = None,
    components: bool = True,
    method: str = "auto",
    curvature: str = "hessian",
) -> StabilityResult:
    r"""Check ``λ_max{(I − ηH)² + η² c Σ} <= 1 + tol`` (Wu, Ma & E 2018) at ``θ``, with details.

    ``θ`` is assumed to be a minimum where every per-sample gradient vanishes (otherwise the
    linearization of SGD has a forcing term this condition ignores). ``M`` is applied as
    ``Mv = v − 2ηHv + η²(H(Hv) + cΣv)`` and its top eigenvalue found by Lanczos
    (:func:`valleys.eigsh`, ``which="largest"``) to relative residual ``tol``; see the module
    docstring for why the verdict carries the slack ``tol`` (flat directions give exactly 1).

    Args:
        obj: the empirical risk.
        lr: learning rate ``η > 0``.
        batch_size: ``1 <= B <= n``, without replacement; ``B = n`` is GD (``Σ`` is not needed).
        theta: parameters (default: the model's current ones).
        tol: verdict slack and Lanczos tolerance (default ``1e-7`` float64, ``1e-4`` otherwise).
        seed: Lanczos seed.
        max_matvecs: Lanczos budget of ``M`` products (default: eigsh's).
        components: also compute the sharpness and non-uniformity (two more Lanczos runs) and
            compare them with the necessary bounds.
        method: Hessian-variance algorithm, see :func:`valleys.hessian_variance`.
        curvature: ``"hessian"`` (the per-sample Hessians ``H_i = ∇²ℓ_i``, the paper's
            condition) or ``"ggn"`` (their Gauss–Newton parts ``J_iᵀΛ_iJ_i``; see
            :class:`~valleys.operators.GGNVarianceOperator`). Use ``"ggn"`` at a point that is
            only approximately a minimum: the residual terms of ``H_i`` there carry slightly
            negative curvature, along which the Hessian condition fails for every ``η``. At an
            interpolating square-loss minimum the two agree.
    """
    t0 = time.perf_counter()
    obj = check_objective(obj, "stability_analysis")
    curvature = _check_curvature(curvature, method)
    lr = check_lr(lr)
    batch_size = check_batch_size(batch_size, obj.n)
    tol = default_tol(obj.dtype) if tol is None else relative_tolerance(tol)
    ops = _Operators(obj, batch_size, theta, method, curvature)
    M = ops.M(lr)
    lam, _, residual, converged, _ = _top(M, tol=tol, seed=seed, max_matvecs=max_matvecs)
    matvecs = M.num_matvecs
    bounds = necessary_bounds(lr, batch_size, obj.n)
    a = s = within = None
    if components:
        a, *_ = _top(ops.H, tol=max(tol, 1e-6), seed=seed, max_matvecs=None)
        sigma = ops.sigma if ops.sigma is not None else _variance(obj, theta, method, curvature)
        s2, *_ = _top(sigma, tol=max(tol, 1e-6), seed=seed, max_matvecs=None)
        s = math.sqrt(max(s2, 0.0))
        within = bounds.contains(a, s)
    h_count, v_count = ops.counts()
    return StabilityResult(
        verdict=lam <= 1.0 + tol,
        margin=1.0 - lam,
        lambda_max=lam,
        residual=residual,
        converged=converged,
        lr=lr,
        batch_size=batch_size,
        n=obj.n,
        noise_factor=ops.c,
        sharpness=a,
        nonuniformity=s,
        max_sharpness=bounds.max_sharpness,
        max_nonuniformity=bounds.max_nonuniformity,
        within_necessary_bounds=within,
        matvecs=matvecs,
        hessian_matvecs=h_count,
        variance_matvecs=v_count,
        tol=tol,
        seed=seed,
        wall_time=time.perf_counter() - t0,
        curvature=curvature,
    )


def is_stable(
    obj: Objective,
    lr: float,
    batch_size: int,
    *,
    theta: torch.Tensor | None = None,
    tol: float | None = None,
    seed: int | None = 0,
    curvature: str = "hessian",
) -> bool:
    """Whether SGD is linearly stable at ``θ`` by the sufficient condition of Wu, Ma & E (2018).

    ``λ_max{(I − ηH)² + η² (n−B)/(B(n−1)) Σ} <= 1 + tol``; see :func:`stability_analysis` for
    the details, the meaning of ``tol`` and ``curvature="ggn"`` for approximate minima.
    """
    return stability_analysis(
        obj, lr, batch_size, theta=theta, tol=tol, seed=seed, components=False,
        curvature=curvature,
    ).verdict


@dataclass(frozen=True)
class MaxStableLRResult:
    """The largest learning rate allowed by the sufficient condition, and how it was found.

    Attributes:
        lr: ``η*``, the largest ``η`` with ``λ_max{(I − ηH)² + η²cΣ} <= 1 + tol`` (the last
            Dinkelbach iterate; every iterate is an upper bound of the exact threshold).
        gd_lr: ``2/λ_max(H)``, the GD threshold and the starting point (``lr <= gd_lr``).
        sharpness: ``λ_max(H)``.
        lambda_max: ``λ_max(M)`` at ``lr`` (``<= 1 + tol`` when converged).
        batch_size, n, noise_factor: ``B``, ``n`` and ``c``.
        iterations: Dinkelbach/Newton steps. history: ``((η_k, λ_max(M(η_k))), ...)``.
        matvecs: products with ``M`` over all Lanczos runs (plus the sharpness run's ``H``
            products). hessian_matvecs, variance_matvecs: products with ``H`` and ``Σ``.
        converged: the last iterate met ``λ_max(M) <= 1 + tol`` and every Lanczos run converged.
        tol, seed, wall_time, curvature: as in :class:`StabilityResult`. note: why a special
            value was returned (``None`` normally).
    """

    lr: float
    gd_lr: float
    sharpness: float
    lambda_max: float
    batch_size: int
    n: int
    noise_factor: float
    iterations: int
    history: tuple[tuple[float, float], ...]
    matvecs: int
    hessian_matvecs: int
    variance_matvecs: int
    converged: bool
    tol: float
    seed: int | None
    wall_time: float
    note: str | None = None
    curvature: str = "hessian"

    def to_dict(self) -> dict[str, Any]:
        return record_to_dict(self)


def max_stable_lr_analysis(
    obj: Objective,
    batch_size: int,
    *,
    theta: torch.Tensor | None = None,
    tol: float | None = None,
    seed: int | None = 0,
    max_iter: int = 50,
    max_matvecs: int | None = None,
    method: str = "auto",
    curvature: str = "hessian",
) -> MaxStableLRResult:
    r"""Largest ``η`` with ``λ_max{(I − ηH)² + η² c Σ} <= 1`` at ``θ``, with details.

    Dinkelbach's iteration ``η_{k+1} = 2 v_kᵀHv_k / v_kᵀAv_k`` from ``η_0 = 2/λ_max(H)``, with
    ``v_k`` the top eigenvector of ``M(η_k)`` (Newton's method on the convex
    ``g(η) = λ_max(ηA − 2H)``; see the module docstring). Stops when
    ``λ_max(M(η_k)) <= 1 + tol``; near the threshold ``λ_max(M(η)) − 1 ≈ η² vᵀAv (η − η*)/η``,
    so the relative error in ``η*`` is about ``tol / (η*² v*ᵀAv*)`` (``tol/4`` for GD).

    For GD (``B = n``, ``c = 0``) the answer is ``2/λ_max(H)`` to Lanczos accuracy ``tol``.
    Special cases (``note`` says which): ``λ_max(H) <= 0`` gives ``inf`` for GD and, since the
    condition then fails along any direction where ``Σ ≠ 0``, ``0`` for SGD; a Dinkelbach step
    that meets a direction of negative curvature (``θ`` is not a minimum) gives ``0``.

    Args:
        obj: the empirical risk (``θ`` should be a minimum).
        batch_size: ``1 <= B <= n``.
        theta, tol, seed, method, curvature: as in :func:`stability_analysis`.
        max_iter: cap on Dinkelbach steps (typically fewer than 10 are needed).
        max_matvecs: Lanczos budget per eigenvalue solve.
    """
    t0 = time.perf_counter()
    obj = check_objective(obj, "max_stable_lr")
    batch_size = check_batch_size(batch_size, obj.n)
    tol = default_tol(obj.dtype) if tol is None else relative_tolerance(tol)
    max_iter = integer(max_iter, "max_iter", minimum=1)
    curvature = _check_curvature(curvature, method)
    ops = _Operators(obj, batch_size, theta, method, curvature)
    a, v, _, ok, matvecs = _top(ops.H, tol=tol, seed=seed, max_matvecs=max_matvecs)

    def finish(lr: float, lam: float, history: list[tuple[float, float]], converged: bool,
               note: str | None = None) -> MaxStableLRResult:
        h_count, v_count = ops.counts()
        return MaxStableLRResult(
            lr=lr, gd_lr=2.0 / a if a > 0 else math.inf, sharpness=a, lambda_max=lam,
            batch_size=batch_size, n=obj.n, noise_factor=ops.c, iterations=len(history),
            history=tuple(history), matvecs=matvecs, hessian_matvecs=h_count,
            variance_matvecs=v_count, converged=converged, tol=tol, seed=seed,
            wall_time=time.perf_counter() - t0, note=note, curvature=curvature,
        )

    if a <= 0:
        note = "λ_max(H) <= 0: no positive curvature"
        return finish(math.inf if ops.c == 0 else 0.0, math.nan, [], ok, note)
    lr = 2.0 / a
    if ops.c == 0:
        return finish(lr, 1.0, [], ok)
    gen = torch.Generator(device=obj.device)
    gen.manual_seed(0 if seed is None else int(seed))
    history: list[tuple[float, float]] = []
    all_converged = ok
    for _ in range(max_iter):
        # Warm start from the last vector, perturbed so that eigsh cannot accept it as is.
        noise = torch.randn(v.shape, generator=gen, dtype=v.dtype, device=v.device)
        v0 = v + 0.1 * noise / math.sqrt(v.numel())
        M = ops.M(lr)
        lam, v, _, ok, used = _top(M, tol=tol, seed=seed, max_matvecs=max_matvecs, v0=v0)
        matvecs += used
        all_converged = all_converged and ok
        history.append((lr, lam))
        if lam <= 1.0 + tol:
            return finish(lr, lam, history, all_converged)
        Hv = ops.H.matvec(v)
        h = float(v @ Hv)
        alpha = float(v @ ops.apply_A(v, Hv))
        if h <= 0 or alpha <= 0:
            note = (
                f"direction with vᵀHv = {h:.3g} <= 0: θ is not a minimum, so the condition fails "
                f"for every η > 0 (the history holds upper bounds; at a point that is only "
                f"approximately a minimum, curvature='ggn' gives the Gauss–Newton value)"
            )
            return finish(0.0, lam, history, all_converged, note)
        new = 2.0 * h / alpha
        if not new < lr:  # cannot happen in exact arithmetic when lam > 1
            note = "Dinkelbach step made no progress (round-off); lr is an upper bound"
            return finish(lr, lam, history, False, note)
        lr = new
    note = f"no convergence in max_iter={max_iter} steps; lr is an upper bound"
    return finish(lr, history[-1][1], history, False, note)


def max_stable_lr(
    obj: Objective,
    batch_size: int,
    *,
    theta: torch.Tensor | None = None,
    tol: float | None = None,
    seed: int | None = 0,
    curvature: str = "hessian",
) -> float:
    r"""Largest learning rate for which SGD is linearly stable at ``θ`` (sufficient condition).

    The largest ``η`` with ``λ_max{(I − ηH)² + η² (n−B)/(B(n−1)) Σ} <= 1`` (Wu, Ma & E 2018),
    i.e. ``η* = 2 min_v vᵀHv / vᵀ(H² + cΣ)v``. ``batch_size = n`` is GD: ``2/λ_max(H)``. See
    :func:`max_stable_lr_analysis` for the method, tolerance and a record of the computation,
    and :func:`stability_analysis` for ``curvature="ggn"`` (approximate minima).

    When the answer is a special value (``0`` where ``θ`` is not a minimum or has no positive
    curvature, ``inf`` for GD without positive curvature, or an upper bound where the iteration
    stopped early), a :class:`RuntimeWarning` carries the reason
    (:attr:`MaxStableLRResult.note`); the number returned is the same.
    """
    result = max_stable_lr_analysis(
        obj, batch_size, theta=theta, tol=tol, seed=seed, curvature=curvature
    )
    if result.note is not None:
        warnings.warn(f"max_stable_lr returned {result.lr:.6g}: {result.note}", RuntimeWarning,
                      stacklevel=2)
    return result.lr
