"""Which automatic-differentiation scheme computes Hessian-vector products, chosen by measurement.

:class:`~valleys.operators.HessianOperator` has two ways to compute ``Hv`` (double backward,
forward-over-reverse). Which is faster depends on the model, the batch, the dtype and the
hardware, so ``backend="auto"`` times both on the operator's first chunk of data (after one
warm-up each, round-robin, median of a few runs) together with one gradient on the same chunk,
and keeps the faster. The measurement is a :class:`BackendChoice` record.

A choice is remembered under a key of everything the timing depends on (see
:func:`choice_key`): in a process-level dictionary, and on disk as one small JSON file per key in
``$VALLEYS_CACHE_DIR/hvp_backend`` (default ``~/.cache/valleys/hvp_backend``, beside the
built-in problems' checkpoints), written atomically. A later operator with the same key, in this
process or a later run on the same machine, reuses the choice without measuring again, so the
same machine keeps making the same choice and the same seed keeps giving the same numbers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["BackendChoice", "choice_key", "clear_backend_choices", "lookup_choice",
           "store_choice"]

#: Bumped when the record or the way it is measured changes: older files are then ignored.
FORMAT = 1

_CHOICES: dict[str, BackendChoice] = {}


@dataclass(frozen=True)
class BackendChoice:
    """How a :class:`~valleys.operators.HessianOperator` computes its products, and why.

    Attributes:
        backend: the scheme used, ``"double-backward"`` or ``"forward-over-reverse"``.
        source: ``"explicit"`` (``backend=`` was given), ``"measured"`` (timed now),
            ``"memory"`` or ``"disk"`` (a choice measured earlier for the same key, in this
            process or in an earlier run), or ``"fixed"`` (not measured: see ``reason``).
        reason: one sentence on why this backend.
        seconds_per_hvp: median seconds of one product on the first chunk, per backend
            (``None`` where not measured, or where the backend failed). Double backward is timed
            as it will run: through a reused graph when the operator caches its chunks, and
            building the graph each time otherwise.
        seconds_per_gradient: median seconds of one gradient on the same chunk.
        seconds_per_graph: seconds to build the first-order graph (forward, then backward with
            ``create_graph``) once, when double backward reuses it; ``None`` otherwise.
        hvp_over_gradient: ``seconds_per_hvp[backend] / seconds_per_gradient``, the measured
            cost of one product in gradients.
        graph_reused: whether double backward was timed through a reused graph.
        agreement: relative difference ``‖H_fr v − H_db v‖ / ‖H_db v‖`` of the two backends'
            products on the calibration vector (rounding only, when both work).
        failure: why forward-over-reverse was not usable (an error, or disagreement beyond
            rounding), else ``None``.
        products: Hessian-vector products computed by the calibration (warm-ups included).
            They are reported here and *not* in the operator's ``num_matvecs``, which counts
            only the vectors callers apply the operator to; 0 when the choice was reused.
        gradients: gradients computed by the calibration (likewise not counted elsewhere).
        key: the digest the choice is stored under (``None`` for an explicit backend).
        signature: the readable description that was hashed into ``key``.
    """

    backend: str
    source: str
    reason: str
    seconds_per_hvp: Mapping[str, float | None] = field(default_factory=dict)
    seconds_per_gradient: float | None = None
    seconds_per_graph: float | None = None
    hvp_over_gradient: float | None = None
    graph_reused: bool = False
    agreement: float | None = None
    failure: str | None = None
    products: int = 0
    gradients: int = 0
    key: str | None = None
    signature: Mapping[str, Any] = field(default_factory=dict)

    def reused(self, source: str) -> BackendChoice:
        """This choice as found again (``source``: ``"memory"`` or ``"disk"``): nothing new was
        computed, so the calibration's products and gradients are not counted again."""
        return dataclasses.replace(self, source=source, products=0, gradients=0)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serializable dictionary (what the disk cache stores)."""
        out = dataclasses.asdict(self)
        out["seconds_per_hvp"] = dict(self.seconds_per_hvp)
        out["signature"] = dict(self.signature)
        return out

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> BackendChoice:
        """The record stored by :meth:`to_json` (``KeyError``/``TypeError`` when malformed)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in payload.items() if k in names})


# -- the key ---------------------------------------------------------------------------------------
def _shapes(batch: object) -> object:
    """Shapes and dtypes of the tensors in a (possibly nested) batch, as JSON-able values."""
    if isinstance(batch, torch.Tensor):
        return [list(batch.shape), str(batch.dtype)]
    if isinstance(batch, Mapping):
        return {str(k): _shapes(v) for k, v in sorted(batch.items(), key=lambda kv: str(kv[0]))}
    if isinstance(batch, list | tuple):
        return [_shapes(v) for v in batch]
    return type(batch).__qualname__


def _qualname(obj: object) -> str:
    """``module.QualName`` of a function or class, else of the object's type (a module's)."""
    plain = callable(obj) and not isinstance(obj, torch.nn.Module) and hasattr(obj, "__qualname__")
    target = obj if plain else type(obj)
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', '?')}"


def _hardware(device: torch.device) -> str:
    """The processor the timings are about: the accelerator's name, or the CPU's."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    parts = (platform.machine(), platform.processor(), f"{os.cpu_count()} CPUs")
    return " ".join(part for part in parts if part)


def choice_key(
    objective: Any, X: object, Y: object, *, graph_reused: bool
) -> tuple[str, dict[str, Any]]:
    """``(digest, signature)``: what the relative cost of the two backends depends on.

    The signature holds the architecture (every module's type and its ``extra_repr``, which
    states hyperparameters such as strides and widths, plus the names and shapes of the
    parameters in ``θ``), the loss, the shapes of the first chunk (the batch size, and the
    sequence length of a sequence model), the dtype, the device type and hardware, the thread
    count on CPU, whether double backward reuses its graph, and the torch version. The digest is
    a SHA-256 of it. Parameter *values* are left out: they do not change the cost.
    """
    device = objective.device
    call = getattr(objective, "_call", None)  # a function objective's fn(model, batch)
    signature: dict[str, Any] = {
        "format": FORMAT,
        "objective": _qualname(objective),
        "modules": [[_qualname(m), m.extra_repr()] for m in objective.model.modules()],
        "parameters": [[name, list(shape)] for name, shape in
                       zip(objective.names, objective.shapes, strict=True)],
        "loss": [objective.loss_name, _qualname(getattr(call, "fn", objective.loss_fn))],
        "chunk": [_shapes(X), _shapes(Y)],
        "dtype": str(objective.dtype),
        "device": device.type,
        "hardware": _hardware(device),
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "graph_reused": graph_reused,
        "torch": torch.__version__,
    }
    text = json.dumps(signature, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20], signature


# -- the two caches ------------------------------------------------------------------------------
def cache_folder() -> Path:
    """``$VALLEYS_CACHE_DIR/hvp_backend`` (default ``~/.cache/valleys/hvp_backend``), read at
    each call so that a changed environment variable takes effect."""
    root = os.environ.get("VALLEYS_CACHE_DIR") or Path.home() / ".cache" / "valleys"
    return Path(root).expanduser() / "hvp_backend"


def _path(key: str) -> Path:
    return cache_folder() / f"{key}.json"


def lookup_choice(key: str) -> BackendChoice | None:
    """The choice stored under ``key``: this process's first, then the disk's (which is then
    kept in the process too). ``None`` when neither has one; an unreadable or outdated file is
    ignored (and replaced by the next measurement)."""
    if key in _CHOICES:
        return _CHOICES[key].reused("memory")
    try:
        payload = json.loads(_path(key).read_text(encoding="utf-8"))
        choice = BackendChoice.from_json(payload)
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    if payload.get("signature", {}).get("format") != FORMAT or choice.key != key:
        return None
    _CHOICES[key] = choice
    return choice.reused("disk")


def store_choice(choice: BackendChoice) -> str | None:
    """Remember a measured choice in this process and on disk; return why the disk write
    failed (a read-only home, a full disk), or ``None``. A failed write only means the next
    run measures again, so it never raises."""
    if choice.key is None:
        return "an explicit backend is not stored"
    _CHOICES[choice.key] = choice
    path = _path(choice.key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        content = json.dumps(choice.to_json(), indent=1, sort_keys=True, default=str) + "\n"
        # A temporary file in the same folder, then a rename: a reader sees no file or a whole
        # one, even when several processes calibrate the same architecture at once.
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False,
                                         encoding="utf-8") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except OSError as error:
        return f"{type(error).__name__}: {error}"
    return None


def clear_backend_choices(*, disk: bool = False) -> None:
    """Forget the choices of ``backend="auto"`` made in this process (and with ``disk=True``
    those stored in the cache folder), so the next operator measures again."""
    _CHOICES.clear()
    if disk:
        folder = cache_folder()
        for path in folder.glob("*.json") if folder.is_dir() else ():
            path.unlink(missing_ok=True)


# -- timing -------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels (accelerators run asynchronously; CPU does not)."""
    backend = getattr(torch, device.type, None)
    sync = getattr(backend, "synchronize", None) if device.type != "cpu" else None
    if callable(sync):
        sync()


def time_round_robin(
    calls: Mapping[str, Callable[[], object]], device: torch.device, *, repeats: int
) -> dict[str, float]:
    """Median seconds of each call over ``repeats`` rounds, the calls interleaved within a
    round (so a busy spell on a shared machine slows all of them, not whichever ran then)."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            synchronize(device)
            start = time.perf_counter()
            call()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """``‖a − b‖ / ‖b‖`` in float64 (0 when both vanish, infinite when only ``b`` does)."""
    a, b = a.detach().double(), b.detach().double()
    scale = float(torch.linalg.vector_norm(b))
    diff = float(torch.linalg.vector_norm(a - b))
    if scale == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / scale
