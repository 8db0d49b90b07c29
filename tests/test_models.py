"""Tests for valleys.models: shapes, determinism, float64 and torch.func compatibility."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from valleys.models import (
    ACTIVATIONS,
    MLP,
    SmallCNN,
    SmallResNet,
    make_activation,
    num_parameters,
)


def _params_equal(a: nn.Module, b: nn.Module) -> bool:
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    return pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


# (factory, input batch) pairs covering every input kind.
CASES = {
    "mlp": (lambda s: MLP((12, 16, 16, 3), seed=s), (5, 12)),
    "mlp_images": (lambda s: MLP((64, 8, 10), activation="tanh", seed=s), (5, 1, 8, 8)),
    "cnn_1d": (lambda s: SmallCNN((40,), 10, seed=s), (5, 40)),
    "cnn_1d_channels": (lambda s: SmallCNN((2, 20), 4, spatial_dims=1, seed=s), (5, 2, 20)),
    "cnn_2d": (lambda s: SmallCNN((8, 8), 10, seed=s), (5, 8, 8)),
    "cnn_2d_flat_input": (lambda s: SmallCNN((8, 8), 10, seed=s), (5, 64)),
    "cnn_2d_channels_flatten": (
        lambda s: SmallCNN((3, 6, 7), 5, channels=(4,), pool="flatten", seed=s), (5, 3, 6, 7)
    ),
    "cnn_flatten_stride": (
        lambda s: SmallCNN((41,), 3, kernel_size=5, stride=2, pool="flatten", seed=s), (5, 41)
    ),
    "cnn_stride": (lambda s: SmallCNN((40,), 10, stride=2, activation="gelu", seed=s), (5, 40)),
    "resnet_1d": (lambda s: SmallResNet((40,), 10, width=8, seed=s), (5, 1, 40)),
    "resnet_2d": (lambda s: SmallResNet((1, 8, 8), 10, width=8, num_blocks=3, seed=s),
                  (5, 1, 8, 8)),
    "resnet_no_blocks": (lambda s: SmallResNet((8, 8), 2, width=4, num_blocks=0, seed=s),
                         (5, 8, 8)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_shapes(case: str) -> None:
    factory, shape = CASES[case]
    model = factory(0)
    out = model(torch.randn(*shape))
    n_out = list(model.parameters())[-1].shape[0]
    assert out.shape == (shape[0], n_out)
    assert torch.isfinite(out).all()
    # A single sample with a batch dimension of 1.
    assert model(torch.randn(1, *shape[1:])).shape == (1, n_out)


@pytest.mark.parametrize("case", sorted(CASES))
def test_seeded_init_is_deterministic_and_leaves_global_rng(case: str) -> None:
    factory, _ = CASES[case]
    state = torch.random.get_rng_state()
    a, b, c = factory(0), factory(0), factory(1)
    assert torch.equal(state, torch.random.get_rng_state())
    assert _params_equal(a, b)
    assert not _params_equal(a, c)


def test_unseeded_init_uses_global_rng() -> None:
    torch.manual_seed(5)
    a = MLP((4, 3, 2))
    torch.manual_seed(5)
    b = MLP((4, 3, 2))
    assert _params_equal(a, b)
    assert not _params_equal(a, MLP((4, 3, 2)))


@pytest.mark.parametrize("case", sorted(CASES))
def test_float64_vmap_and_functional_call(case: str) -> None:
    factory, shape = CASES[case]
    model = factory(0).double()
    X = torch.randn(*shape, dtype=torch.float64)
    out = model(X)
    assert out.dtype == torch.float64
    per_sample = vmap(lambda x: model(x.unsqueeze(0)).squeeze(0))(X)
    torch.testing.assert_close(per_sample, out, rtol=1e-12, atol=1e-12)
    params = {k: v.detach() for k, v in model.named_parameters()}
    torch.testing.assert_close(functional_call(model, params, (X,)), out)


def test_per_sample_gradients_with_vmap() -> None:
    model = SmallCNN((40,), 3, seed=0).double()
    params = {k: v.detach() for k, v in model.named_parameters()}
    X = torch.randn(4, 40, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])

    def loss(p: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, p, (x.unsqueeze(0),))
        return nn.functional.cross_entropy(logits, t.unsqueeze(0))

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, X, y)
    for i in range(4):
        model.zero_grad()
        loss(dict(model.named_parameters()), X[i], y[i]).backward()
        for k, p in model.named_parameters():
            torch.testing.assert_close(grads[k][i], p.grad)


def test_batch_norm_option() -> None:
    plain = SmallResNet((8, 8), 10, seed=0)
    bn = SmallResNet((8, 8), 10, batch_norm=True, seed=0)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in plain.modules())
    norms = [m for m in bn.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 1 + 2 * 2  # stem + two per block
    assert num_parameters(bn) > num_parameters(plain)
    X = torch.randn(6, 64)
    bn.train()
    bn(X)  # updates running statistics
    bn.eval().double()
    Xd = X.double()
    per_sample = vmap(lambda x: bn(x.unsqueeze(0)).squeeze(0))(Xd)
    torch.testing.assert_close(per_sample, bn(Xd))
    bn1d = SmallResNet((40,), 10, batch_norm=True)
    assert any(isinstance(m, nn.BatchNorm1d) for m in bn1d.modules())


def test_conv_dims_follow_input_shape() -> None:
    def conv_types(model: nn.Module) -> set[type]:
        return {type(m) for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))}

    assert conv_types(SmallCNN((40,), 10)) == {nn.Conv1d}
    assert conv_types(SmallCNN((2, 40), 10, spatial_dims=1)) == {nn.Conv1d}
    assert conv_types(SmallCNN((8, 8), 10)) == {nn.Conv2d}
    assert conv_types(SmallResNet((3, 8, 8), 10)) == {nn.Conv2d}
    assert SmallCNN((8, 8), 10).input_shape == (8, 8)


def test_mlp_structure_and_num_parameters() -> None:
    model = MLP((64, 128, 128, 10), activation="softplus", bias=True)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 128), (128, 128),
                                                                    (128, 10)]
    assert isinstance(model.net[-1], nn.Linear)  # no output activation
    assert num_parameters(model) == 64 * 128 + 128 + 128 * 128 + 128 + 128 * 10 + 10
    no_bias = MLP((5, 3, 2), bias=False)
    assert num_parameters(no_bias) == 5 * 3 + 3 * 2
    no_bias.net[0].weight.requires_grad_(False)
    assert num_parameters(no_bias, trainable_only=True) == 3 * 2
    assert MLP((5, 3)).in_features == 5 and MLP((5, 3)).out_features == 3
    # An unbatched vector also works for the MLP.
    assert MLP((5, 3))(torch.randn(5)).shape == (3,)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_every_activation_builds(name: str) -> None:
    assert isinstance(make_activation(name), nn.Module)
    assert MLP((3, 4, 2), activation=name, seed=0)(torch.randn(2, 3)).shape == (2, 2)


@pytest.mark.parametrize(
    ("build", "exc", "match"),
    [
        (lambda: MLP((10,)), ValueError, "at least 2 entries"),
        (lambda: MLP((10, 0, 2)), ValueError, "positive integer"),
        (lambda: MLP((10, 2.5)), ValueError, "positive integer"),
        (lambda: MLP(10), TypeError, "sequence of positive integers"),
        (lambda: MLP((3, 2), activation="swish"), ValueError, "gelu.*relu.*tanh"),
        (lambda: MLP((3, 2), seed=-1), ValueError, "seed"),
        (lambda: SmallCNN((1, 2, 3, 4), 10), ValueError, "input_shape must be"),
        (lambda: SmallCNN((40,), 10, spatial_dims=2), ValueError, "does not fit"),
        (lambda: SmallCNN((40,), 10, spatial_dims=3), ValueError, "spatial_dims"),
        (lambda: SmallCNN((40,), 0), ValueError, "num_classes"),
        (lambda: SmallCNN((40,), 10, channels=()), ValueError, "at least 1"),
        (lambda: SmallCNN((40,), 10, pool="max"), ValueError, "pool"),
        (lambda: SmallCNN((1,), 10, kernel_size=5, channels=(4, 4, 4), stride=3), None, None),
        (lambda: SmallCNN((2,), 10, kernel_size=4), ValueError, "kernel_size must be odd"),
        (lambda: SmallResNet((8, 8), 10, num_blocks=-1), ValueError, "num_blocks"),
        (lambda: SmallResNet((8, 8), 10, activation="nope"), ValueError, "unknown activation"),
    ],
)
def test_constructor_errors(build, exc, match) -> None:
    if exc is None:
        assert build()(torch.randn(2, 1)).shape == (2, 10)  # a valid edge case
        return
    with pytest.raises(exc, match=match):
        build()


def test_forward_shape_errors() -> None:
    with pytest.raises(ValueError, match="expects 12 input features"):
        MLP((12, 3))(torch.randn(2, 13))
    cnn = SmallCNN((8, 8), 10)
    with pytest.raises(ValueError, match="add a leading batch dimension"):
        cnn(torch.randn(8, 7))
    with pytest.raises(ValueError, match=r"\(batch, 64\)"):
        cnn(torch.randn(2, 65))
