"""The path-norm-regularized estimator of E, Ma & Wu (2019) for two-layer ReLU networks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from valleys._checks import finite_real, integer, positive_real, seed_value
from valleys.errors import ArgumentTypeError, ArgumentValueError
from valleys.theory._path_norm import _leaves, path_norm

__all__ = ["RegularizedFit", "path_norm_regularized_fit", "penalty_weight", "two_layer_relu"]

SCALINGS = ("paper", "code")


def two_layer_relu(d: int, m: int, *, init_scale: float = 1.0, bias: bool = True,
                   seed: int = 0, dtype: torch.dtype = torch.float32,
                   device: str | torch.device = "cpu") -> nn.Sequential:
    """``f(x) = Σ_j a_j σ(w_j·x + c_j)`` as ``Linear(d, m) → ReLU → Linear(m, 1, bias=False)``.

    Initialization of E, Ma & Wu's code (``leiwu0308/genErrTwoLayer`` ``models.py``):
    ``c = 0``, ``w_j ~ N(0, 2κ/d · I)``, ``a_j ~ N(0, 2κ/m)`` with ``κ = init_scale``; drawn
    from ``seed``.
    """
    d = integer(d, "d", minimum=1)
    m = integer(m, "m (width)", minimum=1, hint="a network needs at least one hidden unit")
    kappa = positive_real(init_scale, "init_scale")
    g = torch.Generator().manual_seed(seed_value(seed))
    model = nn.Sequential(nn.Linear(d, m, bias=bias), nn.ReLU(), nn.Linear(m, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(m, d, generator=g, dtype=torch.float64)
                              * math.sqrt(2 * kappa / d))
        if bias:
            model[0].bias.zero_()
        model[2].weight.copy_(torch.randn(1, m, generator=g, dtype=torch.float64)
                              * math.sqrt(2 * kappa / m))
    return model.to(dtype=dtype, device=device)


def penalty_weight(lam: float, n: int, d: int, scaling: str = "paper") -> float:
    """The factor in front of ``‖θ‖_P`` in ``J_λ``.

    ``"paper"``: ``λ sqrt(log(2d)/n)`` (E, Ma & Wu 2019, the regularized risk of the a priori
    estimate); ``"code"``: ``λ log10(d)/n`` (the authors' ``mnist_train.py``,
    ``lmbd_base = log10(784)/n``). ``d ≥ 2`` for ``"code"`` (``log10 1 = 0``).
    """
    lam = finite_real(lam, "lam")
    if lam < 0:
        raise ArgumentValueError(f"lam must be >= 0 (a penalty weight), got {lam}")
    n = integer(n, "n (samples)", minimum=1)
    d = integer(d, "d (input dimension)", minimum=1)
    if scaling == "paper":
        return lam * math.sqrt(math.log(2 * d) / n)
    if scaling == "code":
        return lam * math.log10(d) / n
    raise ArgumentValueError(f"unknown scaling {scaling!r}; choose one of {SCALINGS}")


def _differentiable_path_norm(model: nn.Module) -> torch.Tensor:
    """``‖θ‖_P`` (ℓ1 path norm with biases) as a differentiable tensor (forward pass on |W|)."""
    h = None
    for lin in (m for m in _leaves(model) if isinstance(m, nn.Linear)):
        W = lin.weight.abs()
        h = W.sum(dim=1) if h is None else W @ h
        if lin.bias is not None:
            h = h + lin.bias.abs()
    assert h is not None
    return h.sum()


@dataclass(frozen=True)
class RegularizedFit:
    """A fit of ``J_λ(θ) = L̂_n(θ) + w ‖θ‖_P`` (``w`` = :func:`penalty_weight`).

    Attributes:
        model: the trained network (``Linear → ReLU → Linear``).
        lam: ``λ``.
        scaling: ``"paper"`` or ``"code"``.
        weight: the penalty weight ``w``.
        objective: ``J_λ`` before each step and after the last, shape ``(steps + 1,)``
            (NaN from the step where it diverged).
        train_risk: ``L̂_n = (1/n) Σ_i (f(x_i) − y_i)²`` at the end.
        path_norm: ``‖θ‖_P`` at the end.
    """

    model: nn.Module
    lam: float
    scaling: str
    weight: float
    objective: torch.Tensor
    train_risk: float
    path_norm: float


def path_norm_regularized_fit(
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    width: int | None = None,
    lam: float = 1.0,
    scaling: str = "paper",
    model: nn.Module | None = None,
    steps: int = 2000,
    lr: float = 1e-2,
    optimizer: str = "adam",
    init_scale: float = 1.0,
    seed: int = 0,
) -> RegularizedFit:
    r"""Minimize ``J_λ(θ) = L̂_n(θ) + λ_eff ‖θ‖_P`` over a two-layer ReLU network.

    E, Ma & Wu, "A priori estimates of the population risk for two-layer neural networks"
    (CMS 2019): ``L̂_n(θ) = (1/n) Σ_i (f(x_i; θ) − y_i)²`` (the mean squared error, as in the
    authors' code; the paper analyses a truncated square loss), ``‖θ‖_P = Σ_j |a_j|
    (‖w_j‖_1 + |c_j|)`` and ``λ_eff = λ sqrt(log(2d)/n)`` (``scaling="paper"``) or
    ``λ log10(d)/n`` (``scaling="code"``). ``λ = 0`` is the unregularized estimator.

    Full batch. ``optimizer="adam"``: Adam with the step divided by 10 at 70, 80 and 90 % of
    the steps (the authors' schedule); ``"gd"``: plain gradient descent with step ``lr``. The
    penalty's subgradient at 0 is 0 (``|·|`` in autograd).

    Args:
        X: inputs ``(n, d)``; the network takes their dtype and device.
        y: targets ``(n,)`` or ``(n, 1)``.
        width: hidden units ``m`` of a fresh :func:`two_layer_relu` (E–Ma–Wu init from
            ``seed`` with ``init_scale``); or pass ``model`` (trained in place).
        lam: ``λ ≥ 0``.
        scaling: ``"paper"`` or ``"code"`` (see :func:`penalty_weight`).
        model: a network to start from instead of ``width``.
        steps: optimizer steps (≥ 1).
        lr: step size.
        optimizer: ``"adam"`` or ``"gd"``.
        init_scale: ``κ`` of the initialization.
        seed: seeds the initialization.
    """
    if not isinstance(X, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ArgumentTypeError("X and y must be torch tensors")
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ArgumentValueError(f"X must have shape (n, d) with n, d >= 1, got "
                                 f"{tuple(X.shape)}")
    n, d = X.shape
    y = y.reshape(-1)
    if y.shape[0] != n:
        raise ArgumentValueError(f"y has {y.shape[0]} entries for {n} inputs")
    weight = penalty_weight(lam, n, d, scaling)
    steps = integer(steps, "steps", minimum=1)
    lr = positive_real(lr, "lr")
    if optimizer not in ("adam", "gd"):
        raise ArgumentValueError(f"unknown optimizer {optimizer!r}; choose 'adam' or 'gd'")
    if model is None:
        if width is None:
            raise ArgumentValueError("pass width (a fresh network) or model")
        model = two_layer_relu(d, width, init_scale=init_scale, seed=seed, dtype=X.dtype,
                               device=X.device)
    elif width is not None:
        raise ArgumentValueError("pass width or model, not both")
    path_norm(model)  # refuses networks the path norm does not cover
    y = y.to(X)
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=lr)
        milestones = sorted({int(steps * f) for f in (0.7, 0.8, 0.9)})
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
    else:
        opt = torch.optim.SGD(params, lr=lr)
        sched = None
    history = torch.empty(steps + 1, dtype=torch.float64)

    def objective() -> tuple[torch.Tensor, torch.Tensor]:
        risk = (model(X).reshape(-1) - y).pow(2).mean()
        return risk + weight * _differentiable_path_norm(model), risk

    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        J, _ = objective()
        history[step] = float(J.detach())
        if not math.isfinite(float(history[step])):  # diverged: the rest stays NaN
            history[step:] = math.nan
            break
        J.backward()
        opt.step()
        if sched is not None:
            sched.step()
    with torch.no_grad():
        J, risk = objective()
    if math.isfinite(float(history[-2])):
        history[steps] = float(J)
    return RegularizedFit(model, float(lam), scaling, weight, history, float(risk),
                          path_norm(model))
