"""Diagonal linear networks ``w = u⊙u − v⊙v`` and their implicit bias."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linprog, minimize
from torch import nn

from valleys._checks import integer, positive_real, seed_value
from valleys.errors import ArgumentTypeError, ArgumentValueError, NotConvergedError
from valleys.objective import Objective

__all__ = [
    "DiagonalNet",
    "DiagonalRun",
    "diagonal_net_limit",
    "hypentropy",
    "min_l1_interpolant",
    "min_l2_interpolant",
    "sparse_regression_problem",
]


def _as_numpy(X: object, y: object) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    if not isinstance(X, np.ndarray) or not isinstance(y, np.ndarray):
        raise ArgumentTypeError("X and y must be torch tensors or numpy arrays")
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ArgumentValueError(f"X must be (n, d) and y (n,) with the same n, got "
                                 f"{X.shape} and {y.shape}")
    if not (np.isfinite(X).all() and np.isfinite(y).all()):
        raise ArgumentValueError("X and y must be finite")
    return X.astype(np.float64), y.astype(np.float64)


def hypentropy(w: torch.Tensor | np.ndarray, init_scale: float) -> float:
    r"""Woodworth et al.'s potential ``Q_α(w) = α² Σ_i q(w_i/α²)``,
    ``q(z) = 2 − sqrt(4 + z²) + z·arcsinh(z/2)`` (``q'(z) = arcsinh(z/2)``)."""
    alpha = positive_real(init_scale, "init_scale")
    z = np.asarray(w.detach().cpu() if isinstance(w, torch.Tensor) else w, dtype=np.float64)
    z = z / alpha ** 2
    q = 2 - np.sqrt(4 + z ** 2) + z * np.arcsinh(z / 2)
    return float(alpha ** 2 * q.sum())


def min_l2_interpolant(X: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> np.ndarray:
    """``X⁺ y``, the minimum-ℓ2-norm solution of ``Xw = y`` (the ``α → ∞`` limit)."""
    X, y = _as_numpy(X, y)
    return np.linalg.pinv(X) @ y


def min_l1_interpolant(X: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> np.ndarray:
    """``argmin ‖w‖₁ s.t. Xw = y`` by the linear programme ``w = p − q``, ``p, q ≥ 0`` (scipy
    HiGHS); the ``α → 0`` limit of :func:`diagonal_net_limit`."""
    X, y = _as_numpy(X, y)
    d = X.shape[1]
    res = linprog(np.ones(2 * d), A_eq=np.hstack([X, -X]), b_eq=y, bounds=(0, None),
                  method="highs")
    if res.status != 0:
        raise NotConvergedError(f"min-ℓ1 linear programme failed: {res.message}")
    return res.x[:d] - res.x[d:]


def diagonal_net_limit(X: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray,
                       init_scale: float, *, tol: float = 1e-10) -> np.ndarray:
    r"""The gradient-flow limit of the diagonal network ``w = u⊙u − v⊙v`` from
    ``u₀ = v₀ = α1`` on the square loss (Woodworth et al., COLT 2020):

    ``w_∞ = argmin_{Xw = y} Q_α(w)``, ``Q_α(w) = α² Σ_i q(w_i/α²)``,
    ``q(z) = 2 − sqrt(4 + z²) + z·arcsinh(z/2)``.

    Solved through its smooth convex dual ``min_μ D(μ) = Σ_i 2α²(cosh((Xᵀμ)_i) − 1) − μᵀy``
    (trust-region Newton with the exact Hessian ``X diag(2α² cosh(Xᵀμ)) Xᵀ``), then
    ``w = 2α² sinh(Xᵀμ)``, which satisfies the KKT condition ``arcsinh(w/(2α²)) = Xᵀμ ∈
    range(Xᵀ)`` by construction. ``2α² cosh s`` is evaluated as
    ``(e^{s + log 2α²} + e^{−s + log 2α²})/2`` so that tiny ``α`` (down to ~1e-150) does
    not underflow. Limits: ``α → ∞`` gives ``X⁺y`` (min ℓ2), ``α → 0`` the min-ℓ1
    interpolant (only logarithmically fast in ``1/α``).

    Raises ``NotConvergedError`` when the interpolation residual ``‖Xw − y‖/‖y‖`` stays above
    ``tol`` (e.g. ``y`` not in the range of ``X``).
    """
    X, y = _as_numpy(X, y)
    alpha = positive_real(init_scale, "init_scale",
                          hint="the initialisation scale α of u₀ = v₀ = α1 must be > 0")
    tol = positive_real(tol, "tol")
    log_c = math.log(2.0) + 2.0 * math.log(alpha)  # log(2α²)

    def parts(mu: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s = X.T @ mu
        ep, em = np.exp(s + log_c), np.exp(-s + log_c)  # 2α² e^{±s}
        return s, (ep - em) / 2, (ep + em) / 2  # s, 2α² sinh s, 2α² cosh s

    def fun(mu: np.ndarray) -> float:
        _, _, c = parts(mu)
        return float(c.sum() - X.shape[1] * math.exp(log_c) - mu @ y)

    def jac(mu: np.ndarray) -> np.ndarray:
        _, sh, _ = parts(mu)
        return X @ sh - y

    def hess(mu: np.ndarray) -> np.ndarray:
        _, _, c = parts(mu)
        return (X * c) @ X.T

    scale = float(np.linalg.norm(y)) or 1.0
    mu = np.zeros(X.shape[0])
    for _ in range(5):  # restarts from the last point if the trust region stops early
        res = minimize(fun, mu, jac=jac, hess=hess, method="trust-exact",
                       options={"gtol": tol * scale * 1e-2, "maxiter": 5000})
        mu = res.x
        if np.linalg.norm(jac(mu)) <= tol * scale:
            break
    # Newton polish: the dual is strictly convex on range(X), a full step converges
    # quadratically from here.
    for _ in range(20):
        g = jac(mu)
        if np.linalg.norm(g) <= 1e-3 * tol * scale:
            break
        step = np.linalg.lstsq(hess(mu), g, rcond=None)[0]
        if not np.all(np.isfinite(step)):
            break
        trial = mu - step
        if np.linalg.norm(jac(trial)) < np.linalg.norm(g):
            mu = trial
        else:
            break
    _, w, _ = parts(mu)
    residual = float(np.linalg.norm(X @ w - y)) / scale
    if not math.isfinite(residual) or residual > tol:
        raise NotConvergedError(
            f"diagonal_net_limit: interpolation residual {residual:.3g} > tol = {tol:g} at "
            f"α = {alpha:g}; y may not be in the range of X")
    return w


class _Diagonal(nn.Module):
    """Parameters ``u, v``; the forward pass is ``X (u⊙u − v⊙v)``."""

    def __init__(self, u: torch.Tensor, v: torch.Tensor) -> None:
        super().__init__()
        self.u = nn.Parameter(u.clone())
        self.v = nn.Parameter(v.clone())

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return (X @ (self.u * self.u - self.v * self.v))[:, None]


@dataclass(frozen=True, eq=False)
class DiagonalRun:
    """Outcome of :meth:`DiagonalNet.train`.

    Attributes:
        u, v: final parameters; ``w = u⊙u − v⊙v``.
        losses: full-batch loss every ``record_every`` steps (first and last included).
        diverged: whether the iterates became non-finite (the run stopped there).
        steps: steps run.
    """

    u: torch.Tensor
    v: torch.Tensor
    losses: list[float]
    diverged: bool
    steps: int

    @property
    def w(self) -> torch.Tensor:
        return self.u * self.u - self.v * self.v


@dataclass(frozen=True, eq=False)
class DiagonalNet:
    """Sparse regression ``y = Xw*`` fitted by the diagonal network ``w = u⊙u − v⊙v``.

    Attributes:
        X: ``(n, d)`` inputs (``n < d``: many interpolants).
        y: ``(n,)`` targets.
        w_star: ``(d,)`` the sparse ground truth.
    """

    X: torch.Tensor
    y: torch.Tensor
    w_star: torch.Tensor

    def objective(self, u: torch.Tensor, v: torch.Tensor) -> Objective:
        r"""``L(u, v) = (1/n) Σ_i ½ (x_iᵀ(u⊙u − v⊙v) − y_i)²`` as an
        :class:`~valleys.Objective` with parameters ``u`` and ``v``."""
        d = self.X.shape[1]
        if u.shape != (d,) or v.shape != (d,):
            raise ArgumentValueError(f"u and v must have shape ({d},), got {tuple(u.shape)} "
                                     f"and {tuple(v.shape)}")
        model = _Diagonal(u.to(self.X.dtype), v.to(self.X.dtype))
        return Objective(model, "mse", (self.X, self.y[:, None]))

    def train(self, init_scale: float, *, lr: float, steps: int, batch_size: int | None = None,
              seed: int = 0, record_every: int = 100) -> DiagonalRun:
        r"""(S)GD on ``L(u, v)`` from ``u₀ = v₀ = α1`` (``w₀ = 0``).

        ``∇_u L = 2u⊙g``, ``∇_v L = −2v⊙g`` with ``g = X_Bᵀ(X_B w − y_B)/B`` on a minibatch of
        ``B = batch_size`` samples drawn without replacement each step from ``seed``
        (``None``: full batch, i.e. GD).
        """
        alpha = positive_real(init_scale, "init_scale")
        lr = positive_real(lr, "lr")
        steps = integer(steps, "steps", minimum=0)
        record_every = integer(record_every, "record_every", minimum=1)
        n, d = self.X.shape
        B = n if batch_size is None else integer(batch_size, "batch_size", minimum=1)
        if B > n:
            raise ArgumentValueError(f"batch_size {B} exceeds the number of samples n = {n}")
        g = torch.Generator(device="cpu").manual_seed(seed_value(seed))
        u = torch.full((d,), alpha, dtype=self.X.dtype, device=self.X.device)
        v = u.clone()

        def full_loss(u: torch.Tensor, v: torch.Tensor) -> float:
            return float((self.X @ (u * u - v * v) - self.y).pow(2).mean() / 2)

        losses = [full_loss(u, v)]
        diverged = False
        for t in range(1, steps + 1):
            if B == n:
                Xb, yb = self.X, self.y
            else:
                idx = torch.randperm(n, generator=g)[:B].to(self.X.device)
                Xb, yb = self.X[idx], self.y[idx]
            grad_w = Xb.T @ (Xb @ (u * u - v * v) - yb) / B
            u, v = u - lr * 2 * u * grad_w, v + lr * 2 * v * grad_w
            if t % record_every == 0 or t == steps:
                losses.append(full_loss(u, v))
                if not math.isfinite(losses[-1]):
                    diverged = True
                    steps = t
                    break
        return DiagonalRun(u, v, losses, diverged, steps)


def sparse_regression_problem(n: int, d: int, sparsity: int, *, seed: int = 0,
                              dtype: torch.dtype = torch.float64,
                              device: str | torch.device = "cpu") -> DiagonalNet:
    """``X`` with i.i.d. ``N(0, 1)`` entries, ``w*`` with ``sparsity`` entries ``±1`` (random
    signs and support), ``y = Xw*`` (noiseless)."""
    n = integer(n, "n", minimum=1)
    d = integer(d, "d", minimum=1)
    sparsity = integer(sparsity, "sparsity", minimum=1)
    if sparsity > d:
        raise ArgumentValueError(f"sparsity {sparsity} exceeds the dimension d = {d}")
    g = torch.Generator(device="cpu").manual_seed(seed_value(seed))
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.zeros(d, dtype=torch.float64)
    support = torch.randperm(d, generator=g)[:sparsity]
    w[support] = torch.randint(0, 2, (sparsity,), generator=g).to(torch.float64) * 2 - 1
    y = X @ w
    return DiagonalNet(X.to(device, dtype), y.to(device, dtype), w.to(device, dtype))
