"""Peak memory of curvature solvers on a large data set, with and without chunking.

``mnist1d-mlp`` at its checkpoint evaluated on ``num_samples=50000`` (40,000 training samples,
289k parameters, float32). Each measurement runs in a fresh child process, so its peak resident
set size (``VmHWM``) belongs to that computation alone:

* ``valleys.sharpness(obj)`` (Lanczos, ``tol=1e-4``);
* ``valleys.trace(valleys.hessian(obj), num_matvecs=30)`` (Hutch++, block products);

each with ``chunk_size`` 4096 (ten chunks; the operator recomputes each chunk's graph per
product) and ``None`` (one chunk; the first-order graph of all 40,000 samples is cached).
Reported: the child's peak RSS, its baseline (peak and current RSS after imports and data
loading), the wall time of the computation and its Hessian-vector products.

Run: ``python benchmarks/bench_memory.py [--quick]`` (writes ``benchmarks/out/memory.json``;
``--quick`` changes nothing here: every measurement is needed).
"""

from __future__ import annotations

import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"  # before NumPy/SciPy load OpenBLAS (see _common)

import importlib
import json
import resource
import subprocess
import sys
import time

import _common as C

PROBLEM = "mnist1d-mlp"
NUM_SAMPLES = 50_000
TRACE_MATVECS = 30
CHUNKS = (4096, None)
TASKS = ("sharpness", "trace")
TARGET_MB = 2048.0  # with chunking


# -- child: one measurement -----------------------------------------------------------------
def peak_rss_mb() -> float:
    """This process's peak resident set size so far: ``VmHWM`` on Linux, because getrusage's
    ``ru_maxrss`` carries the parent's high-water mark across (v)fork and exec; ``ru_maxrss``
    elsewhere."""
    try:
        with open("/proc/self/status") as handle:
            return next(int(line.split()[1]) / 1024 for line in handle
                        if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def measure(task: str, chunk: int | None) -> dict:
    """Run one task in this (fresh) process and return its numbers."""
    C.setup_threads()
    import valleys
    from valleys.problems import load_problem

    problem = load_problem(PROBLEM, num_samples=NUM_SAMPLES)
    obj = problem.objective(chunk_size=chunk)
    baseline = {"baseline_peak_mb": peak_rss_mb(), "baseline_rss_mb": current_rss_mb()}
    if task == "sharpness":
        created = []
        module = importlib.import_module("valleys._sharpness")
        original = module.hessian

        def recording(*args, **kwargs):
            created.append(original(*args, **kwargs))
            return created[-1]

        module.hessian = recording
        start = time.perf_counter()
        value = valleys.sharpness(obj)
        seconds = time.perf_counter() - start
        matvecs = created[-1].num_matvecs
    else:
        H = valleys.hessian(obj)
        start = time.perf_counter()
        result = valleys.trace(H, num_matvecs=TRACE_MATVECS)
        seconds = time.perf_counter() - start
        value, matvecs = result.value, H.num_matvecs
    return {"task": task, "chunk_size": chunk, "n": obj.n, "dim": obj.dim,
            "num_chunks": obj.num_chunks, "value": value, "time_s": seconds,
            "matvecs": matvecs, "peak_mb": peak_rss_mb(), "end_rss_mb": current_rss_mb(),
            **baseline}


# -- parent: one child per measurement ------------------------------------------------------
def child_command(task: str, chunk: int | None) -> list[str]:
    return [sys.executable, __file__, "--child", task, str(chunk)]


def run_child(task: str, chunk: int | None) -> dict:
    """Run :func:`measure` in a fresh interpreter; return its record (or the failure)."""
    command = child_command(task, chunk)
    print(f"  {' '.join(command[1:])}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    record = {"command": " ".join(command), "process_s": time.perf_counter() - start}
    if done.returncode != 0:
        record.update({"task": task, "chunk_size": chunk,
                       "error": f"exit {done.returncode}: {done.stderr.strip()[-500:]}"})
        return record
    record.update(json.loads(done.stdout.strip().splitlines()[-1]))
    return record


def report(records: list[dict], threads: str) -> tuple[str, list[dict]]:
    rows, summary = [], []
    for r in records:
        chunk = "None (one chunk)" if r["chunk_size"] is None else str(r["chunk_size"])
        if "error" in r:
            rows.append([r["task"], chunk, None, None, None, None, None, None,
                         f"failed: {r['error'][-120:]}"])
            continue
        met = r["peak_mb"] <= TARGET_MB if r["chunk_size"] is not None else None
        rows.append([r["task"], chunk, r["peak_mb"], r["baseline_peak_mb"],
                     r["peak_mb"] - r["baseline_peak_mb"], r["time_s"], r["matvecs"],
                     r["value"], "" if met is None else f"≤ {TARGET_MB / 1024:g} GB: "
                     f"{'met' if met else 'missed'}"])
        summary.append({"task": r["task"], "chunk_size": r["chunk_size"],
                        "peak_mb": r["peak_mb"], "time_s": r["time_s"],
                        "matvecs": r["matvecs"], "target_mb": TARGET_MB if met is not None
                        else None, "met": met})
    headers = ["task", "chunk_size", "peak RSS (MB)", "baseline peak (MB)",
               "increase (MB)", "time (s)", "HVPs", "value", "target"]
    n = next((r["n"] for r in records if "n" in r), "?")
    dim = next((r["dim"] for r in records if "dim" in r), "?")
    lines = [f"## Peak memory (bench_memory.py), {PROBLEM} with num_samples={NUM_SAMPLES} "
             f"({n} training samples, {dim} parameters)", "", threads,
             "Each row is a fresh child process: peak RSS is `VmHWM` at its end, the "
             "baseline is `VmHWM` after imports, data generation and model loading (data "
             f"generation itself has a transient peak). trace = Hutch++ with {TRACE_MATVECS} "
             "matvecs; sharpness = Lanczos to tol 1e-4. Times are single runs.", "",
             C.markdown_table(headers, rows), "", C.load_line()]
    return "\n".join(lines), summary


def main() -> None:
    def extra(parser):
        parser.add_argument("--child", nargs=2, metavar=("TASK", "CHUNK"),
                            help="internal: run one measurement and print it as JSON")

    args = C.parse_args(__doc__.splitlines()[0], extra)
    if args.child:
        task, chunk = args.child
        print(json.dumps(measure(task, None if chunk == "None" else int(chunk))))
        return
    threads = C.setup_threads()
    print(f"[{PROBLEM} num_samples={NUM_SAMPLES}] one child per measurement", file=sys.stderr)
    records = [run_child(task, chunk) for task in TASKS for chunk in CHUNKS]
    text, summary = report(records, threads)
    print(text)
    path = C.write_json(args.out, "memory", {"quick": args.quick, "problem": PROBLEM,
                                             "num_samples": NUM_SAMPLES, "summary": summary,
                                             "records": records, "markdown": text})
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
