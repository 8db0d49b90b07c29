"""Nonconvex signal-recovery toys, each an :class:`~valleys.Objective` (issue 17).

* Phase retrieval (Candès, Li & Soltanolkotabi 2015; Chen & Candès 2017):
  :func:`phase_retrieval_problem`, :func:`wirtinger_flow`, :func:`truncated_wirtinger_flow`,
  :func:`spectral_init`, :func:`wf_gradient`, :func:`phase_distance`.
* Low-rank matrix sensing and completion with ``X = UUᵀ`` from small initialisation (Gunasekar
  et al. 2017; Li, Ma & Zhang 2018): :func:`matrix_sensing_problem`,
  :func:`matrix_completion_problem`, :func:`bm_gradient`, :func:`numerical_rank`.
* Diagonal linear networks ``w = u⊙u − v⊙v`` (Woodworth et al. 2020; Pesme et al. 2021; Even
  et al. 2023): :func:`sparse_regression_problem`, :func:`diagonal_net_limit` (the closed-form
  implicit bias), :func:`hypentropy`, :func:`min_l1_interpolant`, :func:`min_l2_interpolant`.
* Total-variation denoising (Rudin, Osher & Fatemi 1992; Chambolle 2004):
  :func:`denoising_problem`, :func:`tv_denoise`, :func:`tv_energy`.

Every problem has ``.objective(...)``: the model is a small ``nn.Module`` holding the
problem's parameters (``x``; ``U``; ``u, v``; the image ``u``), so :func:`valleys.sharpness`,
:func:`valleys.nonuniformity` and :mod:`valleys.stability` apply unchanged.
"""

from valleys.signals._diagonal import DiagonalNet as DiagonalNet
from valleys.signals._diagonal import DiagonalRun as DiagonalRun
from valleys.signals._diagonal import diagonal_net_limit as diagonal_net_limit
from valleys.signals._diagonal import hypentropy as hypentropy
from valleys.signals._diagonal import min_l1_interpolant as min_l1_interpolant
from valleys.signals._diagonal import min_l2_interpolant as min_l2_interpolant
from valleys.signals._diagonal import sparse_regression_problem as sparse_regression_problem
from valleys.signals._matrix import BurerMonteiroResult as BurerMonteiroResult
from valleys.signals._matrix import MatrixSensing as MatrixSensing
from valleys.signals._matrix import bm_gradient as bm_gradient
from valleys.signals._matrix import matrix_completion_problem as matrix_completion_problem
from valleys.signals._matrix import matrix_sensing_problem as matrix_sensing_problem
from valleys.signals._matrix import numerical_rank as numerical_rank
from valleys.signals._phase import PhaseRetrieval as PhaseRetrieval
from valleys.signals._phase import WirtingerFlowResult as WirtingerFlowResult
from valleys.signals._phase import phase_distance as phase_distance
from valleys.signals._phase import phase_retrieval_problem as phase_retrieval_problem
from valleys.signals._phase import spectral_init as spectral_init
from valleys.signals._phase import truncated_wirtinger_flow as truncated_wirtinger_flow
from valleys.signals._phase import wf_gradient as wf_gradient
from valleys.signals._phase import wirtinger_flow as wirtinger_flow
from valleys.signals._tv import Denoising as Denoising
from valleys.signals._tv import TVResult as TVResult
from valleys.signals._tv import denoising_problem as denoising_problem
from valleys.signals._tv import divergence as divergence
from valleys.signals._tv import gradient_2d as gradient_2d
from valleys.signals._tv import tv_denoise as tv_denoise
from valleys.signals._tv import tv_energy as tv_energy

__all__ = [
    "BurerMonteiroResult",
    "Denoising",
    "DiagonalNet",
    "DiagonalRun",
    "MatrixSensing",
    "PhaseRetrieval",
    "TVResult",
    "WirtingerFlowResult",
    "bm_gradient",
    "denoising_problem",
    "diagonal_net_limit",
    "divergence",
    "gradient_2d",
    "hypentropy",
    "matrix_completion_problem",
    "matrix_sensing_problem",
    "min_l1_interpolant",
    "min_l2_interpolant",
    "numerical_rank",
    "phase_distance",
    "phase_retrieval_problem",
    "sparse_regression_problem",
    "spectral_init",
    "truncated_wirtinger_flow",
    "tv_denoise",
    "tv_energy",
    "wf_gradient",
    "wirtinger_flow",
]
