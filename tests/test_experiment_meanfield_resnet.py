"""The meanfield-resnet reproduction: its quick preset end to end (output contract)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from valleys.experiments import meanfield_resnet as exp


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("meanfield-resnet")
    return out, exp.run(out, preset="quick", seed=0, progress=False)


def test_name_and_presets():
    assert exp.NAME == "meanfield-resnet"
    assert {"quick", "full"} <= set(exp.PRESETS)
    with pytest.raises(ValueError, match="unknown preset"):
        exp.run("unused", preset="nope")


def test_euler_errors_contract(quick):
    out, _ = quick
    on_disk = json.loads((out / "summary.json").read_text())
    errors = on_disk["euler_errors"]
    assert [e["depth"] for e in errors] == list(exp.PRESETS["quick"].depths)
    assert all(set(e) == {"depth", "error"} and e["error"] > 0 for e in errors)
    # recompute the slope from the stored numbers: first order in 1/L
    slope = np.polyfit(np.log([e["depth"] for e in errors]),
                       np.log([e["error"] for e in errors]), 1)[0]
    assert slope == pytest.approx(on_disk["euler_slope"])
    assert -1.15 < slope < -0.85
    assert on_disk["reference_error"] < 1e-3 * errors[-1]["error"]


def test_adjoint_and_schemes(quick):
    _, summary = quick
    assert summary["adjoint_max_relative_error"] < 1e-12
    runs = summary["runs"]
    spec = exp.PRESETS["quick"]
    assert len(runs) == 3 * spec.seeds
    budget = spec.budget_steps * spec.depth
    for r in runs:
        assert budget - spec.depth < r["cost"] <= budget  # equal cost, up to one step
        if not r["diverged"]:
            assert r["train_loss"] < r["initial_loss"]
    assert summary["verdict"] == summary["verdicts"]["overall"]
    for key in ("switch_test_ratio", "refine_test_ratio"):
        assert summary[key] is None or summary[key] > 0


def test_verdict_rule():
    assert exp.verdict(1e-15, -1.0, -1.0, 0.9)["overall"] == "agrees"
    partly = exp.verdict(1e-15, -1.0, -1.0, 1.05)
    assert partly["block_switching"] == "partly agrees"
    assert partly["overall"].startswith("partly agrees")
    assert exp.verdict(1e-15, -1.0, -1.0, 2.0)["block_switching"] == "disagrees"
    assert exp.verdict(1e-3, -1.0, -1.0, 0.9)["overall"] == "disagrees"
    assert exp.verdict(1e-15, -0.5, -1.0, 0.9)["euler"] == "disagrees"
    assert exp.verdict(1e-15, -1.0, -1.0, math.nan)["block_switching"] == "inconclusive"


def test_files(quick):
    out, summary = quick
    for stem in summary["figures"]:
        for suffix in ("png", "svg"):
            assert (out / f"{stem}.{suffix}").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "## Claim" in report and "Lu, Ma, Lu, Lu & Ying" in report
    assert f"**{summary['verdict']}**" in report
    table = pd.read_csv(out / "results.csv")
    assert len(table) == len(summary["runs"])
    assert set(table["scheme"]) == {"plain", "shuffle", "refine"}
