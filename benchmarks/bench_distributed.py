"""Cost of sharding: communication per matvec and strong scaling of one sharpness computation.

A built-in problem (trained checkpoint, float32) is sharded over ``W`` gloo processes on this
machine's CPU cores, one torch thread each (``valleys.Objective(..., distributed=True)``). Per
configuration:

* **one Hessian-vector product**: median wall time of ``H.matvec(v)`` (compute on the shard
  plus one all-reduce of ``p`` floats), and of the all-reduce alone (the same buffer, including
  the 3 fingerprint scalars per vector that check the ranks agree), so the communication share
  of a product is measured, not estimated. Bytes: the buffer each rank contributes, and what a
  ring all-reduce sends per rank, ``2 (W−1)/W`` times that;
* **one sharpness computation**: ``valleys.eigsh(hessian(obj), k=1, tol=1e-4, seed=0)`` from a
  fresh operator (the first product builds the cached graph), median over repeats; the
  eigenvalue must agree across configurations.

Strong-scaling efficiency from 1 to ``W`` processes is ``T_1 / (W T_W)``. For comparison, the
same sharpness on one process with ``W`` threads (the alternative use of the same cores).

Run: ``python benchmarks/bench_distributed.py [--quick] [--problem digits-mse]``
(writes ``benchmarks/out/distributed.json``).
"""

from __future__ import annotations

import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"  # before NumPy/SciPy load OpenBLAS (see _common)

import json
import socket
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import _common as C
import torch
import torch.multiprocessing as mp

import valleys
from valleys import distributed as vdist
from valleys.problems import load_problem


def _worker(rank, world, threads, port, problem_name, repeats, folder):
    torch.set_num_threads(threads)
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
        timeout=timedelta(minutes=10),
    )
    problem = load_problem(problem_name)
    X, Y = problem.data.train
    obj = valleys.Objective(problem.model, problem.loss, vdist.shard(X, Y), distributed=True)
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(obj.dim, generator=gen, dtype=obj.dtype)
    H = valleys.hessian(obj)
    for _ in range(3):
        H.matvec(v)

    def timed(fn, count):
        times = []
        for _ in range(count):
            torch.distributed.barrier()
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return times

    s = (v @ obj._probe_vector).reshape(1)
    matvec = timed(lambda: H.matvec(v), 10 * repeats)
    reduce = timed(lambda: vdist.all_reduce_sum(v, probes=(s,)), 10 * repeats)
    sharp, cpu, values, counts = [], [], [], []
    for _ in range(repeats):
        torch.distributed.barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        result = valleys.eigsh(valleys.hessian(obj), k=1, tol=1e-4, seed=0)
        sharp.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        values.append(float(result.values[0]))
        counts.append(result.matvecs)
    if rank == 0:
        buffer = (obj.dim + 3) * torch.finfo(obj.dtype).bits // 8
        Path(folder, "result.json").write_text(json.dumps({
            "world_size": world, "threads": threads, "n": obj.n, "shard_sizes": obj.shard_sizes,
            "dim": obj.dim, "dtype": str(obj.dtype),
            "matvec_s": statistics.median(matvec), "allreduce_s": statistics.median(reduce),
            "allreduce_bytes_per_rank": buffer,
            "ring_bytes_sent_per_rank": 2 * (world - 1) / world * buffer,
            "sharpness_s": statistics.median(sharp), "sharpness_cpu_s": statistics.median(cpu),
            "sharpness_all_s": sharp, "sharpness": values[0], "sharpness_matvecs": counts[0],
        }))
    torch.distributed.destroy_process_group()


def run_config(world: int, threads: int, problem: str, repeats: int) -> dict:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        mp.start_processes(_worker, args=(world, threads, port, problem, repeats, folder),
                           nprocs=world, start_method="spawn")
        return json.loads(Path(folder, "result.json").read_text())


def main() -> None:
    args = C.parse_args(
        __doc__.splitlines()[0],
        lambda p: p.add_argument("--problem", default="digits-mse", choices=C.PROBLEM_NAMES),
    )
    threads_line = C.setup_threads()
    repeats = 2 if args.quick else 5
    load_problem(args.problem)  # train or load the checkpoint once, before the workers race
    configs = [(1, 1), (2, 1), (1, 2)]
    rows = [run_config(w, t, args.problem, repeats) for w, t in configs]
    one, two, threaded = rows
    efficiency = one["sharpness_s"] / (2 * two["sharpness_s"])
    agree = max(abs(r["sharpness"] - one["sharpness"]) / abs(one["sharpness"]) for r in rows)
    lines = [
        f"# Sharded curvature over gloo processes: {args.problem} (n={one['n']}, "
        f"p={one['dim']}, {one['dtype']})",
        "",
        "| processes × threads | shards | HVP (ms) | all-reduce (ms) | comm. share | bytes/rank "
        "(ring sends) | sharpness (s) | CPU (s, rank 0) | matvecs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['world_size']} × {r['threads']} | {r['shard_sizes']} | "
            f"{1e3 * r['matvec_s']:.2f} | {1e3 * r['allreduce_s']:.3f} | "
            f"{r['allreduce_s'] / r['matvec_s']:.1%} | {r['allreduce_bytes_per_rank']:,} "
            f"({r['ring_bytes_sent_per_rank']:,.0f}) | {r['sharpness_s']:.3f} | "
            f"{r['sharpness_cpu_s']:.3f} | {r['sharpness_matvecs']} |"
        )
    lines += [
        "",
        f"Strong-scaling efficiency of one sharpness computation, 1 → 2 processes: "
        f"{efficiency:.0%} (speed-up {one['sharpness_s'] / two['sharpness_s']:.2f}×; "
        f"1 process × 2 threads: {one['sharpness_s'] / threaded['sharpness_s']:.2f}×). "
        f"Sharpness agrees to {agree:.1e} relative across configurations.",
        "",
        threads_line + "; workers set their own thread counts as listed.",
        C.load_line(),
    ]
    report = "\n".join(lines)
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"rows": rows, "efficiency_1_to_2": efficiency, "sharpness_agreement": agree,
               "report": report, "environment": C.environment()}
    (args.out / "distributed.json").write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    sys.exit(main())
