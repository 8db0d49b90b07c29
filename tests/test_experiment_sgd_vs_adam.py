"""The sgd-vs-adam reproduction (Zhou et al. 2020): quick preset end to end, and its verdicts."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest

from valleys.experiments import sgd_vs_adam as sva
from valleys.sweeps import ResultsStore

FIGURES = ("tail_index", "exit_times", "solutions")
VERDICTS = {"agrees", "partly agrees", "disagrees", "inconclusive", "not tested"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sgd-vs-adam")
    return out, sva.run(out, preset="quick", seed=0, progress=False)


def test_presets_follow_the_contract():
    assert sva.NAME == "sgd-vs-adam"
    assert {"quick", "full"} <= set(sva.PRESETS)
    for p in sva.PRESETS.values():
        assert len(p.sgd_lrs) == len(p.adam_lrs)  # the same tuning budget for both
    with pytest.raises(ValueError, match="unknown preset"):
        sva.run("unused", preset="huge")


def test_output_files(quick):
    out, _ = quick
    for name in ("summary.json", "results.csv", "report.md", "tail_index.csv", "exit_times.csv"):
        assert (out / name).stat().st_size > 0
    for stem in FIGURES:
        assert (out / f"{stem}.png").exists() and (out / f"{stem}.svg").exists()
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["experiment"] == "sgd-vs-adam"


def test_runs_have_the_stable_keys(quick):
    out, summary = quick
    runs = json.loads((out / "summary.json").read_text())["runs"]
    assert {(r["dataset"], r["optimizer"]) for r in runs} == {
        (d, o) for d in ("mnist1d", "digits") for o in ("sgd", "adam")}
    for r in runs:
        assert r["status"] != "diverged"
        low, high = r["alpha_hat_interval"]
        assert 0 < low <= r["alpha_hat"] <= high
        assert 0.5 < r["alpha_hat"] < 2.5
        assert r["sharpness"] > 0 and r["nonuniformity"] > 0
        assert 0.0 <= r["test_accuracy"] <= 1.0
        assert len(r["alpha_hat_along_training"]) == sva.PRESETS["quick"].checkpoints
        if r["optimizer"] == "sgd":  # SGD's effective noise is its raw noise
            assert r["alpha_hat"] == r["alpha_hat_raw"]
    # Learning rates were selected by the fixed rule: lowest final training loss.
    for ds in ("mnist1d", "digits"):
        for opt in ("sgd", "adam"):
            rows = [t for t in summary["tuning"] if t["dataset"] == ds and t["optimizer"] == opt]
            best = min(rows, key=lambda t: t["final_loss"])
            assert best["selected"] and sum(t["selected"] for t in rows) == 1


def test_sde_part_agrees_with_theory_within_tolerance(quick):
    _, summary = quick
    for row in summary["sde"]["epsilon"]:
        # Small-noise law 1/(ε^α m(W)): within a factor 1.6 at these moderate ε.
        assert 1 / 1.6 < row["mean_exit_time"] / row["theory"] < 1.6
    for alpha, exponent in summary["sde"]["exponents"].items():
        assert abs(exponent - float(alpha)) < 0.3


def test_verdicts_and_report(quick):
    out, summary = quick
    assert set(summary["verdicts"]) == {"heavy_tails", "tails_order", "exit_times",
                                        "sharpness", "generalization"}
    assert set(summary["verdicts"].values()) <= VERDICTS
    report = (out / "report.md").read_text()
    for verdict in summary["verdicts"].values():
        assert verdict.upper() in report
    assert "Zhou" in report and "disagree" in report


def _run(ds, opt, alpha, low, high, sharp=1.0, acc=0.9):
    return {"dataset": ds, "optimizer": opt, "alpha_hat": alpha,
            "alpha_hat_interval": [low, high], "sharpness": sharp, "test_accuracy": acc}


def test_verdict_rules():
    sep = [_run("a", "sgd", 1.2, 1.1, 1.3, 1.0, 0.95), _run("a", "adam", 1.6, 1.5, 1.7, 2.0, 0.9)]
    assert sva._verdict_tails_order(sep)["verdict"] == "agrees"
    assert sva._verdict_heavy_tails(sep)["verdict"] == "agrees"
    assert sva._verdict_sharpness(sep)["verdict"] == "agrees"
    assert sva._verdict_accuracy(sep)["verdict"] == "agrees"
    overlap = [_run("a", "sgd", 1.4, 1.2, 1.6), _run("a", "adam", 1.5, 1.3, 2.1)]
    assert sva._verdict_tails_order(overlap)["verdict"] == "partly agrees"
    assert sva._verdict_heavy_tails(overlap)["verdict"] == "partly agrees"
    assert sva._verdict_accuracy(overlap)["verdict"] == "inconclusive"
    reverse = [_run("a", "sgd", 1.8, 1.7, 1.9, 3.0, 0.8), _run("a", "adam", 1.2, 1.1, 1.3, 1.0)]
    assert sva._verdict_tails_order(reverse)["verdict"] == "disagrees"
    assert sva._verdict_sharpness(reverse)["verdict"] == "disagrees"
    assert sva._verdict_accuracy(reverse)["verdict"] == "disagrees"
    sde = {"exponents": {"1.5": 1.55, "1.8": 1.3},
           "width": [{"mean_exit_time": 1.0}, {"mean_exit_time": 2.0}],
           "optimizers": [{"alpha": 1.5, "dynamics": "sgd", "mean_exit_time": 1.0},
                          {"alpha": 1.5, "dynamics": "adam", "mean_exit_time": 3.0}]}
    verdict = sva._verdict_sde(sde)
    assert verdict["verdict"] == "partly agrees" and verdict["exponent_within_tol"] == [True, False]
    assert not math.isnan(sva.EXPONENT_TOL)


def test_checkpoints_keep_adams_own_second_moment():
    """The preconditioner of Adam's noise is torch's own denominator at the checkpoint."""
    import torch
    from torch import nn

    import valleys
    from valleys.experiments.sgd_vs_adam import _Checkpoints
    from valleys.train import optimizer_preconditioner, train

    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(40, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (40,))
    obj = valleys.Objective(nn.Linear(5, 3).double(), "ce", (X, y))
    seen = {}

    class Denominator:  # runs after _Checkpoints at the same step
        def setup(self, context):
            self.context = context

        def __call__(self, step, theta):
            if step == 6:
                seen["P"] = optimizer_preconditioner(self.context.optimizer, self.context.param)

    keep = _Checkpoints({6})
    train(obj, optimizer="adam", lr=0.01, steps=8, batch_size=8, seed=0, record_every=2,
          callbacks=[keep, Denominator()])
    assert set(keep.thetas) == {6} and set(keep.second_moments) == {6}
    P = keep.second_moments[6].sqrt() + 1e-8
    assert torch.allclose(P, seen["P"], rtol=1e-12, atol=0)


# --- resumability --------------------------------------------------------------------------------

# Keys of the summary that describe this call rather than the results.
VOLATILE = ("runtime_s", "units")


def _results(summary: dict) -> str:
    """The summary without its per-call keys, as canonical JSON (NaN compares equal as text)."""
    return json.dumps({k: v for k, v in summary.items() if k not in VOLATILE}, sort_keys=True)


def _counting(monkeypatch, calls: dict, name: str, fail_on: int | None = None) -> None:
    """Replace the unit ``name`` by a wrapper that counts calls (and is killed on call
    ``fail_on``: a KeyboardInterrupt, which the sweep does not catch, like a kill)."""
    unit = getattr(sva, name)

    def wrapper(config):
        calls[name] = calls.get(name, 0) + 1
        if calls[name] == fail_on:
            raise KeyboardInterrupt
        return unit(config)

    monkeypatch.setattr(sva, name, wrapper)


def test_the_store_holds_every_unit(quick):
    out, summary = quick
    p = sva.PRESETS["quick"]
    records = ResultsStore(out / "runs.sqlite").records()
    n_train = len(p.datasets) * (len(p.sgd_lrs) + len(p.adam_lrs))
    n_analysis = 2 * len(p.datasets)
    n_sde = (len(p.sde_alphas) * len(p.sde_epsilons) + len(p.sde_widths) + len(p.sde_depths)
             + 6)
    assert len(records) == n_train + n_analysis + n_sde == summary["units"]["total"]
    assert {r["status"] for r in records} == {"done"}
    assert summary["units"]["computed_this_call"] == {
        "train": n_train, "analysis": n_analysis, "sde": n_sde}
    assert summary["units"]["failed"] == []
    assert "runs.sqlite" in (out / "report.md").read_text()


def test_a_killed_run_resumes_without_recomputing_finished_units(quick, tmp_path, monkeypatch):
    """Units left unfinished by a kill are computed again, finished ones are not, and the
    summary equals the uninterrupted run's."""
    out, summary = quick
    folder = tmp_path / "resumed"
    shutil.copytree(out, folder)
    store = ResultsStore(folder / "runs.sqlite")
    records = store.records()

    def pick(sweep, **match):
        return next(r for r in records if r["sweep"] == f"{sva.NAME}/{sweep}"
                    and all(r["config"][k] == v for k, v in match.items()))

    # In flight when the process was killed (the store marks them "running"): a training run
    # whose lr was selected, another one, an analysis and two exit times.
    selected_lr = next(t["lr"] for t in summary["tuning"]
                       if t["dataset"] == "mnist1d" and t["optimizer"] == "sgd" and t["selected"])
    unfinished = [
        pick("train", dataset="mnist1d", optimizer="sgd", lr=selected_lr),
        pick("train", dataset="digits", optimizer="adam", lr=sva.PRESETS["quick"].adam_lrs[0]),
        pick("analysis", dataset="digits", optimizer="adam"),
        pick("sde", part="epsilon", alpha=1.2, epsilon=0.4),
        pick("sde", part="optimizers", alpha=2.0, dynamics="adam"),
    ]
    for rec in unfinished:
        store.start(rec["run_id"], sweep=rec["sweep"], config=rec["config"])

    # A rerun that is itself killed during its second training run ...
    calls: dict[str, int] = {}
    _counting(monkeypatch, calls, "train_unit", fail_on=2)
    with pytest.raises(KeyboardInterrupt):
        sva.run(folder, preset="quick", seed=0, progress=False)
    assert calls == {"train_unit": 2}
    statuses = store.statuses()
    assert statuses[unfinished[0]["run_id"]] == "done"  # finished before the kill
    assert statuses[unfinished[1]["run_id"]] == "running"  # in flight at the kill

    # ... and the rerun after it computes exactly what is still missing.
    monkeypatch.undo()
    calls.clear()
    for name in ("train_unit", "analysis_unit", "sde_unit"):
        _counting(monkeypatch, calls, name)
    resumed = sva.run(folder, preset="quick", seed=0, progress=False)
    assert calls == {"train_unit": 1, "analysis_unit": 1, "sde_unit": 2}
    assert resumed["units"]["computed_this_call"] == {"train": 1, "analysis": 1, "sde": 2}
    assert set(store.statuses().values()) == {"done"}
    assert _results(resumed) == _results(summary)
    assert _results(json.loads((folder / "summary.json").read_text())) == _results(
        json.loads((out / "summary.json").read_text()))


def _tiny(**changes) -> sva.Preset:
    base = dict(datasets=("digits",), n_train=64, steps=40, record_every=10, checkpoints=2,
                noise_batches=80, bootstrap=5)
    return dataclasses.replace(sva.PRESETS["quick"], **{**base, **changes})


def test_divergence_is_recorded_and_excluded_from_selection(tmp_path):
    # SGD at absurd learning rates: every run diverges; Adam: one of two diverges.
    p = _tiny(sgd_lrs=(1e8, 1e9), adam_lrs=(1e8, 1e-3))
    store = ResultsStore(tmp_path / "runs.sqlite")
    net = sva._network_part(store, p, 0, False)
    train = {(r["config"]["optimizer"], r["config"]["lr"]): r["status"]
             for r in store.records(f"{sva.NAME}/train")}
    assert train == {("sgd", 1e8): "diverged", ("sgd", 1e9): "diverged",
                     ("adam", 1e8): "diverged", ("adam", 1e-3): "done"}
    assert [t["status"] for t in net["tuning"]] == ["diverged", "diverged", "diverged",
                                                    "max_steps"]
    assert [t.get("selected") for t in net["tuning"]] == [None, None, False, True]
    sgd, adam = net["runs"]
    assert sgd["status"] == "diverged" and math.isnan(sgd["alpha_hat"])
    assert adam["lr"] == 1e-3 and math.isfinite(adam["alpha_hat"]) and adam["sharpness"] > 0
    assert len(store.records(f"{sva.NAME}/analysis")) == 1  # nothing to analyse for SGD
    # Rerunning the sweep recomputes nothing, the diverged runs included.
    assert sva._network_part(store, p, 0, False)["computed"] == {"train": 0, "analysis": 0}


def test_a_replay_that_differs_fails_loudly():
    p = _tiny()
    config = sva._train_configs(p, 0)[0]
    stored = sva.train_unit(config)
    analysis = sva._analysis_configs(p, 0, {("digits", "sgd"): {
        "lr": config["lr"], "final_loss": stored["final_loss"] * (1 + 1e-12)}})[0]
    with pytest.raises(RuntimeError, match="not deterministic"):
        sva.analysis_unit(analysis)
