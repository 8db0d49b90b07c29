"""Tests of valleys.sweeps: grids, the SQLite results store, resumable and parallel sweeps."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from valleys.sweeps import (
    Diverged,
    Outcome,
    ResultsStore,
    grid,
    is_divergent,
    run_id,
    run_sweep,
)

# Run functions live in a module written to disk: spawned workers (and the subprocess of the
# kill test) must import them by name, which they cannot do for functions of this test file.
HELPER = '''
"""Run functions for tests/test_sweeps.py."""
import json
import os
import time

from valleys.sweeps import Diverged, Outcome, ResultsStore

KILL_CONFIGS = [{"x": i, "sleep": 0.2} for i in range(12)]


def _log(config):
    path = os.environ.get("SWEEPS_TEST_LOG")
    if path:
        with open(path, "a") as f:  # one short O_APPEND write per run: lines do not interleave
            f.write(f"{config['x']}\\n")


def square(config):
    time.sleep(config.get("sleep", 0))
    _log(config)
    return {"loss": float(config["x"]) ** 2, "twice": 2 * config["x"]}


def record_pid_and_sleep(config):
    with open(config["path"], "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(120)
    return {"loss": 0.0}


def mixed(config):
    _log(config)
    kind = config["kind"]
    if kind == "raise":
        raise Diverged("loss exploded at step 7", {"step": 7})
    if kind == "inf":
        return {"loss": float("inf"), "step": 3}
    if kind == "flag":
        return {"loss": 1.0, "diverged": True}
    if kind == "fail" and not os.environ.get("SWEEPS_TEST_HEAL"):
        raise ValueError("bad hyperparameter")
    if kind == "die":
        os._exit(3)  # the worker process dies without a word
    if kind == "not-a-dict":
        return [1, 2]
    return {"loss": 0.5}


def write_many(path, worker, n):
    store = ResultsStore(path)
    for i in range(n):
        rid, config = f"w{worker}-{i}", {"worker": worker, "i": i}
        store.start(rid, sweep=f"w{worker}", config=config)
        now = time.time()
        outcome = Outcome("done", json.dumps({"value": worker * 1000 + i}), None, now, now, 0.0)
        store.finish(rid, outcome, sweep=f"w{worker}", config=config)
        if i % 10 == 0:
            store.records()  # readers interleave with the writers
'''


@pytest.fixture(scope="module")
def helper(tmp_path_factory: pytest.TempPathFactory):
    """The helper module, importable here and (through sys.path) in spawned children."""
    folder = tmp_path_factory.mktemp("helper")
    (folder / "sweeps_helper.py").write_text(HELPER)
    sys.path.insert(0, str(folder))
    import sweeps_helper

    yield sweeps_helper
    sys.path.remove(str(folder))
    sys.modules.pop("sweeps_helper", None)


@pytest.fixture
def log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A file each run appends its ``x`` to (workers inherit the environment)."""
    path = tmp_path / "calls.log"
    monkeypatch.setenv("SWEEPS_TEST_LOG", str(path))
    return path


def calls(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


# --- grid and run ids ---------------------------------------------------------------------------


def test_grid_order_is_deterministic_last_axis_fastest():
    configs = grid(eta=[0.1, 1.0], B=(8, 32), seed=0, opt="sgd")
    assert configs == [
        {"eta": 0.1, "B": 8, "seed": 0, "opt": "sgd"},
        {"eta": 0.1, "B": 32, "seed": 0, "opt": "sgd"},
        {"eta": 1.0, "B": 8, "seed": 0, "opt": "sgd"},
        {"eta": 1.0, "B": 32, "seed": 0, "opt": "sgd"},
    ]
    assert grid(seed=range(3)) == [{"seed": 0}, {"seed": 1}, {"seed": 2}]
    assert grid(eta=[], seed=[0, 1]) == []
    assert grid() == [{}]


def test_run_ids_are_stable_and_distinguish_sweeps():
    config = {"eta": 0.1, "B": 32, "seed": 0}
    rid = run_id(config, "sweep")
    # A fixed value: ids must not change across processes, sessions or releases, else resuming
    # an old store would silently rerun everything.
    assert rid == "668ddf97a665342a"
    assert run_id({"seed": 0, "B": 32, "eta": 0.1}, "sweep") == rid  # key order is irrelevant
    assert run_id(config, "other") != rid
    assert run_id({**config, "seed": 1}, "sweep") != rid
    assert len({run_id(c, "s") for c in grid(a=range(10), b=range(10))}) == 100


# --- resume -------------------------------------------------------------------------------------


def test_resumed_sweep_does_not_repeat_finished_runs(helper, log, tmp_path):
    configs = grid(x=range(6))
    store = ResultsStore(tmp_path / "runs.sqlite")
    run_sweep(helper.square, configs[:3], store, name="r", executor="serial", progress=False)
    assert sorted(calls(log)) == [0, 1, 2]
    df = run_sweep(helper.square, configs, store, name="r", executor="serial", progress=False)
    assert sorted(calls(log)) == list(range(6))  # the first three ran once, not twice
    assert list(df["x"]) == list(range(6)) and set(df["status"]) == {"done"}
    run_sweep(helper.square, configs, store, name="r", executor="serial", progress=False)
    assert len(calls(log)) == 6  # nothing left to do
    assert set(store.to_dataframe("r")["attempts"]) == {1}


def test_running_leftovers_are_rerun(helper, log, tmp_path):
    store = ResultsStore(tmp_path / "runs.sqlite")
    configs = grid(x=range(3))
    store.start(run_id(configs[1], "r"), sweep="r", config=configs[1])  # as a killed sweep leaves
    run_sweep(helper.square, configs, store, name="r", executor="serial", progress=False)
    assert sorted(calls(log)) == [0, 1, 2]
    assert store.get(run_id(configs[1], "r"))["attempts"] == 2


def test_kill_and_resume_loses_and_repeats_nothing(helper, tmp_path):
    db = tmp_path / "kill.sqlite"
    code = textwrap.dedent("""
        import sys
        import sweeps_helper as h
        from valleys.sweeps import run_sweep
        run_sweep(h.square, h.KILL_CONFIGS, sys.argv[1], name="kill", executor="process",
                  max_workers=2, progress=False)
    """)
    python_path = os.pathsep.join([str(Path(helper.__file__).parent), *sys.path])

    def launch(log: Path) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": python_path, "SWEEPS_TEST_LOG": str(log)}
        # A session of its own: SIGKILL to the group takes the workers down too, like a crash.
        return subprocess.Popen([sys.executable, "-c", code, str(db)], env=env,
                                start_new_session=True)

    first = launch(tmp_path / "first.log")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and first.poll() is None:
            statuses = ResultsStore(db).statuses("kill") if db.exists() else {}
            if sum(s == "done" for s in statuses.values()) >= 3:
                break
            time.sleep(0.05)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    before = ResultsStore(db).statuses("kill")
    done_before = {rid for rid, s in before.items() if s == "done"}
    assert 3 <= len(done_before) < 12, "the kill should land mid-sweep"

    second = launch(tmp_path / "second.log")
    assert second.wait(timeout=120) == 0

    store = ResultsStore(db)
    df = store.to_dataframe("kill")
    assert len(df) == 12 and df["run_id"].is_unique and set(df["status"]) == {"done"}
    ids = {c["x"]: run_id(c, "kill") for c in helper.KILL_CONFIGS}
    rerun = calls(tmp_path / "second.log")
    assert len(rerun) == len(set(rerun))  # each leftover ran once
    assert not {ids[x] for x in rerun} & done_before  # no finished run was recomputed
    assert {ids[x] for x in rerun} == set(ids.values()) - done_before  # and none was lost
    first_calls = calls(tmp_path / "first.log")
    assert all(first_calls.count(x) == 1 for x in ids if ids[x] in done_before)
    assert set(df.loc[df["run_id"].isin(done_before), "attempts"]) == {1}
    assert df["loss"].tolist() == [float(x) ** 2 for x in range(12)]


# --- outcomes -----------------------------------------------------------------------------------


KINDS = ["ok", "raise", "inf", "flag", "fail", "not-a-dict", "ok2"]


def test_divergence_and_failure_are_recorded_and_the_sweep_continues(helper, log, tmp_path):
    df = run_sweep(helper.mixed, grid(kind=KINDS, x=0), tmp_path / "s.sqlite", name="m",
                   executor="serial", progress=False).set_index("kind")
    assert df["status"].to_dict() == {
        "ok": "done", "raise": "diverged", "inf": "diverged", "flag": "diverged",
        "fail": "failed", "not-a-dict": "failed", "ok2": "done",
    }  # fmt: skip
    assert len(calls(log)) == len(KINDS)
    assert df.loc["raise", "error"] == "loss exploded at step 7"
    assert df.loc["raise", "step"] == 7  # partial metrics of a Diverged are kept
    assert math.isinf(df.loc["inf", "loss"])
    assert "ValueError: bad hyperparameter" in df.loc["fail", "error"]
    assert "Traceback" in df.loc["fail", "error"]
    assert "must return a dict" in df.loc["not-a-dict", "error"]
    assert df.loc[["ok", "ok2"], "error"].isna().all()


def test_retry_failed_reruns_only_failed_runs(helper, log, tmp_path, monkeypatch):
    store = ResultsStore(tmp_path / "s.sqlite")
    configs = grid(kind=["ok", "fail", "inf"], x=[1, 2])
    kwargs = dict(name="m", executor="serial", progress=False)
    run_sweep(helper.mixed, configs, store, **kwargs)
    assert len(calls(log)) == 6
    run_sweep(helper.mixed, configs, store, **kwargs)
    assert len(calls(log)) == 6  # failed runs stay failed without retry_failed
    monkeypatch.setenv("SWEEPS_TEST_HEAL", "1")
    df = run_sweep(helper.mixed, configs, store, retry_failed=True, **kwargs)
    assert len(calls(log)) == 8  # just the two failed ones
    assert df["status"].tolist() == ["done", "done", "done", "done", "diverged", "diverged"]
    assert df["attempts"].tolist() == [1, 1, 2, 2, 1, 1]
    assert df.loc[df["kind"] == "fail", "error"].isna().all()  # the old traceback is cleared


def test_is_divergent_rule():
    assert is_divergent({"loss": float("nan")})
    assert is_divergent({"train_loss": float("-inf")})
    assert is_divergent({"diverged": True, "loss": 0.1})
    assert not is_divergent({"loss": 0.1, "accuracy": float("nan")})  # only losses count
    assert not is_divergent({"loss_curve": [1.0, float("inf")]})
    assert not is_divergent({"diverged": False, "loss": 1e30})


def test_diverged_pickles_with_its_metrics():
    import pickle

    exc = pickle.loads(pickle.dumps(Diverged("at step 3", {"step": 3})))
    assert str(exc) == "at step 3" and exc.metrics == {"step": 3}


def test_numpy_and_torch_metrics_are_stored_as_numbers(tmp_path):
    import numpy as np
    import torch

    def fn(config):
        return {"loss": torch.tensor(0.25), "acc": np.float32(0.5), "curve": np.arange(3)}

    df = run_sweep(fn, [{"a": 1}], tmp_path / "s.sqlite", name="t", executor="serial",
                   progress=False)
    row = df.iloc[0]
    assert (row["status"], row["loss"], row["acc"], row["curve"]) == ("done", 0.25, 0.5, [0, 1, 2])


# --- executors ----------------------------------------------------------------------------------


def test_process_executor_matches_serial(helper, tmp_path):
    configs = grid(x=range(8), sleep=0.0)
    serial = run_sweep(helper.square, configs, tmp_path / "a.sqlite", name="p",
                       executor="serial", progress=False)
    parallel = run_sweep(helper.square, configs, tmp_path / "b.sqlite", name="p",
                         executor="process", max_workers=2, progress=False)
    columns = ["run_id", "x", "status", "loss", "twice", "error", "attempts"]
    assert serial[columns].equals(parallel[columns])
    assert set(parallel["status"]) == {"done"}


def test_dead_worker_fails_its_run_and_the_sweep_continues(helper, log, tmp_path):
    configs = grid(kind=["ok", "die", "ok2"], x=0)
    df = run_sweep(helper.mixed, configs, tmp_path / "s.sqlite", name="d", executor="process",
                   max_workers=1, progress=False)
    assert df["status"].tolist() == ["done", "failed", "done"]
    assert "worker process died" in df["error"][1]


def test_ray_executor(tmp_path):
    ray = pytest.importorskip("ray")
    # Ray's local_mode is deprecated; a one-CPU local cluster is the supported stand-in.
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:

        def fn(config):  # a closure: Ray pickles it by value, so no module is needed
            if config["x"] == 3:
                raise Diverged("too large a step")
            return {"loss": config["x"] / 2}

        configs = grid(x=range(5))
        df = run_sweep(fn, configs, tmp_path / "r.sqlite", name="ray", executor="ray",
                       progress=False)
        assert ray.is_initialized()  # a cluster the user started is left running
    finally:
        ray.shutdown()
    assert df["status"].tolist() == ["done"] * 3 + ["diverged", "done"]
    assert df["loss"].tolist()[:3] == [0.0, 0.5, 1.0]
    serial = run_sweep(fn, configs, tmp_path / "s.sqlite", name="ray", executor="serial",
                       progress=False)
    assert serial[["run_id", "status", "loss"]].equals(df[["run_id", "status", "loss"]])


def test_ray_missing_gives_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'valleys\[ray\]'"):
        run_sweep(lambda c: {}, [{"a": 1}], tmp_path / "s.sqlite", name="n", executor="ray",
                  progress=False)


# --- the store ----------------------------------------------------------------------------------


def test_dataframe_has_one_row_per_config_with_flat_columns(tmp_path):
    def fn(config):
        return {"loss": config["opt"]["lr"], "eta": "clash", "stats": {"mean": 1.0, "max": 2}}

    configs = grid(opt=[{"name": "sgd", "lr": 0.1}, {"name": "adam", "lr": 0.01}], seed=[0, 1])
    df = run_sweep(fn, [*configs, configs[0]], tmp_path / "s.sqlite", name="f",
                   executor="serial", progress=False)
    assert len(df) == 4 and df["run_id"].is_unique  # the duplicate config runs once
    assert list(df.columns) == [
        "run_id", "sweep", "opt.name", "opt.lr", "seed", "status", "loss", "eta",
        "stats.mean", "stats.max", "error", "attempts", "started", "finished", "wall_time",
    ]  # fmt: skip
    assert df["opt.name"].tolist() == ["sgd", "sgd", "adam", "adam"]
    assert (df["finished"] >= df["started"]).all() and (df["wall_time"] >= 0).all()
    assert str(df["started"].dtype).startswith("datetime64")


def test_metric_clashing_with_a_config_key_is_prefixed(tmp_path):
    df = run_sweep(lambda c: {"seed": 99, "status": "x"}, [{"seed": 1}], tmp_path / "s.sqlite",
                   name="c", executor="serial", progress=False)
    assert df.loc[0, "seed"] == 1 and df.loc[0, "status"] == "done"
    assert df.loc[0, "metrics.seed"] == 99 and df.loc[0, "metrics.status"] == "x"


def test_empty_store_gives_empty_dataframe(tmp_path):
    df = ResultsStore(tmp_path / "e.sqlite").to_dataframe()
    assert len(df) == 0 and "status" in df.columns


def test_store_uses_wal_and_one_table(tmp_path):
    ResultsStore(tmp_path / "s.sqlite")
    with sqlite3.connect(tmp_path / "s.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
    assert tables == [("runs",)]


def test_concurrent_writers_do_not_corrupt_the_store(helper, tmp_path):
    path, n = tmp_path / "shared.sqlite", 60
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=helper.write_many, args=(path, w, n)) for w in range(1, 3)]
    for p in workers:
        p.start()
    helper.write_many(path, 0, n)  # this process writes at the same time
    for p in workers:
        p.join(timeout=120)
    assert [p.exitcode for p in workers] == [0, 0]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    records = ResultsStore(path).records()
    assert len(records) == 3 * n
    assert all(r["status"] == "done" and r["attempts"] == 1 for r in records)
    assert sorted(r["metrics"]["value"] for r in records) == sorted(
        w * 1000 + i for w in range(3) for i in range(n)
    )


def test_finish_rejects_running_status(tmp_path):
    with pytest.raises(ValueError, match="done/diverged/failed"):
        ResultsStore(tmp_path / "s.sqlite").finish(
            "id", Outcome("running", None, None, 0.0, 0.0, 0.0), sweep="s", config={}
        )


# --- bad inputs ---------------------------------------------------------------------------------


def test_process_executor_rejects_unpicklable_fn(tmp_path):
    with pytest.raises(TypeError, match=r"not picklable.*module-level"):
        run_sweep(lambda c: {}, [{"a": 1}], tmp_path / "s.sqlite", name="n", progress=False)
    assert not (tmp_path / "s.sqlite").exists()  # checked before anything is written


def test_bad_inputs_raise_clear_errors(helper, tmp_path):
    store = tmp_path / "s.sqlite"
    with pytest.raises(ValueError, match="no configs"):
        run_sweep(helper.square, grid(x=[]), store, name="n", progress=False)
    with pytest.raises(ValueError, match="unknown executor 'threads'"):
        run_sweep(helper.square, [{"x": 1}], store, name="n", executor="threads")
    with pytest.raises(TypeError, match="JSON-serializable"):
        run_sweep(helper.square, [{"x": object()}], store, name="n", executor="serial")
    with pytest.raises(TypeError, match="mapping"):
        run_sweep(helper.square, [[("x", 1)]], store, name="n", executor="serial")
    with pytest.raises(TypeError, match="callable"):
        run_sweep("square", [{"x": 1}], store, name="n", executor="serial")
    with pytest.raises(ValueError, match="max_workers"):
        run_sweep(helper.square, [{"x": 1}], store, name="n", max_workers=0)
    with pytest.raises(ValueError, match="name"):
        run_sweep(helper.square, [{"x": 1}], store, name="", executor="serial")


def test_json_round_trip_of_store_config(helper, tmp_path):
    store = ResultsStore(tmp_path / "s.sqlite")
    run_sweep(helper.square, [{"x": 2, "tag": "a"}], store, name="j", executor="serial",
              progress=False)
    (record,) = store.records("j")
    assert record["config"] == {"tag": "a", "x": 2}
    assert record["metrics"] == json.loads(json.dumps({"loss": 4.0, "twice": 4}))


def test_garbage_or_folder_store_is_named_and_left_untouched(tmp_path):
    garbage = tmp_path / "runs.sqlite"
    content = b"this is not a database " * 100
    garbage.write_bytes(content)
    with pytest.raises(ValueError, match=r"runs\.sqlite' is damaged or not a valleys results "
                                         r"store .*left as it is"):
        ResultsStore(garbage)
    assert garbage.read_bytes() == content
    with pytest.raises(ValueError, match="is a folder; give a file path"):
        ResultsStore(tmp_path)


def test_script_without_main_guard_fails_loudly(helper, tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(f"""
        import sweeps_helper as h
        from valleys.sweeps import run_sweep
        run_sweep(h.square, [{{"x": 1}}, {{"x": 2}}], {str(tmp_path / "u.sqlite")!r}, name="u",
                  executor="process", max_workers=2, progress=False)
    """))
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(Path(helper.__file__).parent), *sys.path])}
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0
    assert 'if __name__ == "__main__":' in result.stderr
    assert "worker processes could not start" in result.stderr


def test_workers_exit_when_the_sweep_is_killed(helper, tmp_path):
    pids = tmp_path / "pids"
    code = textwrap.dedent("""
        import sys
        import sweeps_helper as h
        from valleys.sweeps import run_sweep
        if __name__ == "__main__":
            run_sweep(h.record_pid_and_sleep, [{"x": 0, "path": sys.argv[2]},
                                               {"x": 1, "path": sys.argv[2]}],
                      sys.argv[1], name="orphans", executor="process", max_workers=2,
                      progress=False)
    """)
    script = tmp_path / "parent.py"
    script.write_text(code)
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(Path(helper.__file__).parent), *sys.path])}
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path / "o.sqlite"),
                               str(pids)], env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(_pids(pids)) < 2:
            time.sleep(0.1)
        workers = _pids(pids)
        assert len(workers) == 2
    finally:
        parent.kill()  # SIGKILL the parent alone: its workers are orphaned
        parent.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers)


def _pids(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by init) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(os.name != "posix", reason="the sweep lock uses flock")
def test_a_second_run_of_the_same_sweep_is_refused(helper, tmp_path):
    from valleys.sweeps._runner import _sweep_lock

    store = ResultsStore(tmp_path / "l.sqlite")
    with _sweep_lock(store, "busy"):
        # flock locks are per open file: a second open in this process conflicts like another
        # process would.
        with pytest.raises(RuntimeError, match=r"sweep 'busy' is already running .*pid"):
            run_sweep(helper.square, [{"x": 1}], store, name="busy", executor="serial",
                      progress=False)
        run_sweep(helper.square, [{"x": 1}], store, name="other", executor="serial",
                  progress=False)  # another name is free
    df = run_sweep(helper.square, [{"x": 1}], store, name="busy", executor="serial",
                   progress=False)
    assert df["status"].tolist() == ["done"]
