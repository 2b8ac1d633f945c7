"""A decoder found by the RL decoder search (system ``nas-segm``), as its ``architecture.json`` holds it.

``genotype = {"space": "wacv", "config": [templates, structure]}`` with the original's config lists (see
``template_decoder``). Only the WACV space is built so far; a CVPR-space file is refused in one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from modeling.architecture_file import load_architecture, register_genotype
from modeling.nas_segm.ops import AGGREGATIONS, WACV_OPS
from modeling.nas_segm.template_decoder import NUM_BLOCKS
from utils.errors import UserError

NUM_TEMPLATES = 3
MAX_REPEATS, MAX_LOG_STRIDE = 4, 1  # a block repeats its template 1..4 times, at stride 1 or 2
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
        return {"space": self.space, "config": [[list(t) for t in self.templates], [list(b) for b in self.structure]]}

    def search_space_json(self) -> dict[str, Any]:
        return {"space": self.space, "ops": list(WACV_OPS), "aggregations": list(AGGREGATION_NAMES),
                "templates": NUM_TEMPLATES, "blocks": NUM_BLOCKS,
                "template": "[op1, op2, aggregation] (indices into ops and aggregations)",
                "block": "[input1, input2, template, repeats - 1, log2(stride)]; inputs 0 and 1 are the encoder's "
                         "stride-4 and stride-8 features, 2 + j is block j's output",
                "encoder": "MobileNetV2 (the original's, with the t=1 expansion conv), features at strides 4 and 8"}

    def describe(self) -> str:
        lines = [f"nas-segm decoder ({self.space} space)"]
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
        if genotype.get("space") != "wacv":
            raise fail("space", f"expected 'wacv' (the only decoder space built so far), got {genotype.get('space')!r}")
        config = genotype.get("config")
        if not (isinstance(config, list) and len(config) == 2):
            raise fail("config", "expected [templates, structure]")
        templates, structure = config
        if not (isinstance(templates, list) and len(templates) == NUM_TEMPLATES):
            raise fail("config[0]", f"expected {NUM_TEMPLATES} templates")
        for t, template in enumerate(templates):
            ranges = (len(WACV_OPS), len(WACV_OPS), len(AGGREGATION_NAMES))
            if not (isinstance(template, list) and len(template) == 3
                    and all(isinstance(v, int) and 0 <= v < n for v, n in zip(template, ranges))):
                raise fail(f"config[0][{t}]", f"expected [op1, op2, aggregation] with ops in 0..{len(WACV_OPS) - 1} "
                                              f"and an aggregation in 0..{len(AGGREGATION_NAMES) - 1}")
        if not (isinstance(structure, list) and len(structure) == NUM_BLOCKS):
            raise fail("config[1]", f"expected {NUM_BLOCKS} blocks")
        for j, block in enumerate(structure):
            ranges = (2 + j, 2 + j, NUM_TEMPLATES, MAX_REPEATS, MAX_LOG_STRIDE + 1)
            if not (isinstance(block, list) and len(block) == 5
                    and all(isinstance(v, int) and 0 <= v < n for v, n in zip(block, ranges))):
                raise fail(f"config[1][{j}]", f"expected [input1, input2, template, repeats - 1, log2 stride] with "
                                              f"inputs in 0..{1 + j}, a template in 0..{NUM_TEMPLATES - 1}, repeats - 1 "
                                              f"in 0..{MAX_REPEATS - 1} and log2 stride in 0..{MAX_LOG_STRIDE}")
        return cls("wacv", (tuple(tuple(t) for t in templates), tuple(tuple(b) for b in structure)), source)


def released(name: str) -> DecoderGenotype:
    """A released architecture shipped with the project: ``wacv_arch0`` or ``wacv_arch1`` (Cityscapes)."""
    return load_architecture(RELEASED / f"nas_segm_{name}.json", expected=DecoderGenotype)
