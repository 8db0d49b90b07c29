"""Run every benchmark (each in its own process) and write a combined markdown summary.

Run: ``python benchmarks/run_all.py [--quick] [--only hvp_cost eigenvalues ...]``

Each script runs as ``<python> benchmarks/bench_<name>.py [--quick] --out <out>`` with
``OPENBLAS_NUM_THREADS=1`` in its environment; its progress goes to this terminal's stderr, its
markdown report to stdout. Afterwards the JSON results are collected into
``<out>/summary.md``: the headline numbers against their targets, the exact command lines, and
every script's full report.
"""

from __future__ import annotations

import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"  # inherited by every benchmark process

import argparse
import datetime
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
# Cheapest first, so a broken setup shows up early.
BENCHMARKS = (
    "hvp_cost", "eigenvalues", "nonuniformity", "memory", "sharpness_tracking", "meanfield",
    "distributed", "games", "noise", "scaling",
)


def run_one(name: str, quick: bool, out: Path) -> dict:
    """Run ``bench_<name>.py`` in a subprocess; return its command, exit code and duration."""
    command = [sys.executable, str(BENCH_DIR / f"bench_{name}.py"), "--out", str(out)]
    if quick:
        command.insert(2, "--quick")
    env_prefix = (f"OPENBLAS_NUM_THREADS=1 VALLEYS_CACHE_DIR="
                  f"{shlex.quote(os.environ.get('VALLEYS_CACHE_DIR', '~/.cache/valleys'))}")
    shown = f"{env_prefix} {' '.join(shlex.quote(c) for c in command)}"
    print(f"\n=== {shown}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    seconds = time.perf_counter() - start
    print(done.stdout, flush=True)
    return {"name": name, "command": shown, "returncode": done.returncode, "seconds": seconds,
            "report": done.stdout.strip()}


def load(out: Path, name: str) -> dict | None:
    path = out / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "met" if x else "MISSED"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def headline_rows(results: dict[str, dict | None]) -> list[list[str]]:
    """One row per target: what was measured, its value, the target, met or not."""
    rows = []
    eig = results.get("eigenvalues")
    if eig:
        for r in eig["summary"]:
            rows.append([f"eigenvalues {r['problem']} {r['task']}: PyHessian time / valleys time",
                         fmt(r["pyhessian_over_valleys_time"]),
                         f"≥ {r['target_speedup']:g}", fmt(r["speedup_met"])])
            rows.append([f"eigenvalues {r['problem']} {r['task']}: HVPs valleys vs ARPACK",
                         f"{r['valleys_matvecs']} vs {r['arpack_matvecs']}",
                         "valleys ≤ ARPACK", fmt(r["matvecs_met"])])
    hvp = results.get("hvp_cost")
    if hvp:
        for r in hvp["summary"]:
            rows.append([f"HVP cost {r['problem']}: default HVP / gradient",
                         fmt(r["default_hvp_in_gradients"]), f"≤ {r['target']:g}",
                         fmt(r["met"])])
    nonu = results.get("nonuniformity")
    if nonu:
        for r in nonu["summary"]:
            target = "(information)" if r["target"] is None else f"≥ {r['target']:g}"
            rows.append([f"non-uniformity Σv: loop time / {r['name']}", fmt(r["speedup"]),
                         target, fmt(r["met"])])
    tracking = results.get("sharpness_tracking")
    if tracking:
        for r in tracking["results"]:
            rows.append([f"sharpness tracking 2/η = {r['factor']:g}·a₀, {r['steps']} steps: "
                         "cold HVPs / warm HVPs", fmt(r["matvec_saving"]), "≥ 2",
                         fmt(r["matvec_saving"] >= 2)])
    noise = results.get("noise")
    if noise:
        for r in noise["batches"]:
            speedup = r["linear_layers_speedup"]
            rows.append([f"mini-batch gradients, {r['num_batches']} batches of "
                         f"{r['batch_size']}: loop time / vectorized", fmt(speedup), "≥ 10",
                         fmt(speedup is not None and speedup >= 10)])
    meanfield = results.get("meanfield")
    if meanfield:
        for r in meanfield["rows"]:
            if r["contender"] == "valleys step (default chunks)":
                share = r["fraction_of_square_matmul"]
                rows.append([f"mean-field flow step {r['dtype']}: share of square-matmul "
                             "throughput", fmt(share), "≥ 0.3", fmt(share >= 0.3)])
    mem = results.get("memory")
    if mem:
        for r in mem["summary"]:
            if r["target_mb"] is not None:
                rows.append([f"memory {r['task']} chunk_size={r['chunk_size']}: peak RSS (MB)",
                             fmt(r["peak_mb"], 4), f"≤ {r['target_mb']:g}", fmt(r["met"])])
    return rows


def summary_markdown(runs: list[dict], results: dict[str, dict | None], quick: bool) -> str:
    lines = ["# valleys benchmarks: summary", "",
             f"{datetime.datetime.now().isoformat(timespec='seconds')} on {platform.node()} "
             f"({os.cpu_count()} CPUs, Python {platform.python_version()})"
             f"{', --quick' if quick else ''}. Every script sets torch.set_num_threads(2) and "
             "OPENBLAS_NUM_THREADS=1 (before importing NumPy/SciPy) so that ARPACK does not "
             "fight torch for the cores.", "", "## Targets", "",
             "| measurement | value | target | status |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in headline_rows(results)]
    lines += ["", "## Commands", "", "```",
              " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])]
    lines += [f"{r['command']}   # exit {r['returncode']}, {r['seconds']:.0f} s" for r in runs]
    lines += ["```", ""]
    for r in runs:
        result = results.get(r["name"])
        if result is None:
            lines += [f"## {r['name']}: FAILED (exit {r['returncode']}, no JSON written)", ""]
            continue
        env = result.get("environment", {})
        lines += [r["report"], "",
                  f"_versions: torch {env.get('torch')}, valleys {env.get('valleys')}, "
                  f"PyHessian {env.get('pyhessian')}, curvlinops {env.get('curvlinops')}, "
                  f"scipy {env.get('scipy')}; exit {r['returncode']}, {r['seconds']:.0f} s_", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every script")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "out")
    args = parser.parse_args()
    names = args.only or BENCHMARKS
    runs = [run_one(name, args.quick, args.out) for name in names]
    results = {r["name"]: load(args.out, r["name"]) if r["returncode"] == 0 else None
               for r in runs}
    text = summary_markdown(runs, results, args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.md").write_text(text + "\n")
    print(text)
    print(f"\nwrote {args.out / 'summary.md'}", file=sys.stderr)
    sys.exit(0 if all(r["returncode"] == 0 for r in runs) else 1)


if __name__ == "__main__":
    main()
