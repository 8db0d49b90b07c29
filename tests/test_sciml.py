"""valleys.sciml: exact solutions against independent oracles, PINN objectives' Hessians against
dense float64 Hessians, samplers and argument checks.

Oracles (docs/sciml.md, with sources and tags): the Burgers point values and the shock slope
``min_t u_x(0, t) = −152.00516`` at ``t = 0.51047``; an independent adaptive quadrature
(scipy.integrate.quad) of the Cole–Hopf integrals; the heat-equation limit for large ν;
Kovasznay's λ values, point values and residuals; the manufactured Poisson solution and its Ritz
energy ``−π²/4``; a dense Hessian of the loss by ``torch.autograd.functional.hessian``.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy.integrate import quad
from torch.func import functional_call

import valleys
from valleys import sciml
from valleys.errors import ArgumentValueError

NU = 0.01 / math.pi
F64 = torch.float64


# -- Burgers -----------------------------------------------------------------------------------

@pytest.mark.parametrize("x, t, ref", [
    (0.50, 0.25, -0.8031984208), (0.01, 0.50, -0.8980496423), (0.05, 0.75, -0.8379392966),
    (-0.02, 0.99, 0.7113546568), (0.50, 0.99, -0.3789962898),
])
def test_burgers_point_values(x, t, ref):
    assert float(sciml.burgers_exact(x, t, NU)) == pytest.approx(ref, abs=1e-9)


def test_burgers_small_viscosity_is_stable():
    # Gauss-Hermite with 60 nodes gives -0.9844 here; the correct value is -0.80457
    value = float(sciml.burgers_exact(0.3, 0.5, 1e-4))
    assert math.isfinite(value) and value == pytest.approx(-0.80457, abs=1e-4)


def _cole_hopf_quad(x: float, t: float, nu: float) -> float:
    """The Cole–Hopf quotient by adaptive quadrature in η, independent of the package."""
    def exponent(e):
        return -math.cos(math.pi * (x - e)) / (2 * math.pi * nu) - e * e / (4 * nu * t)
    shift = max(exponent(e) for e in torch.linspace(-4, 4, 4001).tolist())
    half = math.sqrt(4 * nu * t * (1 / (math.pi * nu) + 60))
    kw = {"epsabs": 0, "epsrel": 1e-13, "limit": 400}
    num = quad(lambda e: math.sin(math.pi * (x - e)) * math.exp(exponent(e) - shift),
               -half, half, **kw)[0]
    den = quad(lambda e: math.exp(exponent(e) - shift), -half, half, **kw)[0]
    return -num / den


@pytest.mark.filterwarnings("ignore::scipy.integrate.IntegrationWarning")
@pytest.mark.parametrize("nu", [NU, 0.05, 1.0])
def test_burgers_matches_an_independent_quadrature(nu):
    for x, t in [(0.3, 0.4), (-0.7, 0.1), (0.05, 0.9)]:
        assert float(sciml.burgers_exact(x, t, nu)) == pytest.approx(
            _cole_hopf_quad(x, t, nu), abs=1e-10)


def test_burgers_initial_and_boundary_conditions():
    x = torch.linspace(-1, 1, 41, dtype=F64)
    torch.testing.assert_close(sciml.burgers_exact(x, 0.0, NU), -torch.sin(math.pi * x))
    torch.testing.assert_close(sciml.burgers_exact(x, 1e-9, NU), -torch.sin(math.pi * x),
                               atol=1e-6, rtol=0)
    t = torch.linspace(0.05, 1.0, 20, dtype=F64)
    for edge in (-1.0, 0.0, 1.0):  # u(±1, t) = 0 and, by odd symmetry, u(0, t) = 0
        assert sciml.burgers_exact(torch.full_like(t, edge), t, NU).abs().max() < 1e-12


def test_burgers_shock_slope():
    t = torch.linspace(0.505, 0.515, 201, dtype=F64)
    x = torch.zeros_like(t, requires_grad=True)
    u_x = torch.autograd.grad(sciml.burgers_exact(x, t, NU).sum(), x)[0]
    i = int(u_x.argmin())
    assert float(u_x[i]) == pytest.approx(-152.005162, rel=1e-6)
    assert float(t[i]) == pytest.approx(0.510470, abs=1e-4)


def _derivatives(x, t, nu):
    x, t = x.clone().requires_grad_(True), t.clone().requires_grad_(True)
    u = sciml.burgers_exact(x, t, nu)
    u_x, u_t = torch.autograd.grad(u.sum(), (x, t), create_graph=True)
    u_xx = torch.autograd.grad(u_x.sum(), x)[0]
    return u.detach(), u_x.detach(), u_t.detach(), u_xx


def test_burgers_satisfies_the_pde():
    gen = torch.Generator().manual_seed(0)
    x = 2 * torch.rand(200, generator=gen, dtype=F64) - 1
    t = 0.05 + 0.95 * torch.rand(200, generator=gen, dtype=F64)
    u, u_x, u_t, u_xx = _derivatives(x, t, NU)  # autograd through the quadrature
    scale = u_t.abs() + (u * u_x).abs() + NU * u_xx.abs()
    assert ((u_t + u * u_x - NU * u_xx).abs() / scale).max() < 1e-9
    # finite differences (second order) at a larger viscosity, where h = 1e-3 resolves u
    nu, h = 0.1, 1e-3
    x, t = x[:20], t[:20]
    u = sciml.burgers_exact(x, t, nu)
    up, um = sciml.burgers_exact(x + h, t, nu), sciml.burgers_exact(x - h, t, nu)
    u_t = (sciml.burgers_exact(x, t + h, nu) - sciml.burgers_exact(x, t - h, nu)) / (2 * h)
    residual = u_t + u * (up - um) / (2 * h) - nu * (up - 2 * u + um) / h**2
    assert residual.abs().max() < 1e-4


@pytest.mark.parametrize("nu", [20.0, 50.0])
def test_burgers_large_viscosity_is_the_heat_equation(nu):
    # u -> -exp(-ν π² t) sin(πx) as ν -> ∞ (nonlinearity negligible)
    x = torch.linspace(-1, 1, 21, dtype=F64)
    t = 0.01
    amplitude = math.exp(-nu * math.pi**2 * t)
    heat = -amplitude * torch.sin(math.pi * x)
    assert (sciml.burgers_exact(x, t, nu) - heat).abs().max() < 1e-3 * amplitude


# -- Kovasznay -----------------------------------------------------------------------------------

def test_kovasznay_lambda_and_values():
    for re, lam in [(20, -1.8100981200), (40, -0.9637405442), (100, -0.3932378162)]:
        assert sciml.kovasznay_lambda(re) == pytest.approx(lam, abs=1e-9)
    pts = torch.tensor([[-0.5, -0.5], [1.0, 0.25], [0.5, 1.5]], dtype=F64)
    u, v, p = sciml.kovasznay_exact(pts[:, 0], pts[:, 1], 20.0)
    torch.testing.assert_close(u, torch.tensor([3.472053, 1.0, 1.404522], dtype=F64),
                               atol=1e-6, rtol=0)
    assert float(v[0]) == pytest.approx(0.0, abs=1e-12)
    assert float(v[1]) == pytest.approx(-0.047142, abs=1e-6)
    torch.testing.assert_close(p, torch.tensor([-2.555524, 0.486611, 0.418181], dtype=F64),
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("re", [20.0, 40.0])
def test_kovasznay_satisfies_navier_stokes(re):
    pts = sciml.Box((-0.5, -0.5), (1.0, 1.5)).interior(300, seed=1)
    x = pts.clone().requires_grad_(True)
    u, v, p = sciml.kovasznay_exact(x[:, 0], x[:, 1], re)
    residuals = sciml.navier_stokes_residuals(u, v, p, x, re)
    assert residuals.abs().max() < 1e-10


# -- Poisson and Deep Ritz -----------------------------------------------------------------------

def _midpoints(m):
    g = (torch.arange(m, dtype=F64) + 0.5) / m
    X, Y = torch.meshgrid(g, g, indexing="ij")
    return torch.stack([X.reshape(-1), Y.reshape(-1)], 1)


def test_poisson_manufactured_solution_has_zero_residual():
    pts = sciml.Box((0.0, 0.0), (1.0, 1.0)).interior(200, seed=0).requires_grad_(True)
    u = sciml.poisson_exact(pts)
    g = torch.autograd.grad(u.sum(), pts, create_graph=True)[0]
    lap = sum(torch.autograd.grad(g[:, i].sum(), pts, retain_graph=True)[0][:, i]
              for i in range(2))
    assert (lap + sciml.poisson_source(pts.detach())).abs().max() < 1e-10
    edge = sciml.Box((0.0, 0.0), (1.0, 1.0)).boundary(100, seed=0)
    assert sciml.poisson_exact(edge).abs().max() < 1e-15


def test_ritz_energy_is_minimal_at_the_solution():
    interior = _midpoints(200)
    boundary = sciml.Box((0.0, 0.0), (1.0, 1.0)).boundary(400, seed=0)
    best = sciml.ritz_energy(sciml.poisson_exact, interior, boundary).detach()
    assert float(best) == pytest.approx(-math.pi**2 / 4, abs=1e-4)  # midpoint rule, O(h²)
    bumps = [lambda x: torch.sin(2 * math.pi * x[:, 0]) * torch.sin(math.pi * x[:, 1]),
             lambda x: x[:, 0] * (1 - x[:, 0]) * x[:, 1] * (1 - x[:, 1]),
             lambda x: torch.ones_like(x[:, 0])]  # the last one violates the boundary condition
    for bump in bumps:
        for eps in (0.3, 0.03, -0.03):
            energy = sciml.ritz_energy(lambda x, b=bump, e=eps: sciml.poisson_exact(x) + e * b(x),
                                       interior, boundary)
            assert float(energy.detach()) > float(best)


# -- PINN objectives and their curvature ---------------------------------------------------------

def _dense_hessian(problem, terms=None):
    """An independent oracle: the loss as a function of the flat θ, differentiated twice by
    torch.autograd.functional.hessian."""
    model = problem.model
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(flat):
        pieces = torch.split(flat, [math.prod(s) for s in shapes])
        params = {k: t.view(s) for k, t, s in zip(names, pieces, shapes, strict=True)}
        return problem.per_point(lambda x: functional_call(model, params, (x,)),
                                 problem.batch, terms).mean()

    return torch.autograd.functional.hessian(loss, theta)


def _problems():
    return {
        "burgers": sciml.BurgersPINN(sciml.mlp(2, [8], 1, seed=1), n_pde=30, n_boundary=8,
                                     n_initial=8, seed=2),
        "poisson": sciml.PoissonPINN(sciml.mlp(1, [8], 1, seed=1), dim=1, n_pde=25,
                                     n_boundary=2, seed=2),
        "ritz": sciml.PoissonPINN(sciml.mlp(2, [5], 1, seed=1), formulation="ritz", n_pde=30,
                                  n_boundary=12, seed=2, weights={"boundary": 10.0}),
        "kovasznay": sciml.KovasznayPINN(sciml.mlp(2, [5], 3, seed=1), n_pde=20, n_boundary=12,
                                         seed=2),
    }


@pytest.mark.parametrize("name", ["burgers", "poisson", "ritz", "kovasznay"])
def test_pinn_hessian_matches_a_dense_float64_hessian(name):
    problem = _problems()[name]
    H = _dense_hessian(problem)
    obj = problem.objective()
    assert float(obj.loss()) == pytest.approx(float(problem.loss().detach()), rel=1e-12)
    op = valleys.hessian(obj)
    v = torch.randn(obj.dim, dtype=F64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(op @ v, H @ v, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(op.to_dense(), H, rtol=1e-9, atol=1e-11)
    # the whole loss is the sum of its terms' objectives
    parts = sum(valleys.hessian(problem.objective(terms=(t,))) @ v for t in problem.term_names)
    torch.testing.assert_close(parts, H @ v, rtol=1e-9, atol=1e-11)
    # the extreme eigenvalues that the reproduction reads off
    exact = torch.linalg.eigvalsh(H)
    both = valleys.eigsh(op, k=2, which="both", tol=1e-8)
    assert float(both.values[0]) == pytest.approx(float(exact[-1]), rel=1e-6)
    assert float(both.values[1]) == pytest.approx(float(exact[0]), rel=1e-6, abs=1e-9)
    assert valleys.sharpness(obj, tol=1e-8) == pytest.approx(float(exact[-1]), rel=1e-6)


def test_term_weights_are_explicit():
    base = _problems()["burgers"]
    weighted = sciml.BurgersPINN(base.model, n_pde=30, n_boundary=8, n_initial=8, seed=2,
                                 weights={"pde": 0.1, "initial": 5.0})
    assert weighted.weights == {"pde": 0.1, "boundary": 1.0, "initial": 5.0}
    terms = base.term_losses()
    expected = 0.1 * terms["pde"] + terms["boundary"] + 5.0 * terms["initial"]
    assert float(weighted.objective().loss()) == pytest.approx(expected, rel=1e-12)
    assert float(weighted.objective(terms=("pde",)).loss()) == pytest.approx(
        0.1 * terms["pde"], rel=1e-12)


def test_relative_l2_of_the_exact_solution_is_zero():
    problem = sciml.BurgersPINN(sciml.mlp(2, [4], 1), n_pde=10, n_boundary=4, n_initial=4,
                                test_grid=(21, 5))

    class Exact(torch.nn.Module):
        def forward(self, x):
            return sciml.burgers_exact(x[:, 0], x[:, 1], NU)[:, None]

    problem.model = Exact()
    assert problem.relative_l2() < 1e-15
    assert sciml.relative_l2(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 2.0])) == (
        pytest.approx(1 / math.sqrt(5)))
    assert sciml.relative_l2(torch.zeros(3), torch.ones(3)) == pytest.approx(1.0)


# -- samplers and bad inputs ---------------------------------------------------------------------

@pytest.mark.parametrize("method", ["uniform", "latin"])
def test_samplers_are_seeded(method):
    box = sciml.Box((-1.0, 0.0), (1.0, 1.0))
    a = box.interior(50, seed=3, method=method)
    assert torch.equal(a, box.interior(50, seed=3, method=method))
    assert not torch.equal(a, box.interior(50, seed=4, method=method))
    assert ((a >= torch.tensor(box.lower)) & (a <= torch.tensor(box.upper))).all()
    b = box.boundary(30, seed=3, method=method)
    assert torch.equal(b, box.boundary(30, seed=3, method=method))
    on_edge = (b[:, 0].abs() == 1) | (b[:, 1] == 0) | (b[:, 1] == 1)
    assert b.shape == (30, 2) and on_edge.all()
    p1 = sciml.BurgersPINN(sciml.mlp(2, [4], 1), n_pde=20, n_boundary=4, n_initial=4, seed=5)
    p2 = sciml.BurgersPINN(sciml.mlp(2, [4], 1), n_pde=20, n_boundary=4, n_initial=4, seed=5)
    assert all(torch.equal(p1.batch[k], p2.batch[k]) for k in p1.batch)


def test_latin_hypercube_fills_every_stratum():
    pts = sciml.Box((0.0, 0.0, 0.0), (1.0, 2.0, 4.0)).interior(16, seed=0, method="latin")
    for axis, width in enumerate((1.0, 2.0, 4.0)):
        strata = torch.floor(pts[:, axis] / width * 16).long()
        assert sorted(strata.tolist()) == list(range(16))


@pytest.mark.parametrize("call, match", [
    (lambda: sciml.Box((0.0, 1.0), (0.0, 2.0)), "zero or negative width"),
    (lambda: sciml.Box((0.0,), (1.0, 2.0)), "same non-zero length"),
    (lambda: sciml.burgers_exact(0.1, 0.2, 0.0), "nu must be a positive"),
    (lambda: sciml.burgers_exact(0.1, 0.2, -1.0), "nu must be a positive"),
    (lambda: sciml.burgers_exact(0.1, -0.2, NU), "t must be finite and >= 0"),
    (lambda: sciml.BurgersPINN(sciml.mlp(2, [4], 1), nu=0), "nu must be a positive"),
    (lambda: sciml.BurgersPINN(sciml.mlp(2, [4], 1), n_pde=0), "at least one collocation"),
    (lambda: sciml.PoissonPINN(sciml.mlp(2, [4], 1), n_boundary=0), "at least one boundary"),
    (lambda: sciml.KovasznayPINN(sciml.mlp(2, [4], 3), re=-1), "re must be a positive"),
    (lambda: sciml.PoissonPINN(sciml.mlp(2, [4], 1), formulation="weak"), "formulation"),
    (lambda: sciml.BurgersPINN(sciml.mlp(2, [4], 1), n_pde=5, weights={"pde": 0}),
     "weight of 'pde'"),
    (lambda: sciml.BurgersPINN(sciml.mlp(2, [4], 1), n_pde=5, weights={"bc": 1}),
     "unknown loss terms"),
    (lambda: sciml.BurgersPINN(sciml.mlp(2, [4], 1), n_pde=5).objective(terms=("wave",)),
     "non-empty subset"),
    (lambda: sciml.relative_l2(torch.ones(3), torch.zeros(3)), "exact solution is zero"),
    (lambda: sciml.relative_l2(torch.ones(3), torch.ones(2)), "different shapes"),
    (lambda: sciml.kovasznay_lambda(0), "re must be a positive"),
])
def test_bad_inputs_raise_clearly(call, match):
    with pytest.raises(ArgumentValueError, match=match):
        call()
