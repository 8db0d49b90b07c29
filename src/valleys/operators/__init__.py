"""Curvature matrices as linear operators on flat parameter vectors."""

from valleys.operators._base import DenseOperator, LambdaOperator, LinearOperator
from valleys.operators._curvature import CurvatureOperator
from valleys.operators._fisher import EmpiricalFisherOperator, empirical_fisher
from valleys.operators._ggn import GGNOperator, ggn
from valleys.operators._ggn_variance import GGNVarianceOperator, ggn_variance
from valleys.operators._gradient_covariance import GradientCovarianceOperator, gradient_covariance
from valleys.operators._hessian import HessianOperator, hessian
from valleys.operators._hessian_variance import HessianVarianceOperator, hessian_variance

__all__ = [
    "CurvatureOperator",
    "DenseOperator",
    "EmpiricalFisherOperator",
    "GGNOperator",
    "GGNVarianceOperator",
    "GradientCovarianceOperator",
    "HessianOperator",
    "HessianVarianceOperator",
    "LambdaOperator",
    "LinearOperator",
    "empirical_fisher",
    "ggn",
    "ggn_variance",
    "gradient_covariance",
    "hessian",
    "hessian_variance",
]
