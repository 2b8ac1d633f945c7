"""The Auto-DeepLab supernet: a cell per (layer, level) node, mixed by α (cell) and β (network).

Paper Eq. 6: the state of node (l, s) is the β-weighted sum, over the incoming transitions, of the
shared cell applied to (H^{l-1} from the source level, H^{l-2} at level s). H^{l-1} is brought to
level s by a stride-2 convolution (from s/2), a 1x1 convolution (same level) or bilinear
upsampling followed by a 1x1 convolution (from 2s). The ops on the edges from H^{l-2} see the same
input for every direction, so they are computed once per node; the rest of the cell runs once
per incoming direction, which is exactly the paper's sum of cells. The directions run together,
stacked along the batch dimension (fewer, larger convolutions), with BatchNorm statistics kept
separate per direction, so the result equals running the cell once per direction. All edges that
leave one cell state are computed together (``modeling.autodeeplab.fused_edges``).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from modeling.autodeeplab.fused_edges import EdgeFanOut
from modeling.autodeeplab.genotype import PRIMITIVES, Architecture, blocks_reading, edge_index, num_edges
from modeling.heads import ASPP, aspp_rates
from modeling.autodeeplab.operations import ReLUConvBN, Stem
from modeling.autodeeplab.search_space import (DIRECTIONS, NUM_LAYERS, NUM_LEVELS, at_least_float32, level_exists,
                                               level_sizes, level_stride, levels_at, normalize_betas,
                                               transition_table, valid_beta_mask)

def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave ``groups`` equal channel groups (ShuffleNet), so that the next partial-channel edge
    processes other channels than this one did."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def one_hot_weights(architecture: Architecture, num_layers: int, num_levels: int,
                    steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(α weights [edges, ops], normalised β [layers, levels, 3]) that make the supernet compute one architecture
    (paper Sec. 4 with the relaxation undone): each chosen edge's row is one-hot on its op, the rows of edges the
    cell does not use are zero (as if their op were ``none``), and β is 1 on the path's transitions, 0 elsewhere.
    The supernet's view of an architecture is how one-shot methods rank architectures (Sciuto et al., ICLR 2020)."""
    if (architecture.num_layers, architecture.num_levels, architecture.steps) != (num_layers, num_levels, steps):
        raise ValueError(f"architecture has {architecture.num_layers} layers, {architecture.num_levels} levels and "
                         f"{architecture.steps} blocks; the supernet {num_layers}, {num_levels} and {steps}")
    alpha_weights = torch.zeros(num_edges(steps), len(PRIMITIVES))
    for block, pairs in enumerate(architecture.cell):
        for cell_input, op in pairs:
            if op not in PRIMITIVES[1:]:
                raise ValueError(f"block {block}: op must be one of {list(PRIMITIVES[1:])}, got {op!r}")
            alpha_weights[edge_index(block, cell_input), PRIMITIVES.index(op)] = 1.0
    normalized_betas = torch.zeros(num_layers, num_levels, len(DIRECTIONS))
    valid = valid_beta_mask(num_layers, num_levels)
    previous = 0  # the stem
    for layer, level in enumerate(architecture.network_path):
        step = level - previous
        if step not in DIRECTIONS or not valid[layer, previous, DIRECTIONS.index(step)]:
            raise ValueError(f"network path {list(architecture.network_path)}: no transition from level {previous} "
                             f"to level {level} into layer {layer}")
        normalized_betas[layer, previous, DIRECTIONS.index(step)] = 1.0
        previous = level
    return alpha_weights, normalized_betas


class SearchCell(nn.Module):
    """The shared cell of node (layer, level), with one input projection per incoming direction."""

    def __init__(self, layer: int, level: int, filter_multiplier: int, block_multiplier: int, steps: int,
                 num_levels: int, prev_prev_channels: int | None, partial_channels: int = 1):
        super().__init__()
        self.channels = filter_multiplier * 2**level
        self.steps = steps
        self.block_multiplier = block_multiplier
        c = self.channels

        def out_channels(source_level: int) -> int:
            return block_multiplier * filter_multiplier * 2**source_level

        self.preprocess = nn.ModuleDict()
        for d, step in enumerate(DIRECTIONS):
            source = level - step
            if not level_exists(layer - 1, source, num_levels):
                continue
            if step == 1:  # from the finer level: stride-2 convolution
                self.preprocess[str(d)] = ReLUConvBN(out_channels(source), c, 3, stride=2, affine=False)
            else:  # same level, or from the coarser level after bilinear upsampling
                self.preprocess[str(d)] = ReLUConvBN(out_channels(source), c, 1, affine=False)
        self.preprocess_prev_prev = (ReLUConvBN(prev_prev_channels, c, 1, affine=False)
                                     if prev_prev_channels is not None else None)
        self.partial_channels = partial_channels
        # one fan-out per cell input j (0 = H^{l-2}, 1 = H^{l-1}, 2+b = block b) with edges leaving it
        first_input = 0 if prev_prev_channels is not None else 1
        directions = len(self.preprocess)  # states after H^{l-1} stack all directions along the batch
        self.fan_outs = nn.ModuleDict({
            str(j): EdgeFanOut(c // partial_channels, len(blocks_reading(j, steps)), groups=1 if j == 0 else directions)
            for j in range(first_input, steps + 1)
        })

    def mixed_ops(self, j: int, state: torch.Tensor, alpha_weights: torch.Tensor) -> list[torch.Tensor]:
        """The mixed-op outputs of the edges leaving input j, one [groups, n, C, H, W] tensor per target block."""
        rows = [edge_index(b, j) for b in blocks_reading(j, self.steps)]
        fan_out = self.fan_outs[str(j)]
        k = self.partial_channels
        if k == 1:
            return list(fan_out(state, alpha_weights[rows]))
        searched_channels = state.shape[1] // k
        bypass = state[:, searched_channels:]
        outputs = []
        for edge in fan_out(state[:, :searched_channels].contiguous(), alpha_weights[rows]):
            mixed = torch.cat([edge.flatten(0, 1), bypass], dim=1)  # the edge's groups stacked like the state's
            outputs.append(channel_shuffle(mixed, k).view(*edge.shape[:2], *state.shape[1:]))
        return outputs

    def forward(self, prev_prev: torch.Tensor | None, inputs: list[tuple[torch.Tensor, torch.Tensor, int]],
                alpha_weights: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``inputs`` holds (H^{l-1} from a source level, its normalised β, direction index)."""
        blocks: list = [0] * self.steps  # running sums, [directions (or 1 for H^{l-2} terms), n, C, H, W]
        if self.preprocess_prev_prev is not None:
            if prev_prev.shape[-2:] != size:  # only the stem's stride-2 feature, for layer 0
                prev_prev = F.interpolate(prev_prev, size=size, mode="bilinear", align_corners=False)
            blocks = self.mixed_ops(0, self.preprocess_prev_prev(prev_prev), alpha_weights)  # shared by directions
        projected = []
        for s1, _, d in inputs:
            if DIRECTIONS[d] == -1:
                s1 = F.interpolate(s1, size=size, mode="bilinear", align_corners=False)
            projected.append(self.preprocess[str(d)](s1))
        state = torch.cat(projected, dim=0)  # directions stacked along the batch
        for j in range(1, self.steps + 1):
            if j >= 2:  # block j-2 has all its inputs now
                state = blocks[j - 2].flatten(0, 1)
            for b, out in zip(blocks_reading(j, self.steps), self.mixed_ops(j, state, alpha_weights)):
                blocks[b] = blocks[b] + out
        stacked = torch.cat(blocks[-self.block_multiplier:], dim=2)
        betas = torch.stack([beta for _, beta, _ in inputs]).to(stacked.dtype)
        return (betas.view(-1, 1, 1, 1, 1) * stacked).sum(dim=0)


class SearchHead(nn.Sequential):
    """ASPP with one atrous rate of 96/stride, then a 1x1 classifier (one head per level)."""

    def __init__(self, channels: int, stride: int, num_classes: int):
        super().__init__(ASPP(channels, channels, aspp_rates(stride, 1)), nn.Conv2d(channels, num_classes, 1))


@contextlib.contextmanager
def _frozen_batchnorm_statistics(module: nn.Module) -> Iterator[None]:
    """While a checkpointed cell recomputes its forward for backward, leave BatchNorm running statistics
    (and counters) as they are: the first forward already updated them once."""
    norms = [m for m in module.modules() if isinstance(m, (_BatchNorm, EdgeFanOut))]  # SyncBatchNorm included
    momenta = [m.momentum for m in norms]
    counters = [(m.num_batches_tracked, m.num_batches_tracked.clone()) for m in norms
                if isinstance(m, _BatchNorm)]
    for m in norms:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch statistic
    try:
        yield
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        for counter, value in counters:
            counter.copy_(value)


class AutoDeepLabSearch(nn.Module):
    """The supernet of the hierarchical search space (paper Sec. 4), with α and β as parameters.

    ``checkpoint_cells`` trades compute for memory: in training, each cell keeps only its inputs and
    recomputes its internals during backward (``torch.utils.checkpoint``). Outputs, gradients and
    BatchNorm statistics are exactly those of the plain network. ``partial_channels`` K (PC-DARTS)
    searches each edge on 1/K of the channels: less memory and compute, a different (approximate)
    supernet; edge normalisation, PC-DARTS's second part, is not included.
    """

    def __init__(self, num_classes: int, num_layers: int = NUM_LAYERS, num_levels: int = NUM_LEVELS,
                 filter_multiplier: int = 8, block_multiplier: int = 5, steps: int = 5,
                 checkpoint_cells: bool = False, partial_channels: int = 1):
        super().__init__()
        if partial_channels < 1 or filter_multiplier % partial_channels:
            raise ValueError(f"partial_channels must divide filter_multiplier ({filter_multiplier}), "
                             f"got {partial_channels}")
        self.checkpoint_cells = checkpoint_cells
        if not 1 <= block_multiplier <= steps:
            raise ValueError(f"block_multiplier must be in 1..steps ({steps}), got {block_multiplier}")
        self.num_layers, self.num_levels = num_layers, num_levels
        self.filter_multiplier, self.block_multiplier, self.steps = filter_multiplier, block_multiplier, steps
        stem_width = block_multiplier * filter_multiplier
        self.stem = Stem((stem_width // 2, stem_width // 2, stem_width))

        self.incoming: dict[tuple[int, int], list] = defaultdict(list)
        for t in transition_table(num_layers, num_levels):
            self.incoming[(t.layer, t.target_level)].append(t)

        self.cells = nn.ModuleList()
        for layer in range(num_layers):
            row = nn.ModuleDict()
            for level in levels_at(layer, num_levels):
                if layer == 0 and level == 0:
                    prev_prev_channels = self.stem.out_channels[0]
                elif level_exists(layer - 2, level, num_levels):
                    prev_prev_channels = stem_width * 2**level
                else:
                    prev_prev_channels = None  # the level first appears at layer-1: no H^{l-2}
                row[str(level)] = SearchCell(layer, level, filter_multiplier, block_multiplier, steps,
                                             num_levels, prev_prev_channels, partial_channels)
            self.cells.append(row)
        self.heads = nn.ModuleDict({
            str(level): SearchHead(stem_width * 2**level, level_stride(level), num_classes)
            for level in levels_at(num_layers - 1, num_levels)
        })
        self.alphas = nn.Parameter(1e-3 * torch.randn(num_edges(steps), len(PRIMITIVES)))
        self.betas = nn.Parameter(1e-3 * torch.randn(num_layers, num_levels, len(DIRECTIONS)))

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alphas, self.betas]

    def _run_cell(self, cell: SearchCell, *args: object) -> torch.Tensor:
        if not (self.checkpoint_cells and self.training and torch.is_grad_enabled()):
            return cell(*args)
        return torch.utils.checkpoint.checkpoint(
            cell, *args, use_reentrant=False,
            context_fn=lambda: (contextlib.nullcontext(), _frozen_batchnorm_statistics(cell)))

    def synchronize_batchnorm(self) -> None:
        """BatchNorm statistics over all processes (several GPUs): torch's SyncBatchNorm for the plain
        layers (CUDA only), the fused edges' own exchange for theirs, which keeps directions apart."""
        nn.SyncBatchNorm.convert_sync_batchnorm(self)
        for module in self.modules():
            if isinstance(module, EdgeFanOut):
                module.synchronize = True

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if name not in ("alphas", "betas")]

    def forward(self, x: torch.Tensor, architecture: Architecture | None = None) -> torch.Tensor:
        """The supernet's output; with ``architecture``, that of the one architecture within it: α and β
        fixed by ``one_hot_weights``, and only the head of the path's last level. The cells off the path are
        not run: every β into them is 0, so their states are exactly zero. A cell reads H^{l-2} from its own
        level (Eq. 6); where the path was at another level two layers back, that input is such a zero state."""
        early, stem_out = self.stem(x)
        sizes = level_sizes(tuple(stem_out.shape[-2:]), self.num_levels)
        heads = self.heads
        if architecture is None:
            with torch.autocast(self.alphas.device.type, enabled=False):  # the distribution stays float32 under --amp
                alpha_weights = torch.softmax(at_least_float32(self.alphas), dim=-1)
                betas = normalize_betas(self.betas)
            on_path = None
        else:
            if architecture.block_multiplier != self.block_multiplier:
                raise ValueError(f"architecture concatenates {architecture.block_multiplier} blocks per cell; "
                                 f"the supernet {self.block_multiplier}")
            like = at_least_float32(self.alphas.detach())
            alpha_weights, betas = (w.to(like) for w in one_hot_weights(architecture, self.num_layers,
                                                                         self.num_levels, self.steps))
            on_path = set(enumerate(architecture.network_path))
            last_level = str(architecture.network_path[-1])
            heads = {last_level: self.heads[last_level]}
        states: dict[tuple[int, int], torch.Tensor] = {(-1, 0): stem_out}
        for layer, row in enumerate(self.cells):
            for key, cell in row.items():
                level = int(key)
                if on_path is not None and (layer, level) not in on_path:
                    width = self.block_multiplier * cell.channels
                    states[(layer, level)] = stem_out.new_zeros(stem_out.shape[0], width, *sizes[level])
                    continue
                prev_prev = early if (layer, level) == (0, 0) else states.get((layer - 2, level))
                inputs = [(states[(layer - 1, t.source_level)], betas[layer, t.source_level, t.direction],
                           t.direction) for t in self.incoming[(layer, level)]]
                states[(layer, level)] = self._run_cell(cell, prev_prev, inputs, alpha_weights, sizes[level])
            for level in range(self.num_levels):
                states.pop((layer - 2, level), None)
        last = self.num_layers - 1
        return sum(F.interpolate(head(states[(last, int(key))]), size=x.shape[-2:], mode="bilinear",
                                 align_corners=False)
                   for key, head in heads.items())
