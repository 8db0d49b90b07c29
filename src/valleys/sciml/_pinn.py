r"""Physics-informed training objectives (PINNs) with exact solutions.

A :class:`PINN` problem holds a model, seeded collocation points and the weights of its loss
terms. Its loss is the weighted sum of the terms' mean squared residuals (Raissi, Perdikaris &
Karniadakis 2019, "Physics-informed neural networks", J. Comput. Phys. 378),

.. math::  L(θ) = \sum_k w_k \frac{1}{n_k} \sum_{i=1}^{n_k} r_{k}(x_{k,i}; θ)^2 ,

and :meth:`PINN.objective` gives it (or any subset of its terms) as a
:class:`valleys.Objective` on the same model, built with :meth:`valleys.Objective.from_function`:
the per-point losses of term ``k`` are scaled by ``w_k n / n_k`` (``n`` the points of the
chosen terms), so their plain mean is ``L``. Residuals hold input derivatives of the network
(``u_x``, ``u_xx`` by nested autograd with ``create_graph``), so Hessian-vector products of
these objectives differentiate through them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from valleys._checks import integer, positive_real, seed_value
from valleys.errors import ArgumentTypeError, ArgumentValueError
from valleys.objective import Objective
from valleys.sciml._burgers import burgers_exact
from valleys.sciml._kovasznay import kovasznay_exact
from valleys.sciml._poisson import (
    gradient_of,
    laplacian_of,
    poisson_exact,
    poisson_source,
)
from valleys.sciml._sampling import Box, relative_l2

__all__ = ["PINN", "BurgersPINN", "KovasznayPINN", "PoissonPINN", "mlp"]


def mlp(in_features: int, widths: Sequence[int], out_features: int = 1, *, seed: int = 0,
        activation: Callable[[], nn.Module] = nn.Tanh,
        dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """A fully connected network with Xavier-normal weights and zero biases (the PINN default),
    drawn from ``seed``; returned in eval mode."""
    in_features = integer(in_features, "in_features", minimum=1)
    out_features = integer(out_features, "out_features", minimum=1)
    widths = [integer(w, "width", minimum=1) for w in widths]
    gen = torch.Generator().manual_seed(seed_value(seed))
    layers: list[nn.Module] = []
    sizes = [in_features, *widths, out_features]
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        lin = nn.Linear(a, b, dtype=dtype)
        with torch.no_grad():
            std = math.sqrt(2.0 / (a + b))
            lin.weight.copy_(torch.randn(b, a, generator=gen, dtype=torch.float64) * std)
            lin.bias.zero_()
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers).eval()


def _derivative(u: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    return torch.autograd.grad(u.sum(), x, create_graph=True)[0][:, axis]


class PINN:
    """A physics-informed problem: a model, collocation points per term, weights, an exact
    solution.

    Subclasses define :attr:`term_names`, ``_term_losses(model, batch, terms)`` (per-point
    squared residuals of each chosen term), :meth:`exact` and the test points.

    Attributes:
        model: the network (``nn.Module``), trained in place by the caller.
        weights: ``{term: w_k}``, explicit positive weights of the terms.
        batch: ``{name: tensor}``, the collocation points and data (fixed at construction).
    """

    term_names: tuple[str, ...] = ()

    def __init__(self, model: nn.Module, batch: dict[str, torch.Tensor],
                 weights: Mapping[str, float] | None) -> None:
        if not isinstance(model, nn.Module):
            raise ArgumentTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        weights = dict(weights or {})
        unknown = set(weights) - set(self.term_names)
        if unknown:
            raise ArgumentValueError(
                f"unknown loss terms {sorted(unknown)}; this problem has {self.term_names}")
        self.weights = {k: positive_real(weights.get(k, 1.0), f"weight of {k!r}")
                        for k in self.term_names}
        param = next(model.parameters(), None)
        dtype = param.dtype if param is not None else torch.float64
        device = param.device if param is not None else torch.device("cpu")
        self.batch = {k: v.to(device=device, dtype=dtype) for k, v in batch.items()}
        self._test: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- terms ---------------------------------------------------------------------------------
    def _resolve_terms(self, terms: Iterable[str] | None) -> tuple[str, ...]:
        if terms is None:
            return self.term_names
        if isinstance(terms, str):
            terms = (terms,)
        terms = tuple(terms)
        bad = [t for t in terms if t not in self.term_names]
        if bad or not terms:
            raise ArgumentValueError(
                f"terms must be a non-empty subset of {self.term_names}, got {terms}")
        return tuple(t for t in self.term_names if t in terms)

    def _term_losses(self, model: nn.Module, batch: dict[str, torch.Tensor],
                     terms: tuple[str, ...]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def per_point(self, model: nn.Module, batch: dict[str, torch.Tensor],
                  terms: Iterable[str] | None = None) -> torch.Tensor:
        """The per-point losses whose mean is the weighted loss of ``terms`` (the ``fn`` of
        :meth:`objective`)."""
        terms = self._resolve_terms(terms)
        grad_enabled = torch.is_grad_enabled()
        with torch.enable_grad():  # the residuals differentiate the model in its inputs
            losses = self._term_losses(model, batch, terms)
        n = sum(losses[t].numel() for t in terms)
        out = torch.cat([losses[t] * (self.weights[t] * n / losses[t].numel()) for t in terms])
        return out if grad_enabled else out.detach()

    def loss(self, terms: Iterable[str] | None = None) -> torch.Tensor:
        """``Σ_k w_k mean(r_k²)`` over ``terms`` at the model's current parameters,
        differentiable (for training loops)."""
        return self.per_point(self.model, self.batch, terms).mean()

    def term_losses(self) -> dict[str, float]:
        """Each term's unweighted mean squared residual."""
        with torch.enable_grad():
            losses = self._term_losses(self.model, self.batch, self.term_names)
        return {k: float(v.detach().mean()) for k, v in losses.items()}

    def objective(self, terms: Iterable[str] | None = None) -> Objective:
        """The weighted loss of ``terms`` (default: all) as a :class:`valleys.Objective` on the
        model: ``valleys.hessian(problem.objective(terms=("pde",)))`` is the PDE term's
        Hessian."""
        terms = self._resolve_terms(terms)

        def fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            return self.per_point(model, batch, terms)

        return Objective.from_function(self.model, fn, [self.batch])

    # -- accuracy ------------------------------------------------------------------------------
    def test_points(self) -> torch.Tensor:
        raise NotImplementedError

    def exact(self, points: torch.Tensor) -> torch.Tensor:
        """The exact solution at ``points`` (shape ``(n, d)``), as the model's output layout."""
        raise NotImplementedError

    def _compare(self, prediction: torch.Tensor) -> torch.Tensor:
        return prediction

    def relative_l2(self) -> float:
        """``‖u_θ − u*‖₂ / ‖u*‖₂`` on the problem's test points (see the subclass)."""
        if self._test is None:
            with torch.no_grad():
                pts = self.test_points()
                exact = self.exact(pts)
            self._test = pts, exact
        pts, exact = self._test
        param = next(self.model.parameters(), None)
        if param is not None:
            pts = pts.to(device=param.device, dtype=param.dtype)
        with torch.no_grad():
            prediction = self._compare(self.model(pts))
        return relative_l2(prediction, self._compare(exact.to(prediction)))

    def __repr__(self) -> str:
        sizes = {k: tuple(v.shape) for k, v in self.batch.items()}
        return f"{type(self).__name__}(weights={self.weights}, batch={sizes})"


class BurgersPINN(PINN):
    r"""Viscous Burgers, ``u_t + u u_x − ν u_xx = 0`` on ``[−1, 1] × [0, 1]``,
    ``u(x, 0) = −sin(πx)``, ``u(±1, t) = 0`` (Raissi et al. 2019's benchmark, ``ν = 0.01/π``).

    Terms: ``"pde"`` (residual at ``n_pde`` interior points), ``"boundary"`` (``u(±1, t)``,
    ``n_boundary`` points), ``"initial"`` (``u(x, 0) + sin(πx)``, ``n_initial`` points). The
    model maps ``(x, t)`` (shape ``(n, 2)``) to ``u`` (shape ``(n, 1)``). The relative L2 error
    is measured on a ``256 × 100`` grid (``x`` equispaced in ``[−1, 1]``, ``t`` in
    ``[0, 0.99]``) against :func:`~valleys.sciml.burgers_exact`.
    """

    term_names = ("pde", "boundary", "initial")

    def __init__(self, model: nn.Module, *, nu: float = 0.01 / math.pi, n_pde: int = 10_000,
                 n_boundary: int = 50, n_initial: int = 50, seed: int = 0,
                 method: str = "latin", weights: Mapping[str, float] | None = None,
                 test_grid: tuple[int, int] = (256, 100)) -> None:
        self.nu = positive_real(nu, "nu", hint="the viscosity of Burgers' equation must be > 0")
        self.domain = Box((-1.0, 0.0), (1.0, 1.0))
        gen = torch.Generator().manual_seed(seed_value(seed))
        boundary = self.domain.boundary(n_boundary, gen, axes=(0,), method=method)
        initial = self.domain.face(1, 0, n_initial, gen, method=method)
        batch = {"pde": self.domain.interior(n_pde, gen, method=method), "boundary": boundary,
                 "initial": initial, "initial_values": -torch.sin(math.pi * initial[:, 0])}
        self.test_grid = test_grid
        super().__init__(model, batch, weights)

    def _term_losses(self, model, batch, terms):
        out = {}
        if "pde" in terms:
            x = batch["pde"].detach().clone().requires_grad_(True)
            u = model(x)[:, 0]
            g = torch.autograd.grad(u.sum(), x, create_graph=True)[0]
            u_x, u_t = g[:, 0], g[:, 1]
            u_xx = _derivative(u_x, x, 0)
            out["pde"] = (u_t + u * u_x - self.nu * u_xx) ** 2
        if "boundary" in terms:
            out["boundary"] = model(batch["boundary"])[:, 0] ** 2
        if "initial" in terms:
            out["initial"] = (model(batch["initial"])[:, 0] - batch["initial_values"]) ** 2
        return out

    def test_points(self) -> torch.Tensor:
        nx, nt = self.test_grid
        x = torch.linspace(-1, 1, nx, dtype=torch.float64)
        t = torch.linspace(0, 0.99, nt, dtype=torch.float64)
        X, T = torch.meshgrid(x, t, indexing="ij")
        return torch.stack([X.reshape(-1), T.reshape(-1)], dim=1)

    def exact(self, points: torch.Tensor) -> torch.Tensor:
        return burgers_exact(points[:, 0], points[:, 1], self.nu)[:, None]


class PoissonPINN(PINN):
    r"""``−Δu = f`` on ``[0, 1]^d``, ``u = 0`` on the boundary, exact ``u* = Π sin(πx_i)``.

    ``formulation="residual"``: terms ``"pde"`` (``(Δu + f)²``) and ``"boundary"`` (``u²``).
    ``formulation="ritz"`` (Deep Ritz, E & Yu 2018): terms ``"energy"`` (per point
    ``|Ω|(½|∇u|² − f u)``, not a square: the loss is an energy, not a residual) and
    ``"boundary"`` (``|∂Ω| u²``) with weight ``β`` (``weights={"boundary": β}``; E & Yu use
    500). The model maps ``(n, d)`` to ``(n, 1)``; the relative L2 error is measured on a
    uniform grid of about 10,000 points.
    """

    def __init__(self, model: nn.Module, *, dim: int = 2, formulation: str = "residual",
                 n_pde: int = 2_000, n_boundary: int = 400, seed: int = 0,
                 method: str = "uniform", weights: Mapping[str, float] | None = None) -> None:
        if formulation not in ("residual", "ritz"):
            raise ArgumentValueError(
                f"formulation must be 'residual' or 'ritz', got {formulation!r}")
        self.formulation = formulation
        self.term_names = ("pde", "boundary") if formulation == "residual" else (
            "energy", "boundary")
        self.dim = integer(dim, "dim", minimum=1)
        self.domain = Box((0.0,) * self.dim, (1.0,) * self.dim)
        gen = torch.Generator().manual_seed(seed_value(seed))
        interior = self.domain.interior(n_pde, gen, method=method)
        boundary = self.domain.boundary(n_boundary, gen, method=method)
        batch = {"pde": interior, "source": poisson_source(interior), "boundary": boundary}
        super().__init__(model, batch, weights)

    def _term_losses(self, model, batch, terms):
        out = {}
        interior = "pde" if self.formulation == "residual" else "energy"
        if interior in terms:
            x = batch["pde"].detach().clone().requires_grad_(True)
            u = model(x)[:, 0]
            if self.formulation == "residual":
                out["pde"] = (laplacian_of(u, x) + batch["source"]) ** 2
            else:
                g = gradient_of(u, x)
                out["energy"] = self.domain.volume * (0.5 * (g * g).sum(1) - batch["source"] * u)
        if "boundary" in terms:
            scale = self.domain.surface if self.formulation == "ritz" else 1.0
            out["boundary"] = scale * model(batch["boundary"])[:, 0] ** 2
        return out

    def test_points(self) -> torch.Tensor:
        m = max(2, round(10_000 ** (1 / self.dim)))
        return self.domain.grid([m] * self.dim)

    def exact(self, points: torch.Tensor) -> torch.Tensor:
        return poisson_exact(points)[:, None]


class KovasznayPINN(PINN):
    r"""Steady incompressible Navier–Stokes on Kovasznay flow (exact solution,
    :func:`~valleys.sciml.kovasznay_exact`), on ``[−0.5, 1] × [−0.5, 1.5]``, ``Re = 20``.

    The model maps ``(x, y)`` to ``(u, v, p)``. Terms: ``"pde"`` (per point the sum of the
    squared x- and y-momentum residuals ``u·∇u + ∇p − Δu/Re`` and the continuity residual
    ``∇·u``), ``"boundary"`` (per point ``(u − u*)² + (v − v*)²`` on the four sides). The
    relative L2 error is that of the velocity ``(u, v)`` on a ``101 × 101`` grid (the pressure
    is fixed only up to a constant).
    """

    term_names = ("pde", "boundary")

    def __init__(self, model: nn.Module, *, re: float = 20.0, n_pde: int = 2_000,
                 n_boundary: int = 400, seed: int = 0, method: str = "uniform",
                 lower: Sequence[float] = (-0.5, -0.5), upper: Sequence[float] = (1.0, 1.5),
                 weights: Mapping[str, float] | None = None) -> None:
        self.re = positive_real(re, "re", hint="the Reynolds number must be > 0")
        self.domain = Box(lower, upper)
        if self.domain.dim != 2:
            raise ArgumentValueError("Kovasznay flow is two-dimensional: lower/upper need 2 "
                                     "coordinates")
        gen = torch.Generator().manual_seed(seed_value(seed))
        boundary = self.domain.boundary(n_boundary, gen, method=method)
        u, v, _ = kovasznay_exact(boundary[:, 0], boundary[:, 1], self.re)
        batch = {"pde": self.domain.interior(n_pde, gen, method=method), "boundary": boundary,
                 "boundary_values": torch.stack([u, v], dim=1)}
        super().__init__(model, batch, weights)

    def residuals(self, model: nn.Module, points: torch.Tensor) -> torch.Tensor:
        """``(n, 3)``: x-momentum, y-momentum and continuity residuals at ``points``."""
        x = points.detach().clone().requires_grad_(True)
        out = model(x)
        return navier_stokes_residuals(out[:, 0], out[:, 1], out[:, 2], x, self.re)

    def _term_losses(self, model, batch, terms):
        out = {}
        if "pde" in terms:
            out["pde"] = (self.residuals(model, batch["pde"]) ** 2).sum(1)
        if "boundary" in terms:
            pred = model(batch["boundary"])[:, :2]
            out["boundary"] = ((pred - batch["boundary_values"]) ** 2).sum(1)
        return out

    def test_points(self) -> torch.Tensor:
        return self.domain.grid((101, 101))

    def exact(self, points: torch.Tensor) -> torch.Tensor:
        u, v, p = kovasznay_exact(points[:, 0], points[:, 1], self.re)
        return torch.stack([u, v, p], dim=1)

    def _compare(self, prediction: torch.Tensor) -> torch.Tensor:
        return prediction[:, :2]


def navier_stokes_residuals(u: torch.Tensor, v: torch.Tensor, p: torch.Tensor, x: torch.Tensor,
                            re: float) -> torch.Tensor:
    r"""Steady 2-D incompressible Navier–Stokes residuals of fields computed from ``x``:
    ``u u_x + v u_y + p_x − (u_xx + u_yy)/Re``, ``u v_x + v v_y + p_y − (v_xx + v_yy)/Re`` and
    ``u_x + v_y``, stacked as ``(n, 3)``."""
    gu, gv, gp = (torch.autograd.grad(f.sum(), x, create_graph=True)[0] for f in (u, v, p))
    lap_u = _derivative(gu[:, 0], x, 0) + _derivative(gu[:, 1], x, 1)
    lap_v = _derivative(gv[:, 0], x, 0) + _derivative(gv[:, 1], x, 1)
    mom_x = u * gu[:, 0] + v * gu[:, 1] + gp[:, 0] - lap_u / re
    mom_y = u * gv[:, 0] + v * gv[:, 1] + gp[:, 1] - lap_v / re
    return torch.stack([mom_x, mom_y, gu[:, 0] + gv[:, 1]], dim=1)
