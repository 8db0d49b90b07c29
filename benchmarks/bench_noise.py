"""Gradient-noise statistics and Lévy SDE simulation: vectorized vs a Python loop, throughput.

1. Mini-batch gradients at a fixed θ (digits-mlp checkpoint, 1,438 samples, 26k parameters,
   float32): ``valleys.noise.minibatch_gradients`` with ``method="linear-layers"`` (the
   default for this MLP: one batched product per layer from recorded layer factors) and
   ``method="per-sample"`` (per-sample gradients by ``vmap`` in chunks, combined into all
   batches by one sparse product), against the reference Python loop
   ``minibatch_gradients_loop`` (one forward/backward per batch), for several numbers of
   batches and batch sizes. Target: at least 10x faster than the loop. The paths are checked
   to agree.
2. The tail-index estimator (block sums + bootstrap) on 10^5 and 10^6 scalars.
3. SDE throughput (trajectories × steps per second) of ``valleys.sde.simulate`` for the
   SGD-like and Adam-like dynamics, α = 1.5, in a 1-D double well and a 10-D valley, for
   several numbers of paths; one thread and two threads.

Run: ``python benchmarks/bench_noise.py [--quick]`` (writes ``benchmarks/out/noise.json``).
"""

from __future__ import annotations

import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"  # before NumPy/SciPy load OpenBLAS (see _common)

import sys

import _common as C
import torch

from valleys.noise import batch_indices, minibatch_gradients, minibatch_gradients_loop, tail_index
from valleys.problems import load_problem
from valleys.sde import AdamLike, DoubleWell, simulate

TARGET_SPEEDUP = 10.0


def bench_batches(num_batches: int, batch_size: int, repeats: int) -> dict:
    problem = load_problem("digits-mlp")
    obj = problem.objective()
    idx = batch_indices(obj.n, batch_size, num_batches, seed=0)
    out: dict = {}

    def keep(name, fn):
        return C.Contender(name, lambda: out.__setitem__(name, fn()) or {})

    contenders = [
        keep("loop", lambda: minibatch_gradients_loop(obj, idx)),
        keep("linear-layers", lambda: minibatch_gradients(obj, idx, method="linear-layers")),
        keep("per-sample", lambda: minibatch_gradients(obj, idx, method="per-sample")),
    ]
    C.run_interleaved(contenders, repeats=repeats, budget_s=60.0)
    loop, factored, per_sample = contenders
    row = {"problem": "digits-mlp", "n": obj.n, "dim": obj.dim, "num_batches": num_batches,
           "batch_size": batch_size, "loop_s": loop.median, "loop_cpu_s": loop.cpu_median}
    for name, c in (("linear_layers", factored), ("per_sample", per_sample)):
        key = name.replace("_", "-")
        row.update({
            f"{name}_s": c.median, f"{name}_cpu_s": c.cpu_median,
            f"{name}_speedup": C.ratio(loop.median, c.median),
            f"{name}_speedup_cpu": C.ratio(loop.cpu_median, c.cpu_median),
            f"{name}_relative_difference": float((out[key] - out["loop"]).norm()
                                                 / out["loop"].norm()),
        })
    return row


def bench_tail(sizes: list[int], repeats: int) -> list[dict]:
    from valleys.noise import stable_rvs

    rows = []
    for n in sizes:
        x = stable_rvs(1.5, n, generator=torch.Generator().manual_seed(0))
        for boot in (0, 100):
            seconds = C.median_time(lambda x=x, boot=boot: tail_index(x, num_bootstrap=boot),
                                    repeats=repeats)
            rows.append({"samples": n, "bootstrap": boot, "seconds": seconds})
    return rows


def bench_sde(paths: list[int], steps: int, threads: list[int]) -> list[dict]:
    rows = []
    cases = {
        "1-D double well": (DoubleWell(), None),
        "10-D valley": (DoubleWell(stiffness=tuple(range(1, 10))), None),
        "10-D valley, Adam-like": (DoubleWell(stiffness=tuple(range(1, 10))), AdamLike()),
    }
    previous = torch.get_num_threads()
    for t in threads:
        torch.set_num_threads(t)
        for name, (well, adam) in cases.items():
            for M in paths:
                start = well.left_minimum().expand(M, -1).clone()

                def go(start=start, well=well, adam=adam):
                    simulate(well.grad, start, steps=steps, dt=0.01, alpha=1.5, epsilon=0.2,
                             adam=adam, generator=torch.Generator().manual_seed(0))

                seconds = C.median_time(go, repeats=3)
                rows.append({"case": name, "threads": t, "paths": M, "steps": steps,
                             "dim": well.dim, "seconds": seconds,
                             "path_steps_per_s": M * steps / seconds})
    torch.set_num_threads(previous)
    return rows


def main() -> None:
    args = C.parse_args(__doc__.splitlines()[0])
    threads = C.setup_threads()
    repeats = 3 if args.quick else 7
    settings = [(500, 32)] if args.quick else [(200, 32), (1000, 32), (1000, 8), (250, 128)]
    batch_rows = [bench_batches(nb, b, 2 if args.quick else repeats) for nb, b in settings]
    tails = bench_tail([10**5] if args.quick else [10**5, 10**6], repeats=3)
    sde = bench_sde([100, 1000, 10_000] if args.quick else [100, 1000, 10_000, 50_000],
                    200, [1] if args.quick else [1, 2])
    speedups = [r["linear_layers_speedup"] for r in batch_rows]
    met = all(x is not None and x >= TARGET_SPEEDUP for x in speedups)
    first = batch_rows[0]
    lines = [
        "## Gradient noise and Lévy SDEs (bench_noise.py)", "", threads, "",
        f"### Mini-batch gradients ({first['problem']}, n = {first['n']}, p = {first['dim']}, "
        "float32)", "",
        "Both vectorized paths pay one pass over the data. The factored path (linear-layers) "
        "then needs one batched product per layer; the per-sample path forms every per-sample "
        "gradient and then needs a sparse product. The loop pays one forward/backward per "
        "batch. Speed-up = loop time ÷ path time.", "",
        C.markdown_table(
            ["batches", "B", "loop (s)", "linear-layers (s)", "speed-up", "speed-up (CPU)",
             "per-sample (s)", "speed-up", "target", "rel. difference (linear-layers)"],
            [[r["num_batches"], r["batch_size"], r["loop_s"], r["linear_layers_s"],
              r["linear_layers_speedup"], r["linear_layers_speedup_cpu"], r["per_sample_s"],
              r["per_sample_speedup"], f">= {TARGET_SPEEDUP:g}x",
              r["linear_layers_relative_difference"]] for r in batch_rows]),
        f"Target met in every row (linear-layers): {'yes' if met else 'no'}.",
        "", "### Tail index (block sums, K1 = ⌊√N⌋)", "",
        C.markdown_table(["samples", "bootstrap resamples", "seconds"],
                         [[r["samples"], r["bootstrap"], r["seconds"]] for r in tails]),
        "", "### SDE throughput (α = 1.5, Euler steps, noise drawn in blocks)", "",
        C.markdown_table(["case", "threads", "paths", "dim", "steps", "seconds",
                          "paths × steps / s"],
                         [[r["case"], r["threads"], r["paths"], r["dim"], r["steps"],
                           r["seconds"], r["path_steps_per_s"]] for r in sde]),
        "", C.load_line(),
    ]
    report = "\n".join(lines)
    print(report)
    summary = {"speedups": speedups, "target": TARGET_SPEEDUP, "met": met}
    path = C.write_json(args.out, "noise", {"quick": args.quick, "summary": summary,
                                            "batches": batch_rows,
                                            "tail_index": tails, "sde": sde, "markdown": report})
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
