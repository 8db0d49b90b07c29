"""Mini-batch gradient noise against dense float64 oracles and exact enumeration of batches."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import DenseOracle, input_dim, make_data, make_model

from valleys import Objective
from valleys.models import SmallCNN
from valleys.noise import (
    batch_indices,
    hessian_alignment,
    iter_minibatch_gradients,
    minibatch_coordinates,
    minibatch_covariance_product,
    minibatch_gradients,
    minibatch_gradients_loop,
    minibatch_noise,
    minibatch_projections,
    minibatch_squared_norms,
    noise_covariance,
    noise_factor,
    noise_statistics,
    subspace_overlap,
)


def _problem(loss="ce", n=6, kind="mlp-tanh", chunk_size=None):
    X, Y = make_data(loss, n=n)
    model = make_model(kind)
    return Objective(model, loss, (X, Y), chunk_size=chunk_size), X, Y


def _dense_C(obj, X, Y):
    G = DenseOracle(obj, X, Y).sample_gradients()
    D = G - G.mean(0)
    return D.T @ D / G.shape[0], G


@pytest.mark.parametrize("method", ["auto", "linear-layers", "per-sample"])
@pytest.mark.parametrize("chunk_size", [None, 4])
@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_vectorized_batches_match_the_loop(loss, chunk_size, method):
    obj, _, _ = _problem(loss, n=13, chunk_size=chunk_size)
    idx = batch_indices(obj.n, 4, 9, seed=1)
    idx_rep = batch_indices(obj.n, 5, 7, replacement=True, seed=2)
    for indices in (idx, idx_rep):
        torch.testing.assert_close(minibatch_gradients(obj, indices, method=method),
                                   minibatch_gradients_loop(obj, indices), rtol=1e-10, atol=1e-12)
    _, g = minibatch_gradients(obj, idx, return_mean=True, method=method)
    torch.testing.assert_close(g, obj.gradient(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["cnn", "weight-sharing", "residual"])
def test_models_outside_the_linear_layers_path_fall_back_or_explain(kind):
    """Conv parameters and a Linear called twice: "auto" takes the per-sample path (still
    exact), and asking for the factored path says why it does not apply. A residual block of
    Linear layers takes the factored path."""
    X, Y = make_data("ce", n=7, d=input_dim(kind))
    obj = Objective(make_model(kind), "ce", (X, Y))
    idx = batch_indices(obj.n, 3, 5, seed=0)
    loop = minibatch_gradients_loop(obj, idx)
    torch.testing.assert_close(minibatch_gradients(obj, idx), loop, rtol=1e-10, atol=1e-12)
    if kind == "residual":  # whole Linear layers, each called once: the factored path applies
        torch.testing.assert_close(minibatch_gradients(obj, idx, method="linear-layers"), loop,
                                   rtol=1e-10, atol=1e-12)
    else:
        with pytest.raises(ValueError, match=r"does not apply.*per-sample"):
            minibatch_gradients(obj, idx, method="linear-layers")
    if kind == "cnn":  # Conv2d + Linear: the layer-factors path applies
        torch.testing.assert_close(minibatch_gradients(obj, idx, method="layer-factors"), loop,
                                   rtol=1e-10, atol=1e-12)
    if kind == "weight-sharing":
        with pytest.raises(ValueError, match=r"layer-factors.*does not apply.*more than once"):
            minibatch_gradients(obj, idx, method="layer-factors")


def test_linear_layers_path_at_another_theta_and_with_part_of_the_layers():
    """θ passed explicitly (not the model's), a layer without bias, and θ = one layer only."""
    X, Y = make_data("mse", n=11)
    model = torch.nn.Sequential(torch.nn.Linear(X.shape[1], 5, bias=False), torch.nn.Tanh(),
                                torch.nn.Linear(5, Y.shape[1])).double()
    idx = batch_indices(11, 3, 6, replacement=True, seed=3)
    for params in (None, ["2.weight", "2.bias"]):
        obj = Objective(model, "mse", (X, Y), params=params)
        theta = obj.parameters_vector() + 0.1 * torch.randn(
            obj.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        fast = minibatch_gradients(obj, idx, theta, method="linear-layers")
        torch.testing.assert_close(fast, minibatch_gradients_loop(obj, idx, theta),
                                   rtol=1e-10, atol=1e-12)


def test_batch_indices_are_distinct_and_seeded():
    idx = batch_indices(10, 4, 500, seed=0)
    assert idx.shape == (500, 4)
    assert all(len(set(row.tolist())) == 4 for row in idx)
    assert torch.equal(idx, batch_indices(10, 4, 500, seed=0))
    # Uniform: every sample appears in about 4/10 of the batches.
    counts = torch.bincount(idx.flatten(), minlength=10).double() / 500
    assert torch.allclose(counts, torch.full((10,), 0.4, dtype=torch.float64), atol=0.07)


@pytest.mark.parametrize("B", [1, 2, 3, 6])
def test_noise_covariance_without_replacement_is_exact(B):
    # Enumerate every B-subset of n = 6 samples: Cov(g_b) = (n−B)/(B(n−1)) · C exactly.
    obj, X, Y = _problem("ce", n=6)
    C, _ = _dense_C(obj, X, Y)
    subsets = torch.tensor(list(itertools.combinations(range(6), B)))
    noise = minibatch_gradients(obj, subsets) - obj.gradient()
    empirical = noise.T @ noise / subsets.shape[0]
    factor = noise_factor(6, B)
    torch.testing.assert_close(empirical, factor * C, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(noise_covariance(obj, batch_size=B).to_dense(), factor * C,
                               rtol=1e-8, atol=1e-11)


def test_noise_covariance_with_replacement_is_exact():
    obj, X, Y = _problem("mse", n=4)
    C, _ = _dense_C(obj, X, Y)
    tuples = torch.tensor(list(itertools.product(range(4), repeat=2)))
    noise = minibatch_gradients(obj, tuples) - obj.gradient()
    torch.testing.assert_close(noise.T @ noise / tuples.shape[0], C / 2, rtol=1e-9, atol=1e-12)
    assert noise_factor(4, 2, replacement=True) == 0.5
    assert noise_factor(4, 8, replacement=True) == 1 / 8


def test_monte_carlo_noise_samples():
    obj, X, Y = _problem("ce", n=13)
    C, _ = _dense_C(obj, X, Y)
    xi = minibatch_noise(obj, batch_size=3, num_batches=20_000, seed=0)
    assert float(xi.mean(0).norm()) < 0.05 * float(xi.norm(dim=1).mean())
    emp = xi.T @ xi / xi.shape[0]
    target = noise_factor(13, 3) * C
    assert float((emp - target).norm() / target.norm()) < 0.05


def test_noise_statistics_against_dense():
    obj, X, Y = _problem("ce", n=13)
    C, _ = _dense_C(obj, X, Y)
    B = 4
    Sigma = noise_factor(13, B) * C
    H = DenseOracle(obj, X, Y).hessian()
    stats = noise_statistics(obj, batch_size=B, k=3, hessian=True)
    evals, evecs = torch.linalg.eigh(Sigma)
    torch.testing.assert_close(stats.top_eigenvalues, evals.flip(0)[:3], rtol=1e-8, atol=1e-12)
    assert stats.trace == pytest.approx(float(torch.trace(Sigma)), rel=1e-10)
    assert stats.frobenius == pytest.approx(float(torch.linalg.matrix_norm(Sigma)), rel=1e-10)
    assert stats.effective_rank == pytest.approx(float(torch.trace(Sigma) / evals[-1]), rel=1e-8)
    assert stats.alignment == pytest.approx(hessian_alignment(Sigma, H), rel=1e-8)
    h_evals, h_vecs = torch.linalg.eigh(H)
    torch.testing.assert_close(stats.hessian_top, h_evals.flip(0)[:3], rtol=1e-8, atol=1e-10)
    assert stats.overlap == pytest.approx(
        subspace_overlap(evecs.flip(1)[:, :3], h_vecs.flip(1)[:, :3]), abs=1e-8)
    assert 0.0 <= stats.overlap <= 1.0 and -1.0 <= stats.alignment <= 1.0
    assert stats.to_dict()["batch_size"] == B


def test_alignment_and_overlap_closed_forms():
    A = torch.diag(torch.tensor([3.0, 1.0, 0.0], dtype=torch.float64))
    assert hessian_alignment(A, 2 * A) == pytest.approx(1.0)
    assert hessian_alignment(A, torch.diag(torch.tensor([0.0, 0.0, 1.0]).double())) == 0.0
    e = torch.eye(3, dtype=torch.float64)
    assert subspace_overlap(e[:, :1], e[:, :1]) == 1.0
    assert subspace_overlap(e[:, :1], e[:, 1:2]) == 0.0
    with pytest.raises(ValueError, match="same shape"):
        subspace_overlap(e[:, :1], e[:, :2])


def test_bad_input():
    obj, _, _ = _problem("ce", n=6)
    with pytest.raises(ValueError, match="batch_size"):
        noise_factor(6, 7)
    with pytest.raises(ValueError, match="n must"):
        noise_factor(1, 1)
    with pytest.raises(ValueError, match="lie in"):
        minibatch_gradients(obj, torch.tensor([[0, 6]]))
    with pytest.raises(TypeError, match="integer tensor"):
        minibatch_gradients(obj, torch.zeros(2, 2))
    with pytest.raises(TypeError, match="Objective"):
        minibatch_gradients("model", torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="num_batches"):
        batch_indices(6, 2, 0)
    with pytest.raises(ValueError, match="method must be one of"):
        minibatch_gradients(obj, torch.zeros(2, 2, dtype=torch.long), method="fast")


def test_matrix_free_statistics_match_the_gram_path():
    obj, _, _ = _problem("ce", n=13)
    exact = noise_statistics(obj, batch_size=4, k=3, hessian=True)
    # p = 57: Hutch++ with 3p products sketches the whole space, so it is exact too.
    free = noise_statistics(obj, batch_size=4, k=3, hessian=True, method="lanczos",
                            num_matvecs=3 * obj.dim)
    assert free.method == "lanczos"
    torch.testing.assert_close(free.top_eigenvalues, exact.top_eigenvalues, rtol=1e-6, atol=1e-12)
    assert free.trace == pytest.approx(exact.trace, rel=1e-10)
    assert free.frobenius == pytest.approx(exact.frobenius, rel=1e-6)
    assert free.alignment == pytest.approx(exact.alignment, rel=1e-6)
    assert free.overlap == pytest.approx(exact.overlap, abs=1e-5)
    # A small budget is an estimate: close, not exact.
    rough = noise_statistics(obj, batch_size=4, k=3, method="lanczos", num_matvecs=30)
    assert rough.frobenius == pytest.approx(exact.frobenius, rel=0.2)
    with pytest.raises(ValueError, match="method"):
        noise_statistics(obj, batch_size=4, method="svd")


def test_linear_layers_path_with_a_layer_that_does_not_reach_the_loss():
    """A Linear layer whose output is discarded has zero gradient (no autograd error)."""

    class Detour(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.side, self.b = (torch.nn.Linear(5, 4), torch.nn.Linear(5, 2),
                                         torch.nn.Linear(4, 3))

        def forward(self, x):
            self.side(x)  # computed and thrown away
            return self.b(torch.tanh(self.a(x)))

    torch.manual_seed(0)
    X, Y = make_data("mse", n=9)
    obj = Objective(Detour().double(), "mse", (X, Y))
    idx = batch_indices(9, 3, 4, seed=0)
    fast = minibatch_gradients(obj, idx, method="linear-layers")
    torch.testing.assert_close(fast, minibatch_gradients_loop(obj, idx), rtol=1e-10, atol=1e-12)


class TiedHead(torch.nn.Module):
    """The head's weight is also used outside its call (tied weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(5, 5), torch.nn.Linear(5, 3)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        return self.b(h) + 0.5 * torch.nn.functional.linear(h, self.b.weight)


def test_tied_weights_are_detected_and_take_the_per_sample_path():
    torch.manual_seed(0)
    X, Y = make_data("ce", n=9)
    obj = Objective(TiedHead().double(), "ce", (X, Y))
    idx = batch_indices(9, 3, 4, seed=0)
    torch.testing.assert_close(minibatch_gradients(obj, idx), minibatch_gradients_loop(obj, idx),
                               rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"outside their nn\.Linear calls"):
        minibatch_gradients(obj, idx, method="linear-layers")


# -- noise statistics against the oracle: a plain per-batch loop of torch.autograd.grad -------
def _oracle_batches(obj, indices, theta=None):
    """``g_b`` by one ``torch.autograd.grad`` per batch (float64), and ``g``."""
    leaf = obj.resolve_theta(theta).detach().requires_grad_(True)
    X, Y = obj._tensors
    rows = [torch.autograd.grad(obj.chunk_losses(leaf, X[i], Y[i]).mean(), leaf)[0]
            for i in indices]
    g = torch.autograd.grad(obj.chunk_losses(leaf, X, Y).mean(), leaf)[0]
    return torch.stack(rows), g


def _check_statistics(obj, indices, method, theta=None):
    """Every statistic equals the oracle's to float64 rounding (sums of a few dozen terms)."""
    G, g = _oracle_batches(obj, indices, theta)
    Xi = G - g
    gen = torch.Generator().manual_seed(7)
    V = torch.randn(obj.dim, 3, generator=gen, dtype=torch.float64)
    coords = torch.cat([torch.tensor([0, obj.dim - 1]),
                        torch.randperm(obj.dim, generator=gen)[:9]])
    tol = {"rtol": 1e-10, "atol": 1e-12}
    close = torch.testing.assert_close
    close(minibatch_gradients(obj, indices, theta, method=method), G, **tol)
    close(minibatch_projections(obj, indices, V, theta, method=method), Xi @ V, **tol)
    close(minibatch_projections(obj, indices, V[:, 0], theta, noise=False, method=method),
          G @ V[:, 0], **tol)
    close(minibatch_coordinates(obj, indices, coords, theta, method=method), Xi[:, coords], **tol)
    close(minibatch_coordinates(obj, indices, coords.int(), theta, noise=False, method=method),
          G[:, coords], **tol)
    # Two coordinates: per-sample entries gathered from the factors (many: batch blocks).
    close(minibatch_coordinates(obj, indices, coords[[3, 0]], theta, method=method),
          Xi[:, coords[[3, 0]]], **tol)
    close(minibatch_squared_norms(obj, indices, theta, method=method), Xi.pow(2).sum(1), **tol)
    close(minibatch_squared_norms(obj, indices, theta, noise=False, method=method),
          G.pow(2).sum(1), **tol)
    close(minibatch_covariance_product(obj, indices, V, theta, method=method),
          Xi.T @ (Xi @ V) / indices.shape[0], **tol)
    close(minibatch_covariance_product(obj, indices, V[:, 0], theta, method=method),
          Xi.T @ (Xi @ V[:, 0]) / indices.shape[0], **tol)
    for block_size in (1, 2, 100):
        starts, blocks = [], []
        for start, block in iter_minibatch_gradients(obj, indices, theta, noise=True,
                                                     block_size=block_size, method=method):
            starts.append(start)
            blocks.append(block.clone())  # the buffer is reused
        assert starts == list(range(0, indices.shape[0], block_size))
        close(torch.cat(blocks), Xi, **tol)


@pytest.mark.parametrize("method", ["auto", "per-sample"])
@pytest.mark.parametrize("chunk_size", [None, 4])
@pytest.mark.parametrize("kind", ["mlp-tanh", "cnn", "weight-sharing", "residual"])
def test_statistics_match_the_per_batch_loop(kind, chunk_size, method):
    """Linear, Conv2d + Linear (factored), a Linear called twice (per-sample fallback) and a
    residual block; batches with and without replacement (repeated samples count twice)."""
    X, Y = make_data("ce", n=13, d=input_dim(kind))
    obj = Objective(make_model(kind), "ce", (X, Y), chunk_size=chunk_size)
    for indices in (batch_indices(13, 4, 9, seed=1),
                    batch_indices(13, 5, 7, replacement=True, seed=2)):
        _check_statistics(obj, indices, method)


class ConvZoo(torch.nn.Module):
    """Conv1d with stride and dilation, Conv2d without bias and with padding, a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv1d(2, 3, 3, stride=2, dilation=2, padding=1)
        self.c2 = torch.nn.Conv2d(1, 2, (2, 3), padding=(1, 0), bias=False)
        self.head = torch.nn.Linear(3 * 3 + 2 * 4 * 2, 3)

    def forward(self, x):
        a = torch.tanh(self.c1(x[:, :16].view(-1, 2, 8))).flatten(1)     # (n, 3·3)
        b = torch.tanh(self.c2(x[:, 16:].view(-1, 1, 3, 4))).flatten(1)  # (n, 2·4·2)
        return self.head(torch.cat([a, b], 1))


def test_convolutions_take_the_layer_factors_path():
    gen = torch.Generator().manual_seed(3)
    X = torch.randn(11, 28, generator=gen, dtype=torch.float64)
    Y = torch.randn(11, 3, generator=gen, dtype=torch.float64)
    torch.manual_seed(2)
    obj = Objective(ConvZoo().double(), "mse", (X, Y), chunk_size=5)
    indices = batch_indices(11, 3, 8, seed=5)
    theta = obj.parameters_vector() + 0.1 * torch.randn(obj.dim, generator=gen,
                                                         dtype=torch.float64)
    _check_statistics(obj, indices, "layer-factors", theta)
    with pytest.raises(ValueError, match=r"linear-layers.*does not apply"):
        minibatch_projections(obj, indices, theta[:, None], method="linear-layers")


def test_small_cnn_on_images_and_signals():
    """valleys.models.SmallCNN (Conv2d on 8×8 images, Conv1d on signals, average pooling)."""
    gen = torch.Generator().manual_seed(4)
    for shape in ((1, 8, 8), (2, 10)):
        X = torch.randn(9, *shape, generator=gen, dtype=torch.float64)
        Y = torch.randint(0, 4, (9,), generator=gen)
        model = SmallCNN(shape, 4, channels=(3, 4), seed=0).double()
        obj = Objective(model, "ce", (X, Y))
        _check_statistics(obj, batch_indices(9, 3, 5, seed=6), "layer-factors")


def test_minibatch_noise_coordinates_and_float32():
    obj, _, _ = _problem("ce", n=13)
    coords = torch.tensor([3, 0, 40, 3])
    full = minibatch_noise(obj, batch_size=4, num_batches=6, seed=3)
    torch.testing.assert_close(
        minibatch_noise(obj, batch_size=4, num_batches=6, seed=3, coordinates=coords),
        full[:, coords], rtol=1e-10, atol=1e-12)
    # float32: the statistics agree with the float64 oracle to float32 rounding.
    X, Y = make_data("ce", n=13)
    obj32 = Objective(make_model("mlp-tanh").float(), "ce", (X.float(), Y))
    idx = batch_indices(13, 4, 9, seed=1)
    Xi = (lambda G, g: G - g)(*_oracle_batches(obj, idx))
    V = torch.randn(obj.dim, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(minibatch_squared_norms(obj32, idx).double(), Xi.pow(2).sum(1),
                               rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(minibatch_projections(obj32, idx, V.float()).double(), Xi @ V,
                               rtol=1e-5, atol=1e-6)


def test_statistics_bad_input():
    obj, _, _ = _problem("ce", n=6)
    idx = batch_indices(6, 2, 3, seed=0)
    with pytest.raises(ValueError, match=r"directions must be a floating tensor.*\(p, k\)"):
        minibatch_projections(obj, idx, torch.ones(obj.dim + 1))
    with pytest.raises(ValueError, match="directions must be"):
        minibatch_covariance_product(obj, idx, torch.ones(obj.dim, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        minibatch_projections(obj, idx, torch.full((obj.dim,), float("nan")))
    with pytest.raises(ValueError, match=r"coordinates must lie in \[0, p="):
        minibatch_coordinates(obj, idx, torch.tensor([obj.dim]))
    with pytest.raises(ValueError, match="1-D integer tensor"):
        minibatch_coordinates(obj, idx, torch.tensor([0.0]))
    with pytest.raises(ValueError, match="block_size"):
        next(iter_minibatch_gradients(obj, idx, block_size=0))
    with pytest.raises(ValueError, match="method must be one of"):
        minibatch_squared_norms(obj, idx, method="gram")
    with pytest.raises(ValueError, match="lie in"):
        minibatch_projections(obj, torch.tensor([[0, 6]]), torch.ones(obj.dim))
