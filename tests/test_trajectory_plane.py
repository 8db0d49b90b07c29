"""Trajectory planes (Li et al. 2018): PCA of the iterates against an SVD oracle, exact losses."""

import pytest
import torch
from torch import nn

import valleys
from valleys.landscape.trajectory import plot_trajectory_plane, trajectory_plane


def _objective(seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(30, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(30, 2, generator=gen, dtype=torch.float64)
    model = nn.Linear(4, 2).double()
    return valleys.Objective(model, "mse", (X, y))


def _gd(obj, steps=15, lr=0.1):
    theta = obj.parameters_vector()
    path = [theta]
    for _ in range(steps):
        theta = theta - lr * obj.gradient(theta)
        path.append(theta)
    return torch.stack(path)


def test_directions_coordinates_and_variance_match_an_svd_oracle():
    obj = _objective()
    thetas = _gd(obj)
    out = trajectory_plane(obj, thetas, points=5)
    M = (thetas[:-1] - thetas[-1]).numpy()
    import numpy as np

    _, S, Vt = np.linalg.svd(M, full_matrices=False)
    for k in range(2):  # up to sign
        d = out.directions[k].numpy()
        assert min(np.abs(d - Vt[k]).max(), np.abs(d + Vt[k]).max()) < 1e-10
    torch.testing.assert_close(out.explained_variance,
                               torch.tensor(S[:2] ** 2 / (S**2).sum()), rtol=1e-10, atol=0)
    rel = thetas - thetas[-1]
    torch.testing.assert_close(out.coordinates, rel @ out.directions.T, rtol=1e-12, atol=1e-12)
    assert out.coordinates[-1].abs().max() == 0
    # Every grid value is the loss at that point of the plane.
    for i, j in [(0, 0), (2, 3), (4, 4)]:
        point = (thetas[-1] + out.scan.alphas[i] * out.directions[0]
                 + out.scan.betas[j] * out.directions[1])
        assert float(out.scan.losses[i, j]) == pytest.approx(float(obj.loss(point)), rel=1e-12)


def test_a_planar_trajectory_has_zero_residual_and_spans_its_plane():
    obj = _objective(1)
    gen = torch.Generator().manual_seed(2)
    basis, _ = torch.linalg.qr(torch.randn(obj.dim, 2, generator=gen, dtype=torch.float64))
    t = torch.linspace(0, 1, 9, dtype=torch.float64)
    coeffs = torch.stack([torch.cos(3 * t) - 1, 0.3 * torch.sin(5 * t)], dim=1)
    thetas = obj.parameters_vector() + coeffs @ basis.T
    out = trajectory_plane(obj, thetas, points=3)
    assert float(out.residual.max()) < 1e-12
    assert float(out.explained_variance.sum()) == pytest.approx(1.0, abs=1e-12)
    projector = out.directions.T @ out.directions
    torch.testing.assert_close(projector @ basis, basis, rtol=0, atol=1e-10)


def test_state_dicts_and_checkpoint_files_give_the_same_plane(tmp_path):
    obj = _objective(3)
    thetas = _gd(obj, steps=6)
    paths, dicts = [], []
    for k, theta in enumerate(thetas):
        state = {name: value.clone() for name, value in obj.unflatten(theta).items()}
        dicts.append(state)
        paths.append(tmp_path / f"step{k}.pt")
        torch.save(state, paths[-1])
    ref = trajectory_plane(obj, thetas, points=3)
    for iterates in (dicts, paths, list(thetas)):
        out = trajectory_plane(obj, iterates, points=3)
        torch.testing.assert_close(out.coordinates, ref.coordinates, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out.scan.losses, ref.scan.losses, rtol=1e-12, atol=1e-12)


def test_a_transformer_trajectory_and_the_figure():
    from valleys.losses import next_token_losses
    from valleys.models import TinyGPT

    model = TinyGPT(12, d_model=8, n_layer=1, n_head=2, max_len=6, seed=0).double()
    ids = torch.randint(0, 12, (4, 6), generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match="math backend"):
        obj = valleys.Objective.from_function(model, next_token_losses, [{"input_ids": ids}])
    theta = obj.parameters_vector()
    path = [theta]
    for _ in range(5):
        theta = theta - 0.5 * obj.gradient(theta)
        path.append(theta)
    out = trajectory_plane(obj, path, points=4)
    assert torch.isfinite(out.scan.losses).all()
    assert float(out.scan.losses.min()) <= float(obj.loss(path[-1])) + 1e-12
    assert len(plot_trajectory_plane(out).axes) == 1


@pytest.mark.parametrize("iterates, match", [
    (torch.zeros(5, 11), r"shape \(T, 10\)"),
    ("nope", "sequence of flat"),
])
def test_bad_iterates_are_refused(iterates, match):
    with pytest.raises((TypeError, ValueError), match=match):
        trajectory_plane(_objective(), iterates)


def test_too_few_or_collinear_iterates_are_refused():
    obj = _objective()
    theta = obj.parameters_vector()
    with pytest.raises(ValueError, match="at least 3"):
        trajectory_plane(obj, [theta, theta])
    line = torch.stack([theta + s * torch.ones_like(theta) for s in (0.0, 1.0, 2.0, 3.0)])
    with pytest.raises(ValueError, match="fewer than two directions"):
        trajectory_plane(obj, line)
