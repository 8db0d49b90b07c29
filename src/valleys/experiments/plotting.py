"""Figures a reviewer accepts: seed bands, and a check of the defects that slip through.

:func:`figure_problems` lists what is wrong with a finished matplotlib figure: an axes without
an x or y label (a label on a sibling sharing that axis, or a ``supxlabel``/``supylabel``,
counts), a legend drawn over data points, lines, bars or bands, non-positive values on a log
axis, and infinite values (a log of zero computed before plotting). The driver's output
folder refuses to save a figure with problems.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["LEGEND_OUTSIDE", "figure_problems", "seed_band"]

#: ``ax.legend(**LEGEND_OUTSIDE)`` puts the legend right of the axes, where it covers no data.
LEGEND_OUTSIDE = {"loc": "upper left", "bbox_to_anchor": (1.02, 1.0), "fontsize": 8}


def seed_band(ax, x, ys, *, label: str, color=None, marker: str | None = None) -> None:
    """Plot the mean over seeds as a line and the min–max over seeds as a shaded band.

    ``ys`` is ``(seeds, len(x))``; NaN marks a missing value (e.g. a run that diverged). With
    one seed only the line is drawn.
    """
    ys = np.atleast_2d(np.asarray(ys, dtype=float))
    x = np.asarray(x, dtype=float)
    with warnings.catch_warnings():  # a column no seed measured stays NaN, without a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(ys, axis=0)
        low, high = np.nanmin(ys, axis=0), np.nanmax(ys, axis=0)
    (line,) = ax.plot(x, mean, label=f"{label} (mean of {ys.shape[0]} seeds)" if ys.shape[0] > 1
                      else label, color=color, marker=marker)
    if ys.shape[0] > 1:
        ax.fill_between(x, low, high, color=line.get_color(), alpha=0.25, linewidth=0)


def _label_missing(ax, which: str) -> bool:
    if (ax.get_xlabel() if which == "x" else ax.get_ylabel()).strip():
        return False
    shared = ax.get_shared_x_axes() if which == "x" else ax.get_shared_y_axes()
    for sibling in shared.get_siblings(ax):
        if (sibling.get_xlabel() if which == "x" else sibling.get_ylabel()).strip():
            return False
    fig = ax.figure
    sup = getattr(fig, "_supxlabel" if which == "x" else "_supylabel", None)
    return not (sup is not None and sup.get_text().strip())


def _data_points(ax) -> list[np.ndarray]:
    """Display coordinates of every plotted point, vertex and band of ``ax``."""
    clouds = []
    for line in ax.lines:
        if line.get_visible():
            xy = np.asarray(line.get_xydata(), dtype=float)
            clouds.append(line.get_transform().transform(xy[np.isfinite(xy).all(axis=1)]))
    for collection in ax.collections:
        if not collection.get_visible():
            continue
        offsets = np.asarray(collection.get_offsets(), dtype=float)
        if len(offsets) and np.isfinite(offsets).all() and collection.get_offset_transform():
            clouds.append(collection.get_offset_transform().transform(offsets))
        for path in collection.get_paths():
            vertices = collection.get_transform().transform(path.vertices)
            clouds.append(vertices[np.isfinite(vertices).all(axis=1)])
    return [c for c in clouds if len(c)]


def _legend_problems(ax, legend, renderer, where: str) -> list[str]:
    box = legend.get_window_extent(renderer)
    for cloud in _data_points(ax):
        inside = (
            (cloud[:, 0] > box.x0) & (cloud[:, 0] < box.x1)
            & (cloud[:, 1] > box.y0) & (cloud[:, 1] < box.y1)
        )
        if inside.any():
            return [f"{where}: the legend covers data; move it (loc=..., or outside the axes)"]
    for patch in ax.patches:
        if patch.get_visible() and patch.get_window_extent(renderer).overlaps(box):
            return [f"{where}: the legend covers bars or patches"]
    return []


def _data_columns(ax, line) -> tuple[int, ...]:
    """Which of a line's coordinates are data values (x: 0, y: 1)."""
    transform = line.get_transform()
    if transform is ax.get_yaxis_transform(which="grid"):
        return (1,)
    if transform is ax.get_xaxis_transform(which="grid"):
        return (0,)
    return (0, 1)


def _log_problems(ax, where: str) -> list[str]:
    problems = []
    for axis, column in (("x", 0), ("y", 1)):
        scale = ax.get_xscale() if axis == "x" else ax.get_yscale()
        if scale != "log":
            continue
        for line in ax.lines:
            if column not in _data_columns(ax, line):
                continue  # axhline/axvline: this coordinate is in axes units, not data
            values = np.asarray(line.get_xydata(), dtype=float)[:, column]
            values = values[np.isfinite(values)]
            if (values <= 0).any():
                problems.append(f"{where}: non-positive values on the log {axis} axis "
                                f"(line {line.get_label()!r})")
                break
    return problems


def _infinite_problems(ax, where: str) -> list[str]:
    for line in ax.lines:
        if np.isinf(np.asarray(line.get_xydata(), dtype=float)).any():
            return [f"{where}: line {line.get_label()!r} holds infinite values (a log of zero?)"]
    return []


def figure_problems(fig) -> list[str]:
    """The defects of ``fig`` (an empty list when it is fit to publish)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    problems: list[str] = []
    data_axes = []
    for index, ax in enumerate(fig.axes):
        if not ax.get_visible() or not ax.axison:
            continue
        where = f"panel {index + 1}" + (f" ({ax.get_title()!r})" if ax.get_title() else "")
        if ax.get_label() == "<colorbar>":
            if not (ax.get_xlabel().strip() or ax.get_ylabel().strip()):
                problems.append(f"{where}: the colour bar has no label")
            continue
        data_axes.append(ax)
        for which in ("x", "y"):
            if _label_missing(ax, which):
                problems.append(f"{where}: no {which} label")
        legend = ax.get_legend()
        if legend is not None and legend.get_visible():
            problems += _legend_problems(ax, legend, renderer, where)
        problems += _log_problems(ax, where)
        problems += _infinite_problems(ax, where)
    for legend in fig.legends:
        for index, ax in enumerate(data_axes):
            problems += _legend_problems(ax, legend, renderer, f"figure legend over panel "
                                                                f"{index + 1}")
    return problems

