"""Adversarial robustness: FGSM and PGD attacks in L2 and L∞ balls, accuracy over radii.

Ma & Ying (2021) bound adversarial robustness by the input-smoothness that SGD's linear
stability enforces; :func:`adversarial_accuracy` measures it with :func:`fgsm` (Goodfellow et
al. 2015) or :func:`pgd` (Madry et al. 2018) on the cross-entropy of the logits.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from valleys._checks import is_integral, is_real
from valleys.errors import ArgumentTypeError, ArgumentValueError
from valleys.smoothness._source import Source, _Record, _Source

__all__ = ["RobustnessResult", "adversarial_accuracy", "fgsm", "pgd"]

NORMS = ("linf", "l2")
ATTACKS = ("fgsm", "pgd")


@dataclass(frozen=True, eq=False)
class RobustnessResult(_Record):
    """Accuracy under adversarial perturbations over a grid of radii.

    Attributes:
        radii: the radii ``ε``, in the order given.
        accuracies: accuracy at each radius. A sample counts as correct only if it is correct
            both clean and attacked (the unperturbed point lies in every ball). With
            ``cumulative=True`` a sample counts as broken at ``ε`` if the attack broke it at any
            radius ``≤ ε`` (a perturbation in a smaller ball lies in every larger one), so
            accuracies are non-increasing in ``ε``.
        raw_accuracies: accuracy of the attack run at each radius alone.
        clean_accuracy: accuracy on the unperturbed inputs.
        attack: ``"fgsm"`` or ``"pgd"``. norm: ``"linf"`` or ``"l2"``.
        steps: attack iterations (1 for FGSM).
        rel_step_size: step length as a fraction of ``ε`` (1 for FGSM).
        random_start: whether PGD started from a uniform random point of the ball.
        seed: seed of the random start.
        clamp: the input box ``(low, high)`` or ``None``.
        cumulative: see ``accuracies``.
        n: number of samples.
        wall_time: seconds spent.
    """

    radii: tuple[float, ...]
    accuracies: tuple[float, ...]
    raw_accuracies: tuple[float, ...]
    clean_accuracy: float
    attack: str
    norm: str
    steps: int
    rel_step_size: float
    random_start: bool
    seed: int | None
    clamp: tuple[float, float] | None
    cumulative: bool
    n: int
    wall_time: float


def _labels(Y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Integer labels from int labels or one-hot/probability targets (argmax)."""
    if Y.is_floating_point():
        if Y.ndim != 2 or Y.shape[1] != num_classes:
            raise ArgumentValueError(f"float targets must be one-hot/probabilities of shape (n, "
                                     f"{num_classes}), got {tuple(Y.shape)}")
        return Y.argmax(dim=1)
    if Y.dtype == torch.bool or Y.ndim != 1:
        raise ArgumentValueError(f"integer labels must have shape (n,), got {tuple(Y.shape)} "
                                 f"({Y.dtype})")
    if Y.numel() and (int(Y.min()) < 0 or int(Y.max()) >= num_classes):
        raise ArgumentValueError(f"labels must lie in [0, {num_classes}), got "
                                 f"[{int(Y.min())}, {int(Y.max())}]")
    return Y.long()


def _check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ArgumentValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return norm


def _check_eps(eps: Any, what: str = "radius") -> float:
    if isinstance(eps, bool) or not is_real(eps) or not math.isfinite(eps) \
            or eps < 0:
        raise ArgumentValueError(f"{what} must be a non-negative finite number, got {eps!r}")
    return float(eps)


def _check_clamp(clamp: Any, X: torch.Tensor) -> tuple[float, float] | None:
    if clamp is None:
        return None
    if not (isinstance(clamp, Sequence) and len(clamp) == 2
            and all(is_real(c) for c in clamp)):
        raise ArgumentTypeError(
            f"clamp must be a pair (low, high) of numbers or None, got {clamp!r}")
    lo, hi = float(clamp[0]), float(clamp[1])
    if not lo < hi:
        raise ArgumentValueError(f"clamp needs low < high, got {clamp!r}")
    if float(X.min()) < lo or float(X.max()) > hi:
        raise ArgumentValueError(f"the inputs lie outside the clamp box [{lo}, {hi}]")
    return lo, hi


def _per_sample_norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    flat = t.reshape(t.shape[0], -1)
    n = flat.abs().amax(dim=1) if norm == "linf" else flat.norm(dim=1)
    return n.reshape(-1, *([1] * (t.ndim - 1)))


def _ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent unit direction for the norm: sign(g) (L∞) or g/‖g‖ (L2)."""
    if norm == "linf":
        return grad.sign()
    n = _per_sample_norm(grad, "l2")
    return torch.where(n > 0, grad / torch.where(n > 0, n, torch.ones_like(n)),
                       torch.zeros_like(grad))


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    n = _per_sample_norm(delta, "l2")
    scale = torch.where(n > eps, eps / torch.where(n > 0, n, torch.ones_like(n)),
                        torch.ones_like(n))
    return delta * scale


def _clamped(x: torch.Tensor, clamp: tuple[float, float] | None) -> torch.Tensor:
    return x if clamp is None else x.clamp(clamp[0], clamp[1])


def _loss_grad(forward: Callable, x: torch.Tensor, labels: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(∇_x Σ_i CE(f(x_i), y_i), logits)``."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = forward(x)
        loss = F.cross_entropy(logits, labels, reduction="sum")
        (g,) = torch.autograd.grad(loss, x)
    return g, logits.detach()


def _fgsm_batch(forward: Callable, X: torch.Tensor, labels: torch.Tensor, eps: float,
                norm: str, clamp: tuple[float, float] | None) -> torch.Tensor:
    if eps == 0:
        return X.clone()
    g, _ = _loss_grad(forward, X, labels)
    return _clamped(X + eps * _ascent_direction(g, norm), clamp).detach()


def _random_start(X: torch.Tensor, eps: float, norm: str, gen: torch.Generator) -> torch.Tensor:
    if norm == "linf":
        u = torch.rand(X.shape, generator=gen, dtype=X.dtype, device=X.device)
        return (2 * u - 1) * eps
    d = X[0].numel()
    z = torch.randn(X.shape, generator=gen, dtype=X.dtype, device=X.device)
    z = z / _per_sample_norm(z, "l2").clamp_min(torch.finfo(X.dtype).tiny)
    r = torch.rand((X.shape[0],), generator=gen, dtype=X.dtype, device=X.device) ** (1.0 / d)
    return z * (eps * r).reshape(-1, *([1] * (X.ndim - 1)))


def _pgd_batch(forward: Callable, X: torch.Tensor, labels: torch.Tensor, eps: float, norm: str,
               steps: int, rel_step: float, random_start: bool, gen: torch.Generator | None,
               clamp: tuple[float, float] | None) -> torch.Tensor:
    if eps == 0:
        return X.clone()
    alpha = rel_step * eps
    delta = _random_start(X, eps, norm, gen) if random_start else torch.zeros_like(X)
    x_adv = _clamped(X + delta, clamp)
    best = x_adv.clone()
    found = torch.zeros(X.shape[0], dtype=torch.bool, device=X.device)
    shape = (-1, *([1] * (X.ndim - 1)))
    for _ in range(steps):
        g, logits = _loss_grad(forward, x_adv, labels)
        new = (logits.argmax(1) != labels) & ~found
        best = torch.where(new.reshape(shape), x_adv, best)
        found |= new
        delta = _project(x_adv + alpha * _ascent_direction(g, norm) - X, eps, norm)
        x_adv = _clamped(X + delta, clamp).detach()
    # Keep the first iterate that fooled the model; otherwise the last one.
    best = torch.where(found.reshape(shape), best, x_adv)
    return best.detach()


def _attack_setup(source, X, Y, theta, allow_train_mode, norm, clamp):
    src = _Source(source, X, Y, theta=theta, allow_train_mode=allow_train_mode)
    _check_norm(norm)
    Xall, Yall = src.samples()
    out = src.probe(Xall)
    if out.ndim != 2:
        raise ArgumentValueError(f"attacks need logits of shape (batch, classes), got "
                                 f"{tuple(out.shape)}")
    labels = _labels(Yall, out.shape[1])
    box = _check_clamp(clamp, Xall)
    return src, Xall, labels, box


def _check_steps(steps: Any) -> int:
    if isinstance(steps, bool) or not is_integral(steps) or steps < 1:
        raise ArgumentValueError(f"steps must be a positive integer, got {steps!r}")
    return int(steps)


def _check_rel_step(rel_step_size: Any, steps: int) -> float:
    if rel_step_size is None:
        return 2.5 / steps
    if isinstance(rel_step_size, bool) or not is_real(rel_step_size) \
            or not math.isfinite(rel_step_size) or rel_step_size <= 0:
        raise ArgumentValueError(f"rel_step_size must be a positive number, got {rel_step_size!r}")
    return float(rel_step_size)


def fgsm(
    source: Source,
    X: torch.Tensor,
    Y: torch.Tensor,
    eps: float,
    *,
    norm: str = "linf",
    clamp: tuple[float, float] | None = None,
    theta: torch.Tensor | None = None,
    allow_train_mode: bool = False,
) -> torch.Tensor:
    """Fast gradient (sign) method: one steepest-ascent step of the cross-entropy.

    ``x' = x + ε·sign(∇_x ℓ)`` in L∞ (Goodfellow et al. 2015) or ``x' = x + ε·∇_x ℓ/‖∇_x ℓ‖₂``
    in L2, with ``ℓ`` the cross-entropy of the logits (labels from ``argmax`` of one-hot
    targets), then clamped to ``clamp`` if given (which keeps ``‖x' − x‖ ≤ ε`` for inputs inside
    the box). A zero gradient gives no step.

    Returns:
        The perturbed inputs, same shape as ``X``.
    """
    eps = _check_eps(eps)
    src, Xall, labels, box = _attack_setup(source, X, Y, theta, allow_train_mode, norm, clamp)
    return _fgsm_batch(src.forward, Xall, labels, eps, norm, box)


def pgd(
    source: Source,
    X: torch.Tensor,
    Y: torch.Tensor,
    eps: float,
    *,
    norm: str = "linf",
    steps: int = 10,
    rel_step_size: float | None = None,
    random_start: bool = True,
    seed: int | None = 0,
    clamp: tuple[float, float] | None = None,
    theta: torch.Tensor | None = None,
    allow_train_mode: bool = False,
) -> torch.Tensor:
    """Projected gradient ascent on the cross-entropy in an L∞ or L2 ball (Madry et al. 2018).

    From ``x`` (or a uniform random point of the ball, drawn with ``seed``) repeat ``steps``
    times: step ``α = rel_step_size·ε`` along the steepest-ascent direction (``sign(g)`` or
    ``g/‖g‖₂``), project onto the ball ``‖x' − x‖ ≤ ε`` and clamp to the box. For each sample
    the first iterate that is misclassified is returned (else the last), so the attack never
    "unbreaks" a sample.

    Args:
        rel_step_size: ``α/ε``; default ``2.5/steps``.
        seed: seed of the random start (``None``: the global generator).
        Other arguments as for :func:`fgsm`.
    """
    eps = _check_eps(eps)
    steps = _check_steps(steps)
    rel = _check_rel_step(rel_step_size, steps)
    src, Xall, labels, box = _attack_setup(source, X, Y, theta, allow_train_mode, norm, clamp)
    gen = _make_generator(seed, Xall.device) if random_start else None
    return _pgd_batch(src.forward, Xall, labels, eps, norm, steps, rel, random_start, gen, box)


def _make_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not is_integral(seed) or seed < 0:
        raise ArgumentValueError(f"seed must be a non-negative integer or None, got {seed!r}")
    return torch.Generator(device=device).manual_seed(int(seed))


def adversarial_accuracy(
    source: Source,
    X: torch.Tensor | None = None,
    Y: torch.Tensor | None = None,
    radii: float | Sequence[float] = (0.0, 0.1),
    *,
    attack: str = "pgd",
    norm: str = "linf",
    steps: int = 10,
    rel_step_size: float | None = None,
    random_start: bool = True,
    seed: int | None = 0,
    clamp: tuple[float, float] | None = None,
    batch_size: int = 256,
    cumulative: bool = True,
    theta: torch.Tensor | None = None,
    allow_train_mode: bool = False,
) -> RobustnessResult:
    """Classification accuracy under FGSM or PGD attacks over a grid of radii.

    Ma & Ying (2021) bound adversarial robustness by the input-smoothness that SGD's linear
    stability enforces; this measures it. For each radius ``ε`` every sample is attacked
    (:func:`fgsm` or :func:`pgd`, cross-entropy on the logits, batches of ``batch_size``) and
    counted correct if ``argmax f(x') = y``. ``ε = 0`` gives the clean accuracy exactly. The
    random start of PGD is seeded once per call, so results are reproducible.

    Args:
        source: an Objective (its model at θ and its data by default) or an ``nn.Module``.
        X, Y: inputs and labels (int ``(n,)`` or one-hot/probabilities ``(n, K)``).
        radii: a radius or a sequence of non-negative radii.
        attack: ``"fgsm"`` or ``"pgd"``.
        norm: ``"linf"`` or ``"l2"`` (per sample, over all input entries).
        steps, rel_step_size, random_start, seed: PGD parameters (see :func:`pgd`).
        clamp: a box ``(low, high)`` the inputs (and adversarial inputs) live in.
        batch_size: samples attacked at once.
        cumulative: count a sample broken at ``ε`` if broken at any radius ``≤ ε``
            (see :class:`RobustnessResult`).
        theta, allow_train_mode: as for :func:`input_jacobians`.

    Returns:
        A :class:`RobustnessResult`.
    """
    t0 = time.perf_counter()
    if attack not in ATTACKS:
        raise ArgumentValueError(f"attack must be one of {ATTACKS}, got {attack!r}")
    _check_norm(norm)
    if is_real(radii) and not isinstance(radii, bool):
        radii = [radii]
    if isinstance(radii, torch.Tensor):
        radii = radii.reshape(-1).tolist()
    if isinstance(radii, str) or not isinstance(radii, Sequence) or len(radii) == 0:
        raise ArgumentValueError(f"radii must be a non-empty sequence of non-negative numbers, got "
                                 f"{radii!r}")
    eps_list = [_check_eps(r, "every radius") for r in radii]
    if isinstance(batch_size, bool) or not is_integral(batch_size) \
            or batch_size < 1:
        raise ArgumentValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if attack == "pgd":
        steps = _check_steps(steps)
        rel = _check_rel_step(rel_step_size, steps)
    else:
        steps, rel, random_start = 1, 1.0, False
    src, Xall, labels, box = _attack_setup(source, X, Y, theta, allow_train_mode, norm, clamp)
    gen = _make_generator(seed, Xall.device) if attack == "pgd" and random_start else None
    n = Xall.shape[0]

    def correct(x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return src.forward(x_adv).argmax(1) == y

    clean = torch.cat([correct(Xall[s:s + batch_size], labels[s:s + batch_size])
                       for s in range(0, n, batch_size)])
    raw: dict[int, torch.Tensor] = {}
    for j, eps in enumerate(eps_list):
        if eps == 0:
            raw[j] = clean
            continue
        parts = []
        for s in range(0, n, batch_size):
            xb, yb = Xall[s:s + batch_size], labels[s:s + batch_size]
            if attack == "fgsm":
                x_adv = _fgsm_batch(src.forward, xb, yb, eps, norm, box)
            else:
                x_adv = _pgd_batch(src.forward, xb, yb, eps, norm, steps, rel, random_start,
                                   gen, box)
            parts.append(correct(x_adv, yb))
        raw[j] = torch.cat(parts) & clean
    accs_raw = tuple(float(raw[j].double().mean()) for j in range(len(eps_list)))
    if cumulative:
        alive = clean.clone()
        cum: dict[int, float] = {}
        for j in sorted(range(len(eps_list)), key=lambda i: eps_list[i]):
            alive &= raw[j]
            cum[j] = float(alive.double().mean())
        accs = tuple(cum[j] for j in range(len(eps_list)))
    else:
        accs = accs_raw
    return RobustnessResult(
        radii=tuple(eps_list), accuracies=accs, raw_accuracies=accs_raw,
        clean_accuracy=float(clean.double().mean()), attack=attack, norm=norm, steps=steps,
        rel_step_size=rel, random_start=bool(random_start), seed=seed if gen is not None else None,
        clamp=box, cumulative=bool(cumulative), n=n, wall_time=time.perf_counter() - t0,
    )
