"""The meanfield-resnet reproduction: its quick preset through the driver, and its criteria."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from valleys.experiments import load_experiment, run
from valleys.experiments.meanfield_resnet import measure as exp

SCHEMES = ("plain", "shuffle", "refine")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("meanfield-resnet")
    return out, run("meanfield-resnet", out, preset="quick", progress=False)


def test_registered_with_enough_seeds():
    experiment = load_experiment("meanfield-resnet")
    assert experiment.name == exp.NAME == "meanfield-resnet"
    assert len(exp.SEEDS["quick"]) >= 2 and len(exp.SEEDS["full"]) >= 5
    assert all(p.threads == 1 for p in exp.PRESETS.values())


def test_summary_contract(quick):
    out, summary = quick
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["claims"] == summary["claims"]
    assert [c["id"] for c in summary["claims"]] == [s.id for s in exp.CLAIMS]
    for claim in summary["claims"]:
        assert set(claim) >= {"id", "claim", "criterion", "measured", "seeds", "verdict"}
        assert claim["verdict"] in ("agrees", "partly", "disagrees", "not tested")
    switching = summary["block_switching"]["test"]
    assert switching["seeds"] == len(exp.SEEDS["quick"])
    assert switching["low"] <= switching["ratio"] <= switching["high"]
    assert summary["verdicts"]["block-switching"] == exp.switching_verdict(switching)


def test_euler_and_adjoint_measurements(quick):
    out, summary = quick
    spec = exp.PRESETS["quick"]
    record = json.loads((out / "seeds" / "seed-0.json").read_text())["records"]
    euler = record["euler"]
    assert euler["depths"] == list(spec.depths)
    # recompute the slope from the stored numbers: first order in 1/L
    slope = np.polyfit(np.log(euler["depths"]), np.log(euler["output_error"]), 1)[0]
    assert slope == pytest.approx(euler["euler_slope"])
    assert -1.15 < slope < -0.85
    assert euler["reference_error"] < 1e-3 * euler["output_error"][-1]
    assert record["adjoint_error"] < 1e-12
    assert summary["verdicts"]["adjoint"] == "agrees"


def test_schemes_at_equal_cost(quick):
    out, _ = quick
    spec = exp.PRESETS["quick"]
    budget = spec.budget_steps * spec.depth
    table = pd.read_csv(out / "results.csv")
    assert len(table) == len(exp.SEEDS["quick"]) * 3 and set(table["scheme"]) == set(SCHEMES)
    for _, row in table.iterrows():
        assert budget - spec.depth < row["cost"] <= budget  # equal cost, up to one step
        if not row["diverged"]:
            assert row["train_loss"] < row["initial_loss"]


def test_figures_written(quick):
    out, summary = quick
    assert [f["stem"] for f in summary["figures"]] == ["euler_error", "training_schemes",
                                                        "order_sensitivity"]
    for figure in summary["figures"]:
        for suffix in ("png", "svg"):
            assert (out / f"{figure['stem']}.{suffix}").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "## Set-up" in report and "## Discussion" in report and "Lu, Ma, Lu, Lu & Ying" in report


def test_interval_of_ratios():
    got = exp.log_ratio_interval([0.9, 0.8, 1.0, 0.85, 0.95])
    logs = np.log([0.9, 0.8, 1.0, 0.85, 0.95])
    half = 2.7764451 * logs.std(ddof=1) / math.sqrt(5)
    assert got["ratio"] == pytest.approx(math.exp(logs.mean()))
    assert got["low"] == pytest.approx(math.exp(logs.mean() - half), rel=1e-6)
    assert got["high"] == pytest.approx(math.exp(logs.mean() + half), rel=1e-6)
    assert exp.log_ratio_interval([1.1, None, math.nan])["low"] is None  # one usable seed


def _record(plain: float | None, shuffle: float | None) -> dict:
    def run_(loss):
        return {"test_loss": loss, "train_loss": loss, "order_sensitivity": 0.0}

    return {"adjoint_error": 1e-16,
            "euler": {"euler_slope": -1.0, "velocity_slope": -1.0},
            "schemes": {"plain": run_(plain), "shuffle": run_(shuffle), "refine": run_(plain)}}


@pytest.mark.parametrize(("shuffle", "verdict"), [
    ([0.90, 0.92, 0.88, 0.91, 0.89], "agrees"),
    ([0.90, 1.10, 0.95, 1.05, 1.00], "partly"),
    ([1.10, 1.12, 1.08, 1.11, 1.09], "disagrees"),
    ([1.10, None, None, None, None], "not tested"),
])
def test_every_switching_verdict_is_reachable(shuffle, verdict):
    records = {s: _record(1.0 if r is not None else None, r) for s, r in enumerate(shuffle)}
    claims = {c.id: c for c in exp.claims(records, exp.PRESETS["quick"])}
    assert claims["block-switching"].verdict == verdict
    assert claims["adjoint"].verdict == "agrees"


def test_slope_criteria_per_seed():
    records = {0: _record(1.0, 1.0), 1: _record(1.0, 1.0)}
    records[1]["euler"]["euler_slope"] = -0.5
    records[1]["euler"]["velocity_slope"] = math.nan
    records[1]["adjoint_error"] = 1e-3
    claims = {c.id: c for c in exp.claims(records, exp.PRESETS["quick"])}
    assert claims["euler-depth"].verdict == "disagrees"
    assert claims["velocity-depth"].verdict == "agrees"  # seed 1 could not measure it
    assert claims["adjoint"].verdict == "disagrees"
    records[0]["euler"]["velocity_slope"] = math.nan
    claims = {c.id: c for c in exp.claims(records, exp.PRESETS["quick"])}
    assert claims["velocity-depth"].verdict == "not tested"
