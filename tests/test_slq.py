"""Stochastic Lanczos quadrature against dense spectra."""

from __future__ import annotations

import json
import math

import matplotlib
import pytest
import torch
from conftest import sym_matrix

from valleys.linalg import SpectralDensity, spectral_density
from valleys.operators._base import DenseOperator, LambdaOperator

matplotlib.use("Agg")


def smoothed(eigenvalues: torch.Tensor, grid: torch.Tensor, sigma: float) -> torch.Tensor:
    """The exact spectrum convolved with the Gaussian kernel SLQ uses."""
    z = (grid[:, None] - eigenvalues) / sigma
    return torch.exp(-0.5 * z**2).sum(1) / (len(eigenvalues) * sigma * math.sqrt(2 * math.pi))


_NOISE = torch.randn(195, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
# A Hessian-like spectrum (outliers over a bulk) and a flat one.
OUTLIERS = sym_matrix(torch.cat([torch.tensor([40.0, 25, 12, 8, 5]), 0.5 * _NOISE]), seed=3)
FLAT = sym_matrix(torch.linspace(-1.0, 2.0, 200), seed=4)


@pytest.mark.parametrize("A", [OUTLIERS, FLAT])
def test_moments_match_dense_traces(A):
    p, num_probes = A.shape[0], 20
    d = spectral_density(DenseOperator(A), num_probes=num_probes, lanczos_steps=30)
    assert d.moments(0) == pytest.approx(1.0, abs=1e-12)
    for k in range(1, 5):
        B = torch.linalg.matrix_power(A, k)
        truth = float(torch.trace(B)) / p
        # Var(vᵀBv) for v = z/sqrt(p), z Rademacher: 2 (‖B‖_F² − Σ B_ii²) / p².
        var = 2 * (float((B**2).sum()) - float((torch.diagonal(B) ** 2).sum())) / p**2
        assert abs(d.moments(k) - truth) <= 4 * math.sqrt(var / num_probes) + 1e-10, k


@pytest.mark.parametrize("A", [OUTLIERS, FLAT])
def test_density_close_to_smoothed_dense_spectrum(A):
    ev = torch.linalg.eigvalsh(A)
    sigma = 0.05 * float(ev.max() - ev.min())
    d = spectral_density(DenseOperator(A), num_probes=20, lanczos_steps=80, sigma=sigma)
    assert isinstance(d, SpectralDensity) and d.sigma == sigma and d.matvecs == 20 * 80
    assert d.nodes.shape == d.weights.shape == (20, 80)
    assert torch.trapezoid(d.density, d.grid).item() == pytest.approx(1.0, abs=1e-4)
    l1 = torch.trapezoid((d.density - smoothed(ev, d.grid, sigma)).abs(), d.grid).item()
    assert l1 < 0.1


def test_quadrature_is_exact_for_the_smooth_kernel():
    # Gauss quadrature converges exponentially for the smooth Gaussian kernel: 40 nodes give
    # the same density as the probes' exact spectral measures (m = p).
    grid = torch.linspace(-2.0, 3.0, 300, dtype=torch.float64)
    kwargs = {"num_probes": 5, "grid": grid, "sigma": 0.15}
    short = spectral_density(DenseOperator(FLAT), lanczos_steps=40, **kwargs)
    full = spectral_density(DenseOperator(FLAT), lanczos_steps=200, **kwargs)
    assert torch.allclose(short.density, full.density, atol=1e-8)
    assert torch.equal(short.grid, grid)


def test_breakdown_gives_exact_spectral_measure():
    A = sym_matrix(torch.linspace(-1.0, 1.0, 30) ** 3)
    ev = torch.linalg.eigvalsh(A)
    d = spectral_density(DenseOperator(A), num_probes=3, lanczos_steps=50)
    assert d.nodes.shape == (3, 30) and d.matvecs == 90
    assert torch.allclose(d.weights.sum(1), torch.ones(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(torch.sort(d.nodes, dim=1).values, ev.expand(3, -1), atol=1e-10)
    # Few distinct eigenvalues: early breakdown, rows padded with zero weights.
    low = spectral_density(DenseOperator(torch.eye(40, dtype=torch.float64)), num_probes=2)
    assert low.matvecs == 2 and low.weights[:, 1:].abs().max() == 0
    assert low.moments(3) == pytest.approx(1.0, abs=1e-12)
    assert torch.isfinite(low.density).all() and low.density.max() > 0


def test_seed_float32_and_serialization():
    op = DenseOperator(FLAT.float())
    a, b = spectral_density(op, num_probes=3, seed=5), spectral_density(op, num_probes=3, seed=5)
    assert torch.equal(a.density, b.density) and torch.equal(a.nodes, b.nodes)
    c = spectral_density(op, num_probes=3, seed=6)
    assert not torch.equal(a.nodes, c.nodes)
    assert a.moments(1) == pytest.approx(float(torch.trace(FLAT)) / 200, abs=0.2)
    assert a.grid.shape == a.density.shape == (1000,)
    d = a.to_dict()
    json.dumps(d, allow_nan=False)
    assert len(d["nodes"]) == 3 and len(d["density"]) == 1000


def test_plot_returns_axes():
    import matplotlib.pyplot as plt

    d = spectral_density(DenseOperator(OUTLIERS), num_probes=2, lanczos_steps=20)
    ax = d.plot()
    assert isinstance(ax, matplotlib.axes.Axes) and len(ax.lines) == 1
    _, given = plt.subplots()
    assert d.plot(ax=given, log=True, color="k") is given
    assert given.get_yscale() == "log"
    plt.close("all")


def test_bad_inputs():
    op = DenseOperator(FLAT)
    with pytest.raises(TypeError, match="LinearOperator"):
        spectral_density(FLAT)
    with pytest.raises(ValueError, match="symmetric"):
        spectral_density(DenseOperator(torch.triu(FLAT) + 1.0))
    with pytest.raises(ValueError, match="num_probes"):
        spectral_density(op, num_probes=0)
    with pytest.raises(ValueError, match="lanczos_steps"):
        spectral_density(op, lanczos_steps=0)
    for sigma in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="sigma"):
            spectral_density(op, sigma=sigma)
    with pytest.raises(ValueError, match="grid"):
        spectral_density(op, grid=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="num_points"):
        spectral_density(op, num_points=1)
    with pytest.raises(ValueError, match="moment order"):
        spectral_density(op, num_probes=1, lanczos_steps=5).moments(-1)
    nan_op = LambdaOperator(lambda v: v * float("nan"), 10, torch.float64)
    with pytest.raises(ValueError, match="NaN/inf"):
        spectral_density(nan_op)


# -- reorthogonalization for long runs ----------------------------------------------------------
@pytest.mark.parametrize("mode", ["selective", "none"])
@pytest.mark.parametrize("A", [OUTLIERS, FLAT])
def test_moments_match_dense_traces_without_full_reorthogonalization(A, mode):
    p, num_probes = A.shape[0], 20
    d = spectral_density(DenseOperator(A), num_probes=num_probes, lanczos_steps=30,
                         reorthogonalize=mode)
    assert d.reorthogonalize == mode
    for k in range(1, 5):
        B = torch.linalg.matrix_power(A, k)
        truth = float(torch.trace(B)) / p
        var = 2 * (float((B**2).sum()) - float((torch.diagonal(B) ** 2).sum())) / p**2
        assert abs(d.moments(k) - truth) <= 4 * math.sqrt(var / num_probes) + 1e-10, k


def _copies(nodes: torch.Tensor, value: float) -> torch.Tensor:
    return (nodes - value).abs() < 1e-6 * value


def test_selective_orthogonalization_keeps_the_ghosts_out_that_the_plain_recurrence_makes():
    """150 steps on p = 200 with outliers 40, 25, 12, 8, 5: the outliers converge early, and
    without reorthogonalization they come back as copies; selective orthogonalization has one
    node per outlier, as full reorthogonalization does, and the same nodes there. The copies
    share the weight a single node carries (the quadrature still describes the same measure)."""
    runs = {mode: spectral_density(DenseOperator(OUTLIERS), num_probes=1, lanczos_steps=150,
                                   reorthogonalize=mode, seed=2)
            for mode in ("full", "selective", "none")}
    nodes = {mode: d.nodes[0] for mode, d in runs.items()}
    assert int(_copies(nodes["none"], 40.0).sum()) >= 2
    for value in (40.0, 25.0, 12.0, 8.0, 5.0):
        assert int(_copies(nodes["full"], value).sum()) == 1
        assert int(_copies(nodes["selective"], value).sum()) == 1
        weight = {mode: float(runs[mode].weights[0][_copies(nodes[mode], value)].sum())
                  for mode in runs}
        assert weight["selective"] == pytest.approx(weight["full"], rel=1e-6, abs=1e-12)
        assert weight["none"] == pytest.approx(weight["full"], rel=1e-6, abs=1e-12)
    p = OUTLIERS.shape[0]
    assert runs["none"].basis_bytes == 0
    assert runs["selective"].basis_bytes == p * 150 * 8
    assert runs["full"].basis_bytes == p * 151 * 8
    far = runs["full"].nodes[0].sort().values
    near = runs["selective"].nodes[0].sort().values
    assert torch.allclose(far, near, atol=1e-7 * 40)


def test_reorthogonalize_is_checked_and_basis_device_changes_no_number():
    with pytest.raises(ValueError, match="reorthogonalize must be one of"):
        spectral_density(DenseOperator(FLAT), reorthogonalize="partial")
    here = spectral_density(DenseOperator(FLAT), num_probes=2, lanczos_steps=20)
    host = spectral_density(DenseOperator(FLAT), num_probes=2, lanczos_steps=20,
                            basis_device="cpu")
    assert torch.equal(here.density, host.density)
