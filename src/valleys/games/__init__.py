"""Mixed Nash equilibria of mean-field two-player zero-sum games.

``min_μx max_μy ∬K(x, y) dμx dμy`` (plus entropy at temperature ``τ``), solved with particles:
quasistatic Langevin gradient descent (Ma & Ying, ICLR 2022), Langevin descent–ascent and
Wasserstein–Fisher–Rao descent–ascent (Domingo-Enrich et al., NeurIPS 2020).

* :mod:`~valleys.games.spaces`: Euclidean, torus and sphere strategy spaces;
* :mod:`~valleys.games.payoffs`: closed-form test games and their equilibria;
* :mod:`~valleys.games.dynamics`: :func:`solve`;
* :mod:`~valleys.games.progress`: NI error, regularised gap, distances to equilibria;
* :mod:`~valleys.games.gans`: mixtures of GANs as particle games (imported on demand).
"""

from valleys.games.dynamics import METHODS, GameResult, GameState, solve
from valleys.games.payoffs import (
    MatrixGame,
    QuadraticBilinear,
    SphereBilinear,
    TranslationGame,
    rock_paper_scissors,
)
from valleys.games.progress import (
    NIError,
    fourier_amplitude,
    gaussian_fit,
    gaussian_w2,
    ni_error,
    ni_monitor,
    regularized_gap_grid,
    torus_histogram,
    wasserstein2,
)
from valleys.games.spaces import Euclidean, Sphere, Torus

__all__ = [
    "METHODS",
    "Euclidean",
    "GameResult",
    "GameState",
    "MatrixGame",
    "NIError",
    "QuadraticBilinear",
    "Sphere",
    "SphereBilinear",
    "Torus",
    "TranslationGame",
    "fourier_amplitude",
    "gaussian_fit",
    "gaussian_w2",
    "ni_error",
    "ni_monitor",
    "regularized_gap_grid",
    "rock_paper_scissors",
    "solve",
    "torus_histogram",
    "wasserstein2",
]
