"""Fingerprints that let an :class:`~valleys.Objective` notice data or parameters that differ.

Two kinds, both cheap compared with the forward passes they guard:

* the *data* fingerprint of an iterable of batches: per batch, a few float64 sums of the
  inputs and targets taken on the first pass (when the objective is built), against which
  every later pass is checked, so a shuffling sampler, random augmentation or a one-shot source
  raises instead of silently giving a wrong loss;
* the *vector* fingerprint ``v · p`` of a flat vector ``v`` with a fixed random probe ``p``
  (the same on every rank), which the sharded objective all-gathers or all-reduces to check
  that all ranks hold the same ``θ`` and multiply the same vectors.
"""

from __future__ import annotations

import torch

from valleys.errors import ArgumentValueError

__all__ = [
    "CHECKSUM_TERMS",
    "DTYPE_CODES",
    "check_batch_size",
    "check_handshake",
    "check_pass",
    "checksum",
    "first_pass_checksum",
    "probe_vector",
    "stack_checksums",
]

# Per batch, these sums (float64) fingerprint the first pass: Σ rows of X, Σ rows of Y,
# Σ rowX·rowY (the pairing of inputs with targets) and Σ position·rowX (the order of samples
# within the batch, which per-sample quantities depend on). Positions count from the batch's
# start, so the fingerprint does not depend on chunk_size. The first pass also keeps the sums
# of absolute values, the scale of what rounding may change. Reading a chunk once more costs
# far less than the forward pass it is fed to.
CHECKSUM_TERMS = 4
_CHECKSUM_RTOL = 1e-9

# A code per parameter dtype, so ranks can compare their layouts inside one float64 all-gather.
DTYPE_CODES = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2, torch.float64: 3}


def probe_vector(dim: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A fixed random vector (same on every rank) whose products fingerprint flat vectors."""
    gen = torch.Generator().manual_seed(20181203)
    return torch.randn(dim, generator=gen, dtype=torch.float64).to(device, dtype)


def _row_sums(t: torch.Tensor) -> torch.Tensor:
    if t.is_complex():
        t = torch.view_as_real(t)
    return t.reshape(t.shape[0], -1).sum(1, dtype=torch.float64)


def checksum(X: torch.Tensor, Y: torch.Tensor, start: int, scale: bool = False) -> torch.Tensor:
    """The checksum terms of one chunk starting at position ``start`` of its batch,
    ``(CHECKSUM_TERMS,)``; with ``scale`` also their sums of absolute values,
    ``(2, CHECKSUM_TERMS)``."""
    rx, ry = _row_sums(X), _row_sums(Y)
    position = torch.arange(start + 1, start + 1 + X.shape[0], dtype=torch.float64,
                            device=rx.device)
    terms = torch.stack([rx, ry, rx * ry, position * rx])
    return torch.stack([terms.sum(1), terms.abs().sum(1)]) if scale else terms.sum(1)


def first_pass_checksum(X: torch.Tensor, Y: torch.Tensor, step: int) -> torch.Tensor:
    """The reference ``(2, CHECKSUM_TERMS)`` of one batch, summed over its chunks of ``step``
    samples as :meth:`~valleys.Objective.chunks` will cut them (on the CPU, in float64)."""
    total = torch.zeros(2, CHECKSUM_TERMS, dtype=torch.float64)
    for start in range(0, X.shape[0], step):
        total += checksum(X[start : start + step], Y[start : start + step], start,
                          scale=True).cpu()
    return total


def stack_checksums(checksums: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The first pass's references as one ``(batches, 2, CHECKSUM_TERMS)`` tensor on
    ``device`` (where later passes accumulate theirs)."""
    if not checksums:
        return torch.zeros(0, 2, CHECKSUM_TERMS, dtype=torch.float64, device=device)
    return torch.stack(checksums).to(device)


def check_batch_size(index: int, X: torch.Tensor, Y: torch.Tensor, sizes: tuple[int, ...]
                     ) -> None:
    """Raise unless batch ``index`` of a later pass exists and has its first-pass size."""
    if index >= len(sizes):
        raise _data_changed(index, f"is one more than the {len(sizes)} batches of the first pass")
    if X.shape[0] != sizes[index] or Y.shape[0] != sizes[index]:
        raise _data_changed(index, f"has {X.shape[0]} samples (inputs) and {Y.shape[0]} "
                                   f"(targets), the first pass had {sizes[index]}")


def check_pass(seen: torch.Tensor, count: int, reference: torch.Tensor) -> None:
    """Raise unless a completed pass of ``count`` batches with checksums ``seen`` matches the
    first pass (``reference``, from :func:`stack_checksums`) up to rounding."""
    if count < reference.shape[0]:
        raise _data_changed(count, f"is missing: the pass ended after {count} batches, the "
                                   f"first had {reference.shape[0]}")
    changed = _first_mismatch(seen, reference)
    if changed is not None:
        raise _data_changed(changed, "holds other values than on the first pass (its "
                                     "checksums of inputs and targets differ)")


def _first_mismatch(seen: torch.Tensor, reference: torch.Tensor) -> int | None:
    """Index of the first batch whose checksums differ beyond rounding (NaN differs too)."""
    if not reference.numel():
        return None
    tolerance = _CHECKSUM_RTOL * reference[:, 1]
    agree = ((seen - reference[:, 0]).abs() <= tolerance).all(dim=1)
    bad = torch.nonzero(~agree).flatten()
    return int(bad[0]) if bad.numel() else None


def _data_changed(index: int, what: str) -> ArgumentValueError:
    return ArgumentValueError(
        f"the data changed between passes: batch {index} {what}. The objective passes over "
        "the data many times (every loss, gradient and curvature product) and each pass must "
        "yield the same batches in the same order, or results are silently wrong. Turn off "
        "shuffling and random augmentation (DataLoader(shuffle=False), no random sampler or "
        "transforms), pass the data as tensors (X, Y), or materialize the batches once: "
        "data = list(loader)"
    )


def check_handshake(gathered: torch.Tensor, failure: Exception | None,
                    ) -> tuple[list[int], list[int]]:
    """Check the rows all-gathered when a sharded objective is built: one per rank, holding
    (failed, shard size, chunks, dim, dtype code, θ fingerprint). Raises this rank's own
    ``failure`` first, then the same error on every rank; returns the shard sizes and chunks."""
    world_size = gathered.shape[0]
    failed = [r for r in range(world_size) if gathered[r, 0] != 0]
    if failure is not None:
        raise failure
    if failed:
        raise RuntimeError(
            f"building the distributed Objective failed on rank(s) {failed} (their own "
            "errors say why); this rank stops too"
        )
    sizes = [int(v) for v in gathered[:, 1]]
    empty = [r for r, size in enumerate(sizes) if size == 0]
    if empty:
        raise ArgumentValueError(
            f"the data shard of rank(s) {empty} is empty (shard sizes {sizes}); give every "
            "rank at least one sample, e.g. with valleys.distributed.shard(X, Y)"
        )
    layouts = {tuple(row.tolist()) for row in gathered[:, 3:5]}
    if len(layouts) > 1:
        raise ArgumentValueError(
            "the ranks' models differ in parameter count or dtype (dim, dtype code per rank: "
            f"{gathered[:, 3:5].tolist()}); build the same model on every rank"
        )
    fingerprints = gathered[:, 5]
    spread = float((fingerprints - fingerprints[0]).abs().max())
    if spread > 1e-6 * (float(fingerprints.abs().max()) + 1e-12):
        raise ArgumentValueError(
            "the model's parameters differ across ranks; copy rank 0's with "
            "valleys.distributed.broadcast_parameters(model) (DistributedDataParallel does "
            "this when it wraps the model) or seed the model's construction identically"
        )
    return sizes, [int(v) for v in gathered[:, 2]]
