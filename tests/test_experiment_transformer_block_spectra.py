"""The transformer-block-spectra reproduction: its quick preset through the driver (output
contract, the measurements' invariants), the JS distance against closed forms, the block
partition, and the criteria on synthetic records."""

from __future__ import annotations

import itertools
import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from valleys.experiments import load_experiment, run
from valleys.experiments.transformer_block_spectra import measure as exp

QUICK = exp.PRESETS["quick"]
LOG2 = math.log(2.0)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("transformer-block-spectra")
    summary = run(exp.NAME, out, preset="quick", progress=False)
    records = {s: json.loads((out / "seeds" / f"seed-{s}.json").read_text())["records"]
               for s in summary["seeds"]}
    return out, summary, records


# -- the JS distance ---------------------------------------------------------------------------


def test_js_disjoint_is_log2_and_equal_is_zero():
    grid = np.linspace(0.0, 10.0, 1001)
    p = np.where(grid < 4.0, 1.0, 0.0)
    q = np.where(grid > 6.0, 3.0, 0.0)  # unnormalized on purpose: normalized inside
    assert exp.js_distance(p, q, grid) == pytest.approx(LOG2, abs=1e-12)
    gauss = np.exp(-0.5 * (grid - 5.0) ** 2)
    assert exp.js_distance(gauss, 2.5 * gauss, grid) == pytest.approx(0.0, abs=1e-14)
    assert exp.js_distance(p, p, grid) == 0.0


def test_js_half_overlap_closed_form():
    # U[0, 2] and U[1, 3]: m = 1/4 on the unshared halves, 1/2 on [1, 2] -> D = ½ log 2
    grid = np.linspace(-1.0, 4.0, 50_001)
    p = ((grid >= 0) & (grid <= 2)).astype(float)
    q = ((grid >= 1) & (grid <= 3)).astype(float)
    assert exp.js_distance(p, q, grid) == pytest.approx(0.5 * LOG2, abs=1e-3)
    assert exp.js_distance(p, q, grid) == exp.js_distance(q, p, grid)


def test_js_of_two_gaussians_is_bounded_and_grows_with_separation():
    grid = np.linspace(-20, 20, 8001)
    values = [exp.js_distance(np.exp(-0.5 * grid**2), np.exp(-0.5 * (grid - d) ** 2), grid)
              for d in (0.0, 0.5, 2.0, 12.0)]
    assert values[0] == pytest.approx(0.0, abs=1e-14)
    assert all(a < b for a, b in itertools.pairwise(values))
    assert values[-1] == pytest.approx(LOG2, abs=1e-6)


def test_js_refuses_an_empty_density():
    grid = np.linspace(0, 1, 11)
    with pytest.raises(ValueError):
        exp.js_distance(np.zeros(11), np.ones(11), grid)


def test_common_densities_share_grid_and_kernel():
    rng = np.random.default_rng(0)
    nodes = rng.normal(size=(3, 5))
    weights = np.full((3, 5), 0.2)
    quad = {"a": (nodes, weights), "b": (nodes.copy(), weights.copy()),
            "c": (10 * nodes, weights)}
    grid, dens, sigma = exp.common_densities(quad)
    span = max(n.max() for n, _ in quad.values()) - min(n.min() for n, _ in quad.values())
    assert sigma == pytest.approx(exp.KERNEL_FRACTION * span)
    for d in dens.values():
        assert np.trapezoid(d, grid) == pytest.approx(1.0)
    js = exp.pairwise_js(dens, grid)
    assert js[0, 1] == pytest.approx(0.0, abs=1e-12) and js[0, 2] > 0.1
    assert np.allclose(js, js.T) and np.all(np.diag(js) == 0)
    # rescaled: a block and 10x the block have the same shape
    grid_s, dens_s, _ = exp.common_densities(quad, scaled=True)
    assert exp.js_distance(dens_s["a"], dens_s["c"], grid_s) == pytest.approx(0.0, abs=1e-12)


# -- the blocks --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", exp.ARCHITECTURES)
def test_blocks_partition_the_parameters(kind):
    model = (exp.build_transformer(QUICK, 0, "cpu") if kind == "transformer"
             else exp.build_mlp(QUICK, 0, "cpu"))
    batch = (exp.modular_addition(QUICK.modulus, "cpu") if kind == "transformer"
             else exp.digits(QUICK, 0, "cpu"))
    fn = exp.answer_losses if kind == "transformer" else exp.classification_losses
    with warnings.catch_warnings():  # the fused-attention notice of the transformer
        warnings.simplefilter("ignore", UserWarning)
        obj = exp.Objective.from_function(model.eval(), fn, [batch])
    blocks = exp.transformer_blocks(QUICK) if kind == "transformer" else exp.mlp_blocks(QUICK)
    index = exp.block_indices(obj, blocks)
    allidx = torch.cat(list(index.values()))
    assert allidx.numel() == sum(obj.numels) == len(set(allidx.tolist()))
    if kind == "transformer":
        d = QUICK.d_model
        assert {"Q", "K", "V"} <= set(index)
        assert all(index[b].numel() == d * d + d for b in "QKV")
        assert len(index) == 3 + 8 * QUICK.n_layer


# -- the quick preset through the driver -------------------------------------------------------


def test_registered():
    experiment = load_experiment(exp.NAME)
    assert experiment.name == "transformer-block-spectra"
    assert all(p.threads == 1 for p in experiment.presets.values())
    assert all(len(p.sgd_lrs) == len(p.adam_lrs) for p in experiment.presets.values())
    assert not any(spec.deterministic for spec in exp.CLAIMS)


def test_summary_contract(quick):
    out, _, _ = quick
    on_disk = json.loads((out / "summary.json").read_text())
    assert len(on_disk["seeds"]) >= 2 and on_disk["provisional"] == []
    assert [c["id"] for c in on_disk["claims"]] == [spec.id for spec in exp.CLAIMS]
    for claim in on_disk["claims"]:
        assert set(claim) >= {"id", "claim", "criterion", "measured", "seeds", "verdict"}
        for value in claim["measured"].values():
            assert set(value) >= {"mean", "min", "max", "values"}
    assert set(on_disk["per_seed"]) == {str(s) for s in on_disk["seeds"]}


def test_measurements(quick):
    _, _, records = quick
    for r in records.values():
        for kind in exp.ARCHITECTURES:
            arch = r[kind]
            assert sum(b["num_params"] for b in arch["block_table"]) == arch["num_params"]
            js = np.asarray(arch["js"])
            assert np.allclose(js, js.T) and np.all(np.diag(js) == 0)
            assert np.all((js >= 0) & (js <= LOG2))
            assert arch["js_mean"] == pytest.approx(exp.off_diagonal(js).mean())
            for density in arch["densities"].values():
                assert np.trapezoid(density, arch["grid"]) == pytest.approx(1.0, rel=1e-6)
            for optimizer in exp.OPTIMIZERS:
                training = arch["training"][optimizer]
                lrs = QUICK.sgd_lrs if optimizer == "sgd" else QUICK.adam_lrs
                assert [run["lr"] for run in training["runs"]] == list(lrs)
                assert all(run["steps"][0] == 0 for run in training["runs"])
            # Adam trains both set-ups within the quick budget
            assert arch["training"]["adam"]["hit_step"] is not None


def test_files(quick):
    out, summary, _ = quick
    assert [f["stem"] for f in summary["figures"]] == ["block_densities", "js_heatmaps",
                                                       "training_curves", "lr_grids"]
    for figure in summary["figures"]:
        assert (out / f"{figure['stem']}.png").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "## Set-up" in report and "## Discussion" in report
    table = pd.read_csv(out / "results.csv")
    assert set(table["seed"]) == set(summary["seeds"])
    assert {"js_mean", "ritz_max", "final_loss", "hit_step"} <= set(table["quantity"])


# -- the criteria on synthetic records ---------------------------------------------------------


def _arch(js_mean, t_sgd, t_adam, l_sgd=0.1, l_adam=0.01):
    return {"js_mean": js_mean,
            "training": {"sgd": {"hit_step": t_sgd, "best_final_loss": l_sgd},
                         "adam": {"hit_step": t_adam, "best_final_loss": l_adam}}}


def _record(js_t=0.3, js_m=0.1, t=(100, 10), m=(20, 10)):
    return {"transformer": _arch(js_t, *t), "mlp": _arch(js_m, *m)}


def _verdicts(records):
    return {c.id: c.verdict for c in exp.claims(dict(enumerate(records)), QUICK)}


def test_criteria_agree():
    # R_T = 10, R_M = 2 -> 10 >= 2 x 2; R_M = 2 is on par
    assert set(_verdicts([_record(), _record()]).values()) == {"agrees"}


def test_criteria_disagree_and_partly():
    low = _record(js_t=0.15, js_m=0.1, t=(30, 10), m=(50, 10))  # R_T = 3 < 2 x 5; R_M = 5
    v = _verdicts([low, low])
    assert v == {"transformer-heterogeneous": "disagrees",
                 "gap-follows-heterogeneity": "disagrees", "mlp-on-par": "disagrees"}
    v = _verdicts([_record(), low])
    assert v["transformer-heterogeneous"] == "partly"
    assert v["gap-follows-heterogeneity"] == "partly"
    assert v["mlp-on-par"] == "disagrees"  # no partly: every seed must be on par


def test_criteria_censored():
    steps = QUICK.steps
    # SGD never reaches the target on the transformer: R_T > (steps+1)/10, enough vs R_M = 1
    sure = _record(t=(None, 10), m=(10, 10))
    assert _verdicts([sure, sure])["gap-follows-heterogeneity"] == "agrees"
    # a lower bound below 2 R_M: undecidable
    straddle = _record(t=(None, steps), m=(30, 10))
    assert exp.passes(exp.checks(straddle, QUICK))["gap-follows-heterogeneity"] is None
    # neither optimizer trains the transformer, or the MLP: not tested
    none_t = _record(t=(None, None))
    none_m = _record(m=(None, None))
    v = _verdicts([none_t, none_m])
    assert v["gap-follows-heterogeneity"] == "not tested"
    assert exp.passes(exp.checks(none_m, QUICK))["mlp-on-par"] is None
    # Adam never reaches the MLP's target but SGD does quickly: R_M < 1/2 -> not on par
    slow_adam = _record(m=(10, None))
    assert exp.passes(exp.checks(slow_adam, QUICK))["mlp-on-par"] is False
    assert exp.checks(slow_adam, QUICK)["gap_interval_mlp"] == (0.0, 10 / (steps + 1))
