"""Norms that control generalization: path norms, Barron norms, Rademacher bounds.

* :func:`path_norm`: the ℓ_p path norm of a ReLU network of ``Linear`` layers by one forward
  pass of ``|W|^p`` on an all-ones input (biases as edges from constant units; Neyshabur,
  Tomioka & Srebro 2015); :func:`two_layer_path_norm` ``Σ_j |a_j| ‖(w_j, c_j)‖_q``
  (E, Ma & Wu 2019 for ``q = 1``) and :func:`two_layer_weights`.
* Barron norms: :func:`ridge_barron_norm` (bounds for finite ReLU ridge sums, exact in
  common-orthant cases), :func:`spectral_moments` / :func:`spectral_barron_bound` (a target
  known by its Fourier transform), :func:`gaussian_spectral_moments` (closed forms),
  :func:`barron_norm_from_samples` (a target known by samples).
* Rademacher complexity: :func:`rademacher_bound`, :func:`massart_bound`,
  :func:`l1_rademacher`; the a priori estimate's terms :func:`a_priori_terms`.
* The path-norm-regularized estimator :func:`path_norm_regularized_fit` (``J_λ``, paper or
  authors'-code scaling, :func:`penalty_weight`) on :func:`two_layer_relu` networks.

The facts used, with sources and reliability tags, are in ``docs/theory.md``.
"""

from valleys.theory._barron import BarronEstimate as BarronEstimate
from valleys.theory._barron import SpectralMoments as SpectralMoments
from valleys.theory._barron import barron_norm_from_samples as barron_norm_from_samples
from valleys.theory._barron import gaussian_fourier_transform as gaussian_fourier_transform
from valleys.theory._barron import gaussian_spectral_moments as gaussian_spectral_moments
from valleys.theory._barron import ridge_barron_norm as ridge_barron_norm
from valleys.theory._barron import spectral_barron_bound as spectral_barron_bound
from valleys.theory._barron import spectral_moments as spectral_moments
from valleys.theory._fit import RegularizedFit as RegularizedFit
from valleys.theory._fit import path_norm_regularized_fit as path_norm_regularized_fit
from valleys.theory._fit import penalty_weight as penalty_weight
from valleys.theory._fit import two_layer_relu as two_layer_relu
from valleys.theory._path_norm import path_norm as path_norm
from valleys.theory._path_norm import two_layer_path_norm as two_layer_path_norm
from valleys.theory._path_norm import two_layer_weights as two_layer_weights
from valleys.theory._rademacher import APrioriTerms as APrioriTerms
from valleys.theory._rademacher import a_priori_terms as a_priori_terms
from valleys.theory._rademacher import l1_rademacher as l1_rademacher
from valleys.theory._rademacher import massart_bound as massart_bound
from valleys.theory._rademacher import rademacher_bound as rademacher_bound

__all__ = [
    "APrioriTerms",
    "BarronEstimate",
    "RegularizedFit",
    "SpectralMoments",
    "a_priori_terms",
    "barron_norm_from_samples",
    "gaussian_fourier_transform",
    "gaussian_spectral_moments",
    "l1_rademacher",
    "massart_bound",
    "path_norm",
    "path_norm_regularized_fit",
    "penalty_weight",
    "rademacher_bound",
    "ridge_barron_norm",
    "spectral_barron_bound",
    "spectral_moments",
    "two_layer_path_norm",
    "two_layer_relu",
    "two_layer_weights",
]
