"""The meanfield-two-layer reproduction: its quick preset through the driver (about 20 s of
CPU), its criteria on synthetic records, and oracles of the population-risk flow."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from valleys.experiments import load_experiment, run
from valleys.experiments.meanfield_two_layer import measure as mf

FIGURES = ("loss_curves", "width_scaling", "balancedness", "mmn_pde")


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("meanfield-two-layer")
    return out, run(mf.NAME, out, preset="quick", progress=False)


# --- the run through the driver ----------------------------------------------------------------


def test_summary_follows_the_contract(quick):
    out, _ = quick
    summary = json.loads((out / "summary.json").read_text())
    assert summary["name"] == "meanfield-two-layer" and summary["seeds"] == [0, 1]
    assert [c["id"] for c in summary["claims"]] == [s.id for s in mf.CLAIMS]
    for claim in summary["claims"]:
        assert set(claim) >= {"id", "claim", "criterion", "measured", "seeds", "verdict"}
        assert claim["verdict"] in {"agrees", "partly", "disagrees", "not tested"}
        for value in claim["measured"].values():
            if isinstance(value, dict):
                assert set(value) >= {"mean", "min", "max"}
    assert summary["target_realizable"] is False
    assert summary["integrator"] == "heun"
    assert math.isfinite(summary["width_slope"]) and summary["width_slope"] < 0
    assert math.isfinite(summary["balancedness_order"])
    # Heun's drift of the conservation law on smooth particles falls faster than first order.
    assert summary["balancedness_order"] > 1.5


def test_quick_runs_reach_their_regime(quick):
    out, _ = quick
    for seed in (0, 1):
        record = json.loads((out / "seeds" / f"seed-{seed}.json").read_text())["records"]
        assert [r["width"] for r in record["runs"]] == list(mf.PRESETS["quick"].widths)
        for r in record["runs"]:
            assert r["status"] != "diverged" and r["risk_increases"] == 0
            assert r["final_risk"] > 0  # the target is not realizable: the risk stays positive
            if r["stationary"]:
                assert r["final_rate"] <= mf.PRESETS["quick"].stationary_rate
        risks = [r["final_risk"] for r in record["runs"] if r["stationary"]]
        assert risks == sorted(risks, reverse=True)  # wider nets end lower


def test_figures_table_and_report_are_written(quick):
    out, summary = quick
    for stem in FIGURES:
        for suffix in ("png", "svg"):
            assert (out / f"{stem}.{suffix}").stat().st_size > 1000
    assert [f["stem"] for f in summary["figures"]] == list(FIGURES)
    report = (out / "report.md").read_text(encoding="utf-8")
    for section in ("## Set-up", "## Results", "## Discussion", "## Claims and verdicts"):
        assert section in report
    header = (out / "results.csv").read_text().splitlines()[0]
    assert header.startswith("seed,width,status")


def test_experiment_loads_with_its_presets():
    experiment = load_experiment(mf.NAME)
    assert set(experiment.presets) >= {"quick", "full"}
    for preset in experiment.presets.values():
        assert preset.threads == 1 and preset.reference_width > max(preset.widths)
        assert len(preset.widths) >= mf.MIN_WIDTHS and preset.integrator in mf.INTEGRATORS


# --- criteria on synthetic records --------------------------------------------------------------


def _run(width: int, risk: float, *, stationary: bool = True, norm: float = 5.0) -> dict:
    return {"width": width, "status": "stationary" if stationary else "budget",
            "stationary": stationary, "stop_time": 100.0, "steps": 100, "final_risk": risk,
            "final_rate": 1e-6, "curve": [0.5, 0.1 + 1 / width], "trace_time": [0.0, 100.0],
            "trace_risk": [0.5, risk], "risk_increases": 0, "balancedness_drift": 0.01,
            "path_norm": norm, "barron_norm": norm}


def _record(slope: float = -1.0, *, order: float = 3.0, order_all: float = 1.2,
            gap: float = 0.0, norm_growth: float = 0.0, stationary=(True, True, True)) -> dict:
    widths = (16, 32, 64)
    replicas = {str(m): [[0.5, 0.1 + 1 / m], [0.5, 0.1 + 1.2 / m]] for m in widths}
    return {
        "replica_curves": replicas,
        "runs": [_run(m, 0.1 * (m / 16) ** slope, stationary=s, norm=5.0 * (m / 16) ** norm_growth)
                 for m, s in zip(widths, stationary, strict=True)],
        "reference": {"width": 512, "curve": [0.5, 0.1 + gap], "status": "budget"},
        "balance": {"steps": [1.0, 0.5], "drifts": [1e-1, 1e-1 * 0.5**order_all],
                    "order_all": order_all, "smooth_drifts": [1e-2, 1e-2 * 0.5**order],
                    "order": order, "smooth_particles": 30, "particles": 32,
                    "integrator": "heun", "integrator_order": 2},
        "mmn": {"relative_gap": 0.05, "status": "completed"},
    }


def _verdicts(records: dict[int, dict]) -> dict[str, str]:
    return {c.id: c.verdict for c in mf.claims(records, mf.PRESETS["quick"])}


def test_width_scaling_reaches_every_verdict():
    assert _verdicts({0: _record(-1.0), 1: _record(-0.9)})["width-scaling"] == "agrees"
    assert _verdicts({0: _record(-0.02), 1: _record(-0.02)})["width-scaling"] == "disagrees"
    assert _verdicts({0: _record(-1.8), 1: _record(-1.7)})["width-scaling"] == "disagrees"
    assert _verdicts({0: _record(-1.0), 1: _record(-0.02)})["width-scaling"] == "partly"
    late = (True, True, False)
    claim = next(c for c in mf.claims({0: _record(-1.0, stationary=late),
                                       1: _record(-0.02, stationary=late)},
                                      mf.PRESETS["quick"]) if c.id == "width-scaling")
    assert claim.verdict == "not tested" and "m = 64 (seed 0)" in claim.sentence
    # An unfinished width is left out of the seed's fit, never counted against the claim.
    assert _verdicts({0: _record(-1.0),
                      1: _record(-1.0, stationary=late)})["width-scaling"] == "agrees"
    fit = mf.width_fit({0: _record(-1.0), 1: _record(-1.0)})
    assert fit["pooled_slope"] == pytest.approx(-1.0) and fit["points"] == 6


def test_other_criteria_reach_their_verdicts():
    good = {0: _record(), 1: _record()}
    assert _verdicts(good) == {"loss-curves": "agrees", "width-scaling": "agrees",
                               "balancedness": "agrees", "mmn-pde": "agrees",
                               "path-norm": "agrees"}
    flat = {s: _record(gap=1.0) for s in (0, 1)}  # every width equally far from the reference
    assert _verdicts(flat)["loss-curves"] == "disagrees"
    assert _verdicts({0: _record(order=1.0), 1: _record()})["balancedness"] == "disagrees"
    assert _verdicts({0: _record(order_all=0.5), 1: _record()})["balancedness"] == "disagrees"
    assert _verdicts({0: _record(norm_growth=1.0), 1: _record()})["path-norm"] == "disagrees"
    far = copy.deepcopy(good)
    far[0]["mmn"]["relative_gap"] = 0.5
    assert _verdicts(far)["mmn-pde"] == "disagrees"
    broken = copy.deepcopy(good)
    for record in broken.values():
        record["balance"]["order"] = math.nan
        record["mmn"] = {"relative_gap": None, "status": "diverged"}
        for r in record["runs"]:
            r["stationary"] = False
    verdicts = _verdicts(broken)
    assert verdicts["balancedness"] == verdicts["mmn-pde"] == "not tested"
    assert verdicts["path-norm"] == verdicts["width-scaling"] == "not tested"
    increased = copy.deepcopy(good)
    increased[1]["runs"][0]["risk_increases"] = 3
    assert _verdicts(increased)["balancedness"] == "disagrees"


def test_summary_keys_from_records():
    summary = mf.summary({0: _record(-1.2), 1: _record(-0.8)}, mf.PRESETS["quick"])
    assert summary["width_slope"] == pytest.approx(-1.0)
    assert summary["target_realizable"] is False and summary["integrator"] == "heun"
    assert summary["balancedness_order"] == pytest.approx(3.0)


# --- oracles of the population-risk flow ------------------------------------------------------


def test_kappa_closed_forms():
    assert mf.kappa(1) == pytest.approx(0.5)
    assert mf.kappa(2) == pytest.approx(1 / math.pi)
    assert mf.kappa(3) == pytest.approx(0.25)


def test_population_risk_matches_monte_carlo_and_its_gradient():
    g = torch.Generator().manual_seed(0)
    d, m = 4, 6
    a = torch.randn(m, generator=g, dtype=torch.float64)
    W = torch.randn(m, d, generator=g, dtype=torch.float64)
    risk, v_a, v_W = mf.population_field(a, W, d)
    X = torch.randn(400_000, d, generator=g, dtype=torch.float64)
    f = torch.relu(X @ W.T) @ a / m
    monte_carlo = float(0.5 * (f - X.norm(dim=1) / math.sqrt(d)).pow(2).mean())
    assert risk == pytest.approx(monte_carlo, rel=5e-3)
    eps = 1e-6
    for j, k in ((0, 0), (3, 2), (5, 3)):
        W2 = W.clone()
        W2[j, k] += eps
        W1 = W.clone()
        W1[j, k] -= eps
        numeric = (mf.population_risk(a, W2, d) - mf.population_risk(a, W1, d)) / (2 * eps)
        assert m * numeric == pytest.approx(float(v_W[j, k]), rel=1e-5, abs=1e-9)
        a2, a1 = a.clone(), a.clone()
        a2[j] += eps
        a1[j] -= eps
        numeric = (mf.population_risk(a2, W, d) - mf.population_risk(a1, W, d)) / (2 * eps)
        assert m * numeric == pytest.approx(float(v_a[j]), rel=1e-5, abs=1e-9)


def test_integrators_conserve_balancedness_at_their_order():
    """On particles away from w = 0, the drift of a_j² − ‖w_j‖² falls faster with Heun and RK4
    than with Euler (the flow conserves it exactly)."""
    g = torch.Generator().manual_seed(1)
    a0 = torch.randn(5, generator=g, dtype=torch.float64)
    W0 = torch.randn(5, 3, generator=g, dtype=torch.float64)
    orders = {}
    for method in ("euler", "heun", "rk4"):
        drifts = []
        for h in (0.1, 0.05):
            a, W = a0.clone(), W0.clone()
            for _ in range(round(1.0 / h)):
                a, W, _, _ = mf.integrate(a, W, 3, h, method)
            drifts.append(float((a**2 - (W**2).sum(1) - a0**2 + (W0**2).sum(1)).abs().max()))
        orders[method] = mf.loglog_slope([0.1, 0.05], drifts)
    assert orders["euler"] == pytest.approx(1.0, abs=0.3)
    assert orders["heun"] > 1.8 and orders["rk4"] > 3.5
    with pytest.raises(ValueError, match="unknown integrator"):
        mf.integrate(a0, W0, 3, 0.1, "leapfrog")
