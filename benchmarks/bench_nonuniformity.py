"""Hessian-variance products Σv: valleys against the per-sample loop of the original code.

On ``digits-mse`` at its checkpoint (float32, 1,438 samples, 85k parameters):

* valleys: one product ``Σv`` with ``valleys.hessian_variance(obj)`` (default method, and each
  of ``"linear-layers"`` and ``"vmap"`` when the installed version accepts ``method=``);
* the loop of ``variance_vec_prod`` in leiwu0/sgd.stability (``src/linalg.py``), written out
  here: for each sample separately, ``u_i = H_i v`` and then ``H_i u_i``, each a fresh forward
  pass and double-backward HVP with batch size 1 (``Hv_batch``), averaged, minus ``H(Hv)``
  (here one product of valleys' cached full Hessian, the cheapest way to get that term);
* the agreement of the two (relative difference of the products);
* the full ``valleys.nonuniformity(obj)``: time and Σ-products (its Lanczos matvecs).

``--quick`` times the loop on the first 200 samples and extrapolates linearly to all of them
(the agreement check then uses those 200 samples as the data set for both sides).

Run: ``python benchmarks/bench_nonuniformity.py [--quick]``
(writes ``benchmarks/out/nonuniformity.json``).
"""

from __future__ import annotations

import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"  # before NumPy/SciPy load OpenBLAS (see _common)

import importlib
import inspect
import math
import sys

import _common as C
import torch

import valleys
from valleys.problems import load_problem

PROBLEM = "digits-mse"
QUICK_SAMPLES = 200
TARGET_SPEEDUP = 10.0


# -- the original algorithm -----------------------------------------------------------------
def hv_batch(model, criterion, x, y, v: torch.Tensor) -> torch.Tensor:
    """``Hv_batch`` of leiwu0/sgd.stability: forward pass, gradient with graph, one more grad."""
    params = list(model.parameters())
    loss = criterion(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True, retain_graph=True)
    dot = sum(torch.dot(piece, g.reshape(-1))
              for piece, g in zip(v.split([p.numel() for p in params]), grads, strict=True))
    return torch.cat([t.reshape(-1) for t in torch.autograd.grad(dot, params)])


def loop_variance_product(model, criterion, X, Y, hessian, v: torch.Tensor) -> torch.Tensor:
    """``variance_vec_prod``: (1/n) Σ_i H_i (H_i v) − H (H v), one sample at a time."""
    second_moment = torch.zeros_like(v)
    hv = torch.zeros_like(v)
    for i in range(X.shape[0]):
        x, y = X[i : i + 1], Y[i : i + 1]
        u = hv_batch(model, criterion, x, y, v)
        second_moment += hv_batch(model, criterion, x, y, u)
        hv += u
    n = X.shape[0]
    return second_moment / n - hessian.matvec(hv / n)


# -- valleys --------------------------------------------------------------------------------
def methods_available() -> list[str]:
    """Explicit methods of ``hessian_variance`` (empty if it takes no ``method=``)."""
    if "method" not in inspect.signature(valleys.hessian_variance).parameters:
        return []
    module = importlib.import_module("valleys.operators._hessian_variance")
    return [m for m in getattr(module, "METHODS", ("linear-layers", "vmap")) if m != "auto"]


def valleys_contenders(obj, v: torch.Tensor, products: dict) -> list[C.Contender]:
    """The default operator plus one per explicit method; products stored for comparison."""
    found = []
    for method in [None, *methods_available()]:
        kwargs = {} if method is None else {"method": method}
        try:
            op = valleys.hessian_variance(obj, **kwargs)
        except Exception as error:
            contender = C.Contender(f"valleys method={method}", run=lambda: {})
            contender.error = f"{type(error).__name__}: {error}"
            found.append(contender)
            continue
        label = "default" if method is None else method
        found.append(C.Contender(f"valleys hessian_variance ({label})",
                                 _product_run(op, v, products, label),
                                 warmup=lambda op=op: op.matvec(v)))
    return found


def _product_run(op, v, products, label):
    def run():
        products[label] = op.matvec(v)
        return {"method": getattr(op, "method", None), "label": label}
    return run


def time_nonuniformity(obj, repeats: int) -> dict:
    """``valleys.nonuniformity(obj)``: value, median time, and the Σ-products of its Lanczos."""
    module = importlib.import_module("valleys._sharpness")
    original = module.hessian_variance
    created = []

    def recording(*args, **kwargs):
        op = original(*args, **kwargs)
        created.append(op)
        return op

    module.hessian_variance = recording
    try:
        contender = C.Contender("valleys.nonuniformity",
                                lambda: {"value": valleys.nonuniformity(obj)})
        C.run_interleaved([contender], repeats=repeats, budget_s=float("inf"), log=False)
    finally:
        module.hessian_variance = original
    if contender.error is not None:
        return {"error": contender.error}
    op = created[-1]
    return {"value": contender.result["value"], "median_s": contender.median,
            "times_s": contender.times, "cpu_median_s": contender.cpu_median,
            "matvecs": op.num_matvecs, "method": getattr(op, "method", None)}


# -- the benchmark --------------------------------------------------------------------------
def run(quick: bool) -> dict:
    problem = load_problem(PROBLEM)
    model, criterion = problem.model, C.criterion(problem.loss)
    X, Y = problem.data.train
    n = X.shape[0]
    m = min(QUICK_SAMPLES, n) if quick else n
    obj = problem.objective()
    check_obj = obj if m == n else valleys.Objective(model, problem.loss, (X[:m], Y[:m]))
    v = torch.randn(obj.dim, generator=torch.Generator().manual_seed(0))
    v /= torch.linalg.vector_norm(v)

    products: dict[str, torch.Tensor] = {}
    loop_hessian = valleys.hessian(check_obj)  # cached full HVP for the H(Hv) term

    def run_loop():
        products["loop"] = loop_variance_product(model, criterion, X[:m], Y[:m], loop_hessian, v)
        return {}

    loop = C.Contender(
        f"per-sample loop ({m} of {n} samples)" if m < n else "per-sample loop",
        run_loop,
        warmup=lambda: hv_batch(model, criterion, X[:1], Y[:1], v),
    )
    ours = valleys_contenders(obj, v, products)
    repeats = 1 if quick else 3
    print(f"[{PROBLEM}] Σv products", file=sys.stderr)
    C.run_interleaved([loop, *ours], repeats=repeats, budget_s=60.0)

    loop_full_s = loop.median * n / m
    loop_full_cpu = loop.cpu_median * n / m
    if m < n:  # agreement on the subset: valleys on the same m samples
        products_sub: dict[str, torch.Tensor] = {}
        for c in valleys_contenders(check_obj, v, products_sub):
            if c.error is None:
                c.run()
        reference_products = products_sub
    else:
        reference_products = products
    records = []
    for c in ours:
        label = c.result.get("label")
        agree = None
        if label in reference_products and "loop" in products:
            agree = float(torch.linalg.vector_norm(reference_products[label] - products["loop"])
                          / torch.linalg.vector_norm(products["loop"]))
        records.append({"name": c.name, "method": c.result.get("method"), "error": c.error,
                        "median_s": c.median, "times_s": c.times, "cpu_median_s": c.cpu_median,
                        "loop_over_this": C.ratio(loop_full_s, c.median),
                        "loop_over_this_cpu": C.ratio(loop_full_cpu, c.cpu_median),
                        "rel_diff_to_loop": agree})
    print(f"[{PROBLEM}] valleys.nonuniformity", file=sys.stderr)
    full = time_nonuniformity(obj, repeats)
    if "matvecs" in full:
        full["loop_estimate_s"] = loop_full_s * full["matvecs"]
    return {"problem": PROBLEM, "dim": obj.dim, "n": n, "loop_samples": m,
            "loop_extrapolated": m < n, "loop": {"median_s": loop.median, "times_s": loop.times,
                                                 "cpu_median_s": loop.cpu_median,
                                                 "full_data_s": loop_full_s,
                                                 "error": loop.error},
            "valleys": records, "nonuniformity": full}


def report(result: dict, threads: str, repeats: int) -> tuple[str, list[dict]]:
    loop = result["loop"]
    rows = [["per-sample loop (sgd.stability)", None,
             loop["full_data_s"], 1.0, None,
             (f"timed on {result['loop_samples']} samples, extrapolated ×"
              f"{result['n'] / result['loop_samples']:.2f}" if result["loop_extrapolated"]
              else "")]]
    summary = []
    for r in result["valleys"]:
        if r["error"] is not None:
            rows.append([r["name"], None, None, None, None, f"failed: {r['error'][:80]}"])
            continue
        rows.append([r["name"], r["method"], r["median_s"], r["loop_over_this"],
                     r["rel_diff_to_loop"], f"CPU-time speed-up {C.fmt(r['loop_over_this_cpu'])}"])
        # The target is for the default operator; explicit methods are for information.
        target = TARGET_SPEEDUP if "default" in r["name"] else None
        met = None if target is None else (r["loop_over_this"] or 0.0) >= target
        summary.append({"name": r["name"], "method": r["method"],
                        "speedup": r["loop_over_this"], "target": target, "met": met,
                        "rel_diff_to_loop": r["rel_diff_to_loop"]})
    table = C.markdown_table(["Σv product", "method", "time (s)", "speed-up vs loop",
                              "rel. diff. to loop", "notes"], rows)
    full = result["nonuniformity"]
    if "error" in full:
        full_line = f"valleys.nonuniformity(obj) failed: {full['error']}"
    else:
        full_line = (
            f"valleys.nonuniformity(obj) = {full['value']:.6g} (method {full['method']}): "
            f"{C.fmt(full['median_s'])} s (median of {len(full['times_s'])}), "
            f"{full['matvecs']} Σ-products; the same number of products through the per-sample "
            f"loop would take ≈ {C.fmt(full['loop_estimate_s'])} s.")
    default = next((s for s in summary if "default" in s["name"]), None)
    headline = ("default speed-up vs loop: "
                f"{C.fmt(default['speedup'])}x (target ≥ {TARGET_SPEEDUP:g}x: "
                f"{'met' if default['met'] else 'missed'})" if default else "")
    lines = [f"## Non-uniformity products (bench_nonuniformity.py), {result['problem']} "
             f"({result['dim']} parameters, {result['n']} samples)", "", threads,
             ("One run each (--quick)" if repeats == 1 else
              f"Median of up to {repeats} round-robin runs (each stops after 60 s of runs)")
             + ", one warm-up each; float32, the whole training set as one chunk. "
             "Relative differences are "
             "‖Σv − Σv_loop‖/‖Σv_loop‖ for one random unit v.", "",
             table, "", headline, "", full_line, "", C.load_line()]
    return "\n".join(lines), summary


def main() -> None:
    args = C.parse_args(__doc__.splitlines()[0])
    threads = C.setup_threads()
    result = run(args.quick)
    repeats = 1 if args.quick else 3
    text, summary = report(result, threads, repeats)
    print(text)
    path = C.write_json(args.out, "nonuniformity", {"quick": args.quick, "summary": summary,
                                                    **result, "markdown": text})
    print(f"\nwrote {path}", file=sys.stderr)
    if not math.isfinite(result["loop"]["median_s"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
