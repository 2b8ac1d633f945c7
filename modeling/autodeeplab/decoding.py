"""Decoding α and β into a discrete architecture (paper Sec. 4.3).

* Network path: the classic Viterbi algorithm over the normalised β, read as transition
  probabilities: the most probable path from the stem (level 0) to any node of the last layer.
  Computed with log-probabilities.
* Cell: for every block keep the two incoming edges whose strongest non-`none` op weighs most, each
  with that op. `none` is never chosen (the public implementation's decoder could pick it).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from modeling.autodeeplab.genotype import PRIMITIVES, Architecture, CellGenotype, edge_index, num_edges
from modeling.autodeeplab.search_space import levels_at, normalize_betas, transition_table


def viterbi_path(normalized_betas: torch.Tensor) -> list[int]:
    """Most probable sequence of levels, one per layer, under the normalised β."""
    num_layers, num_levels, _ = normalized_betas.shape
    probs = normalized_betas.detach().double().cpu()
    score = {0: 0.0}  # log-probability of the best path into each level of the previous layer
    back: list[dict[int, int]] = []
    table = transition_table(num_layers, num_levels)
    for layer in range(num_layers):
        best: dict[int, tuple[float, int]] = {}
        for t in (t for t in table if t.layer == layer):
            p = probs[layer, t.source_level, t.direction].item()
            candidate = score[t.source_level] + (math.log(p) if p > 0 else -math.inf)
            if t.target_level not in best or candidate > best[t.target_level][0]:
                best[t.target_level] = (candidate, t.source_level)
        score = {level: value for level, (value, _) in best.items()}
        back.append({level: source for level, (_, source) in best.items()})
    level = max(levels_at(num_layers - 1, num_levels), key=lambda k: score[k])
    path = [level]
    for layer in range(num_layers - 1, 0, -1):
        level = back[layer][level]
        path.append(level)
    return path[::-1]


def decode_cell(alphas: torch.Tensor, steps: int) -> CellGenotype:
    """Top-2 incoming edges per block by their strongest non-`none` op, each with that op."""
    if alphas.shape != (num_edges(steps), len(PRIMITIVES)):
        raise ValueError(f"alphas must be [{num_edges(steps)}, {len(PRIMITIVES)}], got {list(alphas.shape)}")
    return strongest_edges(torch.softmax(alphas.detach().double().cpu(), dim=-1), steps)


def strongest_edges(alpha_probs: torch.Tensor, steps: int) -> CellGenotype:
    """The decoding rule on softmaxed α [edges, ops]: per block, the two inputs whose best non-`none` op
    weighs most, each with that op (ties go to the lower input)."""
    probs = torch.as_tensor(alpha_probs, dtype=torch.float64)[:, 1:]  # drop "none"
    cell = []
    for block in range(steps):
        candidates = []
        for cell_input in range(2 + block):
            strength, op = probs[edge_index(block, cell_input)].max(dim=0)
            candidates.append((-strength.item(), cell_input, PRIMITIVES[1 + op.item()]))
        kept = sorted(candidates)[:2]
        cell.append(tuple(sorted((cell_input, op) for _, cell_input, op in kept)))
    return tuple(cell)


def decode_architecture(alphas: torch.Tensor, betas: torch.Tensor, filter_multiplier: int,
                        block_multiplier: int, source: dict[str, Any] | None = None) -> Architecture:
    """The discrete architecture that α and β (raw, as stored in the supernet) describe."""
    return Architecture(
        network_path=tuple(viterbi_path(normalize_betas(betas))),
        cell=decode_cell(alphas, steps=_steps_for(alphas.shape[0])),
        filter_multiplier=filter_multiplier,
        block_multiplier=block_multiplier,
        num_levels=betas.shape[1],
        source=source or {},
    )


def _steps_for(edges: int) -> int:
    steps = 1
    while num_edges(steps) < edges:
        steps += 1
    if num_edges(steps) != edges:
        raise ValueError(f"{edges} α rows do not match any number of blocks")
    return steps
