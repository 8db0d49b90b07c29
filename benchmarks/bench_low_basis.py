"""Lanczos with a Krylov basis stored in bfloat16/float16 against the float32 basis.

Issue #18 asks to offer a lower-precision basis where the basis memory, ``(ncv + 1) · p``
numbers, rivals the model's. ``eigsh(..., basis_dtype=...)`` stores it in 2 bytes a number and
takes every product with it in float32. This benchmark measures what that costs in products,
time and accuracy at the same target (``tol=1e-4``, ``accuracy="value"``):

* digits-mlp (trained checkpoint, 26k parameters): the sharpness (k = 1) and the top-10, the
  latter also with ``ncv = 42`` for the low bases (the same bytes as float32 at ``ncv = 21``,
  enough to need no restart);
* TinyGPT of the model zoo (4 layers, d = 128, 0.8M parameters, random tokens, at
  initialization): the sharpness.

The true error is against a float64 reference (digits-mlp) or, for TinyGPT, against a float32
solve to ``tol=1e-7`` whose own bound is reported. Times are medians of round-robin runs in one
process, each including the operator's construction.

Run: ``python benchmarks/bench_low_basis.py [--quick]`` (writes ``benchmarks/out/low_basis.json``).
"""

from __future__ import annotations

import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"  # before NumPy/SciPy load OpenBLAS (see _common)

import sys
import warnings

import _common as C
import bench_eigenvalues as E
import torch
from bench_hvp_cost import build_zoo

import valleys
from valleys.problems import load_problem

TOL = 1e-4
BASES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
# (name, k, ncv for the low bases or None for the default)
CASES = (("digits-mlp", 1, None), ("digits-mlp", 10, None), ("digits-mlp", 10, 42),
         ("TinyGPT", 1, None))


def objective_and_reference(name: str, quick: bool) -> tuple[valleys.Objective, dict]:
    if name == "TinyGPT":
        obj, _ = build_zoo(name, quick, torch.device("cpu"))
        ref = valleys.eigsh(valleys.hessian(obj), k=10, tol=1e-7, seed=1)
        return obj, {"values": ref.values.tolist(), "bound": float(ref.error_bounds.max()),
                     "source": "float32, tol 1e-7"}
    reference = E.reference(name)
    return load_problem(name).objective(), {**reference, "bound": 0.0,
                                            "source": "float64"}


def contender(obj: valleys.Objective, k: int, basis: str, ncv: int | None) -> C.Contender:
    def run():
        H = valleys.hessian(obj)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # not-converged notes are data
            result = valleys.eigsh(H, k=k, tol=TOL, accuracy="value", seed=0, ncv=ncv,
                                   basis_dtype=BASES[basis])
        return {"values": result.values.tolist(), "bounds": result.error_bounds.tolist(),
                "matvecs": result.matvecs, "restarts": result.restarts,
                "converged": bool(result.converged), "basis_bytes": result.basis_bytes}

    label = f"{basis} basis" + ("" if ncv is None else f", ncv={ncv}")
    return C.Contender(label, run)


def bench_case(name: str, k: int, ncv: int | None, obj, reference: dict, repeats: int,
               budget_s: float) -> list[list]:
    contenders = [contender(obj, k, "float32", None)]
    contenders += [contender(obj, k, basis, ncv) for basis in ("bfloat16", "float16")]
    print(f"[{name} top-{k}, ncv={ncv}]", file=sys.stderr)
    C.run_interleaved(contenders, repeats=repeats, budget_s=budget_s)
    base = contenders[0]
    rows = []
    for c in contenders:
        if c.error is not None:
            rows.append([f"{name} top-{k}", c.name, *[None] * 9, f"failed: {c.error}"])
            continue
        r = c.result
        truth = reference["values"][:k]
        errors = [abs(v - t) for v, t in zip(r["values"], truth, strict=True)]
        rows.append([
            f"{name} top-{k}", c.name, r["matvecs"], r["restarts"], r["basis_bytes"] / 2**20,
            c.median, C.ratio(c.median, base.median), C.max_relative_error(r["values"], truth),
            max(b / abs(t) for b, t in zip(r["bounds"], truth, strict=True)),
            all(b + reference["bound"] >= e for b, e in zip(r["bounds"], errors, strict=True)),
            r["converged"], "",
        ])
    return rows


HEADERS = ["case", "basis", "HVPs", "restarts", "basis (MiB)", "time (s)", "time ÷ float32",
           "true rel. error", "rel. bound", "bound ≥ error", "converged", "note"]


def main() -> None:
    args = C.parse_args(__doc__.splitlines()[0])
    threads = C.setup_threads()
    repeats, budget_s = (1, 5.0) if args.quick else (3, 60.0)
    cases = CASES[:1] if args.quick else CASES
    rows, references, objects = [], {}, {}
    for name, k, ncv in cases:
        if name not in objects:
            print(f"[{name}] reference", file=sys.stderr)
            objects[name], references[name] = objective_and_reference(name, args.quick)
        rows += bench_case(name, k, ncv, objects[name], references[name], repeats, budget_s)
    table = C.markdown_table(HEADERS, rows)
    print(table)
    print(f"\n{threads}; {C.load_line()}")
    path = C.write_json(args.out, "low_basis", {"tol": TOL, "rows": rows, "headers": HEADERS,
                                                "references": references, "table": table,
                                                "others_cpu_share": C.LOAD.others_share()})
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
