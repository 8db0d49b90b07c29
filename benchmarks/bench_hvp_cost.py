"""Cost of one Hessian-vector product, in units of one gradient, for each way of computing it.

Per built-in problem (trained checkpoint, full training set as one chunk, float32), the median
time of:

* one gradient, ``obj.gradient()`` (the unit);
* valleys' double backward through the cached first-order graph (the usual ``auto`` choice);
* valleys' HVP with ``cache=False`` (forward, backward with ``create_graph``, backward: each time);
* valleys' forward-over-reverse HVP (``torch.func.jvp`` of ``torch.func.grad``; never cached);
* PyHessian's HVP (``hessian_vector_product`` on the graph its constructor keeps);
* curvlinops' ``HessianLinearOperator`` product (``jvp`` of ``jacrev``; never cached), extra;
* valleys' first product on a fresh operator (builds the cached graph, then one HVP), extra.

All run round-robin in one process, after one warm-up call each. The products are also checked
against each other (relative difference to valleys' default). Each problem also reports what
``backend="auto"`` chose and the ratio HVP/gradient its calibration measured (a fresh
calibration: the stored choices of earlier runs are neither read nor written here).

Model zoo (``valleys.models``: MLP, SmallCNN, SmallResNet, TinyGPT, and a Hugging Face GPT-2
built from a config, no weights downloaded; random weights and data, float32, one chunk):

* time of one HVP in gradients, per backend (double backward through a reused graph, double
  backward building its graph, forward-over-reverse) and ``auto``'s choice and measured ratio;
* the FLOPs of each call in matrix products, convolutions and attention
  (``torch.utils.flop_counter``), in gradients: the ratio the time would have with equally
  efficient kernels (exactly 2 through a reused graph when every layer's input gradient is
  needed: 6 products per layer against the gradient's 3);
* peak memory of one HVP (graph included) and of one gradient on the same batch, each in a
  fresh child process after a 1-sample warm-up of the same call: on CPU the rise of the peak
  resident set (``VmHWM``, reset just before the call through ``/proc/self/clear_refs``;
  ``ru_maxrss`` where that is not allowed) above the resident set before the call; on CUDA
  ``torch.cuda.max_memory_allocated`` above the memory allocated before the call.

Targets (issue #18): HVP time ≤ 2 gradients with a reused graph, ≤ 3 otherwise; HVP peak
memory ≤ 3× the gradient's.

Run: ``python benchmarks/bench_hvp_cost.py [--quick] [--parts problems zoo] [--device cuda]``
(writes ``benchmarks/out/hvp_cost.json``).
"""

from __future__ import annotations

import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"  # before NumPy/SciPy load OpenBLAS (see _common)

import argparse
import importlib
import json
import resource
import subprocess
import sys
from collections.abc import Callable
from unittest import mock

import _common as C
import torch

import valleys
from valleys.problems import load_problem

TARGET_DEFAULT = 3.0  # valleys' default HVP should cost at most 3 gradients
TARGET_REUSED = 2.0  # HVP time through a reused graph, in gradients
TARGET_MEMORY = 3.0  # HVP peak memory ÷ gradient peak memory
MEMORY_KINDS = ("gradient", "double-backward", "forward-over-reverse")


def contenders(problem, v: torch.Tensor, products: dict) -> list[C.Contender]:
    """The timed calls; each also stores its product in ``products`` for the agreement check."""
    obj = problem.objective()
    # Explicit backends: "auto" would time them and pick one (reported separately).
    cached = valleys.hessian(obj, backend="double-backward")
    uncached = valleys.hessian(obj, backend="double-backward", cache=False)
    forward = valleys.hessian(obj, backend="forward-over-reverse")

    def product(name, fn):
        def run():
            products[name] = fn()
            return {}
        return run

    found = [
        C.Contender("gradient", product("gradient", obj.gradient)),
        C.Contender("valleys default (cached double backward)",
                    product("default", lambda: cached.matvec(v))),
        C.Contender("valleys double backward, cache=False",
                    product("uncached", lambda: uncached.matvec(v))),
        C.Contender("valleys forward-over-reverse",
                    product("forward", lambda: forward.matvec(v))),
        pyhessian_contender(problem, v, products),
        curvlinops_contender(problem, v, products),
        C.Contender("valleys first product (builds the graph)",
                    product("first", lambda: valleys.hessian(
                        obj, backend="double-backward").matvec(v))),
    ]
    for c in found:
        c.warmup = c.warmup or c.run
    return found


def pyhessian_contender(problem, v: torch.Tensor, products: dict) -> C.Contender:
    """PyHessian's product on the graph kept by its constructor (the single-batch mode)."""
    try:
        import pyhessian
        utils = importlib.import_module("pyhessian.utils")
        C.clear_grads(problem.model)
        state = pyhessian.hessian(problem.model, C.criterion(problem.loss),
                                  data=problem.data.train, cuda=False)
    except Exception as error:
        return _failed("PyHessian (cached graph)", error)
    vs = [t.view_as(p) for t, p in zip(v.split([p.numel() for p in state.params]),
                                        state.params, strict=True)]

    def run():
        hv = utils.hessian_vector_product(state.gradsH, state.params, vs)
        products["pyhessian"] = torch.cat([t.reshape(-1) for t in hv])
        return {}

    return C.Contender("PyHessian (cached graph)", run)


def curvlinops_contender(problem, v: torch.Tensor, products: dict) -> C.Contender:
    """curvlinops' Hessian product (forward-over-reverse through torch.func)."""
    try:
        from curvlinops import HessianLinearOperator

        params = [p for p in problem.model.parameters() if p.requires_grad]
        op = HessianLinearOperator(problem.model, C.criterion(problem.loss), params,
                                   [problem.data.train], check_deterministic=False)
    except Exception as error:
        return _failed("curvlinops HessianLinearOperator", error)

    def run():
        products["curvlinops"] = op @ v
        return {}

    return C.Contender("curvlinops HessianLinearOperator", run)


def _failed(name: str, error: Exception) -> C.Contender:
    contender = C.Contender(name, run=lambda: {})
    contender.error = f"{type(error).__name__}: {error}"
    return contender


def bench_problem(name: str, repeats: int) -> dict:
    """Time every contender on one problem; check the products agree."""
    print(f"[{name}]", file=sys.stderr)
    problem = load_problem(name)
    dim = sum(p.numel() for p in problem.model.parameters())
    v = torch.randn(dim, generator=torch.Generator().manual_seed(0))
    products: dict[str, torch.Tensor] = {}
    found = contenders(problem, v, products)
    C.run_interleaved(found, repeats=repeats, budget_s=float("inf"), log=False)
    C.clear_grads(problem.model)
    auto = fresh_auto_choice(problem.objective())
    unit, best_unit, cpu_unit = found[0].median, found[0].best, found[0].cpu_median
    reference = products.get("default")
    records = []
    for c, key in zip(found, ["gradient", "default", "uncached", "forward", "pyhessian",
                              "curvlinops", "first"], strict=True):
        agreement = None
        if key != "gradient" and key in products and reference is not None:
            agreement = float(torch.linalg.vector_norm(products[key] - reference)
                              / torch.linalg.vector_norm(reference))
        records.append({"name": c.name, "median_s": c.median, "times_s": c.times,
                        "cpu_median_s": c.cpu_median, "cpu_times_s": c.cpu_times,
                        "best_s": c.best, "in_gradients": C.ratio(c.median, unit),
                        "best_in_gradients": C.ratio(c.best, best_unit),
                        "cpu_in_gradients": C.ratio(c.cpu_median, cpu_unit),
                        "rel_diff_to_default": agreement, "error": c.error})
    return {"problem": name, "dim": dim, "n": problem.data.train[0].shape[0],
            "records": records, "auto": auto}


def fresh_auto_choice(obj: valleys.Objective) -> dict:
    """What ``backend="auto"`` chooses on ``obj``, measured now: the lookup and the store of
    earlier choices are stubbed out, so this run neither reuses nor changes the cache."""
    with mock.patch("valleys.operators._hessian.lookup_choice", return_value=None), \
            mock.patch("valleys.operators._hessian.store_choice", return_value=None):
        choice = valleys.hessian(obj).backend_choice
    record = choice.to_json()
    record.pop("signature")  # the module list is long; the key identifies it
    return record


def problem_table(result: dict) -> str:
    rows = []
    for r in result["records"]:
        if r["error"] is not None:
            rows.append([r["name"], None, None, None, None, None, None,
                         f"failed: {r['error'][:80]}"])
            continue
        rows.append([r["name"], 1e3 * r["median_s"], 1e3 * r["best_s"], r["in_gradients"],
                     r["best_in_gradients"], r["cpu_in_gradients"], r["rel_diff_to_default"],
                     len(r["times_s"])])
    headers = ["computation", "median (ms)", "best (ms)", "÷ gradient", "÷ gradient (best)",
               "÷ gradient (CPU)", "rel. diff. to default", "runs"]
    return C.markdown_table(headers, rows)


def summary_table(results: list[dict]) -> tuple[str, list[dict]]:
    rows, summary = [], []
    for res in results:
        by = {r["name"]: r for r in res["records"]}
        default = by["valleys default (cached double backward)"]["in_gradients"]
        entry = {
            "problem": res["problem"], "default_hvp_in_gradients": default,
            "target": TARGET_DEFAULT, "met": default is not None and default <= TARGET_DEFAULT,
            "default_hvp_in_gradients_best":
                by["valleys default (cached double backward)"]["best_in_gradients"],
            "uncached_in_gradients": by["valleys double backward, cache=False"]["in_gradients"],
            "forward_over_reverse_in_gradients":
                by["valleys forward-over-reverse"]["in_gradients"],
            "pyhessian_in_gradients": by["PyHessian (cached graph)"]["in_gradients"],
            "curvlinops_in_gradients": by["curvlinops HessianLinearOperator"]["in_gradients"],
            "auto_backend": res["auto"]["backend"],
            "auto_hvp_over_gradient": res["auto"]["hvp_over_gradient"],
        }
        summary.append(entry)
        rows.append([entry["problem"], entry["default_hvp_in_gradients"],
                     f"≤ {TARGET_DEFAULT:g}", entry["met"],
                     entry["default_hvp_in_gradients_best"], entry["uncached_in_gradients"],
                     entry["forward_over_reverse_in_gradients"], entry["pyhessian_in_gradients"],
                     entry["curvlinops_in_gradients"], entry["auto_backend"],
                     entry["auto_hvp_over_gradient"]])
    headers = ["problem", "default HVP ÷ gradient", "target", "met", "(best of runs)",
               "cache=False",
               "forward-over-reverse", "PyHessian", "curvlinops", "auto chose",
               "auto's calibration: HVP ÷ gradient"]
    return C.markdown_table(headers, rows), summary


# -- the model zoo: time and peak memory ----------------------------------------------------
ZOO_NAMES = ("MLP", "SmallCNN", "SmallResNet", "TinyGPT", "GPT-2 (HF config)")
QUICK_ZOO = ("MLP", "TinyGPT")


def _classification(model: torch.nn.Module, shape: tuple[int, ...], classes: int, n: int,
                    device: torch.device, samples: int | None) -> valleys.Objective:
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(n, *shape, generator=generator)[:samples]
    Y = torch.randint(0, classes, (n,), generator=generator)[:samples]
    return valleys.Objective(model.to(device).eval(), "ce", (X.to(device), Y.to(device)))


def _language(model: torch.nn.Module, fn: Callable, vocab: int, batch: int, length: int,
              device: torch.device, samples: int | None) -> valleys.Objective:
    ids = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(0))
    return valleys.Objective.from_function(model.to(device).eval(), fn,
                                           [{"input_ids": ids[:samples].to(device)}])


def build_zoo(name: str, quick: bool, device: torch.device,
              samples: int | None = None) -> tuple[valleys.Objective, str]:
    """A seeded model of the zoo with a seeded batch of random data: ``(objective, batch)``.

    Sizes are 0.1–2M parameters with realistic batches (``quick``: smaller, for CI);
    ``samples`` keeps only the batch's first samples (the memory warm-up)."""
    from valleys import models
    from valleys.losses import next_token_losses

    if name == "MLP":
        widths, n = ((784, 256, 10), 64) if quick else ((784, 1024, 1024, 10), 256)
        return (_classification(models.MLP(widths, seed=0), (widths[0],), 10, n, device,
                                samples),
                f"{n} × 784")
    if name == "SmallCNN":
        channels, n = ((16, 32), 32) if quick else ((32, 64, 128), 128)
        model = models.SmallCNN((3, 32, 32), 10, channels, stride=2, pool="flatten", seed=0)
        return _classification(model, (3, 32, 32), 10, n, device, samples), f"{n} × 3×32×32"
    if name == "SmallResNet":
        width, blocks, n = (16, 2, 16) if quick else (48, 4, 64)
        model = models.SmallResNet((3, 16, 16), 10, width=width, num_blocks=blocks, seed=0)
        return _classification(model, (3, 16, 16), 10, n, device, samples), f"{n} × 3×16×16"
    if name == "TinyGPT":
        vocab, d, layers, batch, length = (256, 64, 2, 8, 32) if quick else (512, 128, 4, 16, 64)
        model = models.TinyGPT(vocab, d_model=d, n_layer=layers, n_head=4, max_len=length,
                               seed=0)
        return (_language(model, next_token_losses, vocab, batch, length, device, samples),
                f"{batch} × {length} tokens")
    if name == "GPT-2 (HF config)":
        import transformers

        from valleys.integrations.huggingface import causal_lm_losses

        vocab, d, layers, batch, length = (256, 64, 2, 8, 32) if quick else (1024, 128, 4, 16, 64)
        torch.manual_seed(0)
        config = transformers.GPT2Config(vocab_size=vocab, n_positions=length, n_embd=d,
                                         n_layer=layers, n_head=4)
        model = transformers.GPT2LMHeadModel(config)  # built from the config: no download
        return (_language(model, causal_lm_losses, vocab, batch, length, device, samples),
                f"{batch} × {length} tokens")
    raise ValueError(f"unknown zoo model {name!r}; choose one of {ZOO_NAMES}")


def _apply(obj: valleys.Objective, kind: str, device: torch.device) -> torch.Tensor:
    """One gradient, or one HVP of backend ``kind`` on a fresh operator (graph included)."""
    if kind == "gradient":
        return obj.gradient()
    v = torch.randn(obj.dim, generator=torch.Generator().manual_seed(0)).to(device, obj.dtype)
    return valleys.hessian(obj, backend=kind).matvec(v)


def _release_free_heap() -> None:
    """Return freed heap memory to the system (glibc ``malloc_trim``), so that the resident
    set before a measurement holds no free blocks the measured call could reuse unseen."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the resident set keeps its free blocks
        pass


def memory_child(name: str, kind: str, quick: bool, device: torch.device) -> dict:
    """Peak memory of one ``kind`` (a gradient, or one HVP of a backend, graph included) on a
    fresh model, in this (fresh) process: the rise above what is held once everything is
    built. The same call on a 1-sample batch first pays the one-time allocations (kernel
    libraries, autograd and functorch state), which would otherwise dominate small models."""
    import warnings

    C.setup_threads()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fused-attention notice of the language models
        obj, _ = build_zoo(name, quick, device)
        warm, _ = build_zoo(name, quick, device, samples=1)
    try:
        _apply(warm, kind, device)
    except Exception as error:  # forward-over-reverse may lack a forward-mode rule
        return {"error": f"{type(error).__name__}: {str(error)[:200]}"}
    del warm
    _release_free_heap()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        reset = C.reset_peak_rss()
        base = C.status_kib("VmRSS")
        if not reset:
            base_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = _apply(obj, kind, device)
    if cuda:
        torch.cuda.synchronize(device)
        return {"peak_bytes": torch.cuda.max_memory_allocated(device) - base,
                "method": "torch.cuda.max_memory_allocated", "finite": bool(out.isfinite().all())}
    if reset:
        return {"peak_bytes": (C.status_kib("VmHWM") - base) * 1024,
                "method": "VmHWM (reset before the call) - VmRSS before the call",
                "finite": bool(out.isfinite().all())}
    # No reset allowed: ru_maxrss still holds the import's peak; valid only above it.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if peak <= base_peak:
        return {"error": "peak below the resolution of ru_maxrss (clear_refs not allowed)"}
    return {"peak_bytes": (peak - base) * 1024, "method": "ru_maxrss - VmRSS before the call",
            "finite": bool(out.isfinite().all())}


def measure_memory(name: str, kind: str, quick: bool, device: torch.device) -> dict:
    """:func:`memory_child` in a fresh Python process (so no freed-but-kept memory of an
    earlier measurement hides this one's peak)."""
    command = [sys.executable, os.path.abspath(__file__), "--memory-child", name, kind,
               "--device", str(device)] + (["--quick"] if quick else [])
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"error": f"child exited with {done.returncode}: {done.stderr.strip()[-300:]}"}
    return json.loads(lines[-1])


def bench_zoo_model(name: str, quick: bool, repeats: int, device: torch.device) -> dict:
    """Time one HVP per backend in gradients (round-robin), ``auto``'s choice, and the peak
    memory of a gradient and of one HVP per backend (each in a fresh process)."""
    import warnings

    print(f"[zoo: {name}]", file=sys.stderr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obj, batch = build_zoo(name, quick, device)
    v = torch.randn(obj.dim, generator=torch.Generator().manual_seed(0)).to(device, obj.dtype)
    reused = valleys.hessian(obj, backend="double-backward")
    building = valleys.hessian(obj, backend="double-backward", cache=False)
    forward = valleys.hessian(obj, backend="forward-over-reverse")
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    def timed_call(fn: Callable) -> Callable[[], dict]:
        def run() -> dict:
            fn()
            sync()
            return {}
        return run

    found = [C.Contender("gradient", timed_call(obj.gradient)),
             C.Contender("double backward, reused graph", timed_call(lambda: reused.matvec(v))),
             C.Contender("double backward, graph built each time",
                         timed_call(lambda: building.matvec(v))),
             C.Contender("forward-over-reverse", timed_call(lambda: forward.matvec(v)))]
    for c in found:
        c.warmup = c.run
    C.run_interleaved(found, repeats=repeats, budget_s=float("inf"), log=False)
    unit = found[0].median
    flops = {c.name: C.counted_flops(c.run) for c in found}
    times = {c.name: {"median_s": c.median, "in_gradients": C.ratio(c.median, unit),
                      "cpu_in_gradients": C.ratio(c.cpu_median, found[0].cpu_median),
                      "flops": flops[c.name],
                      "flops_in_gradients": C.ratio(flops[c.name], flops["gradient"]),
                      "runs": len(c.times), "error": c.error} for c in found}
    auto = fresh_auto_choice(obj)
    memory = {kind: measure_memory(name, kind, quick, device) for kind in MEMORY_KINDS}
    grad_peak = memory["gradient"].get("peak_bytes")
    for kind in MEMORY_KINDS[1:]:
        memory[kind]["over_gradient"] = C.ratio(memory[kind].get("peak_bytes"), grad_peak)
    return {"model": name, "dim": obj.dim, "batch": batch, "times": times, "auto": auto,
            "memory": memory}


def zoo_tables(results: list[dict]) -> tuple[str, str]:
    """The time table and the memory table of the zoo (markdown)."""
    time_rows, memory_rows = [], []
    for res in results:
        t, auto, mem = res["times"], res["auto"], res["memory"]
        reused = t["double backward, reused graph"]["in_gradients"]
        others = [t[k]["in_gradients"] for k in ("double backward, graph built each time",
                                                  "forward-over-reverse")
                  if t[k]["in_gradients"] is not None]
        fresh = min(others) if others else None
        fr = t["forward-over-reverse"]
        time_rows.append([
            res["model"], res["dim"], res["batch"], 1e3 * t["gradient"]["median_s"], reused,
            t["double backward, graph built each time"]["in_gradients"],
            fr["in_gradients"] if fr["error"] is None else f"failed: {fr['error'][:60]}",
            auto["backend"], auto["hvp_over_gradient"],
            reused is not None and reused <= TARGET_REUSED,
            fresh is not None and fresh <= TARGET_DEFAULT,
            t["double backward, reused graph"]["flops_in_gradients"],
            fr["flops_in_gradients"]])
        chosen = mem[auto["backend"]].get("over_gradient")
        memory_rows.append([
            res["model"], res["dim"], res["batch"],
            _mib(mem["gradient"]), _mib(mem["double-backward"]),
            mem["double-backward"].get("over_gradient"), _mib(mem["forward-over-reverse"]),
            mem["forward-over-reverse"].get("over_gradient"), auto["backend"],
            chosen is not None and chosen <= TARGET_MEMORY])
    time_table = C.markdown_table(
        ["model", "parameters", "batch", "gradient (ms)", "HVP ÷ gradient: double backward, "
         "reused graph", "double backward, graph built", "forward-over-reverse", "auto chose",
         "auto's calibration: HVP ÷ gradient", f"reused ≤ {TARGET_REUSED:g}",
         f"no reuse ≤ {TARGET_DEFAULT:g}", "FLOPs ÷ gradient's: reused graph",
         "FLOPs ÷ gradient's: forward-over-reverse"], time_rows)
    memory_table = C.markdown_table(
        ["model", "parameters", "batch", "gradient peak (MiB)",
         "double-backward HVP peak (MiB)", "÷ gradient", "forward-over-reverse HVP peak (MiB)",
         "÷ gradient", "auto chose", f"auto's HVP ≤ {TARGET_MEMORY:g}× gradient"], memory_rows)
    return time_table, memory_table


def _mib(record: dict) -> float | str | None:
    if "error" in record:
        return f"failed: {record['error'][:60]}"
    return record["peak_bytes"] / 2**20


def add_options(parser: argparse.ArgumentParser) -> None:
    C.add_problems_option(parser)
    parser.add_argument("--parts", nargs="+", choices=("problems", "zoo"),
                        default=["problems", "zoo"], help="which parts to run")
    parser.add_argument("--zoo", nargs="+", choices=ZOO_NAMES, default=None,
                        help=f"zoo models (default: all; --quick: {', '.join(QUICK_ZOO)})")
    parser.add_argument("--device", default="cpu", help="device of the zoo models")
    parser.add_argument("--memory-child", nargs=2, metavar=("MODEL", "KIND"),
                        help=argparse.SUPPRESS)


def main() -> None:
    args = C.parse_args(__doc__.splitlines()[0], add_options)
    device = torch.device(args.device)
    if args.memory_child:
        print(json.dumps(memory_child(*args.memory_child, args.quick, device)))
        return
    threads = C.setup_threads()
    repeats = 5 if args.quick else 15
    lines = ["## Cost of one Hessian-vector product (bench_hvp_cost.py)", "", threads, ""]
    results: list[dict] = []
    summary: list[dict] = []
    if "problems" in args.parts:
        results = [bench_problem(name, repeats) for name in args.problems]
        table, summary = summary_table(results)
        lines += [
            f"Median of {repeats} round-robin runs after one warm-up each (and the best run, "
            "which additive noise from other processes cannot lower); one chunk (the whole "
            "training set), float32. Ratios are HVP time ÷ gradient time; the target is judged "
            "on the medians. \"auto chose\" is what `backend=\"auto\"` picked by its own short "
            "calibration (one warm-up, median of 3, on the first chunk), with the ratio it "
            "measured.", "",
            "### Summary (HVP cost in gradients)", "", table, ""]
        for res in results:
            lines += [f"### {res['problem']} ({res['dim']} parameters, {res['n']} samples)", "",
                      problem_table(res), ""]
    zoo: list[dict] = []
    if "zoo" in args.parts:
        names = args.zoo or (QUICK_ZOO if args.quick else ZOO_NAMES)
        zoo_repeats = 3 if args.quick else 7
        zoo = [bench_zoo_model(name, args.quick, zoo_repeats, device) for name in names]
        time_table, memory_table = zoo_tables(zoo)
        lines += [
            "### Model zoo: HVP time in gradients", "",
            f"Random weights and data (seeded), float32, one chunk, on {device}; median of "
            f"{zoo_repeats} round-robin runs after one warm-up each. Targets: ≤ "
            f"{TARGET_REUSED:g} gradients with a reused graph, ≤ {TARGET_DEFAULT:g} otherwise "
            "(the better of double backward building its graph and forward-over-reverse).", "",
            time_table, "",
            "### Model zoo: peak memory of one HVP and of one gradient", "",
            "Each number from a fresh child process and a single call: "
            + ("the rise of `torch.cuda.max_memory_allocated` above the memory allocated "
               "before the call" if device.type == "cuda" else
               "the peak resident set (`VmHWM` of /proc/self/status, reset just before the "
               "call) minus the resident set then, after the model and data are built and the "
               "same call on a 1-sample batch has paid the one-time allocations")
            + "; the HVP includes building its first-order graph. Target: HVP peak ≤ "
            f"{TARGET_MEMORY:g}× gradient peak.", "", memory_table, ""]
    lines.append(C.load_line())
    report = "\n".join(lines)
    print(report)
    path = C.write_json(args.out, "hvp_cost", {"quick": args.quick, "repeats": repeats,
                                               "summary": summary, "problems": results,
                                               "zoo": zoo, "markdown": report})
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
