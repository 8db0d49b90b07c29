"""Extreme eigenpairs of symmetric operators: thick-restart Lanczos and power iteration.

Everything runs in torch on the operator's device. The operator computes its products in its own
dtype; the Krylov basis and its orthogonalization run in at least float32 (half-precision
Gram-Schmidt loses orthogonality within a few steps), and the tiny projected matrix is
diagonalized on the host in float64. Every returned eigenvalue carries an error bound that is
checked on freshly recomputed products and includes the products' own rounding noise
(:mod:`valleys.linalg._certify`). Solvers count their own matvecs. :func:`eigsh` also works in
an inner product ``⟨x, y⟩_M = xᵀMy`` for operators self-adjoint in it.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from typing import Any

import torch

from valleys.errors import ArgumentTypeError, ArgumentValueError
from valleys.linalg._certify import (
    _NOISE_FLOOR_ULPS,
    _apply,
    _Certifier,
    _check_count,
    _check_inner,
    _check_problem,
    _generator,
    _order,
    _record,
    _scale,
    _start_vector,
    _work_dtype,
)
from valleys.linalg._davidson import block_eigsh
from valleys.linalg._krylov import _Lanczos
from valleys.linalg._results import EigshResult
from valleys.operators._base import LinearOperator

__all__ = ["block_eigsh", "eigsh", "power_iteration"]


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
    inner: LinearOperator | None = None,
    basis_device: str | torch.device | None = None,
    basis_dtype: torch.dtype | None = None,
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
    ``ρ_i = ‖A y_i − θ_i y_i‖ + ν`` (``ν``: the products' rounding noise, estimated where it
    could matter from the linearity defect between the fresh ``A y_i`` and what the recorded
    products say it is, ``Q_m H_m s_i + β s_{m,i} q_{m+1}``, at no extra product before a
    restart, and from ``A(y+z) − Ay − Az`` with two extra products after one) there is
    an eigenvalue of ``A`` within ``ρ_i`` of ``θ_i`` (Krylov–Bogoliubov: rigorous for any unit
    ``y``, up to the noise estimate). The default criterion ``accuracy="residual"`` stops when
    every ``ρ_i ≤ tol · |θ_i|`` (ARPACK's test, with the residual recomputed and the noise
    added).

    ``accuracy="value"`` instead stops on the sharper Kato–Temple bound
    ``max(ρ_i² / gap_i, tail_i) + ν + rounding`` (B. N. Parlett, *The Symmetric Eigenvalue
    Problem*, 1980, §10.2, §11.7), used where a gap is established: ``gap_i`` is the distance
    to the other Ritz values less their residuals, the spectral neighbours of ``θ_i`` must be
    resolved (residual under a tenth of their distance), and ``tail_i``, the geometric
    extrapolation of the last changes of ``θ_i``, guards against a cluster that is still
    being separated. Elsewhere the bound is the residual. On the built-in networks it stops
    within 1–3 products of the Krylov limit (oracle-stopped Lanczos) and 2–10× earlier than
    the residual test at the same ``tol`` (BENCHMARKS.md). The reported ``error_bounds`` are
    this bound in both modes.

    Why ``"residual"`` is the default: a gap estimated from Ritz values is not rigorous. An
    eigenvalue the Krylov space has not separated yet (a start vector with almost no
    component on it, a warm start, a cluster member mixed into ``y_i``) can sit inside the
    assumed gap, and then ``θ_i`` may be further from the nearest eigenvalue than
    ``ρ_i² / gap_i``. On 1,680 synthetic 300×300 spectra built to provoke this (tight
    clusters, close pairs, warm starts next to a cluster member; tol 1e-3 and 1e-5), 21
    ``"value"`` solves (1.3 %) reported a bound below the error to the nearest eigenvalue, by
    up to 24×; stopping on the residual, which needs no gap, ran longer and 4 of the reported
    (Kato–Temple) bounds fell short, by up to 9×, and the residuals themselves never did. On
    the test networks with a dense float64 truth every bound held, within 1–30× of the error.
    Ask for ``accuracy="value"`` when the value is what you need and the spectrum near the
    wanted end is not a tight cluster; :func:`valleys.sharpness` offers the same choice, and
    ``residuals + noise`` is always the gap-free bound.

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

    Inner product: with ``inner=M`` (symmetric positive semidefinite) the same iteration runs
    in ``⟨x, y⟩_M = xᵀMy`` for an ``op`` that is self-adjoint in it (``MA = AᵀM``; ``A`` itself
    need not be symmetric, e.g. ``A = B @ M`` with ``B`` symmetric). The eigenpairs are those of
    the generalized problem ``MAx = λMx``: the Krylov basis and the returned vectors are
    ``M``-orthonormal (``VᵀMV = I``), and every norm above (residuals, bounds, noise,
    ``‖A‖``) is the ``M``-norm ``sqrt(xᵀMx)``; Krylov–Bogoliubov and Kato–Temple hold
    unchanged in that inner product. A singular ``M`` (a Gram matrix ``JJᵀ`` of rank below its
    size) is allowed: the solve then acts on the quotient by ``null(M)``, whose eigenvalues are
    those of ``M^½ B M^½`` on ``range(M)`` for ``A = BM``; directions that ``M`` maps to rounding
    noise carry Ritz values near 0. ``op`` given as ``B @ M`` (the very ``inner`` object on the
    right) costs one product with ``B`` and one with ``M`` per step; any other ``op`` one with
    each of ``op`` and ``M``. Products with ``M`` are counted by ``inner.num_matvecs``, not in
    ``matvecs``. Self-adjointness in ``M`` is the caller's to guarantee (it is not checked).
    Without ``v0`` the start (and any vector after a breakdown) is ``A u`` for a random ``u``
    (one more product), so the basis carries no ``null(M)`` components, which a singular ``M``
    would otherwise leave in the residuals at ``sqrt(eps)`` level (B. Nour-Omid et al., Math.
    Comp. 48, 1987); an eigenvalue exactly 0 is then not sought: pass ``v0`` for it.

    Args:
        op: a symmetric :class:`~valleys.operators.LinearOperator` of size ``p`` (with
            ``inner``: self-adjoint in ``⟨·,·⟩_M``).
        k: number of eigenpairs, ``1 <= k <= p``; ``k = p`` (e.g. a model with one parameter)
            builds the dense matrix from ``p`` matvecs and returns ``method="dense"``.
        which: ``"largest"`` (algebraic), ``"smallest"`` (algebraic: the most negative
            curvature), ``"magnitude"`` (largest ``|λ|``; the one to use for the sharpness of an
            indefinite Hessian) or ``"both"`` (both ends in one Krylov run: ``⌈k/2⌉`` largest
            and ``⌊k/2⌋`` smallest, listed alternately: λ_max, λ_min, the 2nd largest, ...).
        tol: relative tolerance on the residual of each pair (or on its error bound, with
            ``accuracy="value"``).
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
        inner: ``M`` of the inner product ``⟨x, y⟩_M = xᵀMy`` (above), a symmetric positive
            semidefinite :class:`~valleys.operators.LinearOperator` of the operator's size,
            dtype and device; ``k < p`` then. Default ``None``: the Euclidean inner product.
        basis_device: where to keep the Krylov basis, e.g. ``"cpu"`` for a model on an
            accelerator: it holds ``(ncv + 1) · p`` numbers (``ncv`` bounds it; the record's
            ``basis_bytes`` reports it), which for large ``p`` can rival the model's own
            memory. Each step then moves one vector each way and orthogonalizes on that
            device. Default ``None``: with the operator.
        basis_dtype: store the basis in a narrower dtype than the work dtype (e.g.
            ``torch.bfloat16`` or ``torch.float16`` for a float32 model, halving
            ``basis_bytes``); every product with it is still taken in the work dtype, a few
            columns at a time. Its vectors are then orthonormal only to the storage's unit
            roundoff ``u`` (bfloat16: 3.9e-3, float16: 4.9e-4), so the Ritz pairs solve the
            pencil ``T s = θ G s`` with ``G = QᵀQ``, the returned values are Rayleigh quotients
            of the fresh verification products, and the residual estimates add what the
            rounding may have moved each recurrence (``u β_j`` per step, ``3 u ‖A‖`` per kept
            vector at a restart). The residuals floor near ``u ‖A‖``: with the default
            ``accuracy="residual"`` a ``tol`` below that is reported ``converged=False``
            with a message, while ``accuracy="value"`` still certifies values to about
            ``(u ‖A‖)² / gap`` where a gap is established. The noise is measured with two
            extra products (the recurrence no longer predicts the verification products to
            rounding). Not with ``inner``. Default ``None``: the work dtype.

    Returns:
        An :class:`~valleys.linalg.EigshResult` with ``method="lanczos"``; values,
        vectors, residuals and error bounds in the basis dtype (the operator's, widened to
        float32 for half-precision operators).

    Raises:
        TypeError: ``op`` or ``inner`` is not a LinearOperator, or ``v0``/``seed`` has the
            wrong type.
        ValueError: invalid ``k``, ``which``, ``tol``, ``accuracy``, ``ncv``, ``max_matvecs``,
            ``v0``, ``inner``, ``basis_dtype`` (wider than the work dtype, or with ``inner``),
            a non-symmetric operator (without ``inner``), an operator that
            produced NaN/inf, or (with ``inner``) fewer than ``k`` eigenvalues, when the rank
            of ``M`` is below ``k``.
    """
    t0 = time.perf_counter()
    k, which, tol, accuracy = _check_problem(op, "eigsh", k, which, tol, accuracy, seed,
                                             k_below_p=inner is not None,
                                             symmetric=inner is None)
    p = op.size
    if inner is not None:
        inner = _check_inner(inner, op)
    if k == p:  # every eigenpair: p matvecs and a dense eigensolver are exact and cheapest
        return _dense_eigsh(op, which, tol, accuracy, seed, t0)
    ncv = _basis_size(ncv, k, p)
    if max_matvecs is None:
        max_matvecs = max(20 * ncv, 1000)
    max_matvecs = _check_count(max_matvecs, "max_matvecs", k)
    # Keep the wanted pairs plus about half the rest of the basis: the unwanted-but-near Ritz
    # vectors carry most of the convergence already paid for (Wu & Simon keep a similar share).
    n_keep = min(k + max((ncv - k) // 2, 1), ncv - 1)

    gen = _generator(op.device, seed)
    home = _check_basis_device(basis_device)
    store = _check_basis_dtype(basis_dtype, op.dtype, inner is not None)
    lz = _Lanczos(op, ncv, _start_vector(op, v0, gen), gen, inner,
                  purge=inner is not None and v0 is None, basis_device=home, basis_dtype=store)
    cert = _Certifier(op, tol, accuracy, gen, inner, basis_dtype=lz.store if lz.low else None)
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
    check: dict[str, Any] | None = None
    while True:
        breakdown = lz.step()
        suspended = suspended or breakdown or lz.beta <= near * lz.anorm
        theta, S = lz.ritz()
        wanted = _order(theta, which)[:k]
        cert.observe(theta, wanted)
        slack = lz.slack(S)
        estimates = (lz.beta * S[lz.m - 1]).abs() + slack
        floor = slack if lz.low else None
        check = None
        ready = lz.m >= k and (not suspended or lz.m == ncv or lz.complete)
        if ready and lz.matvecs >= verify_at and cert.promising(theta, estimates, wanted,
                                                                lz.anorm, floor):
            check = cert.verify(
                theta, estimates, wanted, lz.vectors(S[:, wanted]), lz.anorm,
                predict=functools.partial(lz.predicted, S[:, wanted])
                if lz.predicts else None, basis_floor=floor)
            if check["done"]:
                break
            verify_at, backoff = lz.matvecs + backoff, min(2 * backoff, ncv)
        # The final verification (k products; it also measures the noise, or 2 more do) is kept
        # inside the budget; a complete basis: T is similar to A, nothing is left to add.
        reserve = k + (0 if lz.predicts or cert.noise(lz.anorm) is not None else 2)
        if lz.complete or (lz.m >= k and lz.matvecs + cert.matvecs + reserve >= max_matvecs):
            break
        if breakdown:
            lz.inject()
            if lz.complete:  # (inner) the basis spans the range of M
                break
        if lz.m == ncv:
            lz.restart(theta, S, _order(theta, which)[:n_keep])
            restarts += 1
            suspended = False

    if wanted.numel() < k:
        raise ArgumentValueError(
            f"eigsh: the inner product has rank {wanted.numel()} < k = {k}, so only "
            f"{wanted.numel()} eigenvalues exist; lower k")
    Y = lz.vectors(S[:, wanted])
    if check is None:  # the budget ran out (or the basis is complete) on unverified Ritz pairs
        check = cert.verify(theta, estimates, wanted, Y, lz.anorm,
                            predict=functools.partial(lz.predicted, S[:, wanted])
                            if lz.predicts else None, basis_floor=floor)
    return _record(check, caller="eigsh", values=check["values"], vectors=Y,
                   matvecs=lz.matvecs + cert.matvecs, tol=tol, which=which, method="lanczos",
                   seed=seed, restarts=restarts, t0=t0, accuracy=accuracy,
                   basis_bytes=lz.basis_bytes, basis_device=None if home is None else str(home))


def _basis_size(ncv: object, k: int, p: int) -> int:
    """The Krylov basis size: ``ncv`` checked (``k + 2 <= ncv``, capped at ``p``), or the
    default ``min(max(2k + 1, 20), p)``."""
    if ncv is None:
        return min(max(2 * k + 1, 20), p)
    size = min(_check_count(ncv, "ncv", k + 1), p)
    if size < p and size < k + 2:
        raise ArgumentValueError(
            f"ncv must be at least k + 2 = {k + 2} to make progress, got {size}")
    return size


def _check_basis_device(device: object) -> torch.device | None:
    """``basis_device`` as a ``torch.device`` (``None`` stays ``None``)."""
    if device is None:
        return None
    if not isinstance(device, str | torch.device):
        raise ArgumentTypeError(
            f"basis_device must be a device name such as 'cpu' or a torch.device, got "
            f"{type(device).__name__}")
    try:
        return torch.device(device)
    except RuntimeError as error:
        raise ArgumentValueError(f"basis_device: {error}") from None


def _check_basis_dtype(dtype: object, op_dtype: torch.dtype,
                      with_inner: bool) -> torch.dtype | None:
    """``basis_dtype`` checked: ``None``, or a floating dtype no wider than the work dtype
    (the work dtype itself means the default, a full basis)."""
    if dtype is None:
        return None
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point or dtype.is_complex:
        raise ArgumentTypeError(
            f"basis_dtype must be a real floating torch.dtype such as torch.bfloat16, got "
            f"{dtype!r}")
    work = _work_dtype(op_dtype)
    if dtype == work:
        return None
    if torch.finfo(dtype).bits > torch.finfo(work).bits:
        raise ArgumentValueError(
            f"basis_dtype={dtype} is wider than the work dtype {work} of a {op_dtype} "
            "operator: the basis cannot be more accurate than the products; leave it None")
    if with_inner:
        raise ArgumentValueError(
            "basis_dtype is not supported with inner (an M-orthonormal basis kept in low "
            "precision); leave one of them None")
    return dtype


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
    _, _, tol, _ = _check_problem(op, "power_iteration", 1, "magnitude", tol, "residual", seed)
    max_matvecs = _check_count(max_matvecs, "max_matvecs", 1)
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
    return _record(check, caller="power_iteration", stalled=stalled, values=mu.reshape(1),
                   vectors=v.reshape(-1, 1).clone(), matvecs=matvecs + cert.matvecs, tol=tol,
                   which="magnitude", method="power", seed=seed, restarts=0, t0=t0,
                   accuracy="residual")
