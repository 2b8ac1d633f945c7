"""A decoder found by the RL decoder search (system ``nas-segm``), as its ``architecture.json`` holds it.

``genotype = {"space": "wacv" | "cvpr", "config": ...}`` with the original's config lists: WACV
``[templates, structure]`` (``template_decoder``), CVPR ``[cell, connections]`` (``micro_decoder``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from modeling.architecture_file import load_architecture, register_genotype
from modeling.nas_segm.micro_decoder import NUM_LAYERS
from modeling.nas_segm.ops import AGGREGATIONS, CVPR_OPS, WACV_OPS
from modeling.nas_segm.template_decoder import NUM_BLOCKS
from utils.errors import UserError

NUM_TEMPLATES = 3
MAX_REPEATS, MAX_LOG_STRIDE = 4, 1  # a block repeats its template 1..4 times, at stride 1 or 2
NUM_CELLS, NUM_ENCODER_FEATURES = 3, 4  # CVPR: 3 merge cells over the encoder's 4 features
AGGREGATION_NAMES = ("psum", "cat")
RELEASED = Path(__file__).resolve().parents[1] / "architectures"


@register_genotype
@dataclass(frozen=True)
class DecoderGenotype:
    system: ClassVar[str] = "nas-segm"

    space: str
    config: tuple
    source: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def templates(self) -> tuple:
        return self.config[0]

    @property
    def structure(self) -> tuple:
        return self.config[1]

    def genotype_json(self) -> dict[str, Any]:
        return {"space": self.space, "config": _as_lists(self.config)}

    def search_space_json(self) -> dict[str, Any]:
        if self.space == "cvpr":
            return {"space": "cvpr", "ops": list(CVPR_OPS), "cells": NUM_CELLS,
                    "cell": "[op0, [pos_a, pos_b, op_a, op_b] x 3]: layer k reads positions 0..3k-2 of the cell's "
                            "features",
                    "connections": "[[input1, input2] x 3]: inputs 0..3 are the encoder's features at strides 4, "
                                   "8, 16, 32; 4 + b is cell b's output",
                    "encoder": "MobileNetV2 (the original's, with the t=1 expansion conv), features at strides 4-32"}
        return {"space": self.space, "ops": list(WACV_OPS), "aggregations": list(AGGREGATION_NAMES),
                "templates": NUM_TEMPLATES, "blocks": NUM_BLOCKS,
                "template": "[op1, op2, aggregation] (indices into ops and aggregations)",
                "block": "[input1, input2, template, repeats - 1, log2(stride)]; inputs 0 and 1 are the encoder's "
                         "stride-4 and stride-8 features, 2 + j is block j's output",
                "encoder": "MobileNetV2 (the original's, with the t=1 expansion conv), features at strides 4 and 8"}

    def describe(self) -> str:
        lines = [f"nas-segm decoder ({self.space} space)"]
        if self.space == "cvpr":
            op0, *layers = self.config[0]
            lines.append(f"  cell: layer 0 {CVPR_OPS[op0]}(x); " + "; ".join(
                f"layer {k + 1} {CVPR_OPS[oa]}(f{pa}) + {CVPR_OPS[ob]}(f{pb})" for k, (pa, pb, oa, ob) in
                enumerate(layers)))
            lines += [f"  cell {b}: inputs {i1}, {i2}" for b, (i1, i2) in enumerate(self.config[1])]
            return "\n".join(lines)
        lines += [f"  template {t}: {WACV_OPS[a]} + {WACV_OPS[b]} -> {AGGREGATION_NAMES[g]}"
                  for t, (a, b, g) in enumerate(self.templates)]
        lines += [f"  block {j}: inputs {i1}, {i2}, template {t}, {r + 1} repeat(s), stride {2**s}"
                  for j, (i1, i2, t, r, s) in enumerate(self.structure)]
        return "\n".join(lines)

    @classmethod
    def from_json(cls, genotype: Any, search_space: Any, source: dict[str, Any], origin: str,
                  prefix: str = "") -> DecoderGenotype:
        def fail(name: str, expected: str) -> UserError:
            return UserError(f"{origin}: field '{prefix}{name}': {expected}")

        if not isinstance(genotype, dict):
            raise UserError(f"{origin}: field 'genotype': expected an object")
        if genotype.get("space") not in ("wacv", "cvpr"):
            raise fail("space", f"expected 'wacv' or 'cvpr', got {genotype.get('space')!r}")
        config = genotype.get("config")
        if genotype["space"] == "cvpr":
            return cls("cvpr", _parse_cvpr(config, fail), source)
        if not (isinstance(config, list) and len(config) == 2):
            raise fail("config", "expected [templates, structure]")
        templates, structure = config
        if not (isinstance(templates, list) and len(templates) == NUM_TEMPLATES):
            raise fail("config[0]", f"expected {NUM_TEMPLATES} templates")
        for t, template in enumerate(templates):
            if not _ints_below(template, (len(WACV_OPS), len(WACV_OPS), len(AGGREGATION_NAMES))):
                raise fail(f"config[0][{t}]", f"expected [op1, op2, aggregation] with ops in 0..{len(WACV_OPS) - 1} "
                                              f"and an aggregation in 0..{len(AGGREGATION_NAMES) - 1}")
        if not (isinstance(structure, list) and len(structure) == NUM_BLOCKS):
            raise fail("config[1]", f"expected {NUM_BLOCKS} blocks")
        for j, block in enumerate(structure):
            if not _ints_below(block, (2 + j, 2 + j, NUM_TEMPLATES, MAX_REPEATS, MAX_LOG_STRIDE + 1)):
                raise fail(f"config[1][{j}]",
                           f"expected [input1, input2, template, repeats - 1, log2 stride] with inputs in 0..{1 + j}, "
                           f"a template in 0..{NUM_TEMPLATES - 1}, repeats - 1 in 0..{MAX_REPEATS - 1} and log2 "
                           f"stride in 0..{MAX_LOG_STRIDE}")
        return cls("wacv", (tuple(tuple(t) for t in templates), tuple(tuple(b) for b in structure)), source)


def _parse_cvpr(config: Any, fail: Any) -> tuple:
    """``[cell, connections]`` of the CVPR space, checked field by field (positions as the CVPR-era controller
    samples them: layer k reads any of the 3k - 1 features before it)."""
    if not (isinstance(config, list) and len(config) == 2):
        raise fail("config", "expected [cell, connections]")
    cell, connections = config
    if not (isinstance(cell, list) and len(cell) == NUM_LAYERS and isinstance(cell[0], int)
            and 0 <= cell[0] < len(CVPR_OPS)):
        raise fail("config[0]", f"expected [op0, [pos_a, pos_b, op_a, op_b] x {NUM_LAYERS - 1}] with op0 in "
                                f"0..{len(CVPR_OPS) - 1}")
    for k, layer in enumerate(cell[1:], start=1):
        if not _ints_below(layer, (3 * k - 1, 3 * k - 1, len(CVPR_OPS), len(CVPR_OPS))):
            raise fail(f"config[0][{k}]", f"expected [pos_a, pos_b, op_a, op_b] with positions in 0..{3 * k - 2} "
                                          f"and ops in 0..{len(CVPR_OPS) - 1}")
    if not (isinstance(connections, list) and len(connections) == NUM_CELLS):
        raise fail("config[1]", f"expected {NUM_CELLS} [input1, input2] pairs")
    for b, pair in enumerate(connections):
        if not _ints_below(pair, (NUM_ENCODER_FEATURES + b,) * 2):
            raise fail(f"config[1][{b}]",
                       f"expected [input1, input2] with inputs in 0..{NUM_ENCODER_FEATURES + b - 1}")
    return (cell[0], *(tuple(layer) for layer in cell[1:])), tuple(tuple(pair) for pair in connections)


def _ints_below(value: Any, limits: tuple[int, ...]) -> bool:
    """Whether ``value`` is a list of ``len(limits)`` integers, each in 0..limit-1."""
    return (isinstance(value, list) and len(value) == len(limits)
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < n for v, n in zip(value, limits)))


def _as_lists(value: Any) -> Any:
    return [_as_lists(item) for item in value] if isinstance(value, (list, tuple)) else value


def released(name: str) -> DecoderGenotype:
    """A released architecture shipped with the project: ``wacv_arch0``, ``wacv_arch1`` (Cityscapes) or
    ``cvpr_arch0``, ``cvpr_arch1``, ``cvpr_arch2`` (PASCAL VOC)."""
    return load_architecture(RELEASED / f"nas_segm_{name}.json", expected=DecoderGenotype)
