"""``run_sweep``: run a function over many configurations, resumably, in parallel.

Who writes: only the parent process writes to the store; workers just return an
:class:`~valleys.sweeps.Outcome`. One writer means no lock contention, and workers
(Ray tasks on other machines included) never need to see the SQLite file.

Lifecycle of a run: the parent marks it ``"running"`` (one more attempt) just before handing it
to a worker, and records ``"done"``, ``"diverged"`` or ``"failed"`` in one transaction when the
result comes back. At most ``max_workers`` runs are handed out at a time, so ``"running"`` rows
are the runs really in flight. If the sweep is killed, they stay ``"running"`` and the next call
runs them again; finished runs are never repeated. On Ctrl-C (or any error in the loop) the
workers are stopped at once, not waited for, and their runs likewise stay ``"running"``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import sys
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from os import PathLike
from typing import TYPE_CHECKING, Any, Protocol

from tqdm.auto import tqdm

from valleys.errors import ArgumentTypeError, ArgumentValueError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

from valleys.sweeps._grid import canonical_json, run_id
from valleys.sweeps._outcome import DIVERGED, DONE, FAILED, RUNNING, Outcome, crashed, execute
from valleys.sweeps._store import ResultsStore, records_to_dataframe

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["EXECUTORS", "run_sweep"]

EXECUTORS = ("process", "serial", "ray")
RunFn = Callable[[dict[str, Any]], Mapping[str, Any]]


def run_sweep(
    fn: RunFn,
    configs: Iterable[Mapping[str, Any]],
    store: ResultsStore | str | PathLike[str],
    *,
    name: str,
    executor: str = "process",
    max_workers: int | None = None,
    progress: bool = True,
    retry_failed: bool = False,
    ray_address: str | None = None,
) -> pd.DataFrame:
    """Run ``fn(config)`` for every config, recording each run in ``store``; resume if rerun.

    Runs already ``"done"`` or ``"diverged"`` in the store are skipped, ``"running"`` ones (left
    by a killed sweep) are run again, and ``"failed"`` ones only if ``retry_failed``.

    Outcomes: ``fn`` returns a dict of metrics (JSON-serializable; numpy and torch scalars are
    converted). The run is ``"diverged"`` if ``fn`` raises :class:`~valleys.sweeps.Diverged`
    (its partial metrics are kept) or returns a truthy ``"diverged"`` key or a non-finite
    ``"loss"`` / ``"*_loss"`` value; any other exception makes it ``"failed"`` with the
    traceback stored. Neither stops the sweep.

    Seeds: configs are passed unchanged; reproducibility is ``fn``'s job (seed torch, numpy and
    the data order from the config, e.g. ``torch.manual_seed(config["seed"])``).

    Only one sweep of a given ``name`` runs on a store at a time: it holds a lock file beside
    the store (released even if the process is killed), and a second one raises at once.
    Different names may share a store freely. Process workers exit when their parent dies.

    Args:
        fn: The training function. For ``executor="process"`` it must be picklable, i.e.
            defined at module level in an importable module (not a lambda, closure, or a
            function of an interactive ``__main__``).
        configs: The configurations, e.g. from :func:`~valleys.sweeps.grid`. Each must be
            JSON-serializable; duplicates are run once.
        store: A :class:`ResultsStore` or the path of its SQLite file.
        name: The sweep's name; part of every run id, so a sweep resumes under the same name.
        executor: ``"process"`` (local processes, "spawn" start method, torch-safe),
            ``"serial"`` (in this process; easiest to debug) or ``"ray"`` (Ray tasks; install
            with ``pip install 'valleys[ray]'``).
        max_workers: Runs in flight at once. Defaults to the CPU count (the cluster's CPUs
            for Ray), capped by the number of runs to do. Ignored by ``"serial"``.
        progress: Show a tqdm progress bar (on stderr).
        retry_failed: Also run again the runs recorded as ``"failed"``.
        ray_address: Passed to ``ray.init(address=...)`` if Ray is not yet initialized (a
            sweep that initializes Ray shuts it down at the end).

    Returns:
        One row per (unique) config, in config order, as :meth:`ResultsStore.to_dataframe`
        lays it out, with the runs finished earlier included.

    Raises:
        ValueError: On no configs, an unknown executor or a bad ``max_workers``.
        TypeError: On a non-callable ``fn``, a ``fn`` the process executor cannot send to its
            workers, or a config that is not a JSON-serializable mapping.
        ImportError: On ``executor="ray"`` without Ray installed.
        RuntimeError: When another process runs the same sweep on this store, or when process
            workers cannot start (typically a script without an
            ``if __name__ == "__main__":`` guard).
    """
    runs = _check_inputs(fn, configs, name, executor, max_workers)
    store = store if isinstance(store, ResultsStore) else ResultsStore(store)
    with _sweep_lock(store, name):
        pending = _pending(runs, store.statuses(name), retry_failed)
        if pending:
            with _progress_bar(name, len(runs), len(runs) - len(pending), progress) as bar:
                pool = _make_pool(executor, fn, max_workers, len(pending), ray_address)
                try:
                    _drive(pool, pending, store, name, bar)
                except BaseException:
                    # Ctrl-C or an error: stop the runs in flight rather than wait for them
                    # (maybe hours); they stay "running" and the next call reruns them.
                    pool.close(abort=True)
                    raise
                pool.close()
    by_id = {rec["run_id"]: rec for rec in store.records(name)}
    return records_to_dataframe([by_id[rid] for rid in runs])


# --- inputs -------------------------------------------------------------------------------------


def _check_inputs(
    fn: Any, configs: Iterable[Mapping[str, Any]], name: str, executor: str,
    max_workers: int | None,
) -> dict[str, dict[str, Any]]:
    """Validate the arguments; return run id → config (unique, in config order)."""
    if executor not in EXECUTORS:
        raise ArgumentValueError(f"unknown executor {executor!r}; choose one of {EXECUTORS}")
    if not callable(fn):
        raise ArgumentTypeError(f"fn must be callable, got {type(fn).__name__}")
    if not isinstance(name, str) or not name:
        raise ArgumentValueError("name must be a non-empty string (it identifies the sweep's runs)")
    if max_workers is not None and (not isinstance(max_workers, int) or max_workers < 1):
        raise ArgumentValueError(f"max_workers must be a positive int or None, got {max_workers!r}")
    runs: dict[str, dict[str, Any]] = {}
    if isinstance(configs, Mapping) or not isinstance(configs, Iterable):
        raise ArgumentTypeError(
            f"configs must be an iterable of dicts (e.g. valleys.sweeps.grid(...)), "
            f"got {type(configs).__name__}")
    for config in configs:
        canonical_json(config)  # raises a clear TypeError on a non-JSON config
        runs.setdefault(run_id(config, name), dict(config))
    if not runs:
        raise ArgumentValueError("no configs to run (is the grid empty? an axis with no values "
                                 "makes an empty product)")
    if executor == "process":
        _check_picklable(fn)
    return runs


def _check_picklable(fn: Any) -> None:
    """Fail early and clearly if spawned workers could not receive ``fn``."""
    hint = ("executor='process' sends fn to spawned worker processes, so it must be a "
            "module-level function in an importable module; use executor='serial' (or 'ray', "
            "which pickles by value) otherwise")
    try:
        pickle.dumps(fn)
    except Exception as exc:
        raise ArgumentTypeError(f"fn {fn!r} is not picklable: {exc}. {hint}") from exc
    # A function of `python -c` or a notebook pickles by reference to __main__, which spawned
    # children cannot re-import: the workers would die on unpickling it.
    main = sys.modules.get("__main__")
    if getattr(fn, "__module__", None) == "__main__" and not getattr(main, "__file__", None):
        raise ArgumentTypeError(f"fn {fn!r} is defined in an interactive __main__. {hint}")


def _pending(
    runs: dict[str, dict[str, Any]], statuses: Mapping[str, str], retry_failed: bool
) -> dict[str, dict[str, Any]]:
    redo = {RUNNING, FAILED} if retry_failed else {RUNNING}
    return {rid: cfg for rid, cfg in runs.items() if statuses.get(rid, RUNNING) in redo}


@contextlib.contextmanager
def _sweep_lock(store: ResultsStore, name: str) -> Iterator[None]:
    """An exclusive lock per (store, sweep name); the OS drops it when the holder dies."""
    if fcntl is None:  # pragma: no cover - Windows: no lock, as documented
        yield
        return
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    path = store.path.with_name(f".{store.path.name}.{digest}.lock")
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RuntimeError(
                f"sweep {name!r} is already running on {str(store.path)!r} ({holder}); wait "
                "for it to finish (rerunning then resumes it) or give this sweep another name"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- the loop -----------------------------------------------------------------------------------


def _drive(pool: _Pool, pending: dict[str, dict[str, Any]], store: ResultsStore, name: str,
           bar: Any) -> None:
    """Keep ``pool.window`` runs in flight; record each result as it comes back."""
    queue = deque(pending.items())
    in_flight: dict[Future[Outcome], tuple[str, dict[str, Any], float]] = {}
    counts: Counter[str] = Counter()
    while queue or in_flight:
        while queue and len(in_flight) < pool.window:
            rid, config = queue.popleft()
            store.start(rid, sweep=name, config=config)
            in_flight[pool.submit(config)] = (rid, config, time.time())
        finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
        for future in finished:
            rid, config, submitted = in_flight.pop(future)
            outcome = _outcome(future, submitted)
            store.finish(rid, outcome, sweep=name, config=config)
            counts[outcome.status] += 1
            bar.set_postfix({s: counts[s] for s in (DONE, DIVERGED, FAILED)}, refresh=False)
            bar.update(1)


def _outcome(future: Future[Outcome], submitted: float) -> Outcome:
    """The worker's outcome, or a failure if the worker itself died (execute never raises)."""
    try:
        return future.result()
    except BrokenProcessPool:
        return crashed(
            "a worker process died abruptly (killed, out of memory, or crashed in native "
            "code) while this run was in flight; it may have been this run or a concurrent "
            "one. Rerun with retry_failed=True.\n" + traceback.format_exc(),
            submitted,
        )
    except Exception:
        return crashed("the worker could not run this config:\n" + traceback.format_exc(),
                       submitted)


def _exit_with_parent(parent: int) -> None:
    """Worker initializer: a thread that ends the worker once its parent is gone (a kill -9
    of the sweep must not leave workers holding memory)."""

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="valleys-parent-watch").start()


# --- executors ----------------------------------------------------------------------------------


class _Pool(Protocol):
    window: int

    def submit(self, config: dict[str, Any]) -> Future[Outcome]: ...

    def close(self, abort: bool = False) -> None: ...


class _SerialPool:
    """Runs each config in this process, at submission."""

    window = 1

    def __init__(self, fn: RunFn) -> None:
        self.fn = fn

    def submit(self, config: dict[str, Any]) -> Future[Outcome]:
        future: Future[Outcome] = Future()
        future.set_result(execute(self.fn, config))
        return future

    def close(self, abort: bool = False) -> None:
        pass


class _ProcessPool:
    """A spawn-context process pool that replaces itself if a worker dies."""

    def __init__(self, fn: RunFn, workers: int) -> None:
        self.fn, self.window = fn, workers
        self._executor = self._new()

    def _new(self) -> ProcessPoolExecutor:
        # "spawn", not fork: forking a parent that has touched torch (threads, CUDA) can hang.
        executor = ProcessPoolExecutor(self.window, mp_context=get_context("spawn"),
                                       initializer=_exit_with_parent, initargs=(os.getpid(),))
        # Probe the workers once: a worker that cannot even start would otherwise fail every
        # run with a misleading "worker died" message.
        try:
            executor.submit(os.getpid).result()
        except BrokenProcessPool:
            executor.shutdown(wait=False, cancel_futures=True)
            raise RuntimeError(
                "the sweep's worker processes could not start. With executor='process' each "
                "worker re-imports your script, so a script must call run_sweep under "
                "`if __name__ == \"__main__\":`; add that guard (or use executor='serial')"
            ) from None
        return executor

    def submit(self, config: dict[str, Any]) -> Future[Outcome]:
        try:
            return self._executor.submit(execute, self.fn, config)
        except BrokenProcessPool:
            # Every run in flight on the broken pool has been failed already; start afresh.
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = self._new()
            return self._executor.submit(execute, self.fn, config)

    def close(self, abort: bool = False) -> None:
        if abort:
            # A Ctrl-C that reached this process alone (kill -INT, a notebook's interrupt)
            # leaves the workers running their configs; shutdown would wait for them to finish.
            # ProcessPoolExecutor has no public way to stop running work, hence _processes.
            for process in list((getattr(self._executor, "_processes", None) or {}).values()):
                process.kill()
        # Queued work is never started; runs cut short stay "running".
        self._executor.shutdown(wait=True, cancel_futures=True)


class _RayPool:
    """Ray tasks, one per run; each returns an ``Outcome`` through a concurrent Future."""

    def __init__(self, fn: RunFn, workers: int | None, n_pending: int,
                 address: str | None) -> None:
        ray = _import_ray()
        self._ray, self._owns = ray, not ray.is_initialized()
        if self._owns:
            ray.init(address=address)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.window = max(1, min(workers or cpus, n_pending))
        self._task = ray.remote(execute)
        self._fn_ref = ray.put(fn)  # ship fn once, not with every task

    def submit(self, config: dict[str, Any]) -> Future[Outcome]:
        return self._task.remote(self._fn_ref, config).future()

    def close(self, abort: bool = False) -> None:
        # Tasks in flight on a cluster the user started keep running after an abort; their
        # results are simply not recorded (the runs stay "running").
        if self._owns:
            self._ray.shutdown()


def _import_ray() -> Any:
    try:
        import ray  # optional dependency (valleys[ray]), needed only by executor="ray"
    except ImportError as exc:
        raise ImportError(
            "executor='ray' needs Ray, which is not installed: pip install 'valleys[ray]' "
            "(or pip install ray)"
        ) from exc
    return ray


def _make_pool(executor: str, fn: RunFn, max_workers: int | None, n_pending: int,
               ray_address: str | None) -> _Pool:
    if executor == "serial":
        return _SerialPool(fn)
    if executor == "ray":
        return _RayPool(fn, max_workers, n_pending, ray_address)
    workers = max(1, min(max_workers or os.cpu_count() or 1, n_pending))
    return _ProcessPool(fn, workers)


def _progress_bar(name: str, total: int, initial: int, enabled: bool) -> Any:
    return tqdm(total=total, initial=initial, desc=f"sweep {name}", unit="run",
                disable=not enabled)
