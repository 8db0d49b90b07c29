"""Certification shared by the eigensolvers: argument checks, checked products, error bounds.

A solver proposes Ritz pairs; :class:`_Certifier` accepts them only on residuals recomputed from
fresh products, with the products' own rounding noise (measured from the linearity defect
``A(y+z) − Ay − Az``) added, and turns them into error bounds and, when ``tol`` is out of the
dtype's reach, a message. Residuals are measured in the solve's inner product: the Euclidean one,
or ``⟨x, y⟩_M = xᵀMy`` for a positive semidefinite ``M`` (:func:`~valleys.linalg.eigsh`'s
``inner``).
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from valleys._checks import is_integral, relative_tolerance, seed_value
from valleys.errors import ArgumentTypeError, ArgumentValueError
from valleys.linalg._results import EigshResult
from valleys.operators._base import LinearOperator

_WHICH = ("largest", "smallest", "magnitude", "both")
_ACCURACY = ("value", "residual")
# β below this many machine epsilons times ‖A q‖ is rounding noise: the Krylov space is invariant.
_BREAKDOWN = 100.0
# Rounding noise of one product. The linearity defect A(y+z) − Ay − Az sees the noise that varies
# with the input; low-precision products also carry a systematic part (the forward pass itself is
# rounded) that it misses, measured at up to ~2.3x the defect on bfloat16/float16 MLPs, hence
# the factor 3 and a floor of 2 ulps of ‖A‖. Without a measurement (only where it cannot
# matter) a product is assumed good to 1000 ulps of ‖A‖.
_NOISE_DEFECT_FACTOR = 3.0
_NOISE_FLOOR_ULPS = 2.0
_NOISE_PRIOR_ULPS = 1e3
# A Ritz value bounds a gap only if its residual is below this share of its distance.
_GAP_WITNESS = 0.1
# Ritz values are computed to a few ulps of ‖A‖ in the basis dtype.
_ROUNDING_ULPS = 10.0



# -- argument checks -----------------------------------------------------------------------------
def _check_operator(op: object, caller: str, *, symmetric: bool = True) -> LinearOperator:
    """``op`` is a real floating LinearOperator (and symmetric, unless an inner product makes
    self-adjointness a property the caller asserts instead); returned as one."""
    if not isinstance(op, LinearOperator):
        raise ArgumentTypeError(
            f"{caller} needs a valleys LinearOperator, got {type(op).__name__}; wrap a matrix in "
            "valleys.operators.DenseOperator or a function in LambdaOperator"
        )
    if symmetric and not op.symmetric:
        raise ArgumentValueError(
            f"{caller} needs a symmetric operator, but {op!r} has symmetric=False; symmetric "
            "solvers give wrong answers otherwise (for A B use a symmetric form such as A^½BA^½)"
        )
    if not op.dtype.is_floating_point:
        raise ArgumentTypeError(f"{caller} supports real floating dtypes only, got {op.dtype}")
    return op


def _check_seed(seed: object) -> None:
    if seed is not None:
        seed_value(seed)


def _check_count(value: object, name: str, minimum: int) -> int:
    if not is_integral(value) or isinstance(value, bool) or value < minimum:
        raise ArgumentValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_choice(value: object, choices: tuple[str, ...], name: str, why: str = "") -> str:
    if value not in choices:
        raise ArgumentValueError(f"{name} must be one of {choices}{why}, got {value!r}")
    return str(value)


def _check_problem(op: object, caller: str, k: object, which: object, tol: object,
                   accuracy: object, seed: object, *, k_below_p: bool = False,
                   symmetric: bool = True) -> tuple[int, str, float, str]:
    """The checks of every ``k``-eigenpair solver; returns ``(k, which, tol, accuracy)``."""
    p = _check_operator(op, caller, symmetric=symmetric).size
    k_max, relation = (p - 1, "<") if k_below_p else (p, "<=")
    if not is_integral(k) or isinstance(k, bool) or not 1 <= k <= k_max:
        raise ArgumentValueError(
            f"k must be an integer with 1 <= k {relation} p = {p} (the operator's size), "
            f"got {k!r}")
    which = _check_choice(which, _WHICH, "which")
    tol = relative_tolerance(tol)
    accuracy = _check_choice(accuracy, _ACCURACY, "accuracy",
                             " (what tol applies to: the error bound of each eigenvalue, or its "
                             "residual)")
    _check_seed(seed)
    return int(k), which, tol, accuracy


def _check_inner(inner: object, op: LinearOperator) -> LinearOperator:
    """``inner`` is a symmetric LinearOperator ``M`` that can act on the vectors of ``op``."""
    if not isinstance(inner, LinearOperator):
        raise ArgumentTypeError(
            f"inner must be a valleys LinearOperator M (the inner product ⟨x, y⟩_M = xᵀMy), "
            f"got {type(inner).__name__}; wrap a matrix in DenseOperator or a function in "
            "LambdaOperator")
    if not inner.symmetric:
        raise ArgumentValueError(
            f"inner must be symmetric positive semidefinite, but {inner!r} has symmetric=False")
    if (inner.size, inner.dtype, inner.device) != (op.size, op.dtype, op.device):
        raise ArgumentValueError(
            f"inner must act on the operator's vectors (size {op.size}, {op.dtype}, "
            f"{op.device}), got size {inner.size}, {inner.dtype}, {inner.device}")
    return inner


# -- random vectors and checked products ---------------------------------------------------------
def _generator(device: torch.device, seed: int | None) -> torch.Generator:
    """A generator on the operator's device, so random vectors are drawn where they are used."""
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    return gen


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of Krylov bases: the operator's, but at least float32."""
    return torch.promote_types(dtype, torch.float32)


def _start_vector(op: LinearOperator, v0: object, gen: torch.Generator) -> torch.Tensor:
    work = _work_dtype(op.dtype)
    if v0 is None:
        return torch.randn(op.size, generator=gen, dtype=work, device=op.device)
    if not isinstance(v0, torch.Tensor):
        raise ArgumentTypeError(
            f"v0 must be a torch tensor of shape ({op.size},), got {type(v0).__name__}")
    if v0.shape != (op.size,):
        raise ArgumentValueError(f"v0 must have shape ({op.size},), got {tuple(v0.shape)}")
    if v0.dtype not in (op.dtype, work):
        raise ArgumentTypeError(f"v0 must have the operator's dtype {op.dtype} (or {work}), got "
                                f"{v0.dtype}")
    if not torch.isfinite(v0).all() or not v0.abs().max() > 0:
        raise ArgumentValueError("v0 must be finite and nonzero")
    return v0.to(device=op.device, dtype=work)


def _checked(op: LinearOperator, x: torch.Tensor, w: object, method: str) -> torch.Tensor:
    """The product ``w`` of ``op`` with ``x``, refused when it cannot be right."""
    if not isinstance(w, torch.Tensor) or w.shape != x.shape or w.dtype != x.dtype:
        raise ArgumentValueError(
            f"{op!r} returned {getattr(w, 'dtype', type(w).__name__)} of shape "
            f"{tuple(getattr(w, 'shape', ()))} for a {x.dtype} input of shape {tuple(x.shape)}; "
            f"fix its {method}"
        )
    # aminmax propagates NaN and reads w once without a boolean copy: 35x faster than
    # isfinite(w).all() on 10⁷ entries, a third of a product's time on a large model.
    if not all(bool(torch.isfinite(extreme)) for extreme in torch.aminmax(w)):
        raise ArgumentValueError(
            f"the operator {op!r} produced NaN/inf; check the model/loss for overflow "
            "(e.g. evaluate in float64) before computing its spectrum"
        )
    return w


def _apply(op: LinearOperator, v: torch.Tensor) -> torch.Tensor:
    """``A v`` with the checks that keep a broken operator from silently poisoning the basis.

    ``v`` may be in a wider dtype than the operator (the basis dtype) and on another device (a
    basis kept in host memory): the operator gets a contiguous copy in its own dtype on its own
    device (basis columns are strided views, and an operator that writes into or returns its
    input must not corrupt the basis) and the product comes back in ``v``'s dtype and device.
    """
    x = v.to(device=op.device, dtype=op.dtype, copy=True, memory_format=torch.contiguous_format)
    return _checked(op, x, op.matvec(x), "matvec").to(device=v.device, dtype=v.dtype)


def _dot64(X: torch.Tensor, Y: torch.Tensor, block: int = 1 << 20) -> torch.Tensor:
    """The column inner products ``Σ_i X_ik Y_ik`` accumulated in float64 (host), ``block``
    rows at a time so that no float64 copy of the whole matrices is made."""
    total = torch.zeros(X.shape[1], dtype=torch.float64, device=X.device)
    for start in range(0, X.shape[0], block):
        total += (X[start : start + block].double() * Y[start : start + block].double()).sum(0)
    return total.cpu()


def _apply_block(op: LinearOperator, V: torch.Tensor) -> torch.Tensor:
    """``A V`` for a block, with the checks, dtype and device handling of :func:`_apply`."""
    X = V.to(device=op.device, dtype=op.dtype, copy=True, memory_format=torch.contiguous_format)
    return _checked(op, X, op.matmat(X), "matmat").to(device=V.device, dtype=V.dtype)


# -- error bounds --------------------------------------------------------------------------------
def _order(theta: torch.Tensor, which: str) -> torch.Tensor:
    """Indices of the Ritz values ``theta`` (ascending, from eigh) from most to least wanted."""
    n = theta.numel()
    if which == "largest":
        return torch.arange(n - 1, -1, -1)
    if which == "smallest":
        return torch.arange(n)
    if which == "both":  # the two ends alternately: largest, smallest, 2nd largest, ...
        return _both(n)
    return torch.argsort(theta.abs(), descending=True, stable=True)


def _both(n: int) -> torch.Tensor:
    """``n−1, 0, n−2, 1, …``: each index once, alternating between the two ends."""
    top, bottom = n - 1, 0
    order = []
    while bottom <= top:
        order.append(top)
        if bottom < top:
            order.append(bottom)
        top, bottom = top - 1, bottom + 1
    return torch.tensor(order, dtype=torch.long)


def _error_bounds(
    theta: torch.Tensor, rho: torch.Tensor, wanted: torch.Tensor, noise: float, rounding: float,
    tail: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bounds on ``|λ − θ_i|`` for the wanted Ritz values (float64, host).

    ``theta`` holds all Ritz values (any order) and ``rho`` bounds on their true residuals
    ``‖A y_j − θ_j y_j‖`` (noise included). For a unit ``y`` there is an eigenvalue within
    ``ρ`` of ``θ`` (Krylov–Bogoliubov). When a gap around ``θ_i`` is established, the
    Kato–Temple inequality sharpens this to ``ρ² / gap`` (B. N. Parlett, *The Symmetric
    Eigenvalue Problem*, 1980, §10.2 and §11.7) for the Rayleigh quotient of the exact
    operator, which differs from ``θ_i`` by at most the product noise and the rounding of the
    projection.

    The gap is established from the Ritz values and their residuals: every other Ritz value
    locates an eigenvalue within ``ρ_j`` of itself, so ``gap_i = min_j (|θ_i − θ_j| − ρ_j)``,
    and the spectral neighbours of ``θ_i`` on either side must be resolved (``ρ_j`` at most a
    tenth of their distance): an unresolved neighbour is still moving and may stand for
    eigenvalues much nearer to ``θ_i``, so it sets the gap to zero.

    Ritz values cannot show an eigenvalue that the Krylov space has not separated yet: a
    cluster member hidden inside ``y_i`` (``y = a u_1 + b u_2``) leaves ``θ_i`` at an error
    ``≈ ρ² / |λ_1 − λ_2|`` with a much smaller true gap than the estimated one. Its signature
    is slow convergence, so the bound is also at least ``tail_i``, the geometric extrapolation
    of the last two changes of ``θ_i`` (:class:`_Trend`); without a history (``tail=None``)
    the bound is the residual.
    """
    r = rho[wanted]
    n = theta.numel()
    if n == 1 or tail is None:
        return r
    distance = (theta[wanted, None] - theta[None, :]).abs()
    apart = distance - rho[None, :]
    rows = torch.arange(wanted.numel())
    apart[rows, wanted] = math.inf
    gap = apart.min(dim=1).values.clamp(min=0.0)
    ascending = torch.argsort(theta)
    rank = torch.empty_like(ascending)
    rank[ascending] = torch.arange(n)
    for side in (-1, 1):  # the spectral neighbours must be resolved
        position = rank[wanted] + side
        inside = (position >= 0) & (position < n)
        j = ascending[position.clamp(0, n - 1)]
        unresolved = inside & (rho[j] > _GAP_WITNESS * distance[rows, j])
        gap = torch.where(unresolved, torch.zeros_like(gap), gap)
    temple = torch.maximum(r.square() / gap.clamp(min=1e-300), tail) + noise + rounding
    return torch.minimum(r, torch.where(gap > r, temple, torch.full_like(r, math.inf)))


class _Trend:
    """The last four values of the wanted Ritz values (in the solver's order of wanting), for
    the tail estimate of :func:`_error_bounds`.

    Lanczos and Rayleigh–Ritz on growing (or thick-restarted) spaces move the extreme Ritz
    values monotonically towards the eigenvalues. With the last three changes ``d_0, d_1, d_2``
    and the slower of their two ratios, ``q = max(d_1 / d_0, d_2 / d_1) < 1``, the rest of a
    geometric convergence is ``d_2 q / (1 − q)``; the slower ratio guards against convergence
    that is slowing down (a hidden neighbour). ``q ≥ 1`` (not yet geometric, or a Ritz value
    that jumped to a newly found eigenvalue) gives no estimate (``inf``), and changes within the
    rounding ``floor`` count as none.
    """

    def __init__(self) -> None:
        self.history: list[torch.Tensor] = []

    def update(self, values: torch.Tensor) -> None:
        """Record this step's wanted Ritz values (float64, host, in the order of wanting)."""
        if self.history and self.history[-1].numel() != values.numel():
            self.history = []
        self.history = [*self.history[-3:], values.detach().double().cpu().clone()]

    def tail(self, floor: float) -> torch.Tensor | None:
        """The extrapolated remaining change of each wanted value (``None`` before 4 steps)."""
        if len(self.history) < 4:
            return None
        d0, d1, d2 = ((b - a).abs() for a, b in itertools.pairwise(self.history))
        q = torch.maximum(d1 / d0.clamp(min=1e-300), d2 / d1.clamp(min=1e-300))
        geometric = torch.where(q < 1, d2 * q / (1 - q).clamp(min=1e-300),
                                torch.full_like(d2, math.inf))
        settled = torch.where(torch.minimum(d0, d1) <= floor, torch.full_like(d2, math.inf),
                              geometric)
        return torch.where(d2 <= floor, torch.zeros_like(d2), settled)


def _scale(theta: torch.Tensor, eps: float, anorm: float) -> torch.Tensor:
    """What ``tol`` is relative to: ``|θ|``, but at least ``sqrt(eps) ‖A‖``, because products
    with rounding noise of order ``eps ‖A‖`` cannot resolve a small value to a relative
    accuracy (ARPACK floors at ``eps^{2/3}``, which ignores that noise)."""
    return theta.abs().clamp(min=max(math.sqrt(eps) * anorm, 1e-300))


class _Certifier:
    """Acceptance of Ritz pairs on recomputed products, with the rounding noise of the products.

    One instance per solve. ``tol`` is relative to ``|θ_i|``, floored at ``eps^{2/3} ‖A‖`` for
    values near zero (where a relative accuracy is out of reach); ``accuracy`` says whether it
    applies to the error bound of the value or to the residual. The products' noise ``ν`` is
    measured from a linearity defect the first time it could matter: free where the solver
    predicts the verification products from its recorded ones (Lanczos before a restart), two
    extra products otherwise.
    When it puts ``tol`` out of reach, the solve stops once the bounds are within twice the
    dtype's floor and reports ``converged=False`` with a message.

    With an inner product ``M`` (``inner``) every norm is the ``M``-norm ``sqrt(xᵀMx)``: the
    residuals, the linearity defect and ``‖A‖`` (which the solver reports in that norm); the
    products with ``M`` this takes are counted in ``inner_matvecs``.
    """

    def __init__(self, op: LinearOperator, tol: float, accuracy: str,
                 gen: torch.Generator, inner: LinearOperator | None = None,
                 basis_dtype: torch.dtype | None = None) -> None:
        self.op, self.tol, self.accuracy, self.gen, self.inner = op, tol, accuracy, gen, inner
        # A basis stored narrower than the work dtype (eigsh's basis_dtype): values become
        # Rayleigh quotients of the fresh products, and its rounding floors the residuals.
        self.basis_dtype = basis_dtype
        self.inner_matvecs = 0
        self.eps_op = torch.finfo(op.dtype).eps
        self.eps_work = torch.finfo(_work_dtype(op.dtype)).eps
        # ν is decided once: a measured linearity defect, or the prior where it cannot matter;
        # both scale parts with the running ‖A‖ estimate, which only grows.
        self.defect: float | None = None
        self.use_prior = False
        self.matvecs = 0  # products spent on verification and noise
        self.trend = _Trend()

    def observe(self, theta: torch.Tensor, wanted: torch.Tensor) -> None:
        """Record one iteration's wanted Ritz values (for the convergence-tail estimate)."""
        self.trend.update(theta[wanted])

    def norms(self, R: torch.Tensor) -> torch.Tensor:
        """Column norms of ``R`` in the solve's inner product (float64, host). The ``M``-norm
        uses fresh products ``M R``; rounding can make ``rᵀMr`` slightly negative when ``r`` is
        almost in the null space of ``M``, which reads as 0."""
        if self.inner is None:
            return torch.linalg.vector_norm(R, dim=0).double().cpu()
        MR = _apply_block(self.inner, R)
        self.inner_matvecs += R.shape[1]
        return (R * MR).sum(dim=0).double().cpu().clamp(min=0.0).sqrt()

    def _targets(self, theta_w: torch.Tensor, anorm: float) -> torch.Tensor:
        return self.tol * _scale(theta_w, self.eps_op, anorm)

    def _floor(self, noise: float, anorm: float) -> float:
        """The smallest error bound (or residual) products of this noise can certify."""
        rounding = _ROUNDING_ULPS * self.eps_work * anorm
        return noise + rounding if self.accuracy == "value" else noise

    def _judge(self, theta: torch.Tensor, rho: torch.Tensor, wanted: torch.Tensor, noise: float,
               anorm: float, basis_floor: torch.Tensor | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Error bounds, the criterion, its targets and the reachable targets.

        ``basis_floor`` (per Ritz pair) is the typical size of what a low basis's rounding
        adds to a residual. It floors the residuals; a value bound only where it is the
        residual (no gap) and no gap can come either: the nearest Ritz value's floor is above
        a tenth of its distance (it can never count as resolved), or the pair's own floor is
        above that distance. Otherwise a gap established later still certifies the value to
        the squared residual."""
        rounding = _ROUNDING_ULPS * self.eps_work * anorm
        tail = self.trend.tail(noise + rounding)
        bounds = _error_bounds(theta, rho, wanted, noise, rounding, tail)
        criterion = bounds if self.accuracy == "value" else rho[wanted]
        targets = self._targets(theta[wanted], anorm)
        floor = torch.full_like(targets, self._floor(noise, anorm))
        if basis_floor is not None:
            own = basis_floor[wanted]
            limited = torch.ones_like(targets, dtype=torch.bool)
            if self.accuracy == "value":
                distance = (theta[wanted, None] - theta[None, :]).abs()
                distance[torch.arange(wanted.numel()), wanted] = math.inf
                nearest, j = distance.min(dim=1)
                hopeless = (basis_floor[j] > _GAP_WITNESS * nearest) | (own >= nearest)
                limited = (rho[wanted] <= bounds) & hopeless
            floor = floor + torch.where(limited, own, torch.zeros_like(own))
        reachable = torch.maximum(targets, 2 * floor)
        return bounds, criterion, targets, reachable

    def noise(self, anorm: float) -> float | None:
        """``ν`` at the current ``‖A‖`` estimate (``None`` while undecided)."""
        floor = _NOISE_FLOOR_ULPS * self.eps_op * anorm
        if self.use_prior:
            return _NOISE_PRIOR_ULPS * self.eps_op * anorm
        if self.defect is not None:
            return max(_NOISE_DEFECT_FACTOR * self.defect, floor)
        return None

    def promising(self, theta: torch.Tensor, estimates: torch.Tensor, wanted: torch.Tensor,
                  anorm: float, basis_floor: torch.Tensor | None = None) -> bool:
        """Whether the residual estimates (recurrence or stored products) say the wanted pairs
        are done; the optimistic floor of the noise stands in while it is undecided."""
        anorm = max(anorm, float(theta.abs().max()))
        noise = self.noise(anorm)
        if noise is None:
            noise = _NOISE_FLOOR_ULPS * self.eps_op * anorm
        _, criterion, _, reachable = self._judge(theta, estimates + noise, wanted, noise, anorm,
                                                 basis_floor)
        return bool((criterion <= reachable).all())

    def verify(self, theta: torch.Tensor, estimates: torch.Tensor, wanted: torch.Tensor,
               Y: torch.Tensor, anorm: float,
               predict: Callable[[], torch.Tensor] | None = None,
               basis_floor: torch.Tensor | None = None) -> dict[str, Any]:
        """Recompute the wanted residuals from fresh products ``A Y`` and judge them.

        ``estimates`` are the recurrence residuals of all Ritz pairs (used for the gaps only).
        ``predict`` returns what the solver's recorded products say ``A Y`` is (for Lanczos
        before a restart ``Q_m H_m S + β q_{m+1} s_mᵀ``); ``A Y`` minus it is a linearity defect
        ``A(Σ s_j q_j) − Σ s_j (A q_j)``, which measures the products' noise for free. Without
        an inner product the wanted values are replaced by the Rayleigh quotients
        ``yᵀAy / yᵀy`` of the fresh products, summed in float64, and the residuals are divided
        by ``‖y‖``: Kato–Temple and Krylov–Bogoliubov bound the Rayleigh quotient of ``y``,
        while the Ritz values carry the rounding of the basis's inner products (and, with a
        low basis, its unit roundoff times ``‖A‖`` after a restart).
        Returns a dict with the values, residuals, bounds, ``converged`` and ``done``
        (converged, or as close as the products' noise allows).
        """
        AY = _apply_block(self.op, Y)
        self.matvecs += Y.shape[1]
        if self.inner is None:
            # The Rayleigh quotients of the fresh products, summed in float64: the Ritz values
            # come from inner products of length p in the work dtype, off by ~sqrt(p)·eps·‖A‖
            # (float32 over 2·10⁶ coordinates: 2e-6 relative), beyond what Kato–Temple allows.
            squared = _dot64(Y, Y)
            theta = theta.clone()
            theta[wanted] = _dot64(Y, AY) / squared
            resid = self.norms(AY - Y * theta[wanted].to(Y)) / squared.sqrt()
        else:
            resid = self.norms(AY - Y * theta[wanted].to(Y))
        rho = estimates.clone()
        rho[wanted] = resid
        if predict is not None and self.noise(anorm) is None:
            anorm_seen = max(anorm, float(theta.abs().max()))
            if not self._prior_suffices(self._targets(theta[wanted], anorm_seen), anorm_seen):
                self.defect = float(self.norms(AY - predict().to(AY)).max())
        return self.assess(theta, rho, wanted, anorm, Y[:, 0], AY[:, 0], basis_floor)

    def assess(self, theta: torch.Tensor, rho: torch.Tensor, wanted: torch.Tensor, anorm: float,
               y: torch.Tensor, Ay: torch.Tensor,
               basis_floor: torch.Tensor | None = None) -> dict[str, Any]:
        """Judge Ritz pairs whose residuals ``rho`` (float64, all pairs) come from products.

        ``y`` and its product ``Ay`` serve the noise measurement if one is still needed.
        """
        theta_w = theta[wanted]
        anorm = max(anorm, float(theta.abs().max()))
        if self.noise(anorm) is None:
            self._decide_noise(y, Ay, self._targets(theta_w, anorm), anorm)
        decided = self.noise(anorm)
        if decided is None:  # _decide_noise always settles it
            raise RuntimeError("the product noise level is still undecided")
        noise = float(decided)
        bounds, criterion, targets, reachable = self._judge(theta, rho + noise, wanted, noise,
                                                            anorm, basis_floor)
        converged = bool((criterion <= targets).all())
        done = converged or bool((criterion <= reachable).all())
        relative = float((criterion / (targets / self.tol)).max())
        message = ""
        if done and not converged and basis_floor is not None and (
                float(basis_floor[wanted].max()) > self._floor(noise, anorm)):
            message = (
                f"tol={self.tol:g} is below what a {self.basis_dtype} Krylov basis resolves: "
                f"the rounding of its stored vectors limits the residuals to about "
                f"{float(basis_floor[wanted].max()):.2g} on values up to {anorm:.3g}, so the best "
                f"certified relative accuracy is {relative:.2g}. The values are returned with "
                "these error bounds and converged=False; use accuracy='value' (the bound then "
                "goes with the squared residual where a gap is established) or a wider "
                "basis_dtype")
        elif done and not converged:
            message = (
                f"tol={self.tol:g} is below what {self.op.dtype} products resolve: their rounding "
                f"noise is about {noise:.2g} on values up to {anorm:.3g}, so the best certified "
                f"relative accuracy is {relative:.2g}. The values are returned with these error "
                "bounds and converged=False; loosen tol, or evaluate the model in a wider dtype"
            )
        return {"values": theta[wanted], "resid": rho[wanted], "bounds": bounds,
                "converged": converged, "done": done, "relative": relative, "noise": noise,
                "message": message}

    def _prior_suffices(self, targets: torch.Tensor, anorm: float) -> bool:
        """Whether the prior noise is far below the targets (then it is used, unmeasured)."""
        return _NOISE_PRIOR_ULPS * self.eps_op * anorm <= 1e-2 * float(targets.min())

    def _decide_noise(self, y: torch.Tensor, Ay: torch.Tensor, targets: torch.Tensor,
                      anorm: float) -> None:
        if self._prior_suffices(targets, anorm):
            self.use_prior = True  # far below the targets: not worth two products
            return
        z = torch.randn(y.shape, generator=self.gen, dtype=y.dtype, device=y.device)
        if self.inner is None:
            z = z / torch.linalg.vector_norm(z)
        else:  # a unit vector of the M-norm, like y
            z = z / max(float(self.norms(z[:, None])[0]), 1e-300)
        AZ = _apply_block(self.op, torch.stack([z, y + z], dim=1))
        self.matvecs += 2
        defect = AZ[:, 1] - Ay - AZ[:, 0]
        self.defect = float(torch.linalg.vector_norm(defect) if self.inner is None
                            else self.norms(defect[:, None])[0])



def _record(check: dict[str, Any], *, caller: str, values: torch.Tensor, vectors: torch.Tensor,
            matvecs: int, tol: float, which: str, method: str, seed: int | None,
            restarts: int, t0: float, accuracy: str, stalled: str | None = None,
            basis_bytes: int = 0, basis_device: str | None = None) -> EigshResult:
    """The result record of a judged solve; warns with the message when it did not converge.

    A spent budget gets ``stalled`` as its message (by default: what to raise or loosen), unless
    the check has its own (``tol`` below the dtype's reach).
    """
    if stalled is None:
        stalled = (
            f"{caller} did not converge to tol={tol:g} ({accuracy}) within {matvecs} matvecs "
            f"(largest relative {accuracy} error {check['relative']:.2e}); returning the current "
            "Ritz pairs with converged=False. Raise max_matvecs or ncv, or loosen tol."
        )
    message = check["message"] or ("" if check["converged"] else stalled)
    if message:
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    work: dict[str, Any] = dict(dtype=vectors.dtype, device=vectors.device)
    return EigshResult(
        values=values.to(**work), vectors=vectors, residuals=check["resid"].to(**work),
        error_bounds=check["bounds"].to(**work), matvecs=matvecs,
        converged=check["converged"], tol=tol, which=which, method=method,
        seed=None if seed is None else int(seed), restarts=restarts,
        wall_time=time.perf_counter() - t0, accuracy=accuracy, noise=check["noise"],
        message=message, basis_bytes=basis_bytes, basis_device=basis_device,
    )
