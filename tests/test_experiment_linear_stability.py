"""The linear-stability reproduction (Wu, Ma & E 2018): its quick preset through the driver.

The quick preset runs once per module (two seeds); the tests read its output folder. The
criterion functions are tested on synthetic records, each verdict reached ("not tested"
included), and the compressed exact test is checked against the closed form in one dimension.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from valleys.experiments import load_experiment, run
from valleys.experiments.linear_stability import measure as ls
from valleys.experiments.protocol import judge_seeds
from valleys.stability import sgd_criterion

NAME = "linear-stability"
FIGURES = ("gd_sharpness", "sgd_scatter", "escape")
ESCAPE_KEYS = {"batch_size", "criterion", "escaped", "sharpness_before", "sharpness_after",
               "nonuniformity_after", "seed"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("linear-stability")
    summary = run(NAME, out, preset="quick", progress=False)
    return out, summary


def test_presets_follow_the_contract():
    experiment = load_experiment(NAME)
    assert experiment.name == ls.NAME == NAME
    assert [c.id for c in ls.CLAIMS] == ["gd-edge", "sgd-region", "escape"]
    assert all(c.partly is None for c in ls.CLAIMS)
    assert ls.ESCAPE_MIN_CRITERION >= 1.5  # issue #14: no borderline escape batch sizes
    for preset in ls.PRESETS.values():
        assert preset.threads == 1
        assert set(preset.sgd_factors) <= set(preset.gd_factors)
        assert preset.escape_factor in preset.gd_factors
        assert all(1 <= B < preset.n for B in preset.batch_sizes + preset.escape_batch_sizes)
        assert len(preset.escape_batch_sizes) >= 2 and preset.tail_points >= 3


def test_summary_follows_the_contract(quick):
    out, _ = quick
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["seeds"] == [0, 1]
    assert [c["id"] for c in on_disk["claims"]] == [c.id for c in ls.CLAIMS]
    for claim in on_disk["claims"]:
        assert set(claim) >= {"id", "claim", "criterion", "measured", "seeds", "verdict"}
        assert claim["verdict"] in {"agrees", "disagrees", "not tested"}
        for value in claim["measured"].values():
            assert isinstance(value, int | float | str) or {"mean", "min", "max"} <= set(value)
    escape = on_disk["escape"]
    assert escape, "the quick preset must run the escape at some batch size"
    assert {item["seed"] for item in escape} == {0, 1}
    for item in escape:
        assert set(item) >= ESCAPE_KEYS
        assert item["criterion"] >= ls.ESCAPE_MIN_CRITERION
        assert isinstance(item["escaped"], bool)
        assert item["sharpness_before"] > 0 and math.isfinite(item["sharpness_before"])
        if item["status"] != "diverged":
            assert item["sharpness_after"] > 0 and item["nonuniformity_after"] >= 0
    per_seed = {}
    for item in escape:
        per_seed.setdefault(item["seed"], set()).add(item["batch_size"])
    assert all(len(batches) >= 2 for batches in per_seed.values())


def test_records_are_consistent(quick):
    out, _ = quick
    preset = ls.PRESETS["quick"]
    for seed in (0, 1):
        records = json.loads((out / "seeds" / f"seed-{seed}.json").read_text())["records"]
        assert len(records["gd"]) == len(preset.gd_factors)
        assert len(records["sgd"]) == len(preset.sgd_factors) * len(preset.batch_sizes)
        for r in records["gd"]:
            assert r["batch_size"] == preset.n
            if r["status"] == "converged":
                # GD's sufficient condition is exactly a <= 2/η, and the compressed exact test
                # contains H's top direction: ρ_Q = (1 − ηa)².
                assert r["max_stable_lr"] == pytest.approx(2 / r["sharpness"], rel=1e-6)
                assert r["rho_subspace"] == pytest.approx((1 - r["lr"] * r["sharpness"]) ** 2,
                                                          rel=1e-3, abs=1e-6)
        for r in records["sgd"]:
            if r["status"] == "converged":
                assert len(r["nonuniformity_samples"]) == preset.tail_points
                assert r["nonuniformity_error"] >= 0
                # ρ_Q is a lower bound of ρ, which the sufficient λ_max bounds from above.
                assert r["rho_subspace"] <= r["sufficient_subspace"] + 1e-9
        for start in records["escape"]["candidates"]:
            assert start["criterion_1d"] == pytest.approx(sgd_criterion(
                start["sharpness"], start["nonuniformity"], records["escape"]["lr"],
                start["batch_size"], preset.n))
            if start["chosen"]:
                assert start["criterion_1d"] >= ls.ESCAPE_MIN_CRITERION
        chosen = [s["batch_size"] for s in records["escape"]["candidates"] if s["chosen"]]
        unstable = [s["batch_size"] for s in records["escape"]["candidates"]
                    if s["criterion_1d"] >= ls.ESCAPE_MIN_CRITERION]
        assert chosen == sorted(unstable)[-preset.escape_max_runs:]


def test_figures_report_and_table_are_written(quick):
    out, _ = quick
    for stem in FIGURES:
        for suffix in ("png", "svg"):
            assert (out / f"{stem}.{suffix}").stat().st_size > 1000
    report = (out / "report.md").read_text(encoding="utf-8")
    for heading in ("## Set-up", "## Results", "## Discussion", "(c) Escape"):
        assert heading in report
    for stem in FIGURES:
        assert f"({stem}.png)" in report
    with open(out / "results.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["part"] for row in rows} >= {"gd", "sgd", "escape-start", "escape-landing"}
    assert all(row["batch_size"] not in ("", "nan") for row in rows)


# --- criteria on synthetic records ------------------------------------------------------------


def _gd(lr, a, status="converged"):
    return {"lr": lr, "sharpness": a, "status": status}


def test_gd_edge_outcomes():
    a0 = 4.0  # 2/a₀ = 0.5
    assert ls.edge_outcome([_gd(0.25, 3.0), _gd(0.5, 3.9), _gd(1.0, 1.9)], a0) is True
    assert ls.edge_outcome([_gd(0.5, 4.3)], a0) is False  # above 1.05 · 2/η
    assert ls.edge_outcome([_gd(0.5, 2.0)], a0) is False  # far below 2/η at η >= 2/a₀
    assert ls.edge_outcome([_gd(0.25, 3.0), _gd(1.0, math.nan, "diverged")], a0) is None


def _point(a, s, err_a=0.0, err_s=0.0, status="converged", a_max=10.0, s_max=50.0):
    return {"status": status, "sharpness": a, "nonuniformity": s, "sharpness_error": err_a,
            "nonuniformity_error": err_s, "max_sharpness": a_max, "max_nonuniformity": s_max}


def test_points_count_outside_only_beyond_their_error():
    assert ls.point_inside(_point(9.0, 50.1, err_s=0.2))
    assert not ls.point_inside(_point(9.0, 50.3, err_s=0.2))
    assert ls.point_inside(_point(10.05, 10.0, err_a=0.1))
    assert not ls.point_inside(_point(10.5, 10.0, err_a=0.1))
    assert ls.region_outcome([_point(5, 10), _point(5, 50.1, err_s=0.5)]) is True
    assert ls.region_outcome([_point(5, 10), _point(5, 55, err_s=0.5)]) is False
    assert ls.region_outcome([_point(5, 10, status="diverged")]) is None


def _escape_run(spike=100.0, final_loss=1e-3, s_after=20.0, status="converged"):
    run = {"status": status, "spike": spike, "final_loss": final_loss}
    if status != "diverged":
        run["landing"] = _point(5.0, s_after)
    return run


def test_escape_outcomes():
    goal = 1e-3
    good = {"outcome": "switched", "runs": [_escape_run(), _escape_run(spike=20.0)]}
    assert ls.escape_outcome(good, goal) is True
    assert ls.escape_outcome({"outcome": "switched", "runs": [_escape_run(spike=3.0)]},
                             goal) is False
    assert ls.escape_outcome({"outcome": "switched", "runs": [_escape_run(final_loss=0.1)]},
                             goal) is False
    assert ls.escape_outcome({"outcome": "switched", "runs": [_escape_run(s_after=80.0)]},
                             goal) is False
    assert ls.escape_outcome({"outcome": "switched", "runs": [_escape_run(status="diverged")]},
                             goal) is None
    # a diverged batch size is not tested; the seed is judged on the others
    assert ls.escape_outcome({"outcome": "switched", "runs": [
        _escape_run(status="diverged"), _escape_run()]}, goal) is True
    assert ls.escape_outcome({"outcome": "switched", "runs": [
        _escape_run(status="diverged"), _escape_run(spike=2.0)]}, goal) is False
    assert ls.escape_outcome({"outcome": "no-unstable-batch", "runs": []}, goal) is None
    assert ls.escape_outcome({"outcome": "gd-not-converged", "runs": []}, goal) is None
    assert [judge_seeds(p) for p in ([True, True], [True, False], [None, None])] == [
        "agrees", "disagrees", "not tested"]


def test_compressed_exact_test_is_the_1d_criterion_for_scalar_hessians():
    # Scalar per-sample Hessians a_i: ρ(T) = (1 − ηa)² + η²c s² exactly (Wu, Ma & E 2018).
    a_i = torch.tensor([0.2, 3.8, 1.0, 2.0], dtype=torch.float64)
    a, s = float(a_i.mean()), float(a_i.var(unbiased=False).sqrt())
    for B in (1, 2, 3):
        result = ls._exact(a_i.view(-1, 1, 1), 0.7, B)
        assert result["rho_subspace"] == pytest.approx(sgd_criterion(a, s, 0.7, B, 4))
