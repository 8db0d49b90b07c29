"""Shared helpers of the benchmark scripts: threads, timing, tables, JSON output, anchors' glue.

Every script sets ``OPENBLAS_NUM_THREADS=1`` itself *before* importing NumPy/SciPy (so ARPACK's
BLAS does not fight torch for the cores) and then calls :func:`setup_threads`, which pins torch
to 2 threads. This module is imported after that, so it may import torch freely.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

BENCH_DIR = Path(__file__).resolve().parent
OUT_DIR = BENCH_DIR / "out"
TORCH_THREADS = 2
PROBLEM_NAMES = ("digits-mlp", "digits-mse", "mnist1d-mlp")


# -- environment ------------------------------------------------------------------------------
def setup_threads() -> str:
    """Pin torch to :data:`TORCH_THREADS` threads; return the line that states the setting."""
    torch.set_num_threads(TORCH_THREADS)
    # PyHessian's loss.backward(create_graph=True) warns about a reference cycle; we break it.
    warnings.filterwarnings("ignore", message=".*create_graph=True.*")
    return (
        f"threads: torch.set_num_threads({torch.get_num_threads()}), "
        f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')} "
        "(set before importing NumPy/SciPy, so ARPACK does not fight torch for the cores)"
    )


class MachineLoad:
    """How busy the machine was with *other* processes between two points in time.

    Reads the kernel's CPU tick counters (``/proc/stat``) and this process's own CPU time
    (including finished children); the difference is what other tenants used. Timings on a
    shared machine are only comparable when this share is small.
    """

    def __init__(self) -> None:
        self.start = self._snapshot()

    @staticmethod
    def _snapshot() -> tuple[float, float, float]:
        try:
            with open("/proc/stat") as handle:
                fields = [float(x) for x in handle.readline().split()[1:]]
        except OSError:
            return (float("nan"),) * 3
        ticks = os.sysconf("SC_CLK_TCK")
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
        t = os.times()
        own = t.user + t.system + t.children_user + t.children_system
        return sum(fields) / ticks, idle / ticks, own

    def others_share(self) -> float | None:
        """Fraction of all CPU capacity used by other processes since construction."""
        total0, idle0, own0 = self.start
        total1, idle1, own1 = self._snapshot()
        capacity = total1 - total0
        if not capacity > 0:
            return None
        busy = (capacity - (idle1 - idle0)) - (own1 - own0)
        return max(busy, 0.0) / capacity


LOAD = MachineLoad()


def load_line() -> str:
    """A sentence on how busy the machine was, for the end of every report."""
    share = LOAD.others_share()
    shown = "unknown" if share is None else f"{100 * share:.0f}%"
    averages = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"machine: other processes used {shown} of the CPU capacity during this run "
            f"(load average now {averages}); wall times are noisy when that share is large, "
            "CPU times (this process) less so.")


def environment() -> dict[str, Any]:
    """Versions, thread settings and machine load, recorded with every result."""
    import scipy

    info: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "torch_threads": torch.get_num_threads(),
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "cpu_share_used_by_other_processes": LOAD.others_share(),
        "machine": platform.machine(),
    }
    for module in ("valleys", "pyhessian", "curvlinops"):
        info[module] = package_version(module)
    return info


def package_version(module: str) -> str | None:
    """The installed distribution version of an importable module, or ``None``."""
    from importlib import metadata

    dist = {"pyhessian": "PyHessian", "curvlinops": "curvlinops-for-pytorch"}.get(module, module)
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def parse_args(description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None):
    """Common command line: ``--quick`` (fewer repeats / smaller work) and ``--out``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller workloads")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="folder for the JSON results")
    if extra is not None:
        extra(parser)
    return parser.parse_args()


def add_problems_option(parser: argparse.ArgumentParser) -> None:
    """``--problems``: a subset of the built-in problems (default: all three)."""
    parser.add_argument("--problems", nargs="+", choices=PROBLEM_NAMES,
                        default=list(PROBLEM_NAMES), help="built-in problems to run")


# -- timing -----------------------------------------------------------------------------------
@dataclass
class Contender:
    """One way of computing a quantity: ``run()`` returns a dict of results (counts, values)."""

    name: str
    run: Callable[[], dict[str, Any]]
    warmup: Callable[[], Any] | None = None
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def median(self) -> float:
        """Median wall-clock seconds of the timed runs."""
        return statistics.median(self.times) if self.times else float("nan")

    @property
    def best(self) -> float:
        """Fastest wall-clock run: noise on a shared machine only ever adds time."""
        return min(self.times) if self.times else float("nan")

    @property
    def cpu_median(self) -> float:
        """Median CPU seconds (this process, all threads): less sensitive to other tenants."""
        return statistics.median(self.cpu_times) if self.cpu_times else float("nan")


def run_interleaved(
    contenders: list[Contender], *, repeats: int, budget_s: float, log: bool = True
) -> list[Contender]:
    """Warm up every contender once, then time them round-robin (median of ``repeats``).

    Round-robin interleaving spreads the drifts of a shared, noisy machine over all contenders
    instead of penalizing whichever ran during a busy spell. A contender stops repeating once
    its timed runs add up to ``budget_s`` (it always runs at least once). A contender that
    raises is recorded with its error and skipped from then on.
    """
    for c in contenders:
        if c.warmup is not None and c.error is None:
            try:
                c.warmup()
            except Exception as error:  # an anchor failing must not sink the benchmark
                c.error = f"{type(error).__name__}: {error}"
    for _ in range(repeats):
        for c in contenders:
            if c.error is not None or (c.times and sum(c.times) >= budget_s):
                continue
            try:
                cpu_start = time.process_time()
                seconds, c.result = timed(c.run)
                cpu = time.process_time() - cpu_start
            except Exception as error:
                c.error = f"{type(error).__name__}: {error}"
                continue
            c.times.append(seconds)
            c.cpu_times.append(cpu)
            if log:
                print(f"    {c.name:<32s} {seconds:8.3f} s wall {cpu:8.3f} s CPU",
                      file=sys.stderr, flush=True)
    return contenders


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """``(seconds, fn())`` measured with :func:`time.perf_counter`."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def median_time(fn: Callable[[], Any], *, repeats: int, min_total_s: float = 0.0) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls (more, up to 50, to fill min_total_s)."""
    times: list[float] = []
    while len(times) < repeats or (sum(times) < min_total_s and len(times) < 50):
        times.append(timed(fn)[0])
    return statistics.median(times)


# -- output -----------------------------------------------------------------------------------
def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured markdown table; floats are formatted by :func:`fmt`."""
    cells = [[fmt(x) for x in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def fmt(x: Any) -> str:
    """Compact formatting for tables: 3 significant digits, scientific when tiny."""
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        if x != x:  # NaN
            return "—"
        if x == 0 or 1e-2 <= abs(x) < 1e4:
            return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"
        return f"{x:.1e}"
    return str(x)


def write_json(out_dir: Path, name: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus the environment) to ``out_dir/<name>.json``; return the path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    payload = {"benchmark": name, "environment": environment(), **payload}
    path.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    return path


def _jsonable(x: Any) -> Any:
    if isinstance(x, torch.Tensor | np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"cannot serialize {type(x).__name__}")


def status_kib(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (Linux): ``VmRSS`` now, ``VmHWM`` its peak."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> bool:
    """Reset the peak resident set (``VmHWM``) to the current one (Linux ≥ 4.0, writing 5 to
    ``/proc/self/clear_refs``); ``False`` where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def counted_flops(run: Callable[[], object]) -> int | None:
    """Floating-point operations of one ``run()`` in the matrix products, convolutions and
    attention kernels (``torch.utils.flop_counter``; elementwise work, gathers and copies are not
    counted): its work independent of how efficient the kernels are. ``None`` when ``run``
    raises."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with FlopCounterMode(display=False) as counter:
            run()
    except Exception:
        return None
    return counter.get_total_flops()


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or ``None`` when either is missing or the divisor is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    if numerator != numerator or denominator != denominator:
        return None
    return numerator / denominator


def max_relative_error(values, reference) -> float:
    """``max_i |λ_i − λ_i^ref| / |λ_i^ref|`` with both sorted in descending order."""
    got = np.sort(np.asarray(values, dtype=np.float64))[::-1]
    ref = np.sort(np.asarray(reference, dtype=np.float64))[::-1][: got.size]
    return float(np.max(np.abs(got - ref) / np.abs(ref)))


# -- the anchors' loss conventions --------------------------------------------------------------
def half_squared_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """valleys' ``"mse"``: ½ Σ over outputs of the squared error, averaged over samples."""
    return 0.5 * ((outputs - targets) ** 2).sum(1).mean()


class HalfSquaredError(nn.Module):
    """:func:`half_squared_error` as a module with ``reduction="mean"`` (what curvlinops reads)."""

    reduction = "mean"

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return half_squared_error(outputs, targets)


def criterion(loss: str) -> nn.Module:
    """A batch-mean criterion that matches a valleys loss name exactly (PyHessian, curvlinops)."""
    if loss == "ce":
        return nn.CrossEntropyLoss()
    if loss == "mse":
        return HalfSquaredError()
    raise ValueError(f"no anchor criterion for loss {loss!r}")


def clear_grads(model: nn.Module) -> None:
    """Drop ``.grad`` (PyHessian leaves a create_graph gradient there: a reference cycle)."""
    for p in model.parameters():
        p.grad = None


class PyHessianCounter:
    """Count PyHessian's Hessian-vector products by wrapping the function it calls.

    ``pyhessian/hessian.py`` does ``from pyhessian.utils import hessian_vector_product``, so
    the name to patch is the one in the ``pyhessian.hessian`` *module* (the package attribute
    ``pyhessian.hessian`` is the class of the same name).
    """

    def __init__(self) -> None:
        import importlib

        self.module = importlib.import_module("pyhessian.hessian")
        self.original = self.module.hessian_vector_product
        self.count = 0

        def counted(gradsH, params, v):
            self.count += 1
            return self.original(gradsH, params, v)

        self.module.hessian_vector_product = counted

    def reset(self) -> None:
        self.count = 0


class CountingScipyOperator:
    """Wrap a SciPy ``LinearOperator`` and count the vectors it is applied to."""

    def __init__(self, op) -> None:
        from scipy.sparse.linalg import LinearOperator

        self.count = 0

        def matvec(x):
            self.count += 1
            return op.matvec(x)

        def matmat(X):
            self.count += X.shape[1]
            return op.matmat(X)

        self.op = LinearOperator(op.shape, matvec=matvec, rmatvec=matvec, matmat=matmat,
                                 dtype=op.dtype)
