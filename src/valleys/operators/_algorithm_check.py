"""Choosing a per-sample algorithm by checking it against double backward (private).

The per-sample curvature operators (the Hessian and GGN variances, the exact stability test)
have fast ``torch.func`` compositions (``vmap`` of ``jvp`` of ``grad``, ...) that are wrong for
some layers (LayerNorm's forward-mode and batching rules treat its statistics as constants). So
each candidate is run once on a few samples and kept only if it agrees with plain double
backward, the reference; :func:`first_agreeing` does that and :func:`warn_rejected` says once
why a faster candidate was passed over.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from valleys.objective import Objective

__all__ = [
    "CHECK_SAMPLES",
    "first_agreeing",
    "first_samples",
    "hessian_vector_product",
    "probe_vectors",
    "relative_mismatch",
    "sample_gradient_graph",
    "transform_failure_cause",
    "warn_rejected",
]

# Samples on which a vectorized per-sample algorithm is compared with double backward.
CHECK_SAMPLES = 3


def sample_gradient_graph(
    objective: Objective, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(leaf, ∇ℓ_i(leaf))`` for one sample by plain autograd, with the graph kept."""
    leaf = theta.detach().requires_grad_(True)
    with torch.enable_grad():
        g = torch.autograd.grad(objective.sample_loss(leaf, x, y), leaf, create_graph=True)[0]
    return leaf, g


def hessian_vector_product(
    leaf: torch.Tensor, g: torch.Tensor, w: torch.Tensor, *, retain_graph: bool = True
) -> torch.Tensor:
    """``H_i w = ∇_θ ⟨∇ℓ_i, w⟩``: one backward pass through the graph of ``g = ∇ℓ_i``."""
    if not g.requires_grad:  # ℓ_i is at most linear in θ
        return torch.zeros_like(w)
    out = torch.autograd.grad(g, leaf, w, retain_graph=retain_graph, allow_unused=True)[0]
    return torch.zeros_like(w) if out is None else out


def first_samples(objective: Objective, k: int) -> tuple[Any, Any]:
    """The first ``k`` samples of the first chunk, or ``(None, None)`` for an empty shard."""
    for X, Y in objective.chunks():
        return X[:k], Y[:k]
    return None, None


def probe_vectors(objective: Objective, k: int) -> torch.Tensor:
    """``k`` fixed random vectors of ``θ``'s size (the same on every rank and every run)."""
    gen = torch.Generator().manual_seed(15)
    V = torch.randn(k, objective.dim, generator=gen, dtype=torch.float64)
    return V.to(objective.device, objective.dtype)


def relative_mismatch(result: Any, reference: Any) -> float:
    """``max ‖a − b‖ / (‖a‖ + ‖b‖)`` over matching tensors of two (tuples of) tensors."""
    pairs = zip(result, reference, strict=True) if isinstance(reference, tuple) else [
        (result, reference)
    ]
    worst = 0.0
    for a, b in pairs:
        a, b = a.detach(), b.detach()
        scale = float(a.norm() + b.norm())
        error = float((a - b).norm())
        worst = max(worst, error / scale if scale > 0 else error)
    return worst


def first_agreeing(
    objective: Objective,
    candidates: Sequence[tuple[str, Callable[[], object]]],
    reference: Any,
    samples: int,
) -> tuple[str | None, list[tuple[str, str]]]:
    """The first candidate whose result matches ``reference`` on every rank, and the rejected.

    A candidate is a thunk computing on the checked samples what ``reference`` holds. It is
    rejected when it raises (``vmap`` cannot trace ``.item()``, an op lacks a rule) or differs by
    more than ``sqrt(eps)`` relative: both sides agree to rounding when the transforms are
    right, and a wrong rule misses whole terms. Returns ``(None, rejected)`` if none agrees.
    """
    tol = torch.finfo(objective.dtype).eps ** 0.5
    rejected: list[tuple[str, str]] = []
    for name, run in candidates:
        problem = None
        if samples:
            try:
                result = run()
            except (RuntimeError, NotImplementedError) as error:
                message = str(error).strip().splitlines()[0] if str(error).strip() else ""
                problem = f"raised {type(error).__name__}: {message[:160]}"
            else:
                mismatch = relative_mismatch(result, reference)
                if not mismatch <= tol:  # also NaN
                    problem = (
                        f"differ from double backward by {mismatch:.1e} (relative) on "
                        f"{samples} samples"
                    )
        if objective.all_ranks(problem is None):
            return name, rejected
        rejected.append((name, problem or "failed the check on another rank"))
    return None, rejected


def transform_failure_cause(model: nn.Module) -> str:
    """The likely cause of a ``torch.func`` composition disagreeing with double backward."""
    norms = [repr(name or "(model)") for name, m in model.named_modules()
             if isinstance(m, nn.LayerNorm)]
    if norms:
        listed = ", ".join(norms[:3]) + (", ..." if len(norms) > 3 else "")
        return (
            f"the model has nn.LayerNorm {listed}; torch's forward-mode rule for layer_norm and "
            "functorch's batching rule for its backward use the saved mean and 1/std as "
            "constants, so derivatives composed through them miss terms"
        )
    return (
        "some operation's forward-mode or batching rule is not differentiable as composed "
        "here (a torch.func limitation; double backward is unaffected)"
    )


def warn_rejected(what: str, rejected: list[tuple[str, str]], chosen: str,
                  model: nn.Module) -> str:
    """Warn (once per caller's check) that faster algorithms were rejected; return the reason."""
    reason = "; ".join(f"{name} {problem}" for name, problem in rejected)
    if any("differ from double backward" in problem for _, problem in rejected):
        reason += f". Likely cause: {transform_failure_cause(model)}"
    warnings.warn(
        f"{what}: {reason}. Using {chosen!r} instead (exact, slower).",
        RuntimeWarning,
        stacklevel=3,
    )
    return reason
