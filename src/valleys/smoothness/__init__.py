r"""Input-smoothness of a network: input gradients, Sobolev seminorms, robustness.

Ma & Ying (2021), "On Linear Stability of SGD and Input-Smoothness of Neural Networks"
(NeurIPS 2021, arXiv 2105.13462), link the flatness of a minimum in *parameter* space to the
smoothness of the model in *input* space. The link is the multiplicative structure of the first
layer ``z₁ = W₁x + b₁``, ``f(x; θ) = g(z₁)``:

.. math::

    \frac{∂f_k}{∂W_1} = \frac{∂f_k}{∂z_1} x^\top, \qquad
    \Big\|\frac{∂f_k}{∂W_1}\Big\|_F = \Big\|\frac{∂f_k}{∂z_1}\Big\| \, \|x\|, \qquad
    ∇_x f_k = W_1^\top \frac{∂f_k}{∂z_1}.

This package measures the quantities involved:

* per-sample input Jacobians ``∇_x f(x_i)`` for every output (:func:`input_jacobians`) and
  input gradients of the loss ``∇_x ℓ_i`` (:func:`loss_input_gradients`), by
  ``vmap(jacrev(·))`` over the samples of a chunk;
* the coordinate-wise seminorm estimates of the authors' code (``get_gradW``/``get_gradx`` in
  ``ChaoMa93/Sobolev-Reg-of-SGD``), ``g_w(k)`` and ``g_x(k)``
  (:func:`parameter_gradient_norm`, :func:`input_gradient_norm`, :func:`coordinate_norm`), and
  Sobolev-type averages such as ``(1/n) Σ_i ‖∇_x f(x_i)‖_F²`` (:func:`input_smoothness`);
* the first-layer identity (:func:`first_layer_identity`) and the flatness bound it gives at
  an interpolating square-loss minimum (:func:`first_layer_bound`);
* accuracy under FGSM and PGD attacks in L2 and L∞ balls (:func:`adversarial_accuracy`,
  :func:`fgsm`, :func:`pgd`).

Every function takes either a :class:`~valleys.Objective` (its model, ``θ`` and data are used;
pass ``X`` to evaluate elsewhere) or a plain ``nn.Module`` with inputs ``X``, which is evaluated
through an :class:`~valleys.Objective` built on ``X`` (``θ``: its trainable parameters, or all
of them when every one is frozen), so the objective's checks apply: models in train mode with
BatchNorm, InstanceNorm or dropout, or with randomness hidden in ``forward``, are refused.
Models are evaluated functionally with detached parameters, on the parameters' device and dtype;
the model is never modified and never put in train or eval mode.

One module per concept: :mod:`~valleys.smoothness.input_gradients` (per-sample Jacobians),
:mod:`~valleys.smoothness.sobolev` (``g_x``, ``g_w`` and Sobolev averages),
:mod:`~valleys.smoothness.first_layer` (identity and bound) and
:mod:`~valleys.smoothness.attacks` (FGSM, PGD, adversarial accuracy); every public name is
re-exported here.
"""

from __future__ import annotations

from valleys.smoothness._source import Source  # noqa: F401  (public, not in __all__)
from valleys.smoothness.attacks import (
    ATTACKS,  # noqa: F401  (public constant, not in __all__)
    NORMS,  # noqa: F401
    RobustnessResult,
    adversarial_accuracy,
    fgsm,
    pgd,
)
from valleys.smoothness.first_layer import (
    FirstLayerBound,
    FirstLayerIdentity,
    find_first_layer,
    first_layer_bound,
    first_layer_identity,
)
from valleys.smoothness.input_gradients import (
    input_jacobians,
    loss_input_gradients,
    parameter_jacobians,
)
from valleys.smoothness.sobolev import (
    NORMALIZATIONS,  # noqa: F401
    SmoothnessReport,
    coordinate_norm,
    input_gradient_norm,
    input_smoothness,
    parameter_gradient_norm,
)

__all__ = [
    "FirstLayerBound",
    "FirstLayerIdentity",
    "RobustnessResult",
    "SmoothnessReport",
    "adversarial_accuracy",
    "coordinate_norm",
    "fgsm",
    "find_first_layer",
    "first_layer_bound",
    "first_layer_identity",
    "input_gradient_norm",
    "input_jacobians",
    "input_smoothness",
    "loss_input_gradients",
    "parameter_gradient_norm",
    "parameter_jacobians",
    "pgd",
]
