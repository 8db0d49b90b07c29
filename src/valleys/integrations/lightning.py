r"""A PyTorch Lightning callback that logs the sharpness during training (``valleys[lightning]``).

Example::

    from valleys.integrations.lightning import SharpnessCallback
    cb = SharpnessCallback((X_eval, y_eval), "ce", every_n_steps=50, k=3)
    lightning.pytorch.Trainer(callbacks=[cb], ...).fit(module, loader)
    cb.history, cb.overhead_fraction

See :class:`SharpnessCallback` and :mod:`valleys.integrations._common`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn

from valleys.integrations._common import MonitorViews, SharpnessMonitor
from valleys.objective import Objective

__all__ = ["SharpnessCallback"]

_NAMES = ("mse", "ce")


def _objective(model: nn.Module, name: str, batch: Any, select: Callable[[str], bool]
               ) -> Objective:
    return Objective(model, name, (batch[0], batch[1]), params=select)


class SharpnessCallback(MonitorViews, Callback):
    r"""Log the sharpness ``λ_1(∇²L)``, the top ``k`` Hessian eigenvalues, the preconditioned
    sharpness ``λ_1(P⁻¹H)`` (adaptive optimizers) and the ratio to the stability threshold
    every ``every_n_steps`` optimizer steps.

    ``L`` is the mean loss on one fixed evaluation batch ``data``, at the parameters the
    optimizer trains. After optimizer steps ``s = n, 2n, ...`` (``trainer.global_step``; with
    gradient accumulation once per step) the callback computes, on the global-zero process:

    * ``{prefix}sharpness`` ``= λ_1(H)`` and ``{prefix}eig_i`` (``i = 1..k``), the largest
      algebraic Hessian eigenvalues (Cohen et al., "Gradient descent on neural networks
      typically occurs at the edge of stability", ICLR 2021), by block Davidson warm-started
      from the previous evaluation (:class:`valleys.train.SharpnessTracker`), to relative
      residual ``tol``; ``{prefix}converged`` (1/0);
    * for Adam, AdamW, RMSprop and Adagrad, ``{prefix}precond_sharpness`` and
      ``{prefix}precond_eig_i``: ``λ_i(P⁻¹H)`` with ``P`` the optimizer's diagonal
      preconditioner read from its state at that step
      (:func:`valleys.train.optimizer_preconditioner`; Cohen et al., "Adaptive gradient methods
      at the edge of stability", arXiv 2207.14484); NaN before the state exists;
    * ``{prefix}threshold`` and ``{prefix}threshold_ratio``: the quadratic stability threshold
      of the optimizer's next step (``2/η`` for SGD, ``(2+2β)/η`` with momentum,
      ``(2+2β₁)/(η(1−β₁))`` on ``P⁻¹H`` for Adam; see
      :func:`valleys.integrations._common.stability_threshold`) and the sharpness (the
      preconditioned one for adaptive optimizers) divided by it. 1 is the edge of stability.
      The ratio is meaningful only if ``loss`` is the loss the optimizer minimizes: valleys'
      ``"mse"`` is ``½‖f(x) − y‖²`` per sample, ``d/2`` times ``F.mse_loss`` for ``d`` outputs.
    * the overhead: ``{prefix}hvps`` (Hessian-vector products of this evaluation),
      ``{prefix}hvps_total``, ``{prefix}overhead_s`` (seconds spent in the callback so far) and
      ``{prefix}overhead_fraction`` (their share of the wall-clock time since training started).

    The metrics go to every logger of the trainer (``logger.log_metrics(metrics,
    step=global_step)``) and, unprefixed with the step, to :attr:`history`.

    **What the callback changes: nothing the training sees.** It evaluates the loss
    functionally at a copy of θ (:func:`torch.func.functional_call`), never writing the
    parameters. It puts the model in eval mode for the evaluation only (dropout off, BatchNorm
    on its running statistics, so the curvature is deterministic) after saving every module's
    ``training`` flag, and sets the flags back exactly afterwards. It restores the global RNG
    states (torch CPU, CUDA if initialized, Python ``random``, NumPy) and every parameter's
    ``.grad`` (same tensor, same values; this keeps one copy of the gradients during the
    evaluation), so training with and without the callback is bit-identical.

    **Overhead.** Each evaluation costs a few to a few tens of Hessian-vector products per
    tracked operator (``H``, and ``P^{-1/2}HP^{-1/2}`` for adaptive optimizers), fewer with warm
    starts, each about two to three times a forward-and-backward pass on ``data``; the first
    evaluation also builds the objective. Measured on CPU (``tol=1e-3``, ``k=1``, every 5 of 20
    steps): 8–12 products per evaluation for SGD on a 67-parameter MLP, 14–22 for Adam (both
    operators); 23–33 for AdamW on a 28k-parameter GPT-2. The cost of a run is in
    :attr:`overhead_seconds`, :attr:`overhead_fraction` and :attr:`hvps`.

    Args:
        data: one evaluation batch: ``(X, Y)`` tensors with a loss name, any structure with a
            function.
        loss: ``"mse"`` or ``"ce"`` (valleys' per-sample losses of ``module(X)`` against
            ``Y``, :mod:`valleys.losses`), or a function ``fn(model, batch)`` returning the
            per-sample losses as a 1-D tensor (:meth:`valleys.Objective.from_function`); it is
            called with the LightningModule.
        every_n_steps: evaluate after every ``every_n_steps``-th optimizer step.
        k: number of top eigenvalues (must be below the number of trained parameters).
        tol: relative residual tolerance ``‖Hv − λv‖ <= tol·|λ|`` of the eigensolvers.
        seed: seed of the eigensolvers' private generators (the global RNGs are untouched).
        prefix: prefix of the logged keys.
        max_matvecs: Hessian-vector product budget per eigensolve (default: the solver's).

    Raises:
        ArgumentValueError / ArgumentTypeError: ``every_n_steps`` or ``k`` not a positive
            integer, an empty batch, an unknown loss name, a batch that is not ``(X, Y)`` with
            a loss name.
    """

    def __init__(self, data: Any, loss: str | Callable[[nn.Module, Any], torch.Tensor], *,
                 every_n_steps: int, k: int = 1, tol: float = 1e-3, seed: int = 0,
                 prefix: str = "valleys/", max_matvecs: int | None = None) -> None:
        super().__init__()
        self.monitor = SharpnessMonitor(
            data, loss, every_n_steps=every_n_steps, k=k, tol=tol, seed=seed, prefix=prefix,
            max_matvecs=max_matvecs, loss_from_name=_objective, names=_NAMES, pair=True)


    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.monitor.start()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        step = int(trainer.global_step)
        if not trainer.is_global_zero or not self.monitor.due(step):
            return
        optimizers = trainer.optimizers
        optimizer = optimizers[0] if len(optimizers) == 1 else None
        if optimizer is None:
            self.monitor._warn_once(
                f"SharpnessCallback: the trainer has {len(optimizers)} optimizers; the sharpness "
                "is of all trainable parameters and no threshold or preconditioner is used")
        metrics = self.monitor.evaluate(pl_module, optimizer, step)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
