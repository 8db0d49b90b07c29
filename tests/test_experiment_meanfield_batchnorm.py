"""The meanfield-batchnorm reproduction: its quick preset end to end (output contract)."""

from __future__ import annotations

import itertools
import json
import math

import pandas as pd
import pytest

from valleys.experiments import meanfield_batchnorm as exp


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("meanfield-batchnorm")
    return out, exp.run(out, preset="quick", seed=0, progress=False)


def test_name_and_presets():
    assert exp.NAME == "meanfield-batchnorm"
    assert {"quick", "full"} <= set(exp.PRESETS)
    with pytest.raises(ValueError, match="unknown preset"):
        exp.run("unused", preset="nope")


def test_summary_contract(quick):
    out, summary = quick
    on_disk = json.loads((out / "summary.json").read_text())
    mismatch = on_disk["max_relative_mismatch"]
    assert isinstance(mismatch, float) and math.isfinite(mismatch)
    assert mismatch == pytest.approx(summary["max_relative_mismatch"])
    # float64 and the same dynamics: rounding level, far below the verdict tolerance
    assert 0 <= mismatch < exp.MISMATCH_TOL
    assert on_disk["verdict"] in ("agrees", "disagrees", "inconclusive")
    assert on_disk["verdict"] == on_disk["verdicts"]["overall"]


def test_checks_are_measured(quick):
    _, summary = quick
    for act, entry in summary["per_activation"].items():
        assert not entry["diverged"], act
        assert entry["loss_end"] < entry["loss_start"]  # the comparison covers real training
        assert entry["norm_growth_factor"] > 1.0        # GD with BN grows the norms
    flow = summary["flow"]
    drift = flow["max_relative_norm_drift"]
    assert all(a > b > 0 for a, b in itertools.pairwise(drift))
    assert 0.8 < flow["slope"] < 1.2


def test_verdict_rule():
    good = {"max_relative_mismatch": 1e-15, "max_euler_cosine": 1e-15,
            "max_norm_residual": 1e-15, "max_direction_difference": 1e-15, "flow_slope": 1.0}
    assert exp.verdict(good)["overall"] == "agrees"
    assert exp.verdict({**good, "max_relative_mismatch": 1e-3})["overall"] == "disagrees"
    assert exp.verdict({**good, "flow_slope": 0.5})["flow_conservation"] == "disagrees"
    assert exp.verdict({**good, "max_relative_mismatch": math.nan})["overall"] == "inconclusive"


def test_files(quick):
    out, summary = quick
    for stem in summary["figures"]:
        for suffix in ("png", "svg"):
            assert (out / f"{stem}.{suffix}").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "## Claim" in report and "Ma & Ying" in report
    assert f"**{summary['verdict']}**" in report
    table = pd.read_csv(out / "results.csv")
    assert set(table["activation"]) == set(exp.PRESETS["quick"].activations)
    assert table["relative_mismatch"].max() == pytest.approx(summary["max_relative_mismatch"])
