"""The multiscale reproduction (Ma, Kunin, Wu & Ying 2022): quick preset end to end, and helpers.

The quick preset runs once into a temporary folder (module-scoped, about half a minute). The
tests check the output contract, that the headline numbers are consistent with the scans and
trajectories they come from, and the helpers against closed forms.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import valleys
from valleys.experiments import multiscale as exp


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("multiscale")
    summary = exp.run(out, preset="quick", seed=0, progress=True)
    return out, summary


def test_name_presets_and_arguments():
    assert exp.NAME == "multiscale"
    assert {"quick", "full"} <= set(exp.PRESETS)
    with pytest.raises(ValueError, match="unknown preset"):
        exp.run("unused", preset="nope")
    with pytest.raises(TypeError, match="seed"):
        exp.run("unused", seed=1.5)


def test_output_contract(quick):
    out, summary = quick
    for stem in summary["figures"]:
        assert (out / f"{stem}.png").stat().st_size > 0
        assert (out / f"{stem}.svg").stat().st_size > 0
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["experiment"] == "multiscale" and on_disk["preset"] == "quick"
    assert len(on_disk["runs"]) == len(summary["runs"]) > 0
    assert set(on_disk["verdicts"]) == {"growth", "origin"}
    for v in on_disk["verdicts"].values():
        assert v in ("agrees", "partly agrees", "disagrees", "inconclusive")
    table = pd.read_csv(out / "results.csv")
    assert set(table["part"]) == {"growth", "origin"}
    report = (out / "report.md").read_text()
    assert "## The claims" in report and "Verdict" in report
    assert summary["verdicts"]["growth"].upper() in report
    assert "fitted_exponents" in summary["headline"]


def test_scan_matches_floor_curvature(quick):
    # oracle: at the smallest |t| the increment is ½ uᵀH(θ_c)u t² (HVP computed separately)
    _, summary = quick
    a = summary["eos"]
    ts = np.asarray(a["ts"])
    for side in ("plus", "minus"):
        inc = np.asarray(a[f"increments_{side}"])
        ratio = inc[:3] / (0.5 * a["floor_curvature"] * ts[:3] ** 2)
        np.testing.assert_allclose(ratio, 1.0, rtol=2e-3)
    # A and t0: the iterate sits on one side of the oscillation, |t0| ≈ A
    assert a["amplitude"] > 0
    assert abs(a["t0"]) == pytest.approx(a["amplitude"], rel=0.5)


def test_headline_consistent_with_trajectory_and_fits(quick):
    _, summary = quick
    a, h = summary["eos"], summary["headline"]
    checks = [r["sharpness"] for r in a["trajectory"][1:]]
    assert all(math.isfinite(c) for c in checks)
    tail = checks[len(checks) // 2:]
    assert h["median_sharpness_over_threshold"] == pytest.approx(
        float(np.median(tail)) * a["lr"] / 2)
    assert a["threshold"] == pytest.approx(2 / a["lr"])
    for f in a["fits"]:
        ts = np.asarray(a["ts"])
        inc = np.asarray(a[f"increments_{f['side']}"])
        sel = (ts >= f["t_lo"]) & (ts <= f["t_hi"]) & (inc > 0)
        if sel.sum() >= exp.MIN_FIT_POINTS:
            assert f["exponent"] == pytest.approx(valleys.landscape.growth_exponent(ts[sel],
                                                                                    inc[sel]))
    # the verdict follows the fixed rules from the recorded numbers
    assert exp._growth_verdict(a)["verdict"] == summary["verdicts"]["growth"]


def test_group_losses_add_up(quick):
    _, summary = quick
    for b in summary["origin"]:
        for r in b["phase1_records"]:
            if math.isfinite(r["loss"]) and "loss_small" in r:
                assert r["loss_small"] + r["loss_large"] == pytest.approx(r["loss"], rel=1e-10)
        if "arms" in b:
            dec, ctl = b["arms"]["decayed"], b["arms"]["control"]
            assert dec["lr"] == pytest.approx(ctl["lr"] / exp.PRESETS["quick"].decay)
            assert b["drop_factor"] == pytest.approx(ctl["final_loss"] / dec["final_loss"])


# --- helpers against closed forms -----------------------------------------------------------


def _least_squares_objective():
    torch.manual_seed(0)
    X = torch.randn(40, 3, dtype=torch.float64)
    Y = torch.randn(40, 1, dtype=torch.float64)
    model = nn.Linear(3, 1).double()
    return valleys.Objective(model, "mse", (X, Y)), X, Y


def test_valley_floor_on_a_quadratic():
    obj, X, Y = _least_squares_objective()
    theta = obj.parameters_vector()
    H = torch.func.hessian(lambda t: obj.chunk_losses(t, X, Y).mean())(theta)
    u = torch.linalg.eigh(H).eigenvectors[:, -1]
    g = obj.gradient(theta)
    lr = 0.3
    floor = exp._valley_floor(obj, theta, u, lr)
    assert floor["amplitude"] == pytest.approx(abs(lr * float(g @ u)) / 2)
    t_exact = -float(g @ u) / float(u @ H @ u)  # minimizer of the quadratic along u
    assert floor["t0"] == pytest.approx(t_exact, rel=1e-6, abs=1e-9)


def test_saturation_scale_closed_form():
    # Δ(t) = t²/(1+t²): local exponent 2/(1+t²) drops below 1 at t = 1
    ts = np.logspace(-3, 3, 601)
    sat = exp._saturation_scale(ts, ts**2 / (1 + ts**2))
    assert sat == pytest.approx(1.0, rel=0.02)
    assert exp._saturation_scale(ts, ts**2) == math.inf
    assert math.isnan(exp._saturation_scale(ts[:1], ts[:1]))


def test_fit_needs_enough_points():
    ts = np.logspace(-2, 0, 9)
    assert exp._fit(ts, ts**1.5, 1e-2, 1.0)["exponent"] == pytest.approx(1.5)
    assert math.isnan(exp._fit(ts, ts**1.5, 0.5, 0.6)["exponent"])
    assert exp._fit(ts, -ts, 1e-2, 1.0)["nonpositive"] == 9


def _fits(inner, osc_minus, osc_plus):
    rows = []
    for side, osc in (("minus", osc_minus), ("plus", osc_plus)):
        rows += [{"side": side, "range": "inner", "exponent": inner},
                 {"side": side, "range": "oscillation", "exponent": osc},
                 {"side": side, "range": "outer", "exponent": 1.0}]
    return rows


@pytest.mark.parametrize(
    ("at_eos", "inner", "osc", "verdict"),
    [
        (True, 2.0, (1.5, 1.5), "agrees"),
        (True, 2.0, (1.5, 2.0), "partly agrees"),
        (True, 2.0, (2.0, 2.0), "disagrees"),
        (True, 1.5, (1.5, 1.5), "inconclusive"),
        (False, 2.0, (1.5, 1.5), "inconclusive"),
    ],
)
def test_growth_verdict_rules(at_eos, inner, osc, verdict):
    a = {"at_eos": at_eos, "fits": _fits(inner, *osc)}
    assert exp._growth_verdict(a)["verdict"] == verdict


def test_origin_verdict_rules():
    base = {"phase1_sharpness": 1.0, "lr": 2.0, "drop_factor": 5.0, "large_share_of_drop": 0.9,
            "scale_ratio": 10.0}
    assert exp._origin_verdict(base, {})["verdict"] == "agrees"
    assert exp._origin_verdict({**base, "drop_factor": 1.0}, {})["verdict"] == "partly agrees"
    none = {**base, "drop_factor": 1.0, "large_share_of_drop": 0.1, "scale_ratio": 1.0}
    assert exp._origin_verdict(none, {})["verdict"] == "disagrees"
    below = {**base, "phase1_sharpness": 0.5}  # sharpness·η/2 = 0.5 < 0.9: premise not met
    assert exp._origin_verdict(below, {})["verdict"] == "inconclusive"
    assert exp._origin_verdict({"diverged": True}, {})["verdict"] == "inconclusive"


@pytest.mark.slow
def test_same_seed_same_numbers(quick, tmp_path):
    _, summary = quick
    again = exp.run(tmp_path, preset="quick", seed=0, progress=False)
    # NaN-safe comparison through JSON (NaN != NaN in a dict comparison)
    assert json.dumps(again["headline"], sort_keys=True, default=str) == json.dumps(
        summary["headline"], sort_keys=True, default=str)
