"""Extreme eigenpairs of symmetric operators: thick-restart Lanczos and power iteration.

Everything runs in torch on the operator's device and dtype; only the tiny projected matrix is
diagonalized on the host, in float64. Solvers count their own matvecs.
"""

from __future__ import annotations

import math
import numbers
import time
import warnings

import torch

from valleys.linalg.results import EigshResult
from valleys.operators.base import LinearOperator

__all__ = ["block_eigsh", "eigsh", "power_iteration"]

_WHICH = ("largest", "smallest", "magnitude")
# β below this many machine epsilons times ‖A q‖ is rounding noise: the Krylov space is invariant.
_BREAKDOWN = 100.0


# -- validation and shared helpers ------------------------------------------------------------
def _check_operator(op: object, caller: str) -> None:
    if not isinstance(op, LinearOperator):
        raise TypeError(
            f"{caller} needs a valleys LinearOperator, got {type(op).__name__}; wrap a matrix in "
            "valleys.operators.base.DenseOperator or a function in LambdaOperator"
        )
    if not op.symmetric:
        raise ValueError(
            f"{caller} needs a symmetric operator, but {op!r} has symmetric=False; symmetric "
            "solvers give wrong answers otherwise (for A B use a symmetric form such as A^½BA^½)"
        )
    if not op.dtype.is_floating_point:
        raise TypeError(f"{caller} supports real floating dtypes only, got {op.dtype}")


def _check_seed(seed: object) -> None:
    if seed is not None and (not isinstance(seed, numbers.Integral) or isinstance(seed, bool)):
        raise TypeError(f"seed must be an int or None, got {seed!r}")


def _check_count(value: object, name: str, minimum: int) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_tol(tol: object) -> float:
    if (
        not isinstance(tol, numbers.Real)
        or isinstance(tol, bool)
        or not math.isfinite(tol)
        or tol <= 0
    ):
        raise ValueError(f"tol must be a positive finite number (e.g. 1e-4), got {tol!r}")
    return float(tol)


def _generator(device: torch.device, seed: int | None) -> torch.Generator:
    """A generator on the operator's device, so random vectors are drawn where they are used."""
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    return gen


def _start_vector(op: LinearOperator, v0: object, gen: torch.Generator) -> torch.Tensor:
    if v0 is None:
        return torch.randn(op.size, generator=gen, dtype=op.dtype, device=op.device)
    if not isinstance(v0, torch.Tensor):
        raise TypeError(f"v0 must be a torch tensor of shape ({op.size},), got {type(v0).__name__}")
    if v0.shape != (op.size,):
        raise ValueError(f"v0 must have shape ({op.size},), got {tuple(v0.shape)}")
    if v0.dtype != op.dtype:
        raise TypeError(f"v0 must have the operator's dtype {op.dtype}, got {v0.dtype}")
    if not torch.isfinite(v0).all() or not v0.abs().max() > 0:
        raise ValueError("v0 must be finite and nonzero")
    return v0.to(op.device)


def _apply(op: LinearOperator, v: torch.Tensor) -> torch.Tensor:
    """``A v`` with the checks that keep a broken operator from silently poisoning the basis.

    The operator gets a contiguous copy: basis columns are strided views, and an operator that
    writes into (or returns) its input must not be able to corrupt the basis.
    """
    w = op.matvec(v.clone(memory_format=torch.contiguous_format))
    if not isinstance(w, torch.Tensor) or w.shape != v.shape or w.dtype != v.dtype:
        raise ValueError(
            f"{op!r} returned {getattr(w, 'dtype', type(w).__name__)} of shape "
            f"{tuple(getattr(w, 'shape', ()))} for a {v.dtype} vector of shape {tuple(v.shape)}; "
            "fix its matvec"
        )
    if not torch.isfinite(w).all():
        raise ValueError(
            f"the operator {op!r} produced NaN/inf; check the model/loss for overflow "
            "(e.g. evaluate in float64) before computing its spectrum"
        )
    return w


def _apply_block(op: LinearOperator, V: torch.Tensor) -> torch.Tensor:
    """``A V`` for a block, with the checks of :func:`_apply`."""
    W = op.matmat(V.clone(memory_format=torch.contiguous_format))
    if not isinstance(W, torch.Tensor) or W.shape != V.shape or W.dtype != V.dtype:
        raise ValueError(f"{op!r} returned a wrong result for a block of shape {tuple(V.shape)}; "
                         "fix its matmat")
    if not torch.isfinite(W).all():
        raise ValueError(
            f"the operator {op!r} produced NaN/inf; check the model/loss for overflow "
            "(e.g. evaluate in float64) before computing its spectrum"
        )
    return W


def _order(theta: torch.Tensor, which: str) -> torch.Tensor:
    """Indices of the Ritz values ``theta`` (ascending, from eigh) from most to least wanted."""
    n = theta.numel()
    if which == "largest":
        return torch.arange(n - 1, -1, -1)
    if which == "smallest":
        return torch.arange(n)
    return torch.argsort(theta.abs(), descending=True, stable=True)


def _worst(resid: torch.Tensor, theta: torch.Tensor) -> float:
    return float((resid / theta.abs().clamp(min=1e-300)).max())


class _Lanczos:
    """A Lanczos basis with full reorthogonalization; the one Lanczos step of the package.

    Holds the orthonormal basis ``Q`` (``p x (ncv + 1)``, operator dtype/device; the extra column
    is the next Lanczos vector) and the projected matrix ``T = Qᵀ A Q`` (float64, host). Each step
    applies ``A`` once and orthogonalizes against the whole basis with classical Gram-Schmidt
    done twice (Kahan's "twice is enough", B. N. Parlett, The Symmetric Eigenvalue Problem,
    1980, §6.9), recording the Gram-Schmidt
    coefficients as the new column of ``T``. In exact arithmetic that column is tridiagonal
    (arrow-shaped after a thick restart); recording all of it keeps ``T`` the exact Rayleigh
    quotient either way, so ``A Q_m = Q_m T_m + β q_{m+1} e_mᵀ`` holds to rounding.
    """

    def __init__(self, op: LinearOperator, ncv: int, start: torch.Tensor, gen: torch.Generator):
        self.op = op
        self.gen = gen
        self.Q = torch.zeros(op.size, ncv + 1, dtype=op.dtype, device=op.device)
        self.T = torch.zeros(ncv, ncv, dtype=torch.float64)
        self.Q[:, 0] = start / torch.linalg.vector_norm(start)
        self.m = 0  # basis vectors already multiplied by A (T is m x m)
        self.beta = 0.0  # norm of the residual A q_m - Q_m T[:, m]: the scale of Ritz residuals
        self.anorm = 0.0  # running max of ‖A q‖, a lower estimate of ‖A‖
        self.matvecs = 0
        self.eps = torch.finfo(op.dtype).eps

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
        r = torch.randn(
            self.op.size, generator=self.gen, dtype=self.op.dtype, device=self.op.device
        )
        for _ in range(2):
            r -= basis @ (basis.T @ r)
        self.Q[:, self.m] = r / torch.linalg.vector_norm(r)

    def ritz(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Ritz values (ascending) and the eigenvectors ``S`` of ``T_m`` (float64, host)."""
        return torch.linalg.eigh(self.T[: self.m, : self.m])

    def vectors(self, S: torch.Tensor) -> torch.Tensor:
        """Ritz vectors ``Q_m S`` in the operator's dtype and device."""
        return self.Q[:, : self.m] @ S.to(dtype=self.op.dtype, device=self.op.device)

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


# -- public solvers ---------------------------------------------------------------------------
def eigsh(
    op: LinearOperator,
    k: int = 1,
    which: str = "largest",
    *,
    tol: float = 1e-4,
    max_matvecs: int | None = None,
    ncv: int | None = None,
    v0: torch.Tensor | None = None,
    seed: int | None = 0,
) -> EigshResult:
    """``k`` extreme eigenpairs of a symmetric operator by thick-restart Lanczos.

    Algorithm: Lanczos with full reorthogonalization (classical Gram-Schmidt applied twice, in the
    operator's dtype) builds an orthonormal Krylov basis of up to ``ncv`` vectors; when it is full
    the wanted Ritz vectors plus some of their neighbours are kept and the iteration continues
    (thick restart: K. Wu and H. Simon, "Thick-restart Lanczos method for large symmetric
    eigenvalue problems", SIAM J. Matrix Anal. Appl. 22(2), 2000). After *every* matvec the
    small projected matrix is diagonalized and the iteration stops as soon as all wanted Ritz
    pairs ``(θ_i, y_i)`` satisfy

        ``|β_m s_{m,i}| = ‖A y_i − θ_i y_i‖ ≤ tol · |θ_i|``,

    essentially ARPACK's criterion. Since ``A`` is symmetric this guarantees an eigenvalue of ``A``
    within ``tol · |θ_i|`` of ``θ_i`` (and within ``(tol θ_i)² / gap`` when ``θ_i`` is separated
    from the rest of the spectrum by ``gap``). For Ritz values within ``eps^{2/3} ‖A‖`` of zero
    the bound is taken absolute, ``tol · eps^{2/3} ‖A‖``, as a relative one is unreachable there.

    The reported residuals are the recurrence estimates above, which no extra matvecs verify;
    the basis is kept orthonormal to working precision, so they are exact up to rounding of
    order ``eps ‖A‖`` (float32: tolerances below ~1e-6 relative may be unreachable).

    Breakdown (``β ≈ 0``: the Krylov space is invariant, as for operators with few distinct
    eigenvalues, exactly low-rank ones, ``v0`` an eigenvector, or ``p <= ncv``) is handled as in
    ARPACK: the iteration continues from random vectors orthogonal to the basis, and once ``β``
    has dropped below ``sqrt(eps) ‖A‖`` it only accepts with a full basis (or one spanning all of
    ``R^p``, when the result is exact), so that repeated eigenvalues get a chance to show up.

    Limitations: a Krylov method started from one vector sees one direction per eigenspace, so
    without a breakdown a repeated eigenvalue is, in exact arithmetic, found once (rounding and
    restarts may reveal further copies, but slowly) and the next distinct eigenvalue takes the
    place of the missing copies. Clustered but distinct eigenvalues are fine.

    Args:
        op: a symmetric :class:`~valleys.operators.base.LinearOperator` of size ``p``.
        k: number of eigenpairs, ``1 <= k <= p``; ``k = p`` (e.g. a model with one parameter)
            builds the dense matrix from ``p`` matvecs and returns ``method="dense"``.
        which: ``"largest"`` (algebraic), ``"smallest"`` (algebraic) or ``"magnitude"``
            (largest ``|λ|``; the one to use for the sharpness of an indefinite Hessian).
        tol: relative residual tolerance.
        max_matvecs: budget of operator applications; when it runs out the current Ritz pairs
            are returned with ``converged=False`` and a RuntimeWarning. Default
            ``max(20 * ncv, 1000)``.
        ncv: basis size, ``k + 2 <= ncv`` (capped at ``p``). Default ``max(2k + 1, 20)``.
        v0: start vector (e.g. the previous step's top eigenvector); default random normal.
            Acceptance only checks residuals, so a ``v0`` within ``tol`` of a non-extreme
            eigenvector can be accepted as is; add some noise to ``v0`` if that is a risk.
        seed: seed for the random start and breakdown vectors; same seed, same result.

    Returns:
        An :class:`~valleys.linalg.results.EigshResult` with ``method="lanczos"``.

    Raises:
        TypeError: ``op`` is not a LinearOperator, or ``v0``/``seed`` has the wrong type.
        ValueError: invalid ``k``, ``which``, ``tol``, ``ncv``, ``max_matvecs``, ``v0``, a
            non-symmetric operator, or an operator that produced NaN/inf.
    """
    t0 = time.perf_counter()
    _check_operator(op, "eigsh")
    p = op.size
    if not isinstance(k, numbers.Integral) or isinstance(k, bool) or not 1 <= k <= p:
        raise ValueError(
            f"k must be an integer with 1 <= k <= p = {p} (the operator's size), got {k!r}"
        )
    k = int(k)
    if which not in _WHICH:
        raise ValueError(f"which must be one of {_WHICH}, got {which!r}")
    tol = _check_tol(tol)
    _check_seed(seed)
    if k == p:  # every eigenpair: p matvecs and a dense eigensolver are exact and cheapest
        return _dense_eigsh(op, which, tol, seed, t0)
    if ncv is None:
        ncv = min(max(2 * k + 1, 20), p)
    else:
        ncv = min(_check_count(ncv, "ncv", k + 1), p)
        if ncv < p and ncv < k + 2:
            raise ValueError(f"ncv must be at least k + 2 = {k + 2} to make progress, got {ncv}")
    if max_matvecs is None:
        max_matvecs = max(20 * ncv, 1000)
    max_matvecs = _check_count(max_matvecs, "max_matvecs", k)
    # Keep the wanted pairs plus about half the rest of the basis: the unwanted-but-near Ritz
    # vectors carry most of the convergence already paid for (Wu & Simon keep a similar share).
    n_keep = min(k + max((ncv - k) // 2, 1), ncv - 1)

    gen = _generator(op.device, seed)
    lz = _Lanczos(op, ncv, _start_vector(op, v0, gen), gen)
    # Once the Krylov space is (nearly) invariant every Ritz pair in it passes the test, yet a
    # repeated eigenvalue (or, with a user v0, anything outside v0's invariant subspace) may be
    # missing: like ARPACK, fill the basis (with random vectors after an exact breakdown) before
    # accepting. ``near`` flags β below sqrt(eps)·‖A‖, far above rounding noise.
    near = math.sqrt(lz.eps)
    suspended = False
    restarts = 0
    converged = False
    while True:
        breakdown = lz.step()
        suspended = suspended or breakdown or lz.beta <= near * lz.anorm
        theta, S = lz.ritz()
        order = _order(theta, which)
        resid = (lz.beta * S[lz.m - 1, order[:k]]).abs()
        if lz.m >= k and (not suspended or lz.m in (ncv, p)):
            floor = lz.eps ** (2 / 3) * float(theta.abs().max())
            if bool((resid <= tol * theta[order[:k]].abs().clamp(min=floor)).all()):
                converged = True
                break
        if lz.matvecs >= max_matvecs or lz.m == p:  # m == p: T is similar to A, nothing to add
            break
        if breakdown:
            lz.inject()
        if lz.m == ncv:
            lz.restart(theta, S, order[:n_keep])
            restarts += 1
            suspended = False

    if not converged:
        warnings.warn(
            f"eigsh did not converge to tol={tol:g} within {lz.matvecs} matvecs (largest relative "
            f"residual {_worst(resid, theta[order[:k]]):.2e}); returning the current Ritz pairs "
            "with converged=False. Raise max_matvecs or ncv, or loosen tol.",
            RuntimeWarning,
            stacklevel=2,
        )
    wanted = order[:k]
    return EigshResult(
        values=theta[wanted].to(dtype=op.dtype, device=op.device),
        vectors=lz.vectors(S[:, wanted]),
        residuals=resid.to(dtype=op.dtype, device=op.device),
        matvecs=lz.matvecs,
        converged=converged,
        tol=tol,
        which=which,
        method="lanczos",
        seed=None if seed is None else int(seed),
        restarts=restarts,
        wall_time=time.perf_counter() - t0,
    )


def _dense_eigsh(op: LinearOperator, which: str, tol: float, seed: int | None,
                 t0: float) -> EigshResult:
    """All ``p`` eigenpairs from the dense matrix (``method="dense"``), in float64 so that
    half-precision operators get an eigensolver; residuals are computed, not estimated."""
    A = op.to_dense()
    A64 = A.to(torch.float64)
    if not bool(torch.isfinite(A64).all()):
        raise ValueError("the operator produced NaN or infinite values")
    asym = float((A64 - A64.T).abs().max())
    if asym > 100 * torch.finfo(op.dtype).eps * max(float(A64.abs().max()), 1e-300):
        raise ValueError(f"eigsh needs a symmetric operator; its dense matrix is asymmetric by "
                         f"{asym:.3g}")
    theta, V = torch.linalg.eigh((A64 + A64.T) / 2)
    order = _order(theta, which)
    theta, V = theta[order], V[:, order]
    residuals = torch.linalg.vector_norm(A64 @ V - V * theta, dim=0)
    return EigshResult(
        values=theta.to(dtype=op.dtype), vectors=V.to(dtype=op.dtype),
        residuals=residuals.to(dtype=op.dtype), matvecs=op.size, converged=True, tol=tol,
        which=which, method="dense", seed=None if seed is None else int(seed), restarts=0,
        wall_time=time.perf_counter() - t0,
    )


def block_eigsh(
    op: LinearOperator,
    V0: torch.Tensor,
    k: int = 1,
    which: str = "largest",
    *,
    tol: float = 1e-4,
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

    It stops when every wanted Ritz pair satisfies ``‖A y_i − θ_i y_i‖ ≤ tol · |θ_i|``,
    the criterion of :func:`eigsh`; here the residuals are computed from the stored products,
    not from a recurrence (the same eps-level rounding caveat applies). Like any warm start,
    a block within ``tol`` of non-extreme eigenvectors can be accepted as is: perturb ``V0``.
    An eigenvalue of multiplicity ``r`` is found ``min(r, m)`` times at most in exact
    arithmetic (there is no breakdown rule as in :func:`eigsh`): for the full multiplicity
    use a block at least that wide.

    Args:
        op: a symmetric :class:`~valleys.operators.base.LinearOperator` of size ``p``.
        V0: ``(p, m)`` start block (``m >= 1``, any scaling; linearly dependent columns are
            dropped), in the operator's dtype.
        k: number of eigenpairs, ``1 <= k < p``.
        which: ``"largest"``, ``"smallest"`` or ``"magnitude"`` (as in :func:`eigsh`).
        tol: relative residual tolerance.
        max_matvecs: budget (default ``max(20 * ncv, 1000)``).
        ncv: largest basis size (default ``max(m + 20, 2k + 1)``, capped at ``p``).
        seed: seeds the random vectors used after a breakdown.

    Returns:
        The :class:`~valleys.linalg.results.EigshResult` (``method="block-davidson"``) and all
        Ritz vectors of the final basis, most wanted first, a ``(p, n)`` tensor with
        ``n <= ncv`` (the next warm start: its first ``m`` columns).
    """
    t0 = time.perf_counter()
    _check_operator(op, "block_eigsh")
    p = op.size
    if not isinstance(k, numbers.Integral) or isinstance(k, bool) or not 1 <= k < p:
        raise ValueError(f"k must be an integer with 1 <= k < p = {p}, got {k!r}")
    k = int(k)
    if which not in _WHICH:
        raise ValueError(f"which must be one of {_WHICH}, got {which!r}")
    tol = _check_tol(tol)
    _check_seed(seed)
    if not isinstance(V0, torch.Tensor) or V0.ndim != 2 or V0.shape[0] != p or V0.shape[1] < 1:
        raise ValueError(f"V0 must be a tensor of shape ({p}, m) with m >= 1, got "
                         f"{tuple(getattr(V0, 'shape', ()))}")
    if V0.dtype != op.dtype:
        raise TypeError(f"V0 must have the operator's dtype {op.dtype}, got {V0.dtype}")
    if not torch.isfinite(V0).all():
        raise ValueError("V0 must be finite")
    ncv = max(V0.shape[1] + 20, 2 * k + 1) if ncv is None else _check_count(ncv, "ncv", k + 2)
    ncv = min(max(ncv, k + 2), p)
    if max_matvecs is None:
        max_matvecs = max(20 * ncv, 1000)
    max_matvecs = _check_count(max_matvecs, "max_matvecs", k)
    n_keep = min(max(k + (ncv - k) // 2, V0.shape[1]), ncv - 1)
    gen = _generator(op.device, seed)
    eps = torch.finfo(op.dtype).eps

    # Orthonormal basis of span(V0) (columns below rounding level relative to the largest
    # are dependent and dropped); start over from a random vector if nothing is left.
    U, sv, _ = torch.linalg.svd(V0.to(op.device)[:, :ncv], full_matrices=False)
    Q = U[:, sv > 100 * eps * sv.max()] if bool(sv.max() > 0) else U[:, :0]
    if Q.shape[1] == 0:
        Q = torch.randn(p, 1, generator=gen, dtype=op.dtype, device=op.device)
        Q = Q / torch.linalg.vector_norm(Q)
    AQ = _apply_block(op, Q)
    matvecs = Q.shape[1]
    restarts = 0
    converged = False
    while True:
        G = (Q.T @ AQ).double().cpu()
        theta, S = torch.linalg.eigh(0.5 * (G + G.T))
        order = _order(theta, which)
        theta, S = theta[order], S[:, order]
        Sk = S[:, :k].to(dtype=op.dtype, device=op.device)
        Y = Q @ Sk
        R = AQ @ Sk - Y * theta[:k].to(dtype=op.dtype, device=op.device)
        resid = torch.linalg.vector_norm(R, dim=0).double().cpu()
        if Q.shape[1] >= k:
            floor = eps ** (2 / 3) * float(theta.abs().max())
            rel = resid / theta[:k].abs().clamp(min=floor)
            if bool((rel <= tol).all()) or Q.shape[1] == p:  # p: the Ritz pairs are exact
                converged = True
                break
        else:
            rel = torch.full((k,), math.inf, dtype=torch.float64)
        if matvecs >= max_matvecs:
            break
        if Q.shape[1] >= ncv:
            keep = S[:, :n_keep].to(dtype=op.dtype, device=op.device)
            Q, AQ = Q @ keep, AQ @ keep
            restarts += 1
        # Expand with the residual of the least converged wanted pair (of the top pair while
        # the basis has fewer than k vectors); after a breakdown (the residual lies in the
        # basis: the space is invariant) with a random vector.
        j = int(torch.argmax(rel)) if Q.shape[1] >= k else 0
        r = R[:, j].clone() if j < R.shape[1] else torch.zeros(p, dtype=op.dtype,
                                                               device=op.device)
        for attempt in range(2):
            for _ in range(2):
                r = r - Q @ (Q.T @ r)
            norm = float(torch.linalg.vector_norm(r))
            if norm > _BREAKDOWN * eps * max(float(theta.abs().max()), 1e-300) or attempt:
                break
            r = torch.randn(p, generator=gen, dtype=op.dtype, device=op.device)
        q = (r / torch.linalg.vector_norm(r))[:, None]
        Q = torch.cat([Q, q], dim=1)
        AQ = torch.cat([AQ, _apply_block(op, q)], dim=1)
        matvecs += 1

    if not converged:
        warnings.warn(
            f"block_eigsh did not converge to tol={tol:g} within {matvecs} matvecs (largest "
            f"relative residual {_worst(resid, theta[:k]):.2e}); returning the current Ritz "
            "pairs with converged=False. Raise max_matvecs or ncv, or loosen tol.",
            RuntimeWarning,
            stacklevel=2,
        )
    ritz = Q @ S.to(dtype=op.dtype, device=op.device)
    result = EigshResult(
        values=theta[:k].to(dtype=op.dtype, device=op.device),
        vectors=ritz[:, :k].clone(),
        residuals=resid.to(dtype=op.dtype, device=op.device),
        matvecs=matvecs,
        converged=converged,
        tol=tol,
        which=which,
        method="block-davidson",
        seed=None if seed is None else int(seed),
        restarts=restarts,
        wall_time=time.perf_counter() - t0,
    )
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
        op: a symmetric :class:`~valleys.operators.base.LinearOperator`.
        tol: relative residual tolerance.
        max_matvecs: budget; when exhausted the last iterate is returned with
            ``converged=False``.
        v0: start vector; default random normal.
        seed: seed for the random start.

    Returns:
        An :class:`~valleys.linalg.results.EigshResult` with ``k = 1``, ``which="magnitude"``,
        ``method="power"``.
    """
    t0 = time.perf_counter()
    _check_operator(op, "power_iteration")
    tol = _check_tol(tol)
    max_matvecs = _check_count(max_matvecs, "max_matvecs", 1)
    _check_seed(seed)
    v = _start_vector(op, v0, _generator(op.device, seed))
    v = v / torch.linalg.vector_norm(v)
    converged = False
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
        if res <= tol * abs(mu_f):
            converged = True
            break
        if matvecs >= max_matvecs:
            break
        v = w / w_norm
    if not converged:
        warnings.warn(
            f"power_iteration did not converge to tol={tol:g} within {matvecs} matvecs (relative "
            f"residual {res / max(abs(mu_f), 1e-300):.2e}); the gap |λ2/λ1| is probably close "
            "to 1: use eigsh(op, which='magnitude') instead.",
            RuntimeWarning,
            stacklevel=2,
        )
    return EigshResult(
        values=mu.reshape(1),
        vectors=v.reshape(-1, 1).clone(),
        residuals=torch.tensor([res], dtype=op.dtype, device=op.device),
        matvecs=matvecs,
        converged=converged,
        tol=tol,
        which="magnitude",
        method="power",
        seed=None if seed is None else int(seed),
        restarts=0,
        wall_time=time.perf_counter() - t0,
    )
