"""Landscape geometry: the loss on lines and planes, growth exponents, exact toy landscapes.

* :mod:`~valleys.landscape.evaluate`: batched scans ``L(θ + t u)`` and ``L(θ + a u + b v)``
  (vmap over parameter vectors), interpolation between two parameter vectors;
* :mod:`~valleys.landscape.directions`: top Hessian eigenvectors, filter-normalized random
  directions (Li et al. 2018);
* :mod:`~valleys.landscape.growth`: the growth exponent ``p`` of ``ΔL ∝ |t|^p`` and its local
  profile over scales (Ma, Kunin, Wu & Ying 2022);
* :mod:`~valleys.landscape.epsilon_sharpness`: the sharpness measures of the flat-minima
  literature (SAM's ε-sharpness, ASAM, m-sharpness, Keskar's box) as certified brackets;
* :mod:`~valleys.landscape.toys`: sub-quadratic 1-D and 2-D valleys with closed-form
  edge-of-stability behaviour;
* :mod:`~valleys.landscape.trajectory`: a training trajectory on the plane of its first two
  principal directions, with the loss contours (Li et al. 2018).
"""

from valleys.landscape.directions import (
    BIAS_BN,
    NORMALIZATIONS,
    normalize_direction,
    orthogonalize,
    random_direction,
    top_eigen_directions,
)
from valleys.landscape.epsilon_sharpness import (
    EpsilonSharpness,
    adaptive_sharpness,
    box_sharpness,
    m_sharpness,
    sam_sharpness,
)
from valleys.landscape.evaluate import (
    METHODS,
    LineScan,
    PlaneScan,
    batched_loss,
    grid_timing,
    interpolate,
    loop_loss,
    loss_along_line,
    loss_on_plane,
)
from valleys.landscape.growth import GrowthProfile, growth_exponent, growth_profile
from valleys.landscape.toys import SqrtLoss, SqrtValley
from valleys.landscape.trajectory import (
    TrajectoryPlane,
    plot_trajectory_plane,
    trajectory_plane,
)

__all__ = [
    "BIAS_BN",
    "METHODS",
    "NORMALIZATIONS",
    "EpsilonSharpness",
    "GrowthProfile",
    "LineScan",
    "PlaneScan",
    "SqrtLoss",
    "SqrtValley",
    "TrajectoryPlane",
    "adaptive_sharpness",
    "batched_loss",
    "box_sharpness",
    "grid_timing",
    "growth_exponent",
    "growth_profile",
    "interpolate",
    "loop_loss",
    "loss_along_line",
    "loss_on_plane",
    "m_sharpness",
    "normalize_direction",
    "orthogonalize",
    "plot_trajectory_plane",
    "random_direction",
    "sam_sharpness",
    "top_eigen_directions",
    "trajectory_plane",
]
