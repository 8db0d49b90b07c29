"""The Monte-Carlo Fisher: the Fisher information with labels sampled from the model itself."""

from __future__ import annotations

import numpy as np
import torch

from valleys._checks import integer, seed_value
from valleys.errors import ArgumentValueError
from valleys.objective import Objective
from valleys.operators._curvature import CurvatureOperator, vjp_rows
from valleys.operators._registry import register_curvature

__all__ = ["MCFisherOperator", "mc_fisher"]

# Losses whose predictive distribution is known: ℓ is its negative log-likelihood (up to a
# constant), so labels can be sampled from it.
LOSSES = ("ce", "mse")


class MCFisherOperator(CurvatureOperator):
    r"""Monte-Carlo estimate of the Fisher information matrix,

    .. math::  \hat F = \frac1n \sum_{i=1}^n \frac1S \sum_{s=1}^S g_{is} g_{is}^\top, \qquad
               g_{is} = ∇_θ\, ℓ\big(f(x_i; θ), \tilde y_{is}\big),

    with ``S`` labels ``ỹ_is`` per sample drawn from the model's predictive distribution:
    ``ỹ ~ Categorical(softmax f(x_i))`` for ``"ce"`` and ``ỹ ~ N(f(x_i), I)`` for ``"mse"``
    (``ℓ = ½‖f − y‖²`` is that Gaussian's negative log-likelihood up to a constant). The
    objective's own targets are not used. Writing ``g_is = J_iᵀ r_is`` with
    ``r_is = ∇_f ℓ(f_i, ỹ_is)``, the labels enter only through ``E[r rᵀ]``, which is the loss
    Hessian ``Λ_i`` in the outputs: ``E[(p − e_ỹ)(p − e_ỹ)ᵀ] = diag(p) − ppᵀ`` for ``"ce"`` and
    ``E[εεᵀ] = I`` for ``"mse"``. So the expectation over the labels is exactly the generalized
    Gauss–Newton matrix, ``E[F̂] = G`` (:class:`~valleys.operators.GGNOperator`), for both
    losses; for ``"ce"`` with soft targets of total mass ``m ≠ 1`` the GGN is scaled by ``m``
    and ``F̂`` is not. Unlike the empirical Fisher (the same sum at the data's labels) it is an
    unbiased estimate of the Fisher away from a perfect fit (Martens, "New insights and
    perspectives on the natural gradient method", JMLR 2020; Kunstner, Balles & Hennig,
    "Limitations of the empirical Fisher approximation for natural gradient descent",
    NeurIPS 2019).

    A product is ``F̂v = (1/n) Σ_i J_iᵀ M_i J_i v`` with the rank-``S`` matrices
    ``M_i = (1/S) Σ_s r_is r_isᵀ``: one Jacobian product ``Jv`` (double-vjp trick, as for the
    GGN), a contraction with the residuals and one transposed product per chunk. The residuals
    ``r_is`` come from autograd through the objective's own loss function, so they carry its
    normalization whatever it is.

    The labels of chunk ``c`` on process ``rank`` are drawn on the CPU from a generator seeded
    with ``(seed, rank, c)``: a fixed seed gives the same operator with or without cached chunks
    and on every device, and different seeds give independent draws.

    Args:
        objective: the empirical risk; its loss must be ``"ce"`` or ``"mse"``.
        theta: parameters (default: the model's current ones, copied).
        samples: labels ``S`` drawn per data point (``>= 1``).
        seed: seed of the labels.
        cache: keep each chunk's graph and residuals between products (default: one chunk only).
    """

    def __init__(
        self,
        objective: Objective,
        theta: torch.Tensor | None = None,
        *,
        samples: int = 1,
        seed: int = 0,
        cache: bool | None = None,
    ) -> None:
        super().__init__(objective, theta, cache=cache)
        if objective.loss_name not in LOSSES:
            raise ArgumentValueError(
                f"mc_fisher samples labels from the model's predictive distribution, known for "
                f"the losses {LOSSES}; got loss {objective.loss_name!r} (use empirical_fisher or "
                "ggn for other losses)")
        self.samples = integer(samples, "samples", minimum=1)
        self.seed = seed_value(seed)

    def _generator(self, index: int) -> torch.Generator:
        # SeedSequence mixes (seed, rank, chunk) into a well-spread 64-bit seed, so neighbouring
        # seeds or chunks do not give correlated streams.
        mixed = np.random.SeedSequence([self.seed % 2**64, self.objective.rank, index])
        return torch.Generator().manual_seed(int(mixed.generate_state(1, dtype=np.uint64)[0]))

    def _targets(self, index: int, outputs: torch.Tensor) -> torch.Tensor:
        """Labels ``ỹ`` for the chunk's (detached) outputs: ``(S, b)`` or ``(S, *outputs)``."""
        gen = self._generator(index)
        S = self.samples
        if self.objective.loss_name == "ce":
            # Inverse-CDF sampling from uniforms drawn on the CPU (device-independent draws).
            u = torch.rand(S, outputs.shape[0], generator=gen, dtype=torch.float64)
            cdf = torch.softmax(outputs, dim=-1).cumsum(-1)
            labels = (cdf.unsqueeze(0) <= u.to(outputs).unsqueeze(-1)).sum(-1)
            return labels.clamp_max(outputs.shape[-1] - 1)  # cdf[-1] may round below u
        noise = torch.randn(S, *outputs.shape, generator=gen, dtype=torch.float64)
        return outputs.unsqueeze(0) + noise.to(outputs)

    def _residuals(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``r_is = ∇_f ℓ(f_i, ỹ_is)``, shape ``(S, b, K)`` with ``K`` the flat output size."""
        S, b = self.samples, outputs.shape[0]
        f = outputs.detach().unsqueeze(0).expand(S, *outputs.shape)
        f = f.reshape(S * b, *outputs.shape[1:]).clone().requires_grad_(True)
        with torch.enable_grad():
            loss = self.objective.loss_fn(f, targets.reshape(S * b, *targets.shape[2:])).sum()
            r = torch.autograd.grad(loss, f)[0]
        return r.reshape(S, b, -1)

    def sampled_targets(self) -> list[torch.Tensor]:
        """The labels ``ỹ`` of this process's chunks, in chunk order: class indices of shape
        ``(S, b)`` for ``"ce"``, targets of shape ``(S, b, *outputs)`` for ``"mse"``."""
        with torch.no_grad():
            return [self._targets(index, self.objective.forward(self.theta, X))
                    for index, (X, _) in enumerate(self.objective.chunks())]

    def _prepare_chunk(self, index: int, X: torch.Tensor, Y: torch.Tensor,
                       ) -> tuple[torch.Tensor, ...]:
        leaf = self._leaf()
        out = self.objective.forward(leaf, X)
        dual = torch.zeros_like(out, requires_grad=True)
        jt_dual = torch.autograd.grad(out, leaf, dual, create_graph=True)[0]
        outputs = out.detach()
        R = self._residuals(outputs, self._targets(index, outputs))
        return leaf, out, dual, jt_dual, R

    def _apply(self, state: tuple[torch.Tensor, ...], V: torch.Tensor) -> torch.Tensor:
        leaf, out, dual, jt_dual, R = state
        k, b = V.shape[0], out.shape[0]
        JV = vjp_rows(jt_dual, dual, V)  # (k, b, outputs...) = J v for each row v
        c = torch.einsum("sbo,kbo->ksb", R, JV.reshape(k, b, -1))  # r_isᵀ J_i v
        W = torch.einsum("ksb,sbo->kbo", c, R) / (self.samples * self.objective.n)
        return vjp_rows(out, leaf, W.reshape(JV.shape))


@register_curvature(MCFisherOperator)
def mc_fisher(
    objective: Objective,
    theta: torch.Tensor | None = None,
    *,
    samples: int = 1,
    seed: int = 0,
    cache: bool | None = None,
) -> MCFisherOperator:
    """The Monte-Carlo Fisher ``(1/n) Σ_i (1/S) Σ_s g_is g_isᵀ`` at sampled labels (see
    :class:`MCFisherOperator`); its expectation is the GGN."""
    return MCFisherOperator(objective, theta, samples=samples, seed=seed, cache=cache)
