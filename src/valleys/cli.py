"""The ``valleys`` command line: ``valleys curvature``, ``valleys problems``.

Bad input prints one line on stderr and exits with status 2; results go to a folder the
command prints (and, with ``--json``, to stdout as JSON).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from valleys._version import __version__
from valleys.errors import ArgumentError, ArgumentValueError

app = typer.Typer(
    name="valleys",
    help="Training dynamics of neural networks: curvature, stability, noise, landscapes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)

DTYPES = {"float32", "float64"}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"valleys {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """valleys: which minima does an optimizer select, and why?"""


@app.command()
def problems() -> None:
    """List the built-in problems."""
    from valleys.problems import PROBLEMS

    table = Table("name", "description", "loss")
    for spec in PROBLEMS.values():
        table.add_row(spec.name, spec.description, spec.loss)
    Console().print(table)


@app.command()
def curvature(
    problem: Annotated[str, typer.Option(help="Built-in problem (see `valleys problems`).")] = (
        "digits-mlp"
    ),
    k: Annotated[int, typer.Option("--k", "-k", help="Number of top eigenvalues.")] = 5,
    tol: Annotated[float, typer.Option(help="Relative residual tolerance of Lanczos.")] = 1e-4,
    trace_method: Annotated[str, typer.Option(help="hutch++, hutchinson or exact.")] = "hutch++",
    trace_matvecs: Annotated[int, typer.Option(help="Matvec budget of the trace.")] = 99,
    probes: Annotated[int, typer.Option(help="Probe vectors of the spectral density.")] = 5,
    lanczos_steps: Annotated[int, typer.Option(help="Lanczos steps per density probe.")] = 60,
    seed: Annotated[int, typer.Option(help="Seed of data, model, training and solvers.")] = 0,
    untrained: Annotated[
        bool, typer.Option("--untrained", help="Analyse the initialization instead.")
    ] = False,
    num_samples: Annotated[
        int | None, typer.Option(help="MNIST-1D only: samples to generate.")
    ] = None,
    chunk_size: Annotated[
        int | None, typer.Option(help="Samples per chunk (bounds memory).")
    ] = None,
    dtype: Annotated[str, typer.Option(help="float32 or float64.")] = "float32",
    device: Annotated[
        str | None, typer.Option(help="torch device, e.g. cpu or cuda:0 (default cpu).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("results/curvature"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    distributed: Annotated[
        bool,
        typer.Option(
            "--distributed",
            help="Shard the samples over the processes started by torchrun (gloo on CPU, NCCL "
            "on GPU with cuda:LOCAL_RANK per rank); rank 0 writes the results.",
        ),
    ] = False,
) -> None:
    """Sharpness, top-k Hessian eigenvalues, trace and spectral density of a built-in problem."""
    import torch

    import valleys
    from valleys import distributed as vdist
    from valleys._checks import available_device, positive_real, writable_folder
    from valleys.linalg import TRACE_METHODS, TRACE_MIN_MATVECS
    from valleys.problems import PROBLEMS, load_problem

    # Every argument is checked here, before a problem is trained or loaded.
    if problem not in PROBLEMS:
        raise ArgumentValueError(
            f"unknown problem {problem!r}; choose one of {sorted(PROBLEMS)} (see "
            "`valleys problems`)")
    if dtype not in DTYPES:
        raise ArgumentValueError(f"--dtype must be float32 or float64, got {dtype!r}")
    if trace_method not in TRACE_METHODS:
        raise ArgumentValueError(
            f"--trace-method must be one of {TRACE_METHODS}, got {trace_method!r}")
    for name, value in (("--k", k), ("--probes", probes), ("--lanczos-steps", lanczos_steps),
                        ("--chunk-size", chunk_size), ("--num-samples", num_samples)):
        if value is not None and value <= 0:
            raise ArgumentValueError(f"{name} must be positive, got {value}")
    positive_real(tol, "--tol", hint="the relative residual tolerance of Lanczos, e.g. 1e-4")
    least = TRACE_MIN_MATVECS.get(trace_method)
    if least is not None and trace_matvecs < least:
        raise ArgumentValueError(f"--trace-matvecs must be at least {least} for --trace-method "
                                 f"{trace_method}, got {trace_matvecs}")
    if seed < 0:
        raise ArgumentValueError(f"--seed must be a non-negative integer, got {seed}")
    if distributed:
        device = device or str(vdist.init())
    device = device or "cpu"
    main_rank = vdist.is_main_process()
    # Checked before any computation: a bad device or output folder costs nothing.
    available_device(device)
    if main_rank:
        writable_folder(out)
    started = time.perf_counter()
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=err,
        transient=as_json,
        disable=not main_rank,
    ) as progress:
        task = progress.add_task("loading problem", total=4)
        if distributed and not main_rank:
            torch.distributed.barrier()  # rank 0 trains or loads the checkpoint first
        prob = load_problem(
            problem,
            trained=not untrained,
            seed=seed,
            num_samples=num_samples,
            dtype=getattr(torch, dtype),
            device=device,
        )
        if distributed and main_rank:
            torch.distributed.barrier()
        obj = prob.objective(chunk_size=chunk_size, distributed=distributed)
        H = valleys.hessian(obj)
        progress.update(task, advance=1, description=f"top-{k} eigenvalues")
        eig = valleys.eigsh(H, k=k, which="largest", tol=tol, seed=seed)
        progress.update(task, advance=1, description=f"trace ({trace_method})")
        tr = valleys.trace(H, method=trace_method, num_matvecs=trace_matvecs, seed=seed)
        progress.update(task, advance=1, description="spectral density")
        density = valleys.spectral_density(
            H, num_probes=probes, lanczos_steps=lanczos_steps, seed=seed
        )
        progress.update(task, advance=1, description="done")

    loss = float(obj.loss())  # every rank takes part in the sum
    processes = vdist.world_size()
    backend = torch.distributed.get_backend() if distributed else None
    if distributed:
        # Every rank is past its last collective before any tears down: gloo aborts a process
        # whose peer closes the connection while it still has work in flight.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    if not main_rank:
        return
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "problem": problem,
        "trained": not untrained,
        "checkpoint": str(prob.checkpoint) if prob.checkpoint else None,
        "n": obj.n,
        "num_parameters": obj.dim,
        "loss_convention": obj.loss_name,
        "loss": loss,
        "dtype": dtype,
        "device": device,
        "seed": seed,
        "processes": processes,
        "backend": backend,
        "sharpness": float(eig.values[0]),
        "eigenvalues": eig.to_dict(),
        "trace": tr.to_dict(),
        "density": {k_: v for k_, v in density.to_dict().items() if k_ not in ("grid", "density")},
        "wall_time": time.perf_counter() - started,
        "valleys_version": __version__,
    }
    _write_json(out / "curvature.json", summary)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    density.plot(ax=ax, log=True)
    for value in eig.values.tolist():
        ax.axvline(value, color="tab:red", lw=0.6, alpha=0.6)
    ax.set_title(f"Hessian spectral density: {problem} (n={obj.n}, p={obj.dim})")
    fig.tight_layout()
    for suffix in ("png", "svg"):
        fig.savefig(out / f"spectral_density.{suffix}", dpi=150)
    plt.close(fig)

    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    table = Table(title=f"curvature of {problem} ({'trained' if not untrained else 'init'})")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_column("how", style="dim")
    table.add_row("loss", f"{summary['loss']:.4g}", f"{obj.loss_name}, n={obj.n}, p={obj.dim}")
    table.add_row("sharpness λ₁", f"{eig.values[0]:.6g}", f"Lanczos, tol {tol:g}")
    for i, value in enumerate(eig.values.tolist()[1:], start=2):
        table.add_row(f"λ{i}", f"{value:.6g}", "")
    table.add_row("", "", f"{eig.matvecs} matvecs, converged={eig.converged}")
    how = f"{tr.method}, {tr.matvecs} matvecs"
    table.add_row("trace", f"{tr.value:.6g} ± {tr.stderr:.2g}", how)
    table.add_row("density", f"{probes} probes", f"SLQ, {density.matvecs} matvecs")
    Console().print(table)
    Console().print(f"results written to {out.resolve()}")


@app.command()
def reproduce(
    name: Annotated[str, typer.Argument(help="Experiment name (see --list).")] = "",
    quick: Annotated[bool, typer.Option("--quick", help="Same as --preset quick.")] = False,
    preset: Annotated[
        str | None, typer.Option(help="quick (minutes on a CPU) or full (default).")
    ] = None,
    seeds: Annotated[
        str | None,
        typer.Option(help="Comma-separated seeds, e.g. 0,1,2 (default: the preset's).")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or mps.")] = "cpu",
    out: Annotated[Path | None, typer.Option(help="Output folder (default results/NAME).")] = None,
    list_all: Annotated[bool, typer.Option("--list", help="List the experiments.")] = False,
) -> None:
    """Run a paper reproduction: figures, results table, summary.json and report.md.

    Finished seeds in the output folder are reused, so an interrupted run resumes.
    """
    from valleys._checks import available_device, writable_folder
    from valleys.experiments import EXPERIMENTS, load_experiment
    from valleys.experiments.driver import run

    if list_all or not name:
        for known in sorted(EXPERIMENTS):
            typer.echo(known)
        return
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ArgumentValueError(
            "valleys reproduce runs on one process (its experiments build their own objectives, "
            "so every rank would repeat the whole run); launch it without torchrun"
        )
    if quick and preset not in (None, "quick"):
        raise ArgumentValueError(f"--quick contradicts --preset {preset}; give one of them")
    chosen = "quick" if quick else (preset or "full")
    seed_list = None
    if seeds is not None:
        try:
            seed_list = [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError:
            raise ArgumentValueError(
                f"--seeds {seeds!r}: give comma-separated integers, e.g. 0,1,2"
            ) from None
        if any(s < 0 for s in seed_list):
            raise ArgumentValueError(f"--seeds {seeds!r}: seeds must be non-negative integers")
    experiment = load_experiment(name)
    # Arguments are checked here, before anything is computed.
    available_device(device)
    folder = writable_folder(out or Path("results") / name)
    run(experiment, folder, preset=chosen, seeds=seed_list, device=device, progress=True)
    Console().print(f"report written to {(folder / 'report.md').resolve()}")


@app.command()
def results(
    folder: Annotated[Path, typer.Argument(help="A folder of reproduction outputs.")],
) -> None:
    """Write FOLDER/README.md: every claim's criterion, measured values and verdict."""
    from valleys.experiments.index import write_index

    Console().print(f"index written to {write_index(folder).resolve()}")


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(path)


def main() -> None:
    """Entry point: run the app, turning bad input into one line and exit status 2."""
    # Usage errors (unknown options, bad types) are handled by typer itself, also with status 2.
    # Only valleys' own argument errors are the user's to fix; anything else is a bug and keeps
    # its traceback.
    try:
        app()
    except ArgumentError as error:
        err.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
