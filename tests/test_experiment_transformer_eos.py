"""The transformer edge-of-stability reproduction: its quick preset through the driver, its
data, loss and training loop, and its criteria on synthetic runs.

The quick preset runs once per module (about 40 s of CPU time for its two seeds); the tests
read its output folder. Every verdict a criterion can give is reached on synthetic records.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from valleys.experiments import load_experiment, run
from valleys.experiments.common import torch_threads
from valleys.experiments.transformer_eos import measure as teos
from valleys.experiments.transformer_eos.report import trajectory_statistics
from valleys.stability.thresholds import threshold

NAME = "transformer-eos"
FIGURES = ("sharpness", "loss", "adam_raw_sharpness")


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("transformer-eos")
    summary = run(NAME, out, preset="quick", progress=False)
    return out, summary


def test_presets_follow_the_contract():
    experiment = load_experiment(NAME)
    assert experiment.name == teos.NAME == NAME
    assert [c.id for c in teos.CLAIMS] == ["gd-sharpening", "gd-hovers", "gd-loss",
                                           "adam-hovers"]
    for preset in teos.PRESETS.values():
        assert preset.threads == 1
        assert all(f >= 1.5 for f in preset.gd_factors)  # 2/η above a₀: sharpening is needed
        assert preset.adam_beta1 == 0.9  # the 38/η threshold
    full = teos.PRESETS["full"]
    assert len(full.gd_factors) >= 3 and len(full.adam_lrs) >= 2


# --- data, loss, training loop ------------------------------------------------------------------


def test_modular_addition_is_deterministic_per_seed_and_correct():
    first = teos.modular_addition(7, 0.5, seed=3)
    again = teos.modular_addition(7, 0.5, seed=3)
    other = teos.modular_addition(7, 0.5, seed=4)
    assert torch.equal(first["input_ids"], again["input_ids"])
    assert not torch.equal(first["input_ids"], other["input_ids"])
    ids = first["input_ids"]
    assert ids.shape == (round(0.5 * 49), 4) and ids.dtype == torch.int64
    assert torch.equal(ids[:, 3], (ids[:, 0] + ids[:, 1]) % 7)
    assert (ids[:, 2] == 7).all()  # the "=" token
    assert len({tuple(row) for row in ids.tolist()}) == ids.shape[0]  # distinct pairs
    assert first["answer_mask"].sum() == ids.shape[0] and first["answer_mask"][:, 3].all()
    everything = teos.modular_addition(5, 1.0, seed=0)["input_ids"]
    assert sorted(map(tuple, everything[:, :2].tolist())) == [(a, b) for a in range(5)
                                                              for b in range(5)]
    with pytest.raises(ValueError):
        teos.modular_addition(1, 0.5, seed=0)
    with pytest.raises(ValueError):
        teos.modular_addition(5, 0.0, seed=0)


def test_answer_token_losses_is_the_cross_entropy_of_the_answer():
    from valleys.models import TinyGPT

    batch = teos.modular_addition(5, 0.6, seed=1)
    model = TinyGPT(6, d_model=8, n_layer=1, n_head=2, max_len=4, seed=0).eval()
    losses = teos.answer_token_losses(model, batch)
    logits = model(batch["input_ids"])[:, 2]  # the prediction made at "="
    expected = torch.nn.functional.cross_entropy(logits, batch["input_ids"][:, 3],
                                                 reduction="none")
    assert losses.shape == (batch["input_ids"].shape[0],)
    torch.testing.assert_close(losses, expected)


def _tiny(**changes) -> teos.Preset:
    return dataclasses.replace(teos.PRESETS["quick"], p=5, d_model=8, n_layer=1, steps=6,
                               sharpness_every=2, **changes)


def test_train_run_is_full_batch_gd_and_tracks_adam_preconditioned_sharpness():
    with torch_threads(1):  # as the presets: on a shared machine more threads only contend
        _check_train_run(_tiny())


def _check_train_run(config: teos.Preset) -> None:
    obj = teos.objective(config, seed=0)
    planned = teos.plan(config, a0=10.0)
    gd = next(r for r in planned if r["optimizer"] == "gd")
    assert gd["lr"] == pytest.approx(2 / (config.gd_factors[0] * 10.0))
    assert gd["threshold"] == pytest.approx(2 / gd["lr"])
    out = teos.train_run(obj, gd, config, seed=0)
    theta = obj.parameters_vector().detach().clone()
    losses = []
    for _ in range(config.steps + 1):  # plain full-batch GD on the same objective
        loss, gradient = obj.loss_and_gradient(theta)
        losses.append(float(loss))
        theta = theta - gd["lr"] * gradient
    assert out["status"] == "max_steps" and out["loss_steps"] == list(range(config.steps + 1))
    assert out["loss"] == pytest.approx(losses, rel=1e-4)
    assert out["sharpness_steps"] == [0, 2, 4, 6]
    adam = next(r for r in planned if r["optimizer"] == "adam")
    assert adam["threshold"] == pytest.approx(38 / adam["lr"])
    out = teos.train_run(obj, adam, config, seed=0)
    # Before Adam's first step there is no second moment: no preconditioned value at step 0.
    assert out["sharpness_steps"] == [2, 4, 6] and len(out["raw_sharpness"]) == 3
    assert all(p > r > 0 for p, r in zip(out["sharpness"], out["raw_sharpness"], strict=True))


# --- the quick preset through the driver ---------------------------------------------------------


def test_summary_follows_the_contract(quick):
    out, _ = quick
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["seeds"] == [0, 1]
    assert [c["id"] for c in on_disk["claims"]] == [c.id for c in teos.CLAIMS]
    for claim in on_disk["claims"]:
        assert claim["verdict"] in {"agrees", "partly", "disagrees", "not tested"}
        for value in claim["measured"].values():
            assert isinstance(value, int | float) or {"mean", "min", "max"} <= set(value)
    preset = teos.PRESETS["quick"]
    runs = on_disk["runs"]
    assert len(runs) == 2 * (len(preset.gd_factors) + len(preset.adam_lrs))
    for item in runs:
        assert item["status"] in {"max_steps", "diverged"}
        assert all(isinstance(s, float) and math.isfinite(s) for s in item["sharpness"])
        hyper = {"beta1": item["beta1"]} if item["optimizer"] == "adam" else {}
        assert item["threshold"] == pytest.approx(threshold(item["optimizer"], item["lr"],
                                                            **hyper))
        if item["optimizer"] == "gd":
            assert item["threshold"] == pytest.approx(
                item["factor"] * item["initial_sharpness_a0"], rel=1e-3)
            assert item["sharpness"][0] == pytest.approx(item["initial_sharpness_a0"], rel=1e-2)
        if item["status"] == "max_steps":
            assert item["steps_done"] == preset.steps


def test_figures_report_and_table_are_written(quick):
    out, summary = quick
    assert [f["stem"] for f in summary["figures"]] == list(FIGURES)
    for stem in FIGURES:
        assert (out / f"{stem}.png").stat().st_size > 1000
    report = (out / "report.md").read_text(encoding="utf-8")
    for section in ("## Set-up", "## Results", "## Discussion", "## Claims and verdicts"):
        assert section in report
    for claim in summary["claims"]:
        assert f"`{claim['id']}`: **{claim['verdict']}**" in report
    with open(out / "results.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(summary["runs"])
    assert {"seed", "run", "lr", "threshold", "status", "hover_fraction", "late_swing"} <= set(
        rows[0])


# --- criteria on synthetic runs -----------------------------------------------------------------


def _run(sharpness, losses=None, *, optimizer="gd", status="max_steps", thr=2.0):
    steps = [10 * i for i in range(len(sharpness))]
    losses = losses or [1.0 / (1 + i) * (1.3 if i % 3 == 0 else 1.0)
                        for i in range(len(sharpness))]
    return {"name": f"{optimizer}-x", "optimizer": optimizer, "lr": 2 / thr, "factor": 2.0,
            "beta1": 0.9, "threshold": thr, "status": status, "steps_done": steps[-1],
            "sharpness_steps": steps, "sharpness": sharpness, "loss_steps": steps,
            "loss": losses, "cpu_s": 0.0}


RISING = [1.0 + 0.25 * i for i in range(8)]  # reaches the threshold 2 at step 40
HOVER = RISING + [2.0 * (1.05 if i % 2 else 0.98) for i in range(12)]
JUMPY = RISING + [2.0 * (4.0 if i % 2 else 0.3) for i in range(12)]  # wild swings
FLAT = [1.0] * 20


def _records(*runs):
    return {"initial_sharpness": 1.0, "initial_loss": 1.3, "num_parameters": 10,
            "num_sequences": 5, "runs": list(runs)}


def _verdicts(records_by_seed):
    return {c.id: c.verdict for c in teos.claims(records_by_seed, teos.PRESETS["quick"])}


def test_band_criterion_on_synthetic_series():
    good = {s: _records(_run(HOVER), _run(HOVER, optimizer="adam")) for s in (0, 1)}
    assert set(_verdicts(good).values()) == {"agrees"}
    bad = {s: _records(_run(JUMPY, [1.0 / (1 + i) for i in range(20)]),
                       _run(JUMPY, optimizer="adam")) for s in (0, 1)}
    verdicts = _verdicts(bad)
    assert verdicts["gd-sharpening"] == "agrees"  # it did reach 2/η
    assert verdicts["gd-hovers"] == verdicts["adam-hovers"] == verdicts["gd-loss"] == "disagrees"
    never = {s: _records(_run(FLAT), _run(JUMPY, optimizer="adam", status="diverged"))
             for s in (0, 1)}
    verdicts = _verdicts(never)
    assert verdicts["gd-sharpening"] == "disagrees"  # the budget ended below 2/η
    assert verdicts["gd-hovers"] == verdicts["gd-loss"] == verdicts["adam-hovers"] == "not tested"


def test_a_never_reaching_or_diverged_run_is_not_tested_not_disagreeing():
    by_seed = {0: _records(_run(HOVER), _run(FLAT), _run(HOVER, optimizer="adam")),
               1: _records(_run(HOVER), _run(JUMPY, status="diverged"),
                           _run(HOVER, optimizer="adam"))}
    claims = {c.id: c for c in teos.claims(by_seed, teos.PRESETS["quick"])}
    assert claims["gd-hovers"].verdict == "agrees"
    assert claims["gd-hovers"].measured["tested runs"] == 2
    assert claims["gd-sharpening"].verdict == "disagrees"  # seed 0's FLAT run never reached
    assert "1 run(s) diverged" in claims["gd-sharpening"].sentence


def test_trajectory_statistics():
    steady = trajectory_statistics(_run(HOVER))
    assert steady["late_swing"] == pytest.approx(math.log(1.05 / 0.98))
    assert steady["late_median"] == pytest.approx(2.0 * (1.05 + 0.98) / 2 / 2.0)
    assert steady["last_in_band_step"] == 190
    assert steady["loss_there"] == pytest.approx(_run(HOVER)["loss"][-1])
    assert trajectory_statistics(_run(FLAT))["last_in_band_step"] is None
    jumpy = trajectory_statistics(_run(JUMPY))
    assert jumpy["late_swing"] == pytest.approx(math.log(4.0 / 0.3))
    assert jumpy["above_fraction"] == pytest.approx((3 + 6) / 20)
