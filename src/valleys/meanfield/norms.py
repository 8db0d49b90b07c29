r"""Path and Barron-type norms of two-layer ReLU nets, and the generalization bounds they give.

For ``f(x) = Σ_j c_j a_j σ(w_jᵀx)`` write it in mean-field form ``f = (1/m) Σ_j ã_j σ(w_jᵀx)``
with ``ã_j = m c_j a_j`` (``c_j = 1/m`` mean-field, ``1/sqrt(m)`` NTK). Then (E, Ma & Wu,
"A priori estimates of the population risk for two-layer neural networks", CMS 2019):

* **path norm** ``‖θ‖_P = (1/m) Σ_j |ã_j| ‖w_j‖_1``;
* **Barron-type norm estimate** ``‖θ‖_{B,p} = ((1/m) Σ_j (|ã_j| ‖w_j‖_1)^p)^{1/p}``: the
  ``B_p`` norm of the particle measure, an upper bound on the Barron norm ``‖f‖_{B_p}`` (an
  infimum over all measures representing ``f``). ``p = 1`` is the path norm;
  ``‖·‖_{B,1} ≤ ‖·‖_{B,2}``.

Both are invariant under the ReLU rescaling ``(a_j, w_j) → (a_j/κ_j, κ_j w_j)``, ``κ_j > 0``.

**Bounds** (our derivation along the proof strategy of E–Ma–Wu; the constants are ours, not
copied from the paper). Inputs satisfy ``‖x‖_∞ ≤ x_max`` (augment with a constant 1 for biases;
``d`` counts that column), labels ``|y| ≤ y_max``.

1. *Rademacher complexity.* For ``F_Q = {f : ‖θ‖_P ≤ Q}``, ``f`` is a convex combination of
   ``±Q σ(uᵀx)`` with ``‖u‖_1 ≤ 1`` (homogeneity), so by the Ledoux–Talagrand contraction
   (σ is 1-Lipschitz, σ(0) = 0; factor 2 for the symmetric class) and Massart's lemma on the
   ``2d`` vertices of the ℓ1 ball: ``Rad_n(F_Q) ≤ 2 Q x_max sqrt(2 log(2d)/n)``.
2. *A posteriori bound* (:func:`a_posteriori_bound`). On ``F_Q``, ``|f| ≤ Q x_max``, so the loss
   ``½(f − y)²`` is ``L = (Q x_max + y_max)``-Lipschitz in ``f`` and bounded by
   ``B = ½ L²``. With probability ``≥ 1 − δ``, for every ``θ ∈ F_Q`` (``Q`` fixed in advance):
   ``R(θ) ≤ R̂_n(θ) + 2 L Rad_n(F_Q) + B sqrt(log(1/δ)/(2n))``.
3. *A priori bound* (:func:`a_priori_bound`). If the target has a Barron representation with
   ``B_2`` norm ``β`` (so ``B_1 ≤ β``), a Monte-Carlo sample of ``m`` neurons from it has
   expected excess risk ``≤ β² x_max²/(2m)`` (Maurey) and path norm about ``β``; a
   minimizer of the empirical risk over ``F_{2β}`` then has, with probability ``≥ 1 − δ``,
   ``R ≤ β² x_max²/(2m) + 2 · 2 L Rad_n(F_{2β}) + 2 B sqrt(log(2/δ)/(2n))`` with
   ``L = 2β x_max + y_max``: the ``1/m + sqrt(log(d)/n)`` rates of E–Ma–Wu's theorem. It is
   evaluated on a trained net by plugging the net's own ``‖θ‖_{B,2}`` for ``β``.
"""

from __future__ import annotations

import math

import torch

from valleys.errors import ArgumentValueError

__all__ = ["a_posteriori_bound", "a_priori_bound", "barron_norm", "path_norm", "rademacher_bound"]


def _mean_field_output_weights(a: torch.Tensor, scaling: str) -> torch.Tensor:
    m = a.shape[0]
    if scaling == "mean-field":
        return a
    if scaling == "ntk":
        return a * math.sqrt(m)
    raise ArgumentValueError(f"unknown scaling {scaling!r}; choose 'mean-field' or 'ntk'")


def barron_norm(a: torch.Tensor, W: torch.Tensor, *, p: float = 2.0,
                scaling: str = "mean-field") -> float:
    """``((1/m) Σ_j (|ã_j| ‖w_j‖_1)^p)^{1/p}`` (see the module docstring)."""
    if a.ndim != 1 or W.ndim != 2 or W.shape[0] != a.shape[0]:
        raise ArgumentValueError("need a of shape (m,) and W of shape (m, d)")
    if not p >= 1:
        raise ArgumentValueError(f"p must be >= 1, got {p}")
    paths = _mean_field_output_weights(a, scaling).abs() * W.abs().sum(dim=1)
    return float(paths.pow(p).mean().pow(1.0 / p))


def path_norm(a: torch.Tensor, W: torch.Tensor, *, scaling: str = "mean-field") -> float:
    """``‖θ‖_P = (1/m) Σ_j |ã_j| ‖w_j‖_1`` (E–Ma–Wu 2019)."""
    return barron_norm(a, W, p=1.0, scaling=scaling)


def rademacher_bound(Q: float, n: int, d: int, *, x_max: float = 1.0) -> float:
    """``2 Q x_max sqrt(2 log(2d)/n)``: Rademacher complexity of path-norm ball ``F_Q``."""
    if n < 1 or d < 1 or Q < 0:
        raise ArgumentValueError("need n >= 1, d >= 1, Q >= 0")
    return 2.0 * Q * x_max * math.sqrt(2.0 * math.log(2 * d) / n)


def a_posteriori_bound(train_risk: float, Q: float, n: int, d: int, *, x_max: float = 1.0,
                       y_max: float = 1.0, delta: float = 0.05) -> float:
    """``R̂_n + 2 L Rad_n(F_Q) + B sqrt(log(1/δ)/(2n))`` (``L = Q x_max + y_max``, ``B = L²/2``)."""
    if not 0 < delta < 1:
        raise ArgumentValueError(f"delta must be in (0, 1), got {delta}")
    lip = Q * x_max + y_max
    return (train_risk + 2 * lip * rademacher_bound(Q, n, d, x_max=x_max)
            + 0.5 * lip**2 * math.sqrt(math.log(1 / delta) / (2 * n)))


def a_priori_bound(beta: float, m: int, n: int, d: int, *, x_max: float = 1.0,
                   y_max: float = 1.0, delta: float = 0.05) -> dict[str, float]:
    """The a priori bound of item 3 of the module docstring, term by term.

    Returns ``approximation`` (``β² x_max²/(2m)``), ``estimation``
    (``4 L Rad_n(F_{2β})``), ``confidence`` (``2B sqrt(log(2/δ)/(2n))``) and their ``total``.
    """
    if m < 1 or not 0 < delta < 1:
        raise ArgumentValueError("need m >= 1 and 0 < delta < 1")
    lip = 2 * beta * x_max + y_max
    terms = {
        "approximation": beta**2 * x_max**2 / (2 * m),
        "estimation": 4 * lip * rademacher_bound(2 * beta, n, d, x_max=x_max),
        "confidence": lip**2 * math.sqrt(math.log(2 / delta) / (2 * n)),
    }
    terms["total"] = sum(terms.values())
    return terms
