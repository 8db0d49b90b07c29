"""Curvature matrices as linear operators on flat parameter vectors.

Every curvature matrix is registered in :data:`CURVATURES` by its module (see
:func:`~valleys.operators._registry.register_curvature`); ``__all__`` below, the top-level
``valleys`` namespace and the shared dense-oracle tests all read that registry. Adding a matrix
is one module, its import line below, and one oracle case in ``tests/_curvature_cases.py``
(CONTRIBUTING.md, "Add a curvature matrix").
"""

# The curvature matrices are imported with redundant aliases (``X as X``: re-exported, for
# linters and type checkers), one line per name; importing a module registers its matrix.
from valleys.operators._backend_choice import BackendChoice, clear_backend_choices
from valleys.operators._base import (
    DenseOperator,
    ExpressionOperator,
    LambdaOperator,
    LinearOperator,
    LowRankOperator,
)
from valleys.operators._curvature import CurvatureOperator
from valleys.operators._fisher import EmpiricalFisherOperator as EmpiricalFisherOperator
from valleys.operators._fisher import empirical_fisher as empirical_fisher
from valleys.operators._ggn import GGNOperator as GGNOperator
from valleys.operators._ggn import ggn as ggn
from valleys.operators._ggn_variance import GGNVarianceOperator as GGNVarianceOperator
from valleys.operators._ggn_variance import ggn_variance as ggn_variance
from valleys.operators._gradient_covariance import (
    GradientCovarianceOperator as GradientCovarianceOperator,
)
from valleys.operators._gradient_covariance import gradient_covariance as gradient_covariance
from valleys.operators._hessian import HessianOperator as HessianOperator
from valleys.operators._hessian import hessian as hessian
from valleys.operators._hessian_variance import HessianVarianceOperator as HessianVarianceOperator
from valleys.operators._hessian_variance import hessian_variance as hessian_variance
from valleys.operators._mc_fisher import MCFisherOperator as MCFisherOperator
from valleys.operators._mc_fisher import mc_fisher as mc_fisher
from valleys.operators._registry import CURVATURES, Curvature, register_curvature

__all__ = [
    "CURVATURES",
    "BackendChoice",
    "Curvature",
    "CurvatureOperator",
    "DenseOperator",
    "ExpressionOperator",
    "LambdaOperator",
    "LinearOperator",
    "LowRankOperator",
    "clear_backend_choices",
    "register_curvature",
]
# ... and every registered curvature matrix: its factory and its operator class.
__all__ += sorted(name for c in CURVATURES.values() for name in (c.operator.__name__, c.name))
