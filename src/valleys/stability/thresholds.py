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
from collections.abc import Callable
from dataclasses import dataclass

from valleys._checks import is_real, positive_real
from valleys.errors import ArgumentValueError

__all__ = ["OPTIMIZER_ALIASES", "OPTIMIZER_THRESHOLDS", "threshold"]


@dataclass(frozen=True)
class _Threshold:
    """One optimizer: its momentum keyword (``None``: none), that keyword's default, the
    threshold ``formula(lr, momentum)`` and other names it goes by."""

    keyword: str | None
    formula: Callable[[float, float], float]
    default: float = 0.0
    aliases: tuple[str, ...] = ()


# The one table of optimizers: adding one is one entry (formula derived in the module docstring).
# Defaults: momentum 0.9 as in Cohen et al.'s experiments; torch.optim.Adam's β₁ = 0.9.
_TABLE: dict[str, _Threshold] = {
    "gd": _Threshold(None, lambda lr, _: 2.0 / lr),
    # train() calls torch.optim.SGD with momentum "momentum": the same optimizer.
    "heavy_ball": _Threshold("beta", lambda lr, b: (2.0 + 2.0 * b) / lr, 0.9, ("momentum",)),
    "nesterov": _Threshold("beta", lambda lr, b: (2.0 + 2.0 * b) / (lr * (1.0 + 2.0 * b)), 0.9),
    "adam": _Threshold("beta1", lambda lr, b: (2.0 + 2.0 * b) / (lr * (1.0 - b)), 0.9),
}

#: The optimizers :func:`threshold` knows, with the momentum keyword each one takes.
OPTIMIZER_THRESHOLDS: dict[str, str | None] = {name: t.keyword for name, t in _TABLE.items()}

#: Other names :func:`threshold` accepts, mapped to the names above (``"momentum"`` is what
#: :func:`valleys.train.train` calls heavy ball, ``torch.optim.SGD`` with ``momentum > 0``).
OPTIMIZER_ALIASES: dict[str, str] = {
    alias: name for name, t in _TABLE.items() for alias in t.aliases
}


def _momentum(name: str, value: object) -> float:
    if (not is_real(value) or isinstance(value, bool)
            or not math.isfinite(value) or not 0 <= value < 1):
        raise ArgumentValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def threshold(optimizer: str, lr: float, **hyper: float) -> float:
    r"""The largest stable curvature of ``optimizer`` with step ``lr`` on a quadratic.

    Args:
        optimizer: ``"gd"`` (``2/η``), ``"heavy_ball"`` (``(2+2β)/η``; also accepted as
            ``"momentum"``, the name :func:`valleys.train.train` uses), ``"nesterov"``
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
    name = OPTIMIZER_ALIASES.get(optimizer, optimizer) if isinstance(optimizer, str) else None
    if name not in _TABLE:
        aliases = ", ".join(f"{a} = {n}" for a, n in OPTIMIZER_ALIASES.items())
        raise ArgumentValueError(
            f"unknown optimizer {optimizer!r}; choose one of {', '.join(_TABLE)} (aliases: "
            f"{aliases})"
        )
    lr = positive_real(lr, "lr")
    entry = _TABLE[name]
    key = entry.keyword
    unexpected = sorted(set(hyper) - ({key} if key else set()))
    if unexpected:
        takes = f"only {key!r}" if key else "no hyperparameters"
        raise ArgumentValueError(f"threshold({optimizer!r}) takes {takes}, got {unexpected}")
    beta = 0.0 if key is None else _momentum(key, hyper.get(key, entry.default))
    return entry.formula(lr, beta)
