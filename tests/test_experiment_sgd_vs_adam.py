"""The sgd-vs-adam reproduction (Zhou et al. 2020): quick preset end to end, the summary
contract, the criteria on synthetic records, and the per-coordinate tail index."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from valleys.experiments import run
from valleys.experiments.sgd_vs_adam import measure as sva
from valleys.noise import stable_rvs

FIGURES = ("training_loss", "tail_index", "exit_times", "minima")
VERDICTS = {"agrees", "partly", "disagrees", "not tested"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sgd-vs-adam")
    return out, run(sva.NAME, out, preset="quick", progress=False)


def test_summary_contract(quick):
    out, summary = quick
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["claims"] == summary["claims"]
    assert [c["id"] for c in summary["claims"]] == [s.id for s in sva.CLAIMS]
    for claim in summary["claims"]:
        assert set(claim) >= {"id", "claim", "criterion", "measured", "seeds", "verdict"}
        assert claim["verdict"] in VERDICTS
        for value in claim["measured"].values():
            assert set(value) >= {"mean", "min", "max"}
    seeds = summary["seeds"]
    assert len(seeds) >= 2
    assert summary["standardization"] == "per-coordinate"
    assert set(summary["final_loss"]) == {"sgd", "adam"}
    last = min(summary["loss_targets"])
    for opt in ("sgd", "adam"):
        assert len(summary["final_loss"][opt]) == len(seeds)
        for loss, status in zip(summary["final_loss"][opt], summary["status"][opt], strict=True):
            assert status in ("target", "max_steps", "diverged")
            if status == "target":  # stopped at the target, not far below it
                assert last / 3 < loss <= last


def test_outputs_and_figures(quick):
    out, summary = quick
    for name in ("summary.json", "results.csv", "report.md"):
        assert (out / name).stat().st_size > 0
    for stem in FIGURES:
        assert (out / f"{stem}.png").exists() and (out / f"{stem}.svg").exists()
    assert [f["stem"] for f in summary["figures"]] == list(FIGURES)
    report = (out / "report.md").read_text()
    assert "## Set-up" in report and "## Discussion" in report and "Zhou" in report
    for claim in summary["claims"]:
        assert f"**{claim['verdict']}**" in report


def test_both_noises_are_measured_at_the_same_minima(quick):
    out, _ = quick
    records = json.loads((out / "seeds" / "seed-0.json").read_text())["records"]
    cells = {(p["optimizer"], p["target"]) for p in records["points"]}
    reached = {r["optimizer"] for r in records["runs"] if r["status"] == "target"}
    for opt in reached:
        assert {(opt, t) for t in sva.PRESETS["quick"].loss_targets} <= cells
    for p in records["points"]:
        assert p["loss"] <= p["target"]
        assert p["sharpness"] > 0 and 0 <= p["test_accuracy"] <= 1
        for key in ("alpha_sgd_noise", "alpha_adam_noise"):
            a = p[key]
            assert 0.5 < a["low"] <= a["alpha"] <= a["high"] < 3
            assert a["coordinates"] > 100


def test_sde_part_follows_the_small_noise_law(quick):
    out, _ = quick
    records = json.loads((out / "seeds" / "seed-0.json").read_text())["records"]
    for row in records["sde"]["epsilon"]:
        assert 1 / 1.8 < row["mean_exit_time"] / row["theory"] < 1.8
    for alpha, exponent in records["sde"]["exponents"].items():
        assert abs(exponent - float(alpha)) < 0.5


# --- criteria on synthetic records -----------------------------------------------------------


def _tail(alpha, half=0.02):
    return {"alpha": alpha, "low": alpha - half, "high": alpha + half, "coordinates": 1000}


def _point(opt, target, a_sgd, a_adam, sharp, acc):
    return {"optimizer": opt, "target": target, "alpha_sgd_noise": _tail(a_sgd),
            "alpha_adam_noise": _tail(a_adam), "sharpness": sharp, "test_accuracy": acc}


def _sde(exponent_15=1.55, widths=(1.0, 2.0, 3.0), adam=(80.0, 300.0)):
    return {"exponents": {"1.5": exponent_15, "1.8": 1.75},
            "width": [{"width": w, "mean_exit_time": t} for w, t in
                      zip((0.7, 1.0, 1.4), widths, strict=True)],
            "optimizers": [{"alpha": a, "dynamics": d, "mean_exit_time": t, "stderr": t / 10}
                           for a, (s, m) in zip(sva.ESCAPE_ALPHAS, ((30.0, adam[0]),
                                                                    (20.0, adam[1])), strict=True)
                           for d, t in (("sgd", s), ("adam", m))]}


def _records(points, sde=None):
    return {"runs": [], "points": points, "sde": sde or _sde()}


def test_each_criterion_reaches_every_outcome():
    good = _records([_point("sgd", 0.01, 1.6, 1.9, 1.0, 0.98),
                     _point("adam", 0.01, 1.7, 1.95, 2.0, 0.96)])
    bad = _records([_point("sgd", 0.01, 2.1, 2.0, 3.0, 0.95),
                    _point("adam", 0.01, 1.7, 1.72, 2.0, 0.97)],
                   _sde(exponent_15=1.9, widths=(1.0, 3.0, 2.0), adam=(31.0, 300.0)))
    sde_untested = _sde()
    sde_untested["exponents"]["1.5"] = math.nan
    empty = _records([], sde_untested)
    half = _records([_point("sgd", 0.01, 1.6, 1.9, 1.0, 0.98)])  # Adam never reached it
    outcomes = [sva.heavy_tail_outcome, sva.lighter_tail_outcome, sva.escape_law_outcome,
                sva.escape_order_outcome, sva.sharper_outcome, sva.generalization_outcome]
    for fn in outcomes:
        assert fn(good) is True, fn.__name__
        assert fn(bad) is False, fn.__name__
    for fn in (sva.heavy_tail_outcome, sva.lighter_tail_outcome, sva.escape_law_outcome,
               sva.sharper_outcome, sva.generalization_outcome):
        assert fn(empty) is None, fn.__name__
    assert sva.sharper_outcome(half) is None and sva.generalization_outcome(half) is None
    assert sva.heavy_tail_outcome(half) is True  # measured where the run got to
    tie = _records([_point("sgd", 0.01, 1.6, 1.9, 1.0, 0.97),
                    _point("adam", 0.01, 1.7, 1.95, 2.0, 0.968)])
    assert sva.generalization_outcome(tie) is False  # within the tie: not "better"


def test_claims_give_every_verdict():
    good = _records([_point("sgd", 0.01, 1.6, 1.9, 1.0, 0.98),
                     _point("adam", 0.01, 1.7, 1.95, 2.0, 0.96)])
    bad = _records([_point("sgd", 0.01, 2.1, 2.0, 3.0, 0.95),
                    _point("adam", 0.01, 1.7, 1.72, 2.0, 0.97)])
    config = sva.PRESETS["quick"]
    by_id = {c.id: c for c in sva.claims({0: good, 1: good}, config)}
    assert by_id["adam-sharper"].verdict == "agrees"
    by_id = {c.id: c for c in sva.claims({0: good, 1: bad}, config)}
    assert by_id["adam-sharper"].verdict == "partly"
    assert by_id["escape-time-law"].verdict == "agrees"
    by_id = {c.id: c for c in sva.claims({0: bad, 1: bad}, config)}
    assert by_id["adam-lighter-tails"].verdict == "disagrees"
    runs = [{"optimizer": "adam", "status": "max_steps", "final_loss": 0.05}]
    untested = {**_records([]), "runs": runs}
    by_id = {c.id: c for c in sva.claims({0: untested, 1: untested}, config)}
    assert by_id["sgd-generalizes-better"].verdict == "not tested"
    assert "max_steps" in by_id["sgd-generalizes-better"].sentence
    assert sva.summary({0: untested}, config)["final_loss"] == {"sgd": [None], "adam": [0.05]}


# --- the per-coordinate tail index -----------------------------------------------------------


def test_per_coordinate_tail_ignores_coordinate_scales():
    """Stable noise of one α with scales over 6 decades: the per-coordinate estimate finds α,
    the pooled one does not; a dead coordinate is dropped."""
    g = torch.Generator().manual_seed(0)
    x = stable_rvs(1.5, (400, 300), generator=g, dtype=torch.float64)
    x = x * torch.logspace(-3, 3, 300, dtype=torch.float64)
    x[:, 0] = 0.0
    a = sva.per_coordinate_tail(x, bootstrap=50, seed=0)
    assert abs(a["alpha"] - 1.5) < 0.1 and a["coordinates"] == 299
    assert abs(sva.pooled_tail(x, 0) - 1.5) > 0.3


def test_averaging_windows_are_independent_and_weighted():
    w = sva.ema_weights(0.9, 30)
    assert torch.isclose(w[-1], torch.tensor(0.1, dtype=w.dtype))
    assert torch.isclose(w.sum(), torch.tensor(1 - 0.9**30, dtype=w.dtype))
    # Gaussian noise: averaging independent windows keeps α̂ at 2 (no autocorrelation bias).
    g = torch.Generator().manual_seed(1)
    xi = torch.randn(200, 30, 500, generator=g, dtype=torch.float64)
    averaged = torch.einsum("k,wkd->wd", w, xi)
    assert abs(sva.per_coordinate_tail(averaged, bootstrap=0, seed=0)["alpha"] - 2.0) < 0.1
