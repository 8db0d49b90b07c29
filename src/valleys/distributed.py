"""Running valleys over several processes with :mod:`torch.distributed`.

valleys scales on the engine users already launch with: ``torchrun`` starts one process per GPU
(or per CPU socket), each process holds a *shard* of the samples, and a sharded
:class:`~valleys.Objective` (``distributed=True``) sums partial results over the processes
with one all-reduce per product. Everything else (solvers, sharpness, stability) runs
unchanged and identically on every rank: the same seed gives the same vectors everywhere.

This module holds the small helpers around the process group:

* :func:`init` starts the group from torchrun's environment, with a timeout on collectives
  (a rank that fails or stalls then raises on the others instead of hanging them);
* :func:`rank`, :func:`world_size`, :func:`is_main_process`, :func:`print0`: only rank 0
  writes files and prints progress;
* :func:`shard_bounds`, :func:`shard`: contiguous, near-equal shards of a data set;
* :func:`all_reduce_sum`: the one collective the sharded objective uses, with a cheap check
  that every rank reduced products of the *same* vectors.
"""

from __future__ import annotations

import builtins
import math
import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from valleys.errors import ArgumentValueError

__all__ = [
    "CollectiveError",
    "all_gather_rows",
    "all_reduce_sum",
    "broadcast_parameters",
    "check_model_device",
    "collective_device",
    "default_device",
    "init",
    "is_initialized",
    "is_main_process",
    "print0",
    "rank",
    "shard",
    "shard_bounds",
    "world_size",
]

# Long enough for a slow first pass (graphs of a big shard) between two collectives, short
# enough that a dead or stuck rank does not block the others for torch's default 30 minutes.
DEFAULT_TIMEOUT_S = 600.0
_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class CollectiveError(RuntimeError):
    """A collective failed: another rank raised, died or did not arrive within the timeout."""


def is_initialized() -> bool:
    """Whether a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0 (and without a process group): the only rank that writes or prints."""
    return rank() == 0


def print0(*args, **kwargs) -> None:
    """``print`` on rank 0 only."""
    if is_main_process():
        builtins.print(*args, **kwargs)


def init(
    backend: str | None = None, *, timeout: float | timedelta = DEFAULT_TIMEOUT_S
) -> torch.device:
    """Start the default process group from torchrun's environment; return this rank's device.

    ``torchrun`` (or any launcher) sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
    ``MASTER_PORT`` and ``LOCAL_RANK``. ``backend=None`` picks ``"nccl"`` when CUDA is
    available and ``"gloo"`` otherwise; with NCCL each process uses ``cuda:LOCAL_RANK``.
    ``timeout`` (seconds) bounds every collective: if a rank fails or stalls, the others raise
    after at most this long instead of waiting forever. Calling it again is a no-op.
    """
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed support")
    seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
    if not (math.isfinite(seconds) and seconds > 0):
        raise ArgumentValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if not dist.is_initialized():
        missing = [name for name in _TORCHRUN_VARS if name not in os.environ]
        if missing:
            raise ArgumentValueError(
                f"no process group and the environment lacks {', '.join(missing)}; launch with "
                "`torchrun --nproc_per_node N ...` or call torch.distributed.init_process_group "
                "yourself before building a distributed Objective"
            )
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            local_rank, visible = int(os.environ.get("LOCAL_RANK", 0)), torch.cuda.device_count()
            if local_rank >= visible:
                # NCCL needs one GPU per process; set_device would fail with a bare CUDA error.
                raise ArgumentValueError(
                    f"NCCL runs one process per GPU, but LOCAL_RANK={local_rank} and only "
                    f"{visible} CUDA device(s) are visible; launch at most {visible} processes "
                    "per node (torchrun --nproc_per_node), or use backend='gloo'"
                )
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=seconds))
    return default_device()


def default_device() -> torch.device:
    """The device this rank should put its model and shard on: ``cuda:LOCAL_RANK`` with NCCL."""
    if is_initialized() and "nccl" in dist.get_backend():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def collective_device(device: torch.device) -> torch.device:
    """Where a collective on tensors of ``device`` runs: NCCL on CUDA, gloo on the CPU.

    Under NCCL, CPU tensors (the small bookkeeping rows of the objective's handshake) are staged
    through this rank's current GPU; the model itself must be on a GPU
    (:func:`check_model_device`).
    """
    backend = dist.get_backend()
    if backend == "nccl":
        if device.type != "cuda":
            return torch.device("cuda", torch.cuda.current_device())
        return device
    if backend == "gloo":
        return torch.device("cpu")
    return device  # mixed ("cpu:gloo,cuda:nccl") or other backends dispatch by device


def check_model_device(device: torch.device) -> None:
    """Refuse a model on the CPU under NCCL, which reduces CUDA tensors only.

    (Staging every product through the GPU would hide a slow, probably unintended setup.)
    """
    if "nccl" in dist.get_backend() and device.type != "cuda":
        raise ArgumentValueError(
            f"the NCCL backend reduces CUDA tensors, but the model is on {device}; move it "
            "to valleys.distributed.default_device() or use the gloo backend"
        )


def shard_bounds(n: int, rank_: int | None = None, world_size_: int | None = None) -> range:
    """Indices ``[start, stop)`` of ``rank_``'s contiguous shard of ``n`` samples.

    The first ``n mod W`` ranks get one sample more (as :func:`numpy.array_split`), so shards
    are concatenated in rank order to give the whole data set.
    """
    r = rank() if rank_ is None else int(rank_)
    w = world_size() if world_size_ is None else int(world_size_)
    if w < 1 or not 0 <= r < w:
        raise ArgumentValueError(f"rank {r} is not in [0, world size {w})")
    base, extra = divmod(int(n), w)
    start = r * base + min(r, extra)
    return range(start, start + base + (r < extra))


def shard(
    X: torch.Tensor, Y: torch.Tensor, rank_: int | None = None, world_size_: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's contiguous shard ``(X[a:b], Y[a:b])`` (see :func:`shard_bounds`)."""
    if X.shape[0] != Y.shape[0]:
        raise ArgumentValueError(f"X and Y have {X.shape[0]} and {Y.shape[0]} samples")
    bounds = shard_bounds(X.shape[0], rank_, world_size_)
    return X[bounds.start : bounds.stop], Y[bounds.start : bounds.stop]


def broadcast_parameters(model: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank (as DDP does when it wraps)."""
    for tensor in [*model.parameters(), *model.buffers()]:
        device = collective_device(tensor.device)
        work = tensor.detach().to(device)
        _collective(dist.broadcast, work, src=src)
        with torch.no_grad():
            tensor.copy_(work.to(tensor.device))


def all_reduce_sum(
    partial: torch.Tensor,
    *,
    probes: tuple[torch.Tensor, ...] = (),
    what: str = "a sum over ranks",
) -> torch.Tensor:
    """Sum ``partial`` over all ranks (one all-reduce) and return the total on its device.

    ``probes`` are scalar fingerprints ``s_r`` of this rank's inputs (for instance ``⟨v, r⟩``
    for a fixed random ``r``); they travel in the same message as ``Σ_r s_r``, ``Σ_r r·s_r``
    and ``Σ_r |s_r|``. Equal inputs on every rank give ``Σ_r r·s_r = (W−1)/2 · Σ_r s_r``; a
    violation means the ranks multiplied different vectors (e.g. unseeded solvers), and every
    rank raises the same ``RuntimeError`` instead of silently returning a mixture.
    """
    floating = partial.is_floating_point()
    dtype = partial.dtype if floating else torch.float64
    flat = partial.reshape(-1).to(dtype)
    s = torch.cat([p.reshape(-1) for p in probes]).to(dtype) if probes else flat[:0]
    r = rank()
    buffer = torch.cat([flat, s, r * s, s.abs()])
    work = buffer.to(collective_device(partial.device))
    _collective(dist.all_reduce, work, what=what)
    work = work.to(partial.device)
    m = s.numel()
    total = work[: flat.numel()]
    if m:
        _check_same_inputs(work[flat.numel() :], m, what)
    return total.reshape(partial.shape).to(partial.dtype)


def all_gather_rows(row: torch.Tensor) -> torch.Tensor:
    """Stack every rank's 1-D ``row`` (same length on all ranks) into a ``(W, len)`` tensor."""
    device = collective_device(row.device)
    work = row.to(device)
    rows = [torch.empty_like(work) for _ in range(world_size())]
    try:
        dist.all_gather(rows, work)
    except RuntimeError as error:
        raise CollectiveError(_failure_message("an all-gather", error)) from error
    return torch.stack(rows).to(row.device)


def _check_same_inputs(sums: torch.Tensor, m: int, what: str) -> None:
    w = world_size()
    if w == 1:
        return
    total, weighted, size = sums[:m].double(), sums[m : 2 * m].double(), sums[2 * m :].double()
    finite = torch.isfinite(total) & torch.isfinite(weighted) & torch.isfinite(size)
    # Identical fingerprints make the weighted sum exact up to the rounding of W additions.
    eps = torch.finfo(sums.dtype).eps
    slack = 16 * w * eps * size * (w - 1) / 2 + torch.finfo(torch.float64).tiny
    mismatch = finite & ((weighted - total * (w - 1) / 2).abs() > slack)
    if bool(mismatch.any()):
        raise RuntimeError(
            f"{what}: the ranks applied it to different vectors or parameters. Every rank must "
            "run the same computation with the same inputs: pass the same integer seed to the "
            "solvers (seed=None draws a different vector per process) and the same θ"
        )


def _collective(fn, tensor: torch.Tensor, *, what: str = "a collective", **kwargs) -> None:
    try:
        fn(tensor, **kwargs)
    except RuntimeError as error:
        raise CollectiveError(_failure_message(what, error)) from error


def _failure_message(what: str, error: Exception) -> str:
    return (
        f"{what} failed on rank {rank()} of {world_size()}: another rank probably raised, "
        "exited or did not reach this collective within the process group's timeout "
        f"(look at the other ranks' errors). Underlying error: {error}"
    )
