"""The input-smoothness reproduction (Ma & Ying 2021): its quick preset end to end.

The quick preset runs once into a temporary folder (module-scoped, about half a minute); the
tests check the output contract, the sanity of the measurements and that a rerun resumes from
the store instead of retraining.
"""

from __future__ import annotations

import json
import math
import time

import pandas as pd
import pytest

from valleys.experiments import get_experiment
from valleys.experiments import input_smoothness as exp
from valleys.sweeps import ResultsStore

RUN_KEYS = (
    "lr", "batch_size", "status", "final_loss", "sharpness", "nonuniformity", "g_x", "g_w",
    "sobolev", "bound_lhs", "bound_rhs", "test_accuracy", "robust_accuracy",
)
MEASURED = ("sharpness", "nonuniformity", "g_x", "g_w", "g_x2", "g_w2", "sobolev", "bound_lhs",
            "bound_rhs", "bound_rhs_ggn")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("input-smoothness")
    started = time.perf_counter()
    summary = exp.run(out, preset="quick", seed=0, progress=False)
    return out, summary, time.perf_counter() - started


def _measured(summary):
    return [r for r in summary["runs"] if r["status"] != "diverged"]


def test_registered_and_presets():
    assert get_experiment("input-smoothness") is exp
    assert exp.NAME == "input-smoothness"
    assert {"quick", "full"} <= set(exp.PRESETS)
    with pytest.raises(ValueError, match="unknown preset"):
        exp.run("unused", preset="nope")


def test_summary_file_matches_return(quick):
    out, summary, _ = quick
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["runs"] and len(on_disk["runs"]) == len(summary["runs"])
    assert on_disk["experiment"] == "input-smoothness"
    assert on_disk["preset"] == "quick"
    assert on_disk["verdict"] in ("agrees", "partly agrees", "disagrees", "inconclusive")


def test_grid_and_keys(quick):
    _, summary, _ = quick
    spec = exp.PRESETS["quick"]
    runs = summary["runs"]
    assert len(runs) == len(spec.lr_fractions) * len(spec.batch_sizes)
    assert len(summary["lr_grid"]) == len(spec.lr_fractions)
    assert summary["lambda0"] > 0
    for fraction, lr in zip(spec.lr_fractions, summary["lr_grid"], strict=True):
        assert lr == pytest.approx(fraction * 2 / summary["lambda0"], rel=1e-2)
    for run in runs:
        assert set(RUN_KEYS) <= set(run)
        assert run["status"] in ("converged", "max_steps", "diverged", "failed")
        assert run["lr"] in summary["lr_grid"]
        assert run["batch_size"] in spec.batch_sizes
        assert set(run["robust_accuracy"]) == {"l2", "linf"}


def test_measurements_are_sane(quick):
    _, summary, _ = quick
    measured = _measured(summary)
    assert len(measured) >= 4, "most quick runs should reach the loss goal"
    for run in measured:
        assert run["final_loss"] >= 0
        for key in MEASURED:
            assert isinstance(run[key], float) and math.isfinite(run[key]) and run[key] > 0, key
        for key in ("test_accuracy", "train_accuracy"):
            assert 0.0 <= run[key] <= 1.0
        for by_radius in run["robust_accuracy"].values():
            accs = [by_radius[r] for r in sorted(by_radius, key=float)]
            assert all(0.0 <= a <= 1.0 for a in accs)
            assert accs == sorted(accs, reverse=True)  # cumulative: non-increasing in ε
        # The Gauss-Newton form of the bound holds at every θ; the Hessian form at interpolation.
        assert run["bound_lhs"] <= run["bound_rhs_first_layer"] * (1 + 1e-9)
        assert run["bound_rhs_first_layer"] <= run["bound_rhs_ggn"] * (1 + 1e-9)
        if run["interpolates"]:
            assert run["status"] == "converged"
            assert run["final_loss"] <= exp.PRESETS["quick"].loss_goal
            assert run["bound_lhs"] <= run["bound_rhs"]
    assert summary["analysis"]["bound_holds_interpolating"]


def test_headline_numbers(quick):
    _, summary, _ = quick
    analysis = summary["analysis"]
    for key in ("spearman_gx_lr", "spearman_gx_inv_batch", "spearman_gx_gw"):
        rho = analysis[key]["rho"]
        assert rho is None or -1.0 <= rho <= 1.0
    for key in ("gx_falls_with_lr", "gx_falls_with_smaller_batch"):
        fraction = analysis[key]["fraction"]
        assert analysis[key]["pairs"] >= 1
        assert 0.0 <= fraction <= 1.0
    assert summary["verdict"] == analysis["verdict"]["overall"]
    counts = analysis["counts"]
    assert sum(counts.values()) == len(summary["runs"])


def test_verdict_rule():
    def analysis(lr, batch):
        return {"gx_falls_with_lr": {"fraction": lr, "pairs": 3},
                "gx_falls_with_smaller_batch": {"fraction": batch, "pairs": 3}}

    assert exp.verdict(analysis(1.0, 0.8))["overall"] == "agrees"
    assert exp.verdict(analysis(1.0, 0.6))["overall"] == "partly agrees"
    assert exp.verdict(analysis(0.4, 1.0))["overall"] == "disagrees"
    assert exp.verdict(analysis(math.nan, 1.0))["overall"] == "inconclusive"


def test_files(quick):
    out, summary, _ = quick
    assert summary["figures"]
    for stem in summary["figures"]:
        for suffix in ("png", "svg"):
            path = out / f"{stem}.{suffix}"
            assert path.stat().st_size > 1000, path
    report = (out / "report.md").read_text()
    assert "## Claim" in report and "Ma & Ying" in report
    assert "## Verdict" in report and f"**{summary['verdict']}**" in report
    assert "Where the measurements do not follow the claim" in report
    for stem in summary["figures"]:
        assert f"({stem}.png)" in report
    assert (out / "runs.sqlite").exists()


def test_results_table_matches_runs(quick):
    out, summary, _ = quick
    table = pd.read_csv(out / "results.csv")
    assert len(table) == len(summary["runs"])
    assert list(table["lr"]) == [r["lr"] for r in summary["runs"]]
    assert list(table["status"]) == [r["status"] for r in summary["runs"]]
    for run, (_, row) in zip(summary["runs"], table.iterrows(), strict=True):
        if run["status"] != "diverged":
            assert row["g_x"] == pytest.approx(run["g_x"])
            assert row["robust_l2_1"] == pytest.approx(run["robust_accuracy"]["l2"]["1"])


def test_rerun_resumes_without_training(quick):
    out, first, first_time = quick
    assert first["runs_trained_this_call"] == len(first["runs"])
    started = time.perf_counter()
    again = exp.run(out, preset="quick", seed=0, progress=False)
    elapsed = time.perf_counter() - started
    assert again["runs_trained_this_call"] == 0
    assert elapsed < first_time
    assert [r["g_x"] for r in again["runs"]] == [r["g_x"] for r in first["runs"]]
    records = ResultsStore(out / "runs.sqlite").records("input-smoothness-quick")
    assert len(records) == len(first["runs"])
    assert all(rec["attempts"] == 1 for rec in records)


def test_a_perfect_fall_is_not_listed_as_a_disagreement():
    """scipy returns ρ = −1 + O(eps) for a monotone fall; only real exceptions are listed."""
    from valleys.experiments.input_smoothness import _disagreements

    def entry(rho):
        return {"rho": rho, "p": 0.01, "n": 5}

    analysis = {
        "spearman_gx_lr_within_batch": {"8": entry(-0.9999999999999999), "16": entry(-0.5)},
        "spearman_gx_inv_batch_within_lr": {"0.1": entry(-1.0), "0.2": entry(0.3)},
        "robust_rises_with_lr": {},
        "spearman_robust_lr": {},
        "bound_holds_interpolating": True,
        "counts": {"diverged": 0, "max_steps": 0, "failed": 0},
    }
    lines = "\n".join(_disagreements(analysis))
    assert "B = 8" not in lines and "η = 0.1" not in lines
    assert "at B = 16, g_x(1) is not monotone" in lines
    assert "at η = 0.2, g_x(1) does not fall" in lines
