"""One driver for every reproduction: presets, seeds, device, output, resumption, metadata.

:func:`run` validates its arguments before any computation (an output folder under a file or
not writable, an unavailable device, bad seeds or an unknown preset give a ``ValueError``),
then measures each seed that the output folder does not already hold. Each seed's records are
written atomically to ``seeds/seed-<s>.json`` and reused on the next call with the same preset,
configuration, device and ``measure.py`` (its hash), so a killed run resumes at the first
unfinished seed, and records of changed code are never reused. The claims,
figures, results table and report are always rebuilt from the stored records.
"""

from __future__ import annotations

import dataclasses
import datetime
import inspect
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from valleys._checks import available_device, writable_folder
from valleys._records import jsonable
from valleys.errors import ArgumentTypeError, ArgumentValueError
from valleys.experiments.common import format_cell, markdown_table, torch_threads
from valleys.experiments.output import OutputFolder
from valleys.experiments.protocol import VERDICTS, Claim, Experiment, Figure

__all__ = ["MIN_SEEDS", "run"]

#: The fewest seeds per claim a preset's verdicts rest on (deterministic claims need one).
MIN_SEEDS = {"quick": 2, "full": 3}
DEFAULT_SEEDS = {"quick": (0, 1), "full": (0, 1, 2)}
_RESERVED = {"name", "title", "paper", "preset", "config", "seeds", "device", "claims",
             "verdicts", "figures", "metadata", "provisional"}


def _seeds(seeds: Sequence[int] | None, default: Sequence[int]) -> list[int]:
    bad = ArgumentTypeError(f"seeds must be a list of non-negative integers such as [0, 1, 2], "
                            f"got {seeds!r}")
    if seeds is not None and (isinstance(seeds, str | bytes) or not isinstance(seeds, Iterable)):
        raise bad
    try:
        chosen = list(default if seeds is None else seeds)
    except TypeError:  # iterable in name only, e.g. a 0-d tensor
        raise bad from None
    if not chosen:
        raise ArgumentValueError("give at least one seed (e.g. --seeds 0,1,2)")
    for seed in chosen:
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ArgumentValueError(f"seeds must be non-negative integers, got {seed!r}")
    if len(set(chosen)) != len(chosen):
        raise ArgumentValueError(f"seeds repeat: {chosen}")
    return [int(s) for s in chosen]


def _config_dict(config: Any) -> dict[str, Any]:
    if hasattr(config, "to_dict"):
        return _plain(config.to_dict())
    if dataclasses.is_dataclass(config):
        return _plain(dataclasses.asdict(config))
    raise ArgumentTypeError(f"a preset must be a dataclass, got {type(config).__name__}")


def _plain(x: Any) -> Any:
    """Records as plain JSON data (NaN and ±inf kept; they round-trip through Python's json)."""
    if isinstance(x, torch.Tensor):
        return _plain(x.detach().cpu().tolist())
    if isinstance(x, np.ndarray):
        return _plain(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return _plain(dataclasses.asdict(x))
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


def _atomic_json(path: Path, payload: Any) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False,
                                     encoding="utf-8") as handle:
        json.dump(payload, handle)
    os.replace(handle.name, path)


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def _versions() -> dict[str, str]:
    import matplotlib
    import scipy

    from valleys import __version__

    return {"valleys": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "scipy": scipy.__version__, "matplotlib": matplotlib.__version__,
            "python": platform.python_version()}


def _measure_seed(experiment: Experiment, config: Any, seed: int, device: torch.device,
                  workdir: Path, key: dict[str, Any]) -> Any:
    kwargs = {}
    if "workdir" in inspect.signature(experiment.measure).parameters:
        # The sub-units a killed seed left behind are reused only under the same key: a
        # changed config or measure.py starts from an empty folder.
        stamp = workdir / "key.json"
        if workdir.exists() and (not stamp.exists()
                                 or json.loads(stamp.read_text(encoding="utf-8")) != key):
            shutil.rmtree(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        _atomic_json(stamp, key)
        kwargs["workdir"] = workdir
    with torch_threads(getattr(config, "threads", None)):
        return experiment.measure(config, seed, device, **kwargs)


def _check_claims(experiment: Experiment, claims: list[Claim]) -> None:
    specs = {spec.id: spec for spec in experiment.claim_specs}
    ids = [c.id for c in claims]
    if sorted(ids) != sorted(specs):
        raise RuntimeError(f"{experiment.name}: claims() returned {ids}, but the experiment "
                           f"states {list(specs)}")
    for claim in claims:
        spec = specs[claim.id]
        if claim.criterion != spec.criterion or claim.claim != spec.claim:
            raise RuntimeError(f"{experiment.name}: claim {claim.id!r} changed its statement or "
                               "criterion after the run")
        if claim.verdict not in VERDICTS or (claim.verdict == "partly" and spec.partly is None):
            raise RuntimeError(f"{experiment.name}: claim {claim.id!r} has verdict "
                               f"{claim.verdict!r}, which its criterion does not define")


def _report(experiment: Experiment, summary: dict[str, Any], body: str, table) -> str:
    meta = summary["metadata"]
    seeds = ",".join(str(s) for s in summary["seeds"])
    lines = [
        f"# {experiment.name}: {experiment.title}".rstrip(": "),
        "",
        f"**Paper.** {experiment.paper}",
        "",
        f"**Run.** preset `{summary['preset']}`, seeds {seeds}, device `{summary['device']}`, "
        f"{format_cell(meta['wall_s'], 3)} s of wall time ({format_cell(meta['measure_s'], 3)} s "
        f"measuring), valleys {meta['versions']['valleys']}, torch {meta['versions']['torch']}, "
        f"commit `{meta['git_commit']}`.",
        "",
        "```bash",
        f"valleys reproduce {experiment.name} --preset {summary['preset']} --seeds {seeds} "
        f"--device {summary['device']}" if summary["preset"] != "custom" else
        "# a custom preset, run from Python: valleys.experiments.run(name, out, preset=...)",
        "```",
        "",
        "## Claims and verdicts",
        "",
        "Each criterion was fixed in code before the run; the verdict is computed from it.",
        "",
    ]
    rows = [{"id": c["id"], "claim": c["claim"], "criterion": c["criterion"],
             "verdict": c["verdict"]} for c in summary["claims"]]
    lines += [markdown_table(rows, ["id", "claim", "criterion", "verdict"]), ""]
    lines += [f"- `{c['id']}`: {c['sentence']}" for c in summary["claims"]]
    if summary.get("provisional"):
        lines += ["", f"**Provisional.** Claims {summary['provisional']} rest on fewer seeds "
                      f"than the protocol asks for the {summary['preset']} preset "
                      f"({MIN_SEEDS.get(summary['preset'], 1)})."]
    lines += ["", body.strip(), ""]
    if summary["figures"]:
        lines += ["## Figures", ""]
        for number, figure in enumerate(summary["figures"], 1):
            lines += [f"![{figure['caption']}]({figure['stem']}.png)", "",
                      f"*Figure {number}.* {figure['caption']}", ""]
    if table is not None and len(table):
        lines += ["## Results table", "", f"{len(table)} rows; all of them in `results.csv`.", ""]
        lines += [markdown_table(table.head(60), list(table.columns)), ""]
    lines += ["## Configuration", "", "```json", json.dumps(summary["config"], indent=1), "```",
              ""]
    return "\n".join(lines)


def run(
    experiment: str | Experiment,
    out: str | Path,
    *,
    preset: str | Any = "quick",
    seeds: Sequence[int] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Run a reproduction and write its folder; returns the summary (also ``summary.json``).

    Args:
        experiment: a registered name (``valleys reproduce --list``) or a loaded experiment.
        out: output folder (created; must be writable).
        preset: ``"quick"``, ``"full"`` or a preset object of the experiment's preset type.
        seeds: seeds to measure (default: the experiment's for the preset, ≥ 2 quick, ≥ 3 full).
        device: where the models and data live (``"cpu"``, ``"cuda"``, ...).
        progress: show a progress bar over seeds.
    """
    from valleys.experiments import load_experiment

    if isinstance(experiment, str):
        experiment = load_experiment(experiment)
    elif not isinstance(experiment, Experiment):
        raise ArgumentTypeError(
            f"experiment must be a registered name (valleys reproduce --list) or an "
            f"Experiment, got {type(experiment).__name__}")
    if isinstance(preset, str):
        if preset not in experiment.presets:
            raise ArgumentValueError(f"unknown preset {preset!r}; choose one of "
                                     f"{sorted(experiment.presets)}")
        preset_name, config = preset, experiment.presets[preset]
    else:
        expected = type(experiment.presets["quick"])
        if not isinstance(preset, expected):
            raise ArgumentTypeError(f"preset must be a name or a {expected.__name__}, got "
                                    f"{type(preset).__name__}")
        preset_name, config = "custom", preset
    default = experiment.seeds.get(preset_name, DEFAULT_SEEDS.get(preset_name, (0,)))
    chosen = _seeds(seeds, default)
    dev = available_device(device)
    path = writable_folder(out)
    folder = OutputFolder(path, check_figures=True)
    config_dict = _config_dict(config)
    seed_dir = path / "seeds"
    seed_dir.mkdir(exist_ok=True)

    started = time.perf_counter()
    records: dict[int, Any] = {}
    measure_s: dict[int, float] = {}
    resumed: list[int] = []
    machines: dict[int, dict[str, Any]] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(chosen), desc=experiment.name, unit="seed", file=sys.stderr)
    for seed in chosen:
        target = seed_dir / f"seed-{seed}.json"
        key = {"preset": preset_name, "config": config_dict, "device": dev.type,
               "code": experiment.code_version}
        stored = None
        if target.exists():
            try:
                stored = json.loads(target.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                stored = None  # a damaged file is measured again
        if stored is not None and stored.get("key") == key:
            resumed.append(seed)
        else:
            tic = time.perf_counter()
            raw = _measure_seed(experiment, config, seed, dev, seed_dir / f"seed-{seed}", key)
            stored = {"key": key, "seed": seed, "wall_s": time.perf_counter() - tic,
                      "versions": _versions(), "platform": platform.platform(),
                      "records": _plain(raw)}
            _atomic_json(target, stored)
            stored = json.loads(target.read_text(encoding="utf-8"))
        records[seed] = stored["records"]
        measure_s[seed] = stored["wall_s"]
        machines[seed] = {"versions": stored.get("versions"), "platform": stored.get("platform")}
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    claims = experiment.claims(records, config)
    _check_claims(experiment, claims)
    need = MIN_SEEDS.get(preset_name, 1)
    specs = {spec.id: spec for spec in experiment.claim_specs}
    provisional = [c.id for c in claims
                   if not specs[c.id].deterministic and len(c.seeds) < need
                   and c.verdict != "not tested"]
    extra = experiment.summary(records, config) if experiment.summary else {}
    clash = _RESERVED & set(extra)
    if clash:
        raise RuntimeError(f"{experiment.name}: summary() may not set {sorted(clash)}")
    figures: list[Figure] = list(experiment.figures(records, config, folder) or [])
    for figure in figures:
        if not folder.file(f"{figure.stem}.png").exists():
            raise RuntimeError(f"{experiment.name}: figure {figure.stem!r} was not saved")
    table = experiment.table(records, config)
    if table is not None:
        folder.write_table("results.csv", table)
    finished = datetime.datetime.now(datetime.timezone.utc)
    summary: dict[str, Any] = {
        "name": experiment.name,
        "title": experiment.title,
        "paper": experiment.paper,
        "preset": preset_name,
        "config": config_dict,
        "seeds": chosen,
        "device": str(dev),
        "claims": [c.to_dict() for c in claims],
        "verdicts": {c.id: c.verdict for c in claims},
        "provisional": provisional,
        "figures": [dataclasses.asdict(f) for f in figures],
        "metadata": {
            "versions": _versions(),
            "git_commit": _git_commit(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "finished_utc": finished.isoformat(timespec="seconds"),
            "wall_s": time.perf_counter() - started,
            "measure_s": float(sum(measure_s.values())),
            "seed_wall_s": {str(s): measure_s[s] for s in chosen},
            "resumed_seeds": resumed,
            "seed_machines": {str(s): machines[s] for s in chosen},
        },
        **extra,
    }
    body = experiment.report(records, config, claims)
    folder.write_text("report.md", _report(experiment, summary, body, table))
    folder.write_json("summary.json", summary)
    return jsonable(summary)

