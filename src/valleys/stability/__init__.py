"""Linear (mean-square) stability of SGD at a minimum (Wu, Ma & E, NeurIPS 2018).

* :mod:`~valleys.stability.criteria`: the closed-form 1-D criterion, the noise factor, the
  necessary bounds and the stable region for plots.
* :mod:`~valleys.stability.condition`: the multi-dimensional sufficient condition with
  operators: :func:`is_stable`, :func:`stability_analysis`, :func:`max_stable_lr`.
* :mod:`~valleys.stability.exact`: the exact mean-square test (spectral radius of the
  second-moment map) for small problems.
* :mod:`~valleys.stability.gram`: sharpness, non-uniformity and ``max_stable_lr`` from the
  Gram (NTK) matrix at an interpolating square-loss minimum.
* :mod:`~valleys.stability.thresholds`: the quadratic stability thresholds of GD, heavy ball,
  Nesterov and frozen-preconditioner Adam, as torch implements their updates.
"""

from valleys.stability.condition import MaxStableLRResult as MaxStableLRResult
from valleys.stability.condition import StabilityResult as StabilityResult
from valleys.stability.condition import is_stable as is_stable
from valleys.stability.condition import max_stable_lr as max_stable_lr
from valleys.stability.condition import max_stable_lr_analysis as max_stable_lr_analysis
from valleys.stability.condition import stability_analysis as stability_analysis
from valleys.stability.criteria import NecessaryBounds as NecessaryBounds
from valleys.stability.criteria import StabilityRegion as StabilityRegion
from valleys.stability.criteria import critical_lr as critical_lr
from valleys.stability.criteria import necessary_bounds as necessary_bounds
from valleys.stability.criteria import sgd_criterion as sgd_criterion
from valleys.stability.criteria import sgd_noise_factor as sgd_noise_factor
from valleys.stability.criteria import stability_region as stability_region
from valleys.stability.exact import ExactMeanSquareResult as ExactMeanSquareResult
from valleys.stability.exact import exact_mean_square as exact_mean_square
from valleys.stability.exact import per_sample_hessians as per_sample_hessians
from valleys.stability.exact import second_moment_map as second_moment_map
from valleys.stability.gram import GramStabilityResult as GramStabilityResult
from valleys.stability.gram import gram_matrix as gram_matrix
from valleys.stability.gram import gram_sharpness_nonuniformity as gram_sharpness_nonuniformity
from valleys.stability.thresholds import OPTIMIZER_THRESHOLDS as OPTIMIZER_THRESHOLDS
from valleys.stability.thresholds import threshold as threshold

__all__ = [
    "OPTIMIZER_THRESHOLDS",
    "ExactMeanSquareResult",
    "GramStabilityResult",
    "MaxStableLRResult",
    "NecessaryBounds",
    "StabilityRegion",
    "StabilityResult",
    "critical_lr",
    "exact_mean_square",
    "gram_matrix",
    "gram_sharpness_nonuniformity",
    "is_stable",
    "max_stable_lr",
    "max_stable_lr_analysis",
    "necessary_bounds",
    "per_sample_hessians",
    "second_moment_map",
    "sgd_criterion",
    "sgd_noise_factor",
    "stability_analysis",
    "stability_region",
    "threshold",
]
