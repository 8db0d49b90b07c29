"""Instrumented training on an Objective (torch.optim underneath).

* :mod:`~valleys.train.loop`: :func:`train` with records every ``record_every`` steps.
* :mod:`~valleys.train.callbacks`: sharpness, top eigenvalues and preconditioned sharpness,
  Lanczos warm-started between steps.
* :mod:`~valleys.train.flow`: the gradient-flow reference (RK4 with steps ``α/sharpness``).
* :mod:`~valleys.train.tensorboard`: records to TensorBoard (optional extra).
"""

from valleys.train.callbacks import (
    PreconditionedOperator,
    SharpnessTracker,
    optimizer_preconditioner,
)
from valleys.train.flow import FlowDistance, FlowResult, GradientFlow, gradient_flow
from valleys.train.loop import (
    OPTIMIZERS,
    SAMPLING,
    TrainConfig,
    TrainContext,
    TrainResult,
    train,
)
from valleys.train.tensorboard import write_tensorboard

__all__ = [
    "OPTIMIZERS",
    "SAMPLING",
    "FlowDistance",
    "FlowResult",
    "GradientFlow",
    "PreconditionedOperator",
    "SharpnessTracker",
    "TrainConfig",
    "TrainContext",
    "TrainResult",
    "gradient_flow",
    "optimizer_preconditioner",
    "train",
    "write_tensorboard",
]
