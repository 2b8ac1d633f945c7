"""Random architectures of the Auto-DeepLab space (Liu et al., CVPR 2019, Sec. 4), the random-search baseline.

Sciuto et al. (ICLR 2020) judge a search strategy against architectures drawn uniformly from its space, and
Li & Talwalkar (UAI 2019) show random search to be a strong baseline; both need the draw to be uniform. Drawing
each layer's move uniformly among the moves allowed there is not: a path then has probability
prod(1 / number of moves) over its nodes, so paths along the borders of the lattice (level 0 and the coarsest
level allow two moves, the others three) are over-sampled. So the network path is drawn uniformly over all
valid paths, by counting each node's completions (dynamic programming) and sampling forward proportionally
to them. The cell is drawn uniformly over the cells decoding can produce: per block, two distinct inputs and
a non-``none`` op for each.

All randomness comes from one ``numpy.random.Generator``; ``random_architecture`` seeds it, so a seed
names an architecture.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from modeling.autodeeplab.genotype import PRIMITIVES, Architecture, CellGenotype
from modeling.autodeeplab.search_space import NUM_LAYERS, NUM_LEVELS, Transition, levels_at, transition_table

CELL_OPS: tuple[str, ...] = tuple(op for op in PRIMITIVES if op != "none")


def _completions(num_layers: int, num_levels: int) -> tuple[dict[tuple[int, int], int],
                                                             dict[tuple[int, int], list[Transition]]]:
    """Number of ways to finish a path from each node (layer, level), the stem being (-1, 0), and the
    lattice's transitions grouped by their source node."""
    outgoing: dict[tuple[int, int], list[Transition]] = defaultdict(list)
    for t in transition_table(num_layers, num_levels):
        outgoing[(t.layer - 1, t.source_level)].append(t)
    completions = {(num_layers - 1, level): 1 for level in levels_at(num_layers - 1, num_levels)}
    for layer in range(num_layers - 2, -2, -1):
        for level in levels_at(layer, num_levels):
            completions[(layer, level)] = sum(completions[(t.layer, t.target_level)]
                                              for t in outgoing[(layer, level)])
    return completions, outgoing


def count_paths(num_layers: int, num_levels: int = NUM_LEVELS) -> int:
    """Number of network paths from the stem (level 0) through ``num_layers`` layers, each moving at most one
    level, by the transitions the supernet has (``search_space.transition_table``)."""
    completions, _ = _completions(num_layers, num_levels)
    return completions[(-1, 0)]


def random_network_path(rng: np.random.Generator, num_layers: int = NUM_LAYERS,
                        num_levels: int = NUM_LEVELS) -> tuple[int, ...]:
    """A network path drawn uniformly over all ``count_paths(num_layers, num_levels)`` valid paths: each
    move is chosen with probability proportional to the number of paths that complete it."""
    completions, outgoing = _completions(num_layers, num_levels)
    path, level = [], 0
    for layer in range(num_layers):
        moves = outgoing[(layer - 1, level)]
        draw = int(rng.integers(completions[(layer - 1, level)]))
        for t in moves:
            draw -= completions[(layer, t.target_level)]
            if draw < 0:
                level = t.target_level
                break
        path.append(level)
    return tuple(path)


def random_cell(rng: np.random.Generator, steps: int) -> CellGenotype:
    """A cell drawn uniformly over the cells decoding can produce: block ``b`` reads an unordered pair of
    distinct inputs, uniform over the C(b+2, 2) pairs of 0..b+1, with an op uniform over the non-``none``
    ops for each input, independently. Pairs are sorted by input, as ``decoding.strongest_edges`` writes them."""
    cell = []
    for block in range(steps):
        inputs = rng.choice(2 + block, size=2, replace=False)
        cell.append(tuple(sorted((int(cell_input), CELL_OPS[rng.integers(len(CELL_OPS))]) for cell_input in inputs)))
    return tuple(cell)


def random_architecture(seed: int, num_layers: int = NUM_LAYERS, num_levels: int = NUM_LEVELS, steps: int = 5,
                        filter_multiplier: int = 8, block_multiplier: int = 5) -> Architecture:
    """The architecture that ``seed`` names: a uniform network path, then a uniform cell, from one generator.
    The defaults are those of the supernet (``AutoDeepLabSearch``)."""
    rng = np.random.default_rng(seed)
    path = random_network_path(rng, num_layers, num_levels)
    return Architecture(path, random_cell(rng, steps), filter_multiplier, block_multiplier, num_levels,
                        source={"strategy": "random", "seed": seed, "distribution": "uniform",
                                "network_paths": count_paths(num_layers, num_levels)})
