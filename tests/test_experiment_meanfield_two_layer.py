"""The meanfield-two-layer reproduction: its quick preset end to end (about 20 s of CPU)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from valleys.experiments import meanfield_two_layer as exp

FIGURES = ("loss_curves", "width_scaling", "lazy_vs_meanfield", "mmn_pde", "particles_final")


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("meanfield-two-layer")
    return out, exp.run(out, preset="quick", seed=0, progress=False)


def test_presets_follow_the_contract():
    assert exp.NAME == "meanfield-two-layer"
    assert {"quick", "full"} <= set(exp.PRESETS)
    for p in exp.PRESETS.values():
        assert p.reference_width > max(p.widths)
    with pytest.raises(ValueError, match="unknown preset"):
        exp.run("/nonexistent-never-created", preset="huge")


def test_summary_holds_final_loss_by_width(quick):
    out, _summary = quick
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["experiment"] == "meanfield-two-layer"
    entries = on_disk["final_loss_by_width"]
    assert [e["width"] for e in entries] == list(exp.PRESETS["quick"].widths)
    for e in entries:
        assert set(e) == {"width", "loss"}
        assert isinstance(e["width"], int) and math.isfinite(e["loss"]) and e["loss"] >= 0
    assert set(on_disk["verdicts"]) == {"a", "b", "c", "d", "e"}
    assert all(v in {"agrees", "partly agrees", "disagrees"} for v in on_disk["verdicts"].values())
    assert on_disk["diverged_runs"] == 0


def test_headline_numbers_are_consistent(quick):
    _, summary = quick
    by_width = summary["by_width"]
    # The summary's losses are the means of the per-run table.
    with open(Path(quick[0]) / "results.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for entry in by_width:
        finals = [float(r["final_loss"]) for r in rows
                  if r["scaling"] == "mean-field" and int(r["width"]) == entry["width"]
                  and int(r["seed"]) < 1000]
        assert entry["loss"] == pytest.approx(sum(finals) / len(finals), rel=1e-9)
    c = summary["headline"]["c"]
    assert c["risk_increases"] >= 0 and c["max_relative_balancedness_drift"] >= 0
    d = summary["headline"]["d"]
    assert d["relative_gap"] == pytest.approx(d["quantile_gap"] / d["quantile_travel"])
    for bound in summary["bounds"]:
        assert bound["a_posteriori"] > 0 and bound["a_priori"] > bound["a_priori_approximation"]


def test_figures_report_and_table_are_written(quick):
    out, _summary = quick
    for stem in FIGURES:
        for suffix in ("png", "svg"):
            assert (out / f"{stem}.{suffix}").stat().st_size > 1000
    assert (out / "particles.gif").stat().st_size > 1000
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "## The claim" in report and "## What was measured" in report
    assert report.count("Verdict") >= 5
    for stem in FIGURES:
        assert f"({stem}.png)" in report
