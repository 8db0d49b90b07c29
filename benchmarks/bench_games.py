"""Cost and accuracy per unit of compute of the mean-field game solvers (valleys.games).

Two questions:

1. **Cost per outer step** of ``valleys.games.solve`` against the number of particles ``n``
   (both players) and, for the quasistatic method, the number of inner steps ``K``: wall and CPU
   milliseconds per outer step on the quadratic–bilinear game (d = 2) and the torus game
   ``cos(x − y)`` (d = 1). A quasistatic outer step costs ``K + 1`` payoff evaluations, the
   others one; each evaluation builds the ``n × m`` payoff matrix and back-propagates through it.
2. **Accuracy per unit of compute** on the closed-form games: the error to the known
   equilibrium (W2 of the Gaussian fits for the quadratic game, the exact NI error on the torus)
   against payoff evaluations and CPU seconds, for each method (quasistatic with several ``K``)
   at the same step ``η``, until a fixed budget of evaluations; reported: the error at the
   budget, and the evaluations and CPU time first reaching 2 × the finite-``n`` floor.

Run: ``python benchmarks/bench_games.py [--quick] [--threads 1]`` (writes
``benchmarks/out/games.json``). Times are medians of repeats, in one process, round-robin.
"""

from __future__ import annotations

import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"  # before NumPy/SciPy load OpenBLAS (see _common)

import math
import sys
import time

import _common as C
import torch

from valleys.games import (
    QuadraticBilinear,
    TranslationGame,
    gaussian_w2,
    solve,
)

A = torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=torch.float64)
QUADRATIC = QuadraticBilinear(A, a=1.0, b=2.0)
TORUS = TranslationGame("cos")
TAU, LR = 0.5, 0.05


def _start(game: str, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict]:
    g = torch.Generator().manual_seed(seed)
    if game == "quadratic":
        return (torch.randn(n, 2, generator=g, dtype=torch.float64) + 3.0,
                torch.randn(n, 2, generator=g, dtype=torch.float64) - 2.0, {})
    x = torch.remainder(0.3 * torch.randn(n, 1, generator=g, dtype=torch.float64) + 1.0,
                        2 * math.pi)
    y = torch.remainder(0.3 * torch.randn(n, 1, generator=g, dtype=torch.float64) + 2.5,
                        2 * math.pi)
    return x, y, {"x_space": "torus", "y_space": "torus"}


def _payoff(game: str):
    return QUADRATIC if game == "quadratic" else TORUS


def cost_per_step(game: str, sizes, inner, steps: int, repeats: int) -> list[dict]:
    """Median ms per outer step for each (method, n, K)."""
    rows = []
    configs = [("descent-ascent", None), ("wfr", None)] + [("quasistatic", k) for k in inner]
    for n in sizes:
        x0, y0, space = _start(game, n)
        contenders = []
        for method, k in configs:
            options = dict(space)
            if k is not None:
                options["inner_steps"] = k

            def run(method=method, options=options, x0=x0, y0=y0):
                solve(_payoff(game), x0, y0, method, temperature=TAU, steps=steps, lr=LR,
                      seed=0, **options)
                return {}

            label = method if k is None else f"quasistatic K={k}"
            contenders.append(C.Contender(f"{label} n={n}", run, warmup=run))
        C.run_interleaved(contenders, repeats=repeats, budget_s=5.0, log=False)
        for (method, k), c in zip(configs, contenders, strict=True):
            evals = 1 if k is None else k + 1
            rows.append({"game": game, "method": method, "inner_steps": k, "n": n,
                         "ms_per_step": 1e3 * c.best / steps,
                         "cpu_ms_per_step": 1e3 * c.cpu_median / steps,
                         "evaluations_per_step": evals,
                         "ms_per_evaluation": 1e3 * c.best / (steps * evals),
                         "error": c.error})
    return rows


def _error(game: str, state_x, state_y, wx=None, wy=None) -> float:
    if game == "quadratic":
        eye, zero = torch.eye(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
        vx, vy = QUADRATIC.equilibrium_variances(TAU)
        return (gaussian_w2(state_x, zero, vx * eye, wx)
                + gaussian_w2(state_y, zero, vy * eye, wy))
    return TORUS.ni_error(state_x, state_y, wx, wy)


def _floor(game: str, n: int) -> float:
    if game == "torus":
        return 2 * math.sqrt(math.pi / (4 * n))
    g = torch.Generator().manual_seed(1)
    vx, vy = QUADRATIC.equilibrium_variances(TAU)
    ex = torch.randn(n, 2, generator=g, dtype=torch.float64) * math.sqrt(vx)
    ey = torch.randn(n, 2, generator=g, dtype=torch.float64) * math.sqrt(vy)
    return _error(game, ex, ey)


def accuracy_per_compute(game: str, n: int, budget: int, inner) -> list[dict]:
    """Error vs evaluations and CPU time for each method, up to ``budget`` evaluations."""
    rows = []
    floor = _floor(game, n)
    configs = [("descent-ascent", None), ("wfr", None)] + [("quasistatic", k) for k in inner]
    for method, k in configs:
        x0, y0, options = _start(game, n)
        per_step = 1 if k is None else k + 1
        steps = max(1, budget // per_step)
        cpu = {"t0": time.process_time(), "monitor": 0.0}
        if k is not None:
            options["inner_steps"] = k

        def monitor(state, cpu=cpu):
            # the solver's CPU time so far, without the time spent in this monitor
            entered = time.process_time()
            error = _error(game, state.x, state.y, state.x_weights, state.y_weights)
            spent = entered - cpu["t0"] - cpu["monitor"]
            cpu["monitor"] += time.process_time() - entered
            return {"error": error, "cpu": spent}

        cpu["t0"], cpu["monitor"] = time.process_time(), 0.0
        result = solve(_payoff(game), x0, y0, method, temperature=TAU, steps=steps, lr=LR,
                       seed=0, monitor=monitor, record_every=max(1, steps // 100), **options)
        hit = next((h for h in result.history if h["error"] <= 2 * floor), None)
        rows.append({
            "game": game, "method": method, "inner_steps": k, "n": n, "budget": budget,
            "floor": floor, "final_error": result.history[-1]["error"],
            "evaluations_to_2x_floor": None if hit is None else hit["evaluations"],
            "cpu_s_to_2x_floor": None if hit is None else hit["cpu"],
            "cpu_s_total": result.history[-1]["cpu"],
            "curve": [(h["evaluations"], h["error"]) for h in result.history],
        })
    return rows


def main() -> None:
    args = C.parse_args(__doc__.splitlines()[0], extra=lambda p: p.add_argument(
        "--threads", type=int, default=1,
        help="torch threads (1: the matrices are small; threads add overhead)"))
    torch.set_num_threads(args.threads)
    sizes = (50, 200, 800) if args.quick else (50, 100, 200, 400, 800, 1600)
    inner = (1, 5, 20) if args.quick else (1, 5, 10, 20)
    steps = 10 if args.quick else 20
    repeats = 2 if args.quick else 3
    budget = 1200 if args.quick else 4000
    cost, accuracy = [], []
    for game in ("quadratic", "torus"):
        print(f"cost per step: {game}", file=sys.stderr, flush=True)
        cost += cost_per_step(game, sizes, inner, steps, repeats)
        print(f"accuracy per compute: {game}", file=sys.stderr, flush=True)
        accuracy += accuracy_per_compute(game, 200, budget, inner)

    headers = ["game", "method", "K", "n", "ms/step", "CPU ms/step", "evals/step", "ms/eval"]
    table = [[r["game"], r["method"], r["inner_steps"] or "—", r["n"], r["ms_per_step"],
              r["cpu_ms_per_step"], r["evaluations_per_step"], r["ms_per_evaluation"]]
             for r in cost]
    headers2 = ["game", "method", "K", "floor", f"error at {budget} evals",
                "evals to 2x floor", "CPU s to 2x floor", "CPU s total"]
    table2 = [[r["game"], r["method"], r["inner_steps"] or "—", r["floor"], r["final_error"],
               r["evaluations_to_2x_floor"], r["cpu_s_to_2x_floor"], r["cpu_s_total"]]
              for r in accuracy]
    print(f"## Cost per outer step (torch threads {torch.get_num_threads()}, τ = {TAU}, "
          f"η = {LR}, {steps} steps per timing, best of {repeats})\n")
    print(C.markdown_table(headers, table))
    print(f"\n## Accuracy per unit of compute (n = 200 per player, budget {budget} payoff "
          "evaluations, same η for all methods)\n")
    print(C.markdown_table(headers2, table2))
    print("\n" + C.load_line())
    path = C.write_json(args.out, "games", {"cost": cost, "accuracy": accuracy,
                                            "threads": torch.get_num_threads()})
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
