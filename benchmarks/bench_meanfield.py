"""Throughput of one mean-field flow step of a two-layer ReLU net, against the machine's matmul.

One step of the Wasserstein flow (``valleys.meanfield.two_layer``) for ``m`` particles, ``n``
data points and dimension ``d`` is dense linear algebra: the pre-activations ``X Wᵀ``
(``2nmd`` flops), the output and the ``a``-gradient (two ``n×m`` matrix–vector products,
``4nm``), and the ``W``-gradient ``(σ'(Z) ⊙ r)ᵀ X`` (``2nmd``), plus ``O(nm)`` element-wise
work. The benchmark reports

* the **useful flop rate** of one step, ``(4nmd + 4nm) / time``, as a fraction of the
  machine's **square-matmul** rate measured in the same run (``2k³`` flops for a ``k × k``
  product; the target of issue #6 is at least 30% at ``m = 10⁴``, ``n = 10³``, ``d = 20``);
* the same against a matmul of the step's own shape (``n × d`` times ``d × m``), which is
  memory-bound at ``d = 20`` and is the realistic ceiling;
* the autograd step (``torch.autograd`` on the same risk) as a baseline;
* the chunk size's effect, and the scaling of the step time in ``m`` and ``n``.

Times are the fastest of the repeats (other tenants only ever add time); the matmul rates are
measured the same way in the same process, so the fractions compare like with like.

Run: ``python benchmarks/bench_meanfield.py [--quick] [--threads N]`` (writes
``benchmarks/out/meanfield.json``).
"""

from __future__ import annotations

import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"  # before NumPy/SciPy load OpenBLAS (see _common)

import statistics
import sys
import time

import _common as C
import torch

from valleys.meanfield import init_two_layer, two_layer_gradients


def step_fn(a, W, X, y, chunk_size=None, lr=0.1):
    """One mean-field GD step (what ``train_two_layer`` does per step)."""
    m = a.shape[0]

    def run():
        g = two_layer_gradients(a, W, X, y, chunk_size=chunk_size)
        return a - lr * m * g.grad_a, W - lr * m * g.grad_W

    return run


def autograd_step_fn(a, W, X, y, lr=0.1):
    m = a.shape[0]

    def run():
        a_, W_ = a.clone().requires_grad_(True), W.clone().requires_grad_(True)
        f = torch.relu(X @ W_.T) @ a_ / m
        loss = 0.5 * (f - y).pow(2).mean()
        ga, gW = torch.autograd.grad(loss, (a_, W_))
        return a - lr * m * ga, W - lr * m * gW

    return run


def problem(m, n, d, dtype, seed=0):
    a, W = init_two_layer(m, d, seed=seed, dtype=dtype)
    g = torch.Generator().manual_seed(seed + 1)
    X = torch.randn(n, d, generator=g, dtype=dtype)
    y = torch.sin(X[:, 0])
    return a, W, X, y


def useful_flops(m, n, d):
    return 4 * n * m * d + 4 * n * m


def best_time(fn, repeats, min_total_s=0.5):
    """Fastest wall time of ``fn()`` (noise on a shared machine only adds time), and the median
    CPU time of this process per call."""
    walls, cpus = [], []
    while len(walls) < repeats or (sum(walls) < min_total_s and len(walls) < 50):
        cpu0, wall0 = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - wall0)
        cpus.append(time.process_time() - cpu0)
    return min(walls), statistics.median(cpus)


def square_matmul_rate(k, dtype, repeats):
    A = torch.randn(k, k, dtype=dtype)
    B = torch.randn(k, k, dtype=dtype)
    A @ B
    return 2 * k**3 / best_time(lambda: A @ B, repeats)[0]


def shape_matmul_rate(m, n, d, dtype, repeats):
    X = torch.randn(n, d, dtype=dtype)
    W = torch.randn(m, d, dtype=dtype)
    X @ W.T
    return 2 * n * m * d / best_time(lambda: X @ W.T, repeats)[0]


def main() -> None:
    args = C.parse_args(__doc__.splitlines()[0], lambda parser: parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: _common's 2)"))
    threads_line = C.setup_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
        threads_line = f"torch.set_num_threads({args.threads}), OPENBLAS_NUM_THREADS=1"
    repeats = 3 if args.quick else 7
    m, n, d = 10_000, 1_000, 20
    results = {"shape": {"m": m, "n": n, "d": d}, "rows": [], "scaling": []}
    lines = [f"# Mean-field flow step ({threads_line})", ""]
    for dtype in (torch.float32, torch.float64):
        peak = square_matmul_rate(2048, dtype, repeats)
        shaped = shape_matmul_rate(m, n, d, dtype, repeats)
        a, W, X, y = problem(m, n, d, dtype)
        step_fn(a, W, X, y)()  # warm-up
        contenders = [("valleys step (default chunks)", step_fn(a, W, X, y))]
        for chunk in ([n, 64] if args.quick else [n, 256, 64, 16]):
            contenders.append((f"valleys step, chunk_size={chunk}",
                               step_fn(a, W, X, y, chunk_size=chunk)))
        contenders.append(("autograd step", autograd_step_fn(a, W, X, y)))
        for name, fn in contenders:
            fn()
            seconds, cpu = best_time(fn, repeats)
            rate = useful_flops(m, n, d) / seconds
            row = {"dtype": str(dtype).replace("torch.", ""), "contender": name,
                   "seconds": seconds, "cpu_seconds": cpu, "gflops": rate / 1e9,
                   "fraction_of_square_matmul": rate / peak,
                   "fraction_of_same_shape_matmul": rate / shaped,
                   "square_matmul_gflops": peak / 1e9, "shape_matmul_gflops": shaped / 1e9}
            results["rows"].append(row)
            print(f"  {row['dtype']:8s} {name:34s} {seconds * 1e3:8.2f} ms  "
                  f"{row['gflops']:6.1f} GF/s  {100 * row['fraction_of_square_matmul']:5.1f}% "
                  f"of square matmul ({peak / 1e9:.1f} GF/s)", file=sys.stderr, flush=True)
    lines.append(C.markdown_table(
        ["dtype", "contender", "ms / step (best)", "GFLOP/s", "% of square matmul",
         "% of same-shape matmul", "square matmul GFLOP/s"],
        [[r["dtype"], r["contender"], 1e3 * r["seconds"], r["gflops"],
          100 * r["fraction_of_square_matmul"], 100 * r["fraction_of_same_shape_matmul"],
          r["square_matmul_gflops"]] for r in results["rows"]]))
    # Scaling in particles and data (float32, default chunks).
    ms = (1_000, 3_000, 10_000) if args.quick else (1_000, 3_000, 10_000, 30_000)
    ns = (250, 1_000) if args.quick else (250, 500, 1_000, 2_000, 4_000)
    for mm in ms:
        for nn in ns:
            a, W, X, y = problem(mm, nn, d, torch.float32)
            fn = step_fn(a, W, X, y)
            fn()
            seconds = best_time(fn, repeats, min_total_s=0.2)[0]
            results["scaling"].append({"m": mm, "n": nn, "seconds": seconds,
                                       "ns_per_particle_datum": 1e9 * seconds / (mm * nn)})
    lines += ["", "Scaling (float32, d = 20, default chunks):", "", C.markdown_table(
        ["m", "n", "ms / step", "ns per (particle × datum)"],
        [[s["m"], s["n"], 1e3 * s["seconds"], s["ns_per_particle_datum"]]
         for s in results["scaling"]])]
    lines += ["", C.load_line()]
    path = C.write_json(args.out, "meanfield", results)
    print("\n".join(lines))
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
