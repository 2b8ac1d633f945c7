"""The searched Auto-DeepLab architecture: candidate ops, the cell genotype and the network path.

Its file is ``architecture.json`` (``modeling.architecture_file``), system ``autodeeplab``.

Conventions used everywhere in the project:

* A cell has ``steps`` blocks. Block ``b`` (0-based) reads from inputs ``0 .. b+1`` where
  input 0 is H^{l-2} (the cell two layers back), input 1 is H^{l-1} (the previous cell) and
  input ``2 + i`` is the output of block ``i`` of the same cell.
* The α rows ("edges") are numbered block by block: block 0 owns edges 0-1, block 1 edges 2-4,
  block 2 edges 5-8, and so on; ``edge_index(block, input)`` is the one place that says so.
* The network path gives the level of each layer's cell; level ``k`` has stride ``4 * 2**k``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from modeling.architecture_file import (architecture_from_json, architecture_to_json, load_architecture,
                                        register_genotype, save_architecture)
from modeling.autodeeplab.search_space import NUM_LEVELS, level_stride
from utils.errors import UserError

PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)
PAPER_ARCHITECTURE_PATH = Path(__file__).resolve().parents[1] / "architectures" / "autodeeplab_paper.json"

CellGenotype = tuple[tuple[tuple[int, str], ...], ...]


def num_edges(steps: int) -> int:
    """Number of α rows for a cell of ``steps`` blocks (20 for the paper's B=5)."""
    return sum(2 + b for b in range(steps))


def edge_index(block: int, cell_input: int) -> int:
    """α row of the edge from ``cell_input`` into ``block``."""
    if not 0 <= cell_input < 2 + block:
        raise ValueError(f"block {block} has inputs 0..{block + 1}, got {cell_input}")
    return sum(2 + b for b in range(block)) + cell_input


def blocks_reading(cell_input: int, steps: int) -> range:
    """The blocks that have an edge from ``cell_input`` (block b reads inputs 0..b+1)."""
    return range(max(cell_input - 1, 0), steps)


@register_genotype
@dataclass(frozen=True)
class Architecture:
    """A decoded Auto-DeepLab architecture: one cell genotype shared by all layers, and the network path."""

    system: ClassVar[str] = "autodeeplab"

    network_path: tuple[int, ...]
    cell: CellGenotype
    filter_multiplier: int
    block_multiplier: int
    num_levels: int = NUM_LEVELS
    source: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def num_layers(self) -> int:
        return len(self.network_path)

    @property
    def steps(self) -> int:
        return len(self.cell)

    def genotype_json(self) -> dict[str, Any]:
        return {
            "network_path": list(self.network_path),
            "network_strides": [level_stride(k) for k in self.network_path],
            "cell": [[[cell_input, op] for cell_input, op in block] for block in self.cell],
            "filter_multiplier": self.filter_multiplier,
            "block_multiplier": self.block_multiplier,
        }

    def search_space_json(self) -> dict[str, Any]:
        return {
            "primitives": list(PRIMITIVES),
            "num_layers": self.num_layers,
            "num_levels": self.num_levels,
            "strides": [level_stride(k) for k in range(self.num_levels)],
            "steps": self.steps,
            "network_path": "level of the cell at each layer; stride = 4 * 2**level",
            "cell_inputs": "0 = H^{l-2} (cell two layers back), 1 = H^{l-1} (previous cell), "
            "2+i = output of block i of the same cell (0-based)",
            "cell_output": "concatenation of the last block_multiplier block outputs",
        }

    def to_json_dict(self) -> dict[str, Any]:
        """The whole architecture file (``modeling.architecture_file``, format version 2)."""
        return architecture_to_json(self)

    def describe(self) -> str:
        lines = [f"network path (levels): {list(self.network_path)}",
                 f"network path (strides): {[level_stride(k) for k in self.network_path]}",
                 "cell (inputs: 0 = H^{l-2}, 1 = H^{l-1}, 2+i = block i):"]
        lines += [f"  block {b}: " + " + ".join(f"{op}(input {i})" for i, op in block)
                  for b, block in enumerate(self.cell)]
        return "\n".join(lines)

    def save(self, path: str | Path) -> None:
        save_architecture(self, path)

    @classmethod
    def from_json_dict(cls, data: Any, origin: str = "architecture") -> Architecture:
        """An Auto-DeepLab architecture from a whole architecture file's JSON (version 1 or 2)."""
        arch = architecture_from_json(data, origin)
        if not isinstance(arch, cls):
            raise UserError(f"{origin}: is a {arch.system} architecture, expected an Auto-DeepLab one")
        return arch

    @classmethod
    def load(cls, path: str | Path) -> Architecture:
        """Read an ``architecture.json`` file, or the one inside a run directory."""
        return load_architecture(path, expected=cls)

    @classmethod
    def from_json(cls, genotype: Any, search_space: Any, source: dict[str, Any], origin: str,
                  prefix: str = "") -> Architecture:
        return _parse_architecture(genotype, search_space, source, origin, prefix)


def paper_architecture(filter_multiplier: int = 20) -> Architecture:
    """The architecture found in the paper (Fig. 3), as shipped in the repository."""
    arch = Architecture.load(PAPER_ARCHITECTURE_PATH)
    return Architecture(arch.network_path, arch.cell, filter_multiplier, arch.block_multiplier,
                        arch.num_levels, arch.source)


def _parse_architecture(data: Any, space: Any, source: dict[str, Any], origin: str, prefix: str) -> Architecture:
    def fail(field_name: str, expected: str) -> UserError:
        if not field_name.startswith("search_space"):
            field_name = prefix + field_name
        return UserError(f"{origin}: field '{field_name}': {expected}")

    if not isinstance(data, dict):
        raise UserError(f"{origin}: field 'genotype': expected an object")
    if not isinstance(space, dict):
        raise fail("search_space", "expected an object describing the search space")
    if space.get("primitives") != list(PRIMITIVES):
        raise fail("search_space.primitives", f"expected {list(PRIMITIVES)}")
    num_levels = space.get("num_levels", NUM_LEVELS)
    if not isinstance(num_levels, int) or not 1 <= num_levels <= NUM_LEVELS:
        raise fail("search_space.num_levels", f"expected an integer in 1..{NUM_LEVELS}, got {num_levels!r}")

    path = data.get("network_path")
    if not isinstance(path, list) or not path or not all(isinstance(k, int) for k in path):
        raise fail("network_path", "expected a non-empty list of integer levels")
    if space.get("num_layers", len(path)) != len(path):
        raise fail("network_path", f"has {len(path)} layers but search_space.num_layers is "
                                   f"{space.get('num_layers')}")
    previous = 0  # the stem output is at level 0 (stride 4)
    for layer, level in enumerate(path):
        if not 0 <= level < num_levels:
            raise fail(f"network_path[{layer}]", f"level must be in 0..{num_levels - 1}, got {level}")
        if abs(level - previous) > 1:
            raise fail(f"network_path[{layer}]", f"level {level} follows level {previous}; "
                                                 "a path moves at most one level per layer")
        previous = level
    strides = data.get("network_strides")  # written for readers; an edited copy must not disagree in silence
    if strides is not None and strides != [level_stride(k) for k in path]:
        raise fail("network_strides", f"expected {[level_stride(k) for k in path]} (4 * 2**level of network_path), "
                                      f"got {strides!r}; edit network_path to change the path")

    cell_data = data.get("cell")
    if not isinstance(cell_data, list) or not cell_data:
        raise fail("cell", "expected a list of blocks, each a list of [input, op] pairs")
    if space.get("steps", len(cell_data)) != len(cell_data):
        raise fail("cell", f"has {len(cell_data)} blocks but search_space.steps is {space.get('steps')}")
    cell = []
    for block, pairs in enumerate(cell_data):
        if not isinstance(pairs, list) or len(pairs) != 2:
            raise fail(f"cell[{block}]", "expected exactly two [input, op] pairs")
        parsed = []
        for j, pair in enumerate(pairs):
            name = f"cell[{block}][{j}]"
            if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], int)
                    and isinstance(pair[1], str)):
                raise fail(name, "expected an [input, op] pair such as [1, \"sep_conv_3x3\"]")
            cell_input, op = pair
            if not 0 <= cell_input < 2 + block:
                raise fail(name, f"block {block} can read inputs 0..{block + 1}, got {cell_input}")
            if op not in PRIMITIVES or op == "none":
                raise fail(name, f"op must be one of {list(PRIMITIVES[1:])}, got {op!r}")
            parsed.append((cell_input, op))
        if parsed[0][0] == parsed[1][0]:
            raise fail(f"cell[{block}]", "the two pairs must read different inputs")
        cell.append(tuple(parsed))

    fm = data.get("filter_multiplier")
    if not isinstance(fm, int) or fm < 1:
        raise fail("filter_multiplier", f"expected a positive integer, got {fm!r}")
    bm = data.get("block_multiplier")
    if not isinstance(bm, int) or not 1 <= bm <= len(cell):
        raise fail("block_multiplier", f"expected an integer in 1..{len(cell)}, got {bm!r}")
    return Architecture(tuple(path), tuple(cell), fm, bm, num_levels, source)
