"""The input-smoothness reproduction (Ma & Ying 2021): its quick preset through the driver.

The quick preset runs once into a temporary folder (module-scoped); the tests check the output
contract, the sanity of the measurements, that a rerun resumes from the stored seeds, and the
criteria on synthetic records (every verdict reachable).
"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from valleys.experiments import load_experiment, run
from valleys.experiments.input_smoothness import measure as exp

MEASURED = ("sharpness", "nonuniformity", "g_x", "g_w", "g_x2", "g_w2", "sobolev", "bound_lhs",
            "bound_rhs", "bound_rhs_ggn")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("input-smoothness")
    return out, run("input-smoothness", out, preset="quick", progress=False)


def _runs(out, seed):
    return json.loads((out / "seeds" / f"seed-{seed}.json").read_text())["records"]["runs"]


def test_registered():
    experiment = load_experiment("input-smoothness")
    assert experiment.name == exp.NAME == "input-smoothness"
    assert all(p.threads == 1 for p in exp.PRESETS.values())


def test_summary_contract(quick):
    out, summary = quick
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["claims"] == summary["claims"]
    assert summary["seeds"] == [0, 1]
    assert [c["id"] for c in summary["claims"]] == [s.id for s in exp.CLAIMS]
    for claim in summary["claims"]:
        assert set(claim) >= {"id", "claim", "criterion", "measured", "seeds", "verdict"}
        assert claim["verdict"] in ("agrees", "partly", "disagrees", "not tested")
    measured = summary["claims"][0]["measured"]["pair_fraction"]
    assert set(measured) >= {"mean", "min", "max"} and len(measured["values"]) == 2
    assert set(summary["analysis_by_seed"]) == {"0", "1"}


def test_grid_and_measurements(quick):
    out, summary = quick
    spec = exp.PRESETS["quick"]
    for seed in summary["seeds"]:
        runs = _runs(out, seed)
        lam0 = summary["lambda0_by_seed"][str(seed)]
        assert len(runs) == len(spec.lr_fractions) * len(spec.batch_sizes) and lam0 > 0
        measured = [r for r in runs if r["status"] not in ("diverged", "failed")]
        assert len(measured) >= 4, "most quick runs should reach the loss goal"
        for r in runs:
            assert r["lr"] == pytest.approx(r["lr_fraction"] * 2 / lam0, rel=1e-2)
            assert r["status"] in ("converged", "max_steps", "diverged", "failed")
        for r in measured:
            for key in MEASURED:
                assert math.isfinite(r[key]) and r[key] > 0, key
            assert 0.0 <= r["test_accuracy"] <= 1.0
            # The Gauss-Newton form of the bound holds at every θ; the Hessian form at
            # interpolation.
            assert r["bound_lhs"] <= r["bound_rhs_first_layer"] * (1 + 1e-9)
            assert r["bound_rhs_first_layer"] <= r["bound_rhs_ggn"] * (1 + 1e-9)
            accs = [r[exp.robust_key("l2", e)] for e in spec.l2_radii]
            assert accs == sorted(accs, reverse=True)  # cumulative: non-increasing in ε


def test_table_writes_n_for_gd(quick):
    out, _ = quick
    table = pd.read_csv(out / "results.csv")
    spec = exp.PRESETS["quick"]
    assert len(table) == 2 * len(spec.lr_fractions) * len(spec.batch_sizes)
    assert table["batch_size"].notna().all()
    gd = table[table["optimizer"] == "GD"]
    assert len(gd) == 2 * len(spec.lr_fractions) and (gd["batch_size"] == spec.n_train).all()


def test_figures_and_report(quick):
    out, summary = quick
    assert len(summary["figures"]) == 5
    for figure in summary["figures"]:
        for suffix in ("png", "svg"):
            assert (out / f"{figure['stem']}.{suffix}").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "## Set-up" in report and "## Discussion" in report and "Ma & Ying" in report


def test_rerun_resumes_without_measuring(quick):
    out, first = quick
    again = run("input-smoothness", out, preset="quick", progress=False)
    assert again["metadata"]["resumed_seeds"] == [0, 1]
    assert again["claims"] == first["claims"]


def _record(gx_by_cell, *, robust=None, interpolates=True, bound_ok=True):
    """Synthetic runs: ``gx_by_cell`` maps (lr, batch) → g_x (None: diverged)."""
    runs = []
    for (lr, batch), gx in gx_by_cell.items():
        if gx is None:
            runs.append({"lr_fraction": lr, "lr": lr, "batch_size": batch, "status": "diverged"})
            continue
        rob = (robust or {}).get((lr, batch), lr)
        runs.append({"lr_fraction": lr, "lr": lr, "batch_size": batch, "status": "converged",
                     "g_x": gx, "sobolev": gx, "interpolates": interpolates,
                     "bound_lhs": 1.0, "bound_rhs": 2.0 if bound_ok else 0.5,
                     exp.robust_key("l2", 1.0): rob, exp.robust_key("linf", 0.1): rob})
    return {"lambda0": 1.0, "lr_grid": [], "num_parameters": 1, "runs": runs}


def _verdicts(records):
    return {c.id: c.verdict for c in exp.claims(records, exp.PRESETS["quick"])}


GOOD = {(lr, b): 1.0 / lr + b / 100 for lr in (0.25, 0.5, 1.0) for b in (8, 32, 256)}
BAD = {(lr, b): lr - b / 1000 for lr in (0.25, 0.5, 1.0) for b in (8, 32, 256)}


def test_every_verdict_is_reachable():
    assert _verdicts({0: _record(GOOD), 1: _record(GOOD)}) == {
        "gx-falls-with-lr": "agrees", "gx-falls-with-smaller-batch": "agrees",
        "first-layer-bound": "agrees", "robust-rises-with-lr": "agrees"}
    mixed = _verdicts({0: _record(GOOD), 1: _record(BAD, bound_ok=False)})
    assert mixed["gx-falls-with-lr"] == "partly" and mixed["first-layer-bound"] == "disagrees"
    bad = _verdicts({0: _record(BAD, robust={k: -k[0] for k in BAD}), 1: _record(BAD)})
    assert bad["gx-falls-with-lr"] == "disagrees"
    assert bad["gx-falls-with-smaller-batch"] == "disagrees"
    assert bad["robust-rises-with-lr"] == "partly"
    lonely = {k: (v if k == (0.25, 8) else None) for k, v in GOOD.items()}
    none = _verdicts({0: _record(lonely, interpolates=False), 1: _record(lonely)})
    assert none["gx-falls-with-lr"] == "not tested"
    assert none["robust-rises-with-lr"] == "not tested"
    assert none["first-layer-bound"] == "agrees"  # seed 1's single run interpolates


def test_concordance_counts_ties_half():
    frame = pd.DataFrame({"g": [1, 1, 1], "x": [1, 2, 3], "y": [3.0, 3.0, 1.0]})
    got = exp.concordance(frame, "g", "x", "y")
    assert got == {"fraction": pytest.approx(2.5 / 3), "pairs": 3}
    assert exp.concordance(frame.iloc[:1], "g", "x", "y") == {"fraction": None, "pairs": 0}
