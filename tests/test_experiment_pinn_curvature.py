"""The pinn-curvature reproduction: its quick preset through the driver (output contract, the
measurements) and every verdict of every criterion on synthetic records."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from valleys.experiments import load_experiment, run
from valleys.experiments.pinn_curvature import measure as exp

QUICK = exp.PRESETS["quick"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("pinn-curvature")
    summary = run(exp.NAME, out, preset="quick", progress=False)
    records = {s: json.loads((out / "seeds" / f"seed-{s}.json").read_text())["records"]
               for s in summary["seeds"]}
    return out, summary, records


def test_registered():
    experiment = load_experiment(exp.NAME)
    assert experiment.name == "pinn-curvature"
    assert all(p.threads == 1 for p in experiment.presets.values())
    assert not any(spec.deterministic for spec in exp.CLAIMS)


def test_summary_contract(quick):
    out, _, _ = quick
    on_disk = json.loads((out / "summary.json").read_text())
    assert len(on_disk["seeds"]) >= 2 and on_disk["provisional"] == []
    assert [c["id"] for c in on_disk["claims"]] == [spec.id for spec in exp.CLAIMS]
    for claim in on_disk["claims"]:
        assert claim["verdict"] in ("agrees", "partly", "disagrees", "not tested")
        spreads = [v for v in claim["measured"].values() if isinstance(v, dict)]
        assert spreads and all(set(v) >= {"mean", "min", "max"} for v in spreads)


def test_measurements(quick):
    _, _, records = quick
    for r in records.values():
        for when in exp.CHECKPOINTS:
            for name in exp.TERMS:
                s = r["spectra"][when][name]
                assert s["lambda_max"] > 0 > s["lambda_min"]  # indefinite Hessians
                assert 0 <= s["bulk_mass"] <= 1 + 1e-9
            # the terms add up: λ_max(whole) ≤ λ_max(pde) + λ_max(bc) (Weyl), up to tolerance
            sp = r["spectra"][when]
            assert sp["total"]["lambda_max"] <= 1.01 * (sp["pde"]["lambda_max"]
                                                        + sp["bc"]["lambda_max"])
        runs = r["runs"]
        assert runs["adam"]["final_loss"] < runs["adam"]["loss"][0]  # training happened
        assert len(runs["adam_lbfgs"]["loss"]) == QUICK.lbfgs_steps + 1
        for e in (*runs.values(), *r["gd"]):
            assert e["relative_l2"] is None or 0 < e["relative_l2"] < 10  # reported for every run
        assert [g["fraction"] for g in r["gd"]] == list(QUICK.gd_fractions)


def test_files(quick):
    out, summary, _ = quick
    assert [f["stem"] for f in summary["figures"]] == ["densities", "top_eigenvalues", "losses",
                                                       "gd_sharpness"]
    for figure in summary["figures"]:
        assert (out / f"{figure['stem']}.png").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "## Set-up" in report and "## Discussion" in report
    table = pd.read_csv(out / "results.csv")
    assert set(table["seed"]) == set(summary["seeds"])
    assert {"lambda_max", "kappa", "relative_l2", "final_loss"} <= set(table["what"])


# -- criteria on synthetic records ---------------------------------------------------------------

def _spectrum(lam_max, lam_min=-1.0, bulk=0.9):
    return {"lambda_max": lam_max, "lambda_min": lam_min, "kappa": lam_max / abs(lam_min),
            "bulk_mass": bulk}


def _record(dominance=100.0, kappa_pde=1e3, bulk=0.9, loss_ab=0.01, loss_a=1.0, loss_l=1.0,
            eos=(1.0, 1.0), diverged=(False, False)):
    spectra = {c: {"pde": _spectrum(dominance, -dominance / kappa_pde),
                   "bc": _spectrum(1.0, -0.1), "total": _spectrum(dominance, -0.1, bulk)}
               for c in exp.CHECKPOINTS}
    gd = []
    for ratio, div in zip(eos, diverged, strict=True):
        lr = 0.1
        gd.append({"lr": lr, "diverged": div, "sharpness_step": [0, 10, 20, 30],
                   "sharpness": [ratio * 2 / lr] * 4})
    return {"spectra": spectra, "gd": gd,
            "runs": {"adam_lbfgs": {"final_loss": loss_ab}, "adam_only": {"final_loss": loss_a},
                     "lbfgs_only": {"final_loss": loss_l}}}


def _verdicts(*records):
    return {c.id: c.verdict for c in exp.claims(dict(enumerate(records)), QUICK)}


def test_every_verdict_is_reachable():
    assert set(_verdicts(_record(), _record()).values()) == {"agrees"}
    bad = _verdicts(_record(1.0, 1.0, 0.1, 1.0, 1.0, 1.0, (0.3, 2.0)),
                    _record(1.0, 1.0, 0.1, 1.0, 1.0, 1.0, (0.3, 2.0)))
    assert set(bad.values()) == {"disagrees"}
    mixed = _verdicts(_record(), _record(1.0, 1.0, 0.1, 1.0, 1.0, 1.0, (1.0, 0.3)))
    for cid in ("pde-dominates", "pde-worst-conditioned", "bulk-and-outliers",
                "edge-of-stability"):
        assert mixed[cid] == "partly"
    # the optimiser comparisons must hold on every seed
    assert mixed["adam-then-lbfgs"] == "disagrees"
    untested = _verdicts(_record(loss_ab=math.nan, loss_a=math.nan, loss_l=math.nan,
                                 diverged=(True, True), bulk=math.nan),
                         _record(loss_ab=math.nan, loss_a=math.nan, loss_l=math.nan,
                                 diverged=(True, True), bulk=math.nan))
    for cid in ("adam-then-lbfgs", "adam-lbfgs-beats-lbfgs", "edge-of-stability",
                "bulk-and-outliers"):
        assert untested[cid] == "not tested"


def test_eos_ratio_uses_the_last_third():
    run_ = {"lr": 0.5, "diverged": False, "sharpness_step": [0, 30, 60, 90],
            "sharpness": [1.0, 1.0, 4.0, 4.0]}
    assert exp.eos_ratio(run_) == pytest.approx(1.0)  # median of the last third = 4, 4·0.5/2
    assert exp.eos_ratio({**run_, "diverged": True}) is None
