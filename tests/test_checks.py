"""Numeric arguments: any real number type is accepted, bools and non-finite values are not;
estimators refuse input that carries no information."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from valleys import Objective
from valleys._checks import positive_real
from valleys.noise import tail_index
from valleys.stability.thresholds import threshold
from valleys.train import train


@pytest.mark.parametrize("value", [0.1, 1, np.float32(0.1), np.float64(0.25), np.int64(2)])
def test_positive_real_accepts_any_numeric_type(value):
    assert positive_real(value, "lr") == pytest.approx(float(value))


@pytest.mark.parametrize("value", [True, "0.1", None, 0, -1.0, math.nan, math.inf,
                                   np.float32("nan")])
def test_positive_real_names_the_argument(value):
    with pytest.raises(ValueError, match="lr must be a positive finite number"):
        positive_real(value, "lr")


def _objective():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(16, 3, generator=g, dtype=torch.float64)
    y = X @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    model = torch.nn.Linear(3, 1).double()
    return Objective(model, "mse", (X, y[:, None]))


def test_train_takes_a_numpy_learning_rate_and_refuses_bad_divergence_factors():
    obj = _objective()
    a = train(obj, lr=np.float32(0.1), steps=5, seed=0)
    b = train(obj, lr=float(np.float32(0.1)), steps=5, seed=0)
    assert torch.equal(a.theta, b.theta) and isinstance(a.config.lr, float)
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="divergence_factor must be a positive"):
            train(obj, lr=0.1, steps=1, divergence_factor=bad)
    with pytest.raises(ValueError, match="learning rate lr must be a positive"):
        train(obj, lr=True, steps=1)


def test_thresholds_take_numpy_learning_rates():
    assert threshold("gd", np.float32(0.5)) == pytest.approx(4.0)


def test_tail_index_refuses_samples_without_spread():
    with pytest.raises(ValueError, match="all samples are equal"):
        tail_index(torch.ones(400))
    with pytest.raises(ValueError, match="all samples are equal"):
        tail_index(np.tile([1.0, 2.0], (400, 1)))
