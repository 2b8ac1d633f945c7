"""A decoder found by Nekrasov et al.'s decoder search as a picture people can read (``plot_decoder``).

WACV space: the encoder's two features and the seven template blocks in a column, each block's two inputs
drawn as arcs on the left (coloured by which template op reads them), the blocks nobody reads shaded and
joined to the classifier, and the three templates listed on the right. CVPR space: the network of merge cells
in the same style (left) and the searched contextual cell (right), every op written on the edge it stands for.

Every panel is laid out in inches (one data unit is one inch of the figure), with node widths measured from
their labels, so the figure is as large as its contents and no label meets another. The figure is a bare
``matplotlib.figure.Figure``: nothing of pyplot's global state is touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle
from matplotlib.path import Path
from matplotlib.textpath import TextPath

from modeling.nas_segm.encoder import CVPR_TAPS, STAGES, WACV_TAPS
from modeling.nas_segm.genotype import AGGREGATION_NAMES, DecoderGenotype
from modeling.nas_segm.micro_decoder import OUTPUTS
from modeling.nas_segm.ops import CVPR_OPS, WACV_OPS, unread_outputs

# sizes in inches (the panels' data unit) and points
NODE_FONTSIZE, OP_FONTSIZE, TITLE_FONTSIZE, PANEL_FONTSIZE, NOTE_FONTSIZE = 9, 8, 12, 10, 9
NODE_HEIGHT, NODE_PAD = 0.34, 0.28  # NODE_PAD: room left and right of the widest label, together
NETWORK_ROW = 0.62  # between the centres of two nodes of a network column
ARC_RAD = 0.32  # arc3 bend of an input arc; an arc's bulge is ARC_RAD * span / 2
SECOND_INPUT_RAD = 1.4  # the second input's arcs bend this much more, so two arcs of one pair never coincide
CLASSIFIER_GAP = 0.9  # from the network column to the classifier
CELL_ROW = 1.0  # between the centre column's rows of the cell; its op labels sit half way
OP_GAP = 0.3  # between the two op labels of a cell layer
LANE_GAP, LANE_STEP = 0.25, 0.17  # the cell's lanes: first one off the widest node, then apart
MARGIN, TITLE_ROOM, PANEL_TITLE_ROOM, LINE = 0.25, 0.55, 0.45, 0.27
KEY_WIDTH = 0.42  # a note's colour key and the room after it

CELL_TITLE = "searched contextual cell (each merge cell runs it on both inputs)"
COLLECTED = "collected"  # gid of a node the classifier reads (and of its label), NODE of any other node
NODE = "node"
INPUT_COLOR, NODE_COLOR, COLLECTED_COLOR, CLASSIFIER_COLOR = "#cfe2f3", "#fff2cc", "#f4b183", "#d9ead3"
FIRST_INPUT_COLOR, SECOND_INPUT_COLOR, CLASSIFIER_EDGE_COLOR, SUM_EDGE_COLOR = "tab:blue", "tab:orange", "0.35", "0.5"
OP_COLORS = dict(zip(CVPR_OPS, ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
                                "tab:pink", "tab:olive", "tab:cyan", "0.45", "0.7"]))


class _Node(NamedTuple):
    """A box of a panel: centre and size, in inches."""
    x: float
    y: float
    width: float
    height: float = NODE_HEIGHT

    @property
    def left(self) -> float:
        return self.x - self.width / 2

    @property
    def right(self) -> float:
        return self.x + self.width / 2

    @property
    def top(self) -> float:
        return self.y + self.height / 2

    @property
    def bottom(self) -> float:
        return self.y - self.height / 2


def plot_decoder(genotype: DecoderGenotype) -> Figure:
    """The decoder ``genotype`` describes: its network of blocks (WACV) or of cells and the cell (CVPR)."""
    if genotype.space == "cvpr":
        return _plot_cvpr(genotype)
    if genotype.space == "wacv":
        return _plot_wacv(genotype)
    raise ValueError(f"unknown nas-segm space {genotype.space!r}")


def encoder_labels(taps: Sequence[int]) -> list[str]:
    """``enc s4 (24 ch)`` and so on: the MobileNetV2 stages ``taps`` (as ``MobileNetV2Encoder`` counts them)."""
    labels, stride = [], 2  # after the stem
    for index, (_, channels, _, first_stride) in enumerate(STAGES[:max(taps) + 1]):
        stride *= first_stride
        if index in taps:
            labels.append(f"enc s{stride} ({channels} ch)")
    return labels


def wacv_block_label(j: int, block: Sequence[int]) -> str:
    _, _, template, repeats, log_stride = block
    return (f"block {j}: template T{template}, {repeats + 1} repeat{'s' if repeats else ''}, "
            f"stride {2**log_stride}")


def template_label(t: int, template: Sequence[int]) -> str:
    op1, op2, aggregation = template
    return f"T{t}: {WACV_OPS[op1]} + {WACV_OPS[op2]} -> {AGGREGATION_NAMES[aggregation]}"


# --- WACV -----------------------------------------------------------------------------------------


def _plot_wacv(genotype: DecoderGenotype) -> Figure:
    templates, structure = genotype.templates, genotype.structure
    names = encoder_labels(WACV_TAPS) + [wacv_block_label(j, block) for j, block in enumerate(structure)]
    pairs = [block[:2] for block in structure]
    collected = unread_outputs(len(WACV_TAPS), pairs)
    network = _NetworkLayout(names, pairs, collected, len(WACV_TAPS), "network: 7 template blocks")
    notes: list[tuple[str, str | None]] = [("templates (op1 reads input 1, op2 reads input 2):", None)]
    notes += [(template_label(t, template), None) for t, template in enumerate(templates)]
    notes += [("psum: weighted sum; cat: concat, 1x1 conv", None), ("", None),
              ("input 1 of a block", FIRST_INPUT_COLOR), ("input 2 of a block", SECOND_INPUT_COLOR),
              ("read by the classifier (concatenated)", COLLECTED_COLOR)]
    notes_width = max(_note_width(text, color) for text, color in notes) + MARGIN
    notes_height = PANEL_TITLE_ROOM + len(notes) * LINE + MARGIN
    body = max(network.height, notes_height)
    fig, top = _figure(network.width + notes_width, body, "nas-segm decoder, WACV 2020 space (Nekrasov et al.)")
    network.draw(_panel(fig, (0, top - network.height, network.width, network.height)),
                 (FIRST_INPUT_COLOR, SECOND_INPUT_COLOR))
    _draw_notes(_panel(fig, (network.width, top - notes_height, notes_width, notes_height)),
                notes_height - PANEL_TITLE_ROOM - LINE / 2, notes)
    return fig


# --- CVPR -----------------------------------------------------------------------------------------


def _plot_cvpr(genotype: DecoderGenotype) -> Figure:
    cell, connections = genotype.config
    names = encoder_labels(CVPR_TAPS) + [f"cell {b}" for b in range(len(connections))]
    collected = unread_outputs(len(CVPR_TAPS), connections)
    notes: list[tuple[str, str | None]] = [("input of a merge cell", SUM_EDGE_COLOR),
                                           ("read by the classifier (concatenated)", COLLECTED_COLOR)]
    network = _NetworkLayout(names, connections, collected, len(CVPR_TAPS), "network: 3 merge cells")
    notes_width = max(_note_width(text, color) for text, color in notes) + 2 * MARGIN
    notes_height = len(notes) * LINE + MARGIN
    left_width = max(network.width, notes_width)
    cell_layout = _CellLayout(cell)
    body = max(network.height + notes_height, cell_layout.height)
    fig, top = _figure(left_width + cell_layout.width, body, "nas-segm decoder, CVPR 2019 space (Nekrasov et al.)")
    network.draw(_panel(fig, (0, top - network.height, network.width, network.height)),
                 (SUM_EDGE_COLOR, SUM_EDGE_COLOR))
    notes_ax = _panel(fig, (MARGIN, top - network.height - notes_height, notes_width, notes_height))
    _draw_notes(notes_ax, notes_height - LINE / 2, notes)
    cell_layout.draw(_panel(fig, (left_width, top - cell_layout.height, cell_layout.width, cell_layout.height)))
    return fig


# --- the network column (both spaces) -------------------------------------------------------------


class _NetworkLayout:
    """Inputs and blocks (or cells) top down in one column, each block's two inputs as arcs on the left (an
    arc bulges away from the column, so it never crosses a node), the collected ones to the classifier."""

    def __init__(self, names: list[str], pairs: Sequence[Sequence[int]], collected: list[int], num_inputs: int,
                 title: str) -> None:
        self.names, self.pairs, self.collected, self.num_inputs = names, pairs, collected, num_inputs
        self.title = title
        spans = [(num_inputs + b - source) * NETWORK_ROW for b, pair in enumerate(pairs) for source in pair]
        bulge = ARC_RAD * SECOND_INPUT_RAD * max(spans) / 2
        column = max(_text_width(name, NODE_FONTSIZE) for name in names) + NODE_PAD
        classifier = _text_width("classifier", NODE_FONTSIZE) + NODE_PAD
        top = PANEL_TITLE_ROOM + NODE_HEIGHT / 2 + 0.1
        self.height = top + (len(names) - 1) * NETWORK_ROW + NODE_HEIGHT / 2 + MARGIN
        x = MARGIN + bulge + column / 2
        self.nodes = [_Node(x, self.height - top - i * NETWORK_ROW, column) for i in range(len(names))]
        rows = [self.nodes[i].y for i in collected]
        self.classifier = _Node(self.nodes[0].right + CLASSIFIER_GAP + classifier / 2,
                                (max(rows) + min(rows)) / 2, classifier)
        self.width = max(self.classifier.right + MARGIN, _text_width(title, PANEL_FONTSIZE) + 2 * MARGIN)

    def draw(self, ax: Axes, colors: tuple[str, str]) -> None:
        ax.text(MARGIN, self.height - PANEL_TITLE_ROOM / 2, self.title, ha="left", va="center",
                fontsize=PANEL_FONTSIZE)
        for i, (name, node) in enumerate(zip(self.names, self.nodes)):
            color = COLLECTED_COLOR if i in self.collected else INPUT_COLOR if i < self.num_inputs else NODE_COLOR
            _draw_node(ax, node, name, color, COLLECTED if i in self.collected else NODE)
        _draw_node(ax, self.classifier, "classifier", CLASSIFIER_COLOR, NODE)
        for b, pair in enumerate(self.pairs):
            target = self.nodes[self.num_inputs + b]
            for slot, source in enumerate(pair):
                start = (self.nodes[source].left, self.nodes[source].y - 0.25 * NODE_HEIGHT)
                end = (target.left, target.y + (0.3 - 0.25 * slot) * NODE_HEIGHT)
                rad = ARC_RAD * (SECOND_INPUT_RAD if slot else 1)
                ax.add_patch(_arrow(start, end, colors[slot], connectionstyle=f"arc3,rad={rad}"))
        count = len(self.collected)
        for k, i in enumerate(sorted(self.collected)):  # top down, so no two arrows cross
            offset = ((count - 1) / 2 - k) / max(count - 1, 1) * 0.6 * NODE_HEIGHT
            end = (self.classifier.left, self.classifier.y + offset)
            ax.add_patch(_arrow((self.nodes[i].right, self.nodes[i].y), end, CLASSIFIER_EDGE_COLOR))


# --- the CVPR cell --------------------------------------------------------------------------------


class _CellLayout:
    """The contextual cell top down: x, f1 = op0(x), then each layer's two op labels side by side (op_a left,
    op_b right) above its sum, and the output, the sum of the loose ends. A label box stands for its op's
    output (the cell's features 3k - 1 and 3k), which later layers may read. Reads from further up than the
    row just above run out to their own lane beside the cell, down, and into the label from outside, so no
    edge runs through a box; the same for the loose ends into the output."""

    def __init__(self, cell: Sequence) -> None:
        op0, *layers = cell
        self.op0, self.layers = op0, [tuple(layer) for layer in layers]
        read = {position for layer in self.layers for position in layer[:2]}
        self.loose_ends = [index for index in OUTPUTS if index not in read]
        sums = [f"layer {k + 1} sum (f{OUTPUTS[k + 1]})" for k in range(len(layers))]
        output = "output = " + " + ".join(f"f{index}" for index in self.loose_ends)
        self.names = ["x (f0)", "f1", *sums, output]
        centre = max(_text_width(name, NODE_FONTSIZE) for name in self.names) + NODE_PAD
        op_width = max(_text_width(CVPR_OPS[op], OP_FONTSIZE)
                       for layer in self.layers for op in layer[2:]) + NODE_PAD
        offset = (op_width + OP_GAP) / 2
        self.lane_start = max(centre / 2, offset + op_width / 2) + LANE_GAP
        self.routes = self._routes()
        lanes = max((abs(lane) for lane, *_ in self.routes), default=self.lane_start)
        self.width = max(2 * (lanes + MARGIN + 0.05), _text_width(CELL_TITLE, PANEL_FONTSIZE) + 2 * MARGIN)
        half = self.width / 2
        self.height = PANEL_TITLE_ROOM + (len(self.names) - 1) * CELL_ROW + NODE_HEIGHT + 0.1 + MARGIN
        top = self.height - PANEL_TITLE_ROOM - NODE_HEIGHT / 2 - 0.1
        self.centre = [_Node(half, top - row * CELL_ROW, centre) for row in range(len(self.names))]
        op0_width = _text_width(CVPR_OPS[op0], OP_FONTSIZE) + NODE_PAD
        self.ops = {1: _Node(half, top - CELL_ROW / 2, op0_width, NODE_HEIGHT * 0.9)}
        for k in range(len(self.layers)):
            y = top - (k + 1.5) * CELL_ROW
            self.ops[OUTPUTS[k + 1] - 2] = _Node(half - offset, y, op_width, NODE_HEIGHT * 0.9)
            self.ops[OUTPUTS[k + 1] - 1] = _Node(half + offset, y, op_width, NODE_HEIGHT * 0.9)
        self.half = half

    def _routes(self) -> list[tuple[float, int, int]]:
        """(lane x relative to the centre line, source position, target position or -1 for the output) of every
        edge that runs in a lane; lanes are handed out inside out, shortest edge first, on the edge's side."""
        wanted = []  # (vertical extent, side, source, target)
        for k, (pos_a, pos_b, _, _) in enumerate(self.layers):
            for side, source, target in ((-1, pos_a, OUTPUTS[k + 1] - 2), (1, pos_b, OUTPUTS[k + 1] - 1)):
                if source != OUTPUTS[k]:  # the node just above is read straight down
                    wanted.append((k + 1.5 - self._row(source), side, source, target))
        sides = {-1: sum(side < 0 for _, side, *_ in wanted), 1: sum(side > 0 for _, side, *_ in wanted)}
        for source in self.loose_ends[:-1]:  # the last layer's sum sits right above the output
            side = -1 if sides[-1] <= sides[1] else 1
            sides[side] += 1
            wanted.append((len(self.names) - 1 - self._row(source) + 100, side, source, -1))
        routes, used = [], {-1: 0, 1: 0}
        for _, side, source, target in sorted(wanted):
            routes.append((side * (self.lane_start + used[side] * LANE_STEP), source, target))
            used[side] += 1
        return routes

    def _row(self, position: int) -> float:
        """The row of the box that holds the cell's feature ``position``: x, f1 and the sums on rows 0..4, the
        outputs 3m - 1 and 3m of layer m's ops half way between rows m and m + 1."""
        if position == 0:
            return 0
        if position in OUTPUTS:
            return OUTPUTS.index(position) + 1
        return (position + 1) // 3 + 0.5

    def _box(self, position: int) -> _Node:
        if position == 0:
            return self.centre[0]
        if position in OUTPUTS:
            return self.centre[OUTPUTS.index(position) + 1]
        return self.ops[position]

    def draw(self, ax: Axes) -> None:
        ax.text(MARGIN, self.height - PANEL_TITLE_ROOM / 2, CELL_TITLE, ha="left", va="center",
                fontsize=PANEL_FONTSIZE)
        last = len(self.names) - 1
        for row, (name, node) in enumerate(zip(self.names, self.centre)):
            _draw_node(ax, node, name, CLASSIFIER_COLOR if row == last else INPUT_COLOR if row == 0 else NODE_COLOR,
                       NODE)
        # x -> op0's label -> f1; each layer's reads into its two op labels, and these into its sum
        first = self.ops[1]
        ax.add_patch(_arrow((first.x, self.centre[0].bottom), (first.x, first.top), OP_COLORS[CVPR_OPS[self.op0]]))
        ax.add_patch(_arrow((first.x, first.bottom), (first.x, self.centre[1].top), SUM_EDGE_COLOR))
        _draw_op(ax, first, CVPR_OPS[self.op0])
        lanes = {(source, target): lane for lane, source, target in self.routes}
        for k, (pos_a, pos_b, op_a, op_b) in enumerate(self.layers):
            total = self.centre[k + 2]
            for side, source, target, op in ((-1, pos_a, OUTPUTS[k + 1] - 2, op_a),
                                             (1, pos_b, OUTPUTS[k + 1] - 1, op_b)):
                box, color = self.ops[target], OP_COLORS[CVPR_OPS[op]]
                if (source, target) in lanes:
                    ax.add_patch(_path_arrow(self._lane_path(source, box, lanes[source, target], side), color))
                else:
                    above = self._box(source)
                    ax.add_patch(_arrow((above.x + side * above.width / 4, above.bottom), (box.x, box.top), color))
                ax.add_patch(_arrow((box.x, box.bottom), (total.x + side * total.width / 4, total.top),
                                    SUM_EDGE_COLOR))
                _draw_op(ax, box, CVPR_OPS[op])
        output = self.centre[last]
        for source in self.loose_ends:
            if (source, -1) in lanes:
                lane = lanes[source, -1]
                ax.add_patch(_path_arrow(self._lane_path(source, output, lane, 1 if lane > 0 else -1),
                                         SUM_EDGE_COLOR))
            else:
                above = self._box(source)
                ax.add_patch(_arrow((above.x, above.bottom), (output.x, output.top), SUM_EDGE_COLOR))

    def _lane_path(self, source: int, target: _Node, lane: float, side: int) -> list[tuple[float, float]]:
        """Out of the source box on ``side``, along the lane, and into ``target`` from outside. From an op label
        on the other side: out of its inner side, down the gap between the layer's two labels, and across
        half way to the sum below."""
        box, x = self._box(source), self.half + lane
        end = (target.x + side * target.width / 2, target.y)
        start = (box.x + side * box.width / 2, box.y)
        if (box.x - self.half) * side < 0:  # an op label on the other side
            gap, below = self.half - side * OP_GAP / 6, box.y - CELL_ROW / 4
            return [start, (gap, box.y), (gap, below), (x, below), (x, end[1]), end]
        return [start, (x, box.y), (x, end[1]), end]


# --- drawing helpers ------------------------------------------------------------------------------


def _panel(fig: Figure, inches: tuple[float, float, float, float]) -> Axes:
    """An axes without decoration over ``inches`` (left, bottom, width, height) of ``fig``, one data unit
    per inch."""
    width, height = fig.get_size_inches()
    left, bottom, w, h = inches
    ax = fig.add_axes((left / width, bottom / height, w / width, h / height))
    ax.set_xlim(0, w)
    ax.set_ylim(0, h)
    ax.axis("off")
    return ax


def _text_width(text: str, fontsize: float, weight: str = "normal") -> float:
    """Width in inches of ``text`` set in the default font at ``fontsize``."""
    if not text:
        return 0.0
    return TextPath((0, 0), text, prop=FontProperties(size=fontsize, weight=weight)).get_extents().width / 72


def _draw_node(ax: Axes, node: _Node, name: str, color: str, gid: str) -> None:
    box = FancyBboxPatch((node.left, node.bottom), node.width, node.height, boxstyle="round,pad=0,rounding_size=0.06",
                         facecolor=color, edgecolor="0.3", linewidth=1.0, zorder=3, gid=gid)
    ax.add_patch(box)
    ax.text(node.x, node.y, name, ha="center", va="center", fontsize=NODE_FONTSIZE, zorder=4, gid=gid)


def _draw_op(ax: Axes, node: _Node, op: str) -> None:
    """An op's label on its edge: a white box edged in the op's colour."""
    ax.add_patch(FancyBboxPatch((node.left, node.bottom), node.width, node.height,
                                boxstyle="round,pad=0,rounding_size=0.08", facecolor="white",
                                edgecolor=OP_COLORS[op], linewidth=1.6, zorder=3, gid="op"))
    ax.text(node.x, node.y, op, ha="center", va="center", fontsize=OP_FONTSIZE, zorder=4, gid="op")


def _arrow(start: tuple[float, float], end: tuple[float, float], color: str,
           connectionstyle: str = "arc3,rad=0") -> FancyArrowPatch:
    return FancyArrowPatch(start, end, arrowstyle="-|>", connectionstyle=connectionstyle, shrinkA=0, shrinkB=0,
                           mutation_scale=10, color=color, linewidth=1.3, zorder=2)


def _path_arrow(points: list[tuple[float, float]], color: str) -> FancyArrowPatch:
    return FancyArrowPatch(path=Path(points), arrowstyle="-|>", mutation_scale=10, color=color, linewidth=1.3,
                           zorder=2)


def _figure(width: float, body: float, title: str) -> tuple[Figure, float]:
    """A figure ``width`` inches wide with ``title`` above a body ``body`` inches high; returns it and the
    body's top, in inches from the bottom."""
    height = body + TITLE_ROOM
    fig = Figure(figsize=(max(width, _text_width(title, TITLE_FONTSIZE, "bold") + 2 * MARGIN), height))
    fig.text(0.5, 1 - TITLE_ROOM / 2 / height, title, ha="center", va="center", fontsize=TITLE_FONTSIZE,
             weight="bold")
    return fig, body


def _note_width(text: str, color: str | None) -> float:
    return (KEY_WIDTH if color is not None else 0.0) + _text_width(text, NOTE_FONTSIZE)


def _draw_notes(ax: Axes, top: float, notes: list[tuple[str, str | None]]) -> None:
    """One note a line from ``top`` down, from the panel's left edge; a note with a colour gets a key before
    it (a swatch for a node colour, else a line)."""
    for row, (text, color) in enumerate(notes):
        y, x = top - row * LINE, 0.0
        if color in (COLLECTED_COLOR, INPUT_COLOR, NODE_COLOR):
            ax.add_patch(Rectangle((x, y - 0.08), 0.3, 0.16, facecolor=color, edgecolor="0.3", linewidth=1.0))
        elif color is not None:
            ax.add_line(Line2D([x, x + 0.3], [y, y], color=color, linewidth=1.6))
        if text:
            ax.text(x + (KEY_WIDTH if color is not None else 0.0), y, text, ha="left", va="center",
                    fontsize=NOTE_FONTSIZE)
