"""Cost of sharpness tracking on the edge-of-stability reproduction, and warm-start savings.

For each GD learning rate of the reproduction's preset (``2/η = factor · a₀``), the same GD run
(same iterates: training does not depend on the callbacks) is made three times: untracked,
with the sharpness every 10 steps warm-started from the previous top 3 Ritz vectors
(:class:`valleys.train.SharpnessTracker`'s default block warm start, ``m = 2k + 1``), and with
cold (random-start Lanczos) at the same tolerance. Reported: CPU and wall time of the
training loop and the overhead
``tracked/untracked − 1``, Hessian-vector products of both trackers (total and per
evaluation), and the same split into the progressive-sharpening phase (before the sharpness
first reaches 0.95·2/η) and the edge-of-stability phase (from then on), where the top
eigenvalues cluster near 2/η and Lanczos needs more products whatever its start.

Single-vector warm start: the same run tracked a fourth time with
``SharpnessTracker(warm_block=1)`` (only the previous top eigenvector, perturbed, starts the
basis), same tolerance; and, for the top 3 eigenvalues, cold vs ``warm_block=3`` vs the default
``warm_block=7`` on the first factor's run.

Run: ``python benchmarks/bench_sharpness_tracking.py [--quick]`` (``--quick``: the quick
preset; default: the quick preset's problem with 2000 steps). Writes
``benchmarks/out/sharpness_tracking.json``.
"""

from __future__ import annotations

import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"  # before NumPy/SciPy load OpenBLAS (see _common)

import dataclasses
import time

import _common as C

from valleys import eigsh, hessian
from valleys.experiments.common import torch_threads
from valleys.experiments.edge_of_stability import measure as eos
from valleys.train import SharpnessTracker, train

SINGLE = 1  # the single-vector warm start, compared with the default block of 2k + 1 = 3
SMALL_TOP3 = 3  # the smallest block for k = 3, compared with the default 7


def _train(obj, lr: float, preset, callbacks):
    """The reproduction's GD run at ``lr``: ``preset.steps`` steps, seed 0 (same iterates
    whatever the callbacks)."""
    return train(obj, lr=lr, steps=preset.steps, record_every=preset.record_every, seed=0,
                 callbacks=callbacks)


def _tracker(obj, preset, **kwargs) -> SharpnessTracker:
    return SharpnessTracker(obj, every=preset.sharpness_every, tol=preset.tol, seed=0, **kwargs)


def _tracked(preset, lr: float, **kwargs) -> SharpnessTracker:
    """Train the reproduction's GD run at ``lr`` with one tracker; return the tracker."""
    with torch_threads(preset.threads):
        obj = eos.objective(preset, 0)
        tracker = _tracker(obj, preset, **kwargs)
        _train(obj, lr, preset, [tracker])
    return tracker


def _tracking_cost(preset, factor: float) -> dict:
    """The GD run at ``2/η = factor · a₀`` (the reproduction's plan, seed 0) untracked, tracked
    with the default warm start and with cold starts: times, HVPs and both trackers' histories.

    (``eos.tracking_cost`` measures the same three runs but keeps neither the wall times nor
    the per-evaluation histories that the phase split needs.)
    """
    with torch_threads(preset.threads):
        obj = eos.objective(preset, 0)
        a0 = float(eigsh(hessian(obj), k=1, tol=1e-6, seed=0).values[0])
        lr = next(run["lr"] for run in eos.plan(preset, a0)
                  if run["optimizer"] == "gd" and run["factor"] == factor)
        cpu = time.process_time()
        plain = _train(obj, lr, preset, []).wall_time
        plain_cpu = time.process_time() - cpu
        runs = {}
        for kind, warm in (("warm", True), ("cold", False)):
            tracker = _tracker(obj, preset, warm_start=warm)
            cpu = time.process_time()
            result = _train(obj, lr, preset, [tracker])
            runs[kind] = (tracker, result.wall_time, time.process_time() - cpu)
    (warm, warm_s, warm_cpu), (cold, cold_s, cold_cpu) = runs["warm"], runs["cold"]
    evaluations = len(warm.history)
    return {
        "lr": lr, "initial_sharpness": a0, "steps": preset.steps,
        "sharpness_every": preset.sharpness_every, "tol": preset.tol,
        "num_parameters": obj.dim, "n": obj.n, "evaluations": evaluations,
        "untracked_s": plain, "tracked_warm_s": warm_s, "tracked_cold_s": cold_s,
        "untracked_cpu_s": plain_cpu, "tracked_warm_cpu_s": warm_cpu,
        "tracked_cold_cpu_s": cold_cpu,
        "overhead_warm_cpu": warm_cpu / plain_cpu - 1,
        "overhead_cold_cpu": cold_cpu / plain_cpu - 1,
        "overhead_warm": warm_s / plain - 1, "overhead_cold": cold_s / plain - 1,
        "matvecs_warm": warm.total_matvecs, "matvecs_cold": cold.total_matvecs,
        "matvecs_per_evaluation_warm": warm.total_matvecs / evaluations,
        "matvecs_per_evaluation_cold": cold.total_matvecs / evaluations,
        "matvec_saving": cold.total_matvecs / warm.total_matvecs,
        "warm_history": warm.history, "cold_history": cold.history,
    }


def _per_eval(tracker: SharpnessTracker) -> float:
    return tracker.total_matvecs / len(tracker.history)


def _phases(result: dict, threshold: float) -> dict:
    """Matvecs per evaluation before and after the sharpness first reaches 0.95·threshold."""
    warm, cold = result["warm_history"], result["cold_history"]
    reach = next((i for i, h in enumerate(cold) if h["value"] >= 0.95 * threshold), len(cold))
    out = {"reached_step": cold[reach]["step"] if reach < len(cold) else None}
    for phase, sl in (("sharpening", slice(0, reach)), ("eos", slice(reach, None))):
        w = [h["matvecs"] for h in warm[sl]]
        c = [h["matvecs"] for h in cold[sl]]
        out[phase] = {
            "evaluations": len(w),
            "warm_per_evaluation": sum(w) / len(w) if w else float("nan"),
            "cold_per_evaluation": sum(c) / len(c) if c else float("nan"),
            "saving": sum(c) / sum(w) if w else float("nan"),
        }
    return out


def main() -> None:
    args = C.parse_args(__doc__.splitlines()[0])
    preset = eos.PRESETS["quick"]
    if not args.quick:
        preset = dataclasses.replace(preset, steps=2000)
    load = C.MachineLoad()
    rows, results = [], []
    for factor in preset.gd_factors:
        result = _tracking_cost(preset, factor)
        threshold = 2.0 / result["lr"]
        result["phases"] = _phases(result, threshold)
        result["factor"] = factor
        results.append(result)  # the single-vector numbers below land in the JSON too
        single = _tracked(preset, result["lr"], warm_block=SINGLE)
        result["single_history"] = single.history
        result["matvecs_per_evaluation_single"] = _per_eval(single)
        result["single_saving"] = result["matvecs_cold"] / single.total_matvecs
        result["phases_single"] = _phases({"warm_history": single.history,
                                           "cold_history": result["cold_history"]}, threshold)
        ph = result["phases"]
        rows.append([factor, result["lr"], result["steps"], result["evaluations"],
                     result["untracked_cpu_s"], result["tracked_warm_cpu_s"],
                     result["overhead_warm_cpu"], result["overhead_cold_cpu"],
                     result["overhead_warm"], result["matvecs_per_evaluation_warm"],
                     result["matvecs_per_evaluation_cold"], result["matvec_saving"],
                     ph["sharpening"]["saving"], ph["eos"]["saving"],
                     result["matvecs_per_evaluation_single"], result["single_saving"],
                     result["phases_single"]["eos"]["saving"]])
    headers = ["2/η ÷ a₀", "η", "steps", "evals", "untracked CPU s", "tracked CPU s",
               "overhead warm (CPU)", "overhead cold (CPU)", "overhead warm (wall)",
               "HVP/eval warm", "HVP/eval cold", "saving", "saving sharpening",
               "saving EoS", f"HVP/eval single m={SINGLE}", "saving single",
               "saving single EoS"]
    top3 = {name: _tracked(preset, results[0]["lr"], k=3, **kw) for name, kw in (
        ("cold", {"warm_start": False}), ("small", {"warm_block": SMALL_TOP3}), ("warm", {}))}
    top3_row = [results[0]["factor"], *(_per_eval(t) for t in top3.values()),
                top3["cold"].total_matvecs / top3["small"].total_matvecs,
                top3["cold"].total_matvecs / top3["warm"].total_matvecs]
    lines = [
        "# Sharpness tracking every 10 steps on the edge-of-stability reproduction",
        "",
        f"Problem: digits n = {preset.n}, tanh MLP {preset.widths} "
        f"({results[0]['num_parameters']} parameters), float32, Lanczos tol {preset.tol}, "
        f"torch threads {preset.threads}.",
        "",
        C.markdown_table(headers, rows),
        "",
        "saving = cold-start HVPs / warm-start HVPs on the same iterates and tolerance; "
        "overhead = tracked time / untracked − 1 (CPU time of this process; wall time beside).",
        "",
        "Top 3 eigenvalues, same run as the first row:",
        "",
        C.markdown_table(["2/η ÷ a₀", "HVP/eval cold", f"HVP/eval warm m={SMALL_TOP3}",
                          "HVP/eval warm m=7 (default)", f"saving m={SMALL_TOP3}",
                          "saving default"],
                         [top3_row]),
        C.load_line(),
    ]
    print("\n".join(lines))
    path = C.write_json(args.out, "sharpness_tracking", {
        "preset": dataclasses.asdict(preset), "results": results,
        "top3": {name: t.history for name, t in top3.items()},
        "others_share": load.others_share(), "report": "\n".join(lines),
    })
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
