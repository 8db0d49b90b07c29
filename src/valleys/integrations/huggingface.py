r"""A Hugging Face ``transformers.Trainer`` callback that logs the sharpness (``valleys[hf]``).

Example::

    from valleys.integrations.huggingface import SharpnessCallback
    cb = SharpnessCallback(eval_batch, "causal_lm", every_n_steps=100, k=2)
    trainer = transformers.Trainer(model, args, train_dataset=..., callbacks=[cb])
    cb.set_trainer(trainer)      # optional: log through trainer.log, i.e. to every reporter
    trainer.train()
    cb.history, cb.overhead_fraction

See :class:`SharpnessCallback` and :mod:`valleys.integrations._common`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from valleys.errors import ArgumentTypeError, ArgumentValueError
from valleys.integrations._common import MonitorViews, SharpnessMonitor
from valleys.objective import Objective

__all__ = ["SharpnessCallback", "causal_lm_losses", "classification_losses", "token_losses"]

_IGNORE = -100  # transformers' ignore index for labels (padding, unmasked tokens)


def _logits(model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    logits = model(**inputs).logits
    # transformers computes its losses from float32 logits; half precision is upcast likewise,
    # float64 is kept (transformers would round it to float32).
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def causal_lm_losses(model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    """Per-token cross-entropy of next-token prediction: token ``t+1`` from positions ``<= t``,
    over the labels that are not ``-100`` (``labels``, or else ``input_ids`` where
    ``attention_mask`` is 1). Their mean is the loss of ``*ForCausalLM`` models."""
    labels = batch.get("labels")
    if labels is None:
        labels = batch["input_ids"]
        if "attention_mask" in batch:
            labels = labels.masked_fill(batch["attention_mask"] == 0, _IGNORE)
    logits = _logits(model, batch)
    targets = labels[:, 1:].reshape(-1)
    losses = nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), targets, reduction="none",
        ignore_index=_IGNORE)
    return losses[targets != _IGNORE]


def token_losses(model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    """Per-token cross-entropy without shift over the labels that are not ``-100`` (masked
    language models, token classification); their mean is those models' loss."""
    logits = _logits(model, batch)
    targets = batch["labels"].reshape(-1)
    losses = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets,
                                         reduction="none", ignore_index=_IGNORE)
    return losses[targets != _IGNORE]


def classification_losses(model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    """Per-sequence cross-entropy of ``*ForSequenceClassification`` logits ``(B, C)``, ``C >=
    2``, against integer ``labels`` ``(B,)``; their mean is those models' loss."""
    logits = _logits(model, batch)
    if logits.ndim != 2 or logits.shape[-1] < 2:
        raise ArgumentValueError(
            f"loss 'ce' needs classification logits (batch, classes >= 2), got "
            f"{tuple(logits.shape)}; for regression pass a function fn(model, batch)")
    return nn.functional.cross_entropy(logits, batch["labels"], reduction="none")


_LOSSES: dict[str, tuple[Callable[[nn.Module, Any], torch.Tensor], tuple[str, ...]]] = {
    "causal_lm": (causal_lm_losses, ("input_ids",)),
    "masked_lm": (token_losses, ("labels",)),
    "ce": (classification_losses, ("labels",)),
}


def _objective(model: nn.Module, name: str, batch: Any, select: Callable[[str], bool]
               ) -> Objective:
    return Objective.from_function(model, _LOSSES[name][0], [batch], params=select)


class SharpnessCallback(MonitorViews, TrainerCallback):
    r"""Log the sharpness ``λ_1(∇²L)``, the top ``k`` Hessian eigenvalues, the preconditioned
    sharpness ``λ_1(P⁻¹H)`` (AdamW, the Trainer's default, and the other adaptive optimizers)
    and the ratio to the stability threshold every ``every_n_steps`` optimizer steps.

    ``L`` is the mean loss on one fixed evaluation batch ``data``, at the parameters the
    optimizer trains. After optimizer steps ``s = n, 2n, ...`` (``state.global_step``, in
    ``on_step_end``, after the step and the learning-rate schedule), on the world-zero process:

    * ``{prefix}sharpness`` ``= λ_1(H)`` and ``{prefix}eig_i`` (``i = 1..k``), the largest
      algebraic Hessian eigenvalues (Cohen et al., "Gradient descent on neural networks
      typically occurs at the edge of stability", ICLR 2021), by block Davidson warm-started
      from the previous evaluation (:class:`valleys.train.SharpnessTracker`), to relative
      residual ``tol``; ``{prefix}converged`` (1/0);
    * for Adam, AdamW, RMSprop and Adagrad (unwrapped from accelerate's optimizer),
      ``{prefix}precond_sharpness`` and ``{prefix}precond_eig_i``: ``λ_i(P⁻¹H)`` with ``P`` the
      diagonal preconditioner in the optimizer's state at that step
      (:func:`valleys.train.optimizer_preconditioner`; Cohen et al., "Adaptive gradient methods
      at the edge of stability", arXiv 2207.14484);
    * ``{prefix}threshold`` and ``{prefix}threshold_ratio``: the stability threshold of the
      next step (``(2+2β₁)/(η(1−β₁))`` on ``P⁻¹H`` for Adam, ``2/η`` or ``(2+2β)/η`` for SGD;
      :func:`valleys.integrations._common.stability_threshold`) and the sharpness (the
      preconditioned one for adaptive optimizers) divided by it; 1 is the edge of stability.
      The loss names reproduce the models' own losses, so the ratio refers to what is trained.
    * the overhead: ``{prefix}hvps``, ``{prefix}hvps_total``, ``{prefix}overhead_s`` (seconds
      in the callback so far) and ``{prefix}overhead_fraction`` (their share of the wall-clock
      time since ``on_train_begin``).

    **Where the metrics go.** A ``TrainerCallback`` is not given the Trainer, so by default the
    metrics are appended, with ``step``, to ``state.log_history`` (the Trainer's own record,
    saved in ``trainer_state.json``) but do not reach the reporting integrations. After
    :meth:`set_trainer` they go through ``trainer.log`` instead, which records them in
    ``state.log_history`` and sends them to every reporter (TensorBoard, W&B, ...). They are
    also kept, unprefixed, in :attr:`history`.

    **What the callback changes: nothing the training sees.** It evaluates the loss
    functionally at a copy of θ (:func:`torch.func.functional_call`), never writing the
    parameters. It puts the model in eval mode for the evaluation only (dropout off, so the
    curvature is deterministic) after saving every module's ``training`` flag, and sets the
    flags back exactly afterwards. It restores the global RNG states (torch CPU, CUDA if
    initialized, Python ``random``, NumPy) and every parameter's ``.grad`` exactly, so training
    with and without the callback is bit-identical. Fused attention kernels (SDPA) have no
    double backward; valleys switches to the math kernel inside its own evaluations only.

    **Overhead.** Each evaluation costs a few to a few tens of Hessian-vector products per
    tracked operator (``H``, and ``P^{-1/2}HP^{-1/2}`` for adaptive optimizers), fewer with warm
    starts, each about two to three times a forward-and-backward pass on ``data``; the first
    evaluation also builds the objective. Measured on CPU (``tol=1e-3``, ``k=1``): 23–33
    products per evaluation for AdamW on a 28k-parameter GPT-2 (both operators). The cost of a
    run is in :attr:`overhead_seconds`, :attr:`overhead_fraction` and :attr:`hvps`.

    Args:
        data: one evaluation batch, a mapping of model inputs (``input_ids``,
            ``attention_mask``, ``labels``, ...) with a loss name, anything with a function.
        loss: ``"causal_lm"`` (:func:`causal_lm_losses`), ``"masked_lm"``
            (:func:`token_losses`), ``"ce"`` (:func:`classification_losses`), or a function
            ``fn(model, batch)`` returning the per-sample (per-token) losses as a 1-D tensor
            (:meth:`valleys.Objective.from_function`).
        every_n_steps: evaluate after every ``every_n_steps``-th optimizer step.
        k: number of top eigenvalues.
        tol: relative residual tolerance ``‖Hv − λv‖ <= tol·|λ|`` of the eigensolvers.
        seed: seed of the eigensolvers' private generators (the global RNGs are untouched).
        prefix: prefix of the logged keys.
        max_matvecs: Hessian-vector product budget per eigensolve (default: the solver's).

    Raises:
        ArgumentValueError / ArgumentTypeError: ``every_n_steps`` or ``k`` not a positive
            integer, an empty batch, an unknown loss name, a batch that is not a mapping with
            the keys a loss name needs.
    """

    def __init__(self, data: Any, loss: str | Callable[[nn.Module, Any], torch.Tensor], *,
                 every_n_steps: int, k: int = 1, tol: float = 1e-3, seed: int = 0,
                 prefix: str = "valleys/", max_matvecs: int | None = None) -> None:
        if isinstance(loss, str) and loss in _LOSSES:
            if not isinstance(data, Mapping):
                raise ArgumentTypeError(
                    f"with loss {loss!r}, data must be one batch as a mapping of model inputs "
                    f"(input_ids, attention_mask, labels, ...), got {type(data).__name__}")
            missing = [key for key in _LOSSES[loss][1] if key not in data]
            if missing:
                raise ArgumentValueError(f"loss {loss!r} needs the batch keys {missing}")
        self.monitor = SharpnessMonitor(
            data, loss, every_n_steps=every_n_steps, k=k, tol=tol, seed=seed, prefix=prefix,
            max_matvecs=max_matvecs, loss_from_name=_objective, names=tuple(_LOSSES),
            pair=False)
        self._trainer: Any = None

    def set_trainer(self, trainer: Any) -> None:
        """Log through ``trainer.log`` (every reporter) instead of ``state.log_history`` only."""
        if not callable(getattr(trainer, "log", None)):
            raise ArgumentTypeError(f"set_trainer needs a transformers.Trainer, got {trainer!r}")
        self._trainer = trainer


    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.monitor.start()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        step = int(state.global_step)
        if not state.is_world_process_zero or not self.monitor.due(step):
            return
        metrics = self.monitor.evaluate(kwargs["model"], kwargs.get("optimizer"), step)
        if self._trainer is not None:
            self._trainer.log(dict(metrics))
        else:
            state.log_history.append({**metrics, "step": step})
