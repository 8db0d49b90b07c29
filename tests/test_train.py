"""The training loop against closed-form gradient descent, divergence as data, seeds."""

from __future__ import annotations

import pytest
import torch
from conftest import make_data, make_model
from torch import nn

import valleys
from valleys.train import TrainConfig, train


def least_squares(n=30, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(n, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(d, 1, bias=False).double()
    nn.init.zeros_(model.weight)
    return valleys.Objective(model, "mse", (X, y)), X, y


def test_gradient_descent_matches_the_closed_form_iteration():
    obj, X, y = least_squares()
    H, b = X.T @ X / len(X), (X.T @ y / len(X)).squeeze(1)
    theta = torch.zeros(4, dtype=torch.float64)
    for _ in range(25):
        theta = theta - 0.1 * (H @ theta - b)
    result = train(obj, lr=0.1, steps=25, record_every=5)
    assert result.status == "max_steps" and result.steps == 25
    assert torch.allclose(result.theta, theta, atol=1e-13)
    assert [r["step"] for r in result.records] == [0, 5, 10, 15, 20, 25]
    losses = [r["loss"] for r in result.records]
    assert losses == sorted(losses, reverse=True)


def test_divergence_above_two_over_sharpness_is_recorded_not_raised():
    obj, X, _ = least_squares()
    top = torch.linalg.eigvalsh(X.T @ X / len(X))[-1].item()
    stable = train(obj, lr=1.9 / top, steps=300, record_every=50)
    assert stable.status == "max_steps"
    blown = train(obj, lr=2.2 / top, steps=5000, record_every=50)
    assert blown.status == "diverged" and blown.steps < 5000


def test_loss_goal_stops_early():
    obj, _, _ = least_squares()
    start = float(obj.loss())
    result = train(obj, lr=0.5, steps=10_000, loss_goal=0.9 * start, record_every=1)
    assert result.status == "converged" and result.final_loss <= 0.9 * start
    assert result.steps < 10_000


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "adam", "rmsprop"])
@pytest.mark.parametrize("sampling", ["subset", "replacement", "shuffle"])
def test_minibatch_runs_are_reproducible(optimizer, sampling):
    X, Y = make_data("ce", n=40)
    obj = valleys.Objective(make_model("mlp-tanh"), "ce", (X, Y))
    cfg = TrainConfig(optimizer=optimizer, lr=0.05, steps=30, batch_size=8, sampling=sampling,
                      seed=3, record_every=10)
    a, b = train(obj, cfg), train(obj, cfg)
    assert torch.equal(a.theta, b.theta)
    c = train(obj, cfg, seed=4)
    assert not torch.equal(a.theta, c.theta)
    assert a.records[-1]["accuracy"] >= 0
    assert a.records[-1]["loss"] < a.records[0]["loss"]


def test_training_leaves_the_model_alone_and_callbacks_record():
    X, Y = make_data("ce", n=20)
    model = make_model("mlp-tanh")
    obj = valleys.Objective(model, "ce", (X, Y))
    before = obj.parameters_vector()
    seen = []

    def log_norm(step, theta):
        seen.append(step)
        return {"norm": float(theta.norm())}

    result = train(obj, lr=0.1, steps=20, record_every=10, callbacks=[log_norm])
    assert torch.equal(obj.parameters_vector(), before)
    assert seen == [0, 10, 20] and "norm" in result.records[-1]
    assert result.to_dataframe().shape[0] == 3


def test_bad_training_arguments():
    obj, _, _ = least_squares()
    for bad, match in [
        ({"lr": 0.0}, "learning rate"),
        ({"lr": -1.0}, "learning rate"),
        ({"lr": float("nan")}, "learning rate"),
        ({"optimizer": "lbfgs"}, "unknown optimizer"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 31}, "batch_size"),
        ({"sampling": "stratified", "batch_size": 4}, "sampling"),
        ({"steps": -1}, "steps"),
        ({"momentum": 1.0}, "momentum"),
    ]:
        with pytest.raises(ValueError, match=match):
            train(obj, **bad)
    batches = [(obj.batch(torch.arange(10)))]
    iterable = valleys.Objective(nn.Linear(4, 1, bias=False).double(), "mse", batches)
    with pytest.raises(ValueError, match="pair of tensors"):
        train(iterable, batch_size=2)
