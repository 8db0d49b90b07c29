"""The results store: one SQLite table with a row per run, safe under kills and many writers.

Every write is a single short transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``), so a run's
result is either fully recorded or not at all, whatever kills the process. WAL mode lets
readers (a notebook watching a sweep) proceed while a writer commits, and a busy timeout plus a
few retries lets several processes write to one file.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from valleys.errors import ArgumentValueError
from valleys.sweeps._outcome import RUNNING, STATUSES, Outcome

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ResultsStore"]

T = TypeVar("T")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS runs (
    run_id    TEXT PRIMARY KEY,
    sweep     TEXT NOT NULL,
    config    TEXT NOT NULL,
    status    TEXT NOT NULL CHECK (status IN ({", ".join(repr(s) for s in STATUSES)})),
    metrics   TEXT,
    error     TEXT,
    started   REAL,
    finished  REAL,
    wall_time REAL,
    attempts  INTEGER NOT NULL DEFAULT 0
)
"""
_COLUMNS = (
    "run_id", "sweep", "config", "status", "metrics", "error",
    "started", "finished", "wall_time", "attempts",
)  # fmt: skip
# Columns of the DataFrame that are not config or metrics (the bookkeeping of each run).
_BOOKKEEPING = ("run_id", "sweep", "status", "error", "attempts", "started", "finished",
                "wall_time")


class ResultsStore:
    """A SQLite file holding one row per run: config, status, metrics, error and timings.

    The object holds only the path (a connection is opened per transaction), so it pickles and
    can be used from any process; writers on one machine may share the file. SQLite over a
    network file system is not safe: keep the file on a local disk.

    Args:
        path: The database file; created with its parent folders if missing.
        timeout: Seconds a writer waits for a lock before retrying.
        retries: Extra attempts after a "database is locked" error, with jittered backoff.
    """

    def __init__(
        self, path: str | PathLike[str], *, timeout: float = 30.0, retries: int = 5
    ) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.retries = retries
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._retry(self._create)

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.path)!r})"

    # --- connections and retries -------------------------------------------------------------

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so each write is exactly one
        # transaction and takes the write lock up front (no deadlocking lock upgrades).
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            yield conn
        finally:
            conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _retry(self, op: Callable[[], T]) -> T:
        for attempt in range(self.retries + 1):
            try:
                return op()
            except sqlite3.DatabaseError as exc:
                locked = "locked" in str(exc) or "busy" in str(exc)
                if not locked:
                    raise self._damaged(exc) from exc
                if attempt == self.retries:
                    raise
                time.sleep(random.uniform(0.05, 0.2) * 2**attempt)
        raise AssertionError("unreachable")

    def _damaged(self, exc: sqlite3.DatabaseError) -> ArgumentValueError:
        """The error for a file that is not a usable store; the file is never touched."""
        if self.path.is_dir():
            return ArgumentValueError(
                f"results store {str(self.path)!r} is a folder; give a file path such as "
                "runs.sqlite")
        return ArgumentValueError(
            f"results store {str(self.path)!r} is damaged or not a valleys results store "
            f"(sqlite: {exc}). It was left as it is: move it away to start afresh, or try "
            f"`sqlite3 {self.path} .recover` to salvage its rows"
        )

    def _create(self) -> None:
        with self._connect() as conn:
            # WAL is a property of the file: setting it once makes every later connection use it.
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(_SCHEMA)
            conn.execute("CREATE INDEX IF NOT EXISTS runs_sweep ON runs (sweep)")

    # --- writes --------------------------------------------------------------------------------

    def start(self, run_id: str, *, sweep: str, config: Mapping[str, Any]) -> None:
        """Mark a run as ``"running"`` and count one more attempt (one transaction).

        Clears the metrics, error and timings of an earlier attempt, so a row never mixes two.
        """
        sql = """
            INSERT INTO runs (run_id, sweep, config, status, started, attempts)
            VALUES (?, ?, ?, ?, ?, 1)
            ON CONFLICT (run_id) DO UPDATE SET
                status = excluded.status, started = excluded.started, attempts = attempts + 1,
                metrics = NULL, error = NULL, finished = NULL, wall_time = NULL
        """
        # The config keeps the caller's key order (DataFrame columns follow it); only the run id
        # needs the canonical form.
        args = (run_id, sweep, json.dumps(dict(config)), RUNNING, time.time())

        def op() -> None:
            with self._transaction() as conn:
                conn.execute(sql, args)

        self._retry(op)

    def finish(
        self, run_id: str, outcome: Outcome, *, sweep: str, config: Mapping[str, Any]
    ) -> None:
        """Record a run's outcome in one transaction (inserting the row if it has none yet)."""
        if outcome.status not in STATUSES or outcome.status == RUNNING:
            raise ArgumentValueError(f"a finished run's status must be done/diverged/failed, got "
                                     f"{outcome.status!r}")
        sql = """
            INSERT INTO runs (run_id, sweep, config, status, metrics, error, started, finished,
                              wall_time, attempts)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1)
            ON CONFLICT (run_id) DO UPDATE SET
                status = excluded.status, metrics = excluded.metrics, error = excluded.error,
                started = excluded.started, finished = excluded.finished,
                wall_time = excluded.wall_time, attempts = max(attempts, 1)
        """
        args = (
            run_id, sweep, json.dumps(dict(config)), outcome.status,
            outcome.metrics, outcome.error, outcome.started, outcome.finished, outcome.wall_time,
        )  # fmt: skip

        def op() -> None:
            with self._transaction() as conn:
                conn.execute(sql, args)

        self._retry(op)

    # --- reads ---------------------------------------------------------------------------------

    def statuses(self, sweep: str | None = None) -> dict[str, str]:
        """Run id → status, for one sweep or for all."""
        return {r["run_id"]: r["status"] for r in self.records(sweep)}

    def get(self, run_id: str) -> dict[str, Any] | None:
        """One run's record (config and metrics decoded), or ``None`` if it has no row."""
        rows = self._select("WHERE run_id = ?", (run_id,))
        return rows[0] if rows else None

    def records(self, sweep: str | None = None) -> list[dict[str, Any]]:
        """All rows (of one sweep, or all) as dicts in insertion order, JSON fields decoded."""
        if sweep is None:
            return self._select("", ())
        return self._select("WHERE sweep = ?", (sweep,))

    def _select(self, where: str, args: tuple[Any, ...]) -> list[dict[str, Any]]:
        sql = f"SELECT {', '.join(_COLUMNS)} FROM runs {where} ORDER BY rowid"

        def op() -> list[tuple[Any, ...]]:
            with self._connect() as conn:
                return conn.execute(sql, args).fetchall()

        return [_decode(dict(zip(_COLUMNS, row, strict=True))) for row in self._retry(op)]

    def to_dataframe(self, sweep: str | None = None) -> pd.DataFrame:
        """The runs as a DataFrame, one row per run, config and metrics flattened into columns.

        Columns: ``run_id``, ``sweep``, the config keys, ``status``, the metric keys, then
        ``error``, ``attempts``, ``started``, ``finished`` (UTC datetimes) and ``wall_time``
        (seconds). Nested dicts flatten with dots (``{"opt": {"lr": 1}}`` → ``opt.lr``); lists
        stay as cell values. A metric whose name clashes with a config key or a bookkeeping
        column is prefixed with ``metrics.``.
        """
        return records_to_dataframe(self.records(sweep))


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    row["config"] = json.loads(row["config"])
    row["metrics"] = None if row["metrics"] is None else json.loads(row["metrics"])
    return row


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def records_to_dataframe(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Flatten store records into a DataFrame (see :meth:`ResultsStore.to_dataframe`)."""
    import pandas as pd  # deferred: only the DataFrame view needs pandas

    rows, config_cols, metric_cols = [], {}, {}
    for rec in records:
        config = _flatten(rec["config"])
        metrics = _flatten(rec["metrics"] or {})
        taken = set(config) | set(_BOOKKEEPING)
        metrics = {(f"metrics.{k}" if k in taken else k): v for k, v in metrics.items()}
        config_cols.update(dict.fromkeys(config))  # dicts as ordered sets: first-seen order
        metric_cols.update(dict.fromkeys(metrics))
        rows.append({**{k: rec[k] for k in _BOOKKEEPING}, **config, **metrics})
    columns = ["run_id", "sweep", *config_cols, "status", *metric_cols,
               "error", "attempts", "started", "finished", "wall_time"]
    df = pd.DataFrame(rows, columns=columns)
    for col in ("started", "finished"):
        df[col] = pd.to_datetime(df[col].astype("float64"), unit="s", utc=True)
    return df
