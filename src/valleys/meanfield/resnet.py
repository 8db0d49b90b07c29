r"""Deep ResNets in the mean-field limit (Lu, Ma, Lu, Lu & Ying, ICML 2020, arXiv 2003.05508).

**Continuous model.** The state ``X(t) ∈ ℝ^D`` of one sample flows in depth ``t ∈ [0, 1]``

.. math:: \frac{dX}{dt} = F(X, t) = \int f(X, θ)\, ρ(dθ \mid t), \qquad
          f(X, θ) = a\, σ(w^\top X + b), \quad θ = (a, w, b) ∈ ℝ^{2D+1},

from ``X(0) = (x, 0)`` (the input padded with zeros to ``D``), and the prediction is the
linear read-out ``ŷ = H^\top X(1)`` with a fixed ``H ∈ ℝ^{D×k}``. The parameters form a
measure ``ρ(θ, t)`` over (parameter, depth) with uniform depth marginal; here each depth slice
holds ``M`` particles, ``ρ(·|t) = (1/M) Σ_j δ_{θ_j(t)}``. The risk is
``E(ρ) = (1/n) Σ_i ½‖H^\top X_i(1) − y_i‖²``.

**Adjoint.** With ``p(1) = H (H^\top X(1) − y)`` the adjoint ODE is
``dp/dt = −∂_X F(X, t)^\top p`` and the first variation is
``δE/δρ(θ, t) = (1/n) Σ_i p_i(t)^\top f(X_i(t), θ)``. The training dynamics is the gradient
flow of ``ρ`` over ``(θ, t)`` that transports mass within each depth slice,
``∂_s ρ = ∇_θ · (ρ ∇_θ δE/δρ)``: every particle moves with velocity ``−∇_θ δE/δρ(θ, t)``.
[The model and these equations are as our reference digest states them (tagged [K] there:
not verified against the paper's notation); the adjoint and first variation follow from the
model by the standard Pontryagin/adjoint-sensitivity computation.]

**Discrete ResNet** (Euler in depth with ``L`` blocks, block ``l`` at ``t_l = l/L``):

.. math:: X_{l+1} = X_l + \frac{1}{LM} \sum_{j=1}^M a_{l,j}\, σ(w_{l,j}^\top X_l + b_{l,j}).

Backpropagation is the discrete adjoint ``p_L = H(H^\top X_L − y)``,
``p_l = p_{l+1} + (1/(LM)) Σ_j ∂_X f(X_l, θ_{l,j})^\top p_{l+1}``, with
``∂E/∂θ_{l,j} = (1/(LMn)) Σ_i ∇_θ [p_{l+1,i}^\top f(X_{l,i}, θ_{l,j})]``; so
``LM ∂E/∂θ_{l,j}`` is the particle velocity ``∇_θ δE/δρ(θ_{l,j}, t_l)`` up to ``O(1/L)``
(``p_{l+1}`` for ``p(t_l)``), and mean-field particle GD ``θ ← θ − η LM ∇_θ E`` is the forward
Euler scheme of the flow with a step that depends on neither ``L`` nor ``M``.

**Training schemes from the continuous model** (the paper's exact procedures were not
available to us; these are derived here):

* ``"plain"``: mean-field GD on the discrete ResNet in its fixed block order.
* ``"shuffle"`` (block-order switching): every step runs the blocks in a fresh random order.
  In the continuous model the order of blocks is the depth coordinate of the particles; a
  depth-independent measure ``ρ(θ, t) = ν(θ)`` gives the same ODE under any reordering, and the
  residual network is then close to the shallow ensemble the paper's analysis compares it
  with. Random switching trains toward such order-robust measures.
* ``"refine"`` (coarse-to-fine in depth): train a depth-``L/2^r`` network, then re-discretize
  the same piecewise-constant-in-depth measure on a twice finer grid (each block duplicated,
  which changes the output by ``O(1/L)`` only), and continue. Early steps are cheaper.

Cost is counted in block passes (one forward+backward of one block on the data set).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from valleys._checks import positive_real
from valleys._records import record_to_dict
from valleys.errors import ArgumentValueError

__all__ = [
    "SCHEMES",
    "DepthProfile",
    "ResNetParams",
    "TrainingRun",
    "continuous_adjoint",
    "continuous_gradient",
    "discrete_adjoint",
    "embed",
    "ode_forward",
    "order_sensitivity",
    "particle_velocity",
    "permute_blocks",
    "refine_depth",
    "resnet_forward",
    "resnet_loss",
    "train_resnet",
]


def _act(name: str):
    if name == "tanh":
        return torch.tanh, lambda z: 1 - torch.tanh(z) ** 2
    if name == "relu":
        return torch.relu, lambda z: (z > 0).to(z.dtype)
    raise ArgumentValueError(f"unknown activation {name!r}; choose 'tanh' or 'relu'")


@dataclass(frozen=True)
class ResNetParams:
    """Particles of a depth-``L``, ``M``-neurons-per-block ResNet.

    Attributes:
        A: output weights ``a_{l,j}``, shape ``(L, M, D)``.
        W: input weights ``w_{l,j}``, shape ``(L, M, D)``.
        B: biases ``b_{l,j}``, shape ``(L, M)``.
    """

    A: torch.Tensor
    W: torch.Tensor
    B: torch.Tensor

    def __post_init__(self) -> None:
        if self.A.ndim != 3 or self.W.shape != self.A.shape or self.B.shape != self.A.shape[:2]:
            raise ArgumentValueError(
                "expected A, W of shape (L, M, D) and B of shape (L, M); got "
                f"{tuple(self.A.shape)}, {tuple(self.W.shape)}, {tuple(self.B.shape)}")

    @property
    def depth(self) -> int:
        return self.A.shape[0]

    @property
    def width(self) -> int:
        return self.A.shape[1]

    @property
    def dim(self) -> int:
        return self.A.shape[2]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.A, self.W, self.B

    @staticmethod
    def random(depth: int, width: int, dim: int, *, scale: float = 1.0,
               generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64,
               device: torch.device | str | None = None) -> ResNetParams:
        """I.i.d. ``N(0, scale²)`` entries for ``a, w`` (``w`` divided by ``sqrt(D)``), ``b``."""
        def draw(*shape):
            return torch.randn(*shape, generator=generator, dtype=dtype, device=device)
        return ResNetParams(scale * draw(depth, width, dim),
                            scale * draw(depth, width, dim) / math.sqrt(dim),
                            scale * draw(depth, width))


def embed(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``X(0) = (x, 0)``: pad the inputs ``(n, d)`` with zeros to ``(n, dim)``."""
    if x.ndim != 2 or x.shape[1] > dim:
        raise ArgumentValueError(f"inputs must be (n, d) with d <= {dim}; got {tuple(x.shape)}")
    return torch.cat([x, x.new_zeros(x.shape[0], dim - x.shape[1])], dim=1)


def _field(X, A, W, B, sigma):
    """``(1/M) Σ_j a_j σ(w_jᵀX + b_j)`` for a slice ``A, W (M, D), B (M,)`` and states ``X``."""
    return sigma(X @ W.T + B) @ A / A.shape[0]


def resnet_forward(X0: torch.Tensor, params: ResNetParams, *, activation: str = "tanh",
                   order: torch.Tensor | None = None,
                   return_states: bool = False) -> torch.Tensor:
    """Forward Euler: ``X_{l+1} = X_l + (1/(LM)) Σ_j a_{l,j} σ(w_{l,j}ᵀX_l + b_{l,j})``.

    Args:
        X0: embedded inputs ``(n, D)``.
        params: the particles.
        order: optional permutation of ``range(L)``: the blocks run in this order.
        return_states: return all ``X_0..X_L`` as ``(L+1, n, D)`` instead of ``X_L``.
    """
    sigma, _ = _act(activation)
    if X0.ndim != 2 or X0.shape[1] != params.dim:
        raise ArgumentValueError(f"X0 must be (n, {params.dim}); got {tuple(X0.shape)}")
    L = params.depth
    blocks = range(L) if order is None else [int(i) for i in order]
    X, states = X0, [X0]
    for l in blocks:
        X = X + _field(X, params.A[l], params.W[l], params.B[l], sigma) / L
        states.append(X)
    return torch.stack(states) if return_states else X


def resnet_loss(X0: torch.Tensor, Y: torch.Tensor, params: ResNetParams, head: torch.Tensor, *,
                activation: str = "tanh", order: torch.Tensor | None = None) -> torch.Tensor:
    """``E = (1/n) Σ_i ½‖Hᵀ X_{L,i} − y_i‖²`` (``Y`` of shape ``(n, k)``, ``H`` ``(D, k)``)."""
    r = resnet_forward(X0, params, activation=activation, order=order) @ head - Y
    return 0.5 * (r * r).sum(1).mean()


def _slice_grads(X, P, A, W, B, sigma, dsigma):
    """``(1/n) Σ_i ∇_θ [p_iᵀ a σ(wᵀX_i + b)]`` for every particle of a slice, and ``∂_XFᵀp``."""
    n = X.shape[0]
    z = X @ W.T + B
    s, ds = sigma(z), dsigma(z)
    coeff = ds * (P @ A.T)                      # σ'(z_ij) a_jᵀp_i, (n, M)
    grad_a = s.T @ P / n
    grad_w = coeff.T @ X / n
    grad_b = coeff.mean(0)
    back = coeff @ W / A.shape[0]               # ∂_X Fᵀ p, (n, D)
    return grad_a, grad_w, grad_b, back


def discrete_adjoint(X0: torch.Tensor, Y: torch.Tensor, params: ResNetParams,
                     head: torch.Tensor, *, activation: str = "tanh",
                     order: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, ResNetParams]:
    """Loss and gradient ``∂E/∂θ`` by the hand-written discrete adjoint (no autograd).

    With blocks run in ``order`` (default ``0..L−1``) the gradient is still indexed by block.
    """
    sigma, dsigma = _act(activation)
    L, M = params.depth, params.width
    states = resnet_forward(X0, params, activation=activation, order=order, return_states=True)
    r = states[-1] @ head - Y
    loss = 0.5 * (r * r).sum(1).mean()
    P = r @ head.T
    blocks = list(range(L)) if order is None else [int(i) for i in order]
    gA, gW, gB = (torch.zeros_like(t) for t in params.tensors())
    for pos in reversed(range(L)):
        l = blocks[pos]
        ga, gw, gb, back = _slice_grads(states[pos], P, params.A[l], params.W[l], params.B[l],
                                        sigma, dsigma)
        gA[l], gW[l], gB[l] = ga / (L * M), gw / (L * M), gb / (L * M)
        P = P + back / L
    return loss, ResNetParams(gA, gW, gB)


def particle_velocity(X0: torch.Tensor, Y: torch.Tensor, params: ResNetParams,
                      head: torch.Tensor, *, activation: str = "tanh",
                      order: torch.Tensor | None = None) -> tuple[torch.Tensor, ResNetParams]:
    """Mean-field particle velocity ``LM ∂E/∂θ_{l,j} ≈ ∇_θ δE/δρ(θ_{l,j}, t_l)``."""
    loss, g = discrete_adjoint(X0, Y, params, head, activation=activation, order=order)
    c = params.depth * params.width
    return loss, ResNetParams(c * g.A, c * g.W, c * g.B)


# ------------------------------------------------------------------------------------------------
# The continuous-depth model
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DepthProfile:
    r"""A measure over (θ, depth) with ``M`` particles per slice moving smoothly in depth.

    ``θ_j(t) = Σ_k c_{k,j} cos(π k t)`` for ``k = 0..K−1``; ``A, W`` have shape ``(K, M, D)``
    and ``B`` ``(K, M)`` (the cosine coefficients of ``a_j(t)``, ``w_j(t)``, ``b_j(t)``).
    """

    A: torch.Tensor
    W: torch.Tensor
    B: torch.Tensor

    def __post_init__(self) -> None:
        ResNetParams(self.A, self.W, self.B)  # same shape rules

    def basis(self, t: torch.Tensor) -> torch.Tensor:
        """``cos(π k t)``, shape ``(len(t), K)``."""
        k = torch.arange(self.A.shape[0], dtype=self.A.dtype, device=self.A.device)
        return torch.cos(math.pi * t.to(self.A)[:, None] * k)

    def at(self, t: torch.Tensor) -> ResNetParams:
        """The particles at depths ``t`` (1-D tensor), as a ``ResNetParams`` of depth len(t)."""
        phi = self.basis(t)
        return ResNetParams(torch.einsum("tk,kmd->tmd", phi, self.A),
                            torch.einsum("tk,kmd->tmd", phi, self.W),
                            torch.einsum("tk,km->tm", phi, self.B))

    def discretize(self, depth: int) -> ResNetParams:
        """The ``L``-block ResNet of this measure: block ``l`` holds the slice ``t_l = l/L``."""
        if depth < 1:
            raise ArgumentValueError(f"depth must be >= 1, got {depth}")
        t = torch.arange(depth, dtype=self.A.dtype, device=self.A.device) / depth
        return self.at(t)

    @staticmethod
    def random(modes: int, width: int, dim: int, *, scale: float = 1.0,
               generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64,
               device: torch.device | str | None = None) -> DepthProfile:
        """Gaussian coefficients with variance ``scale²/(1+k)²`` (smooth in depth)."""
        decay = 1.0 / (1.0 + torch.arange(modes, dtype=dtype, device=device))
        p = ResNetParams.random(modes, width, dim, scale=scale, generator=generator, dtype=dtype,
                                device=device)
        return DepthProfile(p.A * decay[:, None, None], p.W * decay[:, None, None],
                            p.B * decay[:, None])


def _rk4(state, k, h, rhs):
    """One classical RK4 step of size ``h`` from half-step index ``k`` (``t = k·|h|/2``)."""
    d = 1 if h > 0 else -1
    k1 = rhs(state, k)
    k2 = rhs([s + h / 2 * g for s, g in zip(state, k1, strict=True)], k + d)
    k3 = rhs([s + h / 2 * g for s, g in zip(state, k2, strict=True)], k + d)
    k4 = rhs([s + h * g for s, g in zip(state, k3, strict=True)], k + 2 * d)
    return [s + h / 6 * (a + 2 * b + 2 * c + e)
            for s, a, b, c, e in zip(state, k1, k2, k3, k4, strict=True)]


def _half_grid(profile: DepthProfile, steps: int) -> ResNetParams:
    """The slices at ``t = k/(2·steps)``, ``k = 0..2·steps`` (all RK4 stages need)."""
    if steps < 1:
        raise ArgumentValueError(f"steps must be >= 1, got {steps}")
    t = torch.arange(2 * steps + 1, dtype=profile.A.dtype, device=profile.A.device)
    return profile.at(t / (2 * steps))


def ode_forward(X0: torch.Tensor, profile: DepthProfile, *, steps: int = 256,
                activation: str = "tanh") -> torch.Tensor:
    """``X(1)`` of ``dX/dt = F(X, t)`` by classical RK4 with ``steps`` steps (error O(h⁴))."""
    sigma, _ = _act(activation)
    grid = _half_grid(profile, steps)

    def rhs(state, k):
        return [_field(state[0], grid.A[k], grid.W[k], grid.B[k], sigma)]

    X, h = [X0], 1.0 / steps
    for i in range(steps):
        X = _rk4(X, 2 * i, h, rhs)
    return X[0]


def continuous_adjoint(X0: torch.Tensor, Y: torch.Tensor, profile: DepthProfile,
                       head: torch.Tensor, *, steps: int = 256, activation: str = "tanh"
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Solve the forward ODE, then the adjoint ODE backward (augmented with ``X``), by RK4.

    Returns:
        ``(t, X, P)``: the grid ``t_i = i/steps`` and ``X(t_i)``, ``p(t_i)`` of shape
        ``(steps+1, n, D)``. The backward sweep integrates ``(X, p)`` from ``t = 1`` with
        ``dX/dt = F``, ``dp/dt = −∂_X Fᵀ p`` (the adjoint-sensitivity method).
    """
    sigma, dsigma = _act(activation)
    grid = _half_grid(profile, steps)
    X1 = ode_forward(X0, profile, steps=steps, activation=activation)
    P1 = (X1 @ head - Y) @ head.T

    def rhs(state, k):
        X, P = state
        A, W, B = grid.A[k], grid.W[k], grid.B[k]
        back = (dsigma(X @ W.T + B) * (P @ A.T)) @ W / A.shape[0]
        return [_field(X, A, W, B, sigma), -back]

    h = 1.0 / steps
    state, Xs, Ps = [X1, P1], [X1], [P1]
    for i in range(steps, 0, -1):
        state = _rk4(state, 2 * i, -h, rhs)
        Xs.append(state[0])
        Ps.append(state[1])
    t = torch.arange(steps + 1, dtype=X0.dtype, device=X0.device) / steps
    return t, torch.stack(Xs[::-1]), torch.stack(Ps[::-1])


def continuous_gradient(X0: torch.Tensor, Y: torch.Tensor, profile: DepthProfile,
                        head: torch.Tensor, *, steps: int = 256, activation: str = "tanh"
                        ) -> tuple[torch.Tensor, ResNetParams, DepthProfile]:
    """``∇_θ δE/δρ(θ_j(t_i), t_i)`` on the grid, and ``dE/dc`` for the profile coefficients.

    ``dE/dc_{k,j} = (1/M) ∫₀¹ ∇_θ δE/δρ(θ_j(t), t) cos(πkt) dt`` by Simpson's rule on the RK4
    grid (``steps`` even), accurate to ``O(steps⁻⁴)``.

    Returns:
        ``(t, velocity, dE_dc)`` with the velocity as a ``ResNetParams`` of depth ``steps+1``.
    """
    if steps % 2:
        raise ArgumentValueError(f"steps must be even (Simpson's rule), got {steps}")
    sigma, dsigma = _act(activation)
    t, Xs, Ps = continuous_adjoint(X0, Y, profile, head, steps=steps, activation=activation)
    slices = profile.at(t)
    parts = [_slice_grads(Xs[i], Ps[i], slices.A[i], slices.W[i], slices.B[i], sigma,
                          dsigma)[:3] for i in range(steps + 1)]
    vel = ResNetParams(*(torch.stack([p[c] for p in parts]) for c in range(3)))
    w = torch.ones(steps + 1, dtype=t.dtype, device=t.device)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    w = w / (3 * steps) / profile.A.shape[1]
    phi = profile.basis(t) * w[:, None]
    dE = DepthProfile(torch.einsum("tk,tmd->kmd", phi, vel.A),
                      torch.einsum("tk,tmd->kmd", phi, vel.W),
                      torch.einsum("tk,tm->km", phi, vel.B))
    return t, vel, dE


# ------------------------------------------------------------------------------------------------
# Training schemes
# ------------------------------------------------------------------------------------------------


def permute_blocks(params: ResNetParams, order: torch.Tensor) -> ResNetParams:
    """The blocks rearranged: block ``i`` of the result is block ``order[i]``."""
    return ResNetParams(params.A[order], params.W[order], params.B[order])


def refine_depth(params: ResNetParams, factor: int = 2) -> ResNetParams:
    """Re-discretize the piecewise-constant-in-depth measure on a ``factor`` times finer grid.

    Each block is repeated ``factor`` times; with the ``1/L`` scaling the network changes by
    ``O(1/L)`` only (the same ODE, finer Euler steps).
    """
    if factor < 1:
        raise ArgumentValueError(f"factor must be >= 1, got {factor}")
    return ResNetParams(*(t.repeat_interleave(factor, dim=0) for t in params.tensors()))


def order_sensitivity(X0: torch.Tensor, Y: torch.Tensor, params: ResNetParams,
                      head: torch.Tensor, *, permutations: int = 8, activation: str = "tanh",
                      generator: torch.Generator | None = None) -> float:
    """Mean loss over random block orders minus the loss in the trained order."""
    base = float(resnet_loss(X0, Y, params, head, activation=activation))
    losses = [float(resnet_loss(X0, Y, params, head, activation=activation,
                                order=_permutation(params.depth, generator)))
              for _ in range(permutations)]
    return sum(losses) / max(len(losses), 1) - base


@dataclass(frozen=True)
class TrainingRun:
    """One training run of a scheme.

    Attributes:
        scheme: ``"plain"``, ``"shuffle"`` or ``"refine"``.
        cost: cumulative block passes after each step.
        train_loss: training loss (natural block order) after each step, plus the start.
        final_depth: depth of the trained network.
        diverged: whether the loss became non-finite (training stopped there).
    """

    scheme: str
    cost: list[int]
    train_loss: list[float]
    final_depth: int
    diverged: bool

    def to_dict(self) -> dict:
        return record_to_dict(self)


SCHEMES = ("plain", "shuffle", "refine")


def train_resnet(X0: torch.Tensor, Y: torch.Tensor, params: ResNetParams, head: torch.Tensor,
                 lr: float, budget: int, *, scheme: str = "plain", activation: str = "tanh",
                 refinements: int = 2, generator: torch.Generator | None = None,
                 progress=None) -> tuple[ResNetParams, TrainingRun]:
    """Mean-field GD ``θ ← θ − η ∇_θ δE/δρ`` under one scheme, until ``budget`` block passes.

    Args:
        params: the initial particles of the *final* depth ``L``. For ``"refine"`` the start
            is the coarse network of every ``2^refinements``-th block (the same measure on a
            coarser grid); the budget is split equally between the ``refinements+1`` depths.
        budget: total cost in block passes (a step of a depth-``L`` network costs ``L``).
        progress: an optional callable invoked once per step (e.g. a tqdm ``update``).
    """
    if scheme not in SCHEMES:
        raise ArgumentValueError(f"unknown scheme {scheme!r}; choose one of {SCHEMES}")
    positive_real(lr, "lr")
    if budget < 1:
        raise ArgumentValueError(f"budget must be >= 1 (block passes), got {budget!r}")
    L = params.depth
    if scheme == "refine":
        stride = 2**refinements
        if L % stride:
            raise ArgumentValueError(f"depth {L} is not divisible by 2^refinements = {stride}")
        params = ResNetParams(*(t[::stride] for t in params.tensors()))
        phases = [(budget // (refinements + 1) if i < refinements else None)
                  for i in range(refinements + 1)]
    else:
        phases = [None]
    cost, losses, spent, diverged = [], [], 0, False
    losses.append(float(resnet_loss(X0, Y, params, head, activation=activation)))
    cost.append(0)
    for p, phase_budget in enumerate(phases):
        if p > 0:
            params = refine_depth(params, 2)
        limit = budget if phase_budget is None else spent + phase_budget
        while spent + params.depth <= limit:
            order = (_permutation(params.depth, generator)
                     if scheme == "shuffle" else None)
            _, vel = particle_velocity(X0, Y, params, head, activation=activation, order=order)
            params = ResNetParams(*(t - lr * g for t, g in zip(params.tensors(), vel.tensors(),
                                                               strict=True)))
            spent += params.depth
            loss = float(resnet_loss(X0, Y, params, head, activation=activation))
            cost.append(spent)
            losses.append(loss)
            if progress is not None:
                progress()
            if not math.isfinite(loss):
                diverged = True
                break
        if diverged:
            break
    return params, TrainingRun(scheme, cost, losses, params.depth, diverged)


def _permutation(n: int, generator: torch.Generator | None) -> torch.Tensor:
    """A random block order, drawn on the generator's device (CUDA generators draw there)."""
    device = generator.device if generator is not None else None
    return torch.randperm(n, generator=generator, device=device)
