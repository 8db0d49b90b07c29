"""Built-in problems: deterministic checkpoints, the right sizes, clear errors."""

from __future__ import annotations

import pytest
import torch

from valleys import problems
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


def test_damaged_or_altered_checkpoints_are_retrained_never_used(tmp_path, monkeypatch):
    calls = []

    def quick_train(model, spec, data, seed):  # stands in for the real recipe (seconds each)
        calls.append(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(0.5)
        return {"train_loss": 0.0}

    monkeypatch.setattr(problems, "_train", quick_train)

    def trained(problem):
        return all(bool((p == 0.5).all()) for p in problem.model.parameters())

    path = load_problem("digits-mlp", cache_dir=tmp_path).checkpoint
    assert calls == [0] and trained(load_problem("digits-mlp", cache_dir=tmp_path))
    assert calls == [0]  # a verified checkpoint is loaded, not retrained
    # Truncated: detected by the hash, named in the warning, retrained.
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.warns(UserWarning, match=r"digits-mlp-seed0-.*\.pt' is not used: its content"):
        assert trained(load_problem("digits-mlp", cache_dir=tmp_path))
    # Altered but loadable (a tampered weight): refused, not loaded.
    payload = torch.load(path, weights_only=True)
    next(iter(payload["state_dict"].values())).add_(1.0)
    torch.save(payload, path)
    with pytest.warns(UserWarning, match="does not match the hash"):
        assert trained(load_problem("digits-mlp", cache_dir=tmp_path))
    # A checkpoint without its hash (a kill between the two writes) is retrained too.
    path.with_name(path.name + ".sha256").unlink()
    with pytest.warns(UserWarning, match="no content hash"):
        assert trained(load_problem("digits-mlp", cache_dir=tmp_path))
    assert calls == [0, 0, 0, 0]
    assert trained(load_problem("digits-mlp", cache_dir=tmp_path)) and len(calls) == 4


def test_unwritable_cache_is_refused_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match=r"checkpoint cache .*is a file.*VALLEYS_CACHE_DIR"):
        load_problem("digits-mlp", cache_dir=blocker)
