"""The meanfield-batchnorm reproduction: its quick preset through the driver (output contract,
the identities at rounding level) and the criteria on synthetic records."""

from __future__ import annotations

import itertools
import json
import math

import pandas as pd
import pytest

from valleys.experiments import load_experiment, run
from valleys.experiments.meanfield_batchnorm import measure as exp

QUICK = exp.PRESETS["quick"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("meanfield-batchnorm")
    summary = run(exp.NAME, out, preset="quick", progress=False)
    records = {s: json.loads((out / "seeds" / f"seed-{s}.json").read_text())["records"]
               for s in summary["seeds"]}
    return out, summary, records


def test_registered():
    experiment = load_experiment(exp.NAME)
    assert experiment.name == "meanfield-batchnorm"
    assert all(p.threads == 1 for p in experiment.presets.values())
    assert not any(spec.deterministic for spec in exp.CLAIMS)  # the numbers depend on the seed


def test_summary_contract(quick):
    out, _, _ = quick
    on_disk = json.loads((out / "summary.json").read_text())
    assert len(on_disk["seeds"]) >= 2 and on_disk["provisional"] == []
    assert [c["id"] for c in on_disk["claims"]] == [spec.id for spec in exp.CLAIMS]
    for claim in on_disk["claims"]:
        assert set(claim) >= {"id", "claim", "criterion", "measured", "seeds", "verdict"}
        (value,) = claim["measured"].values()
        assert set(value) >= {"mean", "min", "max"}
    mismatch = on_disk["claims"][0]["measured"]["max_relative_mismatch"]
    # float64 and the same dynamics: rounding level, far below the tolerance
    assert 0 <= mismatch["max"] < exp.MISMATCH_TOL


def test_checks_are_measured(quick):
    _, _, records = quick
    for r in records.values():
        for act, entry in r["comparison"].items():
            assert not entry["diverged"], act
            assert entry["loss_end"] < entry["loss_start"]  # the comparison covers training
            assert entry["norm_growth_factor"] > 1.0        # GD with BN grows the norms
        drift = r["flow"]["max_relative_norm_drift"]
        assert all(a > b > 0 for a, b in itertools.pairwise(drift))
        assert 0.8 < r["flow"]["slope"] < 1.2


def test_files(quick):
    out, summary, _ = quick
    assert [f["stem"] for f in summary["figures"]] == ["trajectories", "norm_growth",
                                                       "flow_conservation", "width_curves"]
    for figure in summary["figures"]:
        assert (out / f"{figure['stem']}.png").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "## Set-up" in report and "## Discussion" in report
    table = pd.read_csv(out / "results.csv")
    assert set(table["seed"]) == set(summary["seeds"])
    assert {"max_relative_mismatch", "flow_slope", "final_loss"} <= set(table["check"])


def _record(mismatch=1e-15, euler=1e-15, residual=1e-15, direction=1e-15, slope=1.0,
            diverged=False):
    entry = {"max_relative_mismatch": mismatch, "max_euler_cosine": euler,
             "max_norm_residual": residual, "diverged": diverged}
    return {"comparison": {"relu": entry, "tanh": dict(entry)}, "flow": {"slope": slope},
            "direction": {"max_direction_difference": [direction]}}


def _verdicts(*records):
    return {c.id: c.verdict for c in exp.claims(dict(enumerate(records)), QUICK)}


def test_every_verdict_is_reachable():
    assert set(_verdicts(_record(), _record()).values()) == {"agrees"}
    bad = _verdicts(_record(1e-3, 1e-3, 1e-3, 1e-3, 0.5), _record(1e-3, 1e-3, 1e-3, 1e-3, 2.0))
    assert set(bad.values()) == {"disagrees"}
    # an identity must hold on every seed: one failing seed is a disagreement, not "partly"
    assert _verdicts(_record(), _record(mismatch=1e-3))["riemannian-equivalence"] == "disagrees"
    untested = _verdicts(_record(diverged=True, slope=math.nan),
                         _record(diverged=True, slope=math.nan))
    assert untested["riemannian-equivalence"] == "not tested"
    assert untested["flow-conservation"] == "not tested"
    assert math.isnan(exp.loglog_slope([1e-3, 2e-3], [0.0, 1.0]))  # a log of zero: no slope
    assert exp.loglog_slope([1e-3, 2e-3, 4e-3], [1.0, 2.0, 4.0]) == pytest.approx(1.0)
