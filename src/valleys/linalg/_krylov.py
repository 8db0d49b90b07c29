"""The one Lanczos step of the package: a Krylov basis with full reorthogonalization, in the
Euclidean inner product or in ``⟨x, y⟩_M = xᵀMy`` for a symmetric positive semidefinite ``M``."""

from __future__ import annotations

import math

import torch

from valleys.errors import ArgumentValueError
from valleys.linalg._certify import _BREAKDOWN, _apply, _dot64, _work_dtype
from valleys.operators._base import LinearOperator, _ProductOperator

__all__: list[str] = []

# A low-precision basis is widened to the work dtype this many columns at a time.
_BLOCK = 8


def _basis(size: int, columns: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zero ``size × columns`` basis whose columns are contiguous in memory: writing a column
    and reading the first ``m`` touch those vectors only (row-major, a 10.5M-parameter
    basis of 21 columns took 37 ms per column write and read all 21 columns at every step)."""
    return torch.zeros(columns, size, dtype=dtype, device=device).T


class _Lanczos:
    """A Lanczos basis with full reorthogonalization.

    Holds the basis ``Q`` (``p x (ncv + 1)``, on the operator's device in at least float32; the
    extra column is the next Lanczos vector) and the projected matrix ``T = Qᵀ A Q`` (float64,
    host). Each step applies ``A`` once and orthogonalizes against the whole basis with
    classical Gram-Schmidt done twice (Kahan's "twice is enough", B. N. Parlett, The Symmetric
    Eigenvalue Problem, 1980, §6.9), recording the Gram-Schmidt coefficients as the new column
    of ``T``. In exact arithmetic that column is tridiagonal (arrow-shaped after a thick
    restart); recording all of it keeps ``T`` the exact Rayleigh quotient either way, so
    ``A Q_m = Q_m T_m + β q_{m+1} e_mᵀ`` holds to rounding.

    With an inner product ``M`` (``inner``) the operator must be self-adjoint in it
    (``MA = AᵀM``). The basis is then ``M``-orthonormal, ``QᵀMQ = I``; the products ``MQ`` are
    kept beside it, the coefficients are ``h = (MQ)ᵀ A q``, ``T = QᵀMAQ`` and ``β`` is the
    ``M``-norm of the leftover, one product with ``M`` per step (Parlett 1980, ch. 15). When
    ``M`` is singular this is Lanczos on the quotient by ``null(M)`` (which ``A`` maps into
    itself), where ``⟨·,·⟩_M`` is an inner product; the Ritz values are those of ``A`` there.
    ``‖A q‖_M`` needs no product: ``A q = Q h + w`` with ``w ⊥_M Q`` gives
    ``‖A q‖_M² = ‖h‖² + β²``. An operator ``B @ inner`` (a product whose right factor is this
    very ``M``) is applied as ``B (M q)`` with the kept ``M q``, so ``A`` costs no product with
    ``M``.

    ``purge`` (inner product only) starts, and continues after a breakdown, from ``A u`` rather
    than a random ``u``: a start vector's components in ``null(A)`` (for ``A = BM`` all of
    ``null(M)``) never leave the Krylov space, and where ``M`` is singular its rounding gives
    them an ``M``-norm of order ``sqrt(eps ‖M‖)`` that floors every residual at that relative
    level. Starting in ``range(A)`` purges them (B. Nour-Omid, B. N. Parlett, T. Ericsson and
    P. S. Jensen, "How to implement the spectral transformation", Math. Comp. 48, 1987).
    """

    def __init__(self, op: LinearOperator, ncv: int, start: torch.Tensor, gen: torch.Generator,
                 inner: LinearOperator | None = None, purge: bool = False,
                 basis_device: torch.device | None = None,
                 basis_dtype: torch.dtype | None = None) -> None:
        self.op, self.gen, self.inner = op, gen, inner
        self.work = _work_dtype(op.dtype)
        # The basis may live apart from the operator (host memory for a model on an
        # accelerator): products move one vector each way per step, Gram-Schmidt runs here.
        self.home = op.device if basis_device is None else basis_device
        # ... and in a narrower dtype than the work: then it is only stored there; every
        # product with it is taken in the work dtype, a few columns at a time.
        self.store = self.work if basis_dtype is None else basis_dtype
        self.low = self.store != self.work
        self.Q = _basis(op.size, ncv + 1, self.store, self.home)
        self.T = torch.zeros(ncv, ncv, dtype=torch.float64)
        # Low basis only: the Gram matrix QᵀQ (I up to the storage's rounding) and, per column,
        # a bound on how far that rounding moved its recurrence (see slack()).
        self.G = torch.zeros(ncv + 1, ncv + 1, dtype=torch.float64)
        self.defects = torch.zeros(ncv + 1, dtype=torch.float64)
        self.unit = torch.finfo(self.store).eps / 2 if self.low else 0.0
        # A low basis stores sqrt(p)·q: entries of order 1, not 1/sqrt(p), which in float16
        # would fall below its smallest normal number (6e-5) for p beyond ~10⁸.
        self.scale = math.sqrt(op.size) if self.low else 1.0
        self.m = 0  # basis vectors already multiplied by A (T is m x m)
        self.beta = 0.0  # norm of the residual A q_m - Q_m T[:, m]: the scale of Ritz residuals
        self.betas = torch.zeros(ncv + 1, dtype=torch.float64)  # β_j of every step (predicted())
        self.restarted = False
        self.anorm = 0.0  # running max of ‖A q‖, a lower estimate of ‖A‖
        self.matvecs = 0
        self.inner_matvecs = 0
        self.exhausted = False  # the basis spans the whole range of M (only with inner)
        self.eps = torch.finfo(self.work).eps
        start = start.to(device=self.home, dtype=self.work)
        if inner is None:
            self.MQ = None
            self.factor = None
            self._store(0, start / torch.linalg.vector_norm(start))
            return
        self.MQ = _basis(op.size, ncv + 1, self.store, self.home)
        self.factor = op.a if isinstance(op, _ProductOperator) and op.b is inner else None
        self.purge = purge
        start, ms, norm = self._purged(start)
        if not norm > 0:
            raise ArgumentValueError(
                "the start vector has zero M-norm (it lies in the null space of inner; for a "
                "random start, inner is zero): there is nothing to iterate on")
        self.Q[:, 0], self.MQ[:, 0] = start / norm, ms / norm

    # -- products with the basis, in the work dtype whatever the basis is stored in ---------
    def _project(self, basis: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``basisᵀ w``."""
        if not self.low:
            return basis.T @ w
        parts = [block.to(self.work).T @ w for block in basis.split(_BLOCK, dim=1)]
        return torch.cat(parts) / self.scale

    def _expand(self, basis: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """``basis c`` for coefficients ``c`` (a vector or a matrix) in the work dtype."""
        if not self.low:
            return basis @ c
        out = torch.zeros((basis.shape[0], *c.shape[1:]), dtype=self.work, device=basis.device)
        for block, part in zip(basis.split(_BLOCK, dim=1), c.split(_BLOCK, dim=0), strict=True):
            out += block.to(self.work) @ part
        return out.div_(self.scale)

    def _column(self, j: int) -> torch.Tensor:
        """Basis vector ``q_j`` in the work dtype."""
        return self.Q[:, j].to(self.work) / self.scale if self.low else self.Q[:, j]

    def _store(self, j: int, v: torch.Tensor) -> None:
        """Write ``v`` (work dtype) as column ``j`` of the basis, and its column of ``G``."""
        self.Q[:, j] = v * self.scale if self.low else v
        self._gram(j)

    def _gram(self, j: int) -> None:
        """Column ``j`` of ``G = QᵀQ`` (a low basis only), from the stored vectors."""
        if self.low:
            g = self._project(self.Q[:, : j + 1], self._column(j)).double().cpu()
            self.G[: j + 1, j] = g
            self.G[j, : j + 1] = g

    @property
    def basis_bytes(self) -> int:
        """Memory of the basis (and of its ``M`` products with an inner product)."""
        columns = self.Q.numel() + (0 if self.MQ is None else self.MQ.numel())
        return columns * self.Q.element_size()

    @property
    def complete(self) -> bool:
        """The basis spans the whole space (``T`` is similar to ``A`` there): Ritz pairs exact."""
        return self.m == self.op.size or self.exhausted

    def _times_inner(self, v: torch.Tensor) -> torch.Tensor:
        if self.inner is None:  # only the M-inner-product iteration takes M-norms
            raise RuntimeError("this Lanczos iteration has no inner product")
        self.inner_matvecs += 1
        return _apply(self.inner, v)

    def _m_norm(self, v: torch.Tensor) -> tuple[torch.Tensor, float]:
        mv = self._times_inner(v)
        return mv, math.sqrt(max(float(v @ mv), 0.0))

    def _purged(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """``(v, M v, ‖v‖_M)`` for ``v = A u`` (``purge``; ``u`` itself when ``A u`` has no
        ``M``-norm, as for ``A = 0``) or ``v = u``."""
        mu, norm = self._m_norm(u)
        if not self.purge:
            return u, mu, norm
        au = _apply(self.op, u) if self.factor is None else _apply(self.factor, mu)
        self.matvecs += 1
        mau, anorm = self._m_norm(au)
        return (au, mau, anorm) if anorm > 0 else (u, mu, norm)

    def step(self) -> bool:
        """Extend the basis by one vector; return True on breakdown (invariant subspace)."""
        m = self.m
        basis = self.Q[:, : m + 1]
        dual = basis if self.MQ is None else self.MQ[:, : m + 1]  # coefficients: dualᵀ x
        if self.factor is None or self.MQ is None:  # factor is set only with MQ (inner)
            aq = _apply(self.op, self._column(m))
        else:  # A q = B (M q) with the kept M q
            aq = _apply(self.factor, self.MQ[:, m])
        self.matvecs += 1
        h = self._project(dual, aq)
        # Out of place first: the operator's output may alias its internal state.
        w = aq - self._expand(basis, h)
        h2 = self._project(dual, w)
        w -= self._expand(basis, h2)
        # A low basis keeps the first pass in T, which is QᵀAq exactly: in a basis that is not
        # orthonormal the Gram-Schmidt total h + h2 is no Rayleigh quotient.
        if not self.low:
            h += h2
        if self.MQ is None:
            # One device-to-host transfer per step: the new column of T and the two norms.
            norms = torch.stack([torch.linalg.vector_norm(w), torch.linalg.vector_norm(aq)])
            host = torch.cat([h, norms]).double().cpu()
            col, (beta, aq_norm) = host[: m + 1], host[m + 1 :].tolist()
        else:
            mw = self._times_inner(w)
            host = torch.cat([h, (w @ mw).reshape(1)]).double().cpu()
            col = host[: m + 1]
            beta = math.sqrt(max(float(host[m + 1]), 0.0))
            aq_norm = math.sqrt(float(col.square().sum()) + beta * beta)
        self.T[: m + 1, m] = col
        self.T[m, : m + 1] = col
        self.m = m + 1
        self.anorm = max(self.anorm, aq_norm)
        # beta stays the true leftover norm even on breakdown, so residual estimates stay honest.
        self.beta = beta
        self.betas[m] = beta
        # Storing w / β rounds it by at most unit·β: the recurrence of column m is off by that.
        self.defects[m] = self.unit * beta
        if self.m == self.op.size or beta <= _BREAKDOWN * self.eps * self.anorm:
            # Kept (unit, or zero) only for predicted(): inject() replaces it.
            self.Q[:, self.m] = w * (self.scale / beta) if beta > 0 else 0.0
            return True
        self._store(self.m, w / beta)
        if self.MQ is not None:
            self.MQ[:, self.m] = mw / beta
        return False

    def inject(self) -> None:
        """After a breakdown, continue from a random vector orthogonal to the basis.

        With an inner product, a vector whose ``M``-norm is all but gone after the projection
        (below ``sqrt(100 eps)`` of the random vector's) means the basis spans the range of
        ``M``: the basis is ``exhausted`` and the Ritz pairs are exact.
        """
        basis = self.Q[:, : self.m]
        r = torch.randn(self.op.size, generator=self.gen, dtype=self.work,
                        device=self.op.device).to(self.home)
        if self.MQ is None:
            for _ in range(2):
                r -= self._expand(basis, self._project(basis, r))
            self._store(self.m, r / torch.linalg.vector_norm(r))
            return
        r, _, before = self._purged(r)
        dual = self.MQ[:, : self.m]
        for _ in range(2):
            r -= basis @ (dual.T @ r)
        mr, norm = self._m_norm(r)
        if norm <= math.sqrt(_BREAKDOWN * self.eps) * before:
            self.exhausted = True
            return
        self.Q[:, self.m], self.MQ[:, self.m] = r / norm, mr / norm

    def ritz(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Ritz values (ascending) and the eigenvectors ``S`` of ``T_m`` (float64, host).

        A low basis is orthonormal only up to its storage's rounding: there the Rayleigh–Ritz
        pairs of its span solve the pencil ``T s = θ G s`` (``T = QᵀAQ``, ``G = QᵀQ``), through
        the Cholesky factor ``G = LLᵀ``; ``sᵀGs = 1`` keeps the Ritz vectors ``Q s`` unit."""
        T = self.T[: self.m, : self.m]
        if not self.low:
            return torch.linalg.eigh(T)
        L = torch.linalg.cholesky(self.G[: self.m, : self.m])
        inv_L = torch.linalg.solve_triangular(L, torch.eye(self.m, dtype=torch.float64),
                                              upper=False)
        theta, U = torch.linalg.eigh(inv_L @ T @ inv_L.T)
        return theta, inv_L.T @ U

    def slack(self, S: torch.Tensor) -> torch.Tensor:
        """What a low basis's rounding adds to the residuals of the Ritz vectors ``Q_m S``
        beyond the recurrence's ``|β s_m|`` (float64, host; zeros for a full basis).

        Column ``j`` satisfies its recurrence up to ``defects[j]``: ``unit·β_j`` for a Lanczos
        vector (``q_{j+1}`` was stored rounded), and for a vector kept at a restart the slack of
        the Ritz vector it came from plus ``3 unit ‖A‖`` (it and the next vector were stored
        rounded: ``(A − θ)δ`` and ``β s_m δ``; ``T`` then holds their old Ritz values, off by
        about as much). Independent roundings add up to ``sqrt(Σ_j s_j² defects[j]²)``, the
        size this returns and where the residuals stop falling; it is an estimate (the triangle
        inequality's ``Σ_j |s_j| defects[j]`` would bound it, at ``sqrt(m)`` times the size,
        and stop every check from passing), so the fresh products judge the result."""
        if not self.low:
            return torch.zeros(S.shape[1], dtype=torch.float64)
        terms = S[: self.m - 1] * self.defects[: self.m - 1, None]
        return terms.square().sum(dim=0).sqrt()

    def vectors(self, S: torch.Tensor) -> torch.Tensor:
        """Ritz vectors ``Q_m S`` in the work dtype, on the operator's device; unit vectors
        (norms in float64) where there is no inner product, as the basis is orthonormal only
        to the rounding of its inner products (1e-4 in float32 over 2·10⁶ coordinates)."""
        Y = self._combine(S)
        if self.MQ is None:
            Y /= self._norms(Y)
        return Y.to(self.op.device)

    @staticmethod
    def _norms(Y: torch.Tensor) -> torch.Tensor:
        """Column norms of ``Y``, summed in float64 block by block, in ``Y``'s dtype."""
        return _dot64(Y, Y).sqrt().to(dtype=Y.dtype, device=Y.device)

    @property
    def predicts(self) -> bool:
        """Whether :meth:`predicted` holds to rounding: a full basis, never restarted."""
        return not self.low and not self.restarted

    def predicted(self, S: torch.Tensor) -> torch.Tensor:
        """What the recorded products say ``A Y`` is for the Ritz vectors ``Y = Q_m S`` (on the
        operator's device). A fresh ``A Y`` differs from it only by the products' noise and
        rounding, a linearity defect the certifier reads the noise from.

        Step ``j`` recorded ``A q_j = Σ_{i≤j} h_ij q_i + β_j q_{j+1}`` exactly as computed
        (``w = A q_j − Q h`` defines ``q_{j+1}``), so ``A Q_m = Q_m H_m + β_m q_{m+1} e_mᵀ``
        with ``H_m`` upper Hessenberg: the recorded ``h`` above the diagonal, the ``β_j``
        below. Not the symmetric ``T_m`` the Ritz pairs come from (``θ Y + β q_{m+1} s_mᵀ``):
        ``H_m − T_m`` is the basis's loss of orthogonality times ``‖A‖``, which float32 inner
        products over 10⁷ parameters make ~10³ times the products' noise (a 10.5M-parameter
        GPT: 0.058 against a true product error of 1e-4).
        """
        m = self.m
        H = torch.triu(self.T[:m, :m]) + torch.diag(self.betas[: m - 1], -1)
        Y = self._combine(H @ S)
        Y += self._column(m)[:, None] * (self.beta * S[m - 1]).to(dtype=self.work,
                                                                  device=self.home)
        if self.MQ is None:  # as vectors() scales Q_m S
            Y /= self._norms(self._combine(S))
        return Y.to(self.op.device)

    def _combine(self, S: torch.Tensor) -> torch.Tensor:
        """``Q_m S`` where the basis lives, in the work dtype."""
        return self._expand(self.Q[:, : self.m], S.to(dtype=self.work, device=self.home))

    def restart(self, theta: torch.Tensor, S: torch.Tensor, keep: torch.Tensor) -> None:
        """Thick restart (Wu & Simon 2000): keep the Ritz pairs ``keep`` and the next vector.

        The kept Ritz vectors and ``q_{m+1}`` span a Krylov space again, so the Lanczos steps
        continue unchanged; the next step's Gram-Schmidt coefficients fill in the arrow-shaped
        coupling ``β s_{m,i}`` between the Ritz vectors and the new vector.
        """
        ell = keep.numel()
        Y = self._combine(S[:, keep])
        if self.MQ is not None:  # M Y from the kept products, by linearity
            MY = self.MQ[:, : self.m] @ S[:, keep].to(dtype=self.work, device=self.home)
            self.MQ[:, ell] = self.MQ[:, self.m]
            self.MQ[:, :ell] = MY
        # The kept Ritz vectors satisfy A y = θ y + β s_m q_{m+1} only up to the old basis's
        # H_m − T_m, outside the new basis: predicted() no longer holds to rounding.
        self.restarted = True
        if self.low:
            kept = self.slack(S[:, keep]) + 3 * self.unit * self.anorm
            self.defects.zero_()
            self.defects[:ell] = kept
        self.Q[:, ell] = self.Q[:, self.m]
        self.Q[:, :ell] = Y * self.scale if self.low else Y
        for j in range(ell + 1):  # the Gram matrix of the new basis (a low basis only)
            self._gram(j)
        self.T.zero_()
        self.T[:ell, :ell] = torch.diag(theta[keep])
        self.m = ell


class _ShortLanczos:
    """Lanczos by the three-term recurrence, for long runs that only need ``T`` (quadrature).

    ``A q_j = β_{j-1} q_{j-1} + α_j q_j + β_j q_{j+1}``, with ``T`` tridiagonal. Without
    reorthogonalization (``selective=False``) it keeps three vectors whatever the number of
    steps. Rounding then makes the basis lose orthogonality along every Ritz vector that
    converges (C. C. Paige, 1971), and copies ("ghosts") of converged Ritz values appear in
    ``T``; Gauss quadrature on such a ``T`` still approximates the spectral measure, the
    weight of an eigenvalue shared among its copies (A. Greenbaum, Linear Algebra Appl. 113,
    1989; G. Meurant and Z. Strakoš, Acta Numerica 15, 2006).

    ``selective=True`` is selective orthogonalization (B. N. Parlett and D. S. Scott, Math.
    Comp. 33, 1979): as orthogonality is lost only along converged Ritz vectors, a Ritz pair
    becomes *good* once ``β_j |s_{j,i}| ≤ sqrt(eps) ‖T_j‖``; its vector ``y_i = Q_j s_i`` is
    formed once from the stored basis (kept on ``basis_device``, e.g. host memory) and every
    later ``w`` is orthogonalized against the good vectors. The basis stays semi-orthogonal
    (``sqrt(eps)``), no ghosts appear, and a step costs ``r`` inner products for ``r`` good
    vectors instead of ``j``; on the operator's device only the good vectors and three more
    are held.
    """

    def __init__(self, op: LinearOperator, steps: int, start: torch.Tensor, *,
                 selective: bool, basis_device: torch.device | None = None) -> None:
        self.op, self.steps, self.selective = op, steps, selective
        self.work = _work_dtype(op.dtype)
        self.eps = torch.finfo(self.work).eps
        q = start.to(device=op.device, dtype=self.work)
        self.q = q / torch.linalg.vector_norm(q)
        self.q_prev = torch.zeros_like(self.q)
        self.alpha: list[float] = []
        self.beta: list[float] = []  # β_j couples q_j and q_{j+1}
        self.matvecs = 0
        self.home = op.device if basis_device is None else basis_device
        self.Q = None
        if selective:
            self.Q = _basis(op.size, steps, self.work, self.home)
            self.Q[:, 0] = self.q.to(self.home)
        # Good Ritz vectors (columns, on the operator's device) and their coefficients in Q.
        self.good = torch.zeros(op.size, 0, dtype=self.work, device=op.device)
        self.good_coefficients: list[torch.Tensor] = []

    @property
    def m(self) -> int:
        return len(self.alpha)

    @property
    def basis_bytes(self) -> int:
        return 0 if self.Q is None else self.Q.numel() * self.Q.element_size()

    def tridiagonal(self) -> torch.Tensor:
        """``T_m`` (float64, host)."""
        T = torch.diag(torch.tensor(self.alpha, dtype=torch.float64))
        if self.m > 1:
            off = torch.tensor(self.beta[: self.m - 1], dtype=torch.float64)
            T += torch.diag(off, 1) + torch.diag(off, -1)
        return T

    def step(self) -> bool:
        """One recurrence step; True on breakdown (the Krylov space is invariant) or when
        ``steps`` are done."""
        aq = _apply(self.op, self.q)
        self.matvecs += 1
        beta_prev = self.beta[-1] if self.beta else 0.0
        w = aq - beta_prev * self.q_prev
        alpha = float(self.q @ w)
        w -= alpha * self.q
        w -= self.q * float(self.q @ w)  # local reorthogonalization: cheap, keeps α honest
        self.alpha.append(alpha)
        if self.selective:
            self._orthogonalize_against_good(w)
        beta = float(torch.linalg.vector_norm(w))
        self.beta.append(beta)
        anorm = float(torch.linalg.vector_norm(aq))
        if self.m == self.steps or self.m == self.op.size or beta <= _BREAKDOWN * self.eps * anorm:
            return True
        self.q_prev, self.q = self.q, w / beta
        if self.Q is not None:
            self.Q[:, self.m] = self.q.to(self.home)
        return False

    def _orthogonalize_against_good(self, w: torch.Tensor) -> None:
        """Add the Ritz vectors that became good at this step, then take ``w`` off all good
        ones (in place)."""
        theta, S = torch.linalg.eigh(self.tridiagonal())
        beta = float(torch.linalg.vector_norm(w))
        scale = max(float(theta.abs().max()), 1e-300)
        for i in torch.nonzero(beta * S[-1].abs() <= math.sqrt(self.eps) * scale).flatten():
            s = S[:, i]
            if any(abs(float(s[: c.numel()] @ c)) > 0.5 for c in self.good_coefficients):
                continue  # already good: a converged Ritz vector hardly moves
            assert self.Q is not None
            y = (self.Q[:, : self.m] @ s.to(dtype=self.work, device=self.home)).to(self.op.device)
            y -= self.good @ (self.good.T @ y)
            norm = float(torch.linalg.vector_norm(y))
            if norm > 0.5:
                self.good = torch.cat([self.good, (y / norm)[:, None]], dim=1)
                self.good_coefficients.append(s.clone())
        if self.good.shape[1]:
            w -= self.good @ (self.good.T @ w)
