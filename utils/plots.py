"""Figures shared by every run: loss curves and the confusion matrix, and the atomic PNG writer.

Each ``plot_*`` function returns an unsaved Figure so callers and tests can inspect its artists;
``save_figure`` writes one to disk. Figures are built without pyplot (``matplotlib.figure.Figure``): no GUI
backend, no global figure registry to leak into, and no pyplot import (about 0.3 s) at the start of every
script. The figures of one search system live with its model (e.g. ``modeling.autodeeplab.plots``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from utils.atomic import atomic_path


def new_figure(**kwargs) -> Figure:
    """A Figure on an Agg canvas (one that can measure text and write a PNG), without pyplot."""
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path) -> None:
    """Write ``fig`` as a PNG without ever leaving a half-written file at ``path``."""
    with atomic_path(path) as temporary:
        fig.savefig(temporary, format="png", dpi=120, bbox_inches="tight")


def plot_curves(history: list[dict[str, float]], keys: Sequence[str], x_key: str = "epoch",
                title: str = "") -> Figure:
    """One line per key found in ``history``; rows missing the key (or ``x_key``) are skipped."""
    fig = new_figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for key in keys:
        points = [(row[x_key], row[key]) for row in history
                  if row.get(key) is not None and row.get(x_key) is not None]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", markersize=3, label=key)
    ax.set_xlabel(x_key)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    if ax.lines:
        ax.legend()
    fig.tight_layout()
    return fig


def plot_confusion(counts: np.ndarray, class_names: Sequence[str]) -> Figure:
    """The confusion matrix with each ground-truth row normalised to 1, so rare classes stay readable.

    Rows are ground truth, columns predictions; cells show percentages when there are few classes.
    """
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    size = min(4 + 0.35 * len(class_names), 30)
    fig = new_figure(figsize=(size + 1.5, size))
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, labels=class_names, rotation=90, fontsize=8)
    ax.set_yticks(ticks, labels=class_names, fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    if len(class_names) <= 25:
        for row, col in np.ndindex(shares.shape):
            if shares[row, col] >= 0.005:
                ax.text(col, row, f"{100 * shares[row, col]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if shares[row, col] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the ground-truth row")
    ax.set_title("confusion matrix (rows normalised)")
    return fig
