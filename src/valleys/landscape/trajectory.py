r"""The loss landscape around a training trajectory, on the plane of its principal directions.

Li et al., "Visualizing the loss landscape of neural nets" (NeurIPS 2018, Sec. 7): random
directions are nearly orthogonal to a trajectory in high dimension, so a trajectory is drawn on
the plane spanned by the first two principal components of ``M = [θ_0 − θ_T; …; θ_{T−1} − θ_T]``
(the iterates relative to the final one). With the thin SVD ``M = U S Vᵀ`` the directions are
``d_1, d_2 = V[:, 0], V[:, 1]`` (orthonormal in parameter space), the iterate ``θ_t`` projects to
``(⟨θ_t − θ_T, d_1⟩, ⟨θ_t − θ_T, d_2⟩)`` and ``S_k² / Σ S²`` is the share of the trajectory's
variance each direction explains (Li et al. report it on the axes). The loss on the plane is
evaluated in batches by :func:`~valleys.landscape.loss_on_plane`.

The iterates come as flat parameter vectors (e.g. recorded by a training callback), as
``state_dict`` s, or as paths of checkpoint files holding ``state_dict`` s.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from valleys._checks import integer
from valleys._records import record_to_dict
from valleys.errors import ArgumentTypeError, ArgumentValueError
from valleys.landscape.evaluate import PlaneScan, loss_on_plane
from valleys.objective import Objective

__all__ = ["TrajectoryPlane", "plot_trajectory_plane", "trajectory_plane"]


@dataclass(frozen=True)
class TrajectoryPlane:
    """A trajectory projected on its principal plane, with the loss on that plane.

    Attributes:
        directions: ``(2, p)`` orthonormal principal directions ``d_1, d_2``.
        coordinates: ``(T + 1, 2)`` projections of the iterates (the last one is ``(0, 0)``).
        explained_variance: ``(2,)`` share of the trajectory's variance along ``d_1, d_2``.
        scan: the loss on the grid around ``θ_T`` (:class:`~valleys.landscape.PlaneScan`).
        residual: ``(T + 1,)`` distance of each iterate from the plane (what the picture hides).
    """

    directions: torch.Tensor
    coordinates: torch.Tensor
    explained_variance: torch.Tensor
    scan: PlaneScan
    residual: torch.Tensor

    def to_dict(self) -> dict[str, Any]:
        return record_to_dict(self)


def _as_vectors(objective: Objective, iterates: object) -> torch.Tensor:
    if isinstance(iterates, torch.Tensor):
        if iterates.ndim != 2 or iterates.shape[1] != objective.dim:
            raise ArgumentValueError(
                f"iterates must have shape (T, {objective.dim}) (one flat θ per row), got "
                f"{tuple(iterates.shape)}")
        return iterates.to(objective.device, objective.dtype)
    if not isinstance(iterates, Sequence) or isinstance(iterates, str | bytes):
        raise ArgumentTypeError(
            "iterates must be a (T, p) tensor or a sequence of flat θ vectors, state_dicts or "
            f"checkpoint paths, got {type(iterates).__name__}")
    rows = []
    for index, item in enumerate(iterates):
        if isinstance(item, str | os.PathLike):
            item = torch.load(item, map_location="cpu", weights_only=True)
        if isinstance(item, dict):
            missing = [n for n in objective.names if n not in item]
            if missing:
                raise ArgumentValueError(
                    f"iterate {index}: the state_dict lacks parameters {missing[:3]} of the "
                    "objective")
            item = objective.flatten({n: item[n] for n in objective.names})
        if not isinstance(item, torch.Tensor) or item.shape != (objective.dim,):
            raise ArgumentValueError(
                f"iterate {index} must be a flat θ of {objective.dim} entries, a state_dict or a "
                "checkpoint path")
        rows.append(item.to(objective.device, objective.dtype))
    return torch.stack(rows)


def trajectory_plane(
    objective: Objective,
    iterates: torch.Tensor | Sequence[Any],
    *,
    points: int = 25,
    margin: float = 0.25,
    method: str = "vmap",
    points_per_chunk: int = 128,
) -> TrajectoryPlane:
    """Project ``iterates`` (``θ_0 … θ_T``, at least 3) on their first two principal directions
    and evaluate ``L`` on a ``points × points`` grid covering the projection plus ``margin``
    (a fraction of its extent) on each side, centred on the final iterate.

    ``method``: ``"vmap"`` (batched) or ``"loop"`` (for losses ``vmap`` cannot batch, such as
    ones that differentiate inside).
    """
    if not isinstance(objective, Objective):
        raise ArgumentTypeError(
            f"objective must be a valleys.Objective, got {type(objective).__name__}")
    points = integer(points, "points", minimum=2)
    if not isinstance(margin, int | float) or isinstance(margin, bool) or not margin >= 0:
        raise ArgumentValueError(f"margin must be a number >= 0, got {margin!r}")
    thetas = _as_vectors(objective, iterates)
    if thetas.shape[0] < 3:
        raise ArgumentValueError(
            f"a trajectory plane needs at least 3 iterates, got {thetas.shape[0]}")
    final = thetas[-1]
    M = (thetas[:-1] - final).double()
    _, S, Vh = torch.linalg.svd(M, full_matrices=False)
    if S.numel() < 2 or float(S[1]) <= 1e-12 * float(S[0]):
        raise ArgumentValueError(
            "the trajectory spans fewer than two directions (all iterates on a line), so it "
            "has no principal plane; use loss_along_line instead")
    directions = Vh[:2].to(objective.dtype)
    relative = (thetas - final).double()
    coordinates = relative @ Vh[:2].T
    residual = torch.linalg.vector_norm(relative - coordinates @ Vh[:2], dim=1)
    explained = (S[:2] ** 2) / (S**2).sum()
    low, high = coordinates.min(0).values, coordinates.max(0).values
    pad = margin * (high - low)
    grids = [torch.linspace(float(low[i] - pad[i]), float(high[i] + pad[i]), points,
                            dtype=torch.float64) for i in range(2)]
    scan = loss_on_plane(objective, directions[0], directions[1], grids[0], grids[1],
                         theta=final, method=method, points_per_chunk=points_per_chunk)
    return TrajectoryPlane(directions.detach(), coordinates.cpu(), explained.cpu(), scan,
                           residual.cpu())


def plot_trajectory_plane(plane: TrajectoryPlane, *, levels: int = 30) -> Any:
    """Loss contours on the principal plane with the trajectory drawn on top (Li et al. Fig. 9)."""
    import matplotlib.pyplot as plt  # deferred: plotting is optional for the numbers

    fig, ax = plt.subplots(figsize=(5, 4.2))
    A, B = torch.meshgrid(plane.scan.alphas, plane.scan.betas, indexing="ij")
    contour = ax.contour(A.numpy(), B.numpy(), plane.scan.losses.numpy(), levels=levels)
    ax.clabel(contour, fontsize=6)
    xy = plane.coordinates.numpy()
    ax.plot(xy[:, 0], xy[:, 1], "-o", color="tab:red", markersize=2, linewidth=1)
    ax.plot(xy[-1, 0], xy[-1, 1], "*", color="black", markersize=9)
    ev = plane.explained_variance.tolist()
    ax.set_xlabel(f"1st principal direction ({100 * ev[0]:.1f}% of variance)")
    ax.set_ylabel(f"2nd principal direction ({100 * ev[1]:.1f}%)")
    fig.tight_layout()
    return fig
