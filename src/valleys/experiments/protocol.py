"""The experiment protocol: claims stated before the run, verdicts computed from them.

A reproduction is a folder ``experiments/<name>/`` with three files:

``measure.py`` (the science)
    ``NAME``, ``PAPER``, ``PRESETS`` (``"quick"`` and ``"full"``: frozen dataclasses),
    ``CLAIMS`` (a tuple of :class:`ClaimSpec`, written before any run),
    ``measure(config, seed, device) -> records`` (one seed; JSON-able dict, tensors allowed),
    ``claims(records_by_seed, config) -> list[Claim]`` (one per spec, verdicts computed from
    the spec's criterion), and optionally ``SEEDS`` (default seeds per preset) and
    ``summary(records_by_seed, config) -> dict`` (extra top-level keys of ``summary.json``).
    ``measure`` may also take ``workdir`` (a folder of its own for resumable sub-units).
``figures.py`` (the pictures)
    ``figures(records_by_seed, config, out) -> list[Figure]``, each saved through
    :meth:`~valleys.experiments.output.OutputFolder.save_figure`, which refuses unlabelled
    axes, legends over data and log axes of non-positive values.
``report.py`` (the prose)
    ``table(records_by_seed, config) -> pandas.DataFrame`` (the tidy results table) and
    ``report(records_by_seed, config, claims) -> str`` (markdown sections whose numbers come
    from the records).

The driver (:func:`valleys.experiments.driver.run`) does everything else: presets, seeds,
device, output folder, resumption of finished seeds, metadata, ``summary.json``,
``results.csv`` and ``report.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from valleys.errors import ArgumentValueError

__all__ = [
    "VERDICTS",
    "Claim",
    "ClaimSpec",
    "Figure",
    "judge_seeds",
    "spread",
]

VERDICTS = ("agrees", "partly", "disagrees", "not tested")


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """``{"mean", "min", "max", "values"}`` over seeds; ``None``/NaN entries (runs that could not
    measure the quantity) are left out of the statistics but kept in ``values``."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        stats = {"mean": None, "min": None, "max": None}
    else:
        stats = {"mean": sum(finite) / len(finite), "min": min(finite), "max": max(finite)}
    kept = [None if v is None or not math.isfinite(float(v)) else float(v) for v in values]
    return {**stats, "values": kept}


def judge_seeds(passes: Sequence[bool | None], *, partly: bool = False) -> str:
    """A verdict from per-seed outcomes of a criterion.

    ``True``: the seed meets the criterion; ``False``: it does not; ``None``: the seed could
    not test it (diverged, never reached the regime). No tested seed gives ``"not tested"``;
    all tested seeds passing gives ``"agrees"``; none gives ``"disagrees"``; a mix gives
    ``"partly"`` where the claim defines it and ``"disagrees"`` otherwise (the criterion then
    asks for every seed).
    """
    tested = [bool(p) for p in passes if p is not None]
    if not tested:
        return "not tested"
    if all(tested):
        return "agrees"
    if not any(tested):
        return "disagrees"
    return "partly" if partly else "disagrees"


@dataclass(frozen=True)
class Figure:
    """A saved figure: its file stem in the output folder and a one-line caption."""

    stem: str
    caption: str


@dataclass(frozen=True)
class Claim:
    """A claim with its measurement and verdict (what ``summary.json`` lists under ``claims``).

    ``measured`` maps names to numbers or to :func:`spread` dicts; ``sentence`` is generated
    from the same numbers as the verdict.
    """

    id: str
    claim: str
    criterion: str
    measured: Mapping[str, Any]
    seeds: Sequence[int]
    verdict: str
    sentence: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "claim": self.claim,
            "criterion": self.criterion,
            "measured": dict(self.measured),
            "seeds": list(self.seeds),
            "verdict": self.verdict,
            "sentence": self.sentence,
        }


def _describe(measured: Mapping[str, Any]) -> str:
    from valleys.experiments.common import format_cell, format_spread

    parts = []
    for key, value in measured.items():
        if isinstance(value, Mapping) and "mean" in value:
            parts.append(f"{key} not measured" if value["mean"] is None
                         else f"{key} = {format_spread(value)}")
        else:
            parts.append(f"{key} = {format_cell(value)}")
    return "; ".join(parts)


@dataclass(frozen=True)
class ClaimSpec:
    """A claim as stated before the run.

    Attributes:
        id: short stable identifier (``"gd-hovers"``).
        claim: the paper's statement, in one sentence.
        criterion: the numeric rule that decides the verdict, written before any run.
        partly: when the criterion allows ``"partly"``, what it means; ``None``: it does not.
        deterministic: the measured numbers do not depend on the seed, so one seed suffices.
    """

    id: str
    claim: str
    criterion: str
    partly: str | None = None
    deterministic: bool = False

    def judge(
        self,
        verdict: str,
        measured: Mapping[str, Any],
        seeds: Sequence[int],
        *,
        note: str = "",
    ) -> Claim:
        """The measured claim. ``verdict`` must come from this spec's criterion (see
        :func:`judge_seeds`); ``note`` adds a generated clause to the sentence (e.g. why a
        claim was not tested)."""
        if verdict not in VERDICTS:
            raise ArgumentValueError(
                f"verdict {verdict!r} of claim {self.id!r} is not one of {VERDICTS}")
        if verdict == "partly" and self.partly is None:
            raise ArgumentValueError(f"claim {self.id!r} defines no 'partly'; its verdict must be "
                                     "agrees, disagrees or not tested")
        sentence = f"**{verdict}**: {_describe(measured)}"
        if note:
            sentence += f"; {note}"
        sentence += f" (criterion: {self.criterion})."
        return Claim(self.id, self.claim, self.criterion, dict(measured), list(seeds), verdict,
                     sentence)

    def judge_per_seed(
        self,
        passes: Mapping[int, bool | None],
        measured: Mapping[str, Any],
        *,
        note: str = "",
    ) -> Claim:
        """:meth:`judge` with the verdict of :func:`judge_seeds` over ``passes``
        (seed → outcome)."""
        verdict = judge_seeds(list(passes.values()), partly=self.partly is not None)
        untested = [s for s, p in passes.items() if p is None]
        if untested and verdict != "not tested":
            extra = f"seeds {untested} could not test it"
            note = f"{note}; {extra}" if note else extra
        return self.judge(verdict, measured, list(passes), note=note)


@dataclass(frozen=True)
class Experiment:
    """A reproduction loaded from its folder (see the module docstring)."""

    name: str
    paper: str
    presets: Mapping[str, Any]
    claim_specs: tuple[ClaimSpec, ...]
    measure: Callable[..., Any]
    claims: Callable[..., list[Claim]]
    figures: Callable[..., list[Figure]]
    table: Callable[..., Any]
    report: Callable[..., str]
    summary: Callable[..., dict[str, Any]] | None = None
    seeds: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    title: str = ""
    code_version: str = ""  # a hash of measure.py: stored seeds of other code are measured again
