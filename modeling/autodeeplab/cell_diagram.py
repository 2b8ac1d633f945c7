"""The cell of a decoded Auto-DeepLab architecture as a diagram people can read: every op written on its own
edge, where no other edge, label or node passes (``draw_cell``, then ``label_cell_edges`` once the figure's
layout is fixed)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.patches import FancyBboxPatch
from matplotlib.text import Annotation

from modeling.autodeeplab.genotype import PRIMITIVES, Architecture

# cell diagram, in data units: the nodes sit evenly along an arch, the upper half of an ellipse
# with these half-axes carried on CELL_ARC_DROP radians below its centre line at both ends
CELL_ARC_WIDTH, CELL_ARC_HEIGHT, CELL_ARC_DROP = 5.3, 6.5, 0.6
CELL_MARGIN = 0.3  # round the outermost nodes
CELL_LEGEND_ROOM = 0.45  # below the lowest node, per legend row
NODE_WIDTH, NODE_HEIGHT, NODE_PAD = 1.1, 0.44, 0.02
# op labels: font size, box padding (in font sizes) and the berth, in points, kept from any other
# edge, node or label
LABEL_FONTSIZE, LABEL_PAD, LABEL_MARGIN_PT = 8, 0.25, 1.5
LABEL_TURN_COST = 20  # pixels of clearance worth giving up to keep a label level
# arc3 bends tried, in this order, on an edge that has no clear place for its label
EDGE_BENDS = (0.15, -0.15, 0.3, -0.3, 0.45, -0.45)
BEND_BERTH_PX = 4  # how near a bent edge may pass a node it does not join
# one colour per op, so an edge can be followed by colour where edges run close
OP_COLORS = dict(zip(PRIMITIVES, ["0.5", "tab:brown", "tab:pink", "0.25", "tab:blue",
                                  "tab:orange", "tab:green", "tab:purple"]))
CONCAT_EDGE_COLOR = "0.7"


class _CellEdge(NamedTuple):
    """One arrow of the cell diagram between two nodes (indices); ``op`` is None into concat."""
    source: int
    target: int
    op: str | None
    arrow: Annotation


class _Box(NamedTuple):
    """A rectangle in display pixels: centre, half sizes, and its axes as the rows of ``frame``."""
    centre: np.ndarray
    half: np.ndarray
    frame: np.ndarray


def input_name(cell_input: int) -> str:
    """People-facing name of a cell input: one of the two previous cells, or a 1-based block."""
    if cell_input == 0:
        return "$H^{l-2}$"
    if cell_input == 1:
        return "$H^{l-1}$"
    return f"block {cell_input - 1}"


def draw_cell(ax: Axes, arch: Architecture) -> tuple[list[tuple[float, float]], list[_CellEdge]]:
    """Nodes and arrows of the cell, laid out clockwise along an arch; returns both.

    H^{l-2} and H^{l-1} start the arch at the lower left, the blocks follow in order over the top
    and concat ends it at the lower right, so every block comes after all it reads and the data
    flows left to right. The nodes are in convex position, so a straight edge between two of them
    never runs through a third. Each op edge is coloured by its op (the legend names the colours);
    the op labels are placed later, by ``label_cell_edges``, once the figure layout fixes their
    size.
    """
    names = [input_name(0), input_name(1), *(f"block {block + 1}" for block in range(arch.steps)),
             "concat"]
    colors = ["#cfe2f3", "#cfe2f3", *["#fff2cc"] * arch.steps, "#d9ead3"]
    centers = _arch_points(len(names))
    boxes = [_draw_node(ax, name, xy, color) for name, xy, color in zip(names, centers, colors)]

    edges = []
    for block, pairs in enumerate(arch.cell):
        for cell_input, op in pairs:
            arrow = _draw_arrow(ax, centers[cell_input], centers[block + 2], OP_COLORS[op],
                                (boxes[cell_input], boxes[block + 2]))
            edges.append(_CellEdge(cell_input, block + 2, op, arrow))
    concat = len(names) - 1
    for row in range(concat - arch.block_multiplier, concat):
        arrow = _draw_arrow(ax, centers[row], centers[concat], CONCAT_EDGE_COLOR,
                            (boxes[row], boxes[concat]), linestyle="--")
        edges.append(_CellEdge(row, concat, None, arrow))

    ops = sorted({op for pairs in arch.cell for _, op in pairs}, key=PRIMITIVES.index)
    handles = [Line2D([], [], color=OP_COLORS[op], linewidth=2.5, label=op) for op in ops]
    handles.append(Line2D([], [], color=CONCAT_EDGE_COLOR, linestyle="--", label="to concat"))
    columns = min(len(handles), 4)
    ax.legend(handles=handles, loc="lower center", ncol=columns, fontsize=9, frameon=False,
              handlelength=1.6, columnspacing=1.2)

    xs, ys = zip(*centers)
    ax.set_xlim(min(xs) - NODE_WIDTH / 2 - CELL_MARGIN, max(xs) + NODE_WIDTH / 2 + CELL_MARGIN)
    ax.set_ylim(min(ys) - NODE_HEIGHT / 2 - CELL_LEGEND_ROOM * np.ceil(len(handles) / columns),
                max(ys) + NODE_HEIGHT / 2 + CELL_MARGIN)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(f"cell: {arch.steps} blocks, output = concat of the last "
                 f"{arch.block_multiplier}")
    return centers, edges


def _arch_points(count: int) -> list[tuple[float, float]]:
    """``count`` points evenly spaced along the cell's arch, from its lower left end over the top.

    Even spacing along the curve, not in angle, keeps the nodes over the top as far apart as those
    on the sides.
    """
    angles = np.linspace(np.pi + CELL_ARC_DROP, -CELL_ARC_DROP, 2001)
    curve = np.stack([CELL_ARC_WIDTH * np.cos(angles), CELL_ARC_HEIGHT * np.sin(angles)], axis=1)
    length = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(curve, axis=0), axis=1))])
    at = np.linspace(0.0, length[-1], count)
    return [(float(np.interp(d, length, curve[:, 0])), float(np.interp(d, length, curve[:, 1])))
            for d in at]


def _draw_node(ax: Axes, name: str, xy: tuple[float, float], color: str) -> FancyBboxPatch:
    box = FancyBboxPatch((xy[0] - NODE_WIDTH / 2, xy[1] - NODE_HEIGHT / 2), NODE_WIDTH, NODE_HEIGHT,
                         boxstyle=f"round,pad={NODE_PAD}", facecolor=color, edgecolor="0.3",
                         zorder=3)
    ax.add_patch(box)
    ax.text(*xy, name, ha="center", va="center", fontsize=11, zorder=4)
    return box


def _draw_arrow(ax: Axes, source: tuple[float, float], target: tuple[float, float], color: str,
                clip: tuple[FancyBboxPatch, FancyBboxPatch], linestyle: str = "-") -> Annotation:
    """An arrow from ``source`` to ``target`` (straight until bent), trimmed to the two node boxes."""
    return ax.annotate("", xy=target, xytext=source, zorder=2,
                       arrowprops={"arrowstyle": "-|>", "connectionstyle": "arc3,rad=0",
                                   "patchA": clip[0], "patchB": clip[1], "shrinkA": 0,
                                   "shrinkB": 0, "color": color, "linewidth": 1.6,
                                   "linestyle": linestyle, "mutation_scale": 14})


def label_cell_edges(ax: Axes, centers: Sequence[tuple[float, float]],
                      edges: Sequence[_CellEdge]) -> None:
    """Write each op on its own edge, where no other edge, label or node comes near it.

    Works in display pixels, so it runs after the figure layout. Each op edge offers candidate
    places along its visible part, the label centred on the edge and either level or turned to
    run along it (a level label across a steep edge in a fan would reach over its neighbours). A
    place is clear when the label box, with a berth of ``LABEL_MARGIN_PT``, stays in the axes and
    meets no node, the legend or any other edge. The labels then take clear places no two of
    which meet, preferring level labels near the middle of their edge and far from other edges
    (``_clear_places``). Where that cannot be done, edges are bent into gentle arc3 curves, one
    at a time (``_bend_until_labels_fit``), never through a node. Should even that fail, each
    label takes the place with the fewest clashes.
    """
    renderer = ax.figure.canvas.get_renderer()
    ax.apply_aspect()
    points = ax.figure.dpi / 72
    margin = LABEL_MARGIN_PT * points
    nodes = ax.transData.transform(np.asarray(centers, dtype=float))
    half_node = np.abs(ax.transData.transform((NODE_WIDTH / 2 + NODE_PAD, NODE_HEIGHT / 2 + NODE_PAD))
                       - ax.transData.transform((0.0, 0.0)))
    obstacles = [_Box(centre, half_node, np.eye(2)) for centre in nodes]
    legend = ax.get_legend()
    if legend is not None:
        obstacles.append(_extent_box(legend.get_window_extent(renderer), 0.0))
    area = _extent_box(ax.get_window_extent(renderer), 0.0)

    texts, halves = {}, {}
    for i, edge in enumerate(edges):
        if edge.op is not None:
            texts[i] = ax.text(*centers[edge.source], edge.op, ha="center", va="center",
                               fontsize=LABEL_FONTSIZE, zorder=5, rotation_mode="anchor",
                               bbox={"boxstyle": f"round,pad={LABEL_PAD}", "facecolor": "white",
                                     "edgecolor": OP_COLORS[edge.op], "linewidth": 1.4})
            extent = texts[i].get_window_extent(renderer)
            halves[i] = (np.array([extent.width, extent.height]) / 2
                         + LABEL_PAD * LABEL_FONTSIZE * points + margin)

    places = _EdgePlaces(nodes, half_node, obstacles, area, edges, halves)
    picks = _bend_until_labels_fit(places)
    for i, bend in places.bends.items():
        if bend:
            edges[i].arrow.arrow_patch.set_connectionstyle(f"arc3,rad={bend}")
    if picks is None:
        picks = _least_clashing_places(places)
    for i, k in picks.items():
        texts[i].set_position(ax.transData.inverted().transform(places.places[i][0][k]))
        texts[i].set_rotation(float(places.places[i][2][k]))


def _bend_until_labels_fit(places: _EdgePlaces) -> dict[int, int] | None:
    """Bend edges, one at a time, until every label has a clear place and no two labels meet.

    Each round tries every bend of ``EDGE_BENDS`` on the edges that matter (those whose label has
    no clear place, and the edges running through its candidate places; all labelled edges when
    the labels only clash with each other) and keeps the one that helps most, the smallest bend
    first on a tie. Returns each labelled edge's place, or None when no round helps any more.
    """
    def standing() -> tuple[tuple[int, int], dict[int, int] | None]:
        stuck = sum(not places.clear(i).any() for i in places.halves)
        picks = None if stuck else _clear_places(places)
        return (stuck, picks is None), picks

    current, picks = standing()
    for _ in range(2 * len(places.halves)):
        if picks is not None:
            return picks
        stuck = [i for i in places.halves if not places.clear(i).any()]
        movable = set(stuck) | {j for i in stuck for j in np.flatnonzero(places.hits[i].any(axis=0))}
        if not stuck:
            movable = set(places.halves)
        best = None  # (standing, total bend, edge, bend, picks)
        for j in sorted(movable):
            for bend in EDGE_BENDS:
                if bend == places.bends[j]:
                    continue
                previous = places.bend(j, bend)
                if previous is None:
                    continue
                result, found = standing()
                key = (result, sum(map(abs, places.bends.values())))
                if result < current and (best is None or key < best[:2]):
                    best = (result, key[1], j, bend, found)
                places.bend(j, previous)
        if best is None:
            return None
        current, picks = best[0], best[4]
        places.bend(best[2], best[3])
    return picks


class _EdgePlaces:
    """Every edge's course in pixels and, for each labelled edge, its candidate label places.

    ``hits[i][k, j]`` says whether edge j runs through place k of edge i's label, ``gaps[i][k, j]``
    how far it passes from it; bending one edge recomputes only what that edge touches.
    """

    def __init__(self, nodes: np.ndarray, half_node: np.ndarray, obstacles: list[_Box], area: _Box,
                 edges: Sequence[_CellEdge], halves: dict[int, np.ndarray]):
        self.nodes, self.half_node, self.obstacles, self.area = nodes, half_node, obstacles, area
        self.ends = [(edge.source, edge.target) for edge in edges]
        self.halves = halves
        self.bends = {i: 0.0 for i in range(len(edges))}
        self.courses = [self._course(i, 0.0) for i in range(len(edges))]
        self.places: dict[int, tuple] = {}
        self.hits: dict[int, np.ndarray] = {}
        self.gaps: dict[int, np.ndarray] = {}
        for i in halves:
            self._place(i)

    def _course(self, i: int, bend: float) -> np.ndarray:
        """Points every ~2 px along edge i drawn as matplotlib's arc3 curve with ``rad=bend``."""
        start, end = self.nodes[self.ends[i][0]], self.nodes[self.ends[i][1]]
        control = (start + end) / 2 + bend * np.array([end[1] - start[1], start[0] - end[0]])
        count = int(np.linalg.norm(end - start) * (1 + abs(bend)) / 2) + 2
        t = np.linspace(0.0, 1.0, count)[:, None]
        return (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t ** 2 * end

    def _visible(self, i: int, course: np.ndarray) -> np.ndarray:
        """The part of a course outside the boxes of the two nodes it joins."""
        inside = np.zeros(len(course), dtype=bool)
        for node in self.ends[i]:
            inside |= np.all(np.abs(course - self.nodes[node]) <= self.half_node, axis=1)
        return course[~inside]

    def _place(self, i: int) -> None:
        """Candidate places of edge i's label, their fixed clashes, and all edges' hits and gaps."""
        course = self._visible(i, self.courses[i])
        steps = np.linalg.norm(np.diff(course, axis=0), axis=1)
        along = np.concatenate([[0.0], np.cumsum(steps)])
        half = self.halves[i]
        centres, frames, rotations, costs, blocked = [], [], [], [], []
        for fraction in np.linspace(0.12, 0.88, 39):
            k = int(np.searchsorted(along, fraction * along[-1]))
            k = min(max(k, 1), len(course) - 1)
            tangent = course[k] - course[k - 1]
            # turned text reads left to right, or upwards on steep edges
            angle = 105 - (105 - float(np.degrees(np.arctan2(tangent[1], tangent[0])))) % 180
            for rotation in ((0.0, angle) if abs(angle) > 8 else (0.0,)):
                radians = np.radians(rotation)
                frame = np.array([[np.cos(radians), np.sin(radians)],
                                  [-np.sin(radians), np.cos(radians)]])
                box = _Box(course[k], half, frame)
                centres.append(course[k])
                frames.append(frame)
                rotations.append(rotation)
                costs.append(20 * abs(fraction - 0.5) + (LABEL_TURN_COST if rotation else 0))
                blocked.append(not _box_inside(box, self.area)
                               or any(_boxes_overlap(box, obstacle) for obstacle in self.obstacles))
        self.places[i] = (np.array(centres), np.array(frames), np.array(rotations),
                          np.array(costs), np.array(blocked))
        self.hits[i] = np.zeros((len(centres), len(self.courses)), dtype=bool)
        self.gaps[i] = np.full((len(centres), len(self.courses)), np.inf)
        for j in range(len(self.courses)):
            if j != i:
                self._measure(i, j)

    def _measure(self, i: int, j: int) -> None:
        """Whether, and how closely, edge j passes each candidate place of edge i's label."""
        centres, frames = self.places[i][:2]
        local = np.abs((self.courses[j][None, :, :] - centres[:, None, :]) @ frames.transpose(0, 2, 1))
        outside = np.maximum(local - self.halves[i], 0.0)
        distance = np.hypot(outside[..., 0], outside[..., 1])
        self.hits[i][:, j] = (distance == 0).any(axis=1)
        self.gaps[i][:, j] = distance.min(axis=1)

    def bend(self, i: int, bend: float) -> float | None:
        """Bend edge i; returns its previous bend, or None (nothing changed) if the curve would
        come within ``BEND_BERTH_PX`` of another node or the legend, or leave the axes."""
        course = self._course(i, bend)
        for n, obstacle in enumerate(self.obstacles):  # the nodes, in order, then the legend
            if n not in self.ends[i] and np.all(np.abs(course - obstacle.centre)
                                                <= obstacle.half + BEND_BERTH_PX, axis=1).any():
                return None
        if np.any(np.abs(course - self.area.centre) > self.area.half):
            return None
        previous, self.bends[i], self.courses[i] = self.bends[i], bend, course
        for j in self.halves:
            if j == i:
                self._place(i)
            else:
                self._measure(j, i)
        return previous

    def clear(self, i: int) -> np.ndarray:
        """Which candidate places of edge i's label no node, legend or other edge meets."""
        return ~self.places[i][4] & ~self.hits[i].any(axis=1)

    def clashes(self, i: int) -> np.ndarray:
        """How many of: a node, the legend or the axes edge, and each other edge, meet each place."""
        return self.places[i][4].astype(int) + self.hits[i].sum(axis=1)

    def scores(self, i: int) -> np.ndarray:
        """Higher is better: clearance from other edges (up to 30 px) less the place's cost."""
        return np.minimum(self.gaps[i].min(axis=1), 30.0) - self.places[i][3]


def _clear_places(places: _EdgePlaces, budget: int = 5000) -> dict[int, int] | None:
    """A clear place per labelled edge with no two label boxes meeting, or None if none is found.

    Depth first, best score first, always on the edge with the fewest places left, dropping the
    places that meet each choice from the other edges (forward checking).
    """
    ranked = {i: np.array([k for k in np.argsort(-places.scores(i), kind="stable")
                           if places.clear(i)[k]], dtype=int) for i in places.halves}
    if any(len(options) == 0 for options in ranked.values()):
        return None
    boxes = {i: (places.places[i][0][options], places.places[i][1][options], places.halves[i])
             for i, options in ranked.items()}
    meets = {(i, j): _overlap_matrix(boxes[i], boxes[j]) for i in ranked for j in ranked if i != j}
    steps = [budget]

    def search(open_: dict[int, np.ndarray], picks: dict[int, int]) -> dict[int, int] | None:
        if not open_:
            return picks
        i = min(open_, key=lambda e: (int(open_[e].sum()), e))
        for n in np.flatnonzero(open_[i]):
            steps[0] -= 1
            if steps[0] < 0:
                return None
            rest = {j: open_[j] & ~meets[i, j][n] for j in open_ if j != i}
            if all(mask.any() for mask in rest.values()):
                found = search(rest, {**picks, i: int(ranked[i][n])})
                if found is not None:
                    return found
        return None

    return search({i: np.ones(len(options), dtype=bool) for i, options in ranked.items()}, {})


def _least_clashing_places(places: _EdgePlaces) -> dict[int, int]:
    """The fallback: edges, most constrained first, each take the place that meets the fewest
    other edges, nodes and labels already placed, the best scored among those."""
    picks: dict[int, int] = {}
    for i in sorted(places.halves, key=lambda i: (int(places.clear(i).sum()), i)):
        clashes = places.clashes(i).copy()
        mine = (places.places[i][0], places.places[i][1], places.halves[i])
        for j, k in picks.items():
            other = (places.places[j][0][[k]], places.places[j][1][[k]], places.halves[j])
            clashes += _overlap_matrix(mine, other)[:, 0]
        picks[i] = int(np.lexsort((-places.scores(i), clashes))[0])
    return picks


def _overlap_matrix(a: tuple, b: tuple) -> np.ndarray:
    """Which of the rectangles ``a`` meet which of ``b`` (separating axes), as [len(a), len(b)].

    Each side is (centres [n, 2], frames [n, 2, 2], half sizes [2]), the frames' rows the axes.
    """
    (centres_a, frames_a, half_a), (centres_b, frames_b, half_b) = a, b
    offset = centres_b[None, :, :] - centres_a[:, None, :]
    apart = np.zeros(offset.shape[:2], dtype=bool)
    for axis in range(2):
        along_a = frames_a[:, None, axis, :]  # a's own axis: a reaches half_a[axis] along it
        reach_b = np.abs(np.einsum("bcd,abd->abc", frames_b, np.broadcast_to(along_a, offset.shape))) @ half_b
        apart |= np.abs((offset * along_a).sum(-1)) >= half_a[axis] + reach_b
        along_b = frames_b[None, :, axis, :]
        reach_a = np.abs(np.einsum("acd,abd->abc", frames_a, np.broadcast_to(along_b, offset.shape))) @ half_a
        apart |= np.abs((offset * along_b).sum(-1)) >= half_b[axis] + reach_a
    return ~apart


def _extent_box(extent, grow: float) -> _Box:
    """A level _Box for a matplotlib Bbox, grown by ``grow`` pixels on every side."""
    return _Box(np.array([extent.x0 + extent.x1, extent.y0 + extent.y1]) / 2,
                np.array([extent.width, extent.height]) / 2 + grow, np.eye(2))


def _boxes_overlap(a: _Box, b: _Box) -> bool:
    """Separating-axis test for two rectangles."""
    offset = b.centre - a.centre
    for axis in (*a.frame, *b.frame):
        reach = sum(float(box.half @ np.abs(box.frame @ axis)) for box in (a, b))
        if abs(float(offset @ axis)) >= reach:
            return False
    return True


def _box_inside(box: _Box, outer: _Box) -> bool:
    """Whether all of ``box`` lies within the level rectangle ``outer``."""
    reach = np.abs(box.frame.T) @ box.half
    return bool(np.all(np.abs(box.centre - outer.centre) + reach <= outer.half))
