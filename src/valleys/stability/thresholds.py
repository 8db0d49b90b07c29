r"""Quadratic stability thresholds of full-batch optimizers, as PyTorch implements their updates.

On a quadratic ``L(θ) = ½ θᵀAθ`` every optimizer below is a linear recurrence, one decoupled
copy per eigenvalue ``a`` of ``A`` (of ``P⁻¹A`` for Adam with a frozen preconditioner ``P``). The
threshold is the largest ``a`` for which the recurrence does not diverge; an optimizer is stable
on ``A`` iff ``λ_max`` is at most the threshold. With step ``η`` and momentum ``β``
(``torch.optim.SGD(momentum=β, dampening=0)``: ``b ← βb + g``; ``θ ← θ − ηb``, or
``θ ← θ − η(g + βb)`` with ``nesterov=True``):

* gradient descent ``θ ← θ − ηaθ``: multiplier ``1 − ηa``, so ``a ≤ 2/η``;
* heavy ball: characteristic polynomial ``z² − (1 + β − ηa)z + β``; at the threshold ``z = −1``
  is a root, which gives ``a = (2 + 2β)/η``;
* Nesterov: ``z² − (1 + β)(1 − ηa)z + β(1 − ηa)``; ``z = −1`` gives ``a = (2 + 2β)/(η(1 + 2β))``;
* Adam with a frozen preconditioner (``m ← β₁m + (1−β₁)g``; ``θ ← θ − ηP⁻¹m``, the bias
  correction ``1/(1−β₁^t)`` tending to 1) is heavy ball with step ``η(1 − β₁)`` and momentum
  ``β₁`` on ``P⁻¹A``: ``λ(P⁻¹A) ≤ (2 + 2β₁)/(η(1 − β₁))``, i.e. ``38/η`` at ``β₁ = 0.9``.

References: Cohen et al., "Gradient descent on neural networks typically occurs at the edge of
stability", ICLR 2021 (GD and momentum); Cohen et al., "Adaptive gradient methods at the edge of
stability", arXiv 2207.14484 (Adam's ``38/η``).
"""

from __future__ import annotations

import math
import numbers

from valleys._checks import positive_real
from valleys.errors import ArgumentValueError

__all__ = ["OPTIMIZER_THRESHOLDS", "threshold"]

#: The optimizers :func:`threshold` knows, with the momentum keyword each one takes.
OPTIMIZER_THRESHOLDS: dict[str, str | None] = {
    "gd": None,
    "heavy_ball": "beta",
    "nesterov": "beta",
    "adam": "beta1",
}

# Defaults: torch.optim.Adam's β₁; momentum 0.9 as in Cohen et al.'s experiments.
_DEFAULTS = {"beta": 0.9, "beta1": 0.9}


def _momentum(name: str, value: object) -> float:
    if (not isinstance(value, numbers.Real) or isinstance(value, bool)
            or not math.isfinite(value) or not 0 <= value < 1):
        raise ArgumentValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def threshold(optimizer: str, lr: float, **hyper: float) -> float:
    r"""The largest stable curvature of ``optimizer`` with step ``lr`` on a quadratic.

    Args:
        optimizer: ``"gd"`` (``2/η``), ``"heavy_ball"`` (``(2+2β)/η``), ``"nesterov"``
            (``(2+2β)/(η(1+2β))``) or ``"adam"`` (``(2+2β₁)/(η(1−β₁))``, a bound on the
            preconditioned sharpness ``λ_max(P⁻¹H)``; ``38/η`` at ``β₁ = 0.9``).
        lr: the step size ``η > 0``.
        **hyper: ``beta`` (momentum, ``0 <= β < 1``, default 0.9) for ``"heavy_ball"`` and
            ``"nesterov"``; ``beta1`` (default 0.9) for ``"adam"``. Other keywords are refused.

    Returns:
        The threshold on the (preconditioned) sharpness, a float.

    Raises:
        ValueError: unknown optimizer (the message lists the options), ``lr <= 0`` or not
            finite, a momentum outside ``[0, 1)``, or a keyword the optimizer does not take.
    """
    if optimizer not in OPTIMIZER_THRESHOLDS:
        raise ArgumentValueError(
            f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZER_THRESHOLDS)}"
        )
    lr = positive_real(lr, "lr")
    key = OPTIMIZER_THRESHOLDS[optimizer]
    unexpected = sorted(set(hyper) - ({key} if key else set()))
    if unexpected:
        takes = f"only {key!r}" if key else "no hyperparameters"
        raise ArgumentValueError(f"threshold({optimizer!r}) takes {takes}, got {unexpected}")
    if key is None:
        return 2.0 / lr
    beta = _momentum(key, hyper.get(key, _DEFAULTS[key]))
    if optimizer == "heavy_ball":
        return (2.0 + 2.0 * beta) / lr
    if optimizer == "nesterov":
        return (2.0 + 2.0 * beta) / (lr * (1.0 + 2.0 * beta))
    return (2.0 + 2.0 * beta) / (lr * (1.0 - beta))
