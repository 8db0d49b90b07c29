"""The quasistatic-games reproduction: its quick preset through the driver (output contract,
count budgets, sanity of the numbers) and the criteria on synthetic records."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from PIL import Image

from valleys.experiments import load_experiment, run
from valleys.experiments.quasistatic_games import measure as exp

QUICK = exp.PRESETS["quick"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("quasistatic-games")
    summary = run(exp.NAME, out, preset="quick", progress=False)
    records = {s: json.loads((out / "seeds" / f"seed-{s}.json").read_text())["records"]
               for s in summary["seeds"]}
    return out, summary, records


def test_registered_with_counts_only():
    experiment = load_experiment(exp.NAME)
    assert experiment.name == "quasistatic-games" and experiment.presets["full"].threads == 1
    for preset in exp.PRESETS.values():  # every budget is a count, never seconds
        assert not any("budget_s" in f or f.endswith("_s") for f in vars(preset))
        assert isinstance(preset.gan_evaluations, int)


def test_summary_contract(quick):
    out, _, _ = quick
    on_disk = json.loads((out / "summary.json").read_text())
    assert len(on_disk["seeds"]) >= 2
    assert [c["id"] for c in on_disk["claims"]] == [spec.id for spec in exp.CLAIMS]
    for claim in on_disk["claims"]:
        assert set(claim) >= {"id", "claim", "criterion", "measured", "seeds", "verdict"}
        assert claim["verdict"] in ("agrees", "partly", "disagrees", "not tested")
    gan = next(c for c in on_disk["claims"] if c["id"] == "gan-mixture")
    assert gan["measured"]["payoff evaluations per run"] == QUICK.gan_evaluations
    assert set(gan["measured"]["W2/floor quasistatic (8gaussians)"]) >= {"mean", "min", "max"}


def test_runs_are_counted_and_the_closed_form_errors_fall(quick):
    _, _, records = quick
    for r in records.values():
        for game in ("quadratic", "torus"):
            for method in exp.METHODS:
                history = r[game]["runs"][method]["history"]
                assert history[-1]["distance"] < 0.5 * history[0]["distance"], (game, method)
            q = r[game]["runs"]["quasistatic"]
            assert q["evaluations"] == q["steps"] * (QUICK.inner_steps + 1)
        for block in r["gans"].values():  # the same count of payoff evaluations per method
            for method in exp.METHODS:
                e = block[method]
                if e["status"] != "diverged":
                    assert e["evaluations"] == QUICK.gan_evaluations
                    assert 0 <= e["mode_coverage"] <= 1 and e["w2_floor"] > 0
        assert r["rps"]["ni_last"] > 0 and r["rps"]["ni_average"] >= 0


def test_files_report_and_table(quick):
    out, summary, _ = quick
    assert len(summary["figures"]) == 7
    for figure in summary["figures"]:
        assert (out / f"{figure['stem']}.png").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "## Set-up" in report and "## Discussion" in report
    assert f"{QUICK.gan_evaluations} payoff evaluations" in report
    table = pd.read_csv(out / "results.csv")
    assert len(table) == len(summary["seeds"]) * (9 + 2 + 3 * len(QUICK.gan_targets))
    for name in ("cycling_clouds.gif", f"gan_{QUICK.gan_targets[0]}.gif"):
        assert f"]({name})" in report
        with Image.open(out / name) as im:
            assert im.format == "GIF" and im.is_animated
            assert 1 < im.n_frames <= QUICK.animation_frames + 1


# ------------------------------------------------------------------------------------------------
# Criteria on synthetic records
# ------------------------------------------------------------------------------------------------


def _record(*, distance=0.1, da_keep=1.0, rotation=4.0, qs_cycle=0.1, avg=0.1,
            kl_monotone=True, wfr=1.0, ess=10.0, gan=(1.0, 3.0, 3.0), qs_status="finished"):
    def runs(d, **extra):
        return {m: {"distance": d, "status": "finished", **extra} for m in exp.METHODS}

    quadratic = {"floor": 0.1, "runs": runs(distance)}
    quadratic["runs"]["wfr"] = {"distance": wfr, "ess_x": ess, "status": "finished"}
    quadratic["runs"]["quasistatic"]["status"] = qs_status
    cycling = {"floor": 0.1, "runs": {
        "quasistatic": {"distance": qs_cycle, "status": "finished"},
        "descent-ascent": {"distance": da_keep, "initial_distance": 1.0, "rotation": rotation,
                           "status": "finished"},
        "wfr": {"distance": 1.0, "status": "finished"}}}
    gans = {t: {m: {"w2": w, "w2_floor": 1.0, "status": "finished"}
                for m, w in zip(exp.METHODS, gan, strict=True)} for t in QUICK.gan_targets}
    return {"quadratic": quadratic, "torus": {"floor": 0.1, "runs": runs(distance)},
            "cycling": cycling,
            "rps": {"ni_last": 1.0, "ni_average": avg, "kl_start": 1.0, "kl_end": 1.1,
                    "kl_monotone": kl_monotone, "status": "finished"},
            "gans": gans}


def _verdicts(*records):
    return {c.id: c.verdict for c in exp.claims(dict(enumerate(records)), QUICK)}


def test_every_verdict_is_reachable():
    good = _verdicts(_record(), _record())
    assert set(good.values()) == {"agrees"}
    bad = _verdicts(_record(distance=1.0, rotation=1.0, avg=0.5, wfr=0.2,
                            gan=(3.0, 1.0, 3.0)), _record(distance=1.0, rotation=1.0,
                                                         kl_monotone=False, ess=100.0,
                                                         gan=(3.0, 3.0, 1.5)))
    assert set(bad.values()) == {"disagrees"}
    mixed = _verdicts(_record(), _record(rotation=1.0, gan=(3.0, 1.0, 3.0)))
    assert mixed["cycling"] == "partly" and mixed["gan-mixture"] == "partly"
    assert _verdicts(_record(), _record(distance=1.0))["equilibrium-error"] == "disagrees"


def test_not_tested_when_runs_diverge_or_no_method_fits():
    untested = _verdicts(_record(qs_status="diverged", gan=(3.0, 3.0, 3.0)),
                         _record(qs_status="diverged", gan=(3.0, math.nan, 3.0)))
    assert untested["equilibrium-error"] == "not tested"
    assert untested["gan-mixture"] == "not tested"  # no method fits: the budget is at fault
    assert exp.cycling_pass(_record(qs_cycle=math.nan)) is None
    assert exp.wfr_pass(_record(wfr=math.nan), QUICK.particles) is None
    assert exp.gan_steps("quasistatic", QUICK) * (QUICK.gan_inner_steps + 1) == \
        QUICK.gan_evaluations
