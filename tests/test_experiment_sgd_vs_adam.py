"""The sgd-vs-adam reproduction (Zhou et al. 2020): quick preset end to end, and its verdicts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from valleys.experiments import sgd_vs_adam as sva

FIGURES = ("tail_index", "exit_times", "solutions")
VERDICTS = {"agrees", "partly agrees", "disagrees", "inconclusive", "not tested"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sgd-vs-adam")
    return out, sva.run(out, preset="quick", seed=0, progress=False)


def test_presets_follow_the_contract():
    assert sva.NAME == "sgd-vs-adam"
    assert {"quick", "full"} <= set(sva.PRESETS)
    for p in sva.PRESETS.values():
        assert len(p.sgd_lrs) == len(p.adam_lrs)  # the same tuning budget for both
    with pytest.raises(ValueError, match="unknown preset"):
        sva.run("unused", preset="huge")


def test_output_files(quick):
    out, _ = quick
    for name in ("summary.json", "results.csv", "report.md", "tail_index.csv", "exit_times.csv"):
        assert (out / name).stat().st_size > 0
    for stem in FIGURES:
        assert (out / f"{stem}.png").exists() and (out / f"{stem}.svg").exists()
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["experiment"] == "sgd-vs-adam"


def test_runs_have_the_stable_keys(quick):
    out, summary = quick
    runs = json.loads((out / "summary.json").read_text())["runs"]
    assert {(r["dataset"], r["optimizer"]) for r in runs} == {
        (d, o) for d in ("mnist1d", "digits") for o in ("sgd", "adam")}
    for r in runs:
        assert r["status"] != "diverged"
        low, high = r["alpha_hat_interval"]
        assert 0 < low <= r["alpha_hat"] <= high
        assert 0.5 < r["alpha_hat"] < 2.5
        assert r["sharpness"] > 0 and r["nonuniformity"] > 0
        assert 0.0 <= r["test_accuracy"] <= 1.0
        assert len(r["alpha_hat_along_training"]) == sva.PRESETS["quick"].checkpoints
        if r["optimizer"] == "sgd":  # SGD's effective noise is its raw noise
            assert r["alpha_hat"] == r["alpha_hat_raw"]
    # Learning rates were selected by the fixed rule: lowest final training loss.
    for ds in ("mnist1d", "digits"):
        for opt in ("sgd", "adam"):
            rows = [t for t in summary["tuning"] if t["dataset"] == ds and t["optimizer"] == opt]
            best = min(rows, key=lambda t: t["final_loss"])
            assert best["selected"] and sum(t["selected"] for t in rows) == 1


def test_sde_part_agrees_with_theory_within_tolerance(quick):
    _, summary = quick
    for row in summary["sde"]["epsilon"]:
        # Small-noise law 1/(ε^α m(W)): within a factor 1.6 at these moderate ε.
        assert 1 / 1.6 < row["mean_exit_time"] / row["theory"] < 1.6
    for alpha, exponent in summary["sde"]["exponents"].items():
        assert abs(exponent - float(alpha)) < 0.3


def test_verdicts_and_report(quick):
    out, summary = quick
    assert set(summary["verdicts"]) == {"heavy_tails", "tails_order", "exit_times",
                                        "sharpness", "generalization"}
    assert set(summary["verdicts"].values()) <= VERDICTS
    report = (out / "report.md").read_text()
    for verdict in summary["verdicts"].values():
        assert verdict.upper() in report
    assert "Zhou" in report and "disagree" in report


def _run(ds, opt, alpha, low, high, sharp=1.0, acc=0.9):
    return {"dataset": ds, "optimizer": opt, "alpha_hat": alpha,
            "alpha_hat_interval": [low, high], "sharpness": sharp, "test_accuracy": acc}


def test_verdict_rules():
    sep = [_run("a", "sgd", 1.2, 1.1, 1.3, 1.0, 0.95), _run("a", "adam", 1.6, 1.5, 1.7, 2.0, 0.9)]
    assert sva._verdict_tails_order(sep)["verdict"] == "agrees"
    assert sva._verdict_heavy_tails(sep)["verdict"] == "agrees"
    assert sva._verdict_sharpness(sep)["verdict"] == "agrees"
    assert sva._verdict_accuracy(sep)["verdict"] == "agrees"
    overlap = [_run("a", "sgd", 1.4, 1.2, 1.6), _run("a", "adam", 1.5, 1.3, 2.1)]
    assert sva._verdict_tails_order(overlap)["verdict"] == "partly agrees"
    assert sva._verdict_heavy_tails(overlap)["verdict"] == "partly agrees"
    assert sva._verdict_accuracy(overlap)["verdict"] == "inconclusive"
    reverse = [_run("a", "sgd", 1.8, 1.7, 1.9, 3.0, 0.8), _run("a", "adam", 1.2, 1.1, 1.3, 1.0)]
    assert sva._verdict_tails_order(reverse)["verdict"] == "disagrees"
    assert sva._verdict_sharpness(reverse)["verdict"] == "disagrees"
    assert sva._verdict_accuracy(reverse)["verdict"] == "disagrees"
    sde = {"exponents": {"1.5": 1.55, "1.8": 1.3},
           "width": [{"mean_exit_time": 1.0}, {"mean_exit_time": 2.0}],
           "optimizers": [{"alpha": 1.5, "dynamics": "sgd", "mean_exit_time": 1.0},
                          {"alpha": 1.5, "dynamics": "adam", "mean_exit_time": 3.0}]}
    verdict = sva._verdict_sde(sde)
    assert verdict["verdict"] == "partly agrees" and verdict["exponent_within_tol"] == [True, False]
    assert not math.isnan(sva.EXPONENT_TOL)


def test_checkpoints_keep_adams_own_second_moment():
    """The preconditioner of Adam's noise is torch's own denominator at the checkpoint."""
    import torch
    from torch import nn

    import valleys
    from valleys.experiments.sgd_vs_adam import _Checkpoints
    from valleys.train import optimizer_preconditioner, train

    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(40, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (40,))
    obj = valleys.Objective(nn.Linear(5, 3).double(), "ce", (X, y))
    seen = {}

    class Denominator:  # runs after _Checkpoints at the same step
        def setup(self, context):
            self.context = context

        def __call__(self, step, theta):
            if step == 6:
                seen["P"] = optimizer_preconditioner(self.context.optimizer, self.context.param)

    keep = _Checkpoints({6})
    train(obj, optimizer="adam", lr=0.01, steps=8, batch_size=8, seed=0, record_every=2,
          callbacks=[keep, Denominator()])
    assert set(keep.thetas) == {6} and set(keep.second_moments) == {6}
    P = keep.second_moments[6].sqrt() + 1e-8
    assert torch.allclose(P, seen["P"], rtol=1e-12, atol=0)
