"""The linear-stability reproduction (Wu, Ma & E 2018): its quick preset end to end.

The quick preset runs once per module (about half a minute on two cores); the tests read its
output folder. A second run through the CLI on the same folder must resume from the store.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from valleys.experiments import get_experiment
from valleys.experiments import linear_stability as ls
from valleys.sweeps import ResultsStore

FIGURES = ("gd_sharpness", "sgd_scatter", "escape")
PARTS = {"gd", "sgd", "escape"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("linear-stability")
    summary = ls.run(out, preset="quick", seed=0, progress=False)
    return out, summary


def _attempts(out: Path) -> dict[str, int]:
    return {rec["run_id"]: rec["attempts"] for rec in ResultsStore(out / "runs.sqlite").records()}


def test_registered_and_presets_follow_the_contract():
    assert get_experiment("linear-stability") is ls
    assert ls.NAME == "linear-stability"
    assert {"quick", "full"} <= set(ls.PRESETS)
    quick = ls.PRESETS["quick"]
    assert set(quick.sgd_factors) <= set(quick.gd_factors)
    assert all(1 <= B < quick.n for B in quick.batch_sizes)


def test_unknown_preset_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown preset"):
        ls.run(tmp_path, preset="huge")


def test_escape_batch_is_the_largest_unstable_one():
    # a = 1, s = 10, η = 0.5, n = 100: criterion 0.25 + 0.25·c·100 with c = (n−B)/(B(n−1)).
    B, values = ls._choose_escape_batch(1.0, 10.0, 0.5, 100, (2, 10, 50))
    assert values["2"] > 1 and values["10"] > 1 and values["50"] < 1
    assert B == 10
    assert ls._choose_escape_batch(1.0, 0.0, 0.5, 100, (2, 10))[0] is None


def test_summary_runs_have_the_required_keys(quick):
    out, _ = quick
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["experiment"] == "linear-stability"
    runs = on_disk["runs"]
    assert {r["part"] for r in runs} == PARTS
    preset = ls.PRESETS["quick"]
    assert sum(r["part"] == "gd" for r in runs) == len(preset.gd_factors)
    assert sum(r["part"] == "sgd" for r in runs) == len(preset.sgd_factors) * len(
        preset.batch_sizes)
    for run in runs:
        for key in ("lr", "batch_size", "sharpness", "nonuniformity", "stable_predicted",
                    "final_loss", "part", "status", "seed"):
            assert key in run, key
        assert isinstance(run["lr"], float) and run["lr"] > 0
        assert run["status"] in {"converged", "max_steps", "diverged", "failed"}
        assert run["status"] != "failed"
        if run["status"] == "diverged":
            continue
        assert isinstance(run["batch_size"], int) and 1 <= run["batch_size"] <= preset.n
        assert isinstance(run["stable_predicted"], bool)
        assert math.isfinite(run["sharpness"]) and run["sharpness"] > 0
        assert math.isfinite(run["nonuniformity"]) and run["nonuniformity"] >= 0
        assert 0 <= run["final_loss"] < 1
    assert all(r["batch_size"] == preset.n for r in runs if r["part"] == "gd")


def test_headline_numbers_are_consistent(quick):
    _, summary = quick
    gd = summary["headline"]["gd"]
    assert len(gd["per_lr"]) == len(ls.PRESETS["quick"].gd_factors)
    for row in gd["per_lr"]:
        assert row["two_over_lr"] == pytest.approx(2 / row["lr"])
    sgd = summary["headline"]["sgd"]
    assert sgd["converged"] + sgd["diverged"] <= sgd["runs"]
    if sgd["converged"]:
        assert 0 <= sgd["fraction_within_bounds"] <= 1
    assert set(summary["verdicts"]) == PARTS
    # GD's multi-dimensional condition is exactly a <= 2/η.
    for run in summary["runs"]:
        if run["part"] == "gd" and run["status"] == "converged":
            assert run["stable_predicted"] == (run["max_stable_lr"] >= run["lr"])
            assert run["max_stable_lr"] == pytest.approx(2 / run["sharpness"], rel=1e-6)


def test_figures_report_and_table_are_written(quick):
    out, summary = quick
    for stem in FIGURES:
        for suffix in ("png", "svg"):
            assert (out / f"{stem}.{suffix}").stat().st_size > 1000
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "## The claim" in report and "2/η" in report
    assert report.count("Verdict") >= 3
    assert any(word in report for word in ("**AGREES**", "**DISAGREES**", "**PARTLY AGREES**"))
    for stem in FIGURES:
        assert f"({stem}.png)" in report
    with open(out / "results.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(summary["runs"])
    for row, run in zip(rows, summary["runs"], strict=True):
        assert row["part"] == run["part"]
        assert float(row["lr"]) == pytest.approx(run["lr"])


def test_gd_run_is_reproducible_with_the_same_seed(quick):
    out, _ = quick
    records = ResultsStore(out / "runs.sqlite").records("linear-stability/gd")
    done = [r for r in records if r["metrics"].get("train_status") == "converged"]
    fastest = min(done, key=lambda r: r["metrics"]["steps"])
    again = ls.run_gd(fastest["config"])
    assert again["steps"] == fastest["metrics"]["steps"]
    assert again["sharpness"] == pytest.approx(fastest["metrics"]["sharpness"], rel=1e-8)


def test_cli_rerun_resumes_without_retraining(quick):
    out, summary = quick
    before = _attempts(out)
    assert before and all(count == 1 for count in before.values())
    env = {**os.environ, "MPLBACKEND": "Agg"}
    result = subprocess.run(
        [sys.executable, "-m", "valleys", "reproduce", "linear-stability", "--quick",
         "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert _attempts(out) == before  # nothing was run again
    resumed = json.loads((out / "summary.json").read_text())
    assert resumed["initial_sharpness"] == pytest.approx(summary["initial_sharpness"], rel=1e-10)
    assert resumed["verdicts"] == summary["verdicts"]
    assert resumed["runtime_s"] < summary["runtime_s"]
