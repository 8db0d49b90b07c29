"""The Objective: loss conventions, chunking, per-sample quantities and clear errors."""

from __future__ import annotations

import pytest
import torch
from conftest import make_data, make_model
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import valleys
from valleys import Objective


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_loss_gradient_and_per_sample_quantities(loss):
    X, Y = make_data(loss, n=11)
    model = make_model("mlp-tanh")
    obj = valleys.Objective(model, loss, (X, Y), chunk_size=4)
    out = model(X)
    if loss == "mse":
        expected = 0.5 * ((out - Y) ** 2).sum(1)
    else:
        expected = nn.functional.cross_entropy(out, Y, reduction="none")
    assert torch.allclose(obj.per_sample_losses(), expected.detach(), atol=1e-14)
    assert obj.loss().item() == pytest.approx(expected.mean().item(), rel=1e-13)
    expected.mean().backward()
    ref = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert torch.allclose(obj.gradient(), ref, atol=1e-14)
    G = obj.per_sample_gradients()
    assert G.shape == (11, obj.dim)
    assert torch.allclose(G.mean(0), ref, atol=1e-14)


def test_mse_convention_is_half_sum_over_outputs():
    model = nn.Linear(2, 3, bias=False).double()
    nn.init.zeros_(model.weight)
    X = torch.ones(1, 2, dtype=torch.float64)
    Y = torch.tensor([[1.0, 2.0, 2.0]], dtype=torch.float64)
    obj = valleys.Objective(model, "mse", (X, Y))
    assert obj.loss().item() == pytest.approx(0.5 * (1 + 4 + 4))


def test_flatten_unflatten_round_trip_and_evaluation_at_other_theta():
    X, Y = make_data("ce")
    model = make_model("residual")
    obj = valleys.Objective(model, "ce", (X, Y))
    theta = obj.parameters_vector()
    assert torch.equal(obj.flatten(obj.unflatten(theta)), theta)
    shifted = theta + 0.1
    before = obj.loss().item()
    assert obj.loss(shifted).item() != before
    assert obj.loss().item() == before  # evaluating elsewhere does not move the model
    obj.set_parameters(shifted)
    assert torch.equal(obj.parameters_vector(), shifted)


def test_train_mode_with_batchnorm_or_dropout_is_refused():
    X, Y = make_data("ce", d=4)
    for layer in (nn.BatchNorm1d(5), nn.Dropout(0.1)):
        model = nn.Sequential(nn.Linear(4, 5), layer, nn.Linear(5, 3)).double()
        with pytest.raises(ValueError, match=r"model\.eval\(\)"):
            valleys.Objective(model, "ce", (X, Y))
        assert model.training  # the check does not switch modes
        valleys.Objective(model, "ce", (X, Y), allow_train_mode=True)
        model.eval()
        valleys.Objective(model, "ce", (X, Y))


def test_bad_data_gets_clear_errors():
    model = make_model("mlp-tanh")
    X, Y = make_data("ce")
    with pytest.raises(ValueError, match="empty"):
        valleys.Objective(model, "ce", (X[:0], Y[:0]))
    with pytest.raises(ValueError, match="same number of samples"):
        valleys.Objective(model, "ce", (X, Y[:-1]))
    bad = X.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        valleys.Objective(model, "ce", (bad, Y))
    with pytest.raises(TypeError, match="float32"):
        valleys.Objective(model, "ce", (X.float(), Y))
    with pytest.raises(ValueError, match="labels must lie"):
        valleys.Objective(model, "ce", (X, Y + 5))
    with pytest.raises(TypeError, match="one-hot"):
        valleys.Objective(model, "mse", (X, Y))
    with pytest.raises(ValueError, match="output shape"):
        valleys.Objective(model, "mse", (X, torch.zeros(len(X), dtype=torch.float64)))
    with pytest.raises(ValueError, match="unknown loss"):
        valleys.Objective(model, "l2", (X, Y))
    with pytest.raises(ValueError, match="per-sample"):
        valleys.Objective(model, lambda o, y: o.sum(), (X, Y))
    with pytest.raises(TypeError, match="one-shot iterator"):
        valleys.Objective(model, "ce", ((X, Y) for _ in range(2)))
    with pytest.raises(TypeError, match="pair"):
        valleys.Objective(model, "ce", X)
    with pytest.raises(ValueError, match="chunk_size"):
        valleys.Objective(model, "ce", (X, Y), chunk_size=0)
    with pytest.raises(ValueError, match="matches none"):
        valleys.Objective(model, "ce", (X, Y), params=["nope.*"])
    with pytest.raises(TypeError, match=r"nn\.Module"):
        valleys.Objective(lambda x: x, "ce", (X, Y))
    shuffled = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(X, Y), batch_size=4, shuffle=True
    )
    with pytest.raises(ValueError, match="shuffle"):
        valleys.Objective(model, "ce", shuffled)
    with pytest.raises(TypeError, match="pair"):
        valleys.Objective(model, "ce", [X, Y, X])


@settings(max_examples=25, deadline=None)
@given(chunk=st.integers(min_value=1, max_value=20), n=st.integers(min_value=1, max_value=20))
def test_chunking_never_changes_the_numbers(chunk, n):
    X, Y = make_data("ce", n=n)
    model = make_model("mlp-tanh")
    whole = valleys.Objective(model, "ce", (X, Y))
    chunked = valleys.Objective(model, "ce", (X, Y), chunk_size=chunk)
    assert chunked.num_chunks == -(-n // chunk)
    assert torch.allclose(chunked.loss(), whole.loss(), rtol=1e-13, atol=0)
    assert torch.allclose(chunked.gradient(), whole.gradient(), rtol=1e-12, atol=1e-15)
    v = torch.linspace(-1, 1, whole.dim, dtype=torch.float64)
    hv = valleys.hessian(whole).matvec(v)
    assert torch.allclose(valleys.hessian(chunked).matvec(v), hv, rtol=1e-11, atol=1e-14)


def test_every_label_and_every_batch_is_checked_when_built():
    model = torch.nn.Linear(3, 4)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(10, 3, generator=g)
    y = torch.randint(0, 4, (10,), generator=g)
    with pytest.raises(ValueError, match=r"batch 1: class labels must lie in \[0, 4\).*\[7, 7\]"):
        Objective(model, "ce", [(X[:5], y[:5]), (X[5:], torch.full((5,), 7))])
    late = y.clone()
    late[-1] = -1  # beyond the two samples the model is tried on
    with pytest.raises(ValueError, match=r"batch 0: class labels must lie in \[0, 4\)"):
        Objective(model, "ce", (X, late))
    with pytest.raises(ValueError, match="batch 0 of the data is empty; drop empty batches"):
        Objective(model, "ce", [(X[:0], y[:0]), (X, y)])
    assert Objective(model, "ce", [(X[:5], y[:5]), (X[5:], y[5:])]).n == 10


def test_hidden_randomness_and_batch_dependence_are_refused():
    import torch.nn.functional as F
    from torch import nn

    g = torch.Generator().manual_seed(0)
    X, Y = torch.randn(20, 4, generator=g), torch.randn(20, 2, generator=g)

    class FunctionalDropout(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(4, 2)

        def forward(self, x):
            return self.layer(F.dropout(x, 0.5, training=True))

    batch_stats = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8, track_running_stats=False),
                                nn.Linear(8, 2)).eval()
    rrelu = nn.Sequential(nn.Linear(4, 8), nn.RReLU(), nn.Linear(8, 2))
    for model, message in ((FunctionalDropout(), "different outputs for the same inputs"),
                           (rrelu, "different outputs for the same inputs"),
                           (batch_stats, "depend on which samples share a batch")):
        with pytest.raises(ValueError, match=message):
            Objective(model, "mse", (X, Y))
        assert Objective(model, "mse", (X, Y), allow_train_mode=True).n == 20  # the opt-out
    running = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2)).eval()
    assert Objective(running, "mse", (X, Y), chunk_size=3).n == 20
