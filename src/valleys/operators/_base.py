"""The one operator abstraction: a linear map on flat parameter vectors.

Every curvature matrix in valleys (Hessian, GGN, Fisher, gradient covariance, Hessian variance)
is a :class:`LinearOperator` of shape ``(p, p)`` acting on flat tensors of the operator's dtype
and device. A subclass implements one method, :meth:`LinearOperator._matmat` (or
:meth:`LinearOperator._matvec`); everything else (validation, counting, algebra, dense and SciPy
export) lives here. Solvers in :mod:`valleys.linalg` only ever call :meth:`matvec`/:meth:`matmat`,
so they run wherever the operator's tensors live, with no host round trip.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, overload

import numpy as np
import torch

from valleys._checks import available_device, is_integral, is_real
from valleys.errors import ArgumentTypeError, ArgumentValueError

__all__ = ["DenseOperator", "LambdaOperator", "LinearOperator", "LowRankOperator"]


class LinearOperator:
    """A linear map ``R^p -> R^p`` on flat torch tensors.

    Args:
        size: the dimension ``p``.
        dtype: dtype of the vectors the operator accepts and returns.
        device: device of those vectors.
        symmetric: whether the operator is self-adjoint (all curvature operators are; products
            of two symmetric operators generally are not).

    Attributes:
        num_matvecs: number of vectors the operator has been applied to since creation
            (a ``matmat`` with ``k`` columns counts ``k``). Solvers report their own counts.
    """

    def __init__(
        self,
        size: int,
        dtype: torch.dtype,
        device: torch.device | str,
        *,
        symmetric: bool = True,
    ) -> None:
        if not is_integral(size) or isinstance(size, bool) or size <= 0:
            raise ArgumentValueError(f"operator size must be a positive integer, got {size!r}")
        if not isinstance(dtype, torch.dtype):
            raise ArgumentTypeError(
                f"operator dtype must be a torch.dtype such as torch.float64, got "
                f"{dtype!r}")
        self.size = int(size)
        self.dtype = dtype
        self.device = available_device(device)
        self.symmetric = symmetric
        self.num_matvecs = 0

    # -- the one hook -----------------------------------------------------------------------
    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self._matmat(v.unsqueeze(1)).squeeze(1)

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return torch.stack([self._matvec(V[:, j]) for j in range(V.shape[1])], dim=1)

    # -- public application -----------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return (self.size, self.size)

    def _check(self, x: torch.Tensor, ndim: int) -> None:
        if not isinstance(x, torch.Tensor):
            raise ArgumentTypeError(
                f"{type(self).__name__} acts on torch tensors, got {type(x).__name__}")
        if x.ndim != ndim or x.shape[0] != self.size:
            want = f"({self.size},)" if ndim == 1 else f"({self.size}, k)"
            raise ArgumentValueError(
                f"{type(self).__name__} of size {self.size} needs a tensor of shape {want}, "
                f"got {tuple(x.shape)}"
            )
        if x.dtype != self.dtype:
            raise ArgumentTypeError(
                f"{type(self).__name__} works in {self.dtype}, got a {x.dtype} tensor; "
                f"convert it with .to({self.dtype})"
            )
        if x.device != self.device and not (
            x.device.type == self.device.type and self.device.index is None
        ):
            raise ArgumentValueError(
                f"{type(self).__name__} lives on {self.device}, got a tensor on {x.device}; "
                f"move it with .to('{self.device}')"
            )

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """Return ``A v`` for a flat vector ``v`` of shape ``(p,)``."""
        self._check(v, 1)
        self.num_matvecs += 1
        return self._matvec(v)

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """Return ``A V`` for a block of column vectors ``V`` of shape ``(p, k)``."""
        self._check(V, 2)
        self.num_matvecs += V.shape[1]
        return self._matmat(V)

    @overload
    def __matmul__(self, other: LinearOperator) -> LinearOperator: ...
    @overload
    def __matmul__(self, other: torch.Tensor) -> torch.Tensor: ...
    def __matmul__(self, other: object) -> LinearOperator | torch.Tensor:
        if isinstance(other, LinearOperator):
            return _ProductOperator(self, other)
        if isinstance(other, torch.Tensor):
            return self.matvec(other) if other.ndim == 1 else self.matmat(other)
        return NotImplemented

    # -- algebra ----------------------------------------------------------------------------
    def __add__(self, other: object) -> LinearOperator:
        if isinstance(other, LinearOperator):
            return _SumOperator(self, other, 1.0)
        return NotImplemented

    def __sub__(self, other: object) -> LinearOperator:
        if isinstance(other, LinearOperator):
            return _SumOperator(self, other, -1.0)
        return NotImplemented

    def __mul__(self, scalar: object) -> LinearOperator:
        return _ScaledOperator(self, _scalar(scalar, "scale"))

    __rmul__ = __mul__

    def __truediv__(self, scalar: object) -> LinearOperator:
        divisor = _scalar(scalar, "divide")
        if divisor == 0:
            raise ArgumentValueError(f"cannot divide {self!r} by zero")
        return _ScaledOperator(self, 1.0 / divisor)

    def __neg__(self) -> LinearOperator:
        return _ScaledOperator(self, -1.0)

    # -- export -----------------------------------------------------------------------------
    def to_dense(self, *, block_size: int = 256) -> torch.Tensor:
        """The ``(p, p)`` matrix, built from ``p`` matvecs in blocks. For small problems only."""
        if self.size > 20_000:
            raise ArgumentValueError(
                f"to_dense() of a {self.size}x{self.size} operator needs "
                f"{self.size**2 * torch.finfo(self.dtype).bits / 8 / 2**30:.1f} GiB; use the "
                "iterative solvers in valleys.linalg instead"
            )
        eye = torch.eye(self.size, dtype=self.dtype, device=self.device)
        cols = [self.matmat(eye[:, j : j + block_size]) for j in range(0, self.size, block_size)]
        return torch.cat(cols, dim=1)

    def to_scipy(self) -> Any:  # a scipy.sparse.linalg.LinearOperator (scipy has no types)
        """A :class:`scipy.sparse.linalg.LinearOperator` view (converts through NumPy each call).

        Prefer valleys' own solvers, which avoid the host round trip and thread contention.
        """
        from scipy.sparse.linalg import LinearOperator as ScipyLinearOperator

        np_dtype = torch.empty((), dtype=self.dtype).numpy().dtype

        def apply(x: np.ndarray) -> np.ndarray:
            x = np.asarray(x)
            t = torch.as_tensor(x.astype(np_dtype, copy=False), device=self.device)
            out = self.matvec(t.reshape(-1)) if x.ndim == 1 or x.shape[1] == 1 else self.matmat(t)
            return out.detach().cpu().numpy().reshape(x.shape)

        return ScipyLinearOperator(
            shape=self.shape,
            matvec=apply,
            rmatvec=apply if self.symmetric else None,
            matmat=apply,
            dtype=np_dtype,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, dtype={self.dtype}, device={self.device})"


def _scalar(value: object, verb: str) -> float:
    """A finite real factor for operator algebra (operators combine with operators only)."""
    if isinstance(value, bool) or not is_real(value):
        raise ArgumentTypeError(f"can only {verb} an operator by a real number, got "
                                f"{type(value).__name__}; combine operators with + - @")
    if not math.isfinite(value):
        raise ArgumentValueError(
            f"cannot {verb} an operator by {value!r}; the factor must be finite")
    return float(value)


def _check_compatible(a: LinearOperator, b: LinearOperator) -> None:
    if a.size != b.size or a.dtype != b.dtype or a.device != b.device:
        raise ArgumentValueError(
            f"cannot combine {a!r} with {b!r}: sizes, dtypes and devices must agree"
        )


class _SumOperator(LinearOperator):
    def __init__(self, a: LinearOperator, b: LinearOperator, sign: float) -> None:
        _check_compatible(a, b)
        super().__init__(a.size, a.dtype, a.device, symmetric=a.symmetric and b.symmetric)
        self.a, self.b, self.sign = a, b, sign

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return torch.add(self.a.matmat(V), self.b.matmat(V), alpha=self.sign)

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        return torch.add(self.a.matvec(v), self.b.matvec(v), alpha=self.sign)


class _ScaledOperator(LinearOperator):
    def __init__(self, a: LinearOperator, scale: float) -> None:
        super().__init__(a.size, a.dtype, a.device, symmetric=a.symmetric)
        self.a, self.scale = a, scale

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.a.matmat(V) * self.scale

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.a.matvec(v) * self.scale


class _ProductOperator(LinearOperator):
    def __init__(self, a: LinearOperator, b: LinearOperator) -> None:
        _check_compatible(a, b)
        # (AB)ᵀ = BᵀAᵀ, so a product is symmetric in general only as the square of a symmetric
        # operator (A A with Aᵀ = A).
        super().__init__(a.size, a.dtype, a.device, symmetric=a is b and a.symmetric)
        self.a, self.b = a, b

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.a.matmat(self.b.matmat(V))

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.a.matvec(self.b.matvec(v))


class DenseOperator(LinearOperator):
    """A linear operator backed by an explicit square matrix (tests, small problems)."""

    def __init__(self, matrix: torch.Tensor, *, symmetric: bool | None = None) -> None:
        if not isinstance(matrix, torch.Tensor) or matrix.ndim != 2:
            raise ArgumentTypeError("DenseOperator needs a 2-D torch tensor")
        if matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
            raise ArgumentValueError(f"DenseOperator needs a non-empty square matrix, got "
                                     f"{tuple(matrix.shape)}")
        if not matrix.dtype.is_floating_point:
            raise ArgumentTypeError(
                f"DenseOperator needs a real floating matrix, got {matrix.dtype}; "
                "convert it with .double()")
        if not torch.isfinite(matrix).all():
            raise ArgumentValueError("DenseOperator matrix has non-finite entries")
        if symmetric is None:
            tol = 1e-6 * max(matrix.abs().max().item(), 1.0)
            symmetric = bool(torch.allclose(matrix, matrix.T, atol=tol, rtol=0))
        super().__init__(matrix.shape[0], matrix.dtype, matrix.device, symmetric=symmetric)
        self.matrix = matrix

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.matrix @ V

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.matrix @ v


class LambdaOperator(LinearOperator):
    """Wrap a function ``v -> A v`` (on flat vectors) as an operator."""

    def __init__(
        self,
        matvec: Callable[[torch.Tensor], torch.Tensor],
        size: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
        *,
        symmetric: bool = True,
    ) -> None:
        super().__init__(size, dtype, device, symmetric=symmetric)
        self._fn = matvec

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self._fn(v)


class ExpressionOperator(LinearOperator):
    """An operator defined as an expression of other operators (``+ - * / @``).

    A named operator whose products are a combination of other operators' products (the GGN
    variance ``M − G @ G``, the gradient covariance ``F − g gᵀ``) subclasses this and passes the
    expression, so the algebra of this module (with its checks of sizes, dtypes and devices) is
    the one place where the combination is computed. The expression's own operators count
    their products as usual; this operator counts the vectors it is applied to.
    """

    def __init__(self, expression: LinearOperator) -> None:
        if not isinstance(expression, LinearOperator):
            raise ArgumentTypeError(
                f"ExpressionOperator needs a LinearOperator, got {type(expression).__name__}")
        super().__init__(expression.size, expression.dtype, expression.device,
                         symmetric=expression.symmetric)
        self.expression = expression

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.expression.matmat(V)

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.expression.matvec(v)


class LowRankOperator(LinearOperator):
    r"""A low-rank operator ``A = U diag(s) Vᵀ`` (``V = U`` unless given), applied in factors.

    .. math::  A x = U \big(s ⊙ (V^\top x)\big), \qquad U, V ∈ ℝ^{p × r}, \; s ∈ ℝ^r ,

    at ``O(p r)`` per vector instead of ``O(p²)``. With ``V = U`` it is symmetric. Typical uses:
    deflation of known eigenpairs, ``A − LowRankOperator(Q, λ)`` with ``Q, λ`` from
    :func:`~valleys.linalg.eigsh` (Saad, *Numerical Methods for Large Eigenvalue Problems*,
    2011, §4.2), the rank-one term ``g gᵀ`` of the gradient covariance, and low-rank
    preconditioners ``σI + U diag(s) Uᵀ``.

    Args:
        U: ``(p, r)`` left factor, a real floating tensor (its dtype and device are the
            operator's). ``r = 0`` is the zero operator.
        s: ``(r,)`` weights (default: ones), finite.
        V: ``(p, r)`` right factor (default: ``U``, a symmetric operator).
    """

    def __init__(
        self,
        U: torch.Tensor,
        s: torch.Tensor | None = None,
        *,
        V: torch.Tensor | None = None,
    ) -> None:
        if not isinstance(U, torch.Tensor) or U.ndim != 2:
            raise ArgumentTypeError(
                f"LowRankOperator needs a 2-D (p, r) tensor U, got "
                f"{tuple(U.shape) if isinstance(U, torch.Tensor) else type(U).__name__}")
        if not U.dtype.is_floating_point:
            raise ArgumentTypeError(
                f"LowRankOperator needs real floating factors, got {U.dtype}; convert with "
                ".double()")
        p, r = U.shape
        if s is None:
            s = torch.ones(r, dtype=U.dtype, device=U.device)
        for name, t, shape in (("s", s, (r,)), ("V", V, (p, r))):
            if t is None:
                continue
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ArgumentValueError(
                    f"LowRankOperator with U of shape {(p, r)} needs {name} of shape {shape}, "
                    f"got {got}")
            if t.dtype != U.dtype or t.device != U.device:
                raise ArgumentTypeError(
                    f"LowRankOperator: {name} must have U's dtype {U.dtype} and device "
                    f"{U.device}, got {t.dtype} on {t.device}")
        for name, t in (("U", U), ("s", s), ("V", V)):
            if t is not None and not bool(torch.isfinite(t).all()):
                raise ArgumentValueError(f"LowRankOperator: {name} has non-finite entries")
        super().__init__(p, U.dtype, U.device, symmetric=V is None)
        self.U, self.s, self.V = U, s, U if V is None else V

    @property
    def rank(self) -> int:
        """The number of columns ``r`` of the factors (an upper bound on the rank)."""
        return self.U.shape[1]

    def _matmat(self, X: torch.Tensor) -> torch.Tensor:
        return self.U @ (self.s[:, None] * (self.V.T @ X))

    def _matvec(self, x: torch.Tensor) -> torch.Tensor:
        return self.U @ (self.s * (self.V.T @ x))
