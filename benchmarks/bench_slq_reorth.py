"""Spectral density by SLQ with full, selective and no reorthogonalization.

Issue #18 asks for selective reorthogonalization for long Lanczos runs: SLQ takes ``m`` steps
per probe, and full reorthogonalization stores ``p × m`` numbers and spends ``j`` inner
products of length ``p`` at step ``j``. ``spectral_density(..., reorthogonalize=...)`` offers
``"selective"`` (Parlett & Scott: only against converged Ritz vectors; the basis is stored but
read only when a Ritz pair converges) and ``"none"`` (the three-term recurrence, three
vectors). Measured on TinyGPT of the model zoo (4 layers, d = 128, 0.8M parameters, random
tokens, at initialization), ``m`` steps and 2 probes (same seed, same probes):

* time (median of round-robin runs, operator built once) and the stored basis bytes;
* the nodes: largest Ritz value of each, and the number of copies of it (ghosts);
* the density's L1 distance to the full-reorthogonalization density on the same grid.

Run: ``python benchmarks/bench_slq_reorth.py [--quick]`` (writes
``benchmarks/out/slq_reorth.json``).
"""

from __future__ import annotations

import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"  # before NumPy/SciPy load OpenBLAS (see _common)

import sys

import _common as C
import torch
from bench_hvp_cost import build_zoo

import valleys

MODES = ("full", "selective", "none")


def main() -> None:
    args = C.parse_args(__doc__.splitlines()[0])
    threads = C.setup_threads()
    quick = args.quick
    steps, probes, repeats = (40, 1, 1) if quick else (150, 2, 3)
    obj, batch = build_zoo("TinyGPT", quick, torch.device("cpu"))
    H = valleys.hessian(obj)
    H.matvec(torch.zeros(obj.dim))  # build the first-order graph once, outside the timing
    top = valleys.eigsh(H, k=1, which="magnitude", tol=1e-6).values.item()
    span = 1.05 * abs(top)
    grid = torch.linspace(-span, span, 2000, dtype=torch.float64)
    sigma = 0.01 * span

    def contender(mode: str) -> C.Contender:
        def run():
            d = valleys.spectral_density(H, num_probes=probes, lanczos_steps=steps, grid=grid,
                                         sigma=sigma, seed=0, reorthogonalize=mode)
            return {"density": d.density, "nodes": d.nodes, "basis_bytes": d.basis_bytes,
                    "matvecs": d.matvecs}
        return C.Contender(mode, run)

    contenders = [contender(mode) for mode in MODES]
    print(f"[TinyGPT p={obj.dim}, {steps} steps x {probes} probes]", file=sys.stderr)
    C.run_interleaved(contenders, repeats=repeats, budget_s=600.0)
    full = contenders[0].result
    rows = []
    for c in contenders:
        r = c.result
        largest = float(r["nodes"].max())
        copies = int(((r["nodes"][0] - largest).abs() <= 1e-4 * abs(largest)).sum())
        l1 = float(torch.trapezoid((r["density"] - full["density"]).abs(), grid))
        rows.append([c.name, r["matvecs"], c.median, C.ratio(c.median, contenders[0].median),
                     r["basis_bytes"] / 2**20, largest, copies, l1])
    headers = ["reorthogonalize", "HVPs", "time (s)", "time ÷ full", "stored basis (MiB)",
               "largest node", "copies of it (probe 1)", "L1 to full density"]
    table = C.markdown_table(headers, rows)
    print(f"TinyGPT, p = {obj.dim}, batch {batch}; {steps} steps × {probes} probes; "
          f"largest |λ| by eigsh: {top:.6g}\n")
    print(table)
    print(f"\n{threads}; {C.load_line()}")
    path = C.write_json(args.out, "slq_reorth", {"rows": rows, "headers": headers,
                                                 "dim": obj.dim, "steps": steps,
                                                 "probes": probes, "top": top, "table": table,
                                                 "others_cpu_share": C.LOAD.others_share()})
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
