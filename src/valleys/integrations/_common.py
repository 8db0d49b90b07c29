r"""What the framework callbacks share: the fixed batch, the warm-started trackers, the
save/restore of everything training depends on, the stability threshold and the overhead.

:class:`SharpnessMonitor` does one evaluation at a time (:meth:`SharpnessMonitor.evaluate`);
the Lightning and Hugging Face callbacks only decide when to call it and where to log.

* **Curvature.** The top-``k`` eigenvalues of the Hessian ``H = ∇²L(θ)`` of the loss ``L`` on
  the fixed evaluation batch, by :class:`valleys.train.SharpnessTracker` (block Davidson
  warm-started from the previous evaluation's Ritz vectors). For the adaptive optimizers of
  :func:`valleys.train.optimizer_preconditioner` (Adam, AdamW, RMSprop, Adagrad) also
  ``λ_i(P⁻¹H)``, ``P`` read from the optimizer's state at that step, through the symmetric form
  ``P^{-1/2} H P^{-1/2}`` (:class:`valleys.train.PreconditionedOperator`), with its own warm
  start (Cohen et al., "Adaptive gradient methods at the edge of stability", arXiv 2207.14484).
* **Threshold.** :func:`valleys.stability.threshold` for the optimizer's current
  hyperparameters (see :func:`stability_threshold`); the ratio is the sharpness (``λ_1(P⁻¹H)``
  for adaptive optimizers) over it: 1 is the edge of stability (Cohen et al., ICLR 2021).
* **Nothing changes in training.** The evaluation is functional (the parameters are never
  written), runs in eval mode only between saving every module's ``training`` flag and
  restoring it, and restores the RNG states (torch CPU, CUDA when initialized, Python
  ``random``, NumPy's global generator) and every parameter's ``.grad`` (the same tensor object
  with its values) exactly, so a run with the callback follows the same trajectory bit for bit.
* **Overhead.** Wall-clock seconds spent inside the evaluations (all of the above), their share
  of the training time so far, and the Hessian-vector products used.
"""

from __future__ import annotations

import math
import random
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils._pytree import tree_leaves, tree_map

from valleys._checks import is_integral, relative_tolerance, seed_value
from valleys.errors import ArgumentTypeError, ArgumentValueError
from valleys.objective import Objective
from valleys.operators import hessian
from valleys.operators._base import LinearOperator
from valleys.stability.thresholds import threshold
from valleys.train.callbacks import (
    PreconditionedOperator,
    SharpnessTracker,
    optimizer_preconditioner,
)

__all__ = ["MonitorViews", "SharpnessMonitor", "stability_threshold", "unwrap_optimizer"]

LossFunction = Callable[[nn.Module, Any], torch.Tensor]

_ADAPTIVE = (torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop, torch.optim.Adagrad)
_KNOWN = (torch.optim.SGD, *_ADAPTIVE)
# The hyperparameters each threshold depends on: groups must agree on them.
_HYPERPARAMETERS = (
    (torch.optim.SGD, ("lr", "momentum", "dampening", "nesterov")),
    (torch.optim.Adam | torch.optim.AdamW, ("lr", "betas")),
    (torch.optim.RMSprop, ("lr", "momentum")),
    (torch.optim.Adagrad, ("lr", "lr_decay")),
)


def positive_int(value: object, name: str) -> int:
    """``value`` as an int if it is a positive integer (not a bool)."""
    if isinstance(value, bool) or not is_integral(value):
        raise ArgumentTypeError(f"{name} must be a positive integer, got {value!r}")
    if value < 1:
        raise ArgumentValueError(f"{name} must be a positive integer (>= 1), got {value!r}")
    return int(value)


def unwrap_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside framework wrappers (accelerate's ``AcceleratedOptimizer``,
    Lightning's ``LightningOptimizer``), which proxy its state but are not its class."""
    seen = 0
    while (not isinstance(optimizer, _KNOWN) and seen < 8
           and isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer)):
        optimizer, seen = optimizer.optimizer, seen + 1
    return optimizer


def _groups(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> list[dict]:
    """The parameter groups that hold any of ``params``."""
    ids = {id(p) for p in params}
    return [g for g in optimizer.param_groups if any(id(p) in ids for p in g["params"])]


def stability_threshold(
    optimizer: Any, params: Sequence[torch.Tensor]
) -> tuple[str, float] | tuple[str, None]:
    r"""``(name, value)`` of the quadratic stability threshold of ``optimizer``'s next step.

    Read from the current hyperparameters of the groups holding ``params`` (after any learning
    rate schedule), with :func:`valleys.stability.threshold`:

    * ``SGD``: ``"gd"`` ``2/η`` without momentum; ``"heavy_ball"`` ``(2+2β)/η'`` with
      ``η' = η(1 − dampening)`` (torch's ``b ← βb + (1−d)g`` is heavy ball with step ``η(1−d)``);
      ``"nesterov"`` ``(2+2β)/(η(1+2β))``. A bound on the sharpness ``λ_1(H)``.
    * ``Adam``/``AdamW``: ``"adam"`` ``(2+2β₁)/(η(1−β₁))``, a bound on ``λ_1(P⁻¹H)``.
    * ``RMSprop``: ``θ ← θ − ηP⁻¹g`` is gradient descent on ``P⁻¹H`` (``2/η``); with momentum
      ``μ`` (``b ← μb + P⁻¹g``) heavy ball (``(2+2μ)/η``).
    * ``Adagrad``: gradient descent on ``P⁻¹H`` with torch's decayed step
      ``η/(1 + t·lr_decay)`` after ``t`` steps.

    A learning rate of 0 gives ``+inf`` (a ratio of 0). Weight decay is not part of the loss:
    coupled weight decay adds ``wd`` to every eigenvalue of the curvature the optimizer sees,
    which the ratio leaves out. The value is ``None`` (with the reason as name) for other
    optimizers and for groups with different hyperparameters.
    """
    optimizer = unwrap_optimizer(optimizer)
    if not isinstance(optimizer, _KNOWN):
        return f"no threshold known for {type(optimizer).__name__}", None
    groups = _groups(optimizer, params)
    keys = next(keys for cls, keys in _HYPERPARAMETERS if isinstance(optimizer, cls))
    settings = {tuple(_plain(g.get(key)) for key in keys) for g in groups}
    if len(settings) != 1:
        return "parameter groups with different hyperparameters", None
    g = groups[0]
    lr = float(g["lr"])
    if lr == 0:
        # A schedule that ends at 0 (transformers' linear decay): no step, every curvature
        # is stable.
        return "zero learning rate", math.inf
    if isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
        return "adam", threshold("adam", lr, beta1=float(g["betas"][0]))
    if isinstance(optimizer, torch.optim.SGD):
        beta = float(g["momentum"])
        if beta == 0:
            return "gd", threshold("gd", lr)
        if g["nesterov"]:
            return "nesterov", threshold("nesterov", lr, beta=beta)
        return "heavy_ball", threshold("heavy_ball", lr * (1 - float(g["dampening"])), beta=beta)
    if isinstance(optimizer, torch.optim.RMSprop):
        mu = float(g["momentum"])
        return ("heavy_ball", threshold("heavy_ball", lr, beta=mu)) if mu else \
            ("gd", threshold("gd", lr))
    steps = [float(optimizer.state[p]["step"]) for p in params
             if p in optimizer.state and "step" in optimizer.state[p]]
    t = steps[0] if steps else 0.0
    return "gd", threshold("gd", lr / (1 + t * float(g["lr_decay"])))


def _plain(value: Any) -> Any:
    """A hyperparameter as a hashable plain value (tensor learning rates are allowed)."""
    if isinstance(value, torch.Tensor):
        return float(value)
    if isinstance(value, list | tuple):
        return tuple(_plain(v) for v in value)
    return value


class _OptimizerPreconditioned(SharpnessTracker):
    """A :class:`SharpnessTracker` of ``λ_i(P⁻¹H)`` whose ``P`` is read from the optimizer of a
    model (one state entry per parameter tensor), concatenated in the objective's θ layout."""

    def __init__(self, objective: Objective, params: Sequence[torch.Tensor],
                 optimizer: Callable[[], Any], **kwargs: Any) -> None:
        super().__init__(objective, preconditioned=True, **kwargs)
        self._params = params
        self._optimizer = optimizer

    def diagonal(self) -> torch.Tensor | None:
        """``P`` as a flat vector in θ's layout; ``None`` while any parameter has no state."""
        optimizer = unwrap_optimizer(self._optimizer())
        pieces = []
        for p in self._params:
            diag = optimizer_preconditioner(optimizer, p)
            if diag is None:
                return None
            pieces.append(diag.detach().reshape(-1))
        return torch.cat(pieces).to(self.objective.dtype)

    def operator(self, theta: torch.Tensor) -> LinearOperator | None:
        P = self.diagonal()
        return None if P is None else PreconditionedOperator(hessian(self.objective, theta), P)


def check_batch(data: Any, *, pair: bool) -> None:
    """Refuse an evaluation batch without samples (``pair``: it must be ``(X, Y)`` tensors)."""
    if pair:
        if (not isinstance(data, tuple | list) or len(data) != 2
                or not all(isinstance(t, torch.Tensor) for t in data)):
            raise ArgumentTypeError(
                "with a loss name, data must be one batch (X, Y) of two tensors; for other "
                "batches pass loss as a function fn(model, batch) -> per-sample losses")
    leaves = [t for t in tree_leaves(data) if isinstance(t, torch.Tensor)]
    if not leaves:
        raise ArgumentValueError(
            f"data must be one evaluation batch holding tensors, got {type(data).__name__} "
            "without any")
    if any(t.ndim == 0 or t.shape[0] == 0 for t in leaves):
        raise ArgumentValueError(
            "data is an empty batch (a tensor with no samples along dimension 0); the "
            "sharpness needs at least one sample")


class SharpnessMonitor:
    r"""The framework-independent core of the ``SharpnessCallback`` classes.

    Args:
        data: one evaluation batch, used at every evaluation (moved to the model's device).
        loss: a function ``fn(model, batch) -> per-sample losses`` (1-D), evaluated through
            :meth:`valleys.Objective.from_function`, or a loss name that ``loss_from_name``
            turns into an objective.
        every_n_steps: evaluate after optimizer steps divisible by it.
        k: number of top eigenvalues.
        tol: relative residual tolerance of the eigensolvers.
        seed: seeds the trackers' private generators (the global RNGs are never drawn from).
        prefix: prefix of the logged keys.
        max_matvecs: Hessian-vector product budget per eigensolve.
        loss_from_name: ``(model, name, batch, params) -> Objective``, or ``None`` when no
            names are accepted; ``names`` lists them for the error message.
    """

    def __init__(self, data: Any, loss: str | LossFunction, *, every_n_steps: int, k: int,
                 tol: float, seed: int, prefix: str, max_matvecs: int | None,
                 loss_from_name: Callable[..., Objective] | None, names: tuple[str, ...],
                 pair: bool) -> None:
        self.every_n_steps = positive_int(every_n_steps, "every_n_steps")
        self.k = positive_int(k, "k")
        self.tol = relative_tolerance(tol, "tol")
        self.seed = seed_value(seed)
        if not isinstance(prefix, str):
            raise ArgumentTypeError(f"prefix must be a string, got {prefix!r}")
        self.prefix = prefix
        if max_matvecs is not None:
            max_matvecs = positive_int(max_matvecs, "max_matvecs")
        self.max_matvecs = max_matvecs
        if isinstance(loss, str):
            if loss not in names:
                raise ArgumentValueError(
                    f"unknown loss {loss!r}; use one of {', '.join(map(repr, names))} or a "
                    "function fn(model, batch) -> per-sample losses (a 1-D tensor)")
            check_batch(data, pair=pair)
        elif callable(loss):
            check_batch(data, pair=False)
        else:
            raise ArgumentTypeError(
                f"loss must be a loss name ({', '.join(map(repr, names))}) or a function "
                f"fn(model, batch) -> per-sample losses, got {type(loss).__name__}")
        self.data, self.loss = data, loss
        self._loss_from_name = loss_from_name
        self.history: list[dict[str, Any]] = []
        self.overhead_seconds = 0.0
        self.hvps = 0
        self._start: float | None = None
        self._objective: Objective | None = None
        self._key: tuple | None = None
        self._tracker: SharpnessTracker | None = None
        self._precond: _OptimizerPreconditioned | None = None
        self._warned: set[str] = set()

    # -- bookkeeping ----------------------------------------------------------------------
    def start(self) -> None:
        """Mark the start of training (the denominator of :attr:`overhead_fraction`)."""
        self._start = time.perf_counter()

    @property
    def training_seconds(self) -> float:
        """Wall-clock seconds since training started (callback time included)."""
        return 0.0 if self._start is None else time.perf_counter() - self._start

    @property
    def overhead_fraction(self) -> float:
        """Share of the training wall-clock time spent in the evaluations so far."""
        total = self.training_seconds
        return self.overhead_seconds / total if total > 0 else math.nan

    def due(self, step: int) -> bool:
        """Whether optimizer step ``step`` (>= 1) is evaluated and has not been yet."""
        done = self.history[-1]["step"] if self.history else 0
        return step >= 1 and step % self.every_n_steps == 0 and step != done

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    # -- the evaluation ---------------------------------------------------------------------
    def _build(self, model: nn.Module, optimizer: Any) -> None:
        """(Re)build the objective and the trackers for the model's current parameters."""
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if optimizer is not None:
            # θ is what the optimizer trains: its threshold and its preconditioner refer to it.
            held = {id(p) for g in unwrap_optimizer(optimizer).param_groups for p in g["params"]}
            named = [(n, p) for n, p in named if id(p) in held]
        if not named:
            raise ArgumentValueError("the optimizer trains none of the model's parameters")
        names = {n for n, _ in named}
        device = named[0][1].device
        batch = tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, self.data)
        select = names.__contains__
        if isinstance(self.loss, str):
            assert self._loss_from_name is not None
            objective = self._loss_from_name(model, self.loss, batch, select)
        else:
            objective = Objective.from_function(model, self.loss, [batch], params=select)
        self._objective = objective
        params = dict(named)
        self._params = [params[n] for n in objective.names]
        common: dict[str, Any] = {"k": self.k, "every": 1, "tol": self.tol, "seed": self.seed,
                                  "max_matvecs": self.max_matvecs}
        self._tracker = SharpnessTracker(objective, **common)
        self._precond = None
        if isinstance(unwrap_optimizer(optimizer), _ADAPTIVE):
            self._precond = _OptimizerPreconditioned(
                objective, self._params, lambda: self._optimizer, prefix="", **common)
        self._key = self._layout_key(model, optimizer)

    @staticmethod
    def _layout_key(model: nn.Module, optimizer: Any) -> tuple:
        """Identity of everything the objective holds by reference: parameters, buffers,
        optimizer (a change means rebuilding, e.g. after the model moved device)."""
        return (tuple(id(p) for p in model.parameters()), tuple(id(b) for b in model.buffers()),
                id(unwrap_optimizer(optimizer)) if optimizer is not None else None)

    def evaluate(self, model: nn.Module, optimizer: Any, step: int) -> dict[str, float]:
        """Evaluate at the model's current θ after optimizer step ``step``; returns the metrics
        (prefixed keys), also appended (unprefixed, with ``step``) to :attr:`history`."""
        begin = time.perf_counter()
        if self._start is None:
            self._start = begin
        if torch.is_inference_mode_enabled():
            raise RuntimeError("the sharpness needs autograd; it cannot run in inference mode")
        modes = [(m, m.training) for m in model.modules()]
        grads = [(p, p.grad, None if p.grad is None else p.grad.detach().clone())
                 for p in model.parameters()]
        rng = _rng_state()
        try:
            # Eval mode only for this evaluation: dropout off and BatchNorm on its running
            # statistics, so the curvature is deterministic; the flags are restored below.
            model.eval()
            with torch.enable_grad():
                record = self._measure(model, optimizer, step)
        finally:
            for module, training in modes:
                module.training = training
            for p, grad, saved in grads:
                p.grad = grad
                if grad is not None and saved is not None:
                    with torch.no_grad():
                        grad.copy_(saved)
            _set_rng_state(rng)
        self.overhead_seconds += time.perf_counter() - begin
        record["overhead_s"] = self.overhead_seconds
        record["overhead_fraction"] = self.overhead_fraction
        self.history.append({"step": step, **record})
        return {f"{self.prefix}{key}": value for key, value in record.items()}

    def _measure(self, model: nn.Module, optimizer: Any, step: int) -> dict[str, float]:
        self._optimizer = optimizer
        if self._objective is None or self._key != self._layout_key(model, optimizer):
            self._build(model, optimizer)
        assert self._objective is not None and self._tracker is not None
        theta = self._objective.parameters_vector()
        out = self._tracker(step, theta) or {}
        record: dict[str, float] = {"sharpness": float(out["sharpness"])}
        record.update({f"eig_{i}": float(out[f"eig_{i}"]) for i in range(1, self.k + 1)})
        hvps = int(out["matvecs"])
        record["converged"] = float(bool(out.get("converged", False)))
        on = record["sharpness"]
        if self._precond is not None:
            pre = self._precond(step, theta) or {}
            record["precond_sharpness"] = float(pre["sharpness"])
            record.update({f"precond_eig_{i}": float(pre[f"eig_{i}"])
                           for i in range(1, self.k + 1)})
            record["precond_converged"] = float(bool(pre.get("converged", False)))
            hvps += int(pre["matvecs"])
            on = record["precond_sharpness"]
            if math.isnan(on) and any(unwrap_optimizer(optimizer).state.get(p)
                                      for p in self._params):
                self._warn_once(
                    "SharpnessCallback: some trained parameters have no optimizer state (never "
                    "received a gradient?), so P is unknown there and the preconditioned "
                    "sharpness is NaN")
        if optimizer is not None:
            name, value = stability_threshold(optimizer, self._params)
            if value is None:
                self._warn_once(f"SharpnessCallback: {name}; the threshold ratio is not logged")
            else:
                record["threshold"] = value
                record["threshold_ratio"] = on / value
        self.hvps += hvps
        record["hvps"] = float(hvps)
        record["hvps_total"] = float(self.hvps)
        return record


class MonitorViews:
    """What every framework callback exposes, read from its :class:`SharpnessMonitor`."""

    monitor: SharpnessMonitor

    @property
    def history(self) -> list[dict[str, Any]]:
        """One dict per evaluation: ``step`` and the metrics without prefix."""
        return self.monitor.history

    @property
    def overhead_seconds(self) -> float:
        """Wall-clock seconds spent in the callback's evaluations."""
        return self.monitor.overhead_seconds

    @property
    def overhead_fraction(self) -> float:
        """:attr:`overhead_seconds` over the wall-clock time since training started."""
        return self.monitor.overhead_fraction

    @property
    def hvps(self) -> int:
        """Hessian-vector products used by all evaluations."""
        return self.monitor.hvps


def _rng_state() -> tuple:
    """Every global RNG state a training loop may draw from."""
    cuda = (torch.cuda.get_rng_state_all()
            if torch.cuda.is_available() and torch.cuda.is_initialized() else None)
    # NumPy's legacy global generator is the one training code draws from (np.random.rand).
    return torch.get_rng_state(), cuda, random.getstate(), np.random.get_state()  # noqa: NPY002


def _set_rng_state(state: tuple) -> None:
    cpu, cuda, python, numpy_state = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
    random.setstate(python)
    np.random.set_state(numpy_state)  # noqa: NPY002
