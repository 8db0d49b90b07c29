"""Scaling curves: the cost of a sharpness, a top-10, a trace and a non-uniformity against the
parameter count p and the sample count n (issue 18), so a user can extrapolate.

Tanh MLPs ``d → w → w → 10`` on synthetic data (d = 32, cross-entropy, float32), at their
initialization. Two sweeps:

* over p (the width w), at n = 512;
* over n, at w = 64 (p ≈ 7k).

For each point: the time of one full-batch gradient (the unit), and the time and product count of
``valleys.sharpness`` (tol 1e-4), ``valleys.eigsh(H, k=10)`` (tol 1e-4), ``valleys.trace(H)``
(Hutch++, 60 products) and ``valleys.nonuniformity`` (tol 1e-4). The log-log slope of time
against p (and n) is fitted by least squares over the sweep.

Run: ``python benchmarks/bench_scaling.py [--quick]`` (writes ``benchmarks/out/scaling.json``
and ``benchmarks/out/scaling.png``).
"""

from __future__ import annotations

import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"  # before NumPy/SciPy load OpenBLAS (see _common)

import math

import _common as C
import numpy as np
import torch
from torch import nn

import valleys

D_IN, CLASSES = 32, 10


def _objective(width: int, n: int, seed: int = 0) -> valleys.Objective:
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, D_IN, generator=gen)
    y = torch.randint(0, CLASSES, (n,), generator=gen)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(D_IN, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
                          nn.Linear(width, CLASSES))
    return valleys.Objective(model, "ce", (X, y))


def _point(width: int, n: int, repeats: int) -> dict:
    obj = _objective(width, n)
    row: dict = {"width": width, "n": n, "p": obj.dim}
    row["gradient_s"] = C.median_time(obj.gradient, repeats=repeats, min_total_s=0.2)
    t, res = C.timed(lambda: valleys.sharpness(obj, tol=1e-4, return_result=True))
    row.update(sharpness_s=t, sharpness_matvecs=res.matvecs)
    op = valleys.hessian(obj)
    t, res = C.timed(lambda: valleys.eigsh(op, k=10, tol=1e-4, seed=0))
    row.update(top10_s=t, top10_matvecs=res.matvecs)
    t, res = C.timed(lambda: valleys.trace(valleys.hessian(obj), num_matvecs=60, seed=0))
    row.update(trace_s=t, trace_matvecs=res.matvecs)
    t, res = C.timed(lambda: valleys.nonuniformity(obj, tol=1e-4, return_result=True))
    row.update(nonuniformity_s=t, nonuniformity_products=res.matvecs)
    for task in ("sharpness", "top10", "trace", "nonuniformity"):
        row[f"{task}_in_gradients"] = row[f"{task}_s"] / row["gradient_s"]
    return row


def _slope(xs: list[float], ys: list[float]) -> float:
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def main() -> None:
    args = C.parse_args(__doc__.splitlines()[0])
    threads = C.setup_threads()
    widths = [32, 128, 512] if args.quick else [32, 64, 128, 256, 512, 1024]
    samples = [128, 512] if args.quick else [128, 256, 512, 1024, 2048, 4096]
    repeats = 3 if args.quick else 5
    over_p = [_point(w, 512, repeats) for w in widths]
    over_n = [_point(64, n, repeats) for n in samples]
    tasks = ("gradient", "sharpness", "top10", "trace", "nonuniformity")
    slopes = {
        "p": {t: _slope([r["p"] for r in over_p], [r[f"{t}_s"] for r in over_p]) for t in tasks},
        "n": {t: _slope([r["n"] for r in over_n], [r[f"{t}_s"] for r in over_n]) for t in tasks},
    }
    payload = {"threads": threads, "load": C.load_line(), "over_p": over_p, "over_n": over_n,
               "slopes": slopes}
    path = C.write_json(args.out, "scaling", payload)

    import matplotlib  # deferred: only the figure needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, rows, key, label in ((axes[0], over_p, "p", "parameters p (n = 512)"),
                                 (axes[1], over_n, "n", "samples n (p ≈ 7k)")):
        for task in tasks:
            ax.loglog([r[key] for r in rows], [r[f"{task}_s"] for r in rows], "o-",
                      label=f"{task} (slope {slopes[key][task]:.2f})")
        ax.set_xlabel(label)
        ax.set_ylabel("seconds")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out / "scaling.png", dpi=120)

    headers = ["p", "n", "gradient s", "sharpness s (HVPs)", "top-10 s (HVPs)",
               "trace s (HVPs)", "non-uniformity s (products)"]
    for title, rows in (("over p", over_p), ("over n", over_n)):
        print(f"\n{title}\n")
        print(C.markdown_table(headers, [
            [r["p"], r["n"], r["gradient_s"],
             f"{C.fmt(r['sharpness_s'])} ({r['sharpness_matvecs']})",
             f"{C.fmt(r['top10_s'])} ({r['top10_matvecs']})",
             f"{C.fmt(r['trace_s'])} ({r['trace_matvecs']})",
             f"{C.fmt(r['nonuniformity_s'])} ({r['nonuniformity_products']})"] for r in rows]))
    print("\nlog-log slopes of time:", {k: {t: round(v, 2) for t, v in s.items()}
                                       for k, s in slopes.items()})
    print(f"\n{threads}\n{C.load_line()}\nwrote {path}")
    assert all(math.isfinite(v) for s in slopes.values() for v in s.values())


if __name__ == "__main__":
    main()
