"""The helpers every reproduction shares: cells, tables, presets, threads."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch

from valleys.experiments.common import (
    format_cell,
    format_spread,
    markdown_table,
    resolve_preset,
    torch_threads,
)


def test_format_cell():
    assert format_cell(None) == "–"
    assert format_cell(True) == "yes" and format_cell(np.bool_(False)) == "no"
    assert format_cell(math.pi) == "3.142" and format_cell(math.pi, 2) == "3.1"
    assert format_cell(np.float32(0.5)) == "0.5"
    assert format_cell(math.nan) == "nan"
    assert format_cell(-math.inf) == "−inf" and format_cell(math.inf) == "inf"
    assert format_cell([1.23456, None]) == "[1.235, –]"
    assert format_cell({"a": 2.0}) == "a: 2"
    assert format_cell(7) == "7" and format_cell("gd") == "gd"


def test_markdown_table_from_rows_and_frames():
    rows = [{"lr": 0.1, "ok": True}, {"lr": 0.25}]
    expected = "| lr | ok |\n|---|---|\n| 0.1 | yes |\n| 0.25 | – |"
    assert markdown_table(rows, ["lr", "ok"]) == expected
    frame = pd.DataFrame([{"lr": 0.1, "ok": True}, {"lr": 0.25, "ok": None}])
    assert markdown_table(frame, ["lr", "ok"]) == expected


def test_resolve_preset_and_threads():
    @dataclass(frozen=True)
    class Preset:
        n: int

    presets = {"quick": Preset(1)}
    assert resolve_preset(presets, "quick", Preset) == ("quick", Preset(1))
    assert resolve_preset(presets, Preset(5), Preset) == ("custom", Preset(5))
    with pytest.raises(ValueError, match=r"unknown preset 'huge'; choose one of \['quick'\]"):
        resolve_preset(presets, "huge", Preset)
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_format_spread_of_values_and_of_spread_dicts():
    assert format_spread([1.0, None, 3.0, math.nan]) == "2 [1, 3]"
    assert format_spread([2.5, 2.5]) == "2.5" and format_spread([None]) == "–"
    assert format_spread({"mean": 2.0, "min": 1.0, "max": 3.0}) == "2 [1, 3]"
    assert format_spread({"mean": None, "min": None, "max": None}) == "–"
    assert format_spread([1.23456, 2.0], digits=2) == "1.6 [1.2, 2]"
