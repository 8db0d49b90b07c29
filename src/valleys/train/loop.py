"""The training loop: optimizers from torch.optim on an Objective's flat parameters.

Training never touches the user's model: it moves a flat parameter vector ``θ`` and evaluates
the model functionally, so the same :class:`~valleys.Objective` serves curvature analysis at any
iterate. Divergence is data: a run whose loss turns non-finite or grows beyond
``divergence_factor`` times its initial value stops with ``status="diverged"``.

Callbacks are functions ``cb(step, θ) -> dict``. A callback that also has a ``setup(context)``
method receives a :class:`TrainContext` (the objective, the torch optimizer, its parameter and the
config) before the first step, which is how :mod:`valleys.train.callbacks` reads Adam's
second-moment state for the preconditioned sharpness.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from valleys._checks import finite_real, integer, is_integral, is_real, positive_real, seed_value
from valleys.errors import ArgumentTypeError, ArgumentValueError
from valleys.objective import Objective
from valleys.stability.thresholds import OPTIMIZER_ALIASES

__all__ = ["OPTIMIZERS", "SAMPLING", "TrainConfig", "TrainContext", "TrainResult", "train"]

# torch.optim.SGD with momentum is the heavy-ball method; its name here ("momentum") is defined
# once, in valleys.stability.thresholds, whose threshold() accepts it for "heavy_ball".
_HEAVY_BALL = next(alias for alias, name in OPTIMIZER_ALIASES.items() if name == "heavy_ball")
OPTIMIZERS = ("sgd", _HEAVY_BALL, "nesterov", "adam", "rmsprop")
SAMPLING = ("subset", "replacement", "shuffle")

Callback = Callable[[int, torch.Tensor], dict[str, Any] | None]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a run (recorded with its result).

    ``batch_size=None`` is full-batch training (``"sgd"`` is then gradient descent). Mini-batch
    ``sampling``:

    * ``"subset"``: every step draws ``B`` distinct samples uniformly (sampling without
      replacement within a batch, independent across steps): the model of Wu, Ma & E (2018),
      whose noise factor is ``(n−B)/(B(n−1))``.
    * ``"replacement"``: ``B`` samples drawn with replacement (noise factor ``1/B``).
    * ``"shuffle"``: random reshuffling, consecutive batches of a permutation per epoch.
    """

    optimizer: str = "sgd"
    lr: float = 0.1
    steps: int = 1000
    batch_size: int | None = None
    sampling: str = "subset"
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    seed: int = 0
    loss_goal: float | None = None
    record_every: int = 10
    accuracy_goal: float | None = None
    divergence_factor: float = 1e6


@dataclass(frozen=True)
class TrainContext:
    """What a callback's ``setup(context)`` receives before the first step.

    Attributes:
        objective: the objective being trained.
        optimizer: the torch.optim optimizer (its ``state[param]`` holds e.g. Adam's moments).
        param: the single flat ``nn.Parameter`` the optimizer moves (``θ``).
        config: the validated :class:`TrainConfig`.
    """

    objective: Objective
    optimizer: torch.optim.Optimizer
    param: torch.nn.Parameter
    config: TrainConfig


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train`: final parameters, status and one record per logged step."""

    theta: torch.Tensor
    status: str  # "converged" (loss or accuracy goal reached), "max_steps" or "diverged"
    steps: int
    records: list[dict[str, Any]] = field(default_factory=list)
    config: TrainConfig = field(default_factory=TrainConfig)
    wall_time: float = 0.0

    @property
    def final_loss(self) -> float:
        return self.records[-1]["loss"] if self.records else math.nan

    def to_dataframe(self) -> Any:  # a pandas.DataFrame (pandas ships no types)
        """The records as a tidy pandas DataFrame: one row per recorded step."""
        import pandas as pd

        return pd.DataFrame(self.records)

    def to_tensorboard(self, log_dir: str, *, tag_prefix: str = "") -> str:
        """Write every numeric record column as a TensorBoard scalar (needs ``tensorboard``)."""
        from valleys.train.tensorboard import write_tensorboard

        return write_tensorboard(self.records, log_dir, tag_prefix=tag_prefix)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "steps": self.steps,
            "final_loss": self.final_loss,
            "config": asdict(self.config),
            "wall_time": self.wall_time,
            "records": self.records,
        }


def train(
    objective: Objective,
    config: TrainConfig | None = None,
    *,
    theta: torch.Tensor | None = None,
    callbacks: Sequence[Callback] = (),
    progress: Callable[[int], None] | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train ``θ`` on an objective with a torch.optim optimizer and record the trajectory.

    Args:
        objective: the empirical risk (its data must be a tensor pair for mini-batches).
        config: a :class:`TrainConfig`; keyword ``overrides`` replace its fields, e.g.
            ``train(obj, lr=0.05, steps=500, batch_size=32)``.
        theta: starting point (default: the model's current parameters; the model itself is
            never modified — write the result back with ``objective.set_parameters``).
        callbacks: functions ``cb(step, θ) -> dict`` called at every recorded step; their
            entries are added to the record (e.g. the sharpness). A callback with a
            ``setup(context)`` method gets a :class:`TrainContext` before the first step.
        progress: called with the number of steps done, for progress bars.

    Every ``record_every`` steps (and at the last) a record holds ``step``, ``epoch``,
    full-data ``loss`` (and ``accuracy`` for classifiers), the full-data gradient norm
    ``grad_norm`` = ‖∇L(θ)‖, ``distance`` = ‖θ − θ_0‖ from the start, ``path_length`` = Σ_t
    ‖θ_{t+1} − θ_t‖ (the distance travelled) and the callbacks' entries. Training stops early
    when the full-data loss reaches ``loss_goal`` or the accuracy reaches ``accuracy_goal``
    (checked at recorded steps), or when it diverges.
    """
    if not isinstance(objective, Objective):
        raise ArgumentTypeError(
            f"train needs a valleys.Objective, got {type(objective).__name__}; build "
            "one with valleys.Objective(model, loss, (X, Y))")
    if config is not None and not isinstance(config, TrainConfig):
        raise ArgumentTypeError(f"config must be a valleys.train.TrainConfig or None, got "
                                f"{type(config).__name__}; pass settings as keywords, e.g. "
                                "train(obj, lr=0.1, steps=100)")
    config = _validated(TrainConfig(**{**asdict(config or TrainConfig()), **overrides}), objective)
    if isinstance(callbacks, str) or not isinstance(callbacks, Iterable):
        raise ArgumentTypeError(f"callbacks must be a sequence of functions cb(step, θ), got "
                                f"{type(callbacks).__name__}; wrap a single one in a list")
    callbacks = list(callbacks)
    for callback in callbacks:
        if not callable(callback):
            raise ArgumentTypeError(f"every callback must be callable as cb(step, θ), got "
                                    f"{type(callback).__name__}")
    if progress is not None and not callable(progress):
        raise ArgumentTypeError(f"progress must be a function of the step count or None, got "
                                f"{type(progress).__name__}")
    start = objective.resolve_theta(theta).detach().clone()
    param = torch.nn.Parameter(start.clone())
    optimizer = _make_optimizer(config, param)
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    sampler = _sampler(config, objective.n, generator)
    classify = _is_classifier(objective)
    if config.accuracy_goal is not None and not classify:
        raise ArgumentValueError(
            "accuracy_goal needs a classifier (loss 'ce' or one-hot targets); use loss_goal"
        )
    context = TrainContext(objective, optimizer, param, config)
    for callback in callbacks:
        if hasattr(callback, "setup"):
            callback.setup(context)
    path_length = 0.0
    records: list[dict[str, Any]] = []
    initial_loss = None
    status = "max_steps"
    started = time.perf_counter()
    step = 0
    for step in range(config.steps + 1):
        last = step == config.steps
        full_gradient = None
        if step % config.record_every == 0 or last:
            record, full_gradient = _record(objective, param.detach(), start, step, config,
                                            classify)
            record["path_length"] = path_length
            for callback in callbacks:
                record.update(callback(step, param.detach()) or {})
            records.append(record)
            initial_loss = record["loss"] if initial_loss is None else initial_loss
            if _diverged(record["loss"], initial_loss, config):
                status = "diverged"
                break
            if _goal_reached(record, config):
                status = "converged"
                break
        if last:
            break
        if full_gradient is not None and config.batch_size is None:
            # Full batch: the record's gradient is this step's gradient, computed once.
            loss = record["loss"]
            param.grad = full_gradient
        else:
            loss = _set_gradient(objective, param, sampler)
        if _diverged(loss, initial_loss, config):
            records.append({"step": step, "epoch": _epoch(step, config, objective.n),
                            "loss": loss})
            status = "diverged"
            break
        before = param.detach().clone()
        optimizer.step()
        path_length += float(torch.linalg.vector_norm(param.detach() - before))
        if progress is not None:
            progress(step + 1)
    return TrainResult(
        theta=param.detach().clone(),
        status=status,
        steps=step,
        records=records,
        config=config,
        wall_time=time.perf_counter() - started,
    )


def _validated(config: TrainConfig, objective: Objective) -> TrainConfig:
    if config.optimizer not in OPTIMIZERS:
        raise ArgumentValueError(
            f"unknown optimizer {config.optimizer!r}; choose one of {OPTIMIZERS}")
    config = replace(
        config,
        lr=positive_real(config.lr, "the learning rate lr"),
        divergence_factor=positive_real(
            config.divergence_factor, "divergence_factor",
            hint="a run counts as diverged once its loss exceeds this multiple of the initial "
                 "loss",
        ),
    )
    config = replace(
        config,
        steps=integer(config.steps, "steps", minimum=0),
        record_every=integer(config.record_every, "record_every", minimum=1),
        seed=seed_value(config.seed),
    )
    if config.sampling not in SAMPLING:
        raise ArgumentValueError(f"unknown sampling {config.sampling!r}; choose one of {SAMPLING}")
    if config.batch_size is not None:
        batch_size = config.batch_size
        if (isinstance(batch_size, bool) or not is_integral(batch_size)
                or not 1 <= batch_size <= objective.n):
            raise ArgumentValueError(
                f"batch_size must be an integer in [1, n={objective.n}] or None (full batch), "
                f"got {batch_size!r}"
            )
        config = replace(config, batch_size=int(batch_size))
        if not objective.distributed:
            objective.batch(torch.zeros(1, dtype=torch.long))  # clear error for iterable data
    momentum = config.momentum
    if isinstance(momentum, bool) or not is_real(momentum) or not (
        0 <= momentum < 1
    ):
        raise ArgumentValueError(f"momentum must lie in [0, 1), got {momentum!r}")
    if (not isinstance(config.betas, tuple | list) or len(config.betas) != 2
            or any(isinstance(b, bool) or not is_real(b) or not 0 <= b < 1
                   for b in config.betas)):
        raise ArgumentValueError(f"betas must be a pair of numbers in [0, 1), got {config.betas!r}")
    eps = config.eps
    if isinstance(eps, bool) or not is_real(eps) or not (
        math.isfinite(eps) and eps >= 0
    ):
        raise ArgumentValueError(f"eps must be a finite number >= 0, got {eps!r}")
    config = replace(config, momentum=float(momentum),
                     betas=(float(config.betas[0]), float(config.betas[1])), eps=float(eps))
    if config.loss_goal is not None:
        config = replace(config, loss_goal=finite_real(config.loss_goal, "loss_goal"))
    goal = config.accuracy_goal
    if goal is not None and (isinstance(goal, bool) or not is_real(goal)
                             or not 0 < goal <= 1):
        raise ArgumentValueError(f"accuracy_goal must lie in (0, 1], got {goal!r}")
    return config


def _make_optimizer(config: TrainConfig, param: torch.nn.Parameter) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD([param], lr=config.lr)
    if config.optimizer in (_HEAVY_BALL, "nesterov"):
        return torch.optim.SGD(
            [param], lr=config.lr, momentum=config.momentum,
            nesterov=config.optimizer == "nesterov",
        )
    if config.optimizer == "adam":
        return torch.optim.Adam([param], lr=config.lr, betas=config.betas, eps=config.eps)
    return torch.optim.RMSprop([param], lr=config.lr, alpha=config.betas[1], eps=config.eps)


def _sampler(config: TrainConfig, n: int,
             generator: torch.Generator) -> Callable[[], torch.Tensor | None]:
    """A function returning the next batch's indices (``None`` for the full batch)."""
    B = config.batch_size
    if B is None:
        return lambda: None
    if config.sampling == "subset":
        return lambda: torch.randperm(n, generator=generator)[:B]
    if config.sampling == "replacement":
        return lambda: torch.randint(n, (B,), generator=generator)
    queue: list[torch.Tensor] = []

    def shuffled() -> torch.Tensor:
        if not queue:
            queue.extend(torch.randperm(n, generator=generator).split(B))
        return queue.pop(0)

    return shuffled


def _set_gradient(objective: Objective, param: torch.nn.Parameter,
                  sampler: Callable[[], torch.Tensor | None]) -> float:
    indices = sampler()
    if indices is None:
        loss, gradient = objective.loss_and_gradient(param.detach())
    else:
        # by global index: on a sharded objective each rank evaluates its part and sums
        loss, gradient = objective.batch_loss_and_gradient(param.detach(), indices)
    param.grad = gradient
    return float(loss)


def _record(objective: Objective, theta: torch.Tensor, start: torch.Tensor, step: int,
            config: TrainConfig, classify: bool) -> tuple[dict[str, Any], torch.Tensor]:
    """The step's record and the full-data gradient (one pass gives loss and gradient)."""
    loss, gradient = objective.loss_and_gradient(theta)
    record: dict[str, Any] = {
        "step": step,
        "epoch": _epoch(step, config, objective.n),
        "loss": float(loss),
        "grad_norm": float(torch.linalg.vector_norm(gradient)),
        "distance": float(torch.linalg.vector_norm(theta - start)),
    }
    if classify and math.isfinite(record["loss"]):
        record["accuracy"] = objective.accuracy(theta)
    return record, gradient


def _goal_reached(record: dict[str, Any], config: TrainConfig) -> bool:
    if config.loss_goal is not None and record["loss"] <= config.loss_goal:
        return True
    accuracy = record.get("accuracy")
    return config.accuracy_goal is not None and accuracy is not None and (
        accuracy >= config.accuracy_goal
    )


def _epoch(step: int, config: TrainConfig, n: int) -> float:
    return step * (config.batch_size or n) / n


def _is_classifier(objective: Objective) -> bool:
    if objective.loss_name == "ce":
        return True
    _, Y = next(iter(objective.chunks()))
    if not isinstance(Y, torch.Tensor):  # Objective.from_function: no targets to compare with
        return False
    # One-hot targets: rows of 0s and a single 1. Any other float targets are a regression,
    # whose "accuracy" (argmax agreement) would be meaningless.
    return bool(
        Y.is_floating_point() and Y.ndim == 2 and Y.shape[1] > 1
        and ((Y == 0) | (Y == 1)).all() and (Y.sum(dim=1) == 1).all()
    )


def _diverged(loss: float, initial: float | None, config: TrainConfig) -> bool:
    if not math.isfinite(loss):
        return True
    return initial is not None and loss > config.divergence_factor * max(initial, 1e-12)
