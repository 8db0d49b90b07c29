"""kill -9 at the worst moments: checkpoint writes, results-store writes, a process-pool sweep.

Each test runs a small script in a subprocess that stops at a chosen point (it writes a marker
and sleeps), SIGKILLs it there, then runs the same work again and checks that nothing is lost
(every run present exactly once), nothing finished is repeated (executions are counted in a
side file) and nothing damaged is used (an interrupted checkpoint is detected and recomputed).

The kill -9 of a whole process-group sweep (parent and workers) mid-run is in
tests/test_sweeps.py::test_kill_and_resume_loses_and_repeats_nothing; the tests here add the
kill inside a store transaction, at a random moment of a busy writer, of the parent alone, and
during a checkpoint write.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from valleys import problems
from valleys.sweeps import ResultsStore, grid, run_id, run_sweep

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGKILL and flock are POSIX")

# Code the killed subprocesses (and spawned sweep workers) import by name.
HELPER = '''
"""Functions for tests/test_faults.py."""
import contextlib
import json
import os
import tempfile
import time

import torch

from valleys import problems
from valleys.sweeps import Outcome, ResultsStore, run_sweep


def count(path, what):
    with open(path, "a") as f:  # one short O_APPEND write: lines never interleave
        f.write(f"{what}\\n")


def pause(marker):
    """Say where we are, then wait to be killed."""
    count(marker, "here")
    time.sleep(600)
    os._exit(1)  # never reached in the tests


# --- checkpoints ------------------------------------------------------------------------------

def quick_train(model, spec, data, seed):
    """Stands in for the real recipe; counts its executions in $FAULTS_TRAIN_LOG."""
    count(os.environ["FAULTS_TRAIN_LOG"], seed)
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.fill_(0.5 + i)
    return {"train_loss": 0.0}


def checkpoint_child(cache, stage, marker):
    problems._train = quick_train
    real_temporary, real_replace = tempfile.NamedTemporaryFile, os.replace

    def temporary(*args, **kwargs):
        handle = real_temporary(*args, **kwargs)
        if stage == "writing":  # half the checkpoint's bytes are on disk when the kill comes
            def write(data):
                handle.file.write(data[: len(data) // 2])
                handle.file.flush()
                pause(marker)
            handle.write = write
        return handle

    def replace(src, dst):
        if stage == "hashing" and str(dst).endswith(".sha256"):
            pause(marker)  # the hash is written to its temporary file, not yet renamed
        real_replace(src, dst)
        if stage == "renamed" and str(dst).endswith(".pt"):
            pause(marker)  # the checkpoint is in place, its hash is not

    tempfile.NamedTemporaryFile, os.replace = temporary, replace
    problems.load_problem("digits-mlp", cache_dir=cache)
    pause(marker)  # stage "done": everything written


# --- the results store ------------------------------------------------------------------------

def square(config):
    count(os.environ["FAULTS_RUN_LOG"], config["x"])
    if config.get("block") and os.environ.get("FAULTS_BLOCK") == str(config["x"]):
        pause(os.environ["FAULTS_MARKER"])
    time.sleep(config.get("sleep", 0.0))
    return {"loss": float(config["x"]) ** 2}


def transaction_child(db, method, x, marker):
    """A serial sweep that is stopped inside the `method` transaction of run `x`, after its
    SQL ran and before COMMIT."""
    real_transaction, real_method = ResultsStore._transaction, getattr(ResultsStore, method)
    state = {"stop": False}

    @contextlib.contextmanager
    def transaction(self):
        with real_transaction(self) as conn:
            yield conn
            if state["stop"]:
                pause(marker)

    def patched(self, rid, *args, **kwargs):
        state["stop"] = kwargs["config"]["x"] == x
        return real_method(self, rid, *args, **kwargs)

    ResultsStore._transaction = transaction
    setattr(ResultsStore, method, patched)
    run_sweep(square, [{"x": i} for i in range(6)], db, name="t", executor="serial",
              progress=False)
    pause(marker)


def busy_writer(db, progress, first):
    """Write rows from `first` on as fast as possible (payloads of a few pages), noting each
    commit."""
    store = ResultsStore(db)
    for i in range(first, first + 100000):
        config = {"i": i}
        store.start(f"r{i}", sweep="busy", config=config)
        now = time.time()
        metrics = json.dumps({"i": i, "pad": "x" * (3000 + 97 * (i % 50))})
        store.finish(f"r{i}", Outcome("done", metrics, None, now, now, 0.0), sweep="busy",
                     config=config)
        count(progress, i)
'''


@pytest.fixture(scope="module")
def helper(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("faults_helper")
    (folder / "faults_helper.py").write_text(HELPER)
    sys.path.insert(0, str(folder))
    import faults_helper

    yield faults_helper
    sys.path.remove(str(folder))
    sys.modules.pop("faults_helper", None)


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def launch(helper, call: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Run ``faults_helper.<call>`` in a new session (its own process group)."""
    folder = str(Path(helper.__file__).parent)
    code = f"import faults_helper as h\nh.{call}\n"
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([folder, *sys.path]), **(env or {})}
    return subprocess.Popen([sys.executable, "-c", code], env=full_env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill_when(proc: subprocess.Popen, ready, *, group: bool = True, timeout: float = 60) -> None:
    """SIGKILL ``proc`` (its whole process group, or the process alone) once ``ready()``."""
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail(f"the child exited ({proc.returncode}) before the kill point:\n"
                            f"{proc.stderr.read()}")
            if time.monotonic() > deadline:
                pytest.fail("the child never reached the kill point")
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            if group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


# --- (a) checkpoint writes ----------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["writing", "renamed", "hashing", "done"])
def test_kill_during_a_checkpoint_write_never_uses_a_damaged_checkpoint(helper, tmp_path,
                                                                        monkeypatch, stage):
    cache, marker, log = tmp_path / "cache", tmp_path / "marker", tmp_path / "train.log"
    monkeypatch.setenv("FAULTS_TRAIN_LOG", str(log))
    child = launch(helper, f"checkpoint_child({str(cache)!r}, {stage!r}, {str(marker)!r})")
    kill_when(child, marker.exists)
    assert lines(log) == ["0"]  # the killed process trained once
    folder = cache / "checkpoints"
    if stage == "writing":  # killed mid-write: a partial temporary file, no checkpoint
        assert not list(folder.glob("*.pt")) and any(f.stat().st_size for f in folder.iterdir())

    monkeypatch.setattr(problems, "_train", helper.quick_train)
    if stage in ("renamed", "hashing"):
        # A complete checkpoint without its hash: not trusted, trained again.
        with pytest.warns(UserWarning, match="no content hash beside it"):
            problem = problems.load_problem("digits-mlp", cache_dir=cache)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing damaged to report
            problem = problems.load_problem("digits-mlp", cache_dir=cache)
    expected = ["0"] if stage == "done" else ["0", "0"]  # finished work is not repeated
    assert lines(log) == expected
    for i, p in enumerate(problem.model.parameters()):
        assert torch.equal(p, torch.full_like(p, 0.5 + i))
    # The checkpoint now verifies: a third load reads it, without a warning or training.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = problems.load_problem("digits-mlp", cache_dir=cache)
    assert lines(log) == expected and again.checkpoint == problem.checkpoint
    assert sorted(p.name for p in folder.glob("*.pt*")) == [
        problem.checkpoint.name, problem.checkpoint.name + ".sha256"]


class _RunsCode:
    """Unpickling this calls ``open(path, "w")``: stands for any code a checkpoint could run."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_checkpoint_that_would_run_code_is_refused_even_with_a_matching_hash(tmp_path,
                                                                             monkeypatch):
    """The hash proves the file is the one written, not that it is harmless: loading is
    weights_only, so a pickled object is refused (retrained), never executed."""
    calls = []

    def quick_train(model, spec, data, seed):
        calls.append(seed)
        return {"train_loss": 0.0}

    monkeypatch.setattr(problems, "_train", quick_train)
    path = problems.load_problem("digits-mlp", cache_dir=tmp_path).checkpoint
    canary = tmp_path / "code-ran"
    payload = torch.load(path, weights_only=True)
    payload["history"] = _RunsCode(canary)
    torch.save(payload, path)
    digest = problems.hashlib.sha256(path.read_bytes()).hexdigest()
    path.with_name(path.name + ".sha256").write_text(digest + "\n")
    with pytest.warns(UserWarning, match="it cannot be read"):
        problems.load_problem("digits-mlp", cache_dir=tmp_path)
    assert not canary.exists() and calls == [0, 0]


# --- (b) results-store writes -------------------------------------------------------------------


@pytest.mark.parametrize("method", ["start", "finish"])
def test_kill_inside_a_store_transaction_loses_and_repeats_nothing(helper, tmp_path, monkeypatch,
                                                                   method):
    db, marker, log = tmp_path / "runs.sqlite", tmp_path / "marker", tmp_path / "runs.log"
    monkeypatch.setenv("FAULTS_RUN_LOG", str(log))
    child = launch(helper, f"transaction_child({str(db)!r}, {method!r}, 3, {str(marker)!r})")
    kill_when(child, marker.exists)

    # The open transaction is rolled back: run 3 is as it was before it.
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    configs = [{"x": i} for i in range(6)]
    ids = [run_id(c, "t") for c in configs]
    before = ResultsStore(db).statuses("t")
    assert {ids[i]: before.get(ids[i]) for i in range(6)} == {
        ids[0]: "done", ids[1]: "done", ids[2]: "done",
        ids[3]: None if method == "start" else "running", ids[4]: None, ids[5]: None,
    }
    executed = ["0", "1", "2"] if method == "start" else ["0", "1", "2", "3"]
    assert lines(log) == executed

    # The killed writer's lock died with it: a store that does not wait for locks can write.
    store = ResultsStore(db, timeout=0.5, retries=0)
    df = run_sweep(helper.square, configs, store, name="t", executor="serial", progress=False)
    assert lines(log) == [*executed, "3", "4", "5"]  # the unfinished runs, once each
    assert df["run_id"].tolist() == ids and set(df["status"]) == {"done"}
    assert df["loss"].tolist() == [float(x) ** 2 for x in range(6)]
    assert df["attempts"].tolist() == [1, 1, 1, 1 if method == "start" else 2, 1, 1]


def test_a_writer_killed_at_random_moments_leaves_a_consistent_store(helper, tmp_path):
    """Kills at seeded, otherwise arbitrary points of a busy writer (mid-commit included)."""
    rng = random.Random(15)
    db = tmp_path / "busy.sqlite"
    kept: dict[str, dict] = {}
    for attempt in range(2):  # the same store, killed again after its recovery
        progress, first = tmp_path / f"progress-{attempt}", 100000 * attempt
        child = launch(helper, f"busy_writer({str(db)!r}, {str(progress)!r}, {first})")
        target = rng.randint(3, 40)
        kill_when(child, lambda p=progress, t=target: len(lines(p)) >= t)
        committed = {f"r{i}" for i in lines(progress)}
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        records = {r["run_id"]: r for r in ResultsStore(db, timeout=0.5, retries=0).records()}
        new = {rid: r for rid, r in records.items() if rid not in kept}
        # Every row noted as committed is there, whole; at most the one in progress is not
        # (committed, or left "running" by its start, before the note was written).
        assert committed <= set(new) and len(new) - len(committed) <= 1
        assert all(new[rid]["status"] == "done" for rid in committed)
        assert all(r["status"] in ("done", "running") for r in new.values())
        done = [r for r in new.values() if r["status"] == "done"]
        assert all(r["metrics"]["i"] == r["config"]["i"] for r in done)
        assert all(len(r["metrics"]["pad"]) >= 3000 for r in done)
        assert all(records[rid] == r for rid, r in kept.items())  # earlier rows untouched
        kept = records


# --- (c) a process-pool sweep -------------------------------------------------------------------


def test_parent_of_a_process_sweep_killed_alone_resumes_at_once(helper, tmp_path, monkeypatch):
    """kill -9 of the sweep's parent only (as an out-of-memory killer picks one process): the
    orphaned workers cannot record anything, the lock is free at once, and the rerun loses and
    repeats nothing."""
    db, marker = tmp_path / "pool.sqlite", tmp_path / "marker"
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    configs = grid(x=range(8), sleep=0.05, block=True)
    env = {"FAULTS_RUN_LOG": str(first_log), "FAULTS_BLOCK": "5", "FAULTS_MARKER": str(marker)}
    child = launch(helper, f"run_sweep(h.square, {configs!r}, {str(db)!r}, name='pool', "
                           "executor='process', max_workers=2, progress=False)", env=env)
    kill_when(child, marker.exists, group=False)  # run 5 is in flight, the parent dies

    done_before = {rid for rid, s in ResultsStore(db).statuses("pool").items() if s == "done"}
    assert run_id(configs[5], "pool") not in done_before
    monkeypatch.setenv("FAULTS_RUN_LOG", str(second_log))
    monkeypatch.delenv("FAULTS_BLOCK", raising=False)
    # At once, while the orphans may still be exiting: the dead parent's lock is gone.
    df = run_sweep(helper.square, configs, db, name="pool", executor="serial", progress=False)
    ids = {run_id(c, "pool"): c["x"] for c in configs}
    rerun = [int(x) for x in lines(second_log)]
    assert len(rerun) == len(set(rerun))  # each leftover ran once
    assert {x for rid, x in ids.items() if rid in done_before}.isdisjoint(rerun)
    assert set(rerun) == {x for rid, x in ids.items() if rid not in done_before}
    assert df["run_id"].is_unique and len(df) == 8 and set(df["status"]) == {"done"}
    assert df["loss"].tolist() == [float(x) ** 2 for x in range(8)]
    assert set(df.loc[df["run_id"].isin(done_before), "attempts"]) == {1}


@pytest.mark.parametrize("target", ["group", "parent"])
def test_ctrl_c_stops_a_process_sweep_and_the_rerun_finishes_it(helper, tmp_path, monkeypatch,
                                                                target):
    """SIGINT to the sweep's process group (a terminal's Ctrl-C) or to its parent alone
    (kill -INT, a notebook's interrupt), while a run that would take ten minutes is in flight:
    the sweep stops within seconds, records no run as failed (a failed run would be skipped on
    resume), and the rerun does exactly the runs left."""
    db, marker = tmp_path / "int.sqlite", tmp_path / "marker"
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    configs = grid(x=range(8), sleep=0.05, block=True)
    env = {"FAULTS_RUN_LOG": str(first_log), "FAULTS_BLOCK": "5", "FAULTS_MARKER": str(marker)}
    child = launch(helper, f"run_sweep(h.square, {configs!r}, {str(db)!r}, name='int', "
                           "executor='process', max_workers=2, progress=False)", env=env)
    deadline = time.monotonic() + 60
    while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if target == "group":
        os.killpg(child.pid, signal.SIGINT)
    else:
        os.kill(child.pid, signal.SIGINT)
    stopped = time.monotonic()
    try:
        child.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("the sweep still waits for its runs 20 s after Ctrl-C")
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    assert time.monotonic() - stopped < 20
    stderr = child.stderr.read()
    child.stderr.close()
    assert child.returncode != 0 and "KeyboardInterrupt" in stderr

    statuses = ResultsStore(db).statuses("int")
    assert set(statuses.values()) <= {"done", "running"}, statuses
    done_before = {rid for rid, s in statuses.items() if s == "done"}
    monkeypatch.setenv("FAULTS_RUN_LOG", str(second_log))
    monkeypatch.delenv("FAULTS_BLOCK", raising=False)
    df = run_sweep(helper.square, configs, db, name="int", executor="serial", progress=False)
    ids = {run_id(c, "int"): c["x"] for c in configs}
    rerun = [int(x) for x in lines(second_log)]
    assert sorted(rerun) == sorted(x for rid, x in ids.items() if rid not in done_before)
    assert set(df["status"]) == {"done"} and len(df) == 8
