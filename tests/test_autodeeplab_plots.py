from collections import Counter
from itertools import combinations

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.patches import Rectangle
from matplotlib.path import Path
from matplotlib.text import Annotation
from PIL import Image

from modeling.autodeeplab.genotype import PRIMITIVES, Architecture, paper_architecture
from modeling.autodeeplab.plots import plot_alphas, plot_architecture, plot_betas
from utils.plots import plot_curves, save_figure

PAPER_STRIDES = [4, 4, 4, 8, 16, 8, 16, 16, 32, 32, 16, 8]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _line_labelled(ax, label):
    (line,) = [line for line in ax.lines if line.get_label() == label]
    return line


def _one_hot_row(op_name: str, weight: float) -> np.ndarray:
    """A softmax-like row: ``weight`` on one op, the rest spread evenly."""
    row = np.full(len(PRIMITIVES), (1 - weight) / (len(PRIMITIVES) - 1))
    row[PRIMITIVES.index(op_name)] = weight
    return row


# --- plot_alphas ----------------------------------------------------------------------------

# two blocks, five edges: 0-1 into block 1, 2-4 into block 2
TWO_STEP_ALPHAS = np.stack([
    _one_hot_row("sep_conv_3x3", 0.6),  # block 1 <- H^{l-2}
    _one_hot_row("skip_connect", 0.5),  # block 1 <- H^{l-1}
    _one_hot_row("none", 0.9),          # block 2 <- H^{l-2}: strongest real op only 0.1/7
    _one_hot_row("dil_conv_5x5", 0.5),  # block 2 <- H^{l-1}
    _one_hot_row("max_pool_3x3", 0.4),  # block 2 <- block 1
])


def test_plot_alphas_image_is_the_input_probabilities():
    fig = plot_alphas(TWO_STEP_ALPHAS, steps=2)
    ax = fig.axes[0]

    np.testing.assert_array_equal(ax.images[0].get_array(), TWO_STEP_ALPHAS)
    values = {(text.get_position(), text.get_text()) for text in ax.texts}
    assert ((3, 1), f"{TWO_STEP_ALPHAS[1, 3]:.2f}") in values
    assert len(ax.texts) == TWO_STEP_ALPHAS.size


def test_plot_alphas_labels_edges_by_block_and_input():
    ax = plot_alphas(TWO_STEP_ALPHAS, steps=2).axes[0]

    assert [label.get_text() for label in ax.get_yticklabels()] == [
        "block 1 ← $H^{l-2}$", "block 1 ← $H^{l-1}$",
        "block 2 ← $H^{l-2}$", "block 2 ← $H^{l-1}$", "block 2 ← block 1",
    ]
    assert [label.get_text() for label in ax.get_xticklabels()] == list(PRIMITIVES)


def _outlined_cells(ax) -> set[tuple[int, int]]:
    corners = [patch.get_xy() for patch in ax.patches if isinstance(patch, Rectangle)]
    return {(round(y + 0.5), round(x + 0.5)) for x, y in corners}


def test_plot_alphas_outlines_the_two_strongest_real_ops_per_block():
    ax = plot_alphas(TWO_STEP_ALPHAS, steps=2).axes[0]

    # edge 2 is dominated by "none", so block 2 keeps edges 3 and 4
    assert _outlined_cells(ax) == {
        (0, PRIMITIVES.index("sep_conv_3x3")),
        (1, PRIMITIVES.index("skip_connect")),
        (3, PRIMITIVES.index("dil_conv_5x5")),
        (4, PRIMITIVES.index("max_pool_3x3")),
    }


def test_plot_alphas_outlines_the_given_choice():
    chosen = [(0, 7), (2, 4)]

    ax = plot_alphas(TWO_STEP_ALPHAS, steps=2, chosen=chosen).axes[0]

    assert _outlined_cells(ax) == set(chosen)


def test_plot_alphas_rejects_a_shape_that_does_not_match_steps():
    with pytest.raises(ValueError, match=r"\(9, 8\)"):
        plot_alphas(TWO_STEP_ALPHAS, steps=3)


# --- plot_betas -----------------------------------------------------------------------------

def _expected_segments(num_layers: int, num_levels: int) -> set[tuple[tuple[int, int], ...]]:
    """Every move between existing nodes of consecutive layers, as ((x, stride), (x, stride)).

    Node (layer m, level k) exists iff k <= m + 1 (the stem is layer -1, level 0 only); a move
    changes level by at most one.
    """
    nodes = {(m, k) for m in range(-1, num_layers) for k in range(num_levels) if k <= m + 1}
    return {((m - 1, 4 * 2**k), (m, 4 * 2**j))
            for (m, j) in nodes for k in range(num_levels)
            if (m - 1, k) in nodes and abs(k - j) <= 1}


def _segments(ax):
    return {tuple((int(x), int(y)) for x, y in zip(line.get_xdata(), line.get_ydata()))
            for line in ax.lines if line.get_label() != "decoded path"}


def test_plot_betas_draws_one_line_per_valid_transition():
    # by hand for 3 layers, 4 levels: stem -> {4, 8}: 2; layer 0 (levels 0, 1): 2 + 3;
    # layer 1 (levels 0, 1, 2): 2 + 3 + 3  ->  15
    ax = plot_betas(np.full((3, 4, 3), 0.3)).axes[0]

    assert len(ax.lines) == 15
    assert _segments(ax) == _expected_segments(3, 4)


def test_plot_betas_lines_match_enumeration_for_the_full_lattice():
    ax = plot_betas(np.full((12, 4, 3), 0.3)).axes[0]

    expected = _expected_segments(12, 4)
    assert len(ax.lines) == len(expected)
    assert _segments(ax) == expected


def test_plot_betas_line_width_and_opacity_grow_with_weight():
    betas = np.full((3, 4, 3), 0.1)
    betas[2, 1, 2] = 0.9  # layer 2: stride 8 -> 16
    betas[2, 1, 0] = 0.0  # layer 2: stride 8 -> 4
    ax = plot_betas(betas).axes[0]
    lines = {tuple((int(x), int(y)) for x, y in zip(line.get_xdata(), line.get_ydata())): line
             for line in ax.lines}

    heavy, light, empty = lines[((1, 8), (2, 16))], lines[((1, 8), (2, 8))], lines[((1, 8), (2, 4))]

    assert heavy.get_linewidth() > light.get_linewidth() > empty.get_linewidth()
    assert heavy.get_alpha() > light.get_alpha() > empty.get_alpha()


def test_plot_betas_highlights_the_given_path():
    path = [1, 2, 2, 1]
    ax = plot_betas(np.full((4, 4, 3), 0.3), path=path).axes[0]

    line = _line_labelled(ax, "decoded path")

    assert list(line.get_xdata()) == [-1, 0, 1, 2, 3]
    assert list(line.get_ydata()) == [4, 8, 16, 16, 8]
    assert len(ax.lines) == len(_expected_segments(4, 4)) + 1


def test_plot_betas_rejects_a_path_of_the_wrong_length():
    with pytest.raises(ValueError, match="3 layers"):
        plot_betas(np.full((4, 4, 3), 0.3), path=[0, 1, 1])


# --- plot_architecture ----------------------------------------------------------------------

def test_plot_architecture_path_panel_follows_the_strides():
    arch = paper_architecture()
    path_ax = plot_architecture(arch).axes[0]

    line = _line_labelled(path_ax, "network path")

    assert list(line.get_xdata()) == list(range(-1, 12))
    assert list(line.get_ydata()) == [4, *PAPER_STRIDES]
    assert path_ax.yaxis_inverted()


def test_plot_architecture_labels_every_op_of_the_cell():
    arch = paper_architecture()
    cell_ax = plot_architecture(arch).axes[1]

    op_labels = [text.get_text() for text in cell_ax.texts if text.get_text() in PRIMITIVES]

    assert len(op_labels) == 2 * arch.steps
    assert Counter(op_labels) == Counter(op for block in arch.cell for _, op in block)


def test_plot_architecture_arrows_join_the_right_nodes():
    arch = paper_architecture()
    cell_ax = plot_architecture(arch).axes[1]
    nodes = {text.get_text(): np.array(text.get_position()) for text in cell_ax.texts
             if not isinstance(text, Annotation) and text.get_text() not in PRIMITIVES}

    def nearest_node(point):
        return min(nodes, key=lambda name: np.linalg.norm(nodes[name] - np.array(point)))

    arrows = Counter((nearest_node(arrow.xyann), nearest_node(arrow.xy))
                     for arrow in cell_ax.texts if isinstance(arrow, Annotation))

    names = ["$H^{l-2}$", "$H^{l-1}$", "block 1", "block 2", "block 3", "block 4", "block 5"]
    expected = Counter((names[cell_input], names[block + 2])
                       for block, pairs in enumerate(arch.cell) for cell_input, _ in pairs)
    expected.update((f"block {block}", "concat") for block in range(1, 6))  # block_multiplier 5
    assert arrows == expected


# the cell the demo found (images/architecture.png): mostly skip_connect, so same-named labels
# on neighbouring edges would be easy to misread
DEMO_ARCHITECTURE = Architecture(
    network_path=(0, 0, 0, 0),
    cell=(((0, "skip_connect"), (1, "skip_connect")), ((1, "sep_conv_5x5"), (2, "skip_connect")),
          ((2, "skip_connect"), (3, "dil_conv_5x5")), ((0, "sep_conv_3x3"), (1, "skip_connect")),
          ((1, "skip_connect"), (2, "skip_connect"))),
    filter_multiplier=4, block_multiplier=5)


def _drawn_edges(cell_ax) -> list[tuple[str, str, list[Path]]]:
    """(source name, target name, the arrow's outline in display pixels) for every arrow."""
    nodes = {text.get_text(): np.array(text.get_position()) for text in cell_ax.texts
             if not isinstance(text, Annotation) and text.get_text() not in PRIMITIVES}

    def nearest_node(point):
        return min(nodes, key=lambda name: np.linalg.norm(nodes[name] - np.array(point)))

    edges = []
    for arrow in cell_ax.texts:
        if isinstance(arrow, Annotation):
            patch = arrow.arrow_patch
            outline = patch.get_transform().transform_path(patch.get_path())
            pieces = [Path(piece) for piece in outline.to_polygons(closed_only=False)]
            edges.append((nearest_node(arrow.xyann), nearest_node(arrow.xy), pieces))
    return edges


def _op_labels(cell_ax) -> list[tuple[str, Path]]:
    """(op, the label's outline in display pixels): its drawn box, else its text extent."""
    renderer = cell_ax.figure.canvas.get_renderer()
    labels = []
    for text in cell_ax.texts:
        if isinstance(text, Annotation) or text.get_text() not in PRIMITIVES:
            continue
        box = text.get_bbox_patch()
        if box is not None:
            outline = box.get_transform().transform_path(box.get_path())
        else:
            extent = text.get_window_extent(renderer)
            outline = Path([(extent.x0, extent.y0), (extent.x1, extent.y0), (extent.x1, extent.y1),
                            (extent.x0, extent.y1), (extent.x0, extent.y0)], closed=True)
        labels.append((text.get_text(), Path(outline.to_polygons()[0], closed=True)))
    return labels


@pytest.mark.parametrize("arch", [paper_architecture(), DEMO_ARCHITECTURE], ids=["paper", "demo"])
def test_plot_architecture_each_op_label_touches_only_its_own_edge(arch):
    fig = plot_architecture(arch)
    fig.canvas.draw()
    cell_ax = fig.axes[1]
    names = ["$H^{l-2}$", "$H^{l-1}$", *(f"block {block + 1}" for block in range(arch.steps))]
    op_of_edge = {(names[cell_input], names[block + 2]): op
                  for block, pairs in enumerate(arch.cell) for cell_input, op in pairs}
    edges = _drawn_edges(cell_ax)
    labels = _op_labels(cell_ax)

    labelled = []
    for op, outline in labels:
        touching = [(source, target) for source, target, pieces in edges
                    if any(piece.intersects_path(outline, filled=True) for piece in pieces)]
        # the label lies on exactly one arrow, and that arrow is an edge carrying this op
        assert len(touching) == 1, f"label {op!r} is crossed by {len(touching)} edges: {touching}"
        assert op_of_edge.get(touching[0]) == op, f"label {op!r} sits on edge {touching[0]}"
        labelled.append(touching[0])
    assert sorted(labelled) == sorted(op_of_edge)  # every op edge carries exactly one label
    for (op_a, outline_a), (op_b, outline_b) in combinations(labels, 2):
        assert not outline_a.intersects_path(outline_b, filled=True), \
            f"labels {op_a!r} and {op_b!r} overlap"
    nodes = _node_outlines(cell_ax)
    for source, target, pieces in edges:
        crossed = [name for name, outline in nodes.items() if name not in (source, target)
                   and any(piece.intersects_path(outline, filled=True) for piece in pieces)]
        assert not crossed, f"edge {source} -> {target} runs through {crossed}"


def _node_outlines(cell_ax) -> dict[str, Path]:
    """Each node's box in display pixels, by the name written in it."""
    names = {text.get_text(): np.array(text.get_position()) for text in cell_ax.texts
             if not isinstance(text, Annotation) and text.get_text() not in PRIMITIVES}
    outlines = {}
    for patch in cell_ax.patches:
        extents = patch.get_extents()  # display pixels
        centre = cell_ax.transData.inverted().transform(((extents.x0 + extents.x1) / 2,
                                                         (extents.y0 + extents.y1) / 2))
        name = min(names, key=lambda n: np.linalg.norm(names[n] - centre))
        outline = patch.get_transform().transform_path(patch.get_path())
        outlines[name] = Path(outline.to_polygons()[0], closed=True)
    assert len(outlines) == len(names)
    return outlines


def test_plot_architecture_title_names_filters_and_strides():
    fig = plot_architecture(paper_architecture(filter_multiplier=48))

    title = fig._suptitle.get_text()

    assert "F = 48" in title
    assert " → ".join(map(str, PAPER_STRIDES)) in title


# --- plot_curves ----------------------------------------------------------------------------

def test_plot_curves_draws_one_line_per_key_present_and_skips_gaps():
    history = [
        {"epoch": 0, "loss": 1.0, "miou": 0.1},
        {"epoch": 1, "loss": 0.5},
        {"epoch": 2, "loss": 0.25, "miou": 0.3},
    ]

    ax = plot_curves(history, ["loss", "miou", "never_logged"], title="training").axes[0]

    assert [line.get_label() for line in ax.lines] == ["loss", "miou"]
    assert list(ax.lines[1].get_xdata()) == [0, 2]
    assert list(ax.lines[1].get_ydata()) == [0.1, 0.3]
    assert [text.get_text() for text in ax.get_legend().get_texts()] == ["loss", "miou"]
    assert ax.get_xlabel() == "epoch"
    assert ax.get_title() == "training"


# --- save_figure ----------------------------------------------------------------------------

def test_save_figure_writes_a_png_atomically_and_closes_the_figure(tmp_path):
    target = tmp_path / "curves.png"
    target.write_bytes(b"stale")
    fig = plot_curves([{"epoch": 0, "loss": 1.0}, {"epoch": 1, "loss": 0.5}], ["loss"])
    pyplot_figures = plt.get_fignums()

    save_figure(fig, target)

    with Image.open(target) as image:
        assert image.format == "PNG"
        assert image.width > 0 and image.height > 0
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]
    assert plt.get_fignums() == pyplot_figures  # built and saved without pyplot: nothing to close


def test_save_figure_removes_its_temp_file_when_the_final_rename_fails(tmp_path):
    target = tmp_path / "curves.png"
    target.mkdir()  # the PNG gets written, then replacing a directory with it fails
    fig = plot_curves([{"epoch": 0, "loss": 1.0}], ["loss"])
    pyplot_figures = plt.get_fignums()

    with pytest.raises(OSError):
        save_figure(fig, target)

    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]
    assert target.is_dir()
    assert plt.get_fignums() == pyplot_figures
