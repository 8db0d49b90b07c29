"""Extreme eigenpairs from a block of start vectors: Davidson without a preconditioner."""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from valleys.errors import ArgumentTypeError, ArgumentValueError
from valleys.linalg import _certify as _c
from valleys.linalg._results import EigshResult
from valleys.operators._base import LinearOperator

__all__ = ["block_eigsh"]

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
        which: ``"largest"``, ``"smallest"``, ``"magnitude"`` or ``"both"`` (as in
            :func:`eigsh`).
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
    k, which, tol, accuracy = _c._check_problem(op, "block_eigsh", k, which, tol, accuracy, seed,
                                             k_below_p=True)
    p = op.size
    if not isinstance(V0, torch.Tensor) or V0.ndim != 2 or V0.shape[0] != p or V0.shape[1] < 1:
        raise ArgumentValueError(f"V0 must be a tensor of shape ({p}, m) with m >= 1, got "
                                 f"{tuple(getattr(V0, 'shape', ()))}")
    work = _c._work_dtype(op.dtype)
    if V0.dtype not in (op.dtype, work):
        raise ArgumentTypeError(f"V0 must have the operator's dtype {op.dtype} (or {work}), got "
                                f"{V0.dtype}")
    if not torch.isfinite(V0).all():
        raise ArgumentValueError("V0 must be finite")
    ncv = max(V0.shape[1] + 20, 2 * k + 1) if ncv is None else _c._check_count(ncv, "ncv", k + 2)
    ncv = min(max(ncv, k + 2), p)
    if max_matvecs is None:
        max_matvecs = max(20 * ncv, 1000)
    max_matvecs = _c._check_count(max_matvecs, "max_matvecs", k)
    n_keep = min(max(k + (ncv - k) // 2, V0.shape[1]), ncv - 1)
    gen = _c._generator(op.device, seed)
    cert = _c._Certifier(op, tol, accuracy, gen)
    eps = torch.finfo(work).eps
    to_work: dict[str, Any] = dict(dtype=work, device=op.device)

    # Orthonormal basis of span(V0) (columns below rounding level relative to the largest
    # are dependent and dropped); start over from a random vector if nothing is left.
    U, sv, _ = torch.linalg.svd(V0.to(**to_work)[:, :ncv], full_matrices=False)
    Q = U[:, sv > 100 * eps * sv.max()] if bool(sv.max() > 0) else U[:, :0]
    if Q.shape[1] == 0:
        Q = torch.randn(p, 1, generator=gen, **to_work)
        Q = Q / torch.linalg.vector_norm(Q)
    AQ = _c._apply_block(op, Q)
    matvecs = Q.shape[1]
    restarts = 0
    check: dict[str, Any] = {}
    while True:
        G = (Q.T @ AQ).double().cpu()
        theta, S = torch.linalg.eigh(0.5 * (G + G.T))
        order = _c._order(theta, which)
        theta, S = theta[order], S[:, order]
        Sw = S.to(**to_work)
        R = AQ @ Sw - (Q @ Sw) * theta.to(**to_work)
        resid = torch.linalg.vector_norm(R, dim=0).double().cpu()
        wanted = torch.arange(min(k, theta.numel()))
        cert.observe(theta, wanted)
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
            if norm > _c._BREAKDOWN * eps * max(float(theta.abs().max()), 1e-300) or attempt:
                break
            r = torch.randn(p, generator=gen, **to_work)
        q = (r / torch.linalg.vector_norm(r))[:, None]
        Q = torch.cat([Q, q], dim=1)
        AQ = torch.cat([AQ, _c._apply_block(op, q)], dim=1)
        matvecs += 1

    if not check or check["at"] != matvecs:  # the budget ran out on unjudged Ritz pairs
        if Q.shape[1] < k:
            raise ArgumentValueError(
                f"block_eigsh: max_matvecs={max_matvecs} ran out before the basis "
                f"held k={k} vectors; raise max_matvecs")
        check = cert.assess(theta, resid, wanted, float(theta.abs().max()), Q[:, 0], AQ[:, 0])
    ritz = Q @ S.to(**to_work)
    result = _c._record(check, caller="block_eigsh", values=theta[:k], vectors=ritz[:, :k].clone(),
                     matvecs=matvecs + cert.matvecs, tol=tol, which=which,
                     method="block-davidson", seed=seed, restarts=restarts, t0=t0,
                     accuracy=accuracy)
    return result, ritz
