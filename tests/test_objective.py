"""The Objective: loss conventions, chunking, per-sample quantities and clear errors."""

from __future__ import annotations

import pytest
import torch
from conftest import make_data, make_model
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import jacrev, vmap

import valleys
from valleys import Objective
from valleys.errors import ArgumentValueError


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


# --- data that changes between passes (issue #15) ----------------------------------------------


def _loader_data(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 5, generator=g, dtype=torch.float64)
    Y = torch.randint(0, 3, (n,), generator=g)
    return X, Y


class _ReshufflingSampler(torch.utils.data.Sampler):
    """A sampler the type checks cannot recognize: a new (seeded) permutation every pass."""

    def __init__(self, n):
        self.n, self.generator = n, torch.Generator().manual_seed(0)

    def __len__(self):
        return self.n

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=self.generator).tolist())


class _Augmented(torch.utils.data.Dataset):
    """Random augmentation: every read of a sample adds fresh noise."""

    def __init__(self, X, Y):
        self.X, self.Y = X, Y

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        return self.X[i] + 0.01 * torch.randn(self.X.shape[1], dtype=self.X.dtype), self.Y[i]


class _Passes:
    """A re-iterable whose batches on the second and later passes are ``later(batches)``."""

    def __init__(self, batches, later):
        self.batches, self.later, self.passes = batches, later, 0

    def __iter__(self):
        self.passes += 1
        return iter(self.batches if self.passes == 1 else self.later(self.batches))


def test_a_shuffling_loader_is_caught_at_construction_or_on_the_second_pass():
    X, Y = _loader_data()
    model = make_model("mlp-tanh")
    dataset = torch.utils.data.TensorDataset(X, Y)
    # Random samplers that the DataLoader shows are refused before any pass.
    for loader in (
        torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=True),
        torch.utils.data.DataLoader(dataset, batch_sampler=torch.utils.data.BatchSampler(
            torch.utils.data.RandomSampler(dataset), batch_size=4, drop_last=False)),
        torch.utils.data.DataLoader(dataset, batch_size=4,
                                    sampler=torch.utils.data.SubsetRandomSampler(range(12))),
    ):
        with pytest.raises(ValueError, match=r"draws its samples at random.*shuffle=False"):
            Objective(model, "ce", loader)
    # Randomness the types hide is caught by the checksums of the second pass.
    hidden = (
        torch.utils.data.DataLoader(dataset, batch_size=4, sampler=_ReshufflingSampler(12)),
        torch.utils.data.DataLoader(_Augmented(X, Y), batch_size=4),
    )
    for loader in hidden:
        for chunk_size in (None, 3):
            obj = Objective(model, "ce", loader, chunk_size=chunk_size)  # the first pass
            with pytest.raises(ValueError, match=r"data changed between passes: batch 0 holds "
                                                 r"other values.*shuffle=False.*list\(loader\)"):
                obj.loss()


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_a_pass_with_fewer_more_or_other_sized_batches_is_caught(chunk_size):
    X, Y = _loader_data()
    model = make_model("mlp-tanh")
    batches = [(X[:4], Y[:4]), (X[4:8], Y[4:8]), (X[8:], Y[8:])]
    cases = {
        r"batch 2 is missing: the pass ended after 2 batches, the first had 3":
            lambda b: b[:-1],
        r"batch 3 is one more than the 3 batches of the first pass": lambda b: [*b, b[0]],
        r"batch 1 has 3 samples \(inputs\) and 3 \(targets\), the first pass had 4":
            lambda b: [b[0], (X[4:7], Y[4:7]), (X[7:], Y[7:])],
    }
    for message, later in cases.items():
        obj = Objective(model, "ce", _Passes(batches, later), chunk_size=chunk_size)
        with pytest.raises(ValueError, match=message):
            obj.loss()
        with pytest.raises(ValueError, match=message):
            obj.gradient()  # every later pass is checked, not just the second


def test_a_generator_backed_iterable_is_caught_on_its_empty_second_pass():
    X, Y = _loader_data()
    model = make_model("mlp-tanh")

    class Once:  # re-iterable in form, but all its iterators share one generator
        def __init__(self):
            self.batches = ((X[i : i + 4], Y[i : i + 4]) for i in range(0, 12, 4))

        def __iter__(self):
            return self.batches

    obj = Objective(model, "ce", Once())
    # Unchecked, the second pass would see no data at all and report a loss of 0.
    with pytest.raises(ValueError, match="batch 0 is missing: the pass ended after 0 batches"):
        obj.loss()


def test_a_generator_is_refused_when_built():
    X, Y = _loader_data()
    model = make_model("mlp-tanh")
    for one_shot in (((X, Y) for _ in range(2)), iter([(X, Y)]), zip([X], [Y], strict=True)):
        with pytest.raises(TypeError, match=r"one-shot iterator.*list of batches"):
            Objective(model, "ce", one_shot)


_FLIP = torch.arange(5, -1, -1)
LATER_PASSES = {
    # Same pairs, other order within a batch: the loss is unchanged, but per-sample losses
    # and gradients would come out permuted.
    "reordered": lambda b: [b[0], (b[1][0][_FLIP], b[1][1][_FLIP])],
    "targets-repaired": lambda b: [b[0], (b[1][0], b[1][1][_FLIP])],  # other (x, y) pairs
    "value-edited": lambda b: [(b[0][0] + 1e-6 * torch.eye(6, 5, dtype=torch.float64), b[0][1]),
                               b[1]],
}


@pytest.mark.parametrize("change", LATER_PASSES)
def test_reordered_repaired_or_edited_samples_are_caught(change):
    """Changes that keep every batch's size, or even its set of samples, still change results."""
    X, Y = _loader_data()
    model = make_model("mlp-tanh")
    batches = [(X[:6], Y[:6]), (X[6:], Y[6:])]
    obj = Objective(model, "ce", _Passes(batches, LATER_PASSES[change]), chunk_size=4)
    with pytest.raises(ValueError, match=r"batch \d holds other values"):
        obj.per_sample_losses()


def test_batches_edited_in_place_are_caught():
    X, Y = _loader_data()
    model = make_model("mlp-tanh")
    batches = [(X[:6].clone(), Y[:6].clone()), (X[6:].clone(), Y[6:].clone())]
    obj = Objective(model, "ce", batches)
    batches[1][0][2, 3] += 1.0
    with pytest.raises(ValueError, match="batch 1 holds other values"):
        obj.loss()


@pytest.mark.parametrize("chunk_size", [None, 3, 5])
def test_a_stable_loader_gives_the_numbers_of_the_tensor_pair(chunk_size):
    """No false alarm: a DataLoader without shuffling passes every check, pass after pass."""
    X, Y = _loader_data(n=13)
    model = make_model("mlp-tanh")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, Y), batch_size=4)
    tensors = Objective(model, "ce", (X, Y))
    obj = Objective(model, "ce", loader, chunk_size=chunk_size)
    next(iter(obj.chunks()))  # a pass stopped early is not checked (nor counted)
    for _ in range(3):
        assert torch.allclose(obj.loss(), tensors.loss(), rtol=1e-13, atol=0)
        assert torch.allclose(obj.gradient(), tensors.gradient(), rtol=1e-12, atol=1e-15)
    v = torch.linspace(-1, 1, obj.dim, dtype=torch.float64)
    H, H_ref = valleys.hessian(obj), valleys.hessian(tensors)
    for _ in range(2):
        assert torch.allclose(H.matvec(v), H_ref.matvec(v), rtol=1e-11, atol=1e-14)
    assert torch.allclose(obj.per_sample_losses(), tensors.per_sample_losses(), rtol=1e-13)


def test_sample_output_gives_per_sample_jacobians_under_vmap():
    """The hook valleys.smoothness differentiates: f(x; θ) of one sample, at any θ."""
    model = make_model("mlp-tanh")
    X, Y = make_data("ce", n=7)
    obj = Objective(model, "ce", (X, Y), chunk_size=3)
    theta = 0.5 * obj.parameters_vector()
    out = obj.forward(theta, X)
    for i in range(X.shape[0]):
        torch.testing.assert_close(obj.sample_output(theta, X[i]), out[i], rtol=0, atol=1e-15)
    # In x: the input Jacobians; in θ: the parameter Jacobians, row by row as autograd gives.
    Jx = vmap(jacrev(obj.sample_output, argnums=1), in_dims=(None, 0))(theta, X)
    Jt = vmap(jacrev(obj.sample_output), in_dims=(None, 0))(theta, X)
    assert Jx.shape == (7, out.shape[1], X.shape[1]) and Jt.shape == (7, out.shape[1], obj.dim)
    for i in (0, 6):
        x = X[i : i + 1].clone().requires_grad_(True)
        t = theta.clone().requires_grad_(True)
        f = obj.forward(t, x)[0]
        for k in range(f.shape[0]):
            gt, gx = torch.autograd.grad(f[k], (t, x), retain_graph=True)
            torch.testing.assert_close(Jx[i, k], gx[0], rtol=1e-12, atol=1e-14)
            torch.testing.assert_close(Jt[i, k], gt, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="flat vector"):
        obj.sample_output(theta[:-1], X[0])


def test_a_model_that_cannot_take_the_inputs_gets_an_argument_error():
    model = make_model("mlp-tanh")
    X, Y = make_data("ce")
    with pytest.raises(ArgumentValueError, match="cannot be evaluated on the inp"):
        Objective(model, "ce", (torch.ones(len(X), X.shape[1] + 1, dtype=X.dtype), Y))
