"""The experiment protocol and its driver, on a toy reproduction built in the test.

The toy "measures" the mean of seeded normal samples; its claim is that the mean is near 0.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from valleys._checks import available_device, writable_folder
from valleys.experiments import ClaimSpec, Experiment, Figure, judge_seeds, run, spread
from valleys.experiments.index import write_index
from valleys.experiments.output import OutputFolder
from valleys.experiments.plotting import figure_problems, seed_band


@dataclass(frozen=True)
class Toy:
    n: int
    tol: float = 0.5
    threads: int | None = 1


CLAIM = ClaimSpec("mean-zero", "The sample mean is near zero.", "|mean| <= tol on every seed",
                  partly="some seeds within tol")
CALLS: list[int] = []


def _measure(config, seed, device):
    CALLS.append(seed)
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(config.n, generator=g, dtype=torch.float64).to(device)
    return {"mean": float(x.mean()), "path": x.cumsum(0) / torch.arange(1, config.n + 1,
                                                                          device=device)}


def _claims(records, config):
    means = {s: r["mean"] for s, r in records.items()}
    return [CLAIM.judge_per_seed({s: abs(m) <= config.tol for s, m in means.items()},
                                 {"mean": spread(list(means.values()))})]


def _figures(records, config, out):
    fig, ax = plt.subplots()
    seed_band(ax, np.arange(1, config.n + 1), [r["path"] for r in records.values()],
              label="running mean")
    ax.set_xlabel("samples")
    ax.set_ylabel("running mean")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0))
    out.save_figure(fig, "running_mean")
    return [Figure("running_mean", "The running mean over samples, band over seeds.")]


def _table(records, config):
    return pd.DataFrame([{"seed": s, "mean": r["mean"]} for s, r in records.items()])


def _report(records, config, claims):
    largest = max(abs(r["mean"]) for r in records.values())
    return f"## Discussion\n\nThe largest |mean| was {largest:.3g}."


def _toy(**changes) -> Experiment:
    fields = dict(name="toy", paper="nobody", presets={"quick": Toy(50), "full": Toy(500)},
                  claim_specs=(CLAIM,), measure=_measure, claims=_claims, figures=_figures,
                  table=_table, report=_report, summary=lambda r, c: {"n": c.n}, title="A toy")
    fields.update(changes)
    return Experiment(**fields)


def test_run_writes_the_output_contract(tmp_path):
    CALLS.clear()
    summary = run(_toy(), tmp_path, preset="quick", progress=False)
    assert summary["seeds"] == [0, 1] and CALLS == [0, 1]
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["claims"] == summary["claims"]
    claim = summary["claims"][0]
    assert set(claim) >= {"id", "claim", "criterion", "measured", "seeds", "verdict"}
    assert set(claim["measured"]["mean"]) >= {"mean", "min", "max"}
    assert claim["verdict"] == "agrees" and summary["n"] == 50
    assert summary["metadata"]["versions"]["torch"] == torch.__version__
    assert (tmp_path / "running_mean.png").exists() and (tmp_path / "results.csv").exists()
    report = (tmp_path / "report.md").read_text()
    assert "mean-zero" in report and "Figure 1." in report and "The largest |mean|" in report


def test_index_lists_every_claim(tmp_path):
    run(_toy(), tmp_path / "toy", preset="quick", progress=False)
    text = write_index(tmp_path).read_text()
    assert "[toy](toy/report.md)" in text and "|mean| <= tol on every seed" in text
    assert "**agrees**" in text
    with pytest.raises(ValueError, match=r"no \*/summary\.json"):
        write_index(tmp_path / "toy")


def test_finished_seeds_are_resumed_and_config_changes_rerun(tmp_path):
    CALLS.clear()
    first = run(_toy(), tmp_path, preset="quick", seeds=[3, 4], progress=False)
    assert CALLS == [3, 4]
    second = run(_toy(), tmp_path, preset="quick", seeds=[3, 4, 5], progress=False)
    assert CALLS == [3, 4, 5] and second["metadata"]["resumed_seeds"] == [3, 4]
    assert second["claims"][0]["measured"]["mean"]["values"][:2] == \
        first["claims"][0]["measured"]["mean"]["values"]
    (tmp_path / "seeds" / "seed-5.json").write_text("{broken")
    run(_toy(), tmp_path, preset=Toy(50, tol=0.1), seeds=[5], progress=False)
    assert CALLS == [3, 4, 5, 5]  # a damaged file and a changed config are measured again
    run(_toy(code_version="changed"), tmp_path, preset="quick", seeds=[3], progress=False)
    assert CALLS == [3, 4, 5, 5, 3]  # so are the records of other code


def test_a_workdir_is_reused_only_under_the_same_key(tmp_path):
    seen = []

    def measure(config, seed, device, workdir):
        seen.append(sorted(p.name for p in workdir.iterdir()))
        (workdir / "unit.txt").write_text("partial work")
        return _measure(config, seed, device)

    toy = _toy(measure=measure)
    run(toy, tmp_path, seeds=[0], progress=False)
    (tmp_path / "seeds" / "seed-0.json").unlink()  # as if killed after its sub-units
    run(toy, tmp_path, seeds=[0], progress=False)
    run(_toy(measure=measure, code_version="changed"), tmp_path, seeds=[0], progress=False)
    assert seen == [["key.json"], ["key.json", "unit.txt"], ["key.json"]]


def test_verdicts_from_seed_outcomes():
    assert judge_seeds([True, True]) == "agrees"
    assert judge_seeds([False, None]) == "disagrees"
    assert judge_seeds([None, None]) == "not tested"
    assert judge_seeds([True, False]) == "disagrees"
    assert judge_seeds([True, False], partly=True) == "partly"
    strict = ClaimSpec("x", "c", "k")
    with pytest.raises(ValueError, match="defines no 'partly'"):
        strict.judge("partly", {}, [0])
    claim = strict.judge_per_seed({0: True, 1: None}, {"v": 1.0})
    assert claim.verdict == "agrees" and "seeds [1] could not test it" in claim.sentence
    assert spread([1.0, None, 3.0]) == {"mean": 2.0, "min": 1.0, "max": 3.0,
                                        "values": [1.0, None, 3.0]}


def test_claims_must_follow_their_specs(tmp_path):
    def changed(records, config):
        return [ClaimSpec("mean-zero", CLAIM.claim, "a looser rule").judge("agrees", {}, [0])]

    with pytest.raises(RuntimeError, match="changed its statement or criterion"):
        run(_toy(claims=changed), tmp_path, progress=False)
    with pytest.raises(RuntimeError, match="states"):
        run(_toy(claims=lambda r, c: []), tmp_path, progress=False)


def test_one_seed_is_provisional(tmp_path):
    summary = run(_toy(), tmp_path, seeds=[0], progress=False)
    assert summary["provisional"] == ["mean-zero"]


def test_bad_arguments_fail_before_measuring(tmp_path):
    CALLS.clear()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        run(_toy(), blocker / "out", progress=False)
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        run(_toy(), tmp_path, preset="huge", progress=False)
    with pytest.raises(ValueError, match="seeds repeat"):
        run(_toy(), tmp_path, seeds=[1, 1], progress=False)
    with pytest.raises(ValueError, match="non-negative integers"):
        run(_toy(), tmp_path, seeds=[-1], progress=False)
    with pytest.raises(ValueError, match="at least one seed"):
        run(_toy(), tmp_path, seeds=[], progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            run(_toy(), tmp_path, device="cuda", progress=False)
    with pytest.raises(ValueError, match="unknown device"):
        available_device("gpu7")
    assert CALLS == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_output_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ValueError, match="cannot be written"):
            writable_folder(locked / "out")
    finally:
        locked.chmod(0o700)


def test_figure_checks_find_the_usual_defects(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1, 2], [0.0, 1.0, 2.0], label="a")
    assert figure_problems(fig) == ["panel 1: no x label", "panel 1: no y label"]
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    assert any("non-positive values on the log y axis" in p for p in figure_problems(fig))
    ax.set_yscale("linear")
    ax.plot([0, 2], [-np.inf, 1.0], label="b")
    assert any("infinite values" in p for p in figure_problems(fig))
    plt.close(fig)

    fig, ax = plt.subplots()
    xs = np.linspace(0, 1, 50)
    ax.scatter(xs, xs, label="points")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.legend(loc="center")
    assert figure_problems(fig) == ["panel 1: the legend covers data; move it (loc=..., or "
                                    "outside the axes)"]
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0))
    assert figure_problems(fig) == []
    folder = OutputFolder(tmp_path, check_figures=True)
    ax.legend(loc="center")
    with pytest.raises(ValueError, match="not fit to publish"):
        folder.save_figure(fig, "bad")

    fig, ax = plt.subplots()
    ax.plot([1.0, 10.0], [1.0, 10.0])
    ax.set(xscale="log", yscale="log", xlabel="width", ylabel="loss")
    ax.axhline(2.0, color="k")  # its x runs over axes units 0 to 1: not a log-axis defect
    ax.axvline(3.0, color="k")
    assert figure_problems(fig) == []
    plt.close(fig)

    fig, axes = plt.subplots(2, 1, sharex=True)
    for a in axes:
        a.plot([1, 2], [1, 2])
        a.set_ylabel("value")
    axes[1].set_xlabel("step")
    assert figure_problems(fig) == []  # the shared x label on the bottom panel counts
    plt.close(fig)
