"""Curvature on an accelerator: valleys against PyHessian and curvlinops on one device.

Two synthetic problems, generated on the device with a seeded ``torch.Generator`` (no
downloads), float32, cross-entropy against the labels of a random linear teacher, the whole
data set as one chunk, models at their seeded initialization:

* ``mlp``: ``valleys.models.MLP((512, 1024, 1024, 10), "gelu")``, 1.58 M parameters,
  n = 32768 samples of dimension 512;
* ``cnn``: ``valleys.models.SmallCNN((3, 32, 32), 10, channels=(64, 128, 256, 256),
  stride=2, activation="gelu")``, 0.96 M parameters, n = 8192 images 3x32x32.

Sections (each contender warmed up once; the device is synchronized before every clock read):

1. **HVP throughput**: seconds per Hessian-vector product of valleys ``hessian(obj).matvec``
   (cached double backward), ``.matmat`` on a block of 8 vectors (per vector) and
   ``cache=False``; PyHessian's product on the graph its constructor keeps
   (``pyhessian.utils.hessian_vector_product``) and its ``dataloader_hv_product`` (rebuilds the
   graph per product); curvlinops' ``HessianLinearOperator`` (``@`` a vector and a block of 8).
   One gradient ``obj.gradient()`` is the unit. Contenders run one after another (each frees
   its graph before the next is built: the device is not shared, so round-robin buys nothing
   and would hold every graph at once); the median of the repeats is reported, with the peak
   device memory of each contender and the relative difference of its product to valleys'.
2. **Top eigenvalue**: ``valleys.eigsh(hessian(obj), k=1, tol=1e-3)`` against PyHessian's
   ``eigenvalues(top_n=1)`` (power iteration, its defaults ``maxIter=100, tol=1e-3``): time
   (including building each tool's graph), HVPs, the values and their relative difference, and
   both against a tighter valleys reference (``tol=1e-5``, when the budget allows).
3. **Hutchinson trace** with the same number of Rademacher probes: ``valleys.trace(...,
   method="hutchinson")`` against PyHessian's ``trace`` (its early stop disabled): seconds per
   probe and both estimates.
4. **Sharpness tracking** on the device: the edge-of-stability reproduction's quick problem
   (digits, tanh MLP) moved to the device, one GD step size, GD untracked vs tracked every 10
   steps (warm-started Lanczos), as in ``bench_sharpness_tracking.py``.

The whole run is bounded: ``--budget-s`` (default 90 s, counted after the imports); a
contender whose expected cost (HVPs x measured seconds per HVP) does not fit in what is left is
skipped with a note. A failing anchor (import, device, out of memory) is recorded with its error
and the run goes on.

Run: ``python benchmarks/bench_gpu.py --device cuda --out OUT`` (``--quick``: tiny sizes for a
CPU smoke test; ``--scale s`` multiplies the sample counts; ``--tf32`` allows TF32 in CUDA
matmuls and convolutions, off by default so that everything is full float32). Writes
``OUT/gpu.json``.
"""

from __future__ import annotations

import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"  # before NumPy/SciPy load OpenBLAS (see _common)

import argparse
import gc
import importlib
import math
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import _common as C
import torch
from torch import nn

import valleys
from valleys.models import MLP, SmallCNN

NAME = "gpu"
BLOCK = 8  # vectors per matmat
EIG_TOL = 1e-3  # valleys' tolerance; PyHessian's default tol is also 1e-3 (a relative change)
REF_TOL = 1e-5  # tighter valleys reference for the top eigenvalue
REF_MAX_MATVECS = 200
PYHESSIAN_MAXITER = 100  # PyHessian's default for eigenvalues()
AGREE = 1e-2  # top eigenvalues of the two tools "agree" when within 1% of each other
NUM_CLASSES = 10


# -- problems ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    """Size of one synthetic problem."""

    name: str
    kind: str  # "mlp" or "cnn"
    n: int
    input_shape: tuple[int, ...]
    widths: tuple[int, ...] = ()  # MLP hidden widths
    channels: tuple[int, ...] = ()  # CNN conv channels (stride 2 each)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "n": self.n,
                "input_shape": list(self.input_shape), "widths": list(self.widths),
                "channels": list(self.channels)}


FULL = (
    Spec("mlp", "mlp", 32768, (512,), widths=(1024, 1024)),
    Spec("cnn", "cnn", 8192, (3, 32, 32), channels=(64, 128, 256, 256)),
)
QUICK = (
    Spec("mlp", "mlp", 2048, (64,), widths=(128, 128)),
    Spec("cnn", "cnn", 256, (3, 16, 16), channels=(8, 16, 32)),
)


@dataclass
class Problem:
    """A model on the device, its data, the valleys objective and the anchors' criterion."""

    spec: Spec
    model: nn.Module
    X: torch.Tensor
    Y: torch.Tensor
    obj: valleys.Objective

    @property
    def dim(self) -> int:
        return self.obj.dim


def build_problem(spec: Spec, device: torch.device, dtype: torch.dtype, seed: int = 0) -> Problem:
    """Seeded synthetic inputs on the device, labels of a random linear teacher, seeded model."""
    gen = torch.Generator(device=device).manual_seed(seed)
    X = torch.randn(spec.n, *spec.input_shape, generator=gen, device=device, dtype=dtype)
    features = math.prod(spec.input_shape)
    teacher = torch.randn(features, NUM_CLASSES, generator=gen, device=device, dtype=dtype)
    Y = (X.reshape(spec.n, -1) @ teacher).argmax(1)
    if spec.kind == "mlp":
        model = MLP((features, *spec.widths, NUM_CLASSES), "gelu", seed=seed)
    else:
        model = SmallCNN(spec.input_shape, NUM_CLASSES, channels=spec.channels,
                         activation="gelu", stride=2, pool="avg", seed=seed)
    model = model.to(device=device, dtype=dtype)
    return Problem(spec, model, X, Y, valleys.Objective(model, "ce", (X, Y)))


# -- device and time ----------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    """Wait for queued kernels, so a clock read after it covers the work launched before."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def free(device: torch.device) -> None:
    """Drop garbage and cached device blocks between contenders."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return None


class Clock:
    """Seconds left of the whole run's budget."""

    def __init__(self, budget_s: float) -> None:
        self.start = time.perf_counter()
        self.budget_s = budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed()


def error_string(error: BaseException) -> str:
    last = traceback.extract_tb(error.__traceback__)[-1:] if error.__traceback__ else []
    where = f" (at {last[0].filename.rsplit('/', 1)[-1]}:{last[0].lineno})" if last else ""
    return f"{type(error).__name__}: {str(error)[:300]}{where}"


def measure(
    name: str, fn: Callable[[], Any], device: torch.device, *, repeats: int, budget_s: float,
    per_call: int = 1, clock: Clock | None = None, warmup: bool = True,
) -> dict[str, Any]:
    """Warm up ``fn`` once (if ``warmup``), then time it (synchronized) up to ``repeats`` times.

    Stops repeating once the timed calls add up to ``budget_s`` or the run's clock is out (at
    least one timed call). ``per_call`` divides the median (products per call). Any exception
    is recorded in ``error``; the device's peak memory covers the warm-up and the timed calls.
    """
    record: dict[str, Any] = {"name": name, "times_s": [], "error": None, "result": None}
    reset_peak(device)
    try:
        if warmup:
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            record["warmup_s"] = time.perf_counter() - start
        for _ in range(repeats):
            if record["times_s"] and (sum(record["times_s"]) >= budget_s
                                      or (clock is not None and clock.left() < 0)):
                break
            sync(device)
            start = time.perf_counter()
            record["result"] = fn()
            sync(device)
            record["times_s"].append(time.perf_counter() - start)
    except Exception as error:  # an anchor failing (or running out of memory) must not sink the run
        record["error"] = error_string(error)
    times = record["times_s"]
    record["median_s"] = statistics.median(times) if times else None
    record["per_product_s"] = record["median_s"] / per_call if times else None
    record["peak_gib"] = peak_gib(device)
    shown = "failed: " + record["error"] if record["error"] else f"{record['median_s']:.4f} s"
    print(f"    {name:<44s} {shown}", file=sys.stderr, flush=True)
    return record


def skipped(name: str, why: str) -> dict[str, Any]:
    print(f"    {name:<44s} skipped: {why}", file=sys.stderr, flush=True)
    return {"name": name, "times_s": [], "error": f"skipped: {why}", "result": None,
            "median_s": None, "per_product_s": None, "peak_gib": None}


# -- anchors ------------------------------------------------------------------------------------
def import_anchor(module: str) -> tuple[Any, str | None]:
    """``(module, None)`` or ``(None, error)``."""
    try:
        return importlib.import_module(module), None
    except Exception as error:
        return None, error_string(error)


def pyhessian_state(pb: Problem, device: torch.device, *, dataloader: bool = False):
    """PyHessian's ``hessian`` object; ``cuda=True`` on CUDA (it calls ``.cuda()`` itself)."""
    import pyhessian

    C.clear_grads(pb.model)
    kwargs = {"dataloader": [(pb.X, pb.Y)]} if dataloader else {"data": (pb.X, pb.Y)}
    return pyhessian.hessian(pb.model, nn.CrossEntropyLoss(), cuda=device.type == "cuda",
                             **kwargs)


def split_like(v: torch.Tensor, params) -> list[torch.Tensor]:
    return [t.view_as(p) for t, p in zip(v.split([p.numel() for p in params]), params,
                                        strict=True)]


def curvlinops_operator(pb: Problem):
    from curvlinops import HessianLinearOperator

    params = [p for p in pb.model.parameters() if p.requires_grad]
    return HessianLinearOperator(pb.model, nn.CrossEntropyLoss(), params, [(pb.X, pb.Y)],
                                 check_deterministic=False)


# -- 1. HVP throughput ----------------------------------------------------------------------------
def bench_hvp(pb: Problem, device: torch.device, repeats: int, budget_s: float,
              clock: Clock) -> dict[str, Any]:
    """Seconds per product of every contender; products checked against valleys' matvec."""
    gen = torch.Generator(device=device).manual_seed(1)
    V = torch.randn(pb.dim, BLOCK, generator=gen, device=device, dtype=pb.X.dtype)
    v = V[:, 0].contiguous()
    products: dict[str, torch.Tensor] = {}
    records = []

    def keep(key: str, fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def run():
            products[key] = fn()
        return run

    def go(name, key, make, per_call=1):
        if clock.left() < 0:
            records.append({**skipped(name, "run budget spent"), "key": key})
            return
        state: dict[str, Any] = {}
        try:
            fn = make(state)
        except Exception as error:
            records.append({**skipped(name, "setup failed"), "key": key,
                            "error": error_string(error)})
            return
        record = measure(name, keep(key, fn), device, repeats=repeats, budget_s=budget_s,
                         per_call=per_call, clock=clock)
        records.append({**record, "key": key})
        state.clear()
        C.clear_grads(pb.model)
        free(device)

    def valleys_op(state, **kw):
        state["H"] = valleys.hessian(pb.obj, **kw)
        return state["H"]

    go("gradient (unit)", "gradient", lambda s: pb.obj.gradient)
    go("valleys matvec (cached double backward)", "valleys",
       lambda s: (lambda H: lambda: H.matvec(v))(valleys_op(s)))
    go(f"valleys matmat ({BLOCK} vectors), per vector", "valleys_block",
       lambda s: (lambda H: lambda: H.matmat(V))(valleys_op(s)), per_call=BLOCK)
    go("valleys matvec, cache=False", "valleys_uncached",
       lambda s: (lambda H: lambda: H.matvec(v))(valleys_op(s, cache=False)))

    _, pyh_error = import_anchor("pyhessian")
    if pyh_error is None:
        utils = importlib.import_module("pyhessian.utils")

        def pyh_cached(state):
            state["h"] = h = pyhessian_state(pb, device)
            vs = split_like(v, h.params)
            return lambda: torch.cat([t.reshape(-1) for t in
                                      utils.hessian_vector_product(h.gradsH, h.params, vs)])

        def pyh_loader(state):
            state["h"] = h = pyhessian_state(pb, device, dataloader=True)
            vs = split_like(v, h.params)
            return lambda: torch.cat([t.reshape(-1) for t in h.dataloader_hv_product(vs)[1]])

        go("PyHessian hv product (cached graph)", "pyhessian", pyh_cached)
        go("PyHessian dataloader_hv_product", "pyhessian_loader", pyh_loader)
    else:
        for name, key in (("PyHessian hv product (cached graph)", "pyhessian"),
                          ("PyHessian dataloader_hv_product", "pyhessian_loader")):
            records.append({**skipped(name, "import failed"), "key": key, "error": pyh_error})

    _, cvl_error = import_anchor("curvlinops")
    if cvl_error is None:
        def cvl(state, block=False):
            state["op"] = op = curvlinops_operator(pb)
            return (lambda: op @ V) if block else (lambda: op @ v)

        go("curvlinops HessianLinearOperator @ v", "curvlinops", cvl)
        go(f"curvlinops @ ({BLOCK} vectors), per vector", "curvlinops_block",
           lambda s: cvl(s, block=True), per_call=BLOCK)
    else:
        for name, key in (("curvlinops HessianLinearOperator @ v", "curvlinops"),
                          (f"curvlinops @ ({BLOCK} vectors), per vector", "curvlinops_block")):
            records.append({**skipped(name, "import failed"), "key": key, "error": cvl_error})

    unit = records[0]["per_product_s"]
    ours = next(r for r in records if r["key"] == "valleys")["per_product_s"]
    reference = products.get("valleys")
    for r in records:
        r.pop("result", None)
        r["in_gradients"] = C.ratio(r["per_product_s"], unit)
        r["over_valleys"] = C.ratio(r["per_product_s"], ours)
        r["rel_diff_to_valleys"] = None
        got = products.get(r["key"])
        if r["key"] != "gradient" and got is not None and reference is not None:
            got = got[:, 0] if got.dim() == 2 else got
            r["rel_diff_to_valleys"] = float(torch.linalg.vector_norm(got - reference)
                                             / torch.linalg.vector_norm(reference))
    return {"problem": pb.spec.name, "records": records}


def hvp_seconds(hvp: dict[str, Any], key: str) -> float | None:
    """Measured seconds per product of one contender (``None`` if it failed)."""
    return next((r["per_product_s"] for r in hvp["records"] if r["key"] == key), None)


# -- 2. top eigenvalue ----------------------------------------------------------------------------
def bench_eig(pb: Problem, device: torch.device, hvp: dict[str, Any], repeats: int,
              budget_s: float, clock: Clock) -> dict[str, Any]:
    """valleys Lanczos vs PyHessian power iteration for the top eigenvalue (times with builds)."""
    t_valleys = hvp_seconds(hvp, "valleys") or 0.0
    t_pyh = hvp_seconds(hvp, "pyhessian") or t_valleys
    out: dict[str, Any] = {"problem": pb.spec.name, "records": []}

    def fits(matvecs: int, t: float) -> bool:
        return clock.left() > matvecs * t * 1.5

    def run_valleys():
        H = valleys.hessian(pb.obj)
        res = valleys.eigsh(H, k=1, tol=EIG_TOL, seed=0)
        return {"value": float(res.values[0]), "matvecs": res.matvecs,
                "converged": bool(res.converged)}

    if fits(60, t_valleys):
        out["records"].append(measure("valleys eigsh(k=1, tol=1e-3)", run_valleys, device,
                                      repeats=repeats, budget_s=budget_s, clock=clock,
                                      warmup=False))
    else:
        out["records"].append(skipped("valleys eigsh(k=1, tol=1e-3)", "run budget"))

    name = f"PyHessian eigenvalues(top_n=1, tol={EIG_TOL:g})"
    try:
        counter = C.PyHessianCounter()
    except Exception as error:
        out["records"].append({**skipped(name, "import failed"), "error": error_string(error)})
        counter = None
    if counter is not None:
        # Cap its iterations only if its default maxIter cannot fit in what is left.
        max_iter = PYHESSIAN_MAXITER
        affordable = int(max(clock.left(), 0.0) / (1.5 * max(t_pyh, 1e-9)))
        max_iter = max(2, min(max_iter, affordable))
        out["pyhessian_max_iter"] = max_iter

        def run_pyh():
            torch.manual_seed(0)  # its start vector comes from the global generator
            counter.reset()
            try:
                values, _ = pyhessian_state(pb, device).eigenvalues(maxIter=max_iter,
                                                                    tol=EIG_TOL, top_n=1)
            finally:
                C.clear_grads(pb.model)
            return {"value": float(values[0]), "matvecs": counter.count,
                    "hit_max_iter": counter.count >= max_iter}

        if fits(10, t_pyh):
            out["records"].append(measure(name, run_pyh, device, repeats=repeats,
                                          budget_s=budget_s, clock=clock, warmup=False))
        else:
            out["records"].append(skipped(name, "run budget"))
        free(device)

    out["reference"] = None
    if fits(REF_MAX_MATVECS // 2, t_valleys):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # float32 may stop short
                ref = valleys.eigsh(valleys.hessian(pb.obj), k=1, tol=REF_TOL, seed=1,
                                    max_matvecs=REF_MAX_MATVECS)
            out["reference"] = {"value": float(ref.values[0]), "matvecs": ref.matvecs,
                                "converged": bool(ref.converged), "tol": REF_TOL}
        except Exception as error:
            out["reference_error"] = error_string(error)
        free(device)
    for r in out["records"]:
        res = r.get("result") or {}
        r.update(res)
        if out["reference"] is not None and "value" in res:
            r["rel_error_to_reference"] = abs(res["value"] - out["reference"]["value"]) / abs(
                out["reference"]["value"])
    values = [r.get("value") for r in out["records"]]
    out["rel_diff"] = (abs(values[1] - values[0]) / abs(values[0])
                       if len(values) == 2 and None not in values else None)
    out["agree"] = None if out["rel_diff"] is None else out["rel_diff"] <= AGREE
    out["time_ratio_pyhessian_over_valleys"] = (
        C.ratio(out["records"][1]["median_s"], out["records"][0]["median_s"])
        if len(out["records"]) == 2 else None)
    return out


# -- 3. Hutchinson trace --------------------------------------------------------------------------
def bench_trace(pb: Problem, device: torch.device, probes: int, repeats: int, budget_s: float,
                clock: Clock, hvp: dict[str, Any]) -> dict[str, Any]:
    """Same number of Rademacher probes through valleys and PyHessian (times with builds)."""
    t_valleys = hvp_seconds(hvp, "valleys") or 0.0
    t_pyh = hvp_seconds(hvp, "pyhessian") or t_valleys
    out: dict[str, Any] = {"problem": pb.spec.name, "probes": probes, "records": []}

    def run_valleys():
        res = valleys.trace(valleys.hessian(pb.obj), "hutchinson", num_matvecs=probes, seed=0)
        return {"value": res.value, "stderr": res.stderr, "matvecs": res.matvecs}

    name = f"valleys trace (hutchinson, {probes} probes)"
    if clock.left() > 1.5 * probes * t_valleys:
        out["records"].append(measure(name, run_valleys, device, repeats=repeats,
                                      budget_s=budget_s, per_call=probes, clock=clock,
                                      warmup=False))
    else:
        out["records"].append(skipped(name, "run budget"))

    name = f"PyHessian trace ({probes} probes)"
    try:
        counter = C.PyHessianCounter()
    except Exception as error:
        counter = None
        out["records"].append({**skipped(name, "import failed"), "error": error_string(error)})
    if counter is not None and clock.left() > 1.5 * probes * t_pyh:
        def run_pyh():
            torch.manual_seed(0)
            counter.reset()
            try:
                # tol=-inf: its early stop (relative change of the running mean) never fires.
                samples = pyhessian_state(pb, device).trace(maxIter=probes, tol=-math.inf)
            finally:
                C.clear_grads(pb.model)
            mean = statistics.fmean(samples)
            stderr = statistics.stdev(samples) / math.sqrt(len(samples))
            return {"value": mean, "stderr": stderr, "matvecs": counter.count}

        out["records"].append(measure(name, run_pyh, device, repeats=repeats,
                                      budget_s=budget_s, per_call=probes, clock=clock,
                                      warmup=False))
    elif counter is not None:
        out["records"].append(skipped(name, "run budget"))
    free(device)
    for r in out["records"]:
        r.update(r.get("result") or {})
    if len(out["records"]) == 2 and all("value" in r for r in out["records"]):
        a, b = out["records"]
        # Independent probes: the difference over its standard error should be O(1).
        out["z"] = abs(a["value"] - b["value"]) / math.hypot(a["stderr"], b["stderr"])
        out["time_ratio_pyhessian_over_valleys"] = C.ratio(b["median_s"], a["median_s"])
    return out


# -- 4. sharpness tracking ------------------------------------------------------------------------
def _gd(obj: valleys.Objective, lr: float, preset, steps: int, callbacks=()):
    """The edge-of-stability reproduction's GD run at ``lr`` (seed 0) for ``steps`` steps."""
    from valleys.train import train

    return train(obj, lr=lr, steps=steps, record_every=preset.record_every, seed=0,
                 callbacks=callbacks)


def tracking_cost(obj: valleys.Objective, lr: float, preset) -> dict[str, Any]:
    """GD untracked, then tracked every ``sharpness_every`` steps with the default warm start:
    wall and CPU times of both training loops and the tracker's HVPs (same iterates)."""
    from valleys.train import SharpnessTracker

    cpu = time.process_time()
    plain = _gd(obj, lr, preset, preset.steps).wall_time
    plain_cpu = time.process_time() - cpu
    tracker = SharpnessTracker(obj, every=preset.sharpness_every, tol=preset.tol, seed=0)
    cpu = time.process_time()
    tracked = _gd(obj, lr, preset, preset.steps, [tracker]).wall_time
    tracked_cpu = time.process_time() - cpu
    evaluations = len(tracker.history)
    return {
        "lr": lr, "sharpness_every": preset.sharpness_every, "tol": preset.tol,
        "num_parameters": obj.dim, "n": obj.n, "evaluations": evaluations,
        "untracked_s": plain, "tracked_warm_s": tracked, "untracked_cpu_s": plain_cpu,
        "tracked_warm_cpu_s": tracked_cpu, "overhead_warm_cpu": tracked_cpu / plain_cpu - 1,
        "overhead_warm": tracked / plain - 1, "matvecs_warm": tracker.total_matvecs,
        "matvecs_per_evaluation_warm": tracker.total_matvecs / evaluations,
    }


def bench_tracking(device: torch.device, steps: int, clock: Clock) -> dict[str, Any]:
    """GD untracked vs tracked every 10 steps, edge-of-stability quick problem on the device."""
    import dataclasses

    from valleys.experiments.edge_of_stability import measure as eos

    preset = dataclasses.replace(eos.PRESETS["quick"], steps=steps)
    factor = preset.gd_factors[0]
    out: dict[str, Any] = {"steps": steps, "factor": factor, "n": preset.n,
                           "widths": list(preset.widths), "tol": preset.tol,
                           "sharpness_every": preset.sharpness_every}
    try:
        obj = eos.objective(preset, 0, device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # tol 1e-6 in float32
            a0 = float(valleys.eigsh(valleys.hessian(obj), k=1, tol=1e-6, seed=0).values[0])
        lr = next(run["lr"] for run in eos.plan(preset, a0)
                  if run["optimizer"] == "gd" and run["factor"] == factor)
        _gd(obj, lr, preset, 10)  # warm-up
        sync(device)
        start = time.perf_counter()
        cost = tracking_cost(obj, lr, preset)
        sync(device)
        out.update(cost)
        out["a0"] = a0
        out["total_s"] = time.perf_counter() - start
        out["tracked_over_untracked"] = C.ratio(cost["tracked_warm_s"], cost["untracked_s"])
        out["error"] = None
    except Exception as error:
        out["error"] = error_string(error)
    print(f"    tracking: {out.get('tracked_over_untracked')} ({out['error']})", file=sys.stderr)
    return out


# -- report ---------------------------------------------------------------------------------------
def _note(r: dict[str, Any]) -> str:
    return "" if r["error"] is None else r["error"][:120]


def hvp_table(res: dict[str, Any]) -> str:
    rows = [[r["name"], None if r["per_product_s"] is None else 1e3 * r["per_product_s"],
             r["in_gradients"], r["over_valleys"], r["rel_diff_to_valleys"], r["peak_gib"],
             len(r["times_s"]), _note(r)] for r in res["records"]]
    return C.markdown_table(["contender", "ms per product", "÷ gradient", "÷ valleys matvec",
                             "rel. diff. to valleys", "peak GiB (all)", "runs", "notes"], rows)


def eig_table(res: dict[str, Any]) -> str:
    rows = []
    for r in res["records"]:
        notes = [_note(r)] if r["error"] else []
        if r.get("converged") is False:
            notes.append("not converged")
        if r.get("hit_max_iter"):
            notes.append(f"hit maxIter={res.get('pyhessian_max_iter')}")
        rows.append([r["name"], r["median_s"], r.get("matvecs"), r.get("value"),
                     r.get("rel_error_to_reference"), r["peak_gib"], len(r["times_s"]),
                     "; ".join(notes)])
    return C.markdown_table(["contender", "median (s)", "HVPs", "λ_max",
                             "rel. error to reference", "peak GiB", "runs", "notes"], rows)


def trace_table(res: dict[str, Any]) -> str:
    rows = [[r["name"], r["median_s"],
             None if r["per_product_s"] is None else 1e3 * r["per_product_s"], r.get("matvecs"),
             r.get("value"), r.get("stderr"), len(r["times_s"]), _note(r)]
            for r in res["records"]]
    return C.markdown_table(["contender", "median (s)", "ms per probe", "HVPs", "estimate",
                             "std. error", "runs", "notes"], rows)


def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"device": str(device), "torch": torch.__version__,
                            "dtype": "float32", "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info.update(name=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(),
                    matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
                    cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                    total_memory_gib=torch.cuda.get_device_properties(device).total_memory / 2**30)
    else:
        info["name"] = f"CPU ({os.cpu_count()} cores)"
    for module in ("pyhessian", "curvlinops", "backpack"):
        info[module] = C.package_version(module) if module != "backpack" else _backpack_version()
    return info


def _backpack_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("backpack-for-pytorch")
    except metadata.PackageNotFoundError:
        return None


def report(info, args, problems, hvp, eig, trace, tracking, failures, clock) -> str:
    lines = ["## Curvature on the device (bench_gpu.py)", "",
             f"device: {info['name']} ({info['device']}), torch {info['torch']}, float32"
             + (f", CUDA {info['cuda']}, TF32 matmul {info['matmul_allow_tf32']} / cuDNN "
                f"{info['cudnn_allow_tf32']}" if "cuda" in info else "")
             + f"; PyHessian {info['pyhessian']}, curvlinops {info['curvlinops']}, "
               f"BackPACK {info['backpack']}.",
             f"sizes: {'quick' if args.quick else 'full'}, scale {args.scale:g}; budget "
             f"{args.budget_s:g} s, used {clock.elapsed():.1f} s.", ""]
    lines += ["| problem | model | parameters | samples |", "|---|---|---|---|"]
    for pb in problems:
        spec = Spec(**{**pb["spec"], "input_shape": tuple(pb["spec"]["input_shape"]),
                       "widths": tuple(pb["spec"]["widths"]),
                       "channels": tuple(pb["spec"]["channels"])})
        model = (f"MLP {spec.input_shape[0]}-{'-'.join(map(str, spec.widths))}-10 gelu"
                 if spec.kind == "mlp" else
                 f"CNN {'x'.join(map(str, spec.input_shape))}, channels "
                 f"{'-'.join(map(str, spec.channels))} stride 2, gelu")
        lines.append(f"| {spec.name} | {model} | {pb['dim']} | {spec.n} |")
    lines += ["", "### 1. Hessian-vector products (one chunk, median after one warm-up)", ""]
    for res in hvp:
        lines += [f"**{res['problem']}**", "", hvp_table(res), ""]
    lines += ["### 2. Top eigenvalue (times include building each tool's graph)", ""]
    for res in eig:
        ref = res.get("reference")
        lines += [f"**{res['problem']}**: relative difference valleys vs PyHessian "
                  f"{C.fmt(res['rel_diff'])} (agree within {AGREE:g}: "
                  f"{C.fmt(res['agree'])}); PyHessian ÷ valleys time "
                  f"{C.fmt(res['time_ratio_pyhessian_over_valleys'])}; reference "
                  + ("—" if ref is None else
                     f"{ref['value']:.6g} (valleys tol={REF_TOL:g}, {ref['matvecs']} HVPs, "
                     f"converged {C.fmt(ref['converged'])})"), "", eig_table(res), ""]
    lines += ["### 3. Hutchinson trace (same number of Rademacher probes)", ""]
    for res in trace:
        lines += [f"**{res['problem']}**: PyHessian ÷ valleys time "
                  f"{C.fmt(res.get('time_ratio_pyhessian_over_valleys'))}; |difference| / "
                  f"combined std. error {C.fmt(res.get('z'))}", "", trace_table(res), ""]
    lines += ["### 4. Sharpness tracking (edge-of-stability quick problem on the device)", ""]
    if tracking is None:
        lines.append("skipped (run budget)")
    elif tracking["error"] is not None:
        lines.append(f"failed: {tracking['error']}")
    else:
        t = tracking
        lines.append(C.markdown_table(
            ["steps", "2/η ÷ a₀", "parameters", "evaluations", "untracked (s)", "tracked (s)",
             "tracked ÷ untracked", "HVPs per evaluation"],
            [[t["steps"], t["factor"], t["num_parameters"], t["evaluations"],
              t["untracked_s"], t["tracked_warm_s"], t["tracked_over_untracked"],
              t["matvecs_per_evaluation_warm"]]]))
    if failures:
        lines += ["", "### Failures", ""] + [f"- {f['what']}: {f['error']}" for f in failures]
    lines += ["", f"command: `{' '.join(sys.argv)}`", "", C.load_line()]
    return "\n".join(lines)


def main() -> None:
    def extra(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                            help="torch device (default: cuda when available)")
        parser.add_argument("--scale", type=float, default=1.0,
                            help="multiply every problem's sample count (cost is linear in it)")
        parser.add_argument("--budget-s", type=float, default=90.0,
                            help="wall-clock budget of the measurements; later ones are skipped")
        parser.add_argument("--tf32", action="store_true",
                            help="allow TF32 in CUDA matmuls and cuDNN convolutions (default: "
                                 "off, so products are computed in full float32)")
        parser.add_argument("--skip-tracking", action="store_true",
                            help="leave out section 4 (sharpness tracking)")

    args = C.parse_args(__doc__.splitlines()[0], extra)
    if args.scale <= 0:
        raise ValueError(f"--scale must be positive, got {args.scale}")
    device = torch.device(args.device)
    if device.type == "cpu":
        C.setup_threads()
    # Explicit, not PyTorch's default (cuDNN convolutions use TF32 unless told otherwise).
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    warnings.filterwarnings("ignore", message=".*create_graph=True.*")
    clock = Clock(args.budget_s)
    dtype = torch.float32
    specs = [Spec(s.name, s.kind, max(16, round(s.n * args.scale)), s.input_shape, s.widths,
                  s.channels) for s in (QUICK if args.quick else FULL)]
    repeats, per_budget = (3, 2.0) if args.quick else (5, 4.0)
    eig_repeats, eig_budget = (1, 0.0) if args.quick else (3, 6.0)
    probes = 10 if args.quick else 30
    info = device_info(device)
    print(f"[bench_gpu] {info['name']}, torch {info['torch']}", file=sys.stderr)

    problems, hvp, eig, trace, failures = [], [], [], [], []
    built = []

    def attempt(what: str, fn: Callable[[], Any]) -> Any:
        """Run one section of one problem; a failure (valleys' too) is recorded, not raised."""
        try:
            return fn()
        except Exception as error:
            failures.append({"what": what, "error": error_string(error)})
            print(f"    {what} failed: {failures[-1]['error']}", file=sys.stderr)
            free(device)
            return None

    for spec in specs:
        pb = attempt(f"{spec.name}: building", lambda spec=spec: build_problem(spec, device,
                                                                                dtype))
        if pb is None:
            continue
        problems.append({"spec": spec.to_dict(), "dim": pb.dim})
        print(f"[{spec.name}] {pb.dim} parameters, {spec.n} samples: HVPs", file=sys.stderr)
        h = attempt(f"{spec.name}: HVPs",
                    lambda pb=pb: bench_hvp(pb, device, repeats, per_budget, clock))
        if h is not None:
            built.append(pb)
            hvp.append(h)
    for pb, h in zip(built, hvp, strict=True):
        print(f"[{pb.spec.name}] top eigenvalue", file=sys.stderr)
        e = attempt(f"{pb.spec.name}: eigenvalue",
                    lambda pb=pb, h=h: bench_eig(pb, device, h, eig_repeats, eig_budget, clock))
        eig += [e] if e is not None else []
    for pb, h in zip(built, hvp, strict=True):
        print(f"[{pb.spec.name}] trace", file=sys.stderr)
        t = attempt(f"{pb.spec.name}: trace",
                    lambda pb=pb, h=h: bench_trace(pb, device, probes, eig_repeats, eig_budget,
                                                   clock, h))
        trace += [t] if t is not None else []
    del built
    free(device)
    tracking = None
    steps = 100 if args.quick else 300
    if not args.skip_tracking and clock.left() > 10:
        print("[tracking]", file=sys.stderr)
        tracking = bench_tracking(device, steps, clock)

    text = report(info, args, problems, hvp, eig, trace, tracking, failures, clock)
    print(text)
    path = C.write_json(args.out, NAME, {
        "quick": args.quick, "scale": args.scale, "budget_s": args.budget_s,
        "elapsed_s": clock.elapsed(), "device": info, "problems": problems, "hvp": hvp,
        "eigenvalue": eig, "trace": trace, "tracking": tracking, "failures": failures,
        "markdown": text,
    })
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
