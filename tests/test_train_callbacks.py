"""Instrumented training: tracked curvature against dense torch.func oracles, gradient flow
against its closed form on a quadratic, the records table, goals and TensorBoard."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from conftest import make_data, make_model
from torch import nn
from torch.func import hessian as dense_hessian

import valleys
from valleys.train import (
    FlowDistance,
    GradientFlow,
    PreconditionedOperator,
    SharpnessTracker,
    gradient_flow,
    optimizer_preconditioner,
    train,
    write_tensorboard,
)


def tiny_problem(loss: str = "mse", n: int = 13):
    X, Y = make_data(loss, n=n)
    model = make_model("mlp-tanh")  # p = 5·6 + 6 + 6·3 + 3 = 57, float64
    return valleys.Objective(model, loss, (X, Y)), X, Y


def dense_H(obj, X, Y, theta):
    return dense_hessian(lambda t: obj.chunk_losses(t, X, Y).mean())(theta)


class Snapshots:
    """A callback that keeps θ (and the optimizer's preconditioner) at every recorded step."""

    def __init__(self, preconditioner: bool = False) -> None:
        self.thetas: dict[int, torch.Tensor] = {}
        self.P: dict[int, torch.Tensor | None] = {}
        self.preconditioner = preconditioner

    def setup(self, context) -> None:
        self.context = context

    def __call__(self, step, theta):
        self.thetas[step] = theta.clone()
        if self.preconditioner:
            P = optimizer_preconditioner(self.context.optimizer, self.context.param)
            self.P[step] = None if P is None else P.clone()
        return None


def test_tracked_sharpness_and_top_k_match_the_dense_hessian():
    obj, X, Y = tiny_problem()
    tracker = SharpnessTracker(obj, k=3, every=5, tol=1e-10)
    snaps = Snapshots()
    result = train(obj, lr=0.2, steps=30, record_every=5, callbacks=[tracker, snaps])
    frame = result.to_dataframe()
    assert len(frame) == 7 and list(frame["step"]) == [0, 5, 10, 15, 20, 25, 30]
    for _, row in frame.iterrows():
        theta = snaps.thetas[int(row["step"])]
        evals, evecs = torch.linalg.eigh(dense_H(obj, X, Y, theta))
        top = evals.flip(0)[:3]
        got = torch.tensor([row["eig_1"], row["eig_2"], row["eig_3"]], dtype=torch.float64)
        assert torch.allclose(got, top, rtol=1e-7, atol=1e-9), (got, top)
        assert row["sharpness"] == row["eig_1"]
        # Projections of the iterate on the eigenvectors, up to each eigenvector's sign.
        proj = (evecs.flip(1)[:, :3] * theta[:, None]).sum(0).abs()
        got_proj = torch.tensor([row[f"proj_{i}"] for i in (1, 2, 3)]).abs()
        assert torch.allclose(got_proj.double(), proj, rtol=1e-5, atol=1e-7)
        assert row["converged"]


def test_warm_starts_save_matvecs_and_agree_with_cold_starts():
    obj, _, _ = tiny_problem()
    warm = SharpnessTracker(obj, k=1, every=1, tol=1e-6, prefix="warm_")
    cold = SharpnessTracker(obj, k=1, every=1, tol=1e-6, warm_start=False, prefix="cold_")
    result = train(obj, lr=0.1, steps=40, record_every=1, callbacks=[warm, cold])
    frame = result.to_dataframe()
    assert torch.allclose(torch.tensor(frame["warm_sharpness"].values),
                          torch.tensor(frame["cold_sharpness"].values), rtol=1e-5)
    assert [h["warm"] for h in warm.history] == [False] + [True] * 40
    assert not any(h["warm"] for h in cold.history)
    # Same tolerance, same iterates: the warm tracker needs fewer products (on this p = 57
    # toy about 25% fewer; the 2x of larger models is measured in the benchmark).
    assert warm.total_matvecs < 0.85 * cold.total_matvecs, (warm.total_matvecs,
                                                            cold.total_matvecs)
    assert int(frame["warm_matvecs"].sum()) == warm.total_matvecs


@pytest.mark.parametrize("optimizer", ["adam", "rmsprop"])
def test_preconditioned_sharpness_matches_dense_symmetric_form(optimizer):
    obj, X, Y = tiny_problem()
    tracker = SharpnessTracker(obj, k=2, every=4, tol=1e-10, preconditioned=True)
    snaps = Snapshots(preconditioner=True)
    result = train(obj, optimizer=optimizer, lr=0.01, steps=12, record_every=4,
                   callbacks=[snaps, tracker])
    first = result.records[0]
    assert math.isnan(first["precond_sharpness"])  # no second moments before the first step
    for record in result.records[1:]:
        step = record["step"]
        theta, P = snaps.thetas[step], snaps.P[step]
        H = dense_H(obj, X, Y, theta)
        d = P.rsqrt()
        sym = d[:, None] * H * d[None, :]
        top = torch.linalg.eigvalsh(sym).flip(0)[:2]
        got = torch.tensor([record["precond_eig_1"], record["precond_eig_2"]],
                           dtype=torch.float64)
        assert torch.allclose(got, top, rtol=1e-7), (got, top)
        # Same spectrum as the non-symmetric P⁻¹H.
        nonsym = torch.linalg.eigvals(H / P[:, None]).real.sort(descending=True).values[:2]
        assert torch.allclose(got, nonsym, rtol=1e-6)


def test_optimizer_preconditioner_is_the_denominator_torch_applies():
    obj, _, _ = tiny_problem()
    param = nn.Parameter(obj.parameters_vector())
    lr, betas, eps = 0.01, (0.9, 0.999), 1e-8
    adam = torch.optim.Adam([param], lr=lr, betas=betas, eps=eps)
    for t in range(1, 6):
        before = param.detach().clone()
        param.grad = obj.gradient(before)
        adam.step()
        P = optimizer_preconditioner(adam, param)
        m = adam.state[param]["exp_avg"]
        # torch's Adam step: θ_t = θ_{t−1} − η/(1 − β₁^t) · m_t / P_t.
        expected = before - lr / (1 - betas[0] ** t) * m / P
        assert torch.allclose(param.detach(), expected, rtol=1e-12, atol=1e-15)
    param2 = nn.Parameter(obj.parameters_vector())
    rms = torch.optim.RMSprop([param2], lr=lr, alpha=0.99, eps=eps)
    assert optimizer_preconditioner(rms, param2) is None
    for _ in range(3):
        before = param2.detach().clone()
        g = obj.gradient(before)
        param2.grad = g
        rms.step()
        P = optimizer_preconditioner(rms, param2)
        assert torch.allclose(param2.detach(), before - lr * g / P, rtol=1e-12, atol=1e-15)
    with pytest.raises(TypeError, match="no diagonal preconditioner"):
        optimizer_preconditioner(torch.optim.SGD([param2], lr=0.1), param2)


def test_preconditioned_operator_is_symmetric_and_checked():
    A = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    P = torch.tensor([1.0, 4.0], dtype=torch.float64)
    op = PreconditionedOperator(valleys.operators.DenseOperator(A), P)
    dense = op.to_dense()
    assert torch.allclose(dense, dense.T)
    assert torch.allclose(torch.linalg.eigvalsh(dense).sort().values,
                          torch.linalg.eigvals(A / P[:, None]).real.sort().values)
    with pytest.raises(ValueError, match="positive"):
        PreconditionedOperator(valleys.operators.DenseOperator(A), -P)


def quadratic(n: int = 40, d: int = 6, seed: int = 0):
    """Least squares ``L = (1/2n)‖Xθ − y‖²``: H = XᵀX/n, flow θ(t) = θ* + e^{−tH}(θ₀ − θ*)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    X = X * torch.linspace(0.2, 3.0, d, dtype=torch.float64)  # a spread of curvatures
    y = torch.randn(n, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, d, generator=g, dtype=torch.float64))
    obj = valleys.Objective(model, "mse", (X, y))
    H = X.T @ X / n
    star = torch.linalg.solve(H, (X.T @ y / n).squeeze(1))
    evals, U = torch.linalg.eigh(H)

    def exact(t: float) -> torch.Tensor:
        theta0 = obj.parameters_vector()
        return star + U @ (torch.exp(-t * evals) * (U.T @ (theta0 - star)))

    return obj, H, exact


@pytest.mark.parametrize(("alpha", "rtol"), [(0.1, 1e-7), (1.0, 1e-3)])
def test_gradient_flow_matches_the_matrix_exponential_on_a_quadratic(alpha, rtol):
    obj, H, exact = quadratic()
    times = [0.0, 0.05, 0.5, 2.0, 7.5]
    flow = gradient_flow(obj, times, alpha=alpha, sharpness_every=5)
    assert not flow.diverged
    for t, theta in zip(times, flow.thetas, strict=True):
        want = exact(t)
        assert torch.linalg.vector_norm(theta - want) <= rtol * torch.linalg.vector_norm(want)
    top = float(torch.linalg.eigvalsh(H)[-1])
    assert flow.sharpness[-1].item() == pytest.approx(top, rel=1e-3)
    # Steps are α/λ_max: the work matches the time span in units of 1/λ_max.
    assert flow.steps >= 7.5 * top / alpha
    assert flow.gradient_evals == 4 * flow.steps
    assert flow.to_dict()["steps"] == flow.steps and "thetas" not in flow.to_dict()


def test_gradient_descent_distance_from_flow_matches_closed_forms():
    obj, H, exact = quadratic()
    lr = 0.05
    theta0 = obj.parameters_vector()
    result = train(obj, lr=lr, steps=60, record_every=10,
                   callbacks=[FlowDistance(obj, alpha=0.1)])
    star = exact(1e9)
    for record in result.records:
        k = record["step"]
        gd = star + torch.linalg.matrix_power(torch.eye(6, dtype=torch.float64) - lr * H, k) @ (
            theta0 - star)
        want = float(torch.linalg.vector_norm(gd - exact(k * lr)))
        assert record["flow_time"] == pytest.approx(k * lr)
        assert record["flow_distance"] == pytest.approx(want, rel=1e-5, abs=1e-10)
        assert record["flow_loss"] == pytest.approx(float(obj.loss(exact(k * lr))), rel=1e-6)


def test_flow_cannot_go_back_and_max_time_stops_recording():
    obj, _, _ = quadratic()
    flow = GradientFlow(obj)
    flow.advance(1.0)
    with pytest.raises(ValueError, match="cannot go back"):
        flow.advance(0.5)
    result = train(obj, lr=0.1, steps=30, record_every=10,
                   callbacks=[FlowDistance(obj, max_time=1.5)])
    assert ["flow_distance" in r for r in result.records] == [True, True, False, False]
    with pytest.raises(ValueError, match="non-decreasing"):
        gradient_flow(obj, [1.0, 0.5])


def test_records_table_gradient_norm_path_length_and_goals():
    obj, X, Y = tiny_problem("ce", n=20)
    snaps = Snapshots()
    result = train(obj, lr=0.5, steps=20, record_every=5, callbacks=[snaps])
    frame = result.to_dataframe()
    assert {"step", "loss", "accuracy", "grad_norm", "distance", "path_length"} <= set(frame)
    for _, row in frame.iterrows():
        theta = snaps.thetas[int(row["step"])].requires_grad_(True)
        loss = obj.chunk_losses(theta, X, Y).mean()
        g = torch.autograd.grad(loss, theta)[0]
        assert row["grad_norm"] == pytest.approx(float(g.norm()), rel=1e-10)
        assert row["path_length"] >= row["distance"] - 1e-12
    assert frame["path_length"].iloc[0] == 0.0 and frame["path_length"].is_monotonic_increasing
    goal = train(obj, lr=0.5, steps=2000, record_every=5, accuracy_goal=0.9)
    assert goal.status == "converged" and goal.records[-1]["accuracy"] >= 0.9
    with pytest.raises(ValueError, match="accuracy_goal"):
        train(obj, lr=0.5, steps=5, accuracy_goal=1.5)
    reg, _, _ = quadratic()  # one output: a regression, no accuracy
    with pytest.raises(ValueError, match="classifier"):
        train(reg, lr=0.5, steps=5, accuracy_goal=0.9)


def test_tracker_arguments_are_checked():
    obj, _, _ = tiny_problem()
    for bad in ({"k": 0}, {"every": 0}, {"k": obj.dim}, {"which": "smallest"},
                {"warm_noise": 1.5}):
        with pytest.raises(ValueError):
            SharpnessTracker(obj, **bad)
    with pytest.raises(TypeError, match="no diagonal preconditioner"):
        train(obj, lr=0.1, steps=2, callbacks=[SharpnessTracker(obj, preconditioned=True)])
    with pytest.raises(RuntimeError, match="needs the optimizer"):
        SharpnessTracker(obj, preconditioned=True)(0, obj.parameters_vector())


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None,
                    reason="tensorboard is installed")
def test_tensorboard_missing_gives_a_clear_error(tmp_path):
    with pytest.raises(ImportError, match=r"valleys\[tensorboard\]"):
        write_tensorboard([{"step": 0, "loss": 1.0}], str(tmp_path))


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                    reason="tensorboard is an optional extra")
def test_tensorboard_writes_event_files(tmp_path):
    obj, _, _ = tiny_problem()
    result = train(obj, lr=0.1, steps=10, record_every=5,
                   callbacks=[SharpnessTracker(obj, every=5)])
    result.to_tensorboard(str(tmp_path))
    assert any(p.name.startswith("events.out.tfevents") for p in tmp_path.iterdir())
