"""The CVPR 2019 decoder (``MicroDecoder``): cells built from one searched contextual cell, each merging two
features of the encoder or of earlier cells, then a classifier on the cells nobody read.

A genotype is ``[cell, connections]``: ``cell = [op0, [pos_a, pos_b, op_a, op_b] x 3]`` (ops index
``CVPR_OPS``; layer k reads positions 0..3k-2 of the cell's features) and ``connections = [[in1, in2] x 3]``,
where inputs 0..3 are the encoder's features at strides 4..32 and 4 + b is cell b's output
(the original's ``MicroDecoder`` in ``src/nn/micro_decoders.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from modeling.nas_segm.ops import CVPR_OPS, OPS, concat_step_by_step, conv_bn_relu, resize_to, unread_outputs

NUM_LAYERS = 4  # layer 0 is one op on the input; layers 1..3 each add two ops and their sum
OUTPUTS = (1, 4, 7, 10)  # the features a layer ends in; those no later layer reads are summed


class ContextualCell(nn.Module):
    """One instance of the searched cell on ``channels`` channels (every op keeps them, at stride 1)."""

    def __init__(self, cell: Sequence, channels: int, sep_repeats: int) -> None:
        super().__init__()
        op0, *layers = cell
        self.ops = nn.ModuleList([OPS[CVPR_OPS[op0]](channels, channels, 1, sep_repeats)])
        self.positions: list[tuple[int, int]] = []
        for pos_a, pos_b, op_a, op_b in layers:
            self.positions.append((pos_a, pos_b))
            self.ops.extend(OPS[CVPR_OPS[op]](channels, channels, 1, sep_repeats) for op in (op_a, op_b))
        read = {position for pair in self.positions for position in pair}
        self.loose_ends = [index for index in OUTPUTS if index not in read]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x, self.ops[0](x)]
        for layer, (pos_a, pos_b) in enumerate(self.positions):
            a, b = self.ops[1 + 2 * layer](features[pos_a]), self.ops[2 + 2 * layer](features[pos_b])
            features += [a, b, a + b]
        return sum(features[index] for index in self.loose_ends)


class MergeCell(nn.Module):
    """Two instances of the cell (own weights), one on each input, then 1x1 projections, the smaller brought
    to the larger size, and their sum."""

    def __init__(self, cell: Sequence, channels: int, sep_repeats: int) -> None:
        super().__init__()
        self.cells = nn.ModuleList([ContextualCell(cell, channels, sep_repeats) for _ in range(2)])
        self.project = nn.ModuleList([conv_bn_relu(channels, channels) for _ in range(2)])

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = (project(cell(t)) for project, cell, t in zip(self.project, self.cells, (x, y)))
        size = max(x.shape[-2:], y.shape[-2:])
        return resize_to(x, size) + resize_to(y, size)


class MicroDecoder(nn.Module):
    """The decoder a CVPR genotype describes, on the encoder's four features (``in_channels``: 24, 32, 96 and
    320 for MobileNetV2): every feature is projected to ``agg_size`` channels, the cells merge as the
    connections say, and the cells nobody read are concatenated at the largest size and classified.

    ``aux_heads`` adds the search's auxiliary classifier on every cell's output (a 3x3 conv, after another
    instance of the searched cell with ``aux_cell``), read by ``forward_with_aux`` while a candidate trains;
    the retrained network does without them (their parameter names hold "aux")."""

    def __init__(self, genotype: Sequence, in_channels: Sequence[int], num_classes: int, agg_size: int = 64,
                 sep_repeats: int = 2, aux_heads: bool = False, aux_cell: bool = False) -> None:
        super().__init__()
        cell, connections = genotype
        self.adapt = nn.ModuleList([conv_bn_relu(channels, agg_size) for channels in in_channels])
        self.cells = nn.ModuleList([MergeCell(cell, agg_size, sep_repeats) for _ in connections])
        self.connections = [tuple(pair) for pair in connections]
        self.collected = unread_outputs(len(in_channels), self.connections)
        self.pre_clf = conv_bn_relu(agg_size * len(self.collected), agg_size)
        self.conv_clf = nn.Conv2d(agg_size, num_classes, 3, padding=1, bias=True)
        self.aux_heads = nn.ModuleList(
            nn.Sequential(*([ContextualCell(cell, agg_size, sep_repeats)] if aux_cell else []),
                          nn.Conv2d(agg_size, num_classes, 3, padding=1, bias=True))
            for _ in connections) if aux_heads else None

    def _outputs(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        outputs = [adapt(feature) for adapt, feature in zip(self.adapt, features)]
        for cell, (first, second) in zip(self.cells, self.connections):
            outputs.append(cell(outputs[first], outputs[second]))
        return outputs

    def _classify(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        return self.conv_clf(self.pre_clf(F.relu(concat_step_by_step([outputs[i] for i in self.collected]))))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self._classify(self._outputs(features))

    def forward_with_aux(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The logits and, with ``aux_heads``, each cell's auxiliary logits (at the cell's own resolution)."""
        outputs = self._outputs(features)
        cells = outputs[len(self.adapt):]
        aux = [head(cell) for head, cell in zip(self.aux_heads, cells)] if self.aux_heads is not None else []
        return self._classify(outputs), aux
