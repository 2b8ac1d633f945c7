"""A panoptic architecture found by the Auto-PanopticNAS search (system ``autopanoptic``), as files hold it.

``genotype = {"backbone": [...], "head": [...], "inter": [...], "stage_repeats": [...]}``: one op index per
choice layer of the backbone (ShuffleNetV2/Xception blocks, stage by stage), of the heads (4 mask-head
layers, then the 3 layers of the shared semantic subnet) and of the inter-modular attention (4 things-to-
stuff layers for the semantic features at P2..P5, then 5 stuff-to-things layers for the FPN levels
P2..P6). ``stage_repeats`` says how the backbone's blocks fall into its 4 stages: the paper's [8, 8, 16, 8]
(40 blocks) or a scaled-down supernet's.

The original's own files (``COCO_3.8G``, ``ADE_3.8G``: a one-element JSON list holding the three lists, the
paper's 40 blocks, as its ``architecture/`` folder holds them) are read as well.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from modeling.architecture_file import load_architecture, register_genotype
from utils.errors import UserError

BACKBONE_OPS = ("shufflenet_3x3", "shufflenet_5x5", "shufflenet_7x7", "xception_3x3")
HEAD_OPS = ("dw_conv_3x3", "dw_conv_5x5", "deform_conv_3x3", "deform_conv_5x5", "atrous_conv_3x3", "atrous_conv_5x5")
# The paper names the third attention op "r16", but the original's code builds it with reduction 6: its
# search_space.py make_inter_layer reads the reduction as the last character of the name, "Inter-r16"[-1] == "6".
# The released networks were trained (and found) with 6, so 6 it is, under a name that says so.
INTER_OPS = ("se_r4", "se_r8", "se_r6")
INTER_REDUCTIONS = (4, 8, 6)
PAPER_INTER_NAMES = {"se_r6": "r16"}  # what the paper calls an op whose name here differs
MASK_LAYERS, SUBNET_LAYERS = 4, 3
THINGS_TO_STUFF, STUFF_TO_THINGS = 4, 5  # attention for the semantic features P2..P5 / the FPN levels P2..P6
PAPER_STAGE_REPEATS = (8, 8, 16, 8)
RELEASED = Path(__file__).resolve().parents[1] / "architectures"
RELEASED_FILES = {"COCO_3.8G": "autopanoptic_COCO_3.8G", "ADE_3.8G": "autopanoptic_ADE_3.8G"}


def layer_choices(stage_repeats: tuple[int, ...] = PAPER_STAGE_REPEATS) -> list[int]:
    """The number of ops of every choice layer, in path order (backbone, heads, attention): what a fair
    sampler and the greedy search iterate over."""
    return ([len(BACKBONE_OPS)] * sum(stage_repeats) + [len(HEAD_OPS)] * (MASK_LAYERS + SUBNET_LAYERS)
            + [len(INTER_OPS)] * (THINGS_TO_STUFF + STUFF_TO_THINGS))


@register_genotype
@dataclass(frozen=True)
class PanopticGenotype:
    system: ClassVar[str] = "autopanoptic"

    backbone: tuple[int, ...]
    head: tuple[int, ...]
    inter: tuple[int, ...]
    stage_repeats: tuple[int, ...] = PAPER_STAGE_REPEATS
    source: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def path(self) -> list[int]:
        """The op of every choice layer in path order (as ``layer_choices`` counts them)."""
        return [*self.backbone, *self.head, *self.inter]

    @classmethod
    def from_path(cls, path: list[int], stage_repeats: tuple[int, ...],
                  source: dict[str, Any] | None = None) -> PanopticGenotype:
        blocks, heads = sum(stage_repeats), MASK_LAYERS + SUBNET_LAYERS
        return cls(tuple(path[:blocks]), tuple(path[blocks:blocks + heads]), tuple(path[blocks + heads:]),
                   tuple(stage_repeats), source or {})

    @property
    def mask_head(self) -> tuple[int, ...]:
        return self.head[:MASK_LAYERS]

    @property
    def subnet(self) -> tuple[int, ...]:
        return self.head[MASK_LAYERS:]

    @property
    def things_to_stuff(self) -> tuple[int, ...]:
        return self.inter[:THINGS_TO_STUFF]

    @property
    def stuff_to_things(self) -> tuple[int, ...]:
        return self.inter[THINGS_TO_STUFF:]

    def genotype_json(self) -> dict[str, Any]:
        return {"backbone": list(self.backbone), "head": list(self.head), "inter": list(self.inter),
                "stage_repeats": list(self.stage_repeats)}

    def search_space_json(self) -> dict[str, Any]:
        return {"backbone_ops": list(BACKBONE_OPS), "head_ops": list(HEAD_OPS), "inter_ops": list(INTER_OPS),
                "backbone": "one op per block, stage by stage (stage_repeats blocks each; the first of a stage has "
                            "stride 2)",
                "head": f"{MASK_LAYERS} mask-head layers, then {SUBNET_LAYERS} layers of the semantic subnet shared "
                        "by P2..P5; each op is followed by GroupNorm(32) and ReLU",
                "inter": f"{THINGS_TO_STUFF} things-to-stuff attention layers (semantic features at P2..P5), then "
                         f"{STUFF_TO_THINGS} stuff-to-things layers (FPN levels P2..P6); SE reduction 4, 8 or 6 "
                         "(se_r6 is the paper's r16: the original's code builds it with reduction 6)"}

    def describe(self) -> str:
        lines = ["autopanoptic network"]
        start = 0
        for stage, repeats in enumerate(self.stage_repeats, start=1):
            ops = self.backbone[start:start + repeats]
            lines.append(f"  backbone stage {stage}: " + " ".join(_short_backbone(op) for op in ops))
            start += repeats
        lines.append("  mask head: " + ", ".join(HEAD_OPS[op] for op in self.mask_head))
        lines.append("  semantic subnet: " + ", ".join(HEAD_OPS[op] for op in self.subnet))
        lines.append("  things-to-stuff attention (P2..P5): " + ", ".join(map(_inter_name, self.things_to_stuff)))
        lines.append("  stuff-to-things attention (P2..P6): " + ", ".join(map(_inter_name, self.stuff_to_things)))
        return "\n".join(lines)

    @classmethod
    def from_json(cls, genotype: Any, search_space: Any, source: dict[str, Any], origin: str,
                  prefix: str = "") -> PanopticGenotype:
        def fail(name: str, expected: str) -> UserError:
            return UserError(f"{origin}: field '{prefix}{name}': {expected}")

        if not isinstance(genotype, dict):
            raise UserError(f"{origin}: field '{prefix.rstrip('.') or 'genotype'}': expected an object")
        repeats = genotype.get("stage_repeats", list(PAPER_STAGE_REPEATS))
        if not (isinstance(repeats, list) and len(repeats) == 4 and all(_is_int(r) and r >= 1 for r in repeats)):
            raise fail("stage_repeats", "expected 4 positive integers (blocks per backbone stage)")
        lengths = {"backbone": (sum(repeats), len(BACKBONE_OPS)),
                   "head": (MASK_LAYERS + SUBNET_LAYERS, len(HEAD_OPS)),
                   "inter": (THINGS_TO_STUFF + STUFF_TO_THINGS, len(INTER_OPS))}
        parsed = {}
        for name, (length, choices) in lengths.items():
            ops = genotype.get(name)
            if not (isinstance(ops, list) and len(ops) == length and all(_is_int(op) and 0 <= op < choices
                                                                         for op in ops)):
                raise fail(name, f"expected {length} integers in 0..{choices - 1}")
            parsed[name] = tuple(ops)
        return cls(parsed["backbone"], parsed["head"], parsed["inter"], tuple(repeats), source)

    @classmethod
    def from_original(cls, data: Any, origin: str) -> PanopticGenotype | None:
        """The genotype of one of the original's files (a one-element list of the three lists); None when
        ``data`` is not shaped like one."""
        if not (isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict)
                and set(data[0]) == {"backbone", "head", "inter"}):
            return None
        return cls.from_json(data[0], None, {"origin": f"Auto-Panoptic architecture file {Path(origin).name}"},
                             origin, "[0].")

    def original_json(self) -> str:
        """The original's file format (what its ``train_net.py --build-model`` reads)."""
        return (f'[{{"backbone": [{",".join(map(str, self.backbone))}], "head": [{",".join(map(str, self.head))}], '
                f'"inter":[{",".join(map(str, self.inter))}]}}]')


def _inter_name(op: int) -> str:
    """The attention op's name, with the paper's where it differs."""
    name = INTER_OPS[op]
    return f"{name} (the paper's {PAPER_INTER_NAMES[name]})" if name in PAPER_INTER_NAMES else name


def _short_backbone(op: int) -> str:
    name = BACKBONE_OPS[op]
    return ("X" if name.startswith("xception") else "S") + name[-1]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def released(name: str) -> PanopticGenotype:
    """An architecture the original released, shipped in its own file format: ``COCO_3.8G`` or ``ADE_3.8G``."""
    if name not in RELEASED_FILES:
        raise UserError(f"{name}: not a released Auto-Panoptic architecture (expected one of {sorted(RELEASED_FILES)})")
    return load_architecture(RELEASED / RELEASED_FILES[name], expected=PanopticGenotype)
