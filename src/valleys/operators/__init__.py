"""Curvature matrices as linear operators on flat parameter vectors."""

from valleys.operators.base import DenseOperator, LambdaOperator, LinearOperator
from valleys.operators.curvature import CurvatureOperator
from valleys.operators.fisher import EmpiricalFisherOperator, empirical_fisher
from valleys.operators.ggn import GGNOperator, ggn
from valleys.operators.ggn_variance import GGNVarianceOperator, ggn_variance
from valleys.operators.gradient_covariance import GradientCovarianceOperator, gradient_covariance
from valleys.operators.hessian import HessianOperator, hessian
from valleys.operators.hessian_variance import HessianVarianceOperator, hessian_variance

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
