"""The edge-of-stability reproduction: its quick preset end to end, and the verdict rules.

The quick preset runs once per module (about half a minute on two quiet cores); the tests read
its output folder.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from valleys.experiments import edge_of_stability as eos
from valleys.stability.thresholds import threshold

FIGURES = ("sharpness", "loss", "flow_distance")


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("edge-of-stability")
    summary = eos.run(out, preset="quick", seed=0, progress=False)
    return out, summary


def test_presets_follow_the_contract():
    assert eos.NAME == "edge-of-stability"
    assert {"quick", "full"} <= set(eos.PRESETS)
    for preset in eos.PRESETS.values():
        assert preset.flow_factor in preset.gd_factors
        assert all(f > 1 for f in preset.gd_factors)  # 2/η above a₀: sharpening is needed


def test_unknown_preset_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown preset"):
        eos.run(tmp_path, preset="huge")


def test_summary_runs_have_the_contract_keys(quick):
    out, _ = quick
    summary = json.loads((out / "summary.json").read_text())
    assert summary["experiment"] == "edge-of-stability"
    runs = summary["runs"]
    assert isinstance(runs, list)
    preset = eos.PRESETS["quick"]
    assert [r["optimizer"] for r in runs] == ["gd"] * len(preset.gd_factors) + [
        "heavy_ball", "adam"]
    for run in runs:
        for key in ("optimizer", "lr", "threshold", "sharpness",
                    "final_sharpness_over_threshold"):
            assert key in run, key
        assert isinstance(run["sharpness"], list) and len(run["sharpness"]) > 10
        assert all(isinstance(s, float) and math.isfinite(s) for s in run["sharpness"])
        assert run["lr"] > 0 and run["status"] in {"max_steps", "converged", "diverged"}
        hyper = {"beta": run["beta"]} if "beta" in run else (
            {"beta1": run["beta1"]} if "beta1" in run else {})
        assert run["threshold"] == pytest.approx(threshold(run["optimizer"], run["lr"], **hyper))
        assert run["final_sharpness_over_threshold"] == pytest.approx(
            run["sharpness"][-1] / run["threshold"])
    gd = [r for r in runs if r["optimizer"] == "gd"]
    for run, factor in zip(gd, preset.gd_factors, strict=True):
        assert run["threshold"] == pytest.approx(factor * summary["initial_sharpness"], rel=1e-3)
        assert run["sharpness"][0] == pytest.approx(summary["initial_sharpness"], rel=1e-2)
    assert runs[-1]["threshold"] == pytest.approx(38 / runs[-1]["lr"])


def test_verdicts_and_flow_are_recorded(quick):
    _, summary = quick
    allowed = {"agrees", "partly agrees", "disagrees", "not tested"}
    assert set(summary["verdicts"]) == {"gd", "loss", "flow", "heavy_ball", "adam"}
    assert set(summary["verdicts"].values()) <= allowed
    flow_run = next(r for r in summary["runs"] if r.get("flow"))
    distances = flow_run["flow_distance"]["distance"]
    assert distances[0] == 0.0 and all(d >= 0 for d in distances)
    perf = summary["performance"]
    assert perf["matvecs_warm"] > 0 and perf["untracked_s"] > 0
    assert perf["evaluations"] == eos.PRESETS["quick"].steps // 10 + 1


def test_figures_report_and_table_are_written(quick):
    out, summary = quick
    for stem in FIGURES:
        for suffix in ("png", "svg"):
            assert (out / f"{stem}.{suffix}").stat().st_size > 1000
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "## The claim" in report and "2/η" in report and "38/η" in report
    assert any(w in report for w in ("**AGREES**", "**DISAGREES**", "**PARTLY AGREES**",
                                     "**NOT TESTED**"))
    for stem in FIGURES:
        assert f"({stem}.png)" in report
    with open(out / "results.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    steps = eos.PRESETS["quick"].steps
    assert len(rows) == len(summary["runs"]) * (steps // 10 + 1)  # one row per recorded step
    assert {"run", "optimizer", "lr", "step", "loss", "sharpness", "threshold"} <= set(rows[0])


def test_verdict_rules_on_synthetic_trajectories():
    steps = list(range(0, 200, 10))
    rising = [1.0 + 0.25 * i for i in range(8)]  # 1.0 ... 2.75, then hovers at the threshold
    hover = rising + [2.0 * (1.05 if i % 2 else 0.98) for i in range(12)]
    losses = [1.0 / (1 + i) * (1.3 if i % 3 == 0 else 1.0) for i in range(20)]
    good = eos.analyse_run(steps, hover, losses, threshold=2.0)
    assert good["reached"] and good["hovers"] and good["sharpening"] and good["non_monotone"]
    assert good["reached_step"] == 40  # first sharpness >= 0.95 · 2
    assert good["final_sharpness_over_threshold"] == pytest.approx(hover[-1] / 2.0)
    never = eos.analyse_run(steps, [1.0] * 20, losses, threshold=2.0)
    assert not never["reached"] and eos._verdict([never]) == "not tested"
    overshoot = eos.analyse_run(steps, rising + [4.0] * 12, losses, threshold=2.0)
    assert overshoot["reached"] and not overshoot["hovers"]
    assert eos._verdict([good, overshoot]) == "partly agrees"
    assert eos._verdict([overshoot]) == "disagrees"
