"""The network-level search space: layers, levels, strides, sizes, transitions and the β layout.

The supernet, the decoder, the retrained network and the pictures all read the lattice from here.

Nodes are (layer, level). Level k has stride 4 * 2**k; the stem output is the node
(-1, 0) at stride 4. Level k exists at layer l when k <= l + 1 (layer 0 has strides 4 and 8,
layer 1 adds 16, layer 2 adds 32), so each level is reachable from the stem.

β layout (``betas`` is [num_layers, num_levels, 3]):

    betas[l, i, d] scores the transition from level i at layer l-1 (the stem for l = 0)
    into level i + DIRECTIONS[d] at layer l, with DIRECTIONS = (-1, 0, +1):
    d = 0 goes to the finer level (2s -> s, upsampling), d = 1 stays, d = 2 goes to the coarser
    level (s -> 2s, a stride-2 convolution).

A transition is valid when its source exists at layer l-1 (i <= l) and its target level is in
range. Paper Eq. 7: the outgoing weights of every source node sum to 1, so the normalisation is
a softmax over each source node's valid entries; invalid entries are exactly 0. (The public
implementation also scaled 2-way nodes by 2/3; the paper does not, and neither do we.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from modeling.autodeeplab.operations import half_size

DIRECTIONS: tuple[int, int, int] = (-1, 0, 1)
NUM_LAYERS = 12
NUM_LEVELS = 4
STEM_STRIDE = 4


def level_stride(level: int) -> int:
    """Stride of level ``level`` (the stem output is level 0, stride 4)."""
    return STEM_STRIDE * 2**level


def level_sizes(stride4_size: tuple[int, int], num_levels: int) -> list[tuple[int, int]]:
    """Spatial size of every level, from the stride-4 size by repeated ceil-halving (stride-2 steps)."""
    sizes = [stride4_size]
    for _ in range(num_levels - 1):
        h, w = sizes[-1]
        sizes.append((half_size(h), half_size(w)))
    return sizes


@dataclass(frozen=True)
class Transition:
    layer: int  # target layer l; the source is layer l-1 (the stem when l == 0)
    source_level: int
    target_level: int
    direction: int  # index into DIRECTIONS, the last axis of β


def level_exists(layer: int, level: int, num_levels: int = NUM_LEVELS) -> bool:
    """Whether node (layer, level) exists; layer -1 is the stem, at level 0 only."""
    return 0 <= level < num_levels and level <= layer + 1


def levels_at(layer: int, num_levels: int = NUM_LEVELS) -> list[int]:
    return [k for k in range(num_levels) if level_exists(layer, k, num_levels)]


def transition_table(num_layers: int = NUM_LAYERS, num_levels: int = NUM_LEVELS) -> list[Transition]:
    """Every valid edge of the network-level lattice, ordered by layer, then target, then source."""
    table = []
    for layer in range(num_layers):
        for target in levels_at(layer, num_levels):
            for d, step in enumerate(DIRECTIONS):
                source = target - step
                if level_exists(layer - 1, source, num_levels):
                    table.append(Transition(layer, source, target, d))
    return table


def valid_beta_mask(num_layers: int = NUM_LAYERS, num_levels: int = NUM_LEVELS) -> torch.Tensor:
    """Boolean [num_layers, num_levels, 3] mask of the β entries that name a real transition."""
    mask = torch.zeros(num_layers, num_levels, len(DIRECTIONS), dtype=torch.bool)
    for t in transition_table(num_layers, num_levels):
        mask[t.layer, t.source_level, t.direction] = True
    return mask


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """Architecture parameters and their softmax stay in full precision under mixed precision."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def normalize_betas(betas: torch.Tensor) -> torch.Tensor:
    """Softmax over each source node's valid outgoing entries (paper Eq. 7); invalid entries are 0.

    Computed in at least float32, so mixed precision never touches the architecture distribution.
    """
    num_layers, num_levels, _ = betas.shape
    mask = valid_beta_mask(num_layers, num_levels).to(betas.device)
    logits = at_least_float32(betas).masked_fill(~mask, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    # rows with no valid entry (sources that do not exist yet) are all -inf -> NaN; make them 0
    return torch.where(mask, probs, torch.zeros((), device=betas.device))
