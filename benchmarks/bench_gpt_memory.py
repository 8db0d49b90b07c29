"""Sharpness of a GPT-style model: valleys against PyHessian, time and peak memory, and valleys'
``memory_estimate`` against the measured peak (issue #18, "Memory for large models").

A :class:`valleys.models.TinyGPT` with random weights (seed 0; nothing is downloaded) on
synthetic token sequences (seed 0), loss = mean next-token cross-entropy. Sizes:

* ``--size quick``: d_model 64, 2 layers, vocab 256 (0.12 M parameters), 4 × 32 tokens: seconds;
* ``--size full`` (default): d_model 256, 12 layers, vocab 4096 (10.5 M parameters), 2 × 16
  tokens (few tokens keep a Hessian-vector product near a second on 2 shared CPU cores);
* ``--size large``: d_model 768, 12 layers, vocab 50257, 1024 positions (GPT-2 small's layout,
  124 M parameters), 8 × 256 tokens: for a GPU (``--device cuda``).

Contenders, each in a fresh child process (its own peak memory, no warm caches), run
round-robin (``--repeats`` rounds) so slow spells of a shared machine spread over all of them:

* valleys with ``which="magnitude"`` (largest ``|λ|``, what PyHessian's power iteration
  finds): the reference for PyHessian's errors;
* valleys: ``valleys.eigsh(valleys.hessian(obj), k=1, tol=1e-3)``, the computation of
  ``valleys.sharpness(obj, tol=1e-3)`` (relative residual ≤ 1e-3, which bounds the error of the
  eigenvalue by 1e-3 relative), objective built from ``Objective.from_function(model,
  next_token_losses, [batch])``;
* PyHessian ``hessian(model, criterion, data=(ids, ids)).eigenvalues(top_n=1, tol=...)`` at
  ``tol`` 1e-3 and 1e-4 (its rule is a relative change of the Rayleigh quotient between power
  iterations, not an error bound), ``maxIter`` 1000, under the math attention backend (fused
  attention kernels have no double backward);
* reference: with ``--reference``, valleys with ``tol=1e-4`` (at most 300 products);
  otherwise valleys' own ``tol=1e-3`` value, whose certified error bound (Krylov–Bogoliubov or
  Kato–Temple, on recomputed products) is reported next to it: PyHessian's errors are
  meaningful above that bound;
* ``valleys.memory_estimate(obj, what="sharpness", backend=...)`` in a child of its own: the
  prediction, made before the computation, and the time it takes.

Time includes building the operator (forward pass and first-order graph) and, for valleys,
building the Objective. Memory on CPU: peak resident set size (``VmHWM``, reset through
``/proc/self/clear_refs`` once model and data exist; ``ru_maxrss`` where that is refused)
minus the current RSS then, with glibc's mmap threshold pinned at 64 KiB
(``MALLOC_MMAP_THRESHOLD_``) so freed tensors leave the RSS and it tracks live memory; on CUDA:
``torch.cuda.max_memory_allocated()`` minus the bytes allocated at that point. The estimate is
compared with ``total − model − data`` (what the computation adds to what is already there).
HVP counts: valleys ``H.num_matvecs`` (verification included; products of the backend
calibration reported apart), PyHessian the calls of its ``hessian_vector_product``.

Run: ``python benchmarks/bench_gpt_memory.py [--quick | --size full] [--device cuda]
[--no-pyhessian] [--repeats N]`` (writes ``benchmarks/out/gpt_memory.json``).
"""

from __future__ import annotations

import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"  # before NumPy/SciPy load OpenBLAS (see _common)

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as C

SIZES: dict[str, dict[str, int]] = {
    "quick": dict(vocab=256, d_model=64, n_layer=2, n_head=4, max_len=32, batch=4, tokens=32),
    "full": dict(vocab=4096, d_model=256, n_layer=12, n_head=4, max_len=32, batch=2,
                 tokens=16),
    "large": dict(vocab=50257, d_model=768, n_layer=12, n_head=12, max_len=1024, batch=8,
                  tokens=256),
}
TOL = 1e-3
REFERENCE_TOL = 1e-4  # ten times tighter than the contenders; its bound is reported
REFERENCE_MAX_MATVECS = 300
PYHESSIAN_TOLS = (1e-3, 1e-4)
PYHESSIAN_MAXITER = 1000
MMAP_THRESHOLD = "65536"


# -- child: one measurement ---------------------------------------------------------------------
def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _Memory:
    """Bytes a computation adds on the device: CUDA's allocator counters, or the RSS peak."""

    def __init__(self, device: str) -> None:
        import torch

        self.torch, self.cuda = torch, device.startswith("cuda")
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            # VmHWM reset to the current RSS: ru_maxrss would carry the parent's high-water
            # mark across fork and exec.
            self.reset = C.reset_peak_rss()
            self.base = _rss()

    def increase(self) -> int:
        if self.cuda:
            self.torch.cuda.synchronize()
            return self.torch.cuda.max_memory_allocated() - self.base
        if self.reset:
            return C.status_kib("VmHWM") * 1024 - self.base
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.base


def build(size: str, device: str) -> tuple[Any, Any]:
    """The model (eval mode, seed 0) and one batch of token ids (seed 0) on ``device``."""
    import torch

    import valleys

    s = SIZES[size]
    model = valleys.models.TinyGPT(s["vocab"], d_model=s["d_model"], n_layer=s["n_layer"],
                                   n_head=s["n_head"], max_len=s["max_len"], seed=0)
    model = model.to(device).eval()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, s["vocab"], (s["batch"], s["tokens"]), generator=gen).to(device)
    return model, ids


def measure(task: str, size: str, device: str, option: str) -> dict[str, Any]:
    """Run one contender in this (fresh) process and return its record."""
    C.setup_threads()
    import torch

    import valleys
    import valleys._memory

    model, ids = build(size, device)
    params = sum(p.numel() for p in model.parameters())
    record: dict[str, Any] = {"task": task, "option": option, "params": params,
                              "tokens": ids.numel(), "device": device}
    memory = _Memory(device)
    start = time.perf_counter()
    if task == "valleys":
        obj = valleys.Objective.from_function(model, valleys.losses.next_token_losses,
                                              [{"input_ids": ids}])
        record["objective_s"] = time.perf_counter() - start
        H = valleys.hessian(obj)
        tol, _, which = option.partition(":")
        budget = REFERENCE_MAX_MATVECS if float(tol) < TOL else None
        result = valleys.eigsh(H, k=1, which=which or "largest", tol=float(tol), seed=0,
                               max_matvecs=budget)
        value = float(result.values[0])
        choice = getattr(H, "backend_choice", None)
        record.update(matvecs=H.num_matvecs, converged=bool(result.converged),
                      error_bound=float(result.error_bounds[0]),
                      backend=getattr(H, "backend", "double-backward"),
                      calibration_products=getattr(choice, "products", None),
                      calibration_source=getattr(choice, "source", None))
    elif task == "pyhessian":
        import pyhessian

        counter = C.PyHessianCounter()
        vocab = SIZES[size]["vocab"]

        def criterion(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, vocab), targets[:, 1:].reshape(-1))

        torch.manual_seed(0)  # its start vector comes from the global generator
        with valleys._attention.math_attention():
            hess = pyhessian.hessian(model, criterion, data=(ids, ids),
                                     cuda=device.startswith("cuda"))
            values, _ = hess.eigenvalues(maxIter=PYHESSIAN_MAXITER, tol=float(option), top_n=1)
        value = float(values[0])
        record.update(matvecs=counter.count)
    elif task == "estimate":
        obj = valleys.Objective.from_function(model, valleys.losses.next_token_losses,
                                              [{"input_ids": ids}])
        parts = valleys._memory.memory_estimate(obj, what="sharpness", backend=option,
                                                breakdown=True)
        value = float("nan")
        record.update(breakdown=parts)
    else:
        raise SystemExit(f"unknown task {task!r}")
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    record.update(time_s=time.perf_counter() - start, increase_bytes=memory.increase(),
                  value=value)
    return record


# -- parent: children round-robin ---------------------------------------------------------------
def run_child(task: str, size: str, device: str, option: str, cache: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", task, size, device, option]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=MMAP_THRESHOLD, VALLEYS_CACHE_DIR=cache)
    print(f"  {task} {option}", file=sys.stderr, flush=True)
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        return {"task": task, "option": option,
                "error": f"exit {done.returncode}: {done.stderr.strip()[-800:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def median(records: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in records if key in r and r[key] is not None]
    return statistics.median(values) if values else None


def main() -> None:
    def extra(parser: Any) -> None:
        parser.add_argument("--size", choices=tuple(SIZES), default=None,
                            help="model size (default: full; quick with --quick)")
        parser.add_argument("--device", default="cpu", help="cpu or cuda")
        parser.add_argument("--repeats", type=int, default=None,
                            help="round-robin rounds (default 1; 2 with --quick)")
        parser.add_argument("--no-pyhessian", action="store_true", help="skip PyHessian")
        parser.add_argument("--reference", action="store_true",
                            help=f"a separate valleys run with tol={REFERENCE_TOL:g} as reference")
        parser.add_argument("--report", type=Path, default=None,
                            help="re-render the report of a saved gpt_memory.json")
        parser.add_argument("--child", nargs=4, metavar=("TASK", "SIZE", "DEVICE", "OPTION"),
                            help="internal: run one measurement and print it as JSON")

    args = C.parse_args(__doc__.splitlines()[0], extra)
    if args.child:
        print(json.dumps(measure(*args.child)))
        return
    if args.report:
        saved = json.loads(args.report.read_text())
        loaded = {tuple(key.split(" ", 1)): records for key, records in saved["runs"].items()}
        print(report(saved["size"], saved["device"], saved["reference"], saved["estimates"],
                     loaded, "(re-rendered from " + str(args.report) + ")")[0])
        return
    size = args.size or ("quick" if args.quick else "full")
    repeats = args.repeats or (2 if args.quick else 1)
    threads = C.setup_threads()
    device = args.device
    with tempfile.TemporaryDirectory(prefix="valleys-gpt-bench-") as cache:
        # The estimate first, made before anything ran. A separate reference (--reference)
        # also makes and stores in `cache` the automatic choice of the Hessian-vector product
        # scheme, which the timed valleys runs then reuse; without it the first valleys run
        # pays for that calibration (its products are reported).
        estimates = {"auto": run_child("estimate", size, device, "auto", cache)}
        reference = (run_child("valleys", size, device, f"{REFERENCE_TOL:g}", cache)
                     if args.reference else None)
        contenders = [("valleys", f"{TOL:g}")]
        if not args.no_pyhessian:
            # PyHessian's power iteration converges to the largest |λ|: valleys' answer to that
            # same question is its reference (at a random initialization the most negative
            # eigenvalue can exceed the sharpness in magnitude).
            contenders.append(("valleys", f"{TOL:g}:magnitude"))
            contenders += [("pyhessian", f"{tol:g}") for tol in PYHESSIAN_TOLS]
        runs: dict[tuple[str, str], list[dict[str, Any]]] = {c: [] for c in contenders}
        for _ in range(repeats):
            for task, option in contenders:
                runs[task, option].append(run_child(task, size, device, option, cache))
        if reference is None:
            reference = dict(runs["valleys", f"{TOL:g}"][0], role="valleys tol=1e-3 itself")
    text, summary = report(size, device, reference, estimates, runs, threads)
    print(text)
    path = C.write_json(args.out, "gpt_memory", {
        "quick": args.quick, "size": size, "device": device, "config": SIZES[size],
        "summary": summary, "reference": reference, "estimates": estimates,
        "runs": {f"{t} {o}": r for (t, o), r in runs.items()}, "markdown": text,
        "environment": C.environment()})
    print(f"\nwrote {path}", file=sys.stderr)


def report(size: str, device: str, reference: dict[str, Any], estimates: dict[str, Any],
           runs: dict[tuple[str, str], list[dict[str, Any]]],
           threads: str) -> tuple[str, dict[str, Any]]:
    mb = 2**20
    exact = reference.get("value")
    ours = runs["valleys", f"{TOL:g}"]
    our_time, our_mem = median(ours, "time_s"), median(ours, "increase_bytes")
    rows, summary = [], {"contenders": {}}
    for (task, option), records in runs.items():
        good = [r for r in records if "error" not in r]
        if not good:
            rows.append([f"{task} tol={option}", None, None, None, None, None, None, None,
                         records[-1].get("error", "")[-150:]])
            continue
        t, m = median(good, "time_s"), median(good, "increase_bytes")
        value = good[-1]["value"]
        # Against the valleys run that answers the same question (largest |λ| for PyHessian).
        same = (runs.get(("valleys", f"{TOL:g}:magnitude")) if task == "pyhessian" else None)
        same_good = [r for r in same or [] if "error" not in r]
        target = same_good[-1]["value"] if same_good else exact
        if task == "valleys":  # its certified bound (Krylov–Bogoliubov or Kato–Temple)
            error = good[-1]["error_bound"] / abs(value) if value else None
        else:
            error = abs(value - target) / abs(target) if target else None
        rows.append([f"{task} tol={option}", t, C.ratio(t, our_time), m / mb if m else None,
                     C.ratio(m, our_mem), good[-1]["matvecs"], value, error,
                     "" if error is None else ("≤ 1e-3" if error <= TOL else "> 1e-3")])
        summary["contenders"][f"{task} tol={option}"] = {
            "time_s": t, "increase_mb": m / mb if m else None, "matvecs": good[-1]["matvecs"],
            "rel_error": error, "time_over_valleys": C.ratio(t, our_time),
            "memory_over_valleys": C.ratio(m, our_mem), "times_s": [r["time_s"] for r in good]}
    headers = ["contender", "time (s)", "time / valleys", "peak increase (MB)",
               "memory / valleys", "HVPs", "value",
               "rel. error (valleys: certified bound; PyHessian: vs valleys' largest magnitude)",
               "reaches 1e-3"]
    est_rows = []
    for scheme, record in estimates.items():
        if "error" in record:
            est_rows.append([scheme, None, None, None, None, record["error"][-150:]])
            continue
        parts = record["breakdown"]
        added = parts["total"] - parts["model"] - parts["data"]
        est_rows.append([scheme, parts["total"] / mb, added / mb,
                         our_mem / mb if our_mem else None, C.ratio(our_mem, added),
                         record["time_s"]])
        summary[f"estimate_{scheme}"] = {"breakdown": parts, "added_mb": added / mb,
                                         "measured_over_estimate": C.ratio(our_mem, added),
                                         "estimate_time_s": record["time_s"]}
    est_headers = ["estimate (backend)", "total (MB)", "total − model − data (MB)",
                   "measured increase, valleys (MB)", "measured / estimate", "estimate time (s)"]
    any_run = next((r for rs in runs.values() for r in rs if "params" in r), reference)
    params, tokens = any_run.get("params"), any_run.get("tokens")
    own = bool(reference.get("role"))
    ref_tol, ref_note = (TOL, " (the valleys run below)") if own else (REFERENCE_TOL, "")
    memory_rule = ("`torch.cuda.max_memory_allocated()` minus the bytes allocated before"
                   if device.startswith("cuda") else
                   "peak RSS (`VmHWM`, reset before the computation) minus the RSS before, "
                   "glibc mmap threshold 64 KiB")
    lines = [
        f"## GPT sharpness, valleys vs PyHessian (bench_gpt_memory.py, size {size}, {device})",
        "", f"TinyGPT with {params:,} parameters, {tokens} tokens (seed 0), mean next-token "
        f"cross-entropy. Reference: valleys tol={ref_tol:g}{ref_note}: "
        f"{exact!r} (error bound {reference.get('error_bound')!r}, "
        f"{reference.get('matvecs')} HVPs, backend {reference.get('backend')}, chosen by "
        f"{reference.get('calibration_source')}). valleys' time includes building the "
        f"Objective ({median(ours, 'objective_s')!r} s: its checks run the model a few times). "
        "Every row is a fresh child process; "
        f"memory = {memory_rule}; medians of {len(ours)} round-robin run(s).", "", threads, "",
        C.markdown_table(headers, rows), "",
        "valleys' `memory_estimate(obj, what=\"sharpness\", backend=...)`, made before the "
        "computation in a child of its own, against the measured increase of the valleys run:",
        "", C.markdown_table(est_headers, est_rows), "", C.load_line()]
    return "\n".join(lines), summary


if __name__ == "__main__":
    main()
