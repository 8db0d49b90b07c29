"""The command line: help, version, a JSON report with figures, one-line errors with status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import valleys


def run_cli(*args, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "valleys", *args], capture_output=True, text=True, env=env,
        timeout=600,
    )


def test_help_and_version():
    assert "curvature" in run_cli("--help").stdout
    done = run_cli("--version")
    assert done.returncode == 0 and valleys.__version__ in done.stdout
    assert "--trace-method" in run_cli("curvature", "--help").stdout


def test_curvature_report_json_and_files(tmp_path):
    out = tmp_path / "report"
    done = run_cli(
        "curvature", "--problem", "digits-mse", "--k", "3", "--trace-matvecs", "30",
        "--probes", "2", "--lanczos-steps", "20", "--json", "--out", str(out),
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    values = summary["eigenvalues"]["values"]
    assert len(values) == 3 and values == sorted(values, reverse=True)
    assert summary["sharpness"] == values[0] > 0
    assert summary["eigenvalues"]["converged"]
    assert summary["trace"]["value"] > values[0]  # PSD-dominated spectrum at a minimum
    assert summary["n"] == 1438
    for name in ("curvature.json", "spectral_density.png", "spectral_density.svg"):
        assert (out / name).stat().st_size > 0
    assert json.loads((out / "curvature.json").read_text())["sharpness"] == summary["sharpness"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--problem", "nope"], "unknown problem"),
        (["--dtype", "float16"], "float32 or float64"),
        (["--k", "0"], "must be positive"),
        (["--trace-method", "magic"], "trace-method"),
    ],
)
def test_bad_input_is_one_line_and_status_2(args, message):
    done = run_cli("curvature", *args)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error:")


def _one_line_status_2(done, message):
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("command", [["curvature", "--problem", "digits-mlp"],
                                     ["reproduce", "linear-stability", "--quick"]])
def test_device_and_output_are_checked_before_computing(command, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = ["--out", str(blocker / "out")]
    # Each answer comes at once: nothing was trained or measured (the cache stays empty).
    env = {"VALLEYS_CACHE_DIR": str(tmp_path / "cache")}
    _one_line_status_2(run_cli(*command, *out, env_extra=env), "is a file, not a folder")
    if not __import__("torch").cuda.is_available():
        _one_line_status_2(run_cli(*command, "--device", "cuda", env_extra=env),
                           "CUDA is not available here")
    _one_line_status_2(run_cli(*command, "--device", "tpu9", env_extra=env), "unknown device")
    assert not (tmp_path / "cache").exists()


def test_unknown_option_is_a_usage_error():
    done = run_cli("curvature", "--bogus")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr


def test_reproduce_refuses_torchrun():
    result = run_cli("reproduce", "linear-stability", "--quick", env_extra={"WORLD_SIZE": "2"})
    assert result.returncode == 2
    assert "runs on one process" in result.stderr


def test_curvature_under_torchrun_matches_one_process(tmp_path):
    """`torchrun --nproc_per_node 2 -m valleys curvature --distributed` (gloo, uneven shards)."""
    args = ["curvature", "--problem", "digits-mlp", "-k", "2", "--probes", "1",
            "--lanczos-steps", "10", "--trace-matvecs", "9", "--dtype", "float64", "--json"]
    single = run_cli(*args, "--out", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    sharded = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "-m", "valleys", *args, "--distributed",
         "--out", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=600,
    )
    assert sharded.returncode == 0, sharded.stderr[-2000:]
    one = json.loads(single.stdout)
    two = json.loads((tmp_path / "two" / "curvature.json").read_text())
    assert two["processes"] == 2 and one["processes"] == 1
    assert two["backend"] == "gloo" and one["backend"] is None
    assert two["n"] == one["n"]
    assert two["sharpness"] == pytest.approx(one["sharpness"], rel=1e-8)
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-10)
    assert not (tmp_path / "two" / "curvature.json.tmp").exists()
