"""Pure-torch solvers on :class:`~valleys.operators.LinearOperator`: extreme eigenpairs,
traces and spectral densities. They run on the operator's device and dtype and count matvecs."""

from valleys.linalg._diagonal import DiagonalResult, diagonal
from valleys.linalg._lanczos import block_eigsh, eigsh, power_iteration
from valleys.linalg._results import EigshResult, SpectralDensity, TraceResult
from valleys.linalg._slq import spectral_density
from valleys.linalg._trace import TRACE_METHODS, TRACE_MIN_MATVECS, trace

__all__ = [
    "TRACE_METHODS",
    "TRACE_MIN_MATVECS",
    "DiagonalResult",
    "EigshResult",
    "SpectralDensity",
    "TraceResult",
    "block_eigsh",
    "diagonal",
    "eigsh",
    "power_iteration",
    "spectral_density",
    "trace",
]
