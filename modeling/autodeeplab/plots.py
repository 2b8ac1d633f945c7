"""Auto-DeepLab figures: α as a heatmap, β as the network-level lattice, and the decoded architecture.

The lattice (nodes and transitions) and the outlined op choice come from ``search_space`` and
``decoding``, the code the supernet and the decoder run, so a picture cannot drift from them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import NullLocator

from modeling.autodeeplab.cell_diagram import draw_cell, input_name, label_cell_edges
from modeling.autodeeplab.decoding import strongest_edges
from modeling.autodeeplab.genotype import PRIMITIVES, Architecture, edge_index, num_edges
from utils.plots import new_figure
from modeling.autodeeplab.search_space import (DIRECTIONS, STEM_STRIDE, level_stride, levels_at,  # noqa: E402
                                               transition_table)

PATH_COLOR = "tab:red"
TRANSITION_COLOR = "tab:blue"
CHOSEN_COLOR = "red"


def plot_alphas(alpha_probs: np.ndarray, steps: int,
                chosen: Sequence[tuple[int, int]] | None = None) -> Figure:
    """Heatmap of the cell-level op weights, one row per edge, with the decoded choice outlined.

    ``alpha_probs`` is the softmaxed α [num_edges(steps), len(PRIMITIVES)]. ``chosen`` lists the
    (edge, op index) cells to outline; by default the two strongest edges of each block with their
    best non-none op, the usual decoding rule.
    """
    probs = np.asarray(alpha_probs, dtype=float)
    expected_shape = (num_edges(steps), len(PRIMITIVES))
    if probs.shape != expected_shape:
        raise ValueError(f"alpha_probs for {steps} steps must have shape {expected_shape}, "
                         f"got {probs.shape}")
    if chosen is None:
        chosen = _decoded_cells(probs, steps)

    fig = new_figure(figsize=(len(PRIMITIVES) + 4, 0.34 * len(probs) + 2))
    ax = fig.subplots()
    vmax = max(float(probs.max()), 1e-12)
    image = ax.imshow(probs, cmap="viridis", vmin=0.0, vmax=vmax, aspect="auto")
    for (edge, op), value in np.ndenumerate(probs):
        ax.text(op, edge, f"{value:.2f}", ha="center", va="center", fontsize=7,
                color="white" if value < 0.6 * vmax else "black")
    for edge, op in chosen:
        ax.add_patch(Rectangle((op - 0.5, edge - 0.5), 1, 1, fill=False, edgecolor=CHOSEN_COLOR,
                               linewidth=2.5))
    for block in range(1, steps):
        ax.axhline(edge_index(block, 0) - 0.5, color="white", linewidth=2)

    row_labels = [""] * len(probs)
    for block in range(steps):
        for cell_input in range(block + 2):
            row_labels[edge_index(block, cell_input)] = f"block {block + 1} ← {input_name(cell_input)}"
    ax.set_yticks(range(len(probs)), row_labels)
    ax.set_xticks(range(len(PRIMITIVES)), PRIMITIVES, rotation=30, ha="right")
    ax.set_title("cell-level α (softmax per edge); outlined: decoded ops")
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="weight")
    fig.tight_layout()
    return fig


def plot_betas(beta_probs: np.ndarray, path: Sequence[int] | None = None) -> Figure:
    """The network-level lattice with every allowed transition drawn as wide as its β weight.

    ``beta_probs`` is [num_layers, num_levels, 3]: ``beta[l, i, d]`` weighs the move from level
    ``i`` at layer ``l - 1`` (the stem for ``l = 0``) to level ``i + (-1, 0, +1)[d]`` at layer
    ``l``. ``path``, one level per layer, is drawn on top.
    """
    betas = np.asarray(beta_probs, dtype=float)
    if betas.ndim != 3 or betas.shape[2] != len(DIRECTIONS):
        raise ValueError(f"beta_probs must have shape [layers, levels, 3], got {betas.shape}")
    num_layers, num_levels = betas.shape[:2]
    if path is not None:
        _check_path(path, num_layers, num_levels)

    fig = new_figure(figsize=(max(6.0, 0.6 * num_layers + 2.5), 1.1 * num_levels + 1.8))
    ax = fig.subplots()
    for t in transition_table(num_layers, num_levels):
        weight = float(np.clip(betas[t.layer, t.source_level, t.direction], 0.0, 1.0))
        ax.plot([t.layer - 1, t.layer], [level_stride(t.source_level), level_stride(t.target_level)],
                color=TRANSITION_COLOR, linewidth=0.4 + 6 * weight, alpha=0.15 + 0.85 * weight,
                solid_capstyle="round", zorder=1)
    _draw_lattice_nodes(ax, num_layers, num_levels)
    if path is not None:
        _draw_path(ax, path, label="decoded path")
        ax.legend(loc="lower left")
    _format_lattice_axes(ax, num_layers, num_levels)
    ax.set_title("network-level β: line width and opacity grow with the transition weight")
    fig.tight_layout()
    return fig


def plot_architecture(arch: Architecture) -> Figure:
    """The decoded architecture as in the paper's Fig. 3: network path (left) and cell (right)."""
    fig = new_figure(figsize=(15, 7.5))
    path_ax, cell_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.15, 1]})
    _draw_lattice_nodes(path_ax, arch.num_layers, arch.num_levels, color="0.8")
    _draw_path(path_ax, arch.network_path, label="network path")
    _format_lattice_axes(path_ax, arch.num_layers, arch.num_levels)
    path_ax.set_title("network path")
    centers, edges = draw_cell(cell_ax, arch)
    strides = " → ".join(str(level_stride(level)) for level in arch.network_path)
    fig.suptitle(f"F = {arch.filter_multiplier}, path strides: {strides}")
    fig.tight_layout()
    label_cell_edges(cell_ax, centers, edges)  # after the layout, which fixes the pixel geometry
    return fig


def _decoded_cells(alpha_probs: np.ndarray, steps: int) -> list[tuple[int, int]]:
    """(edge, op index) of the ops the decoder keeps (``decoding.strongest_edges``, the rule decode uses)."""
    cell = strongest_edges(torch.from_numpy(alpha_probs), steps)
    return [(edge_index(block, cell_input), PRIMITIVES.index(op))
            for block, pairs in enumerate(cell) for cell_input, op in pairs]


def _check_path(path: Sequence[int], num_layers: int, num_levels: int) -> None:
    if len(path) != num_layers:
        raise ValueError(f"path has {len(path)} layers, the β lattice has {num_layers}")
    if not all(0 <= level < num_levels for level in path):
        raise ValueError(f"path levels must be in 0..{num_levels - 1}, got {list(path)}")


def _draw_lattice_nodes(ax: Axes, num_layers: int, num_levels: int, color: str = "black") -> None:
    """A dot per node that exists (``search_space.level_exists``): the stem at stride 4, then level k from layer k - 1 on."""
    nodes = [(layer, level_stride(level)) for layer in range(-1, num_layers)
             for level in levels_at(layer, num_levels)]
    xs, ys = zip(*nodes)
    ax.scatter(xs, ys, s=22, color=color, zorder=3)


def _draw_path(ax: Axes, path: Sequence[int], label: str) -> None:
    """The stem at stride 4, then one point per layer."""
    xs = range(-1, len(path))
    ys = [STEM_STRIDE, *(level_stride(level) for level in path)]
    ax.plot(xs, ys, color=PATH_COLOR, linewidth=2.5, marker="o", markersize=6, zorder=4, label=label)


def _format_lattice_axes(ax: Axes, num_layers: int, num_levels: int) -> None:
    """Strides on a log2 axis with stride 4 on top; layers numbered from 1 after the stem."""
    strides = [level_stride(level) for level in range(num_levels)]
    ax.set_yscale("log", base=2)
    ax.set_yticks(strides, [str(stride) for stride in strides])
    ax.yaxis.set_minor_locator(NullLocator())
    ax.set_ylim(strides[-1] * 1.4, strides[0] / 1.4)
    ax.set_xticks(range(-1, num_layers), ["stem", *(str(layer + 1) for layer in range(num_layers))])
    ax.set_xlim(-1.5, num_layers - 0.5)
    ax.set_xlabel("layer")
    ax.set_ylabel("stride")
    ax.grid(alpha=0.3)


