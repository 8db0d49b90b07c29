"""Extreme eigenpairs of symmetric operators: thick-restart Lanczos and power iteration.

Everything runs in torch on the operator's device. The operator computes its products in its own
dtype; the Krylov basis and its orthogonalization run in at least float32 (half-precision
Gram-Schmidt loses orthogonality within a few steps), and the tiny projected matrix is
diagonalized on the host in float64. Every returned eigenvalue carries an error bound that is
checked on freshly recomputed products and includes the products' own rounding noise. Solvers
count their own matvecs.
"""

from __future__ import annotations

import math
import numbers
import time
import warnings

import torch

from valleys._checks import seed_value
from valleys.errors import ArgumentTypeError, ArgumentValueError
from valleys.linalg._results import EigshResult
from valleys.operators._base import LinearOperator

__all__ = ["block_eigsh", "eigsh", "power_iteration"]

_WHICH = ("largest", "smallest", "magnitude")
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


# -- validation and shared helpers ------------------------------------------------------------
def _check_operator(op: object, caller: str) -> None:
    if not isinstance(op, LinearOperator):
        raise ArgumentTypeError(
            f"{caller} needs a valleys LinearOperator, got {type(op).__name__}; wrap a matrix in "
            "valleys.operators.DenseOperator or a function in LambdaOperator"
        )
    if not op.symmetric:
        raise ArgumentValueError(
            f"{caller} needs a symmetric operator, but {op!r} has symmetric=False; symmetric "
            "solvers give wrong answers otherwise (for A B use a symmetric form such as A^½BA^½)"
        )
    if not op.dtype.is_floating_point:
        raise ArgumentTypeError(f"{caller} supports real floating dtypes only, got {op.dtype}")


def _check_seed(seed: object) -> None:
    if seed is not None:
        seed_value(seed)


def _check_count(value: object, name: str, minimum: int) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ArgumentValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_tol(tol: object) -> float:
    if (
        not isinstance(tol, numbers.Real)
        or isinstance(tol, bool)
        or not math.isfinite(tol)
        or not 0 < tol < 1
    ):
        raise ArgumentValueError(
            f"tol must be a positive finite number below 1 (a relative tolerance, "
            f"e.g. 1e-4), got {tol!r}")
    return float(tol)


def _check_accuracy(accuracy: object) -> str:
    if accuracy not in _ACCURACY:
        raise ArgumentValueError(
            f"accuracy must be one of {_ACCURACY} (what tol applies to: the error "
            f"bound of each eigenvalue, or its residual), got {accuracy!r}")
    return str(accuracy)


def _generator(device: torch.device, seed: int | None) -> torch.Generator:
    """A generator on the operator's device, so random vectors are drawn where they are used."""
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    return gen


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


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of Krylov bases: the operator's, but at least float32."""
    return torch.promote_types(dtype, torch.float32)


def _apply(op: LinearOperator, v: torch.Tensor) -> torch.Tensor:
    """``A v`` with the checks that keep a broken operator from silently poisoning the basis.

    ``v`` may be in a wider dtype than the operator (the basis dtype): the operator gets a
    contiguous copy in its own dtype (basis columns are strided views, and an operator that
    writes into or returns its input must not corrupt the basis) and the product comes back in
    ``v``'s dtype.
    """
    x = v.to(dtype=op.dtype, copy=True, memory_format=torch.contiguous_format)
    w = op.matvec(x)
    if not isinstance(w, torch.Tensor) or w.shape != x.shape or w.dtype != x.dtype:
        raise ArgumentValueError(
            f"{op!r} returned {getattr(w, 'dtype', type(w).__name__)} of shape "
            f"{tuple(getattr(w, 'shape', ()))} for a {x.dtype} vector of shape {tuple(x.shape)}; "
            "fix its matvec"
        )
    if not torch.isfinite(w).all():
        raise ArgumentValueError(
            f"the operator {op!r} produced NaN/inf; check the model/loss for overflow "
            "(e.g. evaluate in float64) before computing its spectrum"
        )
    return w.to(v.dtype)


def _apply_block(op: LinearOperator, V: torch.Tensor) -> torch.Tensor:
    """``A V`` for a block, with the checks and dtype handling of :func:`_apply`."""
    X = V.to(dtype=op.dtype, copy=True, memory_format=torch.contiguous_format)
    W = op.matmat(X)
    if not isinstance(W, torch.Tensor) or W.shape != X.shape or W.dtype != X.dtype:
        raise ArgumentValueError(
            f"{op!r} returned a wrong result for a block of shape {tuple(X.shape)}; "
            "fix its matmat")
    if not torch.isfinite(W).all():
        raise ArgumentValueError(
            f"the operator {op!r} produced NaN/inf; check the model/loss for overflow "
            "(e.g. evaluate in float64) before computing its spectrum"
        )
    return W.to(V.dtype)


def _order(theta: torch.Tensor, which: str) -> torch.Tensor:
    """Indices of the Ritz values ``theta`` (ascending, from eigh) from most to least wanted."""
    n = theta.numel()
    if which == "largest":
        return torch.arange(n - 1, -1, -1)
    if which == "smallest":
        return torch.arange(n)
    return torch.argsort(theta.abs(), descending=True, stable=True)


def _error_bounds(
    theta: torch.Tensor, rho: torch.Tensor, wanted: torch.Tensor, noise: float, rounding: float
) -> torch.Tensor:
    """Bounds on ``|λ − θ_i|`` for the wanted Ritz values (float64, host).

    ``theta`` holds all Ritz values and ``rho`` bounds on their true residuals
    ``‖A y_j − θ_j y_j‖`` (noise included). For a unit ``y`` there is an eigenvalue within
    ``ρ`` of ``θ`` (Krylov–Bogoliubov). When the other Ritz values, widened by their residuals,
    keep a distance ``gap > ρ`` from ``θ_i``, the Kato–Temple inequality sharpens this to
    ``ρ² / gap`` (B. N. Parlett, *The Symmetric Eigenvalue Problem*, 1980, §10.2 and §11.7)
    for the Rayleigh quotient of the exact operator, which differs from ``θ_i`` by at most the
    product noise and the rounding of the projection. An eigenvalue that the Krylov space has
    not seen at all cannot enter a gap estimated from Ritz values; that is the usual caveat of
    a posteriori Krylov bounds.
    """
    r = rho[wanted]
    if theta.numel() == 1:
        return r
    distance = (theta[wanted, None] - theta[None, :]).abs()
    # A Ritz value with a large residual has not resolved its part of the spectrum, which may
    # hide eigenvalues much nearer (a warm start sees the rest of the spectrum only slowly):
    # it witnesses no gap at all, so the nearest such value caps the gap at zero.
    witness = rho[None, :] <= _GAP_WITNESS * distance
    apart = torch.where(witness, distance - rho[None, :], torch.zeros_like(distance))
    apart[torch.arange(wanted.numel()), wanted] = math.inf
    gap = apart.min(dim=1).values.clamp(min=0.0)
    temple = torch.where(gap > r, r.square() / gap.clamp(min=1e-300) + noise + rounding,
                         torch.full_like(r, math.inf))
    return torch.minimum(r, temple)


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
    measured (two extra products, from the linearity defect) the first time it could matter.
    When it puts ``tol`` out of reach, the solve stops once the bounds are within twice the
    dtype's floor and reports ``converged=False`` with a message.
    """

    def __init__(self, op: LinearOperator, tol: float, accuracy: str,
                 gen: torch.Generator) -> None:
        self.op, self.tol, self.accuracy, self.gen = op, tol, accuracy, gen
        self.eps_op = torch.finfo(op.dtype).eps
        self.eps_work = torch.finfo(_work_dtype(op.dtype)).eps
        # ν is decided once: a measured linearity defect, or the prior where it cannot matter;
        # both scale parts with the running ‖A‖ estimate, which only grows.
        self.defect: float | None = None
        self.use_prior = False
        self.matvecs = 0  # products spent on verification and noise

    def _targets(self, theta_w: torch.Tensor, anorm: float) -> torch.Tensor:
        return self.tol * _scale(theta_w, self.eps_op, anorm)

    def _floor(self, noise: float, anorm: float) -> float:
        """The smallest error bound (or residual) products of this noise can certify."""
        rounding = _ROUNDING_ULPS * self.eps_work * anorm
        return noise + rounding if self.accuracy == "value" else noise

    def _judge(self, theta: torch.Tensor, rho: torch.Tensor, wanted: torch.Tensor, noise: float,
               anorm: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Error bounds, the criterion, its targets and the reachable targets."""
        if self.accuracy == "value":
            rounding = _ROUNDING_ULPS * self.eps_work * anorm
            bounds = criterion = _error_bounds(theta, rho, wanted, noise, rounding)
        else:
            bounds = criterion = rho[wanted]
        targets = self._targets(theta[wanted], anorm)
        reachable = targets.clamp(min=2 * self._floor(noise, anorm))
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
                  anorm: float) -> bool:
        """Whether the residual estimates (recurrence or stored products) say the wanted pairs
        are done; the optimistic floor of the noise stands in while it is undecided."""
        anorm = max(anorm, float(theta.abs().max()))
        noise = self.noise(anorm)
        if noise is None:
            noise = _NOISE_FLOOR_ULPS * self.eps_op * anorm
        _, criterion, _, reachable = self._judge(theta, estimates + noise, wanted, noise, anorm)
        return bool((criterion <= reachable).all())

    def verify(self, theta: torch.Tensor, estimates: torch.Tensor, wanted: torch.Tensor,
               Y: torch.Tensor, anorm: float) -> dict:
        """Recompute the wanted residuals from fresh products ``A Y`` and judge them.

        ``estimates`` are the recurrence residuals of all Ritz pairs (used for the gaps only).
        Returns a dict with the residuals, bounds, ``converged`` and ``done`` (converged, or as
        close as the products' noise allows).
        """
        AY = _apply_block(self.op, Y)
        self.matvecs += Y.shape[1]
        resid = torch.linalg.vector_norm(AY - Y * theta[wanted].to(Y), dim=0).double().cpu()
        rho = estimates.clone()
        rho[wanted] = resid
        return self.assess(theta, rho, wanted, anorm, Y[:, 0], AY[:, 0])

    def assess(self, theta: torch.Tensor, rho: torch.Tensor, wanted: torch.Tensor, anorm: float,
               y: torch.Tensor, Ay: torch.Tensor) -> dict:
        """Judge Ritz pairs whose residuals ``rho`` (float64, all pairs) come from products.

        ``y`` and its product ``Ay`` serve the noise measurement if one is still needed.
        """
        theta_w = theta[wanted]
        anorm = max(anorm, float(theta.abs().max()))
        if self.noise(anorm) is None:
            self._decide_noise(y, Ay, self._targets(theta_w, anorm), anorm)
        noise = float(self.noise(anorm))
        bounds, criterion, targets, reachable = self._judge(theta, rho + noise, wanted, noise,
                                                            anorm)
        converged = bool((criterion <= targets).all())
        done = converged or bool((criterion <= reachable).all())
        relative = float((criterion / (targets / self.tol)).max())
        message = ""
        if done and not converged:
            message = (
                f"tol={self.tol:g} is below what {self.op.dtype} products resolve: their rounding "
                f"noise is about {noise:.2g} on values up to {anorm:.3g}, so the best certified "
                f"relative accuracy is {relative:.2g}. The values are returned with these error "
                "bounds and converged=False; loosen tol, or evaluate the model in a wider dtype"
            )
        return {"resid": rho[wanted], "bounds": bounds, "converged": converged, "done": done,
                "relative": relative, "noise": noise, "message": message}

    def _decide_noise(self, y: torch.Tensor, Ay: torch.Tensor, targets: torch.Tensor,
                      anorm: float) -> None:
        if _NOISE_PRIOR_ULPS * self.eps_op * anorm <= 1e-2 * float(targets.min()):
            self.use_prior = True  # far below the targets: not worth two products
            return
        z = torch.randn(y.shape, generator=self.gen, dtype=y.dtype, device=y.device)
        z = z / torch.linalg.vector_norm(z)
        AZ = _apply_block(self.op, torch.stack([z, y + z], dim=1))
        self.matvecs += 2
        self.defect = float(torch.linalg.vector_norm(AZ[:, 1] - Ay - AZ[:, 0]))


class _Lanczos:
    """A Lanczos basis with full reorthogonalization; the one Lanczos step of the package.

    Holds the orthonormal basis ``Q`` (``p x (ncv + 1)``, on the operator's device in at least
    float32; the extra column is the next Lanczos vector) and the projected matrix
    ``T = Qᵀ A Q`` (float64, host). Each step applies ``A`` once and orthogonalizes against the
    whole basis with classical Gram-Schmidt done twice (Kahan's "twice is enough", B. N.
    Parlett, The Symmetric Eigenvalue Problem, 1980, §6.9), recording the Gram-Schmidt
    coefficients as the new column of ``T``. In exact arithmetic that column is tridiagonal
    (arrow-shaped after a thick restart); recording all of it keeps ``T`` the exact Rayleigh
    quotient either way, so ``A Q_m = Q_m T_m + β q_{m+1} e_mᵀ`` holds to rounding.
    """

    def __init__(self, op: LinearOperator, ncv: int, start: torch.Tensor, gen: torch.Generator):
        self.op = op
        self.gen = gen
        self.work = _work_dtype(op.dtype)
        self.Q = torch.zeros(op.size, ncv + 1, dtype=self.work, device=op.device)
        self.T = torch.zeros(ncv, ncv, dtype=torch.float64)
        start = start.to(self.work)
        self.Q[:, 0] = start / torch.linalg.vector_norm(start)
        self.m = 0  # basis vectors already multiplied by A (T is m x m)
        self.beta = 0.0  # norm of the residual A q_m - Q_m T[:, m]: the scale of Ritz residuals
        self.anorm = 0.0  # running max of ‖A q‖, a lower estimate of ‖A‖
        self.matvecs = 0
        self.eps = torch.finfo(self.work).eps

    def step(self) -> bool:
        """Extend the basis by one vector; return True on breakdown (invariant subspace)."""
        m = self.m
        basis = self.Q[:, : m + 1]
        aq = _apply(self.op, self.Q[:, m])
        self.matvecs += 1
        h = basis.T @ aq
        # Out of place first: the operator's output may alias its internal state.
        w = aq - basis @ h
        h2 = basis.T @ w
        w -= basis @ h2
        h += h2
        # One device-to-host transfer per step: the new column of T and the two norms.
        norms = torch.stack([torch.linalg.vector_norm(w), torch.linalg.vector_norm(aq)])
        host = torch.cat([h, norms]).double().cpu()
        col, (beta, aq_norm) = host[: m + 1], host[m + 1 :].tolist()
        self.T[: m + 1, m] = col
        self.T[m, : m + 1] = col
        self.m = m + 1
        self.anorm = max(self.anorm, aq_norm)
        # beta stays the true leftover norm even on breakdown, so residual estimates stay honest.
        self.beta = beta
        if self.m == self.op.size or beta <= _BREAKDOWN * self.eps * self.anorm:
            return True
        self.Q[:, self.m] = w / beta
        return False

    def inject(self) -> None:
        """After a breakdown, continue from a random vector orthogonal to the basis."""
        basis = self.Q[:, : self.m]
        r = torch.randn(self.op.size, generator=self.gen, dtype=self.work, device=self.op.device)
        for _ in range(2):
            r -= basis @ (basis.T @ r)
        self.Q[:, self.m] = r / torch.linalg.vector_norm(r)

    def ritz(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Ritz values (ascending) and the eigenvectors ``S`` of ``T_m`` (float64, host)."""
        return torch.linalg.eigh(self.T[: self.m, : self.m])

    def vectors(self, S: torch.Tensor) -> torch.Tensor:
        """Ritz vectors ``Q_m S`` in the basis dtype, on the operator's device."""
        return self.Q[:, : self.m] @ S.to(dtype=self.work, device=self.op.device)

    def restart(self, theta: torch.Tensor, S: torch.Tensor, keep: torch.Tensor) -> None:
        """Thick restart (Wu & Simon 2000): keep the Ritz pairs ``keep`` and the next vector.

        The kept Ritz vectors and ``q_{m+1}`` span a Krylov space again, so the Lanczos steps
        continue unchanged; the next step's Gram-Schmidt coefficients fill in the arrow-shaped
        coupling ``β s_{m,i}`` between the Ritz vectors and the new vector.
        """
        ell = keep.numel()
        Y = self.vectors(S[:, keep])
        self.Q[:, ell] = self.Q[:, self.m]
        self.Q[:, :ell] = Y
        self.T.zero_()
        self.T[:ell, :ell] = torch.diag(theta[keep])
        self.m = ell


def _record(check: dict, stalled: str, *, values: torch.Tensor, vectors: torch.Tensor,
            matvecs: int, tol: float, which: str, method: str, seed: int | None,
            restarts: int, t0: float, accuracy: str) -> EigshResult:
    """The result record of a judged solve; warns with the message when it did not converge
    (``stalled``: the message for a spent budget, when the check has none)."""
    message = check["message"] or ("" if check["converged"] else stalled)
    if message:
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    work = dict(dtype=vectors.dtype, device=vectors.device)
    return EigshResult(
        values=values.to(**work), vectors=vectors, residuals=check["resid"].to(**work),
        error_bounds=check["bounds"].to(**work), matvecs=matvecs,
        converged=check["converged"], tol=tol, which=which, method=method,
        seed=None if seed is None else int(seed), restarts=restarts,
        wall_time=time.perf_counter() - t0, accuracy=accuracy, noise=check["noise"],
        message=message,
    )


# -- public solvers ---------------------------------------------------------------------------
def eigsh(
    op: LinearOperator,
    k: int = 1,
    which: str = "largest",
    *,
    tol: float = 1e-4,
    accuracy: str = "residual",
    max_matvecs: int | None = None,
    ncv: int | None = None,
    v0: torch.Tensor | None = None,
    seed: int | None = 0,
) -> EigshResult:
    """``k`` extreme eigenpairs of a symmetric operator by thick-restart Lanczos, with error bounds.

    Algorithm: Lanczos with full reorthogonalization (classical Gram-Schmidt applied twice)
    builds an orthonormal Krylov basis of up to ``ncv`` vectors; when it is full the wanted Ritz
    vectors plus some of their neighbours are kept and the iteration continues (thick restart:
    K. Wu and H. Simon, "Thick-restart Lanczos method for large symmetric eigenvalue problems",
    SIAM J. Matrix Anal. Appl. 22(2), 2000). The operator computes its products in its own
    dtype; the basis is kept in at least float32 and the projected matrix in float64.

    Stopping: after every matvec the projected matrix is diagonalized, and the recurrence
    residuals ``|β_m s_{m,i}|`` of the Ritz pairs ``(θ_i, y_i)`` predict whether the wanted
    pairs are done. The prediction is then checked on fresh products ``A y_i`` (``k`` matvecs):
    the recurrence stops meaning anything once low-precision products have made it inexact. With
    ``ρ_i = ‖A y_i − θ_i y_i‖ + ν`` (``ν``: the products' rounding noise, estimated from the
    linearity defect ``A(y+z) − Ay − Az`` of two extra products where it could matter) there is
    an eigenvalue of ``A`` within ``ρ_i`` of ``θ_i`` (Krylov–Bogoliubov: rigorous for any unit
    ``y``, up to the noise estimate). That is the reported error bound, and the default
    criterion ``accuracy="residual"`` stops when every ``ρ_i ≤ tol · |θ_i|`` (ARPACK's test,
    with the residual recomputed and the noise added).

    ``accuracy="value"`` instead stops on the sharper Kato–Temple bound
    ``ρ_i² / gap_i + ν + rounding`` (B. N. Parlett, *The Symmetric Eigenvalue Problem*, 1980,
    §10.2, §11.7), with ``gap_i`` estimated from the other Ritz values and their residuals;
    only Ritz values whose residual is under a tenth of their distance count as witnesses. It
    can take far fewer products for separated eigenvalues, but it is not rigorous: an
    eigenvalue the Krylov space has not resolved yet (a warm start, a tight cluster next to
    ``θ_i``) can sit inside the assumed gap. It is therefore not the default.

    Ritz values within ``sqrt(eps) ‖A‖`` of zero get the absolute target
    ``tol · sqrt(eps) ‖A‖`` (``eps`` of the operator's dtype), as the products' noise of
    order ``eps ‖A‖`` puts a relative accuracy out of reach there.

    When ``tol`` is below what the operator's dtype can resolve (bfloat16/float16 products
    carry noise of about ``1e-2``/``1e-3`` of ``‖A‖``; also any ``tol`` below a few ulps), the
    solver iterates until the bounds are within twice that floor and returns the values with
    their bounds, ``converged=False`` and a :attr:`~EigshResult.message`.

    Breakdown (``β ≈ 0``: the Krylov space is invariant, as for operators with few distinct
    eigenvalues, exactly low-rank ones, ``v0`` an eigenvector, or ``p <= ncv``) is handled as in
    ARPACK: the iteration continues from random vectors orthogonal to the basis, and once ``β``
    has dropped below ``sqrt(eps) ‖A‖`` it only accepts with a full basis (or one spanning all of
    ``R^p``, when the result is exact), so that repeated eigenvalues get a chance to show up.

    Limitations: a Krylov method started from one vector sees one direction per eigenspace, so
    without a breakdown a repeated eigenvalue is, in exact arithmetic, found once (rounding and
    restarts may reveal further copies, but slowly) and the next distinct eigenvalue takes the
    place of the missing copies; an eigenvalue the Krylov space has not seen also cannot narrow
    the gaps the bounds rely on. Clustered but distinct eigenvalues are fine.

    Args:
        op: a symmetric :class:`~valleys.operators.LinearOperator` of size ``p``.
        k: number of eigenpairs, ``1 <= k <= p``; ``k = p`` (e.g. a model with one parameter)
            builds the dense matrix from ``p`` matvecs and returns ``method="dense"``.
        which: ``"largest"`` (algebraic), ``"smallest"`` (algebraic) or ``"magnitude"``
            (largest ``|λ|``; the one to use for the sharpness of an indefinite Hessian).
        tol: relative tolerance on the residual of each pair (or on its Kato–Temple bound).
        accuracy: ``"residual"`` (default) or ``"value"``, what ``tol`` applies to (above).
        max_matvecs: budget of operator applications, verification products included (except
            when it is below ``2k + 2``); when it runs out the current Ritz pairs are verified and
            returned with ``converged=False`` and a RuntimeWarning. Default
            ``max(20 * ncv, 1000)``.
        ncv: basis size, ``k + 2 <= ncv`` (capped at ``p``). Default ``max(2k + 1, 20)``.
        v0: start vector (e.g. the previous step's top eigenvector), in the operator's dtype or
            the basis dtype; default random normal. Acceptance only checks residuals, so a
            ``v0`` within ``tol`` of a non-extreme eigenvector can be accepted as is; add some
            noise to ``v0`` if that is a risk.
        seed: seed for the random start, breakdown and noise vectors; same seed, same result.

    Returns:
        An :class:`~valleys.linalg.EigshResult` with ``method="lanczos"``; values,
        vectors, residuals and error bounds in the basis dtype (the operator's, widened to
        float32 for half-precision operators).

    Raises:
        TypeError: ``op`` is not a LinearOperator, or ``v0``/``seed`` has the wrong type.
        ValueError: invalid ``k``, ``which``, ``tol``, ``accuracy``, ``ncv``, ``max_matvecs``,
            ``v0``, a non-symmetric operator, or an operator that produced NaN/inf.
    """
    t0 = time.perf_counter()
    _check_operator(op, "eigsh")
    p = op.size
    if not isinstance(k, numbers.Integral) or isinstance(k, bool) or not 1 <= k <= p:
        raise ArgumentValueError(
            f"k must be an integer with 1 <= k <= p = {p} (the operator's size), got {k!r}"
        )
    k = int(k)
    if which not in _WHICH:
        raise ArgumentValueError(f"which must be one of {_WHICH}, got {which!r}")
    tol = _check_tol(tol)
    accuracy = _check_accuracy(accuracy)
    _check_seed(seed)
    if k == p:  # every eigenpair: p matvecs and a dense eigensolver are exact and cheapest
        return _dense_eigsh(op, which, tol, accuracy, seed, t0)
    if ncv is None:
        ncv = min(max(2 * k + 1, 20), p)
    else:
        ncv = min(_check_count(ncv, "ncv", k + 1), p)
        if ncv < p and ncv < k + 2:
            raise ArgumentValueError(
                f"ncv must be at least k + 2 = {k + 2} to make progress, got {ncv}")
    if max_matvecs is None:
        max_matvecs = max(20 * ncv, 1000)
    max_matvecs = _check_count(max_matvecs, "max_matvecs", k)
    # Keep the wanted pairs plus about half the rest of the basis: the unwanted-but-near Ritz
    # vectors carry most of the convergence already paid for (Wu & Simon keep a similar share).
    n_keep = min(k + max((ncv - k) // 2, 1), ncv - 1)

    gen = _generator(op.device, seed)
    lz = _Lanczos(op, ncv, _start_vector(op, v0, gen), gen)
    cert = _Certifier(op, tol, accuracy, gen)
    # Once the Krylov space is (nearly) invariant every Ritz pair in it passes the test, yet a
    # repeated eigenvalue (or, with a user v0, anything outside v0's invariant subspace) may be
    # missing: like ARPACK, fill the basis (with random vectors after an exact breakdown) before
    # accepting. ``near`` flags β below sqrt(eps)·‖A‖, far above rounding noise.
    near = math.sqrt(lz.eps)
    suspended = False
    restarts = 0
    # A failed verification means the recurrence overstates convergence (noisy products):
    # verify again only after ``backoff`` more steps, doubling, so checks stay a small share.
    verify_at, backoff = 0, 2
    check: dict | None = None
    while True:
        breakdown = lz.step()
        suspended = suspended or breakdown or lz.beta <= near * lz.anorm
        theta, S = lz.ritz()
        wanted = _order(theta, which)[:k]
        estimates = (lz.beta * S[lz.m - 1]).abs()
        check = None
        ready = lz.m >= k and (not suspended or lz.m in (ncv, p))
        if ready and lz.matvecs >= verify_at and cert.promising(theta, estimates, wanted,
                                                                lz.anorm):
            check = cert.verify(theta, estimates, wanted, lz.vectors(S[:, wanted]), lz.anorm)
            if check["done"]:
                break
            verify_at, backoff = lz.matvecs + backoff, min(2 * backoff, ncv)
        # The final verification (k products, and 2 for the noise if still unknown) is kept
        # inside the budget; m == p: T is similar to A, nothing is left to add.
        reserve = k + (2 if cert.noise(lz.anorm) is None else 0)
        if lz.m == p or (lz.m >= k and lz.matvecs + cert.matvecs + reserve >= max_matvecs):
            break
        if breakdown:
            lz.inject()
        if lz.m == ncv:
            lz.restart(theta, S, _order(theta, which)[:n_keep])
            restarts += 1
            suspended = False

    Y = lz.vectors(S[:, wanted])
    if check is None:  # the budget ran out (or m == p) on unverified Ritz pairs
        check = cert.verify(theta, estimates, wanted, Y, lz.anorm)
    stalled = (
        f"eigsh did not converge to tol={tol:g} ({accuracy}) within "
        f"{lz.matvecs + cert.matvecs} matvecs (largest relative {accuracy} error "
        f"{check['relative']:.2e}); returning the current Ritz pairs with converged=False. "
        "Raise max_matvecs or ncv, or loosen tol."
    )
    return _record(check, stalled, values=theta[wanted], vectors=Y,
                   matvecs=lz.matvecs + cert.matvecs, tol=tol, which=which, method="lanczos",
                   seed=seed, restarts=restarts, t0=t0, accuracy=accuracy)


def _dense_eigsh(op: LinearOperator, which: str, tol: float, accuracy: str, seed: int | None,
                 t0: float) -> EigshResult:
    """All ``p`` eigenpairs from the dense matrix (``method="dense"``), in float64 so that
    half-precision operators get an eigensolver. The matrix's asymmetry measures the noise of
    its columns (a symmetric operator's products differ from the transpose only by rounding);
    the bounds add it, and twice the floor of the dtype, to the float64 residuals."""
    A = op.to_dense()
    A64 = A.to(torch.float64)
    if not bool(torch.isfinite(A64).all()):
        raise ArgumentValueError("the operator produced NaN or infinite values")
    eps = torch.finfo(op.dtype).eps
    anorm = float(torch.linalg.matrix_norm(A64, ord=2))
    if float((A64 - A64.T).abs().max()) > 100 * eps * max(float(A64.abs().max()), 1e-300):
        raise ArgumentValueError(
            f"eigsh needs a symmetric operator; its dense matrix is asymmetric by "
            f"{float((A64 - A64.T).abs().max()):.3g}")
    asym = float(torch.linalg.matrix_norm(A64 - A64.T, ord=2))
    theta, V = torch.linalg.eigh((A64 + A64.T) / 2)
    order = _order(theta, which)
    theta, V = theta[order], V[:, order]
    residuals = torch.linalg.vector_norm(A64 @ V - V * theta, dim=0)
    noise = asym / 2 + _NOISE_FLOOR_ULPS * eps * anorm
    bounds = residuals + noise
    targets = tol * _scale(theta, eps, anorm)
    converged = bool((bounds <= targets).all())
    message = "" if converged else (
        f"tol={tol:g} is below what the {op.dtype} dense matrix resolves (noise about "
        f"{noise:.2g} on values up to {anorm:.3g}); the eigenvalues are returned with their error "
        "bounds and converged=False"
    )
    if message:
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    work = dict(dtype=_work_dtype(op.dtype), device=op.device)
    return EigshResult(
        values=theta.to(**work), vectors=V.to(**work), residuals=residuals.to(**work),
        error_bounds=bounds.to(**work), matvecs=op.size, converged=converged, tol=tol,
        which=which, method="dense", seed=None if seed is None else int(seed), restarts=0,
        wall_time=time.perf_counter() - t0, accuracy=accuracy, noise=noise, message=message,
    )


def block_eigsh(
    op: LinearOperator,
    V0: torch.Tensor,
    k: int = 1,
    which: str = "largest",
    *,
    tol: float = 1e-4,
    accuracy: str = "residual",
    max_matvecs: int | None = None,
    ncv: int | None = None,
    seed: int | None = 0,
) -> tuple[EigshResult, torch.Tensor]:
    """``k`` extreme eigenpairs from a *block* of start vectors (warm starts of a sequence).

    Algorithm: Rayleigh-Ritz on a growing orthonormal basis ``Q`` whose products ``A Q`` are
    kept. The basis starts as the span of ``V0`` (``m`` columns, ``m`` matvecs); each further
    matvec adds the residual ``A y − θ y`` of the least converged wanted Ritz pair,
    orthogonalized twice against ``Q``. This is Davidson's method without a preconditioner
    (E. R. Davidson, J. Comput. Phys. 17, 1975; Y. Saad, *Numerical Methods for Large
    Eigenvalue Problems*, 2nd ed., SIAM 2011, §11.2): started from one vector it spans the
    same Krylov spaces as Lanczos; started from the previous evaluation's top ``m`` Ritz
    vectors it keeps the nearby eigendirections in the space from the first product. When the
    basis reaches ``ncv`` vectors it is restarted with the best Ritz vectors (no products lost).

    It stops on the criterion of :func:`eigsh` (``accuracy``, error bounds with the products'
    noise); here the residuals are computed from the stored products, not from a recurrence.
    Like any warm start, a block within ``tol`` of non-extreme eigenvectors can be accepted as
    is: perturb ``V0``. An eigenvalue of multiplicity ``r`` is found ``min(r, m)`` times at
    most in exact arithmetic (there is no breakdown rule as in :func:`eigsh`): for the full
    multiplicity use a block at least that wide.

    Args:
        op: a symmetric :class:`~valleys.operators.LinearOperator` of size ``p``.
        V0: ``(p, m)`` start block (``m >= 1``, any scaling; linearly dependent columns are
            dropped), in the operator's dtype or the basis dtype.
        k: number of eigenpairs, ``1 <= k < p``.
        which: ``"largest"``, ``"smallest"`` or ``"magnitude"`` (as in :func:`eigsh`).
        tol: relative tolerance, on the error bounds or the residuals (``accuracy``).
        accuracy: ``"value"`` or ``"residual"`` (as in :func:`eigsh`).
        max_matvecs: budget (default ``max(20 * ncv, 1000)``; a noise measurement may add 2).
        ncv: largest basis size (default ``max(m + 20, 2k + 1)``, capped at ``p``).
        seed: seeds the random vectors used after a breakdown.

    Returns:
        The :class:`~valleys.linalg.EigshResult` (``method="block-davidson"``) and all
        Ritz vectors of the final basis, most wanted first, a ``(p, n)`` tensor with
        ``n <= ncv`` (the next warm start: its first ``m`` columns), in the basis dtype.
    """
    t0 = time.perf_counter()
    _check_operator(op, "block_eigsh")
    p = op.size
    if not isinstance(k, numbers.Integral) or isinstance(k, bool) or not 1 <= k < p:
        raise ArgumentValueError(f"k must be an integer with 1 <= k < p = {p}, got {k!r}")
    k = int(k)
    if which not in _WHICH:
        raise ArgumentValueError(f"which must be one of {_WHICH}, got {which!r}")
    tol = _check_tol(tol)
    accuracy = _check_accuracy(accuracy)
    _check_seed(seed)
    if not isinstance(V0, torch.Tensor) or V0.ndim != 2 or V0.shape[0] != p or V0.shape[1] < 1:
        raise ArgumentValueError(f"V0 must be a tensor of shape ({p}, m) with m >= 1, got "
                                 f"{tuple(getattr(V0, 'shape', ()))}")
    work = _work_dtype(op.dtype)
    if V0.dtype not in (op.dtype, work):
        raise ArgumentTypeError(f"V0 must have the operator's dtype {op.dtype} (or {work}), got "
                                f"{V0.dtype}")
    if not torch.isfinite(V0).all():
        raise ArgumentValueError("V0 must be finite")
    ncv = max(V0.shape[1] + 20, 2 * k + 1) if ncv is None else _check_count(ncv, "ncv", k + 2)
    ncv = min(max(ncv, k + 2), p)
    if max_matvecs is None:
        max_matvecs = max(20 * ncv, 1000)
    max_matvecs = _check_count(max_matvecs, "max_matvecs", k)
    n_keep = min(max(k + (ncv - k) // 2, V0.shape[1]), ncv - 1)
    gen = _generator(op.device, seed)
    cert = _Certifier(op, tol, accuracy, gen)
    eps = torch.finfo(work).eps
    to_work = dict(dtype=work, device=op.device)

    # Orthonormal basis of span(V0) (columns below rounding level relative to the largest
    # are dependent and dropped); start over from a random vector if nothing is left.
    U, sv, _ = torch.linalg.svd(V0.to(**to_work)[:, :ncv], full_matrices=False)
    Q = U[:, sv > 100 * eps * sv.max()] if bool(sv.max() > 0) else U[:, :0]
    if Q.shape[1] == 0:
        Q = torch.randn(p, 1, generator=gen, **to_work)
        Q = Q / torch.linalg.vector_norm(Q)
    AQ = _apply_block(op, Q)
    matvecs = Q.shape[1]
    restarts = 0
    check: dict = {}
    while True:
        G = (Q.T @ AQ).double().cpu()
        theta, S = torch.linalg.eigh(0.5 * (G + G.T))
        order = _order(theta, which)
        theta, S = theta[order], S[:, order]
        Sw = S.to(**to_work)
        R = AQ @ Sw - (Q @ Sw) * theta.to(**to_work)
        resid = torch.linalg.vector_norm(R, dim=0).double().cpu()
        wanted = torch.arange(min(k, theta.numel()))
        if Q.shape[1] >= k:
            anorm = float(theta.abs().max())
            # p columns: the Ritz pairs are the exact eigenpairs (up to the products' noise).
            if Q.shape[1] == p or cert.promising(theta, resid, wanted, anorm):
                check = cert.assess(theta, resid, wanted, anorm, Q[:, 0], AQ[:, 0])
                check["at"] = matvecs
                if check["done"] or Q.shape[1] == p:
                    break
            rel = resid[:k] / theta[:k].abs().clamp(min=1e-300)
        else:
            rel = torch.full((k,), math.inf, dtype=torch.float64)
        if matvecs + cert.matvecs >= max_matvecs:
            break
        if Q.shape[1] >= ncv:
            keep = Sw[:, :n_keep]
            Q, AQ = Q @ keep, AQ @ keep
            restarts += 1
        # Expand with the residual of the least converged wanted pair (of the top pair while
        # the basis has fewer than k vectors); after a breakdown (the residual lies in the
        # basis: the space is invariant) with a random vector.
        j = int(torch.argmax(rel)) if Q.shape[1] >= k else 0
        r = R[:, j].clone() if j < R.shape[1] else torch.zeros(p, **to_work)
        for attempt in range(2):
            for _ in range(2):
                r = r - Q @ (Q.T @ r)
            norm = float(torch.linalg.vector_norm(r))
            if norm > _BREAKDOWN * eps * max(float(theta.abs().max()), 1e-300) or attempt:
                break
            r = torch.randn(p, generator=gen, **to_work)
        q = (r / torch.linalg.vector_norm(r))[:, None]
        Q = torch.cat([Q, q], dim=1)
        AQ = torch.cat([AQ, _apply_block(op, q)], dim=1)
        matvecs += 1

    if not check or check["at"] != matvecs:  # the budget ran out on unjudged Ritz pairs
        if Q.shape[1] < k:
            raise ArgumentValueError(
                f"block_eigsh: max_matvecs={max_matvecs} ran out before the basis "
                f"held k={k} vectors; raise max_matvecs")
        check = cert.assess(theta, resid, wanted, float(theta.abs().max()), Q[:, 0], AQ[:, 0])
    stalled = (
        f"block_eigsh did not converge to tol={tol:g} ({accuracy}) within "
        f"{matvecs + cert.matvecs} matvecs (largest relative {accuracy} error "
        f"{check['relative']:.2e}); returning the current Ritz pairs with converged=False. "
        "Raise max_matvecs or ncv, or loosen tol."
    )
    ritz = Q @ S.to(**to_work)
    result = _record(check, stalled, values=theta[:k], vectors=ritz[:, :k].clone(),
                     matvecs=matvecs + cert.matvecs, tol=tol, which=which,
                     method="block-davidson", seed=seed, restarts=restarts, t0=t0,
                     accuracy=accuracy)
    return result, ritz


def power_iteration(
    op: LinearOperator,
    *,
    tol: float = 1e-4,
    max_matvecs: int = 1000,
    v0: torch.Tensor | None = None,
    seed: int | None = 0,
) -> EigshResult:
    """The largest-magnitude eigenpair by power iteration (for comparison with PyHessian).

    Iterates ``v ← A v / ‖A v‖`` and stops when the Rayleigh quotient ``μ = vᵀ A v`` satisfies
    ``‖A v − μ v‖ ≤ tol · |μ|``, the criterion of :func:`eigsh`, measured directly each step (no
    extra matvecs). Convergence is linear with rate ``|λ_2 / λ_1|``, so :func:`eigsh` is far
    cheaper on anything but a huge gap; when ``λ_min = −λ_max`` it does not converge at all.
    (PyHessian's variant stops on the relative change of ``μ`` instead, which can stop early.)

    Args:
        op: a symmetric :class:`~valleys.operators.LinearOperator`.
        tol: relative residual tolerance.
        max_matvecs: budget; when exhausted the last iterate is returned with
            ``converged=False``.
        v0: start vector; default random normal.
        seed: seed for the random start.

    Returns:
        An :class:`~valleys.linalg.EigshResult` with ``k = 1``, ``which="magnitude"``,
        ``method="power"``.
    """
    t0 = time.perf_counter()
    _check_operator(op, "power_iteration")
    tol = _check_tol(tol)
    max_matvecs = _check_count(max_matvecs, "max_matvecs", 1)
    _check_seed(seed)
    gen = _generator(op.device, seed)
    cert = _Certifier(op, tol, "residual", gen)
    v = _start_vector(op, v0, gen)
    v = v / torch.linalg.vector_norm(v)
    matvecs = 0
    while True:
        w = _apply(op, v)
        matvecs += 1
        mu = torch.dot(v, w)
        r = w - mu * v
        res, mu_f, w_norm = (
            torch.stack([torch.linalg.vector_norm(r), mu, torch.linalg.vector_norm(w)])
            .double()
            .cpu()
            .tolist()
        )
        theta = torch.tensor([mu_f], dtype=torch.float64)
        check = cert.assess(theta, torch.tensor([res], dtype=torch.float64), torch.arange(1),
                            abs(mu_f), v, w)
        if check["done"] or matvecs + cert.matvecs >= max_matvecs:
            break
        v = w / w_norm
    stalled = (
        f"power_iteration did not converge to tol={tol:g} within {matvecs + cert.matvecs} "
        f"matvecs (relative residual {res / max(abs(mu_f), 1e-300):.2e}); the gap |λ2/λ1| "
        "is probably close to 1: use eigsh(op, which='magnitude') instead."
    )
    return _record(check, stalled, values=mu.reshape(1), vectors=v.reshape(-1, 1).clone(),
                   matvecs=matvecs + cert.matvecs, tol=tol, which="magnitude", method="power",
                   seed=seed, restarts=0, t0=t0, accuracy="residual")
