"""The a-priori-estimates reproduction: its quick preset through the driver (output contract,
measured checks) and every criterion on synthetic records."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from valleys.experiments import load_experiment, run
from valleys.experiments.a_priori_estimates import measure as exp

QUICK = exp.PRESETS["quick"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("a-priori-estimates")
    summary = run(exp.NAME, out, preset="quick", progress=False)
    records = {s: json.loads((out / "seeds" / f"seed-{s}.json").read_text())["records"]
               for s in summary["seeds"]}
    return out, summary, records


def test_registered():
    experiment = load_experiment(exp.NAME)
    assert experiment.name == "a-priori-estimates"
    assert all(p.threads == 1 for p in experiment.presets.values())
    assert not any(spec.deterministic for spec in exp.CLAIMS)


def test_summary_contract(quick):
    out, _, _ = quick
    on_disk = json.loads((out / "summary.json").read_text())
    assert len(on_disk["seeds"]) >= 2 and on_disk["provisional"] == []
    assert [c["id"] for c in on_disk["claims"]] == [spec.id for spec in exp.CLAIMS]
    for claim in on_disk["claims"]:
        assert set(claim) >= {"id", "claim", "criterion", "measured", "seeds", "verdict"}
        (value,) = claim["measured"].values()
        assert set(value) >= {"mean", "min", "max"}


def test_checks_are_measured(quick):
    _, _, records = quick
    for r in records.values():
        # the target's Barron norm is known exactly: the two bounds meet
        assert r["barron_lower"] == pytest.approx(QUICK.amplitude, rel=1e-9)
        assert r["barron_upper"] == pytest.approx(QUICK.amplitude, rel=1e-9)
        for sweep in ("width", "sample", "over"):
            for e in r[sweep]:
                assert not e["diverged"]
                assert e["objective_end"] < e["objective_start"]  # every fit trained
        values = exp.checks(r, QUICK)
        assert all(v is not None and math.isfinite(v) for v in values.values()), values
        # the penalty keeps the path norm far below that of the unpenalized fits
        reg = exp._select(r["over"], exp.LAMBDA)
        plain = exp._select(r["over"], 0.0, "gd")
        assert reg[-1]["path_norm"] < plain[-1]["path_norm"]


def test_files(quick):
    out, summary, _ = quick
    assert [f["stem"] for f in summary["figures"]] == ["width_rate", "sample_rate",
                                                       "overparametrized"]
    for figure in summary["figures"]:
        assert (out / f"{figure['stem']}.png").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "## Set-up" in report and "## Discussion" in report
    table = pd.read_csv(out / "results.csv")
    assert set(table["seed"]) == set(summary["seeds"])
    assert {"width", "sample", "over"} == set(table["sweep"])


def _row(m, n, lam, risk, path_norm, optimizer="adam", diverged=False):
    return {"m": m, "n": n, "lam": lam, "optimizer": optimizer, "risk": risk,
            "path_norm": path_norm, "diverged": diverged}


def _record(m_exp=-1.0, n_exp=-0.5, risk_scale=1e-3, path=1.0, spread=1.0, gd_exp=0.5,
            diverged=False):
    widths, samples, over = (2, 4, 8, 16), (50, 100, 200, 400), (25, 100, 400)
    width = [_row(m, 1000, exp.LAMBDA, risk_scale * (m / 2) ** m_exp, path) for m in widths]
    sample = [_row(100, n, exp.LAMBDA, risk_scale * (n / 50) ** n_exp, path) for n in samples]
    over_rows = []
    for i, m in enumerate(over):
        over_rows.append(_row(m, 100, exp.LAMBDA, risk_scale * (spread if i else 1.0), path))
        over_rows.append(_row(m, 100, 0.0, 1.0, 10 * (m / 25) ** gd_exp, "gd", diverged))
    return {"barron_upper": 1.0, "width": width, "sample": sample, "over": over_rows}


def _verdicts(*records):
    return {c.id: c.verdict for c in exp.claims(dict(enumerate(records)), QUICK)}


def test_every_verdict_is_reachable():
    assert set(_verdicts(_record(), _record()).values()) == {"agrees"}
    bad = _verdicts(_record(0.0, 0.0, 10.0, 5.0, 3.0, 0.0),
                    _record(0.0, 0.0, 10.0, 5.0, 3.0, 0.0))
    assert set(bad.values()) == {"disagrees"}
    # every seed must pass: one failing seed is a disagreement, not "partly"
    assert _verdicts(_record(), _record(m_exp=0.0))["width-rate"] == "disagrees"
    untested = _verdicts(_record(gd_exp=math.nan, diverged=True),
                         _record(gd_exp=math.nan, diverged=True))
    assert untested["gd-path-norm-grows"] == "not tested"
    # where the bound's 1/m term never dominates, the width rate cannot be tested
    flat = _record()
    for e in flat["width"]:
        e["m"] *= 100
    assert _verdicts(flat, flat)["width-rate"] == "not tested"
    assert math.isnan(exp.loglog_slope([1, 2], [0.0, 1.0]))
    assert exp.loglog_slope([1, 2, 4], [1.0, 0.5, 0.25]) == pytest.approx(-1.0)
