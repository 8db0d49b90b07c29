"""Curvature matrices as linear operators on flat parameter vectors."""

from valleys.operators.base import DenseOperator, LambdaOperator, LinearOperator
from valleys.operators.curvature import CurvatureOperator
from valleys.operators.fisher import EmpiricalFisherOperator, empirical_fisher
from valleys.operators.ggn import GGNOperator, ggn
from valleys.operators.gradient_covariance import GradientCovarianceOperator, gradient_covariance
from valleys.operators.hessian import HessianOperator, hessian
from valleys.operators.hessian_variance import HessianVarianceOperator, hessian_variance

__all__ = [
    "CurvatureOperator",
    "DenseOperator",
    "EmpiricalFisherOperator",
    "GGNOperator",
    "GradientCovarianceOperator",
    "HessianOperator",
    "HessianVarianceOperator",
    "LambdaOperator",
    "LinearOperator",
    "empirical_fisher",
    "ggn",
    "gradient_covariance",
    "hessian",
    "hessian_variance",
]
