"""Built-in problems: deterministic checkpoints, the right sizes, clear errors."""

from __future__ import annotations

import pytest
import torch

from valleys.problems import PROBLEMS, load_problem


def test_checkpoint_training_is_deterministic_and_cached(tmp_path):
    first = load_problem("digits-mse", cache_dir=tmp_path / "a")
    again = load_problem("digits-mse", cache_dir=tmp_path / "b")  # trained from scratch again
    cached = load_problem("digits-mse", cache_dir=tmp_path / "a")  # read from disk
    for a, b, c in zip(
        first.model.parameters(), again.model.parameters(), cached.model.parameters(), strict=True
    ):
        assert torch.equal(a, b)
        assert torch.equal(a, c)
    assert first.checkpoint.exists()
    assert first.history["train_accuracy"] == 1.0
    assert not first.model.training
    obj = first.objective()
    assert obj.n == 1438 and obj.dim == 64 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10
    assert obj.loss().item() == pytest.approx(first.history["train_loss"], rel=1e-4)


def test_problem_catalogue_matches_the_issue():
    assert set(PROBLEMS) == {"digits-mlp", "digits-mse", "mnist1d-mlp"}
    assert PROBLEMS["digits-mlp"].widths == (64, 128, 128, 10)
    assert PROBLEMS["mnist1d-mlp"].widths == (40, 512, 512, 10)
    init = load_problem("mnist1d-mlp", trained=False, dtype=torch.float64)
    assert init.data.n_train == 4000 and init.checkpoint is None
    assert next(init.model.parameters()).dtype == torch.float64


def test_bad_problem_arguments():
    with pytest.raises(ValueError, match="unknown problem"):
        load_problem("cifar-resnet")
    with pytest.raises(ValueError, match="MNIST-1D"):
        load_problem("digits-mlp", num_samples=100)
    with pytest.raises(ValueError, match="split"):
        load_problem("digits-mlp", trained=False).objective("validation")
