"""Training sweeps that survive: grids of runs, a resumable results store, parallel runners.

A sweep is a function ``fn(config) -> dict of metrics`` run over many configurations::

    from valleys.sweeps import grid, run_sweep

    configs = grid(eta=[0.01, 0.1, 1.0], batch_size=[32, 128], seed=range(3))
    df = run_sweep(train, configs, "results.sqlite", name="eta-B")

Every run is recorded in a SQLite :class:`ResultsStore` (config, status, metrics, error,
timings, attempts), each result committed atomically. Rerunning the same call after a crash or
kill runs only what is missing. Divergence is an outcome: raise :class:`Diverged` or return a
non-finite ``loss`` and the run is recorded as ``"diverged"`` while the sweep goes on.
"""

from valleys.sweeps._grid import canonical_json, grid, run_id
from valleys.sweeps._outcome import Diverged, Outcome, execute, is_divergent
from valleys.sweeps._runner import EXECUTORS, run_sweep
from valleys.sweeps._store import ResultsStore

__all__ = [
    "EXECUTORS",
    "Diverged",
    "Outcome",
    "ResultsStore",
    "canonical_json",
    "execute",
    "grid",
    "is_divergent",
    "run_id",
    "run_sweep",
]
