"""Gradient noise: mini-batch noise at θ, Adam's effective noise, α-stable laws, tail index.

* :mod:`~valleys.noise._minibatch`: mini-batch gradients (vectorized, or streamed), noise
  samples and their projections, entries, norms and covariance products, the noise covariance
  ``(n−B)/(B(n−1))·C`` as an operator, its spectrum and alignment with the Hessian.
* :mod:`~valleys.noise._adam`: Adam's preconditioned and averaged effective noise.
* :mod:`~valleys.noise._stable`: α-stable samples in torch (Chambers–Mallows–Stuck).
* :mod:`~valleys.noise._tail_index`: the block-sum tail-index estimator and an ML α-stable fit.
"""

from valleys.noise._adam import (
    adam_noise_covariance,
    adam_noise_samples,
    averaging_factor,
    stationary_second_moment,
)
from valleys.noise._minibatch import (
    NoiseStatistics,
    batch_indices,
    hessian_alignment,
    iter_minibatch_gradients,
    minibatch_coordinates,
    minibatch_covariance_product,
    minibatch_gradients,
    minibatch_gradients_loop,
    minibatch_noise,
    minibatch_projections,
    minibatch_squared_norms,
    noise_covariance,
    noise_factor,
    noise_statistics,
    subspace_overlap,
)
from valleys.noise._stable import isotropic_stable, stable_rvs
from valleys.noise._tail_index import StableFit, TailIndexResult, fit_stable, tail_index

__all__ = [
    "NoiseStatistics",
    "StableFit",
    "TailIndexResult",
    "adam_noise_covariance",
    "adam_noise_samples",
    "averaging_factor",
    "batch_indices",
    "fit_stable",
    "hessian_alignment",
    "isotropic_stable",
    "iter_minibatch_gradients",
    "minibatch_coordinates",
    "minibatch_covariance_product",
    "minibatch_gradients",
    "minibatch_gradients_loop",
    "minibatch_noise",
    "minibatch_projections",
    "minibatch_squared_norms",
    "noise_covariance",
    "noise_factor",
    "noise_statistics",
    "stable_rvs",
    "stationary_second_moment",
    "subspace_overlap",
    "tail_index",
]
