"""valleys: the training dynamics of neural networks.

The curated public surface. Curvature engine: an :class:`Objective` (the empirical risk), its
curvature matrices as :class:`LinearOperator` objects, and pure-function solvers that read
spectra off them.
"""

import importlib

from valleys import data as data
from valleys import distributed as distributed
from valleys import games as games
from valleys import landscape as landscape
from valleys import meanfield as meanfield
from valleys import models as models
from valleys import noise as noise
from valleys import sde as sde
from valleys import smoothness as smoothness
from valleys import stability as stability
from valleys import sweeps as sweeps
from valleys import train as train
from valleys._memory import memory_estimate as memory_estimate
from valleys._sharpness import nonuniformity as nonuniformity
from valleys._sharpness import sharpness as sharpness
from valleys._version import __version__ as __version__
from valleys.blocks import block_spectra as block_spectra
from valleys.landscape import sam_sharpness as sam_sharpness
from valleys.linalg import DiagonalResult as DiagonalResult
from valleys.linalg import EigshResult as EigshResult
from valleys.linalg import SpectralDensity as SpectralDensity
from valleys.linalg import TraceResult as TraceResult
from valleys.linalg import diagonal as diagonal
from valleys.linalg import eigsh as eigsh
from valleys.linalg import power_iteration as power_iteration
from valleys.linalg import spectral_density as spectral_density
from valleys.linalg import trace as trace
from valleys.objective import Objective as Objective
from valleys.operators import CURVATURES as _CURVATURES
from valleys.operators import DenseOperator as DenseOperator
from valleys.operators import LambdaOperator as LambdaOperator
from valleys.operators import LinearOperator as LinearOperator
from valleys.operators import LowRankOperator as LowRankOperator
from valleys.operators import empirical_fisher as empirical_fisher
from valleys.operators import ggn as ggn
from valleys.operators import ggn_variance as ggn_variance
from valleys.operators import gradient_covariance as gradient_covariance
from valleys.operators import hessian as hessian
from valleys.operators import hessian_variance as hessian_variance
from valleys.problems import load_problem as load_problem

__all__ = [
    "DenseOperator",
    "DiagonalResult",
    "EigshResult",
    "LambdaOperator",
    "LinearOperator",
    "LowRankOperator",
    "Objective",
    "SpectralDensity",
    "TraceResult",
    "block_spectra",
    "data",
    "diagonal",
    "distributed",
    "eigsh",
    "empirical_fisher",
    "games",
    "ggn",
    "ggn_variance",
    "gradient_covariance",
    "hessian",
    "hessian_variance",
    "landscape",
    "load_problem",
    "meanfield",
    "memory_estimate",
    "models",
    "noise",
    "nonuniformity",
    "power_iteration",
    "sam_sharpness",
    "sde",
    "sharpness",
    "smoothness",
    "spectral_density",
    "stability",
    "sweeps",
    "trace",
    "train",
]

# Every registered curvature matrix is a top-level factory too (``valleys.mc_fisher``, ...), so
# adding one to valleys.operators needs no line here; the explicit imports above keep the older
# ones visible to static type checkers.
globals().update({name: curvature.factory for name, curvature in _CURVATURES.items()})
__all__ += sorted(set(_CURVATURES) - set(__all__))

# Subpackages imported on first use (PEP 562): valleys.signals needs scipy.optimize and
# valleys.integrations the training frameworks, which `import valleys` should not pay for.
_LAZY_SUBPACKAGES = ("integrations", "sciml", "signals", "theory")


def __getattr__(name: str) -> object:
    if name in _LAZY_SUBPACKAGES:
        return importlib.import_module(f"valleys.{name}")
    raise AttributeError(f"module 'valleys' has no attribute {name!r}")
