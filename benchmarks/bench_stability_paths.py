"""(sharpness, non-uniformity) of one digits-mse solution by three paths, side by side.

Issue #3, section 5. The three paths:

* the Gram/NTK path, ``valleys.stability.gram_sharpness_nonuniformity``;
* the operator path, ``valleys.sharpness`` plus ``valleys.nonuniformity``;
* the per-sample loop of the original code (``leiwu0/sgd.stability``), driven by the same
  Lanczos solver so that only the product differs.

Every path runs at tol 1e-6 on the ``digits-mse`` checkpoint. The Gram path is exact only at
an interpolating square-loss minimum; this checkpoint has loss ~7e-4, so the paths differ by
the dropped residual term.

    python benchmarks/bench_stability_paths.py [--quick]

With ``--quick``, the loop times a few products and extrapolates to the operator path's count.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import json
import sys
import time
import warnings
from pathlib import Path

import _common as C
import torch
from bench_nonuniformity import loop_variance_product

import valleys
from valleys.operators import LambdaOperator
from valleys.problems import load_problem
from valleys.stability import gram_sharpness_nonuniformity

TOL = 1e-6


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    quick = "--quick" in sys.argv
    threads = C.setup_threads()
    prob = load_problem("digits-mse")
    obj = prob.objective()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the Gram path warns that the point is not exact
        gram, t_gram = _timed(lambda: gram_sharpness_nonuniformity(obj, tol=TOL))
    a, t_a = _timed(lambda: valleys.sharpness(obj, tol=TOL))
    sigma = valleys.hessian_variance(obj)
    s_result, t_s = _timed(lambda: valleys.eigsh(sigma, k=1, tol=TOL))
    products = s_result.matvecs

    H = valleys.hessian(obj)
    X, Y = prob.data.train
    criterion = C.criterion(prob.loss)

    def loop(v):
        return loop_variance_product(prob.model, criterion, X, Y, H, v)

    if quick:
        v = torch.randn(obj.dim, generator=torch.Generator().manual_seed(0))
        _, t_one = _timed(lambda: loop(v / v.norm()))
        t_loop, s_loop = t_one * products, float("nan")
        loop_note = f"extrapolated: 1 product × {products}"
    else:
        op = LambdaOperator(loop, obj.dim, obj.dtype, obj.device)
        loop_result, t_loop = _timed(lambda: valleys.eigsh(op, k=1, tol=TOL))
        s_loop = float(loop_result.values[0]) ** 0.5
        loop_note = f"{loop_result.matvecs} products"
    s = float(s_result.values[0]) ** 0.5
    t_operator = t_a + t_s
    gram_note = f"G {gram.form}, {gram.gram_size}², {gram.matvecs} G-products"
    rows = [
        ("Gram/NTK path", gram.sharpness, gram.nonuniformity, t_gram, gram_note),
        ("operator path", a, s, t_operator, f"{products} Σ-products"),
        ("per-sample loop (non-uniformity)", float("nan"), s_loop, t_loop, loop_note),
    ]
    lines = [
        "# (a, s) of digits-mse by three paths",
        "",
        threads,
        f"n={obj.n}, p={obj.dim}, loss {float(obj.loss()):.2e}, tol {TOL:g}; "
        f"{C.load_line()}",
        "",
        "| path | sharpness | non-uniformity | time (s) | loop ÷ path | notes |",
        "|---|---|---|---|---|---|",
    ]
    for name, sharp, nonuni, seconds, note in rows:
        lines.append(f"| {name} | {sharp:.6g} | {nonuni:.6g} | {seconds:.3g} | "
                     f"{t_loop / seconds:.2g} | {note} |")
    print("\n".join(lines))
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    payload = {"rows": [dict(zip(("path", "sharpness", "nonuniformity", "seconds", "note"), r,
                                 strict=True)) for r in rows], "quick": quick,
               "environment": C.environment()}
    (out / "stability_paths.json").write_text(json.dumps(payload, indent=2, default=str))


if __name__ == "__main__":
    main()
