"""The Monte-Carlo Fisher: its sampled labels, its determinism, and its expectation, which is
the GGN exactly for cross-entropy and for the ½‖f − y‖² square loss.

Its products at given labels are checked against a dense oracle with the test of every
registered matrix (``test_curvature_registry.py``); here the sampling is checked statistically,
with fixed seeds (so the outcome is deterministic) and thresholds of 6 standard errors over about
1600 distinct entries."""

from __future__ import annotations

import pytest
import torch
from conftest import make_data, make_model

import valleys
from valleys.operators import MCFisherOperator, mc_fisher

pytestmark = pytest.mark.usefixtures("one_thread")


def objective(loss: str, chunk_size: int | None = None) -> valleys.Objective:
    X, Y = make_data(loss)
    return valleys.Objective(make_model("mlp-tanh"), loss, (X, Y), chunk_size=chunk_size)


def z_scores(draws: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """``(mean − expected) / stderr`` per entry over the leading axis (independent draws)."""
    m = draws.shape[0]
    stderr = draws.std(0, correction=1) / m**0.5
    err = draws.mean(0) - expected
    # An entry that never varies must be exact (up to rounding).
    constant = stderr <= 1e-14 * float(expected.abs().max())
    if constant.any():
        assert float(err[constant].abs().max()) <= 1e-12 * float(expected.abs().max())
    return err[~constant] / stderr[~constant]


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_mean_over_seeds_is_the_ggn(loss):
    obj = objective(loss)
    G = valleys.ggn(obj).to_dense()
    draws = torch.stack([mc_fisher(obj, samples=8, seed=seed).to_dense() for seed in range(60)])
    z = z_scores(draws, G)
    assert z.numel() > 1000
    assert float(z.abs().max()) < 6.0
    assert 0.5 < float((z**2).mean()) < 2.0  # calibrated: not just loose
    # The test has power: the empirical Fisher (labels of the data, not of the model) fails it.
    F = valleys.empirical_fisher(obj).to_dense()
    assert float(z_scores(draws, F).abs().max()) > 6.0


def test_fixed_seed_gives_a_fixed_operator():
    obj = objective("ce", chunk_size=5)
    A = mc_fisher(obj, samples=2, seed=11)
    dense = A.to_dense()
    assert torch.equal(A.to_dense(), dense)  # products do not redraw the labels
    assert torch.equal(mc_fisher(obj, samples=2, seed=11).to_dense(), dense)
    uncached = mc_fisher(obj, samples=2, seed=11, cache=False)
    assert not uncached.cache
    assert float((uncached.to_dense() - dense).abs().max()) <= 1e-13 * float(dense.abs().max())
    assert not torch.equal(mc_fisher(obj, samples=2, seed=12).to_dense(), dense)
    labels = A.sampled_targets()
    assert [t.shape for t in labels] == [(2, 5), (2, 5), (2, 3)]
    assert all(torch.equal(a, b) for a, b in zip(labels, A.sampled_targets(), strict=True))


def test_sampled_labels_follow_the_predictive_distribution():
    S = 4000
    obj = objective("ce")
    X = torch.cat([X for X, _ in obj.chunks()])
    probs = obj.forward(obj.parameters_vector(), X).softmax(-1).detach()  # (n, K)
    labels = mc_fisher(obj, samples=S, seed=5).sampled_targets()[0]  # (S, n)
    freq = torch.nn.functional.one_hot(labels, probs.shape[1]).double().mean(0)
    z = (freq - probs) / (probs * (1 - probs) / S).sqrt()
    assert float(z.abs().max()) < 5.0
    obj = objective("mse")
    outputs = obj.forward(obj.parameters_vector(), obj._tensors[0]).detach()
    noise = mc_fisher(obj, samples=S, seed=5).sampled_targets()[0] - outputs  # (S, n, K)
    assert float(noise.mean(0).abs().max()) < 5.0 / S**0.5  # mean 0
    assert float((noise.var(0) - 1).abs().max()) < 5.0 * (2 / S) ** 0.5  # variance 1


def test_bad_arguments_are_refused():
    obj = objective("ce")
    with pytest.raises(ValueError, match="samples must be an integer >= 1"):
        mc_fisher(obj, samples=0)
    with pytest.raises(ValueError, match="samples must be an integer"):
        mc_fisher(obj, samples=1.5)
    with pytest.raises(TypeError, match="seed must be an int"):
        mc_fisher(obj, seed="x")
    with pytest.raises(TypeError, match="Objective"):
        mc_fisher("not an objective")
    X, Y = make_data("mse")

    def absolute(outputs, targets):
        return (outputs - targets).abs().sum(1)

    custom = valleys.Objective(make_model("mlp-tanh"), absolute, (X, Y))
    with pytest.raises(ValueError, match="predictive distribution"):
        mc_fisher(custom)
    assert isinstance(mc_fisher(obj), MCFisherOperator)
