"""Mean-field particle simulations: measures, Wasserstein-type flows, two-layer networks.

* :mod:`~valleys.meanfield.particles`: :class:`ParticleMeasure` (positions, optional weights),
  moments, histograms, Wasserstein/Sinkhorn (POT) and MMD distances.
* :mod:`~valleys.meanfield.flows`: steppers for the Wasserstein, Langevin and
  Wasserstein–Fisher–Rao gradient flows of a risk over measures; :func:`simulate`.
* :mod:`~valleys.meanfield.two_layer`: two-layer nets in the mean-field (1/m) and NTK
  (1/sqrt m) scalings, random features, exact chunked gradients, training, balancedness.
* :mod:`~valleys.meanfield.norms`: path norm, Barron-type norms, Rademacher-based bounds.
* :mod:`~valleys.meanfield.mmn`: Mei–Montanari–Nguyen's isotropic-Gaussian example, the
  radial PDE and its particle simulation.
* :mod:`~valleys.meanfield.batchnorm`: two-layer nets with batch normalization, whose GD is
  Riemannian GD of the BN-free net (BN as a change of metric).
* :mod:`~valleys.meanfield.resnet`: the mean-field ResNet in continuous depth (forward and
  adjoint ODEs, the flow of the parameter measure) and training schemes derived from it.
"""

from valleys.meanfield import batchnorm as batchnorm
from valleys.meanfield import mmn as mmn
from valleys.meanfield import norms as norms
from valleys.meanfield import resnet as resnet
from valleys.meanfield import two_layer as two_layer
from valleys.meanfield.batchnorm import BNRiemannianComparison as BNRiemannianComparison
from valleys.meanfield.batchnorm import compare_bn_riemannian as compare_bn_riemannian
from valleys.meanfield.batchnorm import riemannian_gd_step as riemannian_gd_step
from valleys.meanfield.flows import METHODS as METHODS
from valleys.meanfield.flows import FieldValue as FieldValue
from valleys.meanfield.flows import FlowResult as FlowResult
from valleys.meanfield.flows import autograd_field as autograd_field
from valleys.meanfield.flows import knn_entropy as knn_entropy
from valleys.meanfield.flows import langevin_step as langevin_step
from valleys.meanfield.flows import simulate as simulate
from valleys.meanfield.flows import wasserstein_step as wasserstein_step
from valleys.meanfield.flows import wfr_step as wfr_step
from valleys.meanfield.norms import a_posteriori_bound as a_posteriori_bound
from valleys.meanfield.norms import a_priori_bound as a_priori_bound
from valleys.meanfield.norms import barron_norm as barron_norm
from valleys.meanfield.norms import path_norm as path_norm
from valleys.meanfield.norms import rademacher_bound as rademacher_bound
from valleys.meanfield.particles import ParticleMeasure as ParticleMeasure
from valleys.meanfield.particles import gaussian_wasserstein2 as gaussian_wasserstein2
from valleys.meanfield.particles import kernel_sum as kernel_sum
from valleys.meanfield.particles import mmd as mmd
from valleys.meanfield.particles import sinkhorn as sinkhorn
from valleys.meanfield.particles import wasserstein as wasserstein
from valleys.meanfield.resnet import DepthProfile as DepthProfile
from valleys.meanfield.resnet import ResNetParams as ResNetParams
from valleys.meanfield.resnet import discrete_adjoint as resnet_adjoint
from valleys.meanfield.resnet import train_resnet as train_resnet
from valleys.meanfield.two_layer import TwoLayerGradients as TwoLayerGradients
from valleys.meanfield.two_layer import TwoLayerRun as TwoLayerRun
from valleys.meanfield.two_layer import balancedness as balancedness
from valleys.meanfield.two_layer import gradients as two_layer_gradients
from valleys.meanfield.two_layer import init_two_layer as init_two_layer
from valleys.meanfield.two_layer import mean_field_field as mean_field_field
from valleys.meanfield.two_layer import predict as two_layer_predict
from valleys.meanfield.two_layer import risk as two_layer_risk
from valleys.meanfield.two_layer import train as train_two_layer

__all__ = [
    "METHODS",
    "BNRiemannianComparison",
    "DepthProfile",
    "FieldValue",
    "FlowResult",
    "ParticleMeasure",
    "ResNetParams",
    "TwoLayerGradients",
    "TwoLayerRun",
    "a_posteriori_bound",
    "a_priori_bound",
    "autograd_field",
    "balancedness",
    "barron_norm",
    "batchnorm",
    "compare_bn_riemannian",
    "gaussian_wasserstein2",
    "init_two_layer",
    "kernel_sum",
    "knn_entropy",
    "langevin_step",
    "mean_field_field",
    "mmd",
    "mmn",
    "norms",
    "path_norm",
    "rademacher_bound",
    "resnet",
    "resnet_adjoint",
    "riemannian_gd_step",
    "simulate",
    "sinkhorn",
    "train_resnet",
    "train_two_layer",
    "two_layer",
    "two_layer_gradients",
    "two_layer_predict",
    "two_layer_risk",
    "wasserstein",
    "wasserstein_step",
    "wfr_step",
]
