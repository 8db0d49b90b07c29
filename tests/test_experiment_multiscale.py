"""The multiscale reproduction (Ma, Kunin, Wu & Ying 2022): quick preset through the driver,
the summary contract, the criteria on synthetic records, and helpers against closed forms."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import valleys
from valleys.experiments import load_experiment, run
from valleys.experiments.multiscale import measure as ms
from valleys.landscape import SqrtLoss


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("multiscale")
    summary = run("multiscale", out, preset="quick", progress=False)
    return out, summary


def test_experiment_loads():
    exp = load_experiment("multiscale")
    assert exp.name == "multiscale" and {"quick", "full"} <= set(exp.presets)
    assert all(p.threads == 1 for p in exp.presets.values())
    assert [c.id for c in exp.claim_specs] == [c.id for c in ms.CLAIMS]


def test_summary_contract(quick):
    out, _ = quick
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["seeds"] == [0, 1]
    ids = {c["id"] for c in on_disk["claims"]}
    assert ids == {c.id for c in ms.CLAIMS}
    for claim in on_disk["claims"]:
        assert set(claim) >= {"id", "claim", "criterion", "measured", "seeds", "verdict"}
        assert claim["verdict"] in ("agrees", "partly", "disagrees", "not tested")
        for value in claim["measured"].values():
            if isinstance(value, dict):
                assert set(value) >= {"mean", "min", "max"}
    fit = on_disk["growth_fit"]
    assert set(fit) >= {"t_min", "t_max", "exponents"}
    assert 0 < fit["t_min"] < fit["t_max"]
    for entry in fit["exponents"]:
        for side in ("plus", "minus"):
            g = entry[side]
            assert len(g["scales"]) == len(g["exponents"]) > 0
            assert g["t_max"] / g["t_min"] == pytest.approx(10**ms.RANGE_DECADES)
            assert all(g["t_min"] <= s <= g["t_max"] for s in g["scales"])
    assert isinstance(on_disk["scale_ratio"], float)
    assert isinstance(on_disk["plateau_before_decay"], bool)
    for stem in ("eos_training", "growth", "cycles", "origin"):
        assert (out / f"{stem}.png").stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "## Set-up" in report and "## Discussion" in report and "Figure 4." in report


def test_records_consistent(quick):
    out, _ = quick
    rec = json.loads((out / "seeds" / "seed-0.json").read_text())["records"]
    a, b = rec["growth"], rec["origin"]
    ts = np.asarray(a["ts"])
    # oracle: at the smallest |t| the increment is ½ λ t² with λ = uᵀH(θ_c)u from an HVP
    for side in ("plus", "minus"):
        inc = np.asarray(a[f"increments_{side}"])
        np.testing.assert_allclose(inc[:3] / (0.5 * a["floor_curvature"] * ts[:3] ** 2), 1.0,
                                   rtol=2e-3)
    for c in a["cycles"]:  # a recorded 2-cycle really alternates
        t = np.asarray(c["trajectory"])
        if c["period"] == 2:
            assert abs(t[-1] - t[-3]) <= 1e-5 * abs(t[-1] - t[-2])
    for r in b["phase1"]["loss"][:50]:
        assert math.isfinite(r)
    phase = b["phase1"]
    np.testing.assert_allclose(np.add(phase["loss_small"], phase["loss_large"]), phase["loss"])
    assert b["lr1"] == pytest.approx(2 / math.sqrt(b["a_small"] * b["a_large"]))


# --- criteria on synthetic records ----------------------------------------------------------


def _a(eos=1.0, outer=(1.5, 1.5), periods=(2, 2, 2, 2), ratio=1.0):
    sides = {side: {"t_max": 5.0, "t_min": 0.05, "outer_exponent": e, "quadratic_radius": 0.5,
                    "scales": [], "exponents": []}
             for side, e in zip(("plus", "minus"), outer, strict=True)}
    cycles = [{"factor": r, "period": q, "amplitude": ratio * ms.toy_amplitude(1.0, r)
               if q == 2 else math.nan, "toy_amplitude": ms.toy_amplitude(1.0, r)}
              for r, q in zip(ms.CYCLE_FACTORS, periods, strict=True)]
    return {"status": "max_steps", "eos_ratio": eos, "growth": sides, "cycles": cycles}


def test_growth_outcomes():
    assert ms.growth_outcome(_a()) is True
    assert ms.growth_outcome(_a(outer=(1.5, 1.9))) is False
    assert ms.growth_outcome(_a(eos=0.5)) is None  # never reached the EoS: not tested
    assert ms.growth_outcome({"status": "diverged", "eos_ratio": math.nan}) is None
    no_tmax = _a()
    no_tmax["growth"]["plus"]["t_max"] = math.inf
    assert ms.growth_outcome(no_tmax) is None


def test_cycle_and_amplitude_outcomes():
    assert ms.cycle_outcome(_a()) == "all"
    assert ms.cycle_outcome(_a(periods=(2, 2, 4, 0))) == "some"
    assert ms.cycle_outcome(_a(periods=(4, 2, 2, 2))) == "none"
    assert ms.cycle_outcome({}) is None
    assert ms._cycle_verdict({0: "all", 1: "all"}) == "agrees"
    assert ms._cycle_verdict({0: "all", 1: "some"}) == "partly"
    assert ms._cycle_verdict({0: "none", 1: "all"}) == "disagrees"
    assert ms._cycle_verdict({0: None, 1: None}) == "not tested"
    assert ms.amplitude_outcome(_a(ratio=1.2)) is True
    assert ms.amplitude_outcome(_a(ratio=1.6)) is False
    assert ms.amplitude_outcome(_a(periods=(0, 0, 0, 0))) is None


def _b(ratio=10.0, late=1.0, early=1.0, drop=10.0, share=0.9, sharp=3.0):
    phase = [early] * 75 + [late] * 25
    dec_large = 0.1
    dec = {"status": "max_steps", "final_loss": 1.0 / drop, "final_loss_large": dec_large,
           "sharpness_end": sharp}
    total_drop = 1.0 - 1.0 / drop
    ctl = {"status": "max_steps", "final_loss": 1.0,
           "final_loss_large": dec_large + share * total_drop, "sharpness_end": 0.5}
    return {"scale_ratio": ratio, "scale_small": ratio, "scale_large": 1.0, "loss_init": 10.0,
            "lr1": 1.0,
            "phase1": {"status": "max_steps", "loss": phase},
            "arms": {"decayed": dec, "control": ctl}}


def test_origin_outcomes():
    assert ms.scales_separate(_b()) and not ms.scales_separate(_b(ratio=3.0))
    assert ms.plateau_outcome(_b()) is True
    assert ms.plateau_outcome(_b(early=2.0, late=1.0)) is False  # still falling by half
    assert ms.plateau_outcome(_b(late=1e-3, early=1e-3)) is False  # converged, not held up
    assert ms.plateau_outcome(_b(ratio=3.0)) is None  # precondition failed: not tested
    assert ms.decay_outcome(_b()) is True
    assert ms.decay_stats(_b())["large_share"] == pytest.approx(0.9)
    assert ms.decay_outcome(_b(drop=1.5)) is False
    assert ms.decay_outcome(_b(share=0.2)) is False
    assert ms.decay_outcome(_b(sharp=1.5)) is False  # sharpness·η₁/2 = 0.75: not entered
    assert ms.decay_outcome(_b(ratio=3.0)) is None


def test_claims_from_synthetic_records():
    good = {"growth": _a(), "origin": _b()}
    claims = {c.id: c.verdict for c in ms.claims({0: good, 1: good}, ms.PRESETS["quick"])}
    assert set(claims.values()) == {"agrees"}
    mixed = {"growth": _a(outer=(1.9, 1.9), periods=(2, 4, 4, 4)), "origin": _b(ratio=3.0)}
    claims = {c.id: c.verdict for c in ms.claims({0: good, 1: mixed}, ms.PRESETS["quick"])}
    assert claims["subquadratic-growth"] == "partly"
    assert claims["two-cycles"] == "partly"
    assert claims["separate-scales"] == "partly"
    assert claims["plateau-before-decay"] == "agrees"  # seed 1 could not test it
    untested = {"growth": _a(eos=0.1), "origin": _b(ratio=1.0)}
    claims = {c.id: c.verdict for c in ms.claims({0: untested}, ms.PRESETS["quick"])}
    assert claims["subquadratic-growth"] == "not tested"
    assert claims["decay-enters-small-scale"] == "not tested"
    assert claims["separate-scales"] == "disagrees"


# --- helpers against closed forms -----------------------------------------------------------


def test_exponent_helpers_on_the_toy():
    ts = np.logspace(-3, 3, 241)
    toy = SqrtLoss(2.0)
    inc = toy.value(ts)
    scales, p = ms.local_exponents(ts, inc)
    np.testing.assert_allclose(p, toy.local_exponent(scales), atol=2e-3)
    # p = 1 + 1/sqrt(1 + t²) never falls below 1: no saturation on the grid
    assert ms.saturation_scale(ts, inc) == math.inf
    sat = ms.saturation_scale(ts, ts**2 / (1 + ts**2))  # p = 2/(1 + t²): below 1 at t = 1
    assert sat == pytest.approx(1.0, rel=0.03)
    assert ms.outer_exponent(ts, ts**1.5, 10.0) == pytest.approx(1.5)
    assert ms.quadratic_radius(ts, inc) == pytest.approx(0.75, rel=0.1)  # 1/sqrt(1+t²) = 0.8


def test_toy_fit_and_cycle_closed_form():
    ts = np.logspace(-3, 1, 81)
    inc = ms.toy_increment(ts, 3.0, 0.7)
    assert ms.fit_toy_scale(ts, inc, 3.0) == pytest.approx(0.7, rel=1e-5)
    toy = SqrtLoss(3.0)
    for r in (1.2, 2.0):
        traj = toy.gd(1e-3, r * 2 / 3.0, 400)
        assert ms.cycle_period(traj) == 2
        assert abs(traj[-1] - traj[-2]) / 2 == pytest.approx(ms.toy_amplitude(1.0, r), rel=1e-6)
    assert ms.cycle_period(toy.gd(0.5, 0.5, 400)) == 1  # converges: a fixed point
    assert ms.cycle_period([0.0, float("nan")] * 20) == 0


def test_restricted_gd_and_floor_on_a_quadratic():
    torch.manual_seed(0)
    X, Y = torch.randn(40, 3, dtype=torch.float64), torch.randn(40, 1, dtype=torch.float64)
    obj = valleys.Objective(nn.Linear(3, 1).double(), "mse", (X, Y))
    theta = obj.parameters_vector()
    H = torch.func.hessian(lambda t: obj.chunk_losses(t, X, Y).mean())(theta)
    u = torch.linalg.eigh(H).eigenvectors[:, -1]
    g, lam = obj.gradient(theta), float(u @ H @ u)
    floor = ms.valley_floor(obj, theta, u, 0.3)
    assert floor["t0"] == pytest.approx(-float(g @ u) / lam, rel=1e-6, abs=1e-9)
    theta_c = theta + floor["t0"] * u
    traj = ms.restricted_gd(obj, theta_c, u, 0.5 * 2 / lam, 50, 1e-2)
    assert abs(traj[-1]) < 1e-8  # η < 2/λ on a quadratic: converges
    assert abs(ms.restricted_gd(obj, theta_c, u, 1.2 * 2 / lam, 400, 1e-2)[-1]) > 1e5
