"""Cost of sharpness tracking on the edge-of-stability reproduction, and warm-start savings.

For each GD learning rate of the reproduction's preset (``2/η = factor · a₀``), the same GD run
(same iterates: training does not depend on the callbacks) is made three times: untracked,
with the sharpness every 10 steps by Lanczos warm-started from the previous top eigenvector
(:class:`valleys.train.SharpnessTracker`, the default), and with cold (random) starts at the same
tolerance. Reported: CPU and wall time of the training loop and the overhead
``tracked/untracked − 1``, Hessian-vector products of both trackers (total and per
evaluation), and the same split into the progressive-sharpening phase (before the sharpness
first reaches 0.95·2/η) and the edge-of-stability phase (from then on), where the top
eigenvalues cluster near 2/η and Lanczos needs more products whatever its start.

Block warm start: the same run tracked a fourth time with ``SharpnessTracker(warm_block=3)``
(the previous top 3 Ritz vectors seed a Rayleigh-Ritz basis grown by residuals,
:func:`valleys.linalg.lanczos.block_eigsh`), same tolerance; and, for the top 3 eigenvalues,
cold vs single-vector warm vs ``warm_block=6`` trackers on the first factor's run.

Run: ``python benchmarks/bench_sharpness_tracking.py [--quick]`` (``--quick``: the quick
preset; default: the quick preset's problem with 2000 steps). Writes
``benchmarks/out/sharpness_tracking.json``.
"""

from __future__ import annotations

import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"  # before NumPy/SciPy load OpenBLAS (see _common)

import dataclasses

import _common as C

from valleys.experiments import edge_of_stability as eos
from valleys.experiments.common import torch_threads
from valleys.train import SharpnessTracker

BLOCK = 3  # previous Ritz vectors seeding a k = 1 evaluation
BLOCK_TOP3 = 6  # ... and a k = 3 evaluation


def _tracked(preset, lr: float, **kwargs) -> SharpnessTracker:
    """Train the reproduction's GD run at ``lr`` with one tracker; return the tracker."""
    with torch_threads(preset.threads):
        obj = eos._objective(preset, 0)
        tracker = SharpnessTracker(obj, every=preset.sharpness_every, tol=preset.tol, seed=0,
                                   **kwargs)
        eos._train(obj, {"optimizer": "gd", "lr": lr}, preset, 0, [tracker])
    return tracker


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
        result = eos.measure_tracking_cost(preset, seed=0, factor=factor, cold=True)
        threshold = 2.0 / result["lr"]
        result["phases"] = _phases(result, threshold)
        results.append({"factor": factor, **result})
        block = _tracked(preset, result["lr"], warm_block=BLOCK)
        result["block_history"] = block.history
        result["matvecs_per_evaluation_block"] = _per_eval(block)
        result["block_saving"] = result["matvecs_cold"] / block.total_matvecs
        result["phases_block"] = _phases({"warm_history": block.history,
                                          "cold_history": result["cold_history"]}, threshold)
        ph = result["phases"]
        rows.append([factor, result["lr"], result["steps"], result["evaluations"],
                     result["untracked_cpu_s"], result["tracked_warm_cpu_s"],
                     result["overhead_warm_cpu"], result["overhead_cold_cpu"],
                     result["overhead_warm"], result["matvecs_per_evaluation_warm"],
                     result["matvecs_per_evaluation_cold"], result["matvec_saving"],
                     ph["sharpening"]["saving"], ph["eos"]["saving"],
                     result["matvecs_per_evaluation_block"], result["block_saving"],
                     result["phases_block"]["eos"]["saving"]])
    headers = ["2/η ÷ a₀", "η", "steps", "evals", "untracked CPU s", "tracked CPU s",
               "overhead warm (CPU)", "overhead cold (CPU)", "overhead warm (wall)",
               "HVP/eval warm", "HVP/eval cold", "saving", "saving sharpening",
               "saving EoS", f"HVP/eval block m={BLOCK}", "saving block",
               "saving block EoS"]
    top3 = {name: _tracked(preset, results[0]["lr"], k=3, **kw) for name, kw in (
        ("cold", {"warm_start": False}), ("warm", {}), ("block", {"warm_block": BLOCK_TOP3}))}
    top3_row = [results[0]["factor"], *(_per_eval(t) for t in top3.values()),
                top3["cold"].total_matvecs / top3["warm"].total_matvecs,
                top3["cold"].total_matvecs / top3["block"].total_matvecs]
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
        C.markdown_table(["2/η ÷ a₀", "HVP/eval cold", "HVP/eval warm",
                          f"HVP/eval block m={BLOCK_TOP3}", "saving warm", "saving block"],
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
