"""The nonconvex-signals reproduction: its quick preset through the driver (output contract,
sanity of the measurements) and every criterion on synthetic records."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from valleys.experiments import load_experiment, run
from valleys.experiments.nonconvex_signals import measure as exp

QUICK = exp.PRESETS["quick"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("nonconvex-signals")
    summary = run(exp.NAME, out, preset="quick", progress=False)
    records = {s: json.loads((out / "seeds" / f"seed-{s}.json").read_text())["records"]
               for s in summary["seeds"]}
    return out, summary, records


def test_registered():
    experiment = load_experiment(exp.NAME)
    assert experiment.name == "nonconvex-signals"
    assert all(p.threads == 1 for p in experiment.presets.values())
    assert all(p.sgd_scale in p.dn_scales for p in experiment.presets.values())
    assert not any(spec.deterministic for spec in exp.CLAIMS)


def test_summary_contract(quick):
    out, _, _ = quick
    on_disk = json.loads((out / "summary.json").read_text())
    assert len(on_disk["seeds"]) >= 2 and on_disk["provisional"] == []
    assert [c["id"] for c in on_disk["claims"]] == [spec.id for spec in exp.CLAIMS]
    for claim in on_disk["claims"]:
        assert set(claim) >= {"id", "claim", "criterion", "measured", "seeds", "verdict"}
        for value in claim["measured"].values():
            assert set(value) >= {"mean", "min", "max"}


def test_measurements_are_sane(quick):
    _, _, records = quick
    for r in records.values():
        for field in QUICK.pr_fields:
            rates = r["phase"][field]["rate"]
            assert all(0 <= x <= 1 for x in rates) and len(rates) == len(QUICK.pr_ratios)
            assert rates[0] == 0.0  # m = n cannot determine a signal up to phase
        runs = r["matrix"]["runs"]
        assert [run_["alpha"] for run_ in runs] == list(QUICK.bm_scales)
        # the GD α sweep stays close to the closed form (first order in the step)
        for s in r["diagonal"]["sweep"]:
            assert not s["diverged"]
            assert s["distance"] < 0.05
        converged = [g for g in r["diagonal"]["grid"] if g["converged"]]
        assert converged, "no run of the (η, B) grid converged"
        for g in converged:
            assert g["sharpness"] > 0 and g["nonuniformity"] > 0 and g["trace"] > 0
            assert g["rho"] >= 1 - 1e-9  # flat directions of the interpolation manifold


def test_files(quick):
    out, summary, _ = quick
    assert [f["stem"] for f in summary["figures"]] == ["phase_transition", "matrix_rank",
                                                       "diagonal_scale", "diagonal_sgd"]
    for figure in summary["figures"]:
        assert (out / f"{figure['stem']}.png").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "## Set-up" in report and "## Discussion" in report
    table = pd.read_csv(out / "results.csv")
    assert set(table["seed"]) == set(summary["seeds"])
    assert {"phase", "matrix", "diagonal-sweep", "diagonal-grid"} <= set(table["part"])


# ---------------------------------------------------------------------------------------------
# Criteria on synthetic records
# ---------------------------------------------------------------------------------------------


def _record(*, rate_low=0.0, rate_high=1.0, rank_small=2, error_small=1e-3, rank_large=6,
            l1_gd=(3.0, 2.5, 2.1), limit=(3.0, 2.5, 2.1), loss=1e-20, l2_l1=3.0, l1_min=2.0,
            sgd_l1=(2.4, 2.3), gd_l1=2.5, sharp=(5.0, 4.0), gd_sharp=6.0, rho=1.0,
            flow_rho=(1.2, 1.2), converged=True):
    sweep = [{"alpha": a, "l1": x, "limit_l1": y, "final_loss": loss, "diverged": False,
              "distance": 0.0}
             for a, x, y in zip((1.0, 0.1, 0.01), l1_gd, limit, strict=True)]
    grid = [{"batch": 1, "lr": lr, "converged": converged, "l1": x, "sharpness": s, "rho": rho,
             "flow_rho": f} for lr, x, s, f in zip((0.01, 0.1), sgd_l1, sharp, flow_rho,
                                                    strict=True)]
    grid.append({"batch": 4, "lr": 0.01, "converged": True, "l1": gd_l1, "sharpness": gd_sharp,
                 "rho": 1.0, "flow_rho": 1.0})
    return {
        "phase": {"ratios": [1, 8], "real": {"rate": [rate_low, rate_high]},
                  "complex": {"rate": [rate_low, rate_high]}},
        "matrix": {"rank": 2, "runs": [
            {"alpha": 1e-4, "rank": rank_small, "relative_error": error_small},
            {"alpha": 1.0, "rank": rank_large, "relative_error": 0.5}]},
        "diagonal": {"n": 4, "sweep": sweep, "grid": grid, "l1_min": l1_min,
                     "l2_interpolant_l1": l2_l1, "flow_l1": gd_l1},
    }


def _verdicts(*records):
    return {c.id: c.verdict for c in exp.claims(dict(enumerate(records)), QUICK)}


BAD = dict(rate_low=0.5, rate_high=0.5, rank_small=3, rank_large=2,
           l1_gd=(3.0, 3.2, 3.3), limit=(2.0, 2.0, 2.0), sgd_l1=(2.6, 2.7),
           rho=1.1, flow_rho=(1.0, 1.0))


def test_every_claim_can_agree():
    assert set(_verdicts(_record(), _record()).values()) == {"agrees"}


def test_every_claim_can_disagree():
    verdicts = _verdicts(_record(**BAD), _record(**BAD))
    # with sgd_l1 above gradient flow no run is sparser: that claim cannot be tested
    assert verdicts.pop("stability-explains-selection") == "not tested"
    assert set(verdicts.values()) == {"disagrees"}
    moved = dict(BAD, sgd_l1=(2.4, 2.3))  # sparser, yet the flow solution is stable there
    assert _verdicts(_record(**moved), _record(**moved))["stability-explains-selection"] == (
        "disagrees")


def test_mixed_seeds_give_partly():
    verdicts = _verdicts(_record(), _record(**BAD))
    assert verdicts.pop("stability-explains-selection") == "agrees"  # one seed untested
    assert set(verdicts.values()) == {"partly"}


def test_untestable_runs_give_not_tested():
    unconverged = dict(loss=1.0, converged=False)
    verdicts = _verdicts(_record(**unconverged), _record(**unconverged))
    for key in ("dn-closed-form", "dn-l2-to-l1", "sgd-sparser", "large-steps-help-sgd",
                "stability-explains-selection"):
        assert verdicts[key] == "not tested", key


def test_spearman():
    assert exp.spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert exp.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert exp.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)
    assert math.isnan(exp.spearman([1, 2], [1, 2]))
    assert math.isnan(exp.spearman([1, 1, 1], [1, 2, 3]))
