"""Cost of one Hessian-vector product, in units of one gradient, for each way of computing it.

Per built-in problem (trained checkpoint, full training set as one chunk, float32), the median
time of:

* one gradient, ``obj.gradient()`` (the unit);
* valleys' default HVP (double backward through the cached first-order graph);
* valleys' HVP with ``cache=False`` (forward, backward with ``create_graph``, backward: each time);
* valleys' forward-over-reverse HVP (``torch.func.jvp`` of ``torch.func.grad``; never cached);
* PyHessian's HVP (``hessian_vector_product`` on the graph its constructor keeps);
* curvlinops' ``HessianLinearOperator`` product (``jvp`` of ``jacrev``; never cached), extra;
* valleys' first product on a fresh operator (builds the cached graph, then one HVP), extra.

All run round-robin in one process, after one warm-up call each. The products are also checked
against each other (relative difference to valleys' default).

Run: ``python benchmarks/bench_hvp_cost.py [--quick]`` (writes ``benchmarks/out/hvp_cost.json``).
"""

from __future__ import annotations

import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"  # before NumPy/SciPy load OpenBLAS (see _common)

import importlib
import sys

import _common as C
import torch

import valleys
from valleys.problems import load_problem

TARGET_DEFAULT = 3.0  # valleys' default HVP should cost at most 3 gradients


def contenders(problem, v: torch.Tensor, products: dict) -> list[C.Contender]:
    """The timed calls; each also stores its product in ``products`` for the agreement check."""
    obj = problem.objective()
    cached = valleys.hessian(obj)
    uncached = valleys.hessian(obj, cache=False)
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
                    product("first", lambda: valleys.hessian(obj).matvec(v))),
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
            "records": records}


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
        }
        summary.append(entry)
        rows.append([entry["problem"], entry["default_hvp_in_gradients"],
                     f"≤ {TARGET_DEFAULT:g}", entry["met"],
                     entry["default_hvp_in_gradients_best"], entry["uncached_in_gradients"],
                     entry["forward_over_reverse_in_gradients"], entry["pyhessian_in_gradients"],
                     entry["curvlinops_in_gradients"]])
    headers = ["problem", "default HVP ÷ gradient", "target", "met", "(best of runs)",
               "cache=False",
               "forward-over-reverse", "PyHessian", "curvlinops"]
    return C.markdown_table(headers, rows), summary


def main() -> None:
    args = C.parse_args(__doc__.splitlines()[0], C.add_problems_option)
    threads = C.setup_threads()
    repeats = 5 if args.quick else 15
    results = [bench_problem(name, repeats) for name in args.problems]
    table, summary = summary_table(results)
    lines = ["## Cost of one Hessian-vector product (bench_hvp_cost.py)", "", threads,
             f"Median of {repeats} round-robin runs after one warm-up each (and the best run, "
             "which additive noise from other processes cannot lower); one chunk (the whole "
             "training set), float32. Ratios are HVP time ÷ gradient time; the target is judged "
             "on the medians.", "",
             "### Summary (HVP cost in gradients)", "", table, ""]
    for res in results:
        lines += [f"### {res['problem']} ({res['dim']} parameters, {res['n']} samples)", "",
                  problem_table(res), ""]
    lines.append(C.load_line())
    report = "\n".join(lines)
    print(report)
    path = C.write_json(args.out, "hvp_cost", {"quick": args.quick, "repeats": repeats,
                                               "summary": summary, "problems": results,
                                               "markdown": report})
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
