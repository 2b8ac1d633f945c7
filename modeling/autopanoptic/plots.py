"""A picture of an Auto-Panoptic architecture: the op of every choice layer, one coloured, labelled cell each,
in rows for the backbone's stages, the two heads and the two attention directions."""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from modeling.autopanoptic.genotype import BACKBONE_OPS, HEAD_OPS, INTER_OPS, PanopticGenotype

PART_COLOURS = {"backbone": ("#4c72b0", "#55a868", "#c44e52", "#8172b2"),
                "head": ("#64b5cd", "#4c72b0", "#dd8452", "#c44e52", "#55a868", "#8c8c8c"),
                "inter": ("#ccb974", "#dd8452", "#c44e52")}
SHORT_NAMES = {"shufflenet_3x3": "S3", "shufflenet_5x5": "S5", "shufflenet_7x7": "S7", "xception_3x3": "X3",
               "dw_conv_3x3": "DW3", "dw_conv_5x5": "DW5", "deform_conv_3x3": "DF3", "deform_conv_5x5": "DF5",
               "atrous_conv_3x3": "AT3", "atrous_conv_5x5": "AT5", "se_r4": "r4", "se_r8": "r8", "se_r6": "r6"}


def architecture_rows(genotype: PanopticGenotype) -> list[tuple[str, str, list[str]]]:
    """(row label, part, op names) for every row of the picture, in forward order."""
    rows, start = [], 0
    for stage, repeats in enumerate(genotype.stage_repeats, start=2):
        rows.append((f"backbone C{stage}", "backbone",
                     [BACKBONE_OPS[op] for op in genotype.backbone[start:start + repeats]]))
        start += repeats
    rows.append(("mask head", "head", [HEAD_OPS[op] for op in genotype.mask_head]))
    rows.append(("semantic subnet", "head", [HEAD_OPS[op] for op in genotype.subnet]))
    rows.append(("things→stuff (P2..P5)", "inter", [INTER_OPS[op] for op in genotype.things_to_stuff]))
    rows.append(("stuff→things (P2..P6)", "inter", [INTER_OPS[op] for op in genotype.stuff_to_things]))
    return rows


def plot_architecture(genotype: PanopticGenotype) -> Figure:
    rows = architecture_rows(genotype)
    width = max(len(ops) for _, _, ops in rows)
    figure = Figure(figsize=(max(6.0, 0.55 * width + 2.5), 0.5 * len(rows) + 1.2))
    axes = figure.add_subplot()
    names = {"backbone": BACKBONE_OPS, "head": HEAD_OPS, "inter": INTER_OPS}
    for y, (_, part, ops) in enumerate(rows):
        for x, op in enumerate(ops):
            colour = PART_COLOURS[part][names[part].index(op)]
            axes.add_patch(Rectangle((x + 0.04, len(rows) - 1 - y + 0.08), 0.92, 0.84, facecolor=colour,
                                     edgecolor="none"))
            axes.text(x + 0.5, len(rows) - 0.5 - y, SHORT_NAMES[op], ha="center", va="center", fontsize=7,
                      color="white")
    axes.set_xlim(0, width)
    axes.set_ylim(0, len(rows))
    axes.set_yticks([len(rows) - 0.5 - y for y in range(len(rows))], [label for label, _, _ in rows], fontsize=8)
    axes.set_xticks([])
    for spine in axes.spines.values():
        spine.set_visible(False)
    axes.set_title("Auto-Panoptic architecture (S: ShuffleNetV2 k×k, X3: Xception; DW/DF/AT: separable, deformable, "
                   "atrous k×k; r: SE reduction, r6 being the paper's r16)", fontsize=8)
    figure.tight_layout()
    return figure

