r"""Training callbacks that watch the curvature: sharpness, top-k eigenvalues, preconditioning.

A callback is a function ``cb(step, θ) -> dict`` for :func:`valleys.train.train`; its entries go
into the step's record (one row of the tidy table). The callbacks here are small stateful objects:

* :class:`SharpnessTracker` computes the top-``k`` eigenvalues of the training-loss Hessian
  ``H = ∇²L(θ)``, **warm-started** from the previous evaluation's top Ritz vectors (block
  Davidson, :func:`valleys.linalg.block_eigsh`; cold starts use thick-restart Lanczos,
  :func:`valleys.linalg.eigsh`), and the projections ``⟨θ, v_i⟩`` of the iterate on
  them. With ``preconditioned=True`` it tracks ``λ_i(P⁻¹H)`` instead, through the symmetric form
  ``P^{-1/2} H P^{-1/2}`` (same spectrum), with ``P`` read from the optimizer's state at each call
  (Cohen et al., "Adaptive gradient methods at the edge of stability", arXiv 2207.14484).

Sharpness is λ_max(H), the largest *algebraic* eigenvalue (Cohen et al., ICLR 2021).
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any, cast

import torch

from valleys._checks import is_integral, is_real, relative_tolerance, seed_value
from valleys.errors import ArgumentTypeError, ArgumentValueError
from valleys.linalg import eigsh
from valleys.linalg._lanczos import block_eigsh
from valleys.objective import Objective
from valleys.operators import hessian
from valleys.operators._base import LinearOperator

if TYPE_CHECKING:
    from valleys.linalg._results import EigshResult
    from valleys.train.loop import TrainContext

__all__ = [
    "PreconditionedOperator",
    "SharpnessTracker",
    "optimizer_preconditioner",
]


class PreconditionedOperator(LinearOperator):
    r"""The symmetric form ``D A D`` of ``P⁻¹A`` with ``D = P^{-1/2}`` for a diagonal ``P > 0``.

    ``P⁻¹A = D (D A D) D⁻¹`` is similar to ``D A D``, so both have the same eigenvalues; an
    eigenvector ``u`` of ``D A D`` gives the eigenvector ``D u`` of ``P⁻¹A``.

    Args:
        op: a symmetric operator ``A``.
        diagonal: the diagonal of ``P`` (positive, finite), a flat tensor of the operator's size.
    """

    def __init__(self, op: LinearOperator, diagonal: torch.Tensor) -> None:
        if not isinstance(op, LinearOperator) or not op.symmetric:
            raise ArgumentTypeError(
                "PreconditionedOperator needs a symmetric valleys LinearOperator")
        if not isinstance(diagonal, torch.Tensor) or diagonal.shape != (op.size,):
            raise ArgumentValueError(f"the preconditioner diagonal must have shape ({op.size},)")
        if not torch.isfinite(diagonal).all() or not bool((diagonal > 0).all()):
            raise ArgumentValueError("the preconditioner diagonal must be positive and finite")
        super().__init__(op.size, op.dtype, op.device, symmetric=True)
        self.op = op
        self.scale = diagonal.to(dtype=op.dtype, device=op.device).rsqrt()

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.scale * self.op.matvec(self.scale * v)

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.scale[:, None] * self.op.matmat(self.scale[:, None] * V)


def optimizer_preconditioner(
    optimizer: torch.optim.Optimizer, param: torch.Tensor
) -> torch.Tensor | None:
    r"""The diagonal preconditioner ``P`` of an adaptive torch.optim optimizer, as it applies it.

    The update of these optimizers is ``θ ← θ − η P⁻¹ u`` for a (momentum) direction ``u``:

    * ``Adam`` / ``AdamW``: ``P = sqrt(v_t / (1 − β₂^t)) + ε`` with ``v_t`` the ``exp_avg_sq``
      state (``max_exp_avg_sq`` with ``amsgrad``), exactly torch's denominator. (Adam's other
      bias correction, ``1/(1 − β₁^t)``, scales the step size, not ``P``, and tends to 1.)
    * ``RMSprop``: ``P = sqrt(square_avg) + ε`` (``sqrt(square_avg − grad_avg²) + ε`` when
      ``centered``); torch applies no bias correction.
    * ``Adagrad``: ``P = sqrt(sum) + ε``.

    Returns ``None`` before the first step (no state yet). Raises ``TypeError`` for optimizers
    without a diagonal preconditioner (plain SGD: use the ordinary sharpness).
    """
    group = next((g for g in optimizer.param_groups if any(p is param for p in g["params"])),
                 None)
    if group is None:
        raise ArgumentValueError("param is not one of the optimizer's parameters")
    state = optimizer.state.get(param, {})
    eps = group["eps"] if "eps" in group else None
    if isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
        if "exp_avg_sq" not in state:
            return None
        t = float(state["step"])
        v = state["max_exp_avg_sq"] if group.get("amsgrad") else state["exp_avg_sq"]
        return (v / (1 - group["betas"][1] ** t)).sqrt() + eps
    if isinstance(optimizer, torch.optim.RMSprop):
        if "square_avg" not in state:
            return None
        avg = state["square_avg"]
        if group.get("centered"):
            avg = avg - state["grad_avg"] ** 2
        return avg.sqrt() + eps
    if isinstance(optimizer, torch.optim.Adagrad):
        if int(state.get("step", 0)) == 0:
            return None
        return state["sum"].sqrt() + eps
    raise ArgumentTypeError(
        f"{type(optimizer).__name__} has no diagonal preconditioner; preconditioned sharpness "
        "is defined for Adam, AdamW, RMSprop and Adagrad (use the plain sharpness for SGD)"
    )


class SharpnessTracker:
    r"""Callback: the top-``k`` Hessian eigenvalues every ``every`` steps, warm-started.

    At each evaluated step it computes the top-``k`` eigenpairs of ``H = ∇²L(θ)`` (or of
    ``P^{-1/2} H P^{-1/2}`` when ``preconditioned``) to relative residual tolerance ``tol``
    (``‖H v − λ v‖ ≤ tol·|λ|``) and records

    * ``{prefix}sharpness`` = ``λ_1`` and ``{prefix}eig_i`` = ``λ_i`` for ``i = 1..k``;
    * ``{prefix}proj_i`` = ``⟨θ, v_i⟩``, the projection of the iterate on the ``i``-th
      eigenvector (of ``H``; of ``P⁻¹H`` normalized, when preconditioned). Eigenvector signs
      are chosen to agree with the previous evaluation's so the projections are continuous;
    * ``{prefix}matvecs`` (Hessian-vector products used) and ``{prefix}converged``.

    **Warm start** (default). Between evaluations the iterate moves a little, so the previous
    top eigenvectors are close to the new ones. The previous evaluation's top ``m =
    warm_block`` Ritz vectors (default ``2k + 1``), each perturbed by ``warm_noise`` times a
    seeded random unit vector, seed a Rayleigh–Ritz basis that grows by one residual per
    product (Davidson's method without a preconditioner,
    :func:`valleys.linalg.block_eigsh`; from one vector it spans Lanczos' Krylov
    spaces). Keeping the neighbours of the top eigenvectors in the basis matters at the edge
    of stability, where many eigenvalues cluster around ``2/η`` and the top eigenvector
    rotates inside the cluster between evaluations: on the edge-of-stability reproduction the
    block of 3 took 2.1× fewer products than cold starts, against 1.7× for one warm vector
    (``BENCHMARKS.md``, issue #4). The noise keeps a start from being accepted as is when a
    previous top eigenvector has become an interior one (a crossing of eigenvalues). The first
    evaluation starts from a seeded random vector.

    **Cold start** (``warm_start=False``, the baseline): every evaluation runs thick-restart
    Lanczos (:func:`valleys.linalg.eigsh`) from a fresh random vector. :attr:`history` keeps,
    per evaluation, the step, the matvecs, the top eigenvalue and whether it was warm.

    Args:
        objective: the objective being trained (the Hessian is taken at each recorded θ).
        k: number of top eigenvalues.
        every: evaluate at steps divisible by ``every`` (other recorded steps get nothing).
        tol: relative residual tolerance of the eigensolver (see above).
        which: ``"largest"`` (algebraic; the sharpness) or ``"magnitude"``.
        warm_start: start from the previous eigenvectors (see above).
        warm_noise: size of the random perturbation of a warm start, relative to its norm.
        preconditioned: track ``λ(P⁻¹H)`` with ``P`` from the optimizer's state (needs the
            optimizer, which :func:`~valleys.train.train` passes through ``setup``; before the
            first step, when there is no state, the values are NaN).
        prefix: prefix of the record keys (default ``""``, or ``"precond_"`` when
            ``preconditioned``).
        seed: seeds the cold start vectors and the warm-start noise.
        max_matvecs: product budget per evaluation (default: the eigensolver's).
        warm_block: the number ``m`` of previous Ritz vectors that seed a warm start,
            ``k <= m < p`` (default ``None``: ``2k + 1``, capped at ``p − 1``); ``m = 1``
            (with ``k = 1``) is the single-vector warm start.
        ncv: largest basis size of the eigensolver (default: the solver's, ``m + 20`` for a
            warm start, ``max(2k + 1, 20)`` for a cold one). **Memory**: a warm start keeps the
            basis and its products, up to ``2·ncv`` vectors of size ``p`` (46 by default for
            ``k = 1``), against ``ncv`` for cold Lanczos; for very large models pass a smaller
            ``ncv`` (the basis is then restarted from its best Ritz vectors more often).
    """

    def __init__(
        self,
        objective: Objective,
        *,
        k: int = 1,
        every: int = 1,
        tol: float = 1e-3,
        which: str = "largest",
        warm_start: bool = True,
        warm_noise: float = 1e-2,
        preconditioned: bool = False,
        prefix: str | None = None,
        seed: int = 0,
        max_matvecs: int | None = None,
        warm_block: int | None = None,
        ncv: int | None = None,
    ) -> None:
        if not isinstance(objective, Objective):
            raise ArgumentTypeError(
                f"SharpnessTracker needs a valleys.Objective, got {type(objective)}")
        for name, value in (("k", k), ("every", every)):
            if not is_integral(value) or isinstance(value, bool) or value < 1:
                raise ArgumentValueError(f"{name} must be a positive integer, got {value!r}")
        if k >= objective.dim:
            raise ArgumentValueError(
                f"k must be smaller than the number of parameters {objective.dim}")
        if which not in ("largest", "magnitude"):
            raise ArgumentValueError(f"which must be 'largest' or 'magnitude', got {which!r}")
        if not (is_real(warm_noise) and 0 <= warm_noise < 1):
            raise ArgumentValueError(f"warm_noise must lie in [0, 1), got {warm_noise!r}")
        if warm_block is not None:
            if (not is_integral(warm_block) or isinstance(warm_block, bool)
                    or not k <= warm_block < objective.dim):
                raise ArgumentValueError(
                    f"warm_block must be None or an integer m with k = {k} <= m < "
                    f"{objective.dim} (the number of parameters), got {warm_block!r}")
            if not warm_start:
                raise ArgumentValueError(
                    "warm_block needs warm_start=True (it is a kind of warm start); "
                    "for the cold baseline leave warm_block=None")
            warm_block = int(warm_block)
        elif warm_start:
            warm_block = min(2 * int(k) + 1, objective.dim - 1)
        self.warm_block = warm_block
        self.objective = objective
        tol = relative_tolerance(tol)
        self.k, self.every, self.tol, self.which = int(k), int(every), tol, which
        self.warm_start, self.warm_noise = bool(warm_start), float(warm_noise)
        self.preconditioned = bool(preconditioned)
        self.prefix = ("precond_" if preconditioned else "") if prefix is None else prefix
        self.seed = seed_value(seed)
        self.max_matvecs = max_matvecs
        if ncv is not None and (not is_integral(ncv) or isinstance(ncv, bool)
                                or ncv < self.k + 2):
            raise ArgumentValueError(f"ncv must be None or an integer >= k + 2 = {self.k + 2}, got "
                                     f"{ncv!r}")
        self.ncv = None if ncv is None else int(ncv)
        self.history: list[dict[str, Any]] = []
        self._vectors: torch.Tensor | None = None
        self._block: torch.Tensor | None = None
        self._generator = torch.Generator(device=objective.device).manual_seed(self.seed)
        self._context: TrainContext | None = None

    def setup(self, context: TrainContext) -> None:
        """Receive the optimizer (called by :func:`~valleys.train.train` before step 0)."""
        self._context = context
        if self.preconditioned:
            optimizer_preconditioner(context.optimizer, context.param)  # TypeError early

    @property
    def total_matvecs(self) -> int:
        """Hessian-vector products used by all evaluations so far."""
        return sum(h["matvecs"] for h in self.history)

    def operator(self, theta: torch.Tensor) -> LinearOperator | None:
        """The operator whose top eigenvalues are tracked at ``θ`` (``None``: no state yet)."""
        H = hessian(self.objective, theta)
        if not self.preconditioned:
            return H
        if self._context is None:
            raise RuntimeError(
                "a preconditioned SharpnessTracker needs the optimizer: pass it to "
                "valleys.train.train(callbacks=[...]), or call setup(context) yourself"
            )
        P = optimizer_preconditioner(self._context.optimizer, self._context.param)
        return None if P is None else PreconditionedOperator(H, P.detach())

    def _start_block(self, op: LinearOperator) -> tuple[torch.Tensor, bool]:
        """The start block and whether it is warm: the previous top ``m`` Ritz vectors, each
        perturbed by ``warm_noise`` times a seeded random unit vector, or one seeded random
        vector."""
        if self._block is None:
            gen = torch.Generator(device=op.device).manual_seed(self.seed + len(self.history))
            return torch.randn(op.size, 1, generator=gen, dtype=op.dtype, device=op.device), False
        V0 = self._block
        if self.warm_noise > 0:
            noise = torch.randn(V0.shape, generator=self._generator, dtype=V0.dtype,
                                device=V0.device)
            V0 = V0 + self.warm_noise * noise / torch.linalg.vector_norm(noise, dim=0)
        return V0, True

    def _solve(self, op: LinearOperator) -> tuple[EigshResult, bool]:
        """One evaluation's eigenpairs and whether it was warm-started."""
        seed = self.seed + len(self.history)
        if not self.warm_start:
            result = eigsh(op, k=self.k, which=self.which, tol=self.tol, seed=seed,
                           max_matvecs=self.max_matvecs, ncv=self.ncv)
            return result, False
        V0, warm = self._start_block(op)
        result, ritz = block_eigsh(op, V0, k=self.k, which=self.which, tol=self.tol,
                                   seed=seed, max_matvecs=self.max_matvecs, ncv=self.ncv)
        self._block = ritz[:, : self.warm_block]
        return result, warm

    def __call__(self, step: int, theta: torch.Tensor) -> dict[str, Any] | None:
        if step % self.every:
            return None
        p = self.prefix
        # A diverged iterate has no curvature to measure: its row says so (divergence is data).
        op = self.operator(theta) if bool(torch.isfinite(theta).all()) else None
        if op is None:
            out: dict[str, Any] = {f"{p}sharpness": math.nan, f"{p}matvecs": 0}
            out.update({f"{p}eig_{i + 1}": math.nan for i in range(self.k)})
            return out
        with warnings.catch_warnings():
            # Non-convergence is recorded in the row ({prefix}converged), not shouted per step.
            warnings.simplefilter("ignore", RuntimeWarning)
            result, warm = self._solve(op)
        vectors = result.vectors
        if self._vectors is not None:
            # Keep signs continuous with the previous evaluation (eigenvectors are ± defined).
            signs = torch.sign((vectors * self._vectors).sum(dim=0))
            vectors = vectors * torch.where(signs == 0, torch.ones_like(signs), signs)
        self._vectors = vectors
        values = result.values.tolist()
        self.history.append({"step": step, "matvecs": result.matvecs, "value": values[0],
                             "warm": warm, "converged": result.converged})
        out = {f"{p}sharpness": values[0], f"{p}matvecs": result.matvecs,
               f"{p}converged": result.converged}
        out.update({f"{p}eig_{i + 1}": v for i, v in enumerate(values)})
        directions = vectors
        if self.preconditioned:
            # operator() returns a PreconditionedOperator (or None) when preconditioned.
            scale = cast(PreconditionedOperator, op).scale
            directions = scale[:, None] * vectors  # eigenvectors of P⁻¹H
            directions = directions / torch.linalg.vector_norm(directions, dim=0)
        projections = (directions * theta[:, None]).sum(dim=0).tolist()
        out.update({f"{p}proj_{i + 1}": v for i, v in enumerate(projections)})
        return out
