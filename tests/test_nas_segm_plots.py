"""The picture of a nas-segm decoder (``plot_decoder``): every block, cell and op of the genotype written where
it can be read, the classifier's inputs exactly the decoder's, and a figure that saves."""

import random
from collections import Counter
from itertools import combinations

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from matplotlib.text import Text
from PIL import Image

import modeling.nas_segm  # noqa: F401 - registers the genotype
from modeling.nas_segm.genotype import MAX_LOG_STRIDE, MAX_REPEATS, NUM_TEMPLATES, DecoderGenotype, released
from modeling.nas_segm.micro_decoder import ContextualCell, MicroDecoder
from modeling.nas_segm.ops import CVPR_OPS, WACV_OPS
from modeling.nas_segm.plots import COLLECTED_COLOR, plot_decoder
from modeling.nas_segm.template_decoder import NUM_BLOCKS, TemplateDecoder
from utils.plots import save_figure

WACV_ENCODER = ["enc s4 (24 ch)", "enc s8 (32 ch)"]
CVPR_ENCODER = ["enc s4 (24 ch)", "enc s8 (32 ch)", "enc s16 (96 ch)", "enc s32 (320 ch)"]
EDGE_PX = 3  # an arrow touches a box it comes this near; it may not reach further into any box


def _random_wacv(seed: int) -> DecoderGenotype:
    rng = random.Random(seed)
    templates = tuple((rng.randrange(len(WACV_OPS)), rng.randrange(len(WACV_OPS)), rng.randrange(2))
                      for _ in range(NUM_TEMPLATES))
    structure = tuple((rng.randrange(2 + j), rng.randrange(2 + j), rng.randrange(NUM_TEMPLATES),
                       rng.randrange(MAX_REPEATS), rng.randrange(MAX_LOG_STRIDE + 1)) for j in range(NUM_BLOCKS))
    return DecoderGenotype("wacv", (templates, structure))


def _random_cvpr(seed: int) -> DecoderGenotype:
    rng = random.Random(seed)
    cell = (rng.randrange(len(CVPR_OPS)), *((rng.randrange(3 * k - 1), rng.randrange(3 * k - 1),
                                              rng.randrange(len(CVPR_OPS)), rng.randrange(len(CVPR_OPS)))
                                             for k in (1, 2, 3)))
    connections = tuple((rng.randrange(4 + b), rng.randrange(4 + b)) for b in range(3))
    return DecoderGenotype("cvpr", (cell, connections))


RELEASED = ["wacv_arch0", "wacv_arch1", "cvpr_arch0"]
GENOTYPES = ([pytest.param(lambda name=name: released(name), id=name) for name in RELEASED]
             + [pytest.param(lambda seed=seed: _random_wacv(seed), id=f"wacv_random{seed}") for seed in range(4)]
             + [pytest.param(lambda seed=seed: _random_cvpr(seed), id=f"cvpr_random{seed}") for seed in range(4)])


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _texts(fig) -> list[Text]:
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def _all_text(fig) -> str:
    return "\n".join(t.get_text() for t in _texts(fig))


def _node_labels(fig, gid: str) -> list[str]:
    return [t.get_text() for t in _texts(fig) if t.get_gid() == gid]


def _drawn(fig):
    """The figure drawn at its default size and dpi: (texts, boxes, arrows) with window extents."""
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    texts = [(t, t.get_window_extent(renderer)) for t in _texts(fig)]
    boxes = [(p, p.get_window_extent(renderer)) for p in fig.findobj(FancyBboxPatch)]
    arrows = [a for a in fig.findobj(FancyArrowPatch)]
    return texts, boxes, arrows


def _arrow_points(arrow: FancyArrowPatch) -> np.ndarray:
    """Points along the drawn arrow (line and head), in display pixels."""
    path = arrow.get_transform().transform_path(arrow.get_path())
    return np.concatenate([segment(np.linspace(0, 1, 25)) for segment, _ in path.iter_bezier()])


def _inside(points: np.ndarray, extent, by: float) -> np.ndarray:
    """Which points lie within ``extent`` grown by ``by`` pixels (shrunk for a negative ``by``)."""
    return ((points[:, 0] > extent.x0 - by) & (points[:, 0] < extent.x1 + by)
            & (points[:, 1] > extent.y0 - by) & (points[:, 1] < extent.y1 + by))


def _box_of(text_extent, boxes):
    """The box a node's or op's label is written in."""
    centre = np.array([[(text_extent.x0 + text_extent.x1) / 2, (text_extent.y0 + text_extent.y1) / 2]])
    (found,) = [(patch, extent) for patch, extent in boxes if _inside(centre, extent, 0)[0]]
    return found


def _edges(fig) -> Counter:
    """Every arrow as the unordered pair of the labels of the two boxes it joins."""
    texts, boxes, arrows = _drawn(fig)
    label = {id(_box_of(extent, boxes)[0]): t.get_text() for t, extent in texts if t.get_gid() is not None}
    edges = Counter()
    for arrow in arrows:
        points = _arrow_points(arrow)
        touched = [label[id(patch)] for patch, extent in boxes if _inside(points, extent, EDGE_PX).any()]
        assert len(touched) == 2, touched
        edges[frozenset(touched) if touched[0] != touched[1] else touched[0]] += 1
    return edges


def _pair(a: str, b: str) -> frozenset:
    return frozenset((a, b))


# --- what the picture says ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["wacv_arch0", "wacv_arch1"])
def test_a_wacv_picture_names_every_block_template_and_op(name):
    genotype = released(name)
    fig = plot_decoder(genotype)
    text = _all_text(fig)

    assert "WACV" in fig.texts[0].get_text()
    labels = _node_labels(fig, "node") + _node_labels(fig, "collected")
    assert set(WACV_ENCODER) <= set(labels)
    for j, (_, _, template, repeats, log_stride) in enumerate(genotype.structure):
        (block,) = [label for label in labels if label.startswith(f"block {j}:")]
        assert f"template T{template}" in block and f"stride {2**log_stride}" in block
        assert f"{repeats + 1} repeat" in block
    for t, (op1, op2, aggregation) in enumerate(genotype.templates):
        assert f"T{t}: {WACV_OPS[op1]} + {WACV_OPS[op2]} -> {('psum', 'cat')[aggregation]}" in text
    assert "classifier" in labels


def test_the_wacv_arch0_templates_read_as_in_the_paper_release():
    text = _all_text(plot_decoder(released("wacv_arch0")))
    for line in ("T0: max_pool_3x3 + sep_conv_3x3 -> cat", "T1: sep_conv_5x5_dil6 + sep_conv_5x5 -> cat",
                 "T2: max_pool_3x3 + sep_conv_5x5 -> cat", "block 0: template T0, 1 repeat, stride 2",
                 "block 6: template T0, 2 repeats, stride 1"):
        assert line in text


@pytest.mark.parametrize("name", ["wacv_arch0", "wacv_arch1"])
def test_a_wacv_picture_draws_each_blocks_two_inputs_and_the_classifiers(name):
    genotype = released(name)
    fig = plot_decoder(genotype)
    labels = WACV_ENCODER + sorted((label for label in _node_labels(fig, "node") + _node_labels(fig, "collected")
                                    if label.startswith("block ")), key=lambda label: int(label.split()[1][:-1]))
    decoder = TemplateDecoder(genotype.config, (24, 32), num_classes=19)

    expected = Counter()
    for j, (first, second) in enumerate(decoder.inputs):
        for source in (first, second):
            expected[_pair(labels[source], labels[2 + j])] += 1
    for i in decoder.collected:
        expected[_pair(labels[i], "classifier")] += 1
    assert _edges(fig) == expected


@pytest.mark.parametrize("name", ["wacv_arch0", "wacv_arch1"])
def test_the_wacv_collected_blocks_are_the_decoders(name):
    genotype = released(name)
    fig = plot_decoder(genotype)
    decoder = TemplateDecoder(genotype.config, (24, 32), num_classes=19)
    names = WACV_ENCODER + [f"block {j}:" for j in range(NUM_BLOCKS)]

    collected = _node_labels(fig, "collected")
    assert sorted(names.index(label if label in WACV_ENCODER else label.split(" template")[0])
                  for label in collected) == sorted(decoder.collected)
    assert all(not label.startswith("enc") for label in collected)  # the released ones read both features
    shaded = [p for p in fig.findobj(FancyBboxPatch) if p.get_facecolor() == to_rgba(COLLECTED_COLOR)]
    assert len(shaded) == len(decoder.collected) and all(p.get_gid() == "collected" for p in shaded)


def test_the_cvpr_picture_names_every_cell_and_op():
    genotype = released("cvpr_arch0")
    fig = plot_decoder(genotype)
    text = _all_text(fig)
    cell, connections = genotype.config

    assert "CVPR" in fig.texts[0].get_text()
    labels = _node_labels(fig, "node") + _node_labels(fig, "collected")
    assert set(CVPR_ENCODER + ["cell 0", "cell 1", "cell 2", "classifier"]) <= set(labels)
    ops = [cell[0]] + [op for layer in cell[1:] for op in layer[2:]]
    assert Counter(_node_labels(fig, "op")) == Counter(CVPR_OPS[op] for op in ops)
    assert Counter(_node_labels(fig, "op")) == Counter({"sep_conv_5x5_dil6": 3, "conv3x3_dil3": 1, "sep_conv_3x3": 1,
                                                        "conv3x3": 1, "global_average_pool": 1})
    loose = ContextualCell(cell, channels=4, sep_repeats=1).loose_ends
    assert f"output = {' + '.join(f'f{i}' for i in loose)}" in text
    assert "output = f1 + f4 + f7 + f10" in text


def test_the_cvpr_collected_cells_are_the_decoders():
    genotype = released("cvpr_arch0")
    fig = plot_decoder(genotype)
    decoder = MicroDecoder(genotype.config, (24, 32, 96, 320), num_classes=21)
    names = CVPR_ENCODER + ["cell 0", "cell 1", "cell 2"]

    assert sorted(names.index(label) for label in _node_labels(fig, "collected")) == sorted(decoder.collected)
    assert decoder.collected == [4, 5, 6]


def test_the_cvpr_picture_draws_the_network_and_the_cell_edge_by_edge():
    genotype = released("cvpr_arch0")
    fig = plot_decoder(genotype)
    decoder = MicroDecoder(genotype.config, (24, 32, 96, 320), num_classes=21)
    names = CVPR_ENCODER + ["cell 0", "cell 1", "cell 2"]
    expected = Counter()
    for b, pair in enumerate(decoder.connections):
        for source in pair:
            expected[_pair(names[source], names[4 + b])] += 1
    for i in decoder.collected:
        expected[_pair(names[i], "classifier")] += 1

    # arch0's cell: f1 = sep_conv_5x5_dil6(x); layer 1 conv3x3_dil3(f0) + sep_conv_3x3(f0); layer 2
    # sep_conv_5x5_dil6(f0) + sep_conv_5x5_dil6(f2); layer 3 conv3x3(f0) + global_average_pool(f5); output
    # f1 + f4 + f7 + f10. Both of layer 2's ops share one name, so their edges are told apart by what they read.
    out = "output = f1 + f4 + f7 + f10"
    expected.update({
        _pair("x (f0)", "sep_conv_5x5_dil6"): 2, _pair("sep_conv_5x5_dil6", "f1"): 1,
        _pair("x (f0)", "conv3x3_dil3"): 1, _pair("x (f0)", "sep_conv_3x3"): 1,
        _pair("conv3x3_dil3", "layer 1 sum (f4)"): 1, _pair("sep_conv_3x3", "layer 1 sum (f4)"): 1,
        _pair("conv3x3_dil3", "sep_conv_5x5_dil6"): 1, _pair("sep_conv_5x5_dil6", "layer 2 sum (f7)"): 2,
        _pair("x (f0)", "conv3x3"): 1, _pair("sep_conv_5x5_dil6", "global_average_pool"): 1,
        _pair("conv3x3", "layer 3 sum (f10)"): 1, _pair("global_average_pool", "layer 3 sum (f10)"): 1,
        _pair("f1", out): 1, _pair("layer 1 sum (f4)", out): 1, _pair("layer 2 sum (f7)", out): 1,
        _pair("layer 3 sum (f10)", out): 1,
    })
    assert _edges(fig) == expected


@pytest.mark.parametrize("make", [pytest.param(lambda seed=seed: _random_wacv(seed), id=f"wacv{seed}")
                                  for seed in range(4)]
                         + [pytest.param(lambda seed=seed: _random_cvpr(seed), id=f"cvpr{seed}") for seed in range(4)])
def test_any_genotype_classifies_the_decoders_collected_outputs(make):
    genotype = make()
    fig = plot_decoder(genotype)
    if genotype.space == "wacv":
        decoder = TemplateDecoder(genotype.config, (24, 32), num_classes=3)
        names = WACV_ENCODER + [f"block {j}" for j in range(NUM_BLOCKS)]
    else:
        decoder = MicroDecoder(genotype.config, (24, 32, 96, 320), num_classes=3, agg_size=8)
        names = CVPR_ENCODER + ["cell 0", "cell 1", "cell 2"]
    collected = [label.split(":")[0] for label in _node_labels(fig, "collected")]
    assert sorted(names.index(label) for label in collected) == sorted(decoder.collected)
    edges = _edges(fig)
    assert sum(n for pair, n in edges.items() if "classifier" in pair) == len(decoder.collected)


# --- readable, and a figure of its own ------------------------------------------------------------


@pytest.mark.parametrize("make", GENOTYPES)
def test_no_label_meets_another_label_box_or_arrow(make):
    fig = plot_decoder(make())
    texts, boxes, arrows = _drawn(fig)
    frame = fig.bbox

    for (a, ea), (b, eb) in combinations(texts, 2):
        assert not ea.overlaps(eb), (a.get_text(), b.get_text())
    for (_, ea), (_, eb) in combinations(boxes, 2):
        assert not ea.overlaps(eb)
    for text, extent in texts:
        assert frame.x0 <= extent.x0 and extent.x1 <= frame.x1 and frame.y0 <= extent.y0 and extent.y1 <= frame.y1, \
            text.get_text()
        if text.get_gid() is None:  # titles and notes stay clear of every box
            assert not any(extent.overlaps(box) for _, box in boxes), text.get_text()
        else:  # a node's or op's label lies inside its box, with room to spare
            _, box = _box_of(extent, boxes)
            assert box.x0 + 2 < extent.x0 and extent.x1 < box.x1 - 2, text.get_text()
            assert box.y0 < extent.y0 and extent.y1 < box.y1, text.get_text()
    for arrow in arrows:
        points = _arrow_points(arrow)
        assert not any(_inside(points, box, -EDGE_PX).any() for _, box in boxes)
        assert not any(_inside(points, extent, 0).any() for text, extent in texts if text.get_gid() is None)


@pytest.mark.parametrize("name", RELEASED)
def test_the_figure_saves_as_a_png_and_leaves_pyplot_alone(name, tmp_path):
    before = plt.get_fignums()
    fig = plot_decoder(released(name))
    assert plt.get_fignums() == before
    width, height = fig.get_size_inches()
    assert 6 <= width <= 16 and 4 <= height <= 12

    fig.savefig(tmp_path / "decoder.png")
    image = Image.open(tmp_path / "decoder.png")
    assert np.allclose(image.size, (width * fig.dpi, height * fig.dpi), atol=1)
    assert (tmp_path / "decoder.png").stat().st_size > 20_000
    pixels = np.asarray(image.convert("L"))
    assert (pixels < 128).mean() > 0.005  # ink, not a blank page

    save_figure(plot_decoder(released(name)), tmp_path / "saved.png")
    assert (tmp_path / "saved.png").stat().st_size > 20_000


def test_an_unknown_space_is_refused():
    with pytest.raises(ValueError, match="unknown nas-segm space"):
        plot_decoder(DecoderGenotype("nasfpn", ()))
