"""The WACV 2020 decoder (``TemplateDecoder``): seven blocks, each a template (two ops and an aggregation)
repeated, over the encoder's stride-4 and stride-8 features, then a classifier on the blocks nobody read.

A genotype is ``[templates, structure]``: 3 templates ``[op1, op2, aggregation]`` (indices into ``WACV_OPS``
and ``AGGREGATIONS``) and 7 blocks ``[input1, input2, template, repeats - 1, log2(stride)]``, where inputs
0 and 1 are the encoder features and 2 + j is block j's output (the original's ``TemplateDecoder`` in
``src/nn/micro_decoders.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from modeling.nas_segm.ops import AGGREGATIONS, OPS, WACV_OPS, concat_step_by_step, conv_bn_relu, unread_outputs

NUM_BLOCKS = 7
RELEASED_AGG_SIZE, RELEASED_REPEATS = 64, 2  # the released networks' settings (the search used 48 and 1)


class TemplateBlock(nn.Module):
    """One block: its template ``repeats`` times. The first repetition reads the two chosen features and
    multiplies their channels by the stride; each later one reads the previous second input and the previous
    output, keeping their channels. Every repetition applies the stride."""

    def __init__(self, channels: tuple[int, int], template: Sequence[int], repeats: int, stride: int,
                 larger: bool, sep_repeats: int) -> None:
        super().__init__()
        op1, op2, aggregation = WACV_OPS[template[0]], WACV_OPS[template[1]], AGGREGATIONS[template[2]]
        self.ops1, self.ops2, self.aggregations = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for repeat in range(repeats):
            widen = stride if repeat == 0 else 1
            outs = (channels[0] * widen, channels[1] * widen)
            self.ops1.append(OPS[op1](channels[0], outs[0], stride, sep_repeats))
            self.ops2.append(OPS[op2](channels[1], outs[1], stride, sep_repeats))
            self.aggregations.append(aggregation(outs[0], outs[1], max(outs), larger))
            channels = (channels[1], max(outs))
        self.out_channels = channels[1]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        for op1, op2, aggregate in zip(self.ops1, self.ops2, self.aggregations):
            x, y = y, aggregate(op1(x), op2(y))
        return y


class TemplateDecoder(nn.Module):
    """The decoder a WACV genotype describes, on encoder features of ``in_channels`` (24 and 32 for the
    MobileNetV2 encoder): logits at the resolution of the largest block output it classifies."""

    def __init__(self, genotype: Sequence, in_channels: Sequence[int], num_classes: int,
                 agg_size: int = RELEASED_AGG_SIZE, sep_repeats: int = RELEASED_REPEATS) -> None:
        super().__init__()
        templates, structure = genotype
        channels = list(in_channels)
        self.blocks = nn.ModuleList()
        self.inputs: list[tuple[int, int]] = []
        for j, (first, second, template, repeats, log_stride) in enumerate(structure):
            block = TemplateBlock((channels[first], channels[second]), templates[template], repeats + 1,
                                  2**log_stride, larger=j >= NUM_BLOCKS // 2, sep_repeats=sep_repeats)
            self.blocks.append(block)
            self.inputs.append((first, second))
            channels.append(block.out_channels)
        self.collected = unread_outputs(len(in_channels), self.inputs)
        self.pre_clf = conv_bn_relu(sum(channels[i] for i in self.collected), agg_size)
        self.conv_clf = nn.Conv2d(agg_size, num_classes, 3, padding=1, bias=True)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        outputs = list(features)
        for block, (first, second) in zip(self.blocks, self.inputs):
            outputs.append(block(outputs[first], outputs[second]))
        return self.conv_clf(self.pre_clf(F.relu(concat_step_by_step([outputs[i] for i in self.collected]))))

    def forward_with_aux(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The logits, and no auxiliary logits (the WACV decoder has no auxiliary heads)."""
        return self(features), []
