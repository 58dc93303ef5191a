"""Figures of the evaluation layer (run reports, probes) as PNG files, without global state.

Figures are built with ``matplotlib.figure.Figure`` and rendered by the Agg canvas, so nothing
here touches pyplot's global figure manager or the user's backend, and no display is needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from apv_hub.io import publish, temporary_path

DPI = 120


def new_figure(columns: int = 1, rows: int = 1, panel: tuple[float, float] = (5.0, 3.6)):
    """A figure of ``rows x columns`` panels of ``panel`` inches -> (figure, axes [rows, cols])."""
    fig = Figure(figsize=(panel[0] * columns, panel[1] * rows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, columns, squeeze=False)
    return fig, axes


def colours(labels: list[str]) -> dict[str, str]:
    """One colour of matplotlib's default cycle per label, in order, the same in every figure."""
    cycle = ["C0", "C3", "C2", "C1", "C4", "C5", "C6", "C7", "C8", "C9"]
    return {label: cycle[i % len(cycle)] for i, label in enumerate(labels)}


def line_with_band(ax, x, y, low, high, *, label: str, colour: str) -> None:
    """A line and a shaded band between ``low`` and ``high`` (e.g. a confidence interval)."""
    ax.plot(x, y, color=colour, label=label, linewidth=2)
    ax.fill_between(x, low, high, color=colour, alpha=0.2, linewidth=0)


def interval_bars(ax, labels: list[str], entries: list[dict], palette: dict[str, str]) -> None:
    """One horizontal bar per label spanning its interval ``entry["ci"]`` with a tick at
    ``entry["point"]``."""
    for i, (label, entry) in enumerate(zip(labels, entries, strict=True)):
        low, high = entry["ci"]
        ax.barh(i, high - low, left=low, height=0.6, color=palette[label], alpha=0.6)
        ax.vlines(entry["point"], i - 0.3, i + 0.3, color="black", linewidth=2)
    ax.set_yticks(np.arange(len(labels)), labels)
    ax.invert_yaxis()


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG, atomically."""
    path = Path(path)
    tmp = temporary_path(path)
    fig.savefig(tmp, format="png", dpi=DPI)
    return publish(tmp, path)
